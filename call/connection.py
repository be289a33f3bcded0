"""A call peer's link to the relay: connect, reconnect with backoff, send the outbox, hand on
what arrives, and know who else is in the room.

The media (encoder, decoder, sound card) never waits for the network: it fills the outbox and
reads what :class:`Connection` hands on, and the call survives the relay going away and coming
back (the outbox keeps what was not sent; a sender's header starts every new connection).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable, Iterator

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from . import wire
from .meter import Meter
from .outbox import Outbox

log = logging.getLogger("client")


class CallError(RuntimeError):
    """The call cannot go on (refused by the server, …); the message is for the user."""


def backoff(first: float = 0.1, factor: float = 2.0, limit: float = 5.0) -> Iterator[float]:
    """Reconnect delays: quick at first (a restarting server is back in a moment), then
    growing to ``limit``, with jitter so that a room does not reconnect in lockstep."""
    delay = first
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * factor, limit)


MessageHandler = Callable[[bytes | str, float], None]
"""Called with each message that arrives and its arrival time (``time.monotonic()``)."""


class Connection:
    """The websocket to one room, for as long as the call lasts.

    ``header`` (a sender's ``HEADER``) opens every connection, so a reconnected sender's stream
    goes on; ``None`` for a peer that only listens. With ``wait_for_listener`` nothing but the
    header is sent while the room holds nobody else (a file is not spoken into an empty room).
    """

    def __init__(self, url: str, token: str | None, outbox: Outbox, meter: Meter, header: bytes | None,
                 on_message: MessageHandler | None, wait_for_listener: bool) -> None:
        self.url, self.token = url, token
        self.outbox, self.meter = outbox, meter
        self.header = header
        self.on_message = on_message
        self.wait_for_listener = wait_for_listener
        self.connected = asyncio.Event()
        self.sent_all = asyncio.Event()
        """Set once ``END`` has left: everything the sender produced is on the wire."""
        self.peers: set[int] = set()
        self.listening = asyncio.Event()  # another peer is in the room
        self.ws: ClientConnection | None = None
        self.reconnects = 0
        self.on_connect: Callable[[], None] | None = None
        """Called as each connection opens, before its first message: the relay's peer ids of
        the previous connection mean nothing on this one."""

    @property
    def rtt(self) -> float | None:
        """The round trip the last ping measured, in seconds; ``None`` while disconnected."""
        return self.ws.latency if self.ws is not None and self.connected.is_set() else None

    async def run(self) -> None:
        """Connect, and reconnect with backoff until cancelled; raises :class:`CallError` when refused."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            async for ws in connect(self.url, additional_headers=headers, compression=None,
                                    ping_interval=5, ping_timeout=10, max_size=1 << 16,
                                    open_timeout=5, reconnect_delays=backoff):
                self.ws = ws
                # Presence is per connection: until this connection hears a JOINED, nobody is
                # listening (a file sender must not flush its backlog into an empty room).
                self.peers.clear()
                self.listening.clear()
                if self.on_connect is not None:
                    self.on_connect()
                self.connected.set()
                halves = [asyncio.create_task(self._send(ws)), asyncio.create_task(self._receive(ws))]
                try:
                    await asyncio.gather(*halves)
                except ConnectionClosed:
                    self.reconnects += 1
                    log.warning("connection lost; reconnecting")
                    continue
                finally:
                    self.connected.clear()
                    for half in halves:  # neither half may outlive its connection
                        half.cancel()
                    await asyncio.gather(*halves, return_exceptions=True)
        except InvalidStatus as error:
            raise CallError(f"The server refused us: HTTP {error.response.status_code} "
                             f"{error.response.body.decode(errors='replace').strip()}") from error

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def _send(self, ws: ClientConnection) -> None:
        if self.header is None:
            return
        await ws.send(self.header)  # every (re)connection starts with it
        self.meter.add(self.header)
        while True:
            message = await self.outbox.head()
            if self.wait_for_listener:
                await self.listening.wait()
            await ws.send(message)  # a failed send keeps the message for the next connection
            self.meter.add(message)
            self.outbox.pop()
            if message[0] == wire.END:
                self.sent_all.set()

    async def _receive(self, ws: ClientConnection) -> None:
        """Hand on incoming messages; a send-only peer still reads, so pings get answered."""
        async for message in ws:
            if message and message[0] in (wire.JOINED, wire.LEFT):
                self._presence(message)
            if self.on_message is not None:
                self.on_message(message, time.monotonic())
        await ws.recv()  # the connection is over: raises ConnectionClosed, which reconnects

    def _presence(self, message: bytes) -> None:
        try:
            peer, present = wire.parse_presence(message)
        except wire.ProtocolError:
            return  # the receiver counts it
        if present:
            self.peers.add(peer)
        else:
            self.peers.discard(peer)
        if self.peers:
            self.listening.set()
        else:
            self.listening.clear()
