"""The relay on real loopback connections: forwarding, isolation, auth, limits, abuse."""

import asyncio
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from server import Limits, Relay
from call import wire as p

pytestmark = pytest.mark.usefixtures("relay_transport")

ROOT = Path(__file__).resolve().parent.parent
HEADER = p.StreamHeader(fingerprint=b"fprint01", sample_rate=24000, channels=1,
                        samples_per_frame=320, codebook_nbits=10, max_codebooks=32, stream_id=5)


def audio(i):
    return p.AudioPacket(i, (np.full(8, i % 1024, dtype=np.int64),)).encode(10)


async def start(relay: Relay):
    server = await relay.start("127.0.0.1", 0).__aenter__()
    port = server.sockets[0].getsockname()[1]
    return server, f"ws://127.0.0.1:{port}"


@pytest.fixture
async def relay():
    relay = Relay()
    server, url = await start(relay)
    relay.url = url
    yield relay
    server.close()
    await server.wait_closed()


async def until(condition, changed: asyncio.Event | None = None, timeout: float = 30.0) -> None:
    """Wait until ``condition()`` holds: checked each time ``changed`` is set, or every 10 ms."""
    async with asyncio.timeout(timeout):
        while not condition():
            if changed is None:
                await asyncio.sleep(0.01)
            else:
                changed.clear()
                await changed.wait()


async def in_room(relay: Relay, room: str, n: int) -> None:
    """Wait until the relay has ``n`` peers in ``room`` (a client's handshake ends before the relay files it)."""
    await until(lambda: len(relay.rooms.get(room, ())) == n)


async def receive(ws, n, timeout=10.0):
    """The next ``n`` messages, skipping the relay's JOINED notices."""
    messages = []
    while len(messages) < n:
        message = await asyncio.wait_for(ws.recv(), timeout)
        if message[0] != p.JOINED:
            messages.append(message)
    return messages


async def test_forwards_and_names_the_source_once(relay):
    async with connect(relay.url + "/a", compression=None) as alice, \
            connect(relay.url + "/a", compression=None) as bob:
        await in_room(relay, "a", 2)
        for message in (HEADER.encode(), audio(0), audio(1)):
            await alice.send(message)
        first, second, third = await receive(bob, 3)
        source, inner = p.unroute(first)
        assert inner == HEADER.encode()
        assert p.parse_presence(await alice.recv()) == (source + 1, True)  # Alice hears Bob join
        assert (second, third) == (audio(0), audio(1))  # steady state: no envelope at all


async def test_tls_serves_wss(tmp_path):
    """``--tls-cert --tls-key``: peers on wss:// are forwarded to each other like on ws://."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))
    async with Relay().start("127.0.0.1", 0, served) as server:
        url = f"wss://127.0.0.1:{server.sockets[0].getsockname()[1]}/a"
        async with connect(url, ssl=trusted) as alice, connect(url, ssl=trusted) as bob:
            await alice.send(HEADER.encode())
            await alice.send(audio(1))
            assert [p.unroute(m)[1] if m[0] == p.ROUTED else m for m in await receive(bob, 2)] == \
                [HEADER.encode(), audio(1)]


async def test_rooms_are_isolated(relay):
    async with connect(relay.url + "/a") as alice, connect(relay.url + "/b") as eve, \
            connect(relay.url + "/a") as bob:
        await in_room(relay, "a", 2)
        await in_room(relay, "b", 1)
        await alice.send(HEADER.encode())
        await eve.send(HEADER.encode())
        assert p.unroute((await receive(bob, 1))[0])[1] == HEADER.encode()
        # Frank joins room b once Eve's header is filed (he is given it): whatever the relay sent Eve
        # before his JOINED notice came from room b, and Alice's header had been forwarded by then.
        async with connect(relay.url + "/b") as frank:
            assert p.unroute((await receive(frank, 1))[0])[1] == HEADER.encode()
            assert p.parse_presence(await asyncio.wait_for(eve.recv(), 10))[1]  # JOINED
            # Likewise Bob's next message is Grace joining room a, not Eve's header.
            async with connect(relay.url + "/a"):
                assert p.parse_presence(await asyncio.wait_for(bob.recv(), 10))[1]


async def test_joiner_gets_headers_in_progress_and_leave_notices(relay):
    async with connect(relay.url + "/a") as alice:
        await alice.send(HEADER.encode())
        await until(lambda: any(peer.stream.header for peer in relay.rooms["a"].values()))
        async with connect(relay.url + "/a") as bob:
            source, inner = p.unroute((await receive(bob, 1))[0])
            assert inner == HEADER.encode()
            await alice.close()
            assert p.parse_presence((await receive(bob, 1))[0]) == (source, False)


async def test_token_auth():
    relay = Relay(token="s3cret")
    server, url = await start(relay)
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(url + "/a", additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 401
        async with connect(url + "/a", additional_headers={"Authorization": "Bearer s3cret"}):
            pass
        with pytest.raises(InvalidStatus) as refused:  # a token in the URL would end up in logs
            async with connect(url + "/a?token=s3cret"):
                pass
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus):
            async with connect(url + "/../etc"):
                pass
        assert relay.counters["refused_auth"] == 2 and relay.counters["refused_room"] == 1
    finally:
        server.close()


async def test_bad_packets_are_counted_dropped_and_garbage_senders_closed(relay):
    async with connect(relay.url + "/a") as alice, connect(relay.url + "/a") as bob:
        await in_room(relay, "a", 2)
        await alice.send(audio(0))  # before any header: out of order
        await alice.send(HEADER.encode())
        await alice.send(b"\x80\x00\x01")  # truncated frame
        await alice.send(b"\x80\x00" + bytes(2000))  # oversized
        await alice.send("text is not a packet")
        await alice.send(audio(500))
        await alice.send(audio(1))  # stale: 499 frames behind the newest
        await alice.send(audio(501))
        received = await receive(bob, 3)
        assert p.unroute(received[0])[1] == HEADER.encode()
        assert received[1:] == [audio(500), audio(501)]
        assert relay.counters["out_of_order"] == 2
        assert relay.counters["malformed"] == 2 and relay.counters["oversized"] == 1
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(200):
                await alice.send(b"\x7f garbage")
                await asyncio.sleep(0)
            await asyncio.wait_for(alice.recv(), 10)
        assert closed.value.rcvd.code == 1008
        # Bob hears that Alice left, and the room is unharmed.
        assert p.parse_presence((await receive(bob, 1))[0]) == (1, False)
        async with connect(relay.url + "/a") as carol:
            await in_room(relay, "a", 2)
            await carol.send(HEADER.encode())
            assert p.unroute((await receive(bob, 1))[0])[1] == HEADER.encode()


async def test_a_fragmented_message_is_no_packet_and_the_sender_goes_on(relay):
    """A message sent in fragments (no client sends packets that way) is counted and dropped:
    websockets reassembles it into junk, picows never buffers it; the sender's next packet passes."""
    async with connect(relay.url + "/a") as alice, connect(relay.url + "/a") as bob:
        await in_room(relay, "a", 2)
        await alice.send([b"\x7f" + bytes(99), bytes(100)])  # two frames of one binary message
        await alice.send(HEADER.encode())
        assert p.unroute((await receive(bob, 1))[0])[1] == HEADER.encode()
        assert relay.counters["malformed"] == 1 and relay.counters["forwarded"] == 1


async def test_fuzz_leaves_the_server_serving():
    relay = Relay(limits=Limits(strikes=1e9))  # let every packet reach the parser
    server, relay.url = await start(relay)
    rng = np.random.default_rng(0)
    valid = [HEADER.encode(), audio(3), p.AudioPacket(4, (np.ones(4, np.int64),) * 3).encode(10),
             p.EndOfStream(9, 2000).encode(), p.route(1, audio(2)), p.left(3)]
    sent = 0
    async with connect(relay.url + "/a") as watcher:
        while sent < 4000:
            try:
                async with connect(relay.url + "/a") as fuzzer:
                    for _ in range(500):
                        if rng.random() < 0.5:
                            data = rng.integers(0, 256, rng.integers(0, 64), dtype=np.uint8).tobytes()
                        else:
                            data = bytearray(valid[rng.integers(len(valid))])
                            for _ in range(rng.integers(1, 3)):
                                data[rng.integers(len(data))] = rng.integers(256)
                            data = bytes(data[: rng.integers(1, len(data) + 1)])
                        await fuzzer.send(data)
                        sent += 1
            except ConnectionClosed:
                pass
        bad = sum(relay.counters[k] for k in ("malformed", "out_of_order", "oversized"))
        assert bad > 2000 and bad + relay.counters["forwarded"] == sent
        async with connect(relay.url + "/a") as alice:
            await in_room(relay, "a", 2)
            await alice.send(HEADER.encode())
            await alice.send(audio(0))
            messages = []
            while not messages or messages[-1] != audio(0):
                messages.append(await asyncio.wait_for(watcher.recv(), 5))
    server.close()


async def test_stalled_peer_delays_nobody_and_memory_stays_bounded():
    """A peer that never reads loses its own oldest audio, within a bounded queue; the others get
    every packet in order, and the relay forwards each one to them while the stalled queue is full."""
    relay = Relay()
    server, url = await start(relay)
    n_packets, burst = 2000, 5  # 24 kbps frames, so that the stalled peer's socket fills early
    frame = p.AudioPacket(0, (np.arange(32, dtype=np.int64),))
    capacity = relay.limits.queue_packets
    try:
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled = await connect(url + "/room", sock=sock, max_queue=1)  # never reads
        peers = [await connect(url + "/room") for _ in range(18)]
        sender = await connect(url + "/room")
        await until(lambda: len(relay.rooms["room"]) == 20)
        stalled_peer = next(peer for peer in relay.rooms["room"].values()
                            if peer.link.remote_address[1] == sock.getsockname()[1])
        sent_at, got = {}, [[] for _ in peers]
        arrived = asyncio.Event()

        async def listen(ws, indices):
            async for message in ws:
                if message[0] & p.AUDIO_FLAG:
                    indices.append(((message[0] & 0x3F) << 8 | message[1], time.monotonic()))
                    arrived.set()

        listeners = [asyncio.create_task(listen(ws, indices)) for ws, indices in zip(peers, got)]
        await sender.send(HEADER.encode())
        full_at = None
        for i in range(n_packets):
            sent_at[i] = time.monotonic()
            await sender.send(p.AudioPacket(i, frame.frames).encode(10))
            if i % burst == burst - 1:
                # The next burst leaves once every listener has this one: the stalled peer holds nobody up.
                await until(lambda: all(len(indices) > i for indices in got), arrived)
                assert all(len(peer.queue) <= capacity for peer in relay.rooms["room"].values())
                if full_at is None and len(stalled_peer.queue) == capacity:
                    full_at = i
        for task in listeners:
            task.cancel()
        delays = np.array([t - sent_at[k] for indices in got for k, t in indices])
        print(f"\nstalled peer's queue full from packet {full_at}: {stalled_peer.dropped} dropped, "
              f"{len(stalled_peer.queue)} queued; relay delay to the others p50 "
              f"{1000 * np.percentile(delays, 50):.1f} ms, p99 {1000 * np.percentile(delays, 99):.1f} ms")
        for indices in got:
            assert [k for k, _ in indices] == list(range(n_packets))  # everything, in order, once
        assert full_at is not None and full_at < n_packets - 10 * burst  # it stalled early on …
        assert stalled_peer.dropped > 0  # … and then lost its oldest audio: the newest waits
        assert [(m[0] & 0x3F) << 8 | m[1] for _, m, _ in stalled_peer.queue] == \
            list(range(n_packets - capacity, n_packets))
        assert all(peer.dropped == 0 for peer in relay.rooms["room"].values() if peer is not stalled_peer)
        stalled.transport.abort()
        await asyncio.gather(*(ws.close() for ws in [sender, *peers]))
    finally:
        server.close()


def test_sigint_shuts_down_cleanly(relay_transport):
    process = subprocess.Popen([sys.executable, "server.py", "--port", "0", "--transport", relay_transport], cwd=ROOT,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stderr.readline()
        assert '"listening"' in line, line
        port = int(line.split('127.0.0.1:')[1].split('"')[0])

        async def call():
            async with connect(f"ws://127.0.0.1:{port}/a") as ws:
                process.send_signal(signal.SIGINT)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 5)
                return closed.value.rcvd.code

        assert asyncio.run(call()) == 1001
        assert process.wait(10) == 0
        assert '"stopped"' in process.stderr.read()
    finally:
        process.kill()
