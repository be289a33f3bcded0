"""Relay capacity: how many 6 kbps streams ``server.py`` forwards on one core with at most 5 ms
added p99 latency.

Three processes: the relay (``python server.py``, pinned to core 0), a load generator (pinned to
core 1) and this process, the probe (core 1 too). The generator opens peers in rooms of
``room_size``; every peer sends a real stream (a ``HEADER``, then one 12-byte audio packet — 8
codebooks at 10 bits, one 13.3 ms frame — every 13.3 ms, phases spread over the frame period)
and reads what the relay forwards to it (answering pings). It speaks websocket frames over raw
asyncio sockets, so that it can offer thousands of streams from one core. The probe runs pairs of
ordinary ``websockets`` clients in their own rooms, sending the same stream and timing each
packet from ``send()`` to its arrival at the other peer. Load rises in steps; "added p99" is the
probe's p99 at that load minus its p99 with no load.

With ``--nodes 2`` the load goes to two relay nodes (pinned to cores 0 and 1) joined through a
``nats-server``; ``--placement split`` puts the two peers of every room on different nodes (every
packet crosses NATS: the cluster's worst case), ``affine`` puts each room on one node (what a load
balancer hashing the room name does); the probe's pairs always span the two nodes, so its level-0
latency minus a one-node run's is the cross-node hop. The generator and the probe then share the
two cores with the relays: on a 2-core machine that understates two nodes, so the CPU the relays
spend per forwarded packet is reported too. ``--suite`` runs, in one go, the relay at ``--before``
(a git revision), today's relay on one node, and two nodes in both placements, and writes
``benchmarks/results/relay_capacity.{json,md}``.
"""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FRAME = 320 / 24000
BUDGET_MS = 5.0
ADD_TIMEOUT_S = 20.0  # a handshake slower than this: the relay is past taking more peers
SATURATED_CPU = 97.0  # relay CPU (% of its core) past which a level over budget ends the ramp


def stream_header() -> bytes:
    from call import wire

    return wire.StreamHeader(fingerprint=b"relaybch", sample_rate=24000, channels=1, samples_per_frame=320,
                             codebook_nbits=10, max_codebooks=32).encode()


def audio_packet(index: int) -> bytes:
    w = index % (1 << 14)
    return bytes([0x80 | w >> 8, w & 0xFF]) + bytes(range(1, 11))  # 8 codes x 10 bits = 10 bytes


def masked_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A client-to-server websocket frame (FIN, masked with the all-zero key: payload unchanged)."""
    assert len(payload) < 126
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core % os.cpu_count()})


# --------------------------------------------------------------------- load generator


class LoadPeer(asyncio.Protocol):
    """One load peer: raw websocket frames over an asyncio socket, so thousands fit on one core."""

    def __init__(self, generator: "Generator", path: str) -> None:
        self.generator, self.path = generator, path
        self.opened = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.upgraded = False
        self.transport = None
        self.index = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write((f"GET {self.path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self.buffer = buffer
                return
            if b" 101 " not in buffer[:end].split(b"\r\n")[0]:
                self.opened.set_exception(RuntimeError(buffer[:end].decode(errors="replace")))
                return
            self.upgraded = True
            buffer = buffer[end + 4:]
            self.transport.write(masked_frame(stream_header()))
            self.opened.set_result(None)
        pos, n = 0, len(buffer)
        while n - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length, head = int.from_bytes(buffer[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, head = int.from_bytes(buffer[pos + 2:pos + 10], "big"), 10
            if n - pos < head + length:
                break
            opcode = buffer[pos] & 0x0F
            if opcode == 0x9:  # ping: answer, or the relay closes us after ping_timeout
                self.transport.write(masked_frame(buffer[pos + head:pos + head + length], 0xA))
            else:
                self.generator.received += 1
            pos += head + length
        self.buffer = buffer[pos:]

    def connection_lost(self, exc) -> None:
        self.generator.lost_connections += 1
        if not self.opened.done():  # closed before its upgrade: whoever waits for it must not wait forever
            self.opened.set_exception(ConnectionError(f"connection closed during the handshake: {exc}"))

    def send_next(self) -> None:
        self.transport.write(masked_frame(audio_packet(self.index)))
        self.index += 1


class Generator:
    """Sends every peer's packet on an absolute schedule, spread over ``SLOTS`` phases of a frame."""

    SLOTS = 10

    def __init__(self, ports: list[int], room_size: int, placement: str = "split") -> None:
        self.ports, self.room_size, self.placement = ports, room_size, placement
        self.slots: list[list[LoadPeer]] = [[] for _ in range(self.SLOTS)]
        self.peers = 0
        self.received = 0
        self.lost_connections = 0
        self.late: list[float] = []

    async def add(self, streams: int, timeout: float = ADD_TIMEOUT_S) -> None:
        """Open `streams` more peers, one handshake at a time; stops early (fewer peers) when the relay
        refuses, drops or does not answer a handshake within `timeout`: a saturated relay may never."""
        loop = asyncio.get_running_loop()
        for _ in range(streams):
            room_index, member = divmod(self.peers, self.room_size)
            port = self.ports[(member if self.placement == "split" else room_index) % len(self.ports)]
            try:
                _, peer = await asyncio.wait_for(
                    loop.create_connection(lambda: LoadPeer(self, f"/load{room_index}"), "127.0.0.1", port), timeout)
                await asyncio.wait_for(asyncio.shield(peer.opened), timeout)
            except (OSError, asyncio.TimeoutError):
                return
            self.slots[self.peers % self.SLOTS].append(peer)
            self.peers += 1

    async def run(self) -> None:
        slot_period = FRAME / self.SLOTS
        start = time.monotonic()
        k = 0
        while True:
            due = start + k * slot_period
            # Always yield, even when late: a generator behind its schedule (a busy machine) would
            # otherwise never let its loop read the handshakes and commands it waits for.
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.late.append(time.monotonic() - due)
            for peer in self.slots[k % self.SLOTS]:
                if peer.upgraded and not peer.transport.is_closing():
                    peer.send_next()
            k += 1


def generator_main(ports: list[int], room_size: int, placement: str, core: int | None, pipe) -> None:
    if core is not None:
        pin(core)

    async def serve() -> None:
        generator = Generator(ports, room_size, placement)
        runner = asyncio.create_task(generator.run())
        loop = asyncio.get_running_loop()
        while True:
            command, value = await loop.run_in_executor(None, pipe.recv)
            if command == "add":
                await generator.add(value)
                pipe.send(generator.peers)
            elif command == "reset":
                generator.late.clear()
                generator.received = 0
                pipe.send(None)
            elif command == "stats":
                late = np.array(generator.late or [0.0]) * 1000
                pipe.send({"late_p99_ms": float(np.percentile(late, 99)), "received": generator.received,
                           "lost_connections": generator.lost_connections})
            else:
                runner.cancel()
                pipe.send(None)
                return

    asyncio.run(serve())


# -------------------------------------------------------------------------- probe


async def probe(urls: list[str], pairs: int, seconds: float) -> np.ndarray:
    """Latencies (s) of packets from one peer to the other, ``pairs`` rooms of two in parallel
    (the sender on the first node, the receiver on the last)."""
    from websockets.asyncio.client import connect

    from call import wire

    latencies: list[float] = []

    async def pair(n: int) -> None:
        room = f"/probe{n}-{time.monotonic_ns()}"
        async with connect(urls[0] + room, compression=None) as a, connect(urls[-1] + room, compression=None) as b:
            if len(urls) > 1:
                await asyncio.sleep(0.5)  # the nodes learn of each other's peer
            await a.send(stream_header())
            sent: dict[int, float] = {}

            async def receive() -> None:
                async for message in b:
                    now = time.monotonic()
                    if message[0] == wire.ROUTED:
                        _, message = wire.unroute(message)
                    if message[0] & wire.AUDIO_FLAG:
                        wire_index = (message[0] & 0x3F) << 8 | message[1]
                        if wire_index in sent:
                            latencies.append(now - sent.pop(wire_index))

            reader = asyncio.create_task(receive())
            await asyncio.sleep(0.2)
            start = time.monotonic() + n * FRAME / max(pairs, 1)
            for index in range(int(seconds / FRAME)):
                wait = start + index * FRAME - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sent[index % (1 << 14)] = time.monotonic()
                await a.send(audio_packet(index))
            await asyncio.sleep(0.2)
            reader.cancel()

    outcomes = await asyncio.gather(*(pair(n) for n in range(pairs)), return_exceptions=True)
    for outcome in outcomes:  # a relay too busy to take the probe's handshake in 10 s: no samples from it
        if isinstance(outcome, BaseException) and not isinstance(outcome, (OSError, asyncio.TimeoutError)):
            raise outcome
    return np.array(latencies)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------- the ramp


UNCAPPED = ["--max-connections", "100000", "--max-rooms", "100000"]
"""The relay's admission caps (512 connections, 256 rooms by default) lifted: the ramp measures
forwarding, and past 500 streams the generator's peers were refused with 503 (``relay_args`` can set
them again: the last flag wins)."""


def start_relay(server: Path, relay_args: list[str], core: int) -> tuple[subprocess.Popen, int]:
    """``server`` (a server.py) on a free loopback port, pinned to ``core``, uncapped, once it listens; its port."""
    from benchmarks.latency_call import wait_for_port
    from call.ports import free_loopback_port

    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, str(server), "--port", str(port), *UNCAPPED, *relay_args], cwd=ROOT,
                               env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: pin(core))
    wait_for_port(port, "the relay", process)
    return process, port


def start_nodes(nodes: int, server: Path, relay_args: list[str]) -> tuple[list[subprocess.Popen], list[int]]:
    """``nodes`` relays (node i pinned to core i) and, for more than one, the nats-server joining
    them (first in the list); their ports."""
    from call.relay_workers import embedded_nats

    processes, cluster = [], []
    if nodes > 1:
        nats, url = embedded_nats()
        processes.append(nats)
        cluster = ["--cluster", url]
    relays = [start_relay(server, [*cluster, *relay_args], core) for core in range(nodes)]
    return processes + [process for process, _ in relays], [port for _, port in relays]


def same_core_cpu(servers: list[Path], streams: int, windows: int = 3, relay_args: list[str] = (),
                  progress=print) -> list[dict]:
    """Each of ``servers`` (two versions of server.py) pinned to core 0 together, one load generator on
    core 1 sending ``streams`` streams in rooms of 2, alternate rooms to each: the CPU each relay spends
    a forwarded packet in each ``windows`` of 8 s. Both relays meet the same interference at the same
    time (other work on a shared machine, a generator behind its schedule), so their ratio holds where
    a ramp's capacity does not; it measures cost, not latency."""
    relays = [start_relay(server, list(relay_args), 0) for server in servers]
    processes, ports = [process for process, _ in relays], [port for _, port in relays]
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    generator = context.Process(target=generator_main, args=(ports, 2, "affine", 1, there), daemon=True)
    rows = []
    try:
        generator.start()
        here.send(("add", streams))
        opened = here.recv()
        time.sleep(2.0)
        for _ in range(windows):
            here.send(("reset", None))
            here.recv()
            cpu0, t0 = [cpu_seconds(p.pid) for p in processes], time.monotonic()
            time.sleep(8.0)
            used = [cpu_seconds(p.pid) - c for p, c in zip(processes, cpu0)]
            here.send(("stats", None))
            stats = here.recv()
            packets = max(1, stats["received"]) / len(processes)  # the same rooms and load on each
            rows.append({"streams": opened, "loadavg": os.getloadavg()[0],
                         "cpu_us_per_packet": [round(u / packets * 1e6, 2) for u in used],
                         "cpu_percent": [round(100 * u / (time.monotonic() - t0)) for u in used],
                         "ratio": round(used[1] / used[0], 3), "load_late_p99_ms": round(stats["late_p99_ms"], 1)})
            progress(f"same core: {rows[-1]}")
    finally:
        here.send(("stop", None))
        generator.join(5)
        if generator.is_alive():
            generator.kill()
        for process in processes:
            process.terminate()
            process.wait(5)
    return rows


def capacity(quick: bool = False, progress=print, room_size: int = 2, budget_ms: float = BUDGET_MS,
             levels: list[int] | None = None, server: Path = ROOT / "server.py", nodes: int = 1,
             placement: str = "split", relay_args: list[str] = ()) -> dict:
    """Ramp the load through `levels` (streams) against `server` (another version of server.py, for
    an A/B: it runs with this checkout's packages importable) on `nodes` nodes."""
    levels = levels or ([0, 100, 200] if quick else [0, 50, 100, 150, 200, 250, 300, 400, 500, 600, 800, 1000])
    window = 3.0 if quick else 6.0
    pairs = 4
    processes, ports = start_nodes(nodes, server, list(relay_args))
    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    load_core = 1 if nodes == 1 else None  # two nodes take both cores: the load shares them
    generator = context.Process(target=generator_main, args=(ports, room_size, placement, load_core, there), daemon=True)
    results = []
    own_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        generator.start()
        if load_core is not None:
            pin(load_core)
        urls = [f"ws://127.0.0.1:{port}" for port in ports]
        baseline_p99 = None
        streams = 0
        for level in levels:
            if level > streams:
                here.send(("add", level - streams))
                streams = here.recv()
                if streams < level:
                    progress(f"relay: took only {streams} of {level} streams (handshakes refused or over "
                             f"{ADD_TIMEOUT_S:g} s): past its capacity")
                    break
            time.sleep(1.0 if quick else 1.5)
            here.send(("reset", None))
            here.recv()
            cpu0, t0 = [cpu_seconds(r.pid) for r in processes], time.monotonic()
            lat = asyncio.run(probe(urls, pairs, window)) * 1000
            elapsed = time.monotonic() - t0
            used = [100 * (cpu_seconds(r.pid) - c) / elapsed for r, c in zip(processes, cpu0)]
            cpu = max(used[-nodes:])  # the busiest node's core
            relays_cpu, nats_cpu = sum(used[-nodes:]), sum(used[:-nodes])
            here.send(("stats", None))
            stats = here.recv()
            p99 = float(np.percentile(lat, 99)) if len(lat) else float("inf")
            if baseline_p99 is None:
                baseline_p99 = p99
            row = {"streams": streams, "rooms": streams // room_size,
                   "forwarded_per_s": (stats["received"] + len(lat)) / elapsed,
                   "offered_per_s": streams / FRAME, "probe_packets": len(lat),
                   "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"), "p99_ms": p99,
                   "max_ms": float(lat.max()) if len(lat) else float("nan"),
                   "added_p99_ms": p99 - baseline_p99, "relay_cpu": cpu, "nats_cpu": nats_cpu,
                   "relay_cpu_us_per_packet": relays_cpu / 100 * elapsed / max(1, stats["received"] + len(lat)) * 1e6,
                   "load_late_p99_ms": stats["late_p99_ms"], "lost_connections": stats["lost_connections"]}
            results.append(row)
            progress(f"relay x{nodes}: {streams} streams, probe p50 {row['p50_ms']:.2f} ms p99 {p99:.2f} ms "
                     f"(added {row['added_p99_ms']:.2f}), relay CPU {cpu:.0f} % (busiest node; NATS {nats_cpu:.0f} %) "
                     f"({row['relay_cpu_us_per_packet']:.1f} us a forwarded packet), generator late p99 "
                     f"{stats['late_p99_ms']:.1f} ms")
            failing = [r["added_p99_ms"] > budget_ms for r in results[1:]]
            if len(failing) >= 2 and failing[-1] and failing[-2]:
                break  # two levels in a row over budget: the relay is past its capacity
            if failing and failing[-1] and cpu >= SATURATED_CPU:
                break  # over budget with the core busy: more load only makes the next handshakes hang
    finally:
        try:
            here.send(("stop", None))
            generator.join(5)
        except Exception:  # noqa: BLE001
            pass
        if generator.is_alive():
            generator.kill()
        for process in processes:
            process.terminate()
            process.wait(5)
        if own_affinity is not None:
            os.sched_setaffinity(0, own_affinity)
    top = 0
    for r in results:  # the highest level below which every level kept the budget
        if r["added_p99_ms"] > budget_ms:
            break
        top = r["streams"]
    saturated = any(r["added_p99_ms"] > budget_ms for r in results)
    return {"capacity_streams": top if saturated else f">= {top}", "room_size": room_size, "budget_ms": budget_ms,
            "nodes": nodes, "placement": placement if nodes > 1 else None, "relay_args": list(relay_args),
            "levels": results, "cores": os.cpu_count(), "saturated_within_ramp": saturated,
            "method": (("`python server.py` pinned to core 0; a load generator process (raw websocket frames "
                        "over asyncio sockets) and the probe pinned to core 1." if nodes == 1 else
                        f"{nodes} `python server.py --cluster` nodes pinned to cores 0..{nodes - 1} with a nats-server; "
                        f"the load generator and the probe unpinned (they share the cores); rooms {placement}.") +
                       f" Rooms of {room_size} peers; each peer "
                       "sends one 6 kbps stream (a 12-byte packet every 13.3 ms, phases spread) and reads every "
                       f"other peer's. The probe: {pairs} pairs of `websockets` clients in their own rooms, "
                       f"{window:g} s per level; latency from `send()` to arrival. \"Load late p99\" is how late "
                       "the generator's send schedule ran (if it grows, the offered load falls short).")}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="A/B against an older relay: git show REV:server.py > /tmp/old_server.py; "
                                     "python benchmarks/latency_relay.py --levels 0,200,400 --server /tmp/old_server.py")
    parser.add_argument("--quick", action="store_true", help="short windows (3 s) and levels 0, 100, 200")
    parser.add_argument("--levels", help="streams at each step, comma-separated (default: the full ramp)")
    parser.add_argument("--room-size", type=int, default=2)
    parser.add_argument("--server", type=Path, default=ROOT / "server.py", help="the relay script to measure")
    parser.add_argument("--nodes", type=int, default=1, help="relay nodes joined through a nats-server (default 1)")
    parser.add_argument("--placement", choices=["split", "affine"], default="split",
                        help="with --nodes 2: a room's peers on different nodes (split) or on one (affine)")
    parser.add_argument("--relay-args", default="", help="extra arguments of server.py, e.g. '--loop asyncio'")
    parser.add_argument("--suite", action="store_true", help="before/after and 1/2 nodes in one run; writes "
                        "benchmarks/results/relay_capacity.{json,md}")
    parser.add_argument("--transports", action="store_true", help="with --suite: the one-node relay before and on "
                        "each --transport instead; writes benchmarks/results/relay_transports.{json,md}")
    parser.add_argument("--before", default="main", help="with --suite or --same-core: the git revision of the relay "
                        "to compare with")
    parser.add_argument("--same-core", type=int, metavar="STREAMS", help="the relay at --before and this one pinned to "
                        "one core together, STREAMS streams split between them: CPU a packet of each, in one run; "
                        "writes benchmarks/results/relay_same_core.{json,md}")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")] if args.levels else None
    if args.same_core:
        from benchmarks.relay_capacity_report import run_same_core

        run_same_core(args.before, args.same_core, args.relay_args.split(), " ".join(sys.argv[1:]))
    elif args.suite:
        from benchmarks.relay_capacity_report import run_suite

        run_suite(args.before, levels, args.room_size, " ".join(sys.argv[1:]), args.transports)
    else:
        print(json.dumps(capacity(args.quick, room_size=args.room_size, levels=levels, server=args.server,
                                  nodes=args.nodes, placement=args.placement, relay_args=args.relay_args.split()),
                         indent=1))
