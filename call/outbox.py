"""Messages waiting for the socket, and what to drop when the network cannot keep up."""

from __future__ import annotations

import asyncio
from collections import deque

from . import wire


class Outbox:
    """Messages waiting for the socket. A live source drops its oldest audio when the
    network cannot keep up (latency first); a file source waits instead (nothing lost).

    ``keep_after_gap``: audio messages a live source keeps when a connection opens (see
    :meth:`drop_stale`); ``None`` keeps them all (a file source).
    """

    def __init__(self, capacity: int, lossy: bool, keep_after_gap: int | None = None) -> None:
        self.queue: deque[bytes] = deque()
        self.capacity, self.lossy = capacity, lossy
        self.keep_after_gap = keep_after_gap if lossy else None
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

    def drop_stale(self) -> int:
        """A connection opens after a gap (the first one, or after a loss): a live source's
        audio queued meanwhile is stale, and sending it would put the whole backlog's delay
        into the call. Keep the newest ``keep_after_gap`` audio messages and every control
        message (``END``), in order; returns how many were dropped."""
        if self.keep_after_gap is None:
            return 0
        stale = sum(1 for message in self.queue if message[0] & wire.AUDIO_FLAG) - self.keep_after_gap
        if stale <= 0:
            return 0
        kept: deque[bytes] = deque()
        for message in self.queue:
            if stale and message[0] & wire.AUDIO_FLAG:
                stale -= 1
            else:
                kept.append(message)
        dropped = len(self.queue) - len(kept)
        self.queue, self.dropped = kept, self.dropped + dropped
        self.changed.set()
        return dropped
