"""The relay's compiled per-packet path (``call/relay_fast.pyx``) against its Python twin
(``call/relay_picows.PeerListener``): the same messages into two relays, one on each path, give the
same verdicts (the relay's counters), the same stream state, and the same bytes on every receiver's
wire, through in-order, late, stale and wrapped packets, every size, stray padding, multi-frame
packets, headers, ENDs, silences, text and fragments, receivers with a backlog, two senders (a
change of source) and a sender over its rate. Peers are picows ``WSTransport`` objects over socket
pairs, so the compiled path writes through the same picows call as in a running relay."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from picows import WSMsgType, WSTransport
from picows.picows import _make_test_ws_frame

from call import relay_picows
from call import wire as p
from server import Limits, Relay

if relay_picows.FastFrames is None:
    if shutil.which("cc") or shutil.which("gcc"):
        pytest.fail(f"{relay_picows.UNCOMPILED} (a C compiler is here, so the install should have built it)",
                    pytrace=False)
    pytest.skip("no C compiler: call.relay_fast could not be built, the relay forwards in Python",
                allow_module_level=True)

HEADERS = [p.StreamHeader(fingerprint=b"fastpath", sample_rate=24000, channels=1, samples_per_frame=320,
                          codebook_nbits=nbits, max_codebooks=codebooks, version=p.DTX_VERSION)
           for nbits, codebooks in ((10, 32), (13, 12), (16, 8))]
LIMITS = Limits(max_message=40, rate=1e9, burst=1e9, strikes=1e9)
"""Every check reachable by a one-frame packet (a 32-codebook one at 10 bits is 42 bytes: oversized);
no throttling and no closing for garbage here: their own test below."""


class Socketpair:
    """The asyncio transport under a peer's ``WSTransport``: picows sends on its socket's descriptor
    while its backlog is 0, otherwise it calls ``write``; ``wire`` gets both, in order."""

    def __init__(self, port: int) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.ours.setblocking(False)
        self.theirs.setblocking(False)
        self.port = port
        self.backlog = 0
        """What ``get_write_buffer_size`` says: nonzero sends the relay's messages to the peer's queue."""
        self.wire = bytearray()
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"socket": self.ours, "peername": ("127.0.0.1", self.port)}.get(name, default)

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def write(self, data: bytes) -> None:
        self.drain()
        self.wire += data

    def drain(self) -> bytes:
        while True:
            try:
                self.wire += self.theirs.recv(65536)
            except BlockingIOError:
                return bytes(self.wire)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        pass

    abort = close


class Room:
    """A relay with three peers in one room on one path: A and B send, all three receive."""

    def __init__(self, listener: type, limits: Limits) -> None:
        self.relay = Relay(limits=limits)
        self.relay.compiled = listener is not relay_picows.PeerListener
        loop = asyncio.get_running_loop()
        self.sockets = [Socketpair(port) for port in (1, 2, 3)]
        self.transports = [WSTransport(False, raw, logging.getLogger("test.picows"), loop) for raw in self.sockets]
        self.listeners = [listener(self.relay, "room", ("127.0.0.1", raw.port), set()) for raw in self.sockets]
        for listener_, transport in zip(self.listeners, self.transports):
            listener_.on_ws_connected(transport)

    def behind(self, receiver: int, behind: bool) -> None:
        """A receiver's socket holds a backlog past the write limit (picows pauses writing), or has none."""
        self.sockets[receiver].backlog = 100 if behind else 0
        listener = self.listeners[receiver]
        listener.pause_writing() if behind else listener.resume_writing()

    def frame(self, sender: int, kind: WSMsgType, payload: bytes, fin: bool = True) -> None:
        self.listeners[sender].on_ws_frame(self.transports[sender], _make_test_ws_frame(kind, payload, fin, False))

    def state(self) -> tuple:
        """Everything the two paths must agree on: verdicts, streams, queues, pauses, and each wire."""
        peers = [listener.peer for listener in self.listeners]
        return (dict(self.relay.counters), [(q.stream.newest, q.stream.ended, q.stream.header, len(q.queue),
                                             q.last_source, q.closing) for q in peers],
                [(raw.drain(), raw.reading) for raw in self.sockets])


class CountingListener(relay_picows.CompiledPeerListener):
    """The compiled listener, counting the frames it hands to the Python path."""

    handed = 0

    def python_path(self, transport: WSTransport, frame: object) -> None:
        CountingListener.handed += 1
        relay_picows.PeerListener.on_ws_frame(self, transport, frame)


def messages(rng: np.random.Generator, count: int):
    """``(sender, type, payload, fin)`` of a long, mixed call: mostly valid audio from peer A."""
    newest, header = [0, 0], [HEADERS[0], HEADERS[0]]
    for sender in (0, 1):
        yield sender, WSMsgType.BINARY, HEADERS[0].encode(), True
    for _ in range(count - 2):
        sender = 0 if rng.random() < 0.9 else 1
        roll = rng.random()
        if roll < 0.006:
            if rng.random() < 0.5:
                header[sender] = HEADERS[int(rng.integers(len(HEADERS)))]
                yield sender, WSMsgType.BINARY, header[sender].encode(), True
            else:
                yield sender, WSMsgType.BINARY, p.EndOfStream(newest[sender] + 1, 0).encode(), True
            continue
        if roll < 0.015:
            yield sender, WSMsgType.BINARY, p.ComfortNoise(newest[sender] + 1, (-60.0, -70.0)).encode(), True
            continue
        if roll < 0.02:
            yield sender, WSMsgType.BINARY, p.RateRequest(1, 3.0).encode(), True
            continue
        if roll < 0.025:
            yield sender, (WSMsgType.TEXT if rng.random() < 0.5 else WSMsgType.BINARY), b"\x80\x01\x02", False
            continue
        if roll < 0.03:
            yield sender, WSMsgType.TEXT, b"hello", True
            continue
        if roll < 0.1:  # late, or stale (more than 150 frames behind)
            index = max(newest[sender] - int(rng.integers(1, 200)), 0)
        else:  # in order, repeated, a gap, or half the index range ahead (its wrap is ambiguous)
            newest[sender] += int(rng.integers(0, 3)) if rng.random() > 0.003 else p.INDEX_MODULUS // 2
            index = newest[sender]
        wire_index = index % p.INDEX_MODULUS
        data = bytearray([0x80 | wire_index >> 8, wire_index & 0xFF])
        nbits, most = header[sender].codebook_nbits, header[sender].max_codebooks
        if rng.random() < 0.85:  # mostly valid: whole codes and zero padding
            data += p.pack_codes(rng.integers(0, 1 << nbits, int(rng.integers(1, most + 1))), nbits)
        else:
            data += rng.integers(0, 256, int(rng.integers(0, 45)), dtype=np.uint8).tobytes()
        if rng.random() < 0.03:
            data[0] |= p.MULTI_FLAG
        yield sender, WSMsgType.BINARY, bytes(data), True


async def test_compiled_path_forwards_exactly_as_the_python_path():
    """6,000 mixed messages, receivers now and then behind (queued, dropped when full): after every
    message both relays agree on everything, and most messages went the compiled way."""
    rng = np.random.default_rng(18)
    python, compiled = Room(relay_picows.PeerListener, LIMITS), Room(CountingListener, LIMITS)
    CountingListener.handed = 0
    for n, (sender, kind, payload, fin) in enumerate(messages(rng, 6000)):
        if rng.random() < 0.02:  # a receiver falls behind (its messages queue, the oldest audio dropped) or catches up
            receiver, behind = int(rng.integers(3)), rng.random() < 0.4
            for room in (python, compiled):
                room.behind(receiver, behind)
        for room in (python, compiled):
            room.frame(sender, kind, payload, fin)
        if rng.random() < 0.7:  # the writers drain the queues; else the next messages pile up behind them
            await asyncio.sleep(0)
        assert compiled.state() == python.state(), (n, payload)
    counters = python.relay.counters
    assert counters["forwarded"] > 3000 and counters["malformed"] > 300 and counters["out_of_order"] > 100
    assert counters["oversized"] > 10 and sum(listener.peer.dropped for listener in python.listeners) > 10
    assert CountingListener.handed < 0.5 * 6000, "the compiled path took too few packets"


async def test_compiled_path_takes_every_plain_packet():
    """After its HEADER (forwarded in Python, in a ``ROUTED`` envelope naming its source), a sender's
    in-order one-frame packets never reach the Python path; each receiver's wire holds them as a
    server's binary frames."""
    room = Room(CountingListener, Limits())
    header = HEADERS[0]
    room.frame(0, WSMsgType.BINARY, header.encode())
    packets = [p.AudioPacket(i, (np.full(8, i % 1024),)).encode(10) for i in range(300)]
    CountingListener.handed = 0
    for packet in packets:
        room.frame(0, WSMsgType.BINARY, packet)
    assert CountingListener.handed == 0
    routed = p.route(room.listeners[0].peer.id, header.encode())
    expected = b"".join(bytes((0x82, len(m))) + m for m in [routed, *packets])
    for raw in room.sockets[1:]:
        assert raw.drain().endswith(expected)
    assert room.relay.counters["forwarded"] == 301 and room.relay.counters["messages_out"] == 2 * 301
    assert room.listeners[0].peer.stream.newest == 299


async def test_a_sender_over_its_rate_is_throttled_alike():
    """Past its burst a sender's packets go to the Python path, which counts them and pauses its reading."""
    limits = Limits(rate=1e-3, burst=5)
    python, compiled = Room(relay_picows.PeerListener, limits), Room(CountingListener, limits)
    for room in (python, compiled):
        room.frame(0, WSMsgType.BINARY, HEADERS[0].encode())
        for i in range(10):
            room.frame(0, WSMsgType.BINARY, p.AudioPacket(i, (np.full(8, 3),)).encode(10))
    assert compiled.state() == python.state()
    assert python.relay.counters["throttled"] == 6 and not python.sockets[0].reading


@pytest.mark.parametrize("flag, path", [([], "compiled"), (["--forwarding", "python"], "python")])
def test_the_relay_says_which_path_forwards(flag, path):
    """``server.py``'s ``listening`` line names the path, and why it is not the compiled one."""
    process = subprocess.Popen([sys.executable, "server.py", "--port", "0", *flag], cwd=Path(__file__).parent.parent,
                               stderr=subprocess.PIPE, text=True)
    try:
        line = json.loads(process.stderr.readline())
    finally:
        process.terminate()
        process.wait(30)
    assert line["event"] == "listening" and line["forwarding"]["path"] == path
    assert path == "compiled" or line["forwarding"]["why"] == "--forwarding python"
