"""The seam between the relay and the websocket library that serves it: what ``server.Relay`` needs
of one peer's connection (``Link``), whichever library holds it (``server.py`` for python-websockets,
``call/relay_picows.py`` for picows). Rooms, auth, limits, queues, drops, metrics and the cluster
link see only this. No torch here: the relay imports it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Protocol

POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013
GOING_AWAY = 1001
WRITE_LIMIT = 4096
"""Bytes a peer's socket may hold back before the writer of its queued messages waits: the queue,
not the socket, is where a slow peer's audio is dropped (``server.Peer``)."""


class LinkClosed(Exception):
    """The connection closed while a message waited to be written."""


class Link(Protocol):
    """One peer's websocket connection, as the relay uses it."""

    remote_address: tuple
    """``(host, port, …)`` of the peer, as the socket reports it."""

    @property
    def close_code(self) -> int | None:
        """The code of the close handshake once the connection is closed (for the log)."""

    @property
    def is_open(self) -> bool:
        """Messages written now will be sent (no close frame sent or received yet)."""

    def backlog(self) -> int:
        """Bytes written and not yet taken by the socket: 0 means a write goes out at once."""

    def write(self, frame: bytes) -> None:
        """Write one whole, already framed message (``binary_frame``), at once, never waiting;
        nothing on a connection that is no longer open."""

    async def send(self, message: bytes) -> None:
        """Frame and write ``message``, then wait while the socket's backlog is over its limit;
        raises ``LinkClosed`` once the connection is closed."""

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake with ``code`` (the peer sees ``reason``), without waiting for it."""

    def set_send_buffer(self, size: int) -> None:
        """The kernel's send buffer for this socket (bytes): keeps a slow peer's backlog short."""


def binary_frame(message: bytes) -> bytes:
    """``message`` as a server's binary websocket frame. A server's frames are unmasked, so this is a
    2- or 4-byte prefix: built once per message, the same bytes go to every receiver of a room
    (messages over 64 KiB never get here: ``Limits.hard_max_message``)."""
    size = len(message)
    prefix = bytes((0x82, size)) if size < 126 else bytes((0x82, 126)) + size.to_bytes(2, "big")
    return prefix + message


def limit_send_buffer(transport: asyncio.BaseTransport, size: int) -> None:
    """``Link.set_send_buffer`` for a link over an asyncio transport: the kernel's send buffer of its socket."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
