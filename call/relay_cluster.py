"""Rooms that span relay nodes, over NATS: what one node tells the others and hears from them.

Each node forwards its local peers' messages to its local peers as a lone relay does, and also
publishes them on the room's subject (``relay.room.<room>``), to which every node with members in
that room subscribes. Plain NATS pub/sub is at-most-once and never waits for a subscriber, which
is what live audio wants: a late frame is worth nothing, and a slow node must not slow the others
(NATS cuts off a node that cannot keep up; our own backlog towards NATS is bounded and drops).

Every cluster message is ``kind (1 byte) | node id (8 bytes) | varint peer | body``:

* ``DATA``: a peer's message (HEADER, audio, END), as the peer sent it (only to rooms with
  members on another node: a room that is all on one node never touches NATS);
* ``PRESENT``: a peer is in the room; the body is its stream's HEADER while one is in progress;
* ``ASK``: who is in this room? Every node answers with a ``PRESENT`` for each local peer;
* ``LEFT``: a peer left.

Peer ids are per node, so a node shows each remote peer to its local peers under an id of its own
(an alias) and sends ``JOINED``/``LEFT`` for it like for a local one. A node that stops sending
heartbeats (``relay.nodes``) for ``node_timeout`` is taken as gone and its peers leave. When a
local peer sends a HEADER identical to a remote peer's (the same sender, reconnected through this
node after its node died), the remote node is pinged on its own subject: NATS answers "no
responders" at once for a dead node, and its peers leave now instead of after the timeout, so
receivers hand the stream to the reconnected sender. When our own link to NATS goes down, every
remote peer leaves (local rooms go on); when it comes back, each room is announced and asked again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError, SlowConsumerError
from nats.errors import TimeoutError as NatsTimeout

from . import wire
from .relay_log import log_event

DATA, PRESENT, ASK, LEFT = 0, 1, 2, 3
NODE_ID_SIZE = 8
HEARTBEATS = "relay.nodes"

Deliver = Callable[[str, "int | None", bytes], None]
"""Hands a message to every local peer of a room: ``(room, source alias or None, message)``."""
Roster = Callable[[str], "list[tuple[int, bytes | None]]"]
"""The local peers of a room and the HEADER of each one's stream in progress (or ``None``)."""


def room_subject(room: str) -> str:
    """NATS subject of a room: ``.`` separates subject tokens, and is the one room-name character
    (``call.rooms``) a subject token cannot hold, so it becomes ``~``, which room names never use."""
    return f"relay.room.{room.replace('.', '~')}"


def node_subject(node: bytes) -> str:
    return f"relay.node.{node.hex()}"


def cluster_message(kind: int, node: bytes, peer: int, body: bytes = b"") -> bytes:
    return bytes([kind]) + node + wire.write_varint(peer) + body


def parse_cluster_message(data: bytes) -> tuple[int, bytes, int, bytes]:
    """``(kind, node, peer, body)``; raises :class:`wire.ProtocolError` for anything else."""
    if len(data) < 2 + NODE_ID_SIZE or data[0] > LEFT:
        raise wire.ProtocolError("not a cluster message")
    peer, pos = wire.read_varint(data, 1 + NODE_ID_SIZE, 5)
    return data[0], bytes(data[1:1 + NODE_ID_SIZE]), peer, bytes(data[pos:])


@dataclass
class RemotePeer:
    """A peer connected to another node, as this node's local peers see it."""

    alias: int
    room: str
    node: bytes
    header: bytes | None = None
    """Its stream's HEADER while the stream is in progress: a local joiner gets it."""


@dataclass(frozen=True)
class ClusterSettings:
    heartbeat: float = 0.5
    """Seconds between a node's heartbeats."""
    node_timeout: float = 3.0
    """Seconds without a heartbeat after which a node is gone and its peers have left."""
    backlog: int = 4096
    """Messages waiting to go to NATS; beyond it new ones are dropped (and counted)."""
    inbound: int = 8192
    """Messages NATS has delivered to one room's subscription and we have not handled yet; beyond
    it the NATS client drops them (a slow consumer)."""
    reconnect_wait: float = 0.5
    """Seconds between attempts to reach NATS."""
    ping_timeout: float = 0.1
    """Seconds a node pinged about a reconnected sender has to answer before it is pinged again
    (until ``node_timeout``): a live node answers in well under a millisecond."""


class ClusterLink:
    """This node's part in the cluster: started by :meth:`start`, told of local joins, leaves and
    messages by the relay, and delivering remote ones through ``deliver``. It never waits on the
    relay's hot path: publishing is a bounded queue drained by one task."""

    def __init__(self, servers: list[str], deliver: Deliver, roster: Roster, new_id: Callable[[], int],
                 settings: ClusterSettings = ClusterSettings()) -> None:
        self.servers, self.deliver, self.roster, self.new_id = servers, deliver, roster, new_id
        self.settings = settings
        self.node = os.urandom(NODE_ID_SIZE)
        self.nc: NatsClient | None = None
        self.up = False
        self.remote: dict[tuple[bytes, int], RemotePeer] = {}
        self.rooms: dict[str, dict[tuple[bytes, int], RemotePeer]] = {}
        """Remote peers of each room that has local peers."""
        self.subscriptions: dict[str, Subscription] = {}
        self.seen: dict[bytes, float] = {}
        """When each node was last heard."""
        self.counters: Counter[str] = Counter()
        self.outbound: deque[tuple[str, bytes]] = deque()
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self._last_problem: str | None = None

    # ---------------------------------------------------------------- lifetime

    async def start(self) -> None:
        """Connect in the background: a relay whose NATS is not there yet serves its local rooms."""
        self.tasks = [asyncio.create_task(self._connect()), asyncio.create_task(self._drain()),
                      asyncio.create_task(self._heartbeats())]

    async def close(self) -> None:
        """Publish what is queued (the LEFT of every peer of a node shutting down), then go."""
        if self.nc is not None and self.up:
            try:
                while self.outbound:
                    await self.nc.publish(*self.outbound.popleft())
                await asyncio.wait_for(self.nc.flush(), 2)
            except Exception as error:  # noqa: BLE001 - a node shutting down says why once, and goes
                log_event("cluster_flush_failed", logging.WARNING, error=f"{type(error).__name__}: {error}")
        self.up = False  # going: closing the link is no loss to log
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.close(), 2)  # a NATS gone mid-close must not hold the shutdown
            except asyncio.TimeoutError:
                log_event("cluster_close_timed_out", logging.WARNING)

    async def _connect(self) -> None:
        self.nc = await nats.connect(
            servers=self.servers, name=f"relay-{self.node.hex()}", no_echo=True, allow_reconnect=True,
            max_reconnect_attempts=-1, reconnect_time_wait=self.settings.reconnect_wait, connect_timeout=2,
            disconnected_cb=self._link_down, reconnected_cb=self._link_up, error_cb=self._error,
            pending_size=self.settings.backlog * 64)
        await self.nc.subscribe(HEARTBEATS, cb=self._heartbeat)
        await self.nc.subscribe(node_subject(self.node), cb=self._pinged)
        for room in self.rooms:
            await self._subscribe(room)
        await self._link_up()

    async def _link_up(self) -> None:
        """Connected (again): say who is here in each room and ask who is there."""
        self.up = True
        log_event("cluster_link_up", server=str(self.nc.connected_url.netloc if self.nc.connected_url else "?"),
                  node=self.node.hex(), rooms=len(self.rooms))
        for room in self.rooms:
            self._announce(room)

    async def _link_down(self) -> None:
        """Lost NATS: remote peers are out of reach, so they leave; local rooms go on."""
        if not self.up:
            return
        self.up = False
        log_event("cluster_link_down", logging.WARNING, node=self.node.hex(), remote_peers=len(self.remote),
                  note="local rooms keep working; retrying NATS")
        for key in list(self.remote):
            self._depart(key)
        self.outbound.clear()

    async def _error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError):
            self.counters["cluster_dropped_inbound"] += 1
            return
        problem = f"{type(error).__name__}: {error}"
        if problem != self._last_problem:  # said once until the problem changes
            log_event("cluster_error", logging.WARNING, error=problem)
        self._last_problem = problem
        self.counters["cluster_errors"] += 1

    # ------------------------------------------------------- from the relay

    def join(self, room: str, peer: int) -> None:
        """A local peer joined ``room``."""
        if room not in self.rooms:
            self.rooms[room] = {}
            if self.nc is not None:
                asyncio.ensure_future(self._subscribe(room))
        self._publish(room, PRESENT, peer)
        self._publish(room, ASK, 0)

    def leave(self, room: str, peer: int, last: bool) -> None:
        """A local peer left ``room``; ``last``: no local peer is left in it."""
        self._publish(room, LEFT, peer)
        if last:
            for key in list(self.rooms.pop(room, {})):
                self.remote.pop(key, None)
            subscription = self.subscriptions.pop(room, None)
            if subscription is not None:
                asyncio.ensure_future(subscription.unsubscribe())

    def forward(self, room: str, peer: int, message: bytes) -> None:
        """A local peer's message, already checked and forwarded locally: published only while
        another node has members in the room (a room that is all here costs NATS nothing)."""
        if self.rooms.get(room):
            self._publish(room, DATA, peer, message)
            if message[0] == wire.HEADER:
                self._check_takeover(room, message)

    def members(self, room: str) -> list[RemotePeer]:
        return list(self.rooms.get(room, {}).values())

    def greet(self, room: str, enqueue: Callable[[int | None, bytes], None]) -> None:
        """Tell a local joiner who is on other nodes and which streams are in progress there."""
        for remote in self.members(room):
            enqueue(None, wire.joined(remote.alias))
            if remote.header is not None:
                enqueue(remote.alias, remote.header)

    # ------------------------------------------------------------ publishing

    def _publish(self, room: str, kind: int, peer: int, body: bytes = b"") -> None:
        self._send(room_subject(room), cluster_message(kind, self.node, peer, body))

    def _send(self, subject: str, payload: bytes) -> None:
        if not self.up:
            self.counters["cluster_dropped_link_down"] += 1
            return
        if len(self.outbound) >= self.settings.backlog:
            self.counters["cluster_dropped_backlog"] += 1
            return
        self.outbound.append((subject, payload))
        self.wake.set()

    async def _drain(self) -> None:
        """The one task that hands messages to the NATS client, so a slow NATS holds up nobody."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.outbound and self.up:
                subject, payload = self.outbound.popleft()
                try:
                    await self.nc.publish(subject, payload)
                    self.counters["cluster_published"] += 1
                except Exception as error:  # noqa: BLE001 - the link is down or full: a live frame is dropped
                    self.counters["cluster_dropped_publish"] += 1
                    await self._error(error)

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat)
            if self.up:
                self._send(HEARTBEATS, self.node)
            now = time.monotonic()
            for node in [n for n, t in self.seen.items() if now - t > self.settings.node_timeout]:
                self._node_gone(node, "no heartbeat")

    # ------------------------------------------------------------- receiving

    async def _subscribe(self, room: str) -> None:
        if room in self.subscriptions or room not in self.rooms:
            return

        async def on_message(msg: Msg) -> None:
            self._received(room, msg.data)

        subscription = await self.nc.subscribe(room_subject(room), cb=on_message,
                                               pending_msgs_limit=self.settings.inbound)
        if room in self.rooms and room not in self.subscriptions:
            self.subscriptions[room] = subscription
        else:  # the room emptied while we subscribed
            await subscription.unsubscribe()

    def _received(self, room: str, data: bytes) -> None:
        if room not in self.rooms:
            return
        try:
            kind, node, peer, body = parse_cluster_message(data)
        except wire.ProtocolError:
            self.counters["cluster_malformed"] += 1
            return
        key = (node, peer)
        if kind == LEFT:
            self._depart(key)
            return
        if kind == ASK:
            self.seen.setdefault(node, time.monotonic())
            self._present_all(room)
            return
        remote = self.remote.get(key)
        if remote is None:
            remote = self._arrive(room, key, ask=kind == DATA and body[:1] != bytes([wire.HEADER]))
        if kind == PRESENT:
            if body and body != remote.header:  # a new or changed stream (a replayed one is not repeated)
                remote.header = body
                self.deliver(room, remote.alias, body)
            return
        self.counters["cluster_received"] += 1
        if body[0] == wire.HEADER:
            remote.header = body
        elif body[0] == wire.END:
            remote.header = None
        self.deliver(room, remote.alias, body)

    def _arrive(self, room: str, key: tuple[bytes, int], ask: bool) -> RemotePeer:
        """A remote peer we did not know; ``ask``: we met it mid-stream, so ask for its HEADER.
        The first remote peer of a room starts our publishing to it, so the streams in progress
        here are announced with their HEADERs (sent before anyone else was there to hear them)."""
        first = not self.rooms[room]
        remote = RemotePeer(self.new_id(), room, key[0])
        self.remote[key] = self.rooms[room][key] = remote
        self.seen.setdefault(key[0], time.monotonic())
        self.deliver(room, None, wire.joined(remote.alias))
        if first:
            self._present_all(room)
        if ask:
            self._publish(room, ASK, 0)
        return remote

    def _depart(self, key: tuple[bytes, int]) -> None:
        remote = self.remote.pop(key, None)
        if remote is None:
            return
        self.rooms.get(remote.room, {}).pop(key, None)
        self.deliver(remote.room, None, wire.left(remote.alias))

    def _node_gone(self, node: bytes, why: str) -> None:
        self.seen.pop(node, None)
        gone = [key for key in self.remote if key[0] == node]
        if gone:
            log_event("cluster_node_gone", logging.WARNING, node=node.hex(), why=why, peers=len(gone))
        for key in gone:
            self._depart(key)

    async def _heartbeat(self, msg: Msg) -> None:
        if len(msg.data) == NODE_ID_SIZE:
            self.seen[bytes(msg.data)] = time.monotonic()

    async def _pinged(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(b"")

    def _check_takeover(self, room: str, header: bytes) -> None:
        """A local peer resumed a stream that a remote peer held: is that peer's node still there?"""
        for remote in self.members(room):
            if remote.header == header:
                asyncio.ensure_future(self._ping(remote.node))

    async def _ping(self, node: bytes) -> None:
        """Ping until the node answers (alive: the receivers keep refusing the claimant) or NATS says
        nobody listens on its subject. A ping can beat NATS to noticing a crash (it then goes to the
        dead connection and times out), hence the retries, until heartbeats would have decided."""
        deadline = time.monotonic() + self.settings.node_timeout
        while node in self.seen and time.monotonic() < deadline:
            try:
                await self.nc.request(node_subject(node), b"", timeout=self.settings.ping_timeout)
                return
            except NoRespondersError:
                self._node_gone(node, "no responders: its sender reconnected here")
                return
            except NatsTimeout:
                continue
            except Exception:  # noqa: BLE001 - no link to ask through: heartbeats decide
                return

    # ---------------------------------------------------------------- state

    def _present_all(self, room: str) -> None:
        """Tell the other nodes of ``room`` about each local peer in it and its stream in progress."""
        for local, header in self.roster(room):
            self._publish(room, PRESENT, local, header or b"")

    def _announce(self, room: str) -> None:
        self._present_all(room)
        self._publish(room, ASK, 0)
