"""Messages waiting for the socket, and what to drop when the network cannot keep up."""

from __future__ import annotations

import asyncio
from collections import deque

from . import wire


class Outbox:
    """Messages waiting for the socket. A live source drops its oldest audio when the
    network cannot keep up (latency first); a file source waits instead (nothing lost)."""

    def __init__(self, capacity: int, lossy: bool) -> None:
        self.queue: deque[bytes] = deque()
        self.capacity, self.lossy = capacity, lossy
        self.changed = asyncio.Event()
        self.dropped = 0

    async def put(self, message: bytes) -> None:
        while len(self.queue) >= self.capacity:
            if self.lossy and message[0] & wire.AUDIO_FLAG:
                self.queue.popleft()
                self.dropped += 1
                break
            self.changed.clear()
            await self.changed.wait()
        self.queue.append(message)
        self.changed.set()

    async def head(self) -> bytes:
        while not self.queue:
            self.changed.clear()
            await self.changed.wait()
        return self.queue[0]

    def pop(self) -> None:
        self.queue.popleft()
        self.changed.set()
