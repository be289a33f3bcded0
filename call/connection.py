"""A call peer's link to the relay: connect, reconnect with backoff, send the outbox, hand on
what arrives, and know who else is in the room.

The media (encoder, decoder, sound card) never waits for the network: it fills the outbox and
reads what :class:`Connection` hands on, and the call survives the relay going away and coming
back (the outbox keeps what was not sent; a sender's header starts every new connection).

It does not wait for ever: a relay that cannot be reached, or refuses us, ends the call with a
one-line reason (:class:`CallError`) once :class:`Patience` runs out; an error that trying again
cannot mend (a refusal, a TLS failure) ends it at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Callable, Iterator
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage, InvalidStatus, InvalidURI

from . import wire
from .meter import Meter
from .outbox import Outbox

log = logging.getLogger("client")


class CallError(RuntimeError):
    """The call cannot go on (refused by the server, …); the message is for the user."""


def backoff(first: float = 0.1, factor: float = 2.0, limit: float = 5.0, quick: int = 10) -> Iterator[float]:
    """Reconnect delays: ``quick`` tries ``first`` seconds apart (about a second), then growing
    from ``first * factor`` to ``limit``, with jitter so that a room does not reconnect in lockstep
    (the browser page waits the same: ``web/reconnect.js``).

    A link that drops for a moment (a Wi-Fi handover, a proxy cutting idle connections) is back
    within a fraction of a second, and every moment of it spent waiting to try again is silence
    in the call: growing from the first retry (0.1, 0.2, 0.4 s) a 0.3 s cut cost half the time
    0.7 s before the next try. A relay that stays away is not tried more than about ten times a
    second for longer than a second."""
    for _ in range(quick):
        yield first * random.uniform(0.8, 1.2)
    delay = first * factor
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * factor, limit)


@dataclass(frozen=True)
class Patience:
    """How long a call keeps trying to reach its relay, in seconds; ``None``: for ever."""

    first: float | None = 10.0
    """To make the first connection (a wrong or unreachable ``--server`` fails in this time)."""
    again: float | None = 60.0
    """To get a lost connection back (a relay restarting is back well within it)."""


FOREVER = Patience(None, None)
RETRYABLE_STATUS = (500, 502, 503, 504)
"""HTTP statuses of a server or proxy that may answer otherwise in a moment."""


def describe_failure(error: BaseException, url: str) -> tuple[str, bool]:
    """Why a connection attempt failed, in one line, and whether trying again could mend it."""
    where = urlsplit(url)
    host = where.hostname or "?"
    address = f"{host}:{where.port or (443 if where.scheme == 'wss' else 80)}"
    if isinstance(error, InvalidStatus):
        body = error.response.body.decode(errors="replace").strip()
        status = error.response.status_code
        return f"the server refused us: HTTP {status} {body}".strip(), status in RETRYABLE_STATUS
    if isinstance(error, InvalidURI):
        return f"not a websocket URL: {error}", False
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: the certificate of {host} is not trusted ({getattr(error, 'verify_message', None) or error})", False
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake with {address} failed ({error.reason or error}): is it a wss:// server?", False
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host name {host!r} (DNS: {error.strerror})", True
    if isinstance(error, ConnectionRefusedError):
        return f"connection refused by {address} (is the relay running there?)", True
    if isinstance(error, ConnectionResetError):
        tls = " during the TLS handshake: is it a wss:// server?" if where.scheme == "wss" else ""
        return f"{address} reset the connection{tls}", True
    if isinstance(error, TimeoutError):
        return f"no answer from {address} (timed out)", True
    if isinstance(error, InvalidMessage):
        if isinstance(error.__cause__, EOFError):
            return f"{address} closed the connection during the handshake", True
        return f"{address} did not answer as a websocket relay ({error.__cause__ or error})", False
    if isinstance(error, InvalidHandshake):
        return f"websocket handshake with {address} failed: {error}", False
    if isinstance(error, OSError):
        return f"cannot connect to {address}: {error.strerror or str(error) or type(error).__name__}", True
    return f"{type(error).__name__}: {error}", False


def plaintext_token_warning(url: str, token: str | None) -> str | None:
    """The warning a token sent unencrypted (``ws://``) to another machine deserves, or ``None``."""
    where = urlsplit(url)
    if not token or where.scheme != "ws":
        return None
    host = where.hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"warning: --token goes to {host} unencrypted over ws://, readable by anyone on the way; "
            "use wss:// (python server.py --tls-cert/--tls-key)")


MessageHandler = Callable[[bytes | str, float], None]
"""Called with each message that arrives and its arrival time (``time.monotonic()``)."""


class Connection:
    """The websocket to one room, for as long as the call lasts.

    ``url`` is the room on one relay, or on each of several nodes of a cluster (a list): a failed
    attempt moves on to the next at once, and the wait between attempts comes after a whole
    round, so a call whose node died goes on through another within a moment.

    ``header`` (a sender's ``HEADER``) opens every connection, so a reconnected sender's stream
    goes on; ``None`` for a peer that only listens. With ``wait_for_listener`` nothing but the
    header is sent while the room holds nobody else (a file is not spoken into an empty room).
    ``patience`` bounds the attempts to connect; ``clock`` and ``delays`` (the waits between
    attempts) are there for tests to drive.
    """

    def __init__(self, url: str | list[str], token: str | None, outbox: Outbox, meter: Meter, header: bytes | None,
                 on_message: MessageHandler | None, wait_for_listener: bool, patience: Patience = Patience(),
                 clock: Callable[[], float] = time.monotonic,
                 delays: Callable[[], Iterator[float]] = backoff) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self.node = 0
        """Which of ``urls`` was tried last (or is connected to); an index, as one URL may be listed twice."""
        self.token = token
        self.outbox, self.meter = outbox, meter
        self.header = header
        self.on_message = on_message
        self.wait_for_listener = wait_for_listener
        self.patience, self.clock, self.delays = patience, clock, delays
        self.connected = asyncio.Event()
        self.sent_all = asyncio.Event()
        """Set once ``END`` has left: everything the sender produced is on the wire."""
        self.peers: set[int] = set()
        self.listening = asyncio.Event()  # another peer is in the room
        self.ws: ClientConnection | None = None
        self.reconnects = 0
        self.attempts = 0
        self.problem: str | None = None
        """Why the last attempt to connect failed, while no connection is open."""
        self.alone_grace = 1.0
        """Seconds a sender gives the relay to announce the room's peers before it says, once,
        that it is waiting for a listener."""
        self._said_alone = False
        self.on_connect: Callable[[], None] | None = None
        """Called as each connection opens, before its first message: the relay's peer ids of
        the previous connection mean nothing on this one."""

    @property
    def rtt(self) -> float | None:
        """The round trip the last ping measured, in seconds; ``None`` while disconnected."""
        return self.ws.latency if self.ws is not None and self.connected.is_set() else None

    @property
    def alone(self) -> bool:
        """A sender connected to a room that holds nobody else."""
        return self.header is not None and self.connected.is_set() and not self.listening.is_set()

    async def run(self) -> None:
        """Connect, and reconnect with backoff until cancelled; raises :class:`CallError` when
        refused, or when :attr:`patience` runs out."""
        lost, since = False, self.clock()
        while True:
            ws = await self._connect(lost, since)
            self.ws = ws
            self.outbox.drop_stale()  # a live sender's backlog from before this connection
            # Presence is per connection: until this connection hears a JOINED, nobody is
            # listening (a file sender must not flush its backlog into an empty room).
            self.peers.clear()
            self.listening.clear()
            if self.on_connect is not None:
                self.on_connect()
            self.connected.set()
            halves = [asyncio.create_task(self._send(ws)), asyncio.create_task(self._receive(ws))]
            if self.header is not None:
                halves.append(asyncio.create_task(self._say_if_alone()))
            try:
                await asyncio.gather(*halves)
            except ConnectionClosed:
                self.reconnects += 1
                log.warning("connection lost; reconnecting")
                lost, since = True, self.clock()
            finally:
                self.connected.clear()
                for half in halves:  # neither half may outlive its connection
                    half.cancel()
                await asyncio.gather(*halves, return_exceptions=True)
                await ws.close()

    @property
    def url(self) -> str:
        """The room on the node tried last (or connected to)."""
        return self.urls[self.node]

    async def _connect(self, lost: bool, since: float) -> ClientConnection:
        """An open connection, after as many attempts as the patience allows (counted from
        ``since``; ``lost``: after a connection was lost); each new reason for failing is logged once."""
        patience = self.patience.again if lost else self.patience.first
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        delays = self.delays()
        while True:
            self.attempts += 1
            if self.attempts > 1:
                self.node = (self.node + 1) % len(self.urls)
            try:
                ws = await connect(self.url, additional_headers=headers, compression=None,
                                   ping_interval=5, ping_timeout=10, max_size=1 << 16, open_timeout=5)
            except Exception as error:  # every failure is described; one that retrying cannot mend ends the call
                reason, retry = describe_failure(error, self.url)
                said, self.problem = self.problem, reason
                waited = self.clock() - since
                if not retry:
                    raise CallError(f"Cannot join {self.url}: {reason}") from error
                if patience is not None and waited >= patience:
                    raise CallError(
                        f"Lost the relay at {self.url} and could not reconnect within {patience:g} s: {reason} "
                        "(--reconnect-timeout, --retry-forever)" if lost else
                        f"Cannot reach the relay at {self.url}: {reason}; gave up after {patience:g} s "
                        "(--connect-timeout, --retry-forever)") from error
                if reason != said:
                    log.warning("cannot reach %s: %s; %s", self.url, reason,
                                "trying again" if patience is None else f"trying for {patience:g} s")
                if self.node + 1 < len(self.urls):
                    continue  # the next node at once; the wait comes after each round
                delay = next(delays)
                await asyncio.sleep(delay if patience is None else max(0.0, min(delay, patience - waited)))
                continue
            self.problem = None
            return ws

    async def _say_if_alone(self) -> None:
        """Say once per call, in the log (shown with --quiet too), that a sender is alone in its
        room; the relay announces who is there as a connection opens, hence the grace."""
        if self._said_alone:
            return
        try:
            await asyncio.wait_for(self.listening.wait(), self.alone_grace)
        except asyncio.TimeoutError:
            self._said_alone = True
            log.warning("nobody else is in the room yet: waiting for a listener%s",
                        " (the file is sent once one joins)" if self.wait_for_listener else "")

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
