"""Relay server: forwards codec packets between the peers of a room, never decoding them.

    python server.py --host 0.0.0.0 --port 8765 [--token SECRET] [--room-token ROOM=SECRET …]
                     [--room-token-file FILE] [--max-connections N] [--max-rooms N]
                     [--max-peers-per-room N] [--tls-cert C --tls-key K]
                     [--cluster nats://HOST:4222,…] [--workers N] [--metrics [PORT]] [--loop uvloop|asyncio]
                     [--transport websockets|picows] [--forwarding compiled|python]

Peers connect to ``ws://HOST:PORT/ROOM`` with the token in an ``Authorization: Bearer …``
header. ``--token`` opens every room; ``--room-token ROOM=SECRET`` (or a file of such lines)
opens only that room; a room with neither is open. A token in the URL's query (``?token=``) is
refused with 401: URLs end up in logs. No log line holds a token or a query string (the
websockets layer's own lines are scrubbed too).

Each message a peer sends is checked against the wire format (``call/wire.py``) and forwarded to
every other peer of its room. Latency beats completeness in a call, so every peer has its own
small send queue (≈200 ms of audio): when it is full the oldest *audio* packet goes; control
messages (HEADER, END, JOINED, LEFT) are kept, and a peer so slow that its queue holds nothing
but them (``Limits.queue_control``) is closed with 1008. A slow or stalled peer loses its own
packets and never slows the others or grows the server's memory.

Limits (``Limits``, most also flags), each refused with a reason a client can print:
  * connections, rooms, peers per room: HTTP 503 at the handshake ("relay full" / "room full";
    a connection that slips past the check in a race is closed with 1013, try again later);
  * failed token attempts: after ``auth_failures`` within ``auth_window`` seconds from one
    address (IPv6: one /64), that address gets HTTP 429 for ``auth_block`` seconds from every
    room that needs a token, the right token included (other addresses are not affected);
  * message size: over ``max_message`` (1500 bytes: a HEADER is ≤ 38, a packet of 37 frames at
    24 kbps 1484) a message is counted and dropped; over ``hard_max_message`` (4 KiB) the
    websocket layer closes the connection with 1009 before buffering it, which with
    ``receive_queue`` (16) bounds a peer's incoming messages to 64 KiB.
Bad input is counted and dropped; a peer that keeps sending it is closed with 1008.
A peer that sends too fast is throttled by not reading from it (TCP pushes back).
Logs are JSON lines on stderr.

With ``--cluster`` rooms span every relay on the same NATS servers (``call/relay_cluster.py``);
``--workers N`` runs N such relays on one port; ``--metrics`` serves Prometheus text
(``call/relay_metrics.py``). ``docs/DEPLOY.md`` puts them behind a load balancer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib.util
import ipaddress
import itertools
import logging
import math
import re
import signal
import ssl
import sys
import time
from collections import OrderedDict, defaultdict, deque
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import OPEN

from call import wire
from call.relay_link import (POLICY_VIOLATION, TRY_AGAIN_LATER, WRITE_LIMIT, Link, LinkClosed, binary_frame,
                             limit_send_buffer)
from call.relay_cluster import ClusterLink, ClusterSettings
from call.relay_log import log_event
from call.relay_metrics import metrics_route
from call.relay_workers import run_workers
from call.rooms import ROOM_RULE, is_room_name
from call.web_routes import WebRoutes, select_subprotocol

TRANSPORTS = ("websockets", "picows")
"""The websocket libraries that can serve the relay (``--transport``; ``call/relay_link.py``)."""

Route = Callable[[ServerConnection, Request], "Response | None"]
"""An HTTP handler consulted before the websocket upgrade: a response for the paths it serves
(``/metrics``, a web page), ``None`` for the others."""


class Redact(logging.Filter):
    """Scrubs secrets from the websockets layer's own lines: at DEBUG it logs each request line
    (with its query string) and each header (``Authorization`` included, and the subprotocols in
    which a web page offers its token: ``call/web_routes.py``)."""

    SECRETS = re.compile(r"(?i)((?:proxy-)?authorization:\s*|cookie:\s*|sec-websocket-protocol:\s*|/[^\s?]*\?)\S.*?(?=\s+HTTP/|$)")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        scrubbed = self.SECRETS.sub(r"\1[redacted]", message)
        if scrubbed != message:
            record.msg, record.args = scrubbed, ()
        return True


websockets_log = logging.getLogger("relay.websockets")
"""The logger the websockets layer writes to (instead of ``websockets.server``), scrubbed."""
websockets_log.addFilter(Redact())


@dataclass(frozen=True)
class Limits:
    """The relay's limits; the defaults carry calls with room to spare and stop abuse."""

    max_message: int = 1500
    """Bytes. Larger messages are counted and dropped. A call's packets are far smaller: a
    HEADER is ≤ 38 bytes, a 24 kbps frame 40 bytes of codes (the format's own ceiling, 128
    frames × 255 codebooks × 16 bits, would be 65411 bytes: no call sends that)."""
    hard_max_message: int = 4096
    """Bytes. Beyond this the websocket layer closes the connection with 1009 without
    buffering the message: what arrives between ``max_message`` and here is merely a packet
    too big (counted, dropped), what is larger is no packet of a call."""
    receive_queue: int = 16
    """Incoming messages buffered per peer before the relay stops reading its socket: with
    ``hard_max_message``, at most 64 KiB a peer."""
    queue_packets: int = 16
    """Send queue per peer: ≈200 ms of audio at one 13.3 ms frame per packet. When it is full
    the oldest audio packet is dropped."""
    queue_control: int = 128
    """Control messages (HEADER, END, JOINED, LEFT) a peer's send queue may hold once no audio
    is left to drop; one more closes the peer with 1008. A joiner gets up to two per peer in
    the room at once, so keep it above ``2 * max_peers_per_room``."""
    rate: float = 3000.0
    """Messages per second a peer may send in the long run (40× a live call)."""
    burst: float = 1000.0
    strikes: float = 50.0
    """Bad messages tolerated in a burst before the peer is closed with 1008 …"""
    strike_refill: float = 5.0
    """… refilled at this many per second."""
    send_buffer: int = 16384
    """Kernel send buffer per peer socket (bytes): keeps a slow peer's backlog short."""
    max_connections: int = 512
    """Peers connected to the relay at once (about what one core forwards with ≤ 5 ms added)."""
    max_rooms: int = 256
    max_peers_per_room: int = 32
    auth_failures: int = 10
    """Refused tokens (missing or wrong) from one address within ``auth_window`` seconds …"""
    auth_window: float = 60.0
    auth_block: float = 300.0
    """… after which that address is refused with 429 for this many seconds."""
    auth_table: int = 10000
    """Addresses whose failures are remembered; beyond it the least recent is forgotten."""


class TokenBucket:
    """Classic token bucket; ``take`` returns how long to wait before the taken token exists."""

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity = rate, capacity
        self.tokens, self.stamp = capacity, time.monotonic()

    def take(self, amount: float = 1.0) -> float:
        now = time.monotonic()
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        self.tokens, self.stamp = tokens - amount, now
        return 0.0 if tokens >= amount else (amount - tokens) / self.rate


def client_key(host: str) -> str:
    """What the auth throttle counts per: the address, or its /64 for IPv6 (one subscriber)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class AuthThrottle:
    """Failed token attempts per address: ``limit`` failures within ``window`` seconds block the
    address for ``block`` seconds. Fixed windows; at most ``size`` addresses are remembered (the
    one that failed least recently is forgotten first), so a spray of addresses cannot grow it.
    ``clock`` is injectable so that tests need not wait."""

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.block = limits.auth_failures, limits.auth_window, limits.auth_block
        self.size, self.clock = limits.auth_table, clock
        self.table: OrderedDict[str, list[float]] = OrderedDict()  # key -> [window start, failures, blocked until]

    def blocked_for(self, key: str) -> float:
        """Seconds this address is still refused (0: it may try)."""
        entry = self.table.get(key)
        if entry is None:
            return 0.0
        now = self.clock()
        if entry[2] > now:
            return entry[2] - now
        if entry[2] or now - entry[0] >= self.window:
            del self.table[key]  # served its block, or its window is over: a fresh start
        return 0.0

    def failed(self, key: str) -> bool:
        """Count one failure; ``True`` when it starts a block."""
        now = self.clock()
        entry = self.table.get(key)
        if entry is None or now - entry[0] >= self.window:
            entry = self.table[key] = [now, 0, 0.0]
        self.table.move_to_end(key)
        entry[1] += 1
        if len(self.table) > self.size:
            self.table.popitem(last=False)
        if entry[1] >= self.limit and not entry[2]:
            entry[2] = now + self.block
            return True
        return False


class Peer:
    """One connection: its stream state, its bounded send queue and its writer task, and the
    buckets that throttle what it sends."""

    def __init__(self, peer_id: int, link: Link, room: str, limits: Limits) -> None:
        self.id, self.link, self.room = peer_id, link, room
        self.stream = wire.StreamValidator()
        self.queue: deque[tuple[int | None, bytes, bool]] = deque()
        self.capacity, self.control_capacity = limits.queue_packets, limits.queue_control
        self.wake = asyncio.Event()
        self.last_source: int | None = None
        self.dropped = 0
        self.closing = False
        """The relay closes this peer (too slow, or sending garbage): nothing more goes to or from it."""
        self.rate = TokenBucket(limits.rate, limits.burst)
        self.strikes = TokenBucket(limits.strike_refill, limits.strikes)
        self.writer: asyncio.Task | None = None
        self.others: tuple[Peer, ...] = ()
        """The other local peers of its room, where its packets go: kept by ``Relay.admit`` and
        ``Relay.depart`` (rooms change at a join or a leave, packets arrive 75 times a second)."""

    @property
    def live_header(self) -> bytes | None:
        """The HEADER of this peer's stream in progress (a joiner needs it to decode); ``None`` when none."""
        return self.stream.header.encode() if self.stream.header is not None and not self.stream.ended else None

    def enqueue(self, source: int | None, message: bytes, frame: bytes | None = None) -> None:
        """Send or queue a message for this peer without ever waiting; drop the oldest audio if full.

        ``source`` is the peer that sent it, ``None`` for the relay's own messages; ``frame``, if
        given, is ``message`` already framed (``binary_frame``): built once for all the receivers.
        Control messages (HEADER, END, JOINED, LEFT) are never dropped while there is audio to
        drop instead: losing one would break a whole stream, and they are rare. When the full
        queue holds only control messages, a new audio packet is dropped and a new control
        message waits, up to ``queue_control`` of them: beyond that the peer is closed (1008).

        A healthy peer's socket takes each message at once: then it is written here, without
        waking the writer task (a task switch and a ``send`` coroutine per message were most of
        the relay's cost). Only when the socket has a backlog, or messages are already queued
        ahead of this one, does the message wait in the bounded queue.
        """
        if self.closing:
            return
        if not self.queue and self.link.backlog() == 0:
            if frame is None or source != self.last_source:
                frame = binary_frame(self._routed(source, message))
            self.link.write(frame)
            return
        is_audio = bool(message[0] & wire.AUDIO_FLAG)
        if len(self.queue) >= self.capacity:
            oldest_audio = next((k for k, (_, _, audio) in enumerate(self.queue) if audio), None)
            if oldest_audio is not None:
                del self.queue[oldest_audio]
                self.dropped += 1
            elif is_audio:  # only control messages wait: they go first, this audio not at all
                self.dropped += 1
                return
            elif len(self.queue) >= self.control_capacity:
                self._close_slow()
                return
        self.queue.append((source, message, is_audio))
        self.wake.set()

    def _close_slow(self) -> None:
        """Close a peer whose queue holds nothing but control messages, and too many of them."""
        log_event("closing_slow_peer", logging.WARNING, peer=self.id, queued=len(self.queue))
        self.queue.clear()
        self.closing = True
        self.link.close(POLICY_VIOLATION, "too slow: send queue full")

    async def write(self) -> None:
        """Drain the queue to the socket, naming the source only when it changes."""
        try:
            while True:
                await self.wake.wait()
                self.wake.clear()
                while self.queue:
                    source, message, _ = self.queue.popleft()
                    await self.link.send(self._routed(source, message))
        except LinkClosed:
            pass  # the reader sees the close too and cleans up

    def _routed(self, source: int | None, message: bytes) -> bytes:
        """The message as this peer must receive it: prefixed with its source when that changes."""
        if source is not None and source != self.last_source:
            self.last_source = source
            return wire.route(source, message)
        return message


def share_room(room: dict[int, Peer]) -> None:
    """Tell each peer of ``room`` who the others are (``Peer.others``), after a join or a leave."""
    for peer in room.values():
        peer.others = tuple(other for other in room.values() if other is not peer)


class WebsocketsLink:
    """A python-websockets connection as the relay's ``Link``. Frames written straight to the socket
    (``write``) are whole and in order, like websockets' own writes: the two interleave safely."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.remote_address = ws.remote_address
        self.closing: asyncio.Task | None = None

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def is_open(self) -> bool:
        return self.ws.protocol.state is OPEN

    def backlog(self) -> int:
        return self.ws.transport.get_write_buffer_size()

    def write(self, frame: bytes) -> None:
        if self.is_open:
            self.ws.transport.write(frame)

    async def send(self, message: bytes) -> None:
        try:
            await self.ws.send(message)
        except ConnectionClosed:
            raise LinkClosed from None

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = asyncio.create_task(self.ws.close(code, reason))

    def set_send_buffer(self, size: int) -> None:
        limit_send_buffer(self.ws.transport, size)


class Relay:
    """Rooms of peers and the forwarding between them.

    ``token`` opens every room, ``room_tokens`` (room → token) only its room; a room with
    neither needs none. ``clock`` times the auth throttle (injectable for tests).
    """

    def __init__(self, token: str | None = None, limits: Limits = Limits(),
                 room_tokens: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.token = token
        self.room_tokens = dict(room_tokens or {})
        if token == "" or "" in self.room_tokens.values():
            raise ValueError("an empty token would let in whoever offers none")
        self.limits = limits
        self.rooms: dict[str, dict[int, Peer]] = {}
        self.connections = 0
        """Peers in all rooms."""
        self.counters: defaultdict[str, int] = defaultdict(int)
        """Events by name (a ``defaultdict``: a third of a ``Counter``'s cost a count, four counts a packet)."""
        self.throttle = AuthThrottle(limits, clock)
        self._ids = itertools.count(1)
        self.routes: list[Route] = []
        """HTTP handlers tried in turn before a request is taken as a room's upgrade."""
        self.cluster: ClusterLink | None = None
        """The link to the other nodes (``--cluster``), or ``None`` for a lone relay."""

    def join_cluster(self, servers: list[str], settings: ClusterSettings = ClusterSettings()) -> ClusterLink:
        """Make rooms span every relay on these NATS servers (then ``await cluster.start()``)."""
        self.cluster = ClusterLink(servers, self.deliver, self.roster, lambda: next(self._ids), settings)
        return self.cluster

    def deliver(self, room: str, source: int | None, message: bytes) -> None:
        """A message from another node (``source``: its peer's alias; ``None``: a presence notice),
        for every local peer of ``room``."""
        peers = self.rooms.get(room, {})
        for peer in peers.values():
            peer.enqueue(source, message)
        if source is not None:
            self._count_out(len(peers), message)

    def _count_out(self, receivers: int, message: bytes) -> None:
        self.counters["messages_out"] += receivers
        self.counters["bytes_out"] += receivers * len(message)

    def roster(self, room: str) -> list[tuple[int, bytes | None]]:
        """The local peers of ``room`` and the HEADER of each one's stream in progress."""
        return [(p.id, p.live_header) for p in self.rooms.get(room, {}).values()]

    # ------------------------------------------------------------- handshake

    def route(self, ws: ServerConnection, request: Request) -> Response | None:
        """The answer of the first of :attr:`routes` that serves ``request`` (``None``: none does)."""
        for route in self.routes:
            response = route(ws, request)
            if response is not None:
                return response
        return None

    def check_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse bad room names, tokens in the URL, throttled addresses, wrong or missing
        tokens and a full relay or room before the upgrade; :meth:`route` answers first."""
        response = self.route(ws, request)
        if response is not None:
            return response
        url = urlsplit(request.path)
        room = url.path.lstrip("/")
        if not is_room_name(room):
            return self._refuse(ws, "refused_room", HTTPStatus.NOT_FOUND, f"Connect to /ROOM (ROOM: {ROOM_RULE})")
        if "token" in parse_qs(url.query, keep_blank_values=True):
            return self._refuse(ws, "refused_query_token", HTTPStatus.UNAUTHORIZED,
                                "Send the token in an 'Authorization: Bearer' header, not in the URL "
                                "(URLs end up in logs)")
        tokens = [t for t in (self.room_tokens.get(room), self.token) if t is not None]
        if tokens:
            address = client_key(str(ws.remote_address[0]))
            wait = self.throttle.blocked_for(address)
            if wait:
                response = self._refuse(ws, "refused_throttled", HTTPStatus.TOO_MANY_REQUESTS,
                                        f"Too many failed token attempts; try again in {math.ceil(wait)} s")
                response.headers["Retry-After"] = str(math.ceil(wait))
                return response
            if not self._authorized(request, tokens):
                if self.throttle.failed(address):
                    log_event("auth_blocked", logging.WARNING, address=address,
                              seconds=self.limits.auth_block)
                return self._refuse(ws, "refused_auth", HTTPStatus.UNAUTHORIZED, "Missing or wrong token")
        full = self._full(room)
        if full:
            return self._refuse(ws, "refused_full", HTTPStatus.SERVICE_UNAVAILABLE, full)
        return None

    def _refuse(self, ws: ServerConnection, counter: str, status: HTTPStatus, reason: str) -> Response:
        """Count and log a refused handshake (never its path: the query may hold a secret)."""
        self.counters[counter] += 1
        log_event(counter, logging.WARNING, remote=str(ws.remote_address), status=int(status), reason=reason)
        return ws.respond(status, reason + "\n")

    @staticmethod
    def _authorized(request: Request, tokens: Iterable[str]) -> bool:
        authorization = request.headers.get("Authorization", "")
        offered = authorization[len("Bearer "):] if authorization.startswith("Bearer ") else ""
        # Constant-time: the comparison's duration must not reveal how much matched.
        return any([hmac.compare_digest(offered.encode(), token.encode()) for token in tokens])

    def _full(self, room: str) -> str | None:
        """Why one more peer in ``room`` would be one too many, or ``None``."""
        limits = self.limits
        if self.connections >= limits.max_connections:
            return f"Relay full: {limits.max_connections} connections; try again later"
        if room not in self.rooms and len(self.rooms) >= limits.max_rooms:
            return f"Relay full: {limits.max_rooms} rooms; try again later"
        remote = len(self.cluster.members(room)) if self.cluster is not None else 0
        if len(self.rooms.get(room, ())) + remote >= limits.max_peers_per_room:
            return f"Room full: {limits.max_peers_per_room} peers; try again later"
        return None

    # ------------------------------------------------------------ connection

    def admit(self, link: Link, room_name: str) -> Peer | None:
        """A peer whose handshake passed :meth:`check_request` joins ``room_name``: it learns who is
        there, they learn of it, its writer starts. ``None`` (the link closed with 1013) when the
        relay or room filled up meanwhile: handshakes in flight together may all have passed the check."""
        full = self._full(room_name)
        if full:
            self.counters["refused_full"] += 1
            log_event("refused_full", logging.WARNING, remote=str(link.remote_address), reason=full)
            link.close(TRY_AGAIN_LATER, full)
            return None
        peer = Peer(next(self._ids), link, room_name, self.limits)
        link.set_send_buffer(self.limits.send_buffer)
        room = self.rooms.setdefault(room_name, {})
        for other in room.values():  # a joiner learns who is there and the streams in progress
            peer.enqueue(None, wire.joined(other.id))
            other.enqueue(None, wire.joined(peer.id))
            header = other.live_header
            if header is not None:
                peer.enqueue(other.id, header)
        if self.cluster is not None:
            self.cluster.greet(room_name, peer.enqueue)
        room[peer.id] = peer
        share_room(room)
        self.connections += 1
        log_event("join", room=room_name, peer=peer.id, remote=str(link.remote_address), peers=len(room))
        if self.cluster is not None:
            self.cluster.join(room_name, peer.id)
        peer.writer = asyncio.create_task(peer.write())
        return peer

    def receive(self, peer: Peer, message: bytes | str) -> float:
        """One message from ``peer``: checked, then forwarded to the others of its room (framed once
        for all of them) or counted as the problem it is. Returns how long to stop reading from this
        peer (it sends faster than ``Limits.rate``), 0 for not at all."""
        if peer.closing:
            return 0.0  # keep reading so that the peer's close frame gets through
        wait = peer.rate.take()
        if wait:
            self.counters["throttled"] += 1
        problem = self._check(peer, message)
        if problem is None:
            self.counters["forwarded"] += 1
            self.counters["bytes_in"] += len(message)
            frame = binary_frame(message)
            for other in peer.others:
                other.enqueue(peer.id, message, frame)
            self._count_out(len(peer.others), message)
            if self.cluster is not None:
                self.cluster.forward(peer.room, peer.id, message)
            return wait
        self.counters[problem] += 1
        if peer.strikes.take():
            log_event("closing_garbage_sender", logging.WARNING, peer=peer.id, last_problem=problem)
            peer.closing = True
            peer.link.close(POLICY_VIOLATION, "too many malformed messages")
        return wait

    def depart(self, peer: Peer) -> None:
        """``peer``'s connection is closed: it leaves its room, the others (here and on other nodes) learn it."""
        if peer.writer is not None:
            peer.writer.cancel()
        room = self.rooms[peer.room]
        del room[peer.id]
        share_room(room)
        self.connections -= 1
        if not room:
            del self.rooms[peer.room]
        for other in room.values():
            other.enqueue(None, wire.left(peer.id))
        if self.cluster is not None:
            self.cluster.leave(peer.room, peer.id, last=not room)
        self.counters["dropped_slow_peer"] += peer.dropped
        log_event("leave", room=peer.room, peer=peer.id, dropped_for_peer=peer.dropped,
                  close_code=peer.link.close_code)

    async def handle(self, ws: ServerConnection) -> None:
        """A python-websockets connection, from its upgrade to its close (``--transport websockets``)."""
        peer = self.admit(WebsocketsLink(ws), urlsplit(ws.request.path).path.lstrip("/"))
        if peer is None:
            await ws.wait_closed()  # returning now would close it with 1000 before the 1013 goes out
            return
        try:
            async for message in ws:
                wait = self.receive(peer, message)
                if wait:
                    await asyncio.sleep(wait)  # not reading: TCP pushes back on the sender
        except ConnectionClosed:
            pass
        finally:
            self.depart(peer)

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

    transport = "websockets"
    """The library :meth:`start` serves peers with (``--transport``; ``TRANSPORTS``)."""
    compiled = True
    """picows: forward plain audio packets in C where ``call/relay_fast.pyx`` was built (``--forwarding``)."""

    def start(self, host: str | None, port: int, tls: ssl.SSLContext | None = None,
              ping_interval: float = 5.0, ping_timeout: float = 10.0, reuse_port: bool = False,
              web: WebRoutes | None = None) -> contextlib.AbstractAsyncContextManager:
        """The server for this relay (use as ``async with``; it has ``sockets``); ``reuse_port``:
        processes share the port (SO_REUSEPORT), the kernel spreading connections over them; ``web``
        also serves the browser peer's page over plain HTTP on the same port."""
        if self.transport == "picows":
            from call.relay_picows import PicowsServer

            return PicowsServer(self, host, port, tls, ping_interval, ping_timeout, reuse_port, web, self.compiled)
        return serve(
            self.handle, host, port, ssl=tls,
            process_request=web.before(self.check_request, self.route) if web else self.check_request,
            select_subprotocol=select_subprotocol if web else None,
            compression=None,  # codes are incompressible; deflate would only cost memory
            max_size=self.limits.hard_max_message, max_queue=self.limits.receive_queue, write_limit=WRITE_LIMIT,
            ping_interval=ping_interval, ping_timeout=ping_timeout, logger=websockets_log,
            **({"reuse_port": True} if reuse_port else {}),
        )


def metrics_listener(relay: Relay, host: str, port: int) -> serve:
    """A listener of its own for ``/metrics`` (404 for anything else)."""
    route = metrics_route(relay)

    def answer(ws: ServerConnection, request: Request) -> Response:
        return route(ws, request) or ws.respond(HTTPStatus.NOT_FOUND, "Not found\n")
    return serve(lambda ws: ws.close(), host, port, process_request=answer, logger=websockets_log)


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``uvloop``'s loop (libuv) or asyncio's own (``None``)."""
    if name == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        raise SystemExit("--loop uvloop: uvloop is not installed (pip install uvloop)") from None
    return uvloop.new_event_loop


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert and not key:
        return None
    if not (cert and key):
        raise SystemExit("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


async def run(relay: Relay, host: str, port: int, tls: ssl.SSLContext | None,
              metrics_port: int | None = None, reuse_port: bool = False, web: WebRoutes | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then close every connection cleanly (1001, going away).
    ``metrics_port``: 0 answers ``/metrics`` on the relay's port, another its own listener."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if relay.cluster is not None:
        await relay.cluster.start()
    if metrics_port == 0:
        relay.routes.append(metrics_route(relay))
    metrics = metrics_listener(relay, host, metrics_port) if metrics_port else contextlib.nullcontext()
    async with relay.start(host, port, tls, reuse_port=reuse_port, web=web) as server, metrics:
        bound = [s.getsockname() for s in server.sockets]
        log_event("listening", addresses=[f"{a[0]}:{a[1]}" for a in bound], tls=tls is not None,
                  web=web is not None, auth=relay.token is not None, room_tokens=len(relay.room_tokens),
                  cluster=relay.cluster.servers if relay.cluster is not None else None,
                  forwarding=server.forwarding if relay.transport == "picows" else {"path": "python"})
        await stop.wait()
        log_event("shutting_down", peers=sum(len(r) for r in relay.rooms.values()))
    if relay.cluster is not None:
        await relay.cluster.close()  # after the last peer's LEFT was queued
    log_event("stopped", **relay.counters, **(relay.cluster.counters if relay.cluster is not None else {}))


def room_token(text: str) -> tuple[str, str]:
    """``ROOM=SECRET`` → ``(room, secret)``; an error message never repeats the secret."""
    room, equals, token = text.partition("=")
    if not (equals and token and is_room_name(room)):
        raise argparse.ArgumentTypeError(f"expected ROOM=SECRET (ROOM: {ROOM_RULE}; SECRET not empty)")
    return room, token


def read_room_tokens(path: str) -> list[tuple[str, str]]:
    """The ``ROOM=SECRET`` lines of a file; blank lines and ``#`` comments are skipped."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as error:
        raise SystemExit(f"--room-token-file: {error}") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                tokens.append(room_token(line))
            except argparse.ArgumentTypeError as error:
                raise SystemExit(f"{path}:{number}: {error}") from None
    return tokens


def secret(text: str) -> str:
    """``argparse`` type of ``--token``: an empty one would match a request that offers none."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def nats_urls(text: str) -> list[str]:
    """``argparse`` type of ``--cluster``: one or more comma-separated ``nats://HOST:PORT`` URLs."""
    urls = [url.strip() for url in text.split(",") if url.strip()]
    for url in urls:
        where = urlsplit(url)
        if where.scheme not in ("nats", "tls") or not where.hostname:
            raise argparse.ArgumentTypeError(f"{url!r} is not a NATS URL like nats://HOST:4222")
    if not urls:
        raise argparse.ArgumentTypeError("expected nats://HOST:PORT")
    return urls


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    defaults = Limits()
    paragraphs = __doc__.split("\n\n")  # the first is the description, the usage line is --help's own
    parser = argparse.ArgumentParser(description=paragraphs[0], epilog="\n\n".join(paragraphs[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port (default %(default)s; 0 picks one)")
    parser.add_argument("--token", type=secret, help="secret that opens every room, sent as 'Authorization: Bearer SECRET' "
                        "(default: rooms without a --room-token are open); tokens in the URL are refused")
    parser.add_argument("--room-token", type=room_token, action="append", default=[], metavar="ROOM=SECRET",
                        help="secret that opens ROOM only (repeatable); --token opens ROOM too")
    parser.add_argument("--room-token-file", metavar="FILE",
                        help="ROOM=SECRET lines (# comments), as --room-token but out of the process list")
    parser.add_argument("--max-connections", type=positive_int, default=defaults.max_connections, metavar="N",
                        help="peers connected at once; one more gets HTTP 503 (default %(default)s)")
    parser.add_argument("--max-rooms", type=positive_int, default=defaults.max_rooms, metavar="N",
                        help="rooms at once; a peer opening one more gets HTTP 503 (default %(default)s)")
    parser.add_argument("--max-peers-per-room", type=positive_int, default=defaults.max_peers_per_room, metavar="N",
                        help="peers in one room; one more gets HTTP 503 (default %(default)s)")
    parser.add_argument("--auth-failures", type=positive_int, default=defaults.auth_failures, metavar="N",
                        help="refused tokens (missing or wrong) from one address within --auth-window that "
                        "get it HTTP 429 for --auth-block (default %(default)s)")
    parser.add_argument("--auth-window", type=float, default=defaults.auth_window, metavar="SECONDS",
                        help="window in which --auth-failures count (default %(default)s)")
    parser.add_argument("--auth-block", type=float, default=defaults.auth_block, metavar="SECONDS",
                        help="how long a throttled address is refused (default %(default)s)")
    parser.add_argument("--cluster", type=nats_urls, action="extend", default=[], metavar="nats://HOST:PORT",
                        help="NATS server(s) joining this relay to the others on them, so a room spans nodes "
                        "(repeatable or comma-separated; default: a lone relay)")
    parser.add_argument("--metrics", type=int, nargs="?", const=0, metavar="PORT",
                        help="serve Prometheus metrics at /metrics: on the relay's port, or on PORT if given")
    parser.add_argument("--workers", type=positive_int, default=1, metavar="N",
                        help="N relay processes sharing --port (one per core), joined through --cluster or, "
                        "without it, a nats-server started on a loopback port (default %(default)s)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"],
                        default="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                        help="event loop (default: uvloop where installed: 0.9x the CPU a packet, "
                        "benchmarks/results/relay_capacity.md)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="picows",
                        help="websocket library serving the peers (default %(default)s, a Cython one: 0.54-0.73x "
                        "python-websockets' CPU a packet, benchmarks/results/relay_capacity.md)")
    parser.add_argument("--forwarding", choices=["compiled", "python"], default="compiled",
                        help="with picows: check and forward plain audio packets in C (call/relay_fast.pyx, built by "
                        "pip install; Python where it was not) or always in Python (default %(default)s)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="share --port with other processes (SO_REUSEPORT); --workers sets it")
    parser.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # its index: --metrics PORT + index
    parser.add_argument("--tls-cert", help="PEM certificate chain, to serve wss://")
    parser.add_argument("--tls-key", help="PEM private key for --tls-cert")
    parser.add_argument("--web", metavar="GRAPHS", help="also serve the browser peer (web/) over HTTP on the same port, "
                        "with the graphs exported into GRAPHS by 'python -m call.web_bundle' (see docs/WEB.md)")
    return parser


def relay_from_args(args: argparse.Namespace) -> Relay:
    """The relay the command line asks for."""
    room_tokens = args.room_token + (read_room_tokens(args.room_token_file) if args.room_token_file else [])
    limits = Limits(max_connections=args.max_connections, max_rooms=args.max_rooms,
                    max_peers_per_room=args.max_peers_per_room,
                    queue_control=max(Limits.queue_control, 4 * args.max_peers_per_room),  # a joiner's notices fit
                    auth_failures=args.auth_failures, auth_window=args.auth_window, auth_block=args.auth_block)
    relay = Relay(token=args.token, limits=limits, room_tokens=dict(room_tokens))
    relay.transport = args.transport
    relay.compiled = args.forwarding == "compiled"
    if args.cluster:
        relay.join_cluster(args.cluster)
    return relay


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.workers > 1:
        if args.port == 0:
            parser.error("--workers needs a --port to share")
        raise SystemExit(run_workers(Path(__file__).resolve(), sys.argv[1:] if argv is None else argv,
                                     args.workers, args.cluster))
    if args.metrics:
        args.metrics += args.worker
    websockets_log.setLevel(logging.WARNING)  # our JSON lines say it all
    relay = relay_from_args(args)
    try:
        web = WebRoutes(Path(args.web)) if args.web else None
    except FileNotFoundError as error:
        raise SystemExit(f"--web: {error}") from None
    with asyncio.Runner(loop_factory=event_loop_factory(args.loop)) as runner:
        runner.run(run(relay, args.host, args.port, tls_context(args.tls_cert, args.tls_key), args.metrics,
                       args.reuse_port, web))


if __name__ == "__main__":
    main()
