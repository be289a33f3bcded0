"""Rooms across relay nodes joined through a real ``nats-server`` (installed by
``scripts/install-system-deps.sh``), started by each test on a free loopback port."""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from call import wire
from call.relay_cluster import ClusterSettings, room_subject
from call.relay_metrics import metrics_route
from call.relay_workers import embedded_nats
from client import Client, Options
from server import Limits, Relay
from tests.test_call import LENGTH, call, free_port, model, offline, speech  # noqa: F401 - fixtures
from tests.test_server import HEADER, audio, until

pytestmark = pytest.mark.usefixtures("relay_transport")

ROOT = Path(__file__).resolve().parent.parent
FAST = ClusterSettings(heartbeat=0.2, node_timeout=1.5, reconnect_wait=0.1)
"""Quick to notice a node gone; generous enough for a busy machine (heartbeats are tiny)."""


async def listening(port: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)


@pytest.fixture
async def nats_server():
    process, url = embedded_nats()
    nats = types.SimpleNamespace(url=url, port=int(url.rpartition(":")[2]), process=process)
    yield nats
    nats.process.terminate()  # the one running now: a test may have restarted it
    nats.process.wait(10)


class Node:
    """An in-process relay node joined to the cluster."""

    def __init__(self, nats_url: str, limits: Limits = Limits()) -> None:
        self.relay = Relay(limits=limits)
        self.cluster = self.relay.join_cluster([nats_url], FAST)

    async def __aenter__(self) -> "Node":
        await self.cluster.start()
        self.server = await self.relay.start("127.0.0.1", 0).__aenter__()
        self.url = f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        await until(lambda: self.cluster.up)
        return self

    async def __aexit__(self, *_) -> None:
        self.server.close()
        await self.server.wait_closed()
        await self.cluster.close()


def node_process(nats_url: str, port: int) -> subprocess.Popen:
    """A relay node in its own process, so that it can be killed (or stopped) like a crashed one."""
    return subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port), "--cluster", nats_url],
                            cwd=ROOT, stderr=subprocess.DEVNULL)


async def knows(node: Node, room: str, remote_peers: int) -> None:
    """Wait until ``node`` sees ``remote_peers`` peers of ``room`` on other nodes."""
    await until(lambda: len(node.cluster.members(room)) == remote_peers)


async def streams_heard(ws, senders: int, packets: int) -> dict[int, list[bytes]]:
    """Read until ``senders`` sources have each sent their HEADER and ``packets`` audio packets."""
    heard: dict[int, list[bytes]] = {}
    source = None
    async with asyncio.timeout(30):
        while len(heard) < senders or any(len(m) < packets + 1 for m in heard.values()):
            message = await ws.recv()
            if message[0] == wire.ROUTED:
                source, message = wire.unroute(message)
            if message[0] in (wire.JOINED, wire.LEFT):
                continue
            heard.setdefault(source, []).append(message)
    return heard


async def test_a_call_between_two_nodes_arrives_equal_to_its_offline_decode(nats_server, model, speech, tmp_path):
    async with Node(nats_server.url) as a, Node(nats_server.url) as b:
        sender, receiver = await call(model, b.url, speech[0], tmp_path / "heard.wav", sender_url=a.url)
        assert a.cluster.counters["cluster_published"] > 0 and b.cluster.counters["cluster_received"] > 0
    heard, _ = soundfile.read(tmp_path / "heard.wav", dtype="float32", always_2d=True)
    _, expected = offline(model, speech[1])
    assert heard.shape == (LENGTH, 1)
    assert np.abs(heard.T - expected).max() < 1e-3
    assert receiver.receiver.problems == {}


async def test_a_room_of_three_over_two_nodes(nats_server):
    async with Node(nats_server.url) as a, Node(nats_server.url) as b:
        async with connect(a.url + "/r") as alice, connect(a.url + "/r") as bob:
            await until(lambda: len(a.relay.rooms.get("r", ())) == 2)
            for ws in (alice, bob):  # two streams in progress on node A before Carol joins on B
                await ws.send(HEADER.encode())
            await until(lambda: all(p.stream.header for p in a.relay.rooms["r"].values()))
            async with connect(b.url + "/r") as carol:
                await knows(b, "r", 2)
                await knows(a, "r", 1)
                await carol.send(HEADER.encode())
                for i in range(5):
                    for ws in (alice, bob, carol):
                        await ws.send(audio(i))
                # Each hears the two others' streams whole, in order, from two distinct sources.
                for ws in (alice, bob, carol):
                    heard = await streams_heard(ws, senders=2, packets=5)
                    assert len(heard) == 2
                    for messages in heard.values():
                        assert messages == [HEADER.encode(), *(audio(i) for i in range(5))]
            # Carol left: A's peers hear it and B no longer follows the room.
            await knows(a, "r", 0)
            assert "r" not in b.cluster.rooms and "r" not in b.cluster.subscriptions


async def test_limits_count_the_peers_on_other_nodes(nats_server):
    async with Node(nats_server.url, Limits(max_peers_per_room=2)) as a, Node(nats_server.url) as b:
        async with connect(a.url + "/r"), connect(b.url + "/r"):
            await knows(a, "r", 1)
            with pytest.raises(InvalidStatus) as refused:
                async with connect(a.url + "/r"):
                    pass
            assert refused.value.response.status_code == 503


async def test_node_killed_mid_call_its_peer_goes_on_through_the_other(nats_server, model, speech, tmp_path):
    port_a = free_port()
    node_a = node_process(nats_server.url, port_a)
    try:
        async with Node(nats_server.url) as b:
            await listening(port_a)
            url_a = f"ws://127.0.0.1:{port_a}"
            receiver = Client(Options(server=b.url, room="r", output=str(tmp_path / "heard.wav"), status=False), model)
            receiving = asyncio.create_task(receiver.run())
            await asyncio.wait_for(receiver.connection.connected.wait(), 10)
            sender = Client(Options(server=url_a, more_servers=(b.url,), room="r", input=str(speech[0]), pace=True,
                                    status=False), model)
            sending = asyncio.create_task(sender.run())
            # mid-call: the receiver hears the sender through A
            await until(lambda: any(s.jitter.stats.received >= 10 for s in receiver.receiver.streams.values()))
            assert not sending.done()
            node_a.kill()
            assert await asyncio.wait_for(sending, 60) == 0
            assert await asyncio.wait_for(receiving, 60) == 0
            assert sender.connection.url.startswith(b.url)
    finally:
        node_a.kill()
        node_a.wait(10)
    heard, _ = soundfile.read(tmp_path / "heard.wav", dtype="float32", always_2d=True)
    assert sender.connection.reconnects == 1
    assert heard.shape == (LENGTH, 1)
    (stream,) = receiver.receiver.streams.values()  # the stream went on: it was not restarted
    stats = stream.jitter.stats
    print(f"\nafter node A was killed: {stats}, receiver problems {receiver.receiver.problems}")
    assert stats.received > 0.5 * LENGTH / 320 and stream.concealer.concealed >= stats.lost
    # It resumed: after the gap the sender's audio is heard again, through node B.
    _, expected = offline(model, speech[1])
    frames, expected_frames = (x[: LENGTH // 320 * 320].reshape(-1, 320)[-10:] for x in (heard[:, 0], expected[0]))
    audible = np.abs(expected_frames).max(axis=1) > 0.01
    assert audible.any() and (np.abs(frames).max(axis=1)[audible] > 0).all()


async def test_nats_stopped_local_rooms_keep_working_and_the_log_says_so(nats_server, caplog):
    caplog.set_level(logging.INFO, logger="relay")
    async with Node(nats_server.url) as a, Node(nats_server.url) as b:
        async with connect(a.url + "/solo") as alice, connect(a.url + "/solo") as bob, connect(b.url + "/x") as eve:
            await until(lambda: len(a.relay.rooms.get("solo", ())) == 2 and "x" in b.relay.rooms)
            nats_server.process.terminate()
            nats_server.process.wait(10)
            await until(lambda: not a.cluster.up and not b.cluster.up)
            assert "cluster_link_down" in caplog.text and "local rooms keep working" in caplog.text
            await alice.send(HEADER.encode())
            for i in range(3):
                await alice.send(audio(i))
            heard = await streams_heard(bob, senders=1, packets=3)
            assert list(heard.values()) == [[HEADER.encode(), *(audio(i) for i in range(3))]]
            await eve.send(HEADER.encode())  # B's room goes on too, with nobody to tell
            # NATS is back: the nodes rejoin and a room spans them again.
            nats_server.process, _ = await asyncio.to_thread(embedded_nats, nats_server.port)
            await until(lambda: a.cluster.up and b.cluster.up)
            assert "cluster_link_up" in caplog.text
            async with connect(a.url + "/x") as frank:
                await knows(a, "x", 1)
                await knows(b, "x", 1)
                await eve.send(audio(0))
                heard = await streams_heard(frank, senders=1, packets=1)
                assert list(heard.values()) == [[HEADER.encode(), audio(0)]]


async def test_a_stalled_remote_node_slows_no_local_peer(nats_server):
    port_b = free_port()
    node_b = node_process(nats_server.url, port_b)
    try:
        async with Node(nats_server.url) as a:
            await listening(port_b)
            async with connect(f"ws://127.0.0.1:{port_b}/shared") as far, connect(a.url + "/shared") as near, \
                    connect(a.url + "/local") as alice, connect(a.url + "/local") as bob:
                await knows(a, "shared", 1)
                node_b.send_signal(signal.SIGSTOP)  # node B stops reading NATS (and everything else)
                await alice.send(HEADER.encode())
                await near.send(HEADER.encode())
                count = 2000
                for i in range(count):  # near's audio goes to NATS for B, which reads nothing
                    await near.send(audio(i))
                    await alice.send(audio(i))
                heard = await streams_heard(bob, senders=1, packets=count)
                assert list(heard.values()) == [[HEADER.encode(), *(audio(i) for i in range(count))]]
                assert len(a.cluster.outbound) <= FAST.backlog  # our side of the link stayed bounded
                await until(lambda: a.cluster.counters["cluster_published"] >= count)  # near's audio went out
                del far
    finally:
        node_b.send_signal(signal.SIGCONT)
        node_b.kill()
        node_b.wait(10)


def test_room_subjects_are_one_nats_token():
    assert room_subject("team.alpha-1_x") == "relay.room.team~alpha-1_x"


async def test_metrics_report_rooms_peers_traffic_drops_and_the_cluster_link(nats_server):
    async with Node(nats_server.url) as a, Node(nats_server.url) as b:
        a.relay.routes.append(metrics_route(a.relay))
        async with connect(a.url + "/m") as alice, connect(a.url + "/m") as carol, connect(b.url + "/m") as bob:
            await knows(a, "m", 1)
            for ws in (alice, bob):
                for message in (HEADER.encode(), audio(0), audio(1), audio(2)):
                    await ws.send(message)
            await alice.send(b"\x7f")  # no message type: counted and dropped
            await streams_heard(bob, senders=1, packets=3)
            await streams_heard(carol, senders=2, packets=3)
            url = a.url.replace("ws://", "http://") + "/metrics"
            text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("relay_rooms", ())] == 1 and samples[("relay_peers", ())] == 2
    assert samples[("relay_messages_in_total", ())] == 4  # Alice's header and audio on node A
    assert samples[("relay_messages_out_total", ())] == 4 + 2 * 4  # Alice's to Carol, Bob's to both
    assert samples[("relay_dropped_messages_total", (("reason", "malformed"),))] == 1
    assert samples[("relay_cluster_link_up", ())] == 1 and samples[("relay_cluster_remote_peers", ())] == 1
    assert samples[("relay_cluster_published_total", ())] >= 4


async def headers_from(ws, sources: int) -> set[int]:
    """Read until HEADERs from ``sources`` distinct peers came; return their ids."""
    headers, source = set(), None
    async with asyncio.timeout(30):
        while len(headers) < sources:
            message = await ws.recv()
            if message[0] == wire.ROUTED:
                source, message = wire.unroute(message)
            if message[0] == wire.HEADER:
                headers.add(source)
    return headers


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


async def test_workers_share_one_port_and_make_one_relay(tmp_path, relay_transport):
    port, metrics = free_port(), free_port()
    log = tmp_path / "relay.log"
    with open(log, "w") as stderr:  # no --cluster: the workers start their own nats-server
        relay = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(port), "--workers", "2",
                                  "--metrics", str(metrics), "--transport", relay_transport], cwd=ROOT, stderr=stderr)
    peers = []
    try:
        # Both workers listening (their metrics too): logged after the cluster link is up and both listeners are.
        await until(lambda: log.read_text().count('"listening"') == 2)
        while not all(scrape(metrics + i)["relay_peers"] for i in (0, 1)):  # the kernel spreads connections
            assert len(peers) < 40, "SO_REUSEPORT sent 40 connections to one worker"
            peers.append(await connect(f"ws://127.0.0.1:{port}/w").__aenter__())
            await asyncio.sleep(0.05)
        for ws in peers:
            await ws.send(HEADER.encode())
        for ws in peers:  # every peer hears every other, whichever worker each landed on
            assert len(await headers_from(ws, len(peers) - 1)) == len(peers) - 1
    finally:
        for ws in peers:
            await ws.close()
        relay.terminate()
        assert relay.wait(30) == 0
    workers = json.loads(next(line for line in log.read_text().splitlines() if '"workers"' in line))["pids"]
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)
    assert log.read_text().count('"stopped"') == 2
