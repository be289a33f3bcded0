"""``server.py --transport picows``: the relay's peers served by picows, a websocket library written
in Cython for asyncio, instead of python-websockets.

python-websockets hands each message to a coroutine (``async for message in ws``), through a queue,
a future and a task switch: most of what one forwarded packet costs the relay. picows parses frames
in C and calls ``on_ws_frame`` with each one as it arrives, so a packet is checked and forwarded in
one plain call. The relay itself (rooms, auth, limits, queues, drops, metrics, cluster) is the same
``server.Relay``, reached through ``call/relay_link.py``; this module only translates:

* the upgrade request → ``Relay.check_request`` (a websockets ``Request``, so the checks, the refusals
  and ``/metrics`` answer exactly as they do under websockets), its ``Response`` → picows'; with
  ``--web`` a plain GET is the page's (``call/web_routes.py``: its files are in memory, so the answer
  is ready within picows' synchronous handshake callback) and the page's subprotocol is chosen;
* frames → ``Relay.receive``: a binary message whole in one frame is a packet; text and fragmented
  messages are no packet of a call (counted malformed, never reassembled, so never buffered); a
  frame over ``Limits.hard_max_message`` closes the connection with 1009 before it is buffered;
* a sender over its rate → its socket is not read for the time ``Relay.receive`` says (TCP pushes
  back); frames already read in the same chunk are still handled, and their debt lengthens the pause;
* close handshakes, with a timeout after which a peer that never answers is cut off, and pings.

Where ``call/relay_fast.pyx`` was built (``pip install``), a plain one-frame audio packet is checked and
forwarded in C (``CompiledPeerListener``) and everything else comes here; without it (no compiler at
install, or a picows whose layout differs from the one it was built against) this module does it all.

No torch here: the relay imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from http import HTTPStatus
from typing import Protocol

from multidict import CIMultiDict
from picows import (WSAutoPingStrategy, WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest,
                    WSUpgradeResponse, WSUpgradeResponseWithListener)
from picows.picows import WSProtocol
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .relay_link import GOING_AWAY, WRITE_LIMIT, LinkClosed, limit_send_buffer
from .web_routes import WebRoutes, offered_subprotocols, select_subprotocol

CLOSE_TIMEOUT = 10.0
"""Seconds a peer has to answer our close frame before its connection is cut (websockets' default)."""
HANDSHAKE_TIMEOUT = 10.0
NOT_A_PACKET = ""
"""What the relay is handed for a text or fragmented message: a ``str``, which it counts as malformed."""

BINARY, TEXT, CLOSE = WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CLOSE
"""Compared by identity in ``on_ws_frame`` (every packet): picows hands each frame's type as these members."""

picows_log = logging.getLogger("relay.picows")
"""picows' own lines: warnings and errors only. Its INFO says every connection, its DEBUG holds raw
requests (tokens included), and a parent logger's ``Redact`` filter would not see them."""
picows_log.setLevel(logging.WARNING)


class RelayCore(Protocol):
    """What this transport needs of ``server.Relay``."""

    rooms: dict
    limits: object

    def check_request(self, connection: object, request: Request) -> Response | None: ...
    def route(self, connection: object, request: Request) -> Response | None: ...
    def admit(self, link: PicowsLink, room: str) -> object | None: ...
    def receive(self, peer: object, message: bytes | str) -> float: ...
    def depart(self, peer: object) -> None: ...


class PicowsLink:
    """A picows connection as the relay's ``Link`` (``call/relay_link.py``)."""

    def __init__(self, transport: WSTransport, remote_address: tuple) -> None:
        self.ws, self.raw = transport, transport.underlying_transport
        self.remote_address = remote_address
        self.close_code: int | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.raw.set_write_buffer_limits(high=WRITE_LIMIT)
        self.backlog = self.raw.get_write_buffer_size  # Link.backlog, bound once: asked for every packet
        self._cut: asyncio.TimerHandle | None = None

    @property
    def is_open(self) -> bool:
        return not (self.ws.is_close_frame_sent or self.ws.is_disconnected)

    def write(self, frame: bytes) -> None:
        ws = self.ws  # is_open, inline: every forwarded packet passes here
        if not (ws.is_close_frame_sent or ws.is_disconnected):
            self.raw.write(frame)

    async def send(self, message: bytes) -> None:
        if not self.is_open:
            raise LinkClosed
        self.ws.send(WSMsgType.BINARY, message)
        await self.writable.wait()

    def close(self, code: int, reason: str) -> None:
        if not self.is_open:
            return
        self.close_code = code
        self.ws.send_close(WSCloseCode(code), reason.encode())
        self._cut = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.raw.abort)

    def set_send_buffer(self, size: int) -> None:
        limit_send_buffer(self.raw, size)

    def peer_closed(self, frame: WSFrame) -> None:
        """The peer's close frame: answer it (unless it answers ours) and close the socket."""
        code = frame.get_close_code()
        if self.close_code is None:
            self.close_code = code.value
        if not self.ws.is_close_frame_sent:
            self.ws.send_close(code)
        self.ws.disconnect()

    def disconnected(self) -> None:
        if self._cut is not None:
            self._cut.cancel()
        self.writable.set()  # a writer waiting for room wakes, and finds the link closed


class PeerListener(WSListener):
    """One connection's frames, handed to the relay as they are parsed."""

    def __init__(self, relay: RelayCore, room: str, remote_address: tuple, listeners: set[PeerListener]) -> None:
        super().__init__()
        self.relay, self.room, self.remote_address, self.listeners = relay, room, remote_address, listeners
        self.link: PicowsLink | None = None
        self.peer: object | None = None
        self.paused = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.link = PicowsLink(transport, self.remote_address)
        self.listeners.add(self)
        self.peer = self.relay.admit(self.link, self.room)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is BINARY and frame.fin:
            message: bytes | str = frame.get_payload_as_bytes()
        elif kind is CLOSE:
            self.link.peer_closed(frame)
            return
        elif kind is TEXT or kind is BINARY:  # text, or the first fragment of a message
            message = NOT_A_PACKET
        else:
            return  # the rest of a fragmented message (counted at its start) and pongs: nothing to do
        if self.peer is None:
            return  # refused (1013): its close handshake is under way
        wait = self.relay.receive(self.peer, message)
        if wait and not self.paused:
            self.paused = True
            self.link.raw.pause_reading()
            asyncio.get_running_loop().call_later(wait, self._resume)

    def _resume(self) -> None:
        self.paused = False
        if not self.link.ws.is_disconnected:
            self.link.raw.resume_reading()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.listeners.discard(self)
        self.link.disconnected()
        if self.peer is not None:
            self.relay.depart(self.peer)

    def pause_writing(self) -> None:
        self.link.writable.clear()

    def resume_writing(self) -> None:
        self.link.writable.set()


try:
    from .relay_fast import FastFrames
    UNCOMPILED: str | None = None
except (ImportError, ValueError) as error:  # not built; built against another picows (a size check fails)
    FastFrames, UNCOMPILED = None, f"call.relay_fast not importable ({error}): pip install -e . builds it"

if FastFrames is not None:
    class CompiledPeerListener(FastFrames, PeerListener):
        """A ``PeerListener`` whose frames go to the compiled path first (``call/relay_fast.pyx``)."""

        python_path = PeerListener.on_ws_frame
        """What the compiled path hands every frame it does not take itself."""


def listener_class(compiled: bool) -> type[PeerListener]:
    """The listener for each peer: the compiled path where asked for and built, else the Python one."""
    return CompiledPeerListener if compiled and FastFrames is not None else PeerListener


def forwarding(compiled: bool) -> dict[str, str]:
    """Which path forwards packets, and why not the compiled one (for the relay's log)."""
    if listener_class(compiled) is not PeerListener:
        return {"path": "compiled"}
    return {"path": "python", "why": "--forwarding python" if not compiled else UNCOMPILED}


class Handshake:
    """What ``Relay.check_request`` reads of the connection being upgraded (websockets' names)."""

    def __init__(self, remote_address: tuple) -> None:
        self.remote_address = remote_address

    @staticmethod
    def respond(status: HTTPStatus, text: str) -> Response:
        body = text.encode()
        return Response(status.value, status.phrase, Headers([("Content-Type", "text/plain; charset=utf-8")]), body)


def picows_response(response: Response) -> WSUpgradeResponse:
    """A websockets ``Response`` (a refusal, ``/metrics``) as picows sends it (it adds the length)."""
    translated = WSUpgradeResponse()
    translated.version = b"HTTP/1.1"
    translated.status = HTTPStatus(response.status_code)
    translated.headers = CIMultiDict((name, value) for name, value in response.headers.raw_items()
                                     if name.lower() not in ("content-length", "connection"))
    translated.body = response.body
    return translated


def upgrade(relay: RelayCore, web: WebRoutes | None, request: WSUpgradeRequest, remote_address: tuple,
            listeners: set[PeerListener], kind: type[PeerListener] = PeerListener,
            ) -> PeerListener | WSUpgradeResponseWithListener:
    """The relay's answer to a request: a listener (of ``kind``) for the peer, or the response to send (a refusal,
    ``/metrics``, with ``web`` the page's files)."""
    path = request.path.decode("latin-1")
    checked = Request(path, Headers(request.headers.items()))
    check = web.before(relay.check_request, relay.route) if web is not None else relay.check_request
    response = check(Handshake(remote_address), checked)
    if response is not None:
        return WSUpgradeResponseWithListener(picows_response(response), None)
    listener = kind(relay, path.partition("?")[0].lstrip("/"), remote_address, listeners)
    chosen = select_subprotocol(None, offered_subprotocols(checked)) if web is not None else None
    if chosen is None:
        return listener
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response({"Sec-WebSocket-Protocol": chosen}),
                                         listener)


class PicowsServer:
    """The listening socket and its peers; like websockets' ``Server``: ``sockets``, ``close``,
    ``wait_closed``, and ``async with`` (which closes every peer with 1001 on the way out); ``compiled``:
    forward in C where ``call/relay_fast.pyx`` was built."""

    def __init__(self, relay: RelayCore, host: str | None, port: int, tls: ssl.SSLContext | None,
                 ping_interval: float, ping_timeout: float, reuse_port: bool, web: WebRoutes | None = None,
                 compiled: bool = True) -> None:
        self.relay, self.host, self.port, self.tls, self.reuse_port, self.web = relay, host, port, tls, reuse_port, web
        self.compiled = compiled
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.listeners: set[PeerListener] = set()
        self.server: asyncio.Server | None = None

    def _protocol(self) -> WSProtocol:
        """One connection's protocol; its listener factory needs the peer's address (the auth
        throttle counts per address), which picows' own server does not pass on."""
        def listener_for(request: WSUpgradeRequest) -> PeerListener | WSUpgradeResponseWithListener:
            remote = protocol.transport.underlying_transport.get_extra_info("peername")
            return upgrade(self.relay, self.web, request, remote, self.listeners, listener_class(self.compiled))

        protocol = WSProtocol(
            None, None, False, listener_for, picows_log, True, HANDSHAKE_TIMEOUT,
            True, self.ping_interval, min(self.ping_timeout, self.ping_interval), WSAutoPingStrategy.PING_WHEN_IDLE,
            True, self.relay.limits.hard_max_message, None, 16 * 1024)
        return protocol

    @property
    def sockets(self) -> tuple:
        return self.server.sockets

    async def __aenter__(self) -> PicowsServer:
        self.server = await asyncio.get_running_loop().create_server(
            self._protocol, self.host, self.port, ssl=self.tls, reuse_port=self.reuse_port or None)
        return self

    @property
    def forwarding(self) -> dict[str, str]:
        """Which path forwards packets, and why not the compiled one (the relay's ``listening`` line says it)."""
        return forwarding(self.compiled)

    async def __aexit__(self, *_: object) -> None:
        self.close()
        await self.wait_closed()

    def close(self) -> None:
        self.server.close()
        for listener in list(self.listeners):
            listener.link.close(GOING_AWAY, "server shutting down")

    async def wait_closed(self) -> None:
        """Until every peer is gone (each has ``CLOSE_TIMEOUT`` to answer before it is cut), or a
        second longer at most: a shutdown never hangs on a peer."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT + 1):
                while self.listeners:
                    await asyncio.sleep(0.05)
        await self.server.wait_closed()
