"""Relay server: forwards codec packets between the peers of a room, never decoding them.

    python server.py --host 0.0.0.0 --port 8765 [--token SECRET] [--tls-cert C --tls-key K]

Peers connect to ``ws://HOST:PORT/ROOM`` (token in ``Authorization: Bearer …`` or
``?token=…``). Each message a peer sends is checked against the wire format
(``call/wire.py``) and forwarded to every other peer of its room. Latency beats
completeness in a call, so every peer has its own small send queue (≈200 ms of audio)
that drops its oldest audio packet when full: a slow or stalled peer loses its own
packets and never slows the others or grows the server's memory.

Bad input is counted and dropped; a peer that keeps sending it is closed with 1008.
A peer that sends too fast is throttled by not reading from it (TCP pushes back).
Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import itertools
import json
import logging
import re
import signal
import socket
import ssl
import time
from collections import Counter, deque
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from call import wire

log = logging.getLogger("relay")

ROOM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
POLICY_VIOLATION = 1008


def log_event(event: str, level: int = logging.INFO, **fields: object) -> None:
    """One JSON object per line, so logs can be filtered and aggregated by machine."""
    log.log(level, json.dumps({"t": round(time.time(), 3), "event": event, **fields}))


@dataclass(frozen=True)
class Limits:
    """Per-peer limits; the defaults carry a call with room to spare and stop abuse."""

    max_message: int = 1500
    """Bytes. Larger messages are counted and dropped (beyond ``hard_max_message`` the
    websocket layer closes the connection with 1009 before reading them)."""
    hard_max_message: int = 1 << 16
    queue_packets: int = 16
    """Send queue per peer: ≈200 ms of audio at one 13.3 ms frame per packet."""
    rate: float = 3000.0
    """Messages per second a peer may send in the long run (40× a live call)."""
    burst: float = 1000.0
    strikes: float = 50.0
    """Bad messages tolerated in a burst before the peer is closed with 1008 …"""
    strike_refill: float = 5.0
    """… refilled at this many per second."""
    send_buffer: int = 16384
    """Kernel send buffer per peer socket (bytes): keeps a slow peer's backlog short."""


class TokenBucket:
    """Classic token bucket; ``take`` returns how long to wait before the taken token exists."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.stamp = capacity, time.monotonic()

    def take(self, amount: float = 1.0) -> float:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return max(0.0, -self.tokens / self.rate)


class Peer:
    """One connection: its stream state, its bounded send queue and its writer task."""

    def __init__(self, peer_id: int, ws: ServerConnection, room: str, limits: Limits) -> None:
        self.id, self.ws, self.room = peer_id, ws, room
        self.stream = wire.StreamValidator()
        self.queue: deque[tuple[int | None, bytes, bool]] = deque()
        self.capacity = limits.queue_packets
        self.wake = asyncio.Event()
        self.last_source: int | None = None
        self.dropped = 0

    def enqueue(self, source: int | None, message: bytes) -> None:
        """Send or queue a message for this peer without ever waiting; drop the oldest audio if full.

        ``source`` is the peer that sent it, ``None`` for the relay's own messages.
        Control messages (HEADER, END, JOINED, LEFT) are kept: losing one would break a
        whole stream, and they are rare.

        A healthy peer's socket takes each message at once: then it is written here, without
        waking the writer task (a task switch and a ``send`` coroutine per message were most of
        the relay's cost). Only when the socket has a backlog, or messages are already queued
        ahead of this one, does the message wait in the bounded queue.
        """
        if not self.queue and self.ws.transport.get_write_buffer_size() == 0:
            broadcast((self.ws,), self._routed(source, message))  # writes now; skips a closing connection
            return
        is_audio = bool(message[0] & wire.AUDIO_FLAG)
        if len(self.queue) >= self.capacity:
            oldest_audio = next((k for k, (_, _, audio) in enumerate(self.queue) if audio), 0)
            del self.queue[oldest_audio]
            self.dropped += 1
        self.queue.append((source, message, is_audio))
        self.wake.set()

    async def write(self) -> None:
        """Drain the queue to the socket, naming the source only when it changes."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    source, message, _ = self.queue.popleft()
                    await self.ws.send(self._routed(source, message))
        except ConnectionClosed:
            pass  # the reader sees the close too and cleans up

    def _routed(self, source: int | None, message: bytes) -> bytes:
        """The message as this peer must receive it: prefixed with its source when that changes."""
        if source is not None and source != self.last_source:
            self.last_source = source
            return wire.route(source, message)
        return message


class Relay:
    """Rooms of peers and the forwarding between them."""

    def __init__(self, token: str | None = None, limits: Limits = Limits()) -> None:
        self.token = token
        self.limits = limits
        self.rooms: dict[str, dict[int, Peer]] = {}
        self.counters: Counter[str] = Counter()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------- handshake

    def check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse bad room names and wrong or missing tokens before the upgrade."""
        url = urlsplit(request.path)
        if not ROOM_NAME.fullmatch(url.path.lstrip("/")):
            self.counters["refused_room"] += 1
            return ws.respond(HTTPStatus.NOT_FOUND, "Connect to /ROOM (letters, digits, _ . -)\n")
        if self.token is not None and not self._authorized(request.headers, url.query):
            self.counters["refused_auth"] += 1
            log_event("auth_refused", logging.WARNING, remote=str(ws.remote_address))
            return ws.respond(HTTPStatus.UNAUTHORIZED, "Missing or wrong token\n")
        return None

    def _authorized(self, headers: Headers, query: str) -> bool:
        offered = parse_qs(query).get("token", [""])[0]
        authorization = headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            offered = authorization[len("Bearer "):]
        # Constant-time: the comparison's duration must not reveal how much matched.
        return hmac.compare_digest(offered.encode(), self.token.encode())

    # ------------------------------------------------------------ connection

    async def handle(self, ws: ServerConnection) -> None:
        room_name = urlsplit(ws.request.path).path.lstrip("/")
        peer = Peer(next(self._ids), ws, room_name, self.limits)
        sock = ws.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_buffer)
        room = self.rooms.setdefault(room_name, {})
        for other in room.values():  # a joiner learns who is there and the streams in progress
            peer.enqueue(None, wire.joined(other.id))
            other.enqueue(None, wire.joined(peer.id))
            if other.stream.header is not None and not other.stream.ended:
                peer.enqueue(other.id, other.stream.header.encode())
        room[peer.id] = peer
        log_event("join", room=room_name, peer=peer.id, remote=str(ws.remote_address), peers=len(room))
        writer = asyncio.create_task(peer.write())
        try:
            await self._read(peer, room)
        except ConnectionClosed:
            pass
        finally:
            writer.cancel()
            del room[peer.id]
            if not room:
                del self.rooms[room_name]
            for other in room.values():
                other.enqueue(None, wire.left(peer.id))
            log_event("leave", room=room_name, peer=peer.id, dropped_for_peer=peer.dropped,
                      close_code=ws.close_code)

    async def _read(self, peer: Peer, room: dict[int, Peer]) -> None:
        rate = TokenBucket(self.limits.rate, self.limits.burst)
        strikes = TokenBucket(self.limits.strike_refill, self.limits.strikes)
        closing: asyncio.Task | None = None
        async for message in peer.ws:
            if closing is not None:
                continue  # keep reading so that the peer's close frame gets through
            wait = rate.take()
            if wait:
                self.counters["throttled"] += 1
                await asyncio.sleep(wait)
            problem = self._check(peer, message)
            if problem is None:
                self.counters["forwarded"] += 1
                for other in room.values():
                    if other is not peer:
                        other.enqueue(peer.id, message)
                continue
            self.counters[problem] += 1
            if strikes.take():
                log_event("closing_garbage_sender", logging.WARNING, peer=peer.id, last_problem=problem)
                closing = asyncio.create_task(peer.ws.close(POLICY_VIOLATION, "too many malformed messages"))

    def _check(self, peer: Peer, message: bytes | str) -> str | None:
        """``None`` for a message to forward, otherwise the name of what is wrong with it."""
        if isinstance(message, str):
            return "malformed"
        if len(message) > self.limits.max_message:
            return "oversized"
        try:
            peer.stream.check(message)
        except wire.OutOfOrderError:
            return "out_of_order"
        except wire.ProtocolError:
            return "malformed"
        return None

    @property
    def queued(self) -> int:
        """Messages waiting in all send queues (bounded by peers × queue size)."""
        return sum(len(p.queue) for room in self.rooms.values() for p in room.values())

    def start(self, host: str | None, port: int, tls: ssl.SSLContext | None = None,
              ping_interval: float = 5.0, ping_timeout: float = 10.0) -> serve:
        """The websockets server for this relay (use as ``async with``)."""
        return serve(
            self.handle, host, port, ssl=tls, process_request=self.check_request,
            compression=None,  # codes are incompressible; deflate would only cost memory
            max_size=self.limits.hard_max_message, max_queue=16, write_limit=4096,
            ping_interval=ping_interval, ping_timeout=ping_timeout,
        )


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def run(relay: Relay, host: str, port: int, tls: ssl.SSLContext | None) -> None:
    """Serve until SIGINT/SIGTERM, then close every connection cleanly (1001, going away)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server: Server
    async with relay.start(host, port, tls) as server:
        bound = [s.getsockname() for s in server.sockets]
        log_event("listening", addresses=[f"{a[0]}:{a[1]}" for a in bound], tls=tls is not None,
                  auth=relay.token is not None)
        await stop.wait()
        log_event("shutting_down", peers=sum(len(r) for r in relay.rooms.values()))
    log_event("stopped", **relay.counters)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s; 0 picks one)")
    parser.add_argument("--token", help="shared secret clients must present (default: no auth)")
    parser.add_argument("--tls-cert", help="PEM certificate chain, to serve wss://")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # our JSON lines say it all
    relay = Relay(token=args.token)
    asyncio.run(run(relay, args.host, args.port, tls_context(args.tls_cert, args.tls_key)))


if __name__ == "__main__":
    main()
