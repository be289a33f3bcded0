"""A network emulator for the latency benchmark: a TCP proxy between the clients and the relay.

    python -m benchmarks.netem --listen 9000 --upstream 127.0.0.1:8765 --delay 0.02 --jitter 0.02

What the relay sends a client goes through a link with the given conditions: a fixed one-way
``delay``; ``jitter``, extra delay drawn per chunk from an exponential distribution whose 99th
percentile is ``jitter`` (in order, as TCP delivers: a late chunk holds up the ones behind it); a
bandwidth cap of ``rate_kbps`` (serialised one websocket message after another, in front of a
queue of at most ``max_queue`` seconds: an audio message that finds it full is dropped whole, as the
relay drops the oldest audio of a slow peer; without this, TCP's buffers on loopback would hold
seconds of audio and every frame would arrive, seconds late); and outages: every ``outage_every`` seconds every connection is
cut and new ones refused for ``outage_for`` seconds, the loss burst of a websocket reconnect. What a
client sends the relay passes untouched, so a call's path crosses the conditions once.

:class:`LinkSchedule` decides when each chunk arrives, on times it is given: the tests drive it
without a clock. Conditions can change while the proxy runs (:meth:`NetemProxy.set_conditions`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from call.wire import AUDIO_FLAG

MASK_BIT = 0x80
"""RFC 6455: the bit of a frame's second byte that says its payload is masked (a client's frames are)."""
LENGTH_BITS = 0x7F
"""RFC 6455: the payload length bits of a frame's second byte (126 and 127: a longer length follows)."""

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Conditions:
    """One direction's link; see the module's docstring. Zero (or ``None``) turns a condition off."""

    delay: float = 0.0
    jitter: float = 0.0
    rate_kbps: float | None = None
    outage_every: float | None = None
    outage_for: float = 0.0
    queue_bytes: int = 8192
    rate_schedule: str | None = None
    max_queue: float = 0.2
    """``"0:12,6:3,12:12"``: the cap (kbps) from each time on, seconds after the first websocket
    handshake through the proxy; replaces ``rate_kbps`` while the proxy runs."""

    def jitter_percentile(self, q: float) -> float:
        """The ``q``-th percentile (0-100) of the extra delay drawn per chunk (s): the exponential
        whose 99th percentile is :attr:`jitter`."""
        return self.jitter / math.log(100) * -math.log(1 - q / 100)

    def rates(self) -> list[tuple[float, float]]:
        """``(from, kbps)`` of :attr:`rate_schedule`, in order; raises ``ValueError`` for a bad one."""
        if not self.rate_schedule:
            return []
        steps = []
        for part in self.rate_schedule.split(","):
            since, _, kbps = part.partition(":")
            steps.append((float(since), float(kbps)))
        if [s for s, _ in steps] != sorted(s for s, _ in steps) or any(k <= 0 or s < 0 for s, k in steps):
            raise ValueError(f"rate schedule must be FROM:KBPS,... with times in order and rates > 0, "
                             f"got {self.rate_schedule!r}")
        return steps

    def check(self) -> None:
        """Refuse what no link can be, with the option's name."""
        if self.delay < 0 or self.jitter < 0 or self.outage_for < 0:
            raise ValueError("delay, jitter and outage duration must be >= 0")
        if self.rate_kbps is not None and self.rate_kbps <= 0:
            raise ValueError(f"rate must be > 0 kbps, got {self.rate_kbps}")
        if self.outage_every is not None and self.outage_every <= self.outage_for:
            raise ValueError("outages must be shorter than the time between them")
        if self.queue_bytes < 1:
            raise ValueError("queue_bytes must be >= 1")
        if self.max_queue <= 0:
            raise ValueError("max_queue must be > 0")
        try:
            self.rates()
        except ValueError as error:
            raise ValueError(f"rate schedule must be FROM:KBPS,...: {error}") from None

    def in_outage(self, since_start: float) -> bool:
        """Whether the link is cut ``since_start`` seconds after the proxy started."""
        return bool(self.outage_every) and since_start % self.outage_every >= self.outage_every - self.outage_for


def split_frames(buffer: bytes) -> tuple[list[bytes], bytes]:
    """Whole websocket frames at the start of ``buffer`` (RFC 6455 framing) and what is left."""
    frames, pos = [], 0
    while len(buffer) - pos >= 2:
        length, head = buffer[pos + 1] & LENGTH_BITS, 2
        if length == 126:
            if len(buffer) - pos < 4:
                break
            length, head = int.from_bytes(buffer[pos + 2:pos + 4], "big"), 4
        elif length == 127:
            if len(buffer) - pos < 10:
                break
            length, head = int.from_bytes(buffer[pos + 2:pos + 10], "big"), 10
        head += 4 if buffer[pos + 1] & MASK_BIT else 0  # masked (a client's frame)
        if len(buffer) - pos < head + length:
            break
        frames.append(buffer[pos:pos + head + length])
        pos += head + length
    return frames, buffer[pos:]


def is_audio(frame: bytes) -> bool:
    """A binary frame from the relay whose message is an audio packet: the only kind one may drop (one
    in a ``ROUTED`` envelope is not: the envelope names the sender of the packets after it)."""
    head = 2 + {126: 2, 127: 8}.get(frame[1] & LENGTH_BITS, 0)
    return frame[0] & 0x0F == 0x2 and not frame[1] & MASK_BIT and len(frame) > head and bool(frame[head] & AUDIO_FLAG)


class LinkSchedule:
    """When each chunk sent into the link comes out of it."""

    def __init__(self, conditions: Conditions, seed: int = 0) -> None:
        self.conditions = conditions
        self._rng = np.random.default_rng(seed)
        self._free = -math.inf  # when the link has finished serialising what it holds
        self._last = -math.inf  # when the previous chunk came out: TCP keeps order

    def backlog(self, now: float) -> float:
        """Seconds the link needs to finish serialising what it holds: a queue in front of it."""
        return max(0.0, self._free - now)

    def deliver_at(self, now: float, nbytes: int) -> float:
        """The time a chunk of ``nbytes`` sent at ``now`` comes out."""
        c = self.conditions
        start = max(now, self._free)
        self._free = start + (8 * nbytes / (1000 * c.rate_kbps) if c.rate_kbps else 0.0)
        extra = self._rng.exponential(c.jitter / math.log(100)) if c.jitter else 0.0
        self._last = max(self._last, self._free + c.delay + extra)
        return self._last


class NetemProxy:
    """The proxy: each client connection gets its own link (and schedule) towards it."""

    def __init__(self, upstream: tuple[str, int], conditions: Conditions, seed: int = 0,
                 cap_log: Path | None = None) -> None:
        conditions.check()
        self.upstream, self.conditions, self.seed = upstream, conditions, seed
        self.cap_log = cap_log
        """A file that gets a line ``time.monotonic() kbps`` as each cap of the schedule takes effect:
        when the benchmark's senders should have followed it."""
        self.started = time.monotonic()
        self.connections: set[asyncio.StreamWriter] = set()
        self.cuts = 0
        self.dropped = 0
        self._links = 0
        self._schedule: asyncio.Task | None = None

    def set_conditions(self, conditions: Conditions) -> None:
        conditions.check()
        self.conditions = conditions

    async def serve(self, host: str, port: int) -> asyncio.Server:
        asyncio.create_task(self._outages())
        return await asyncio.start_server(self._client, host, port)

    async def _follow_schedule(self) -> None:
        """Change the cap at the times of the rate schedule, counted from now (the first handshake)."""
        start = time.monotonic()
        for since, kbps in self.conditions.rates():
            await asyncio.sleep(max(0.0, start + since - time.monotonic()))
            self.conditions = replace(self.conditions, rate_kbps=kbps)
            if self.cap_log is not None:
                with self.cap_log.open("a") as log:
                    log.write(f"{time.monotonic()!r} {kbps!r}\n")

    async def _outages(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            if self.conditions.in_outage(time.monotonic() - self.started) and self.connections:
                self.cuts += 1
                for writer in list(self.connections):
                    writer.transport.abort()
                self.connections.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.conditions.in_outage(time.monotonic() - self.started):
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self.connections.update((writer, up_writer))
        self._links += 1
        link = LinkSchedule(self.conditions, self.seed + self._links)
        await asyncio.gather(self._pass(reader, up_writer), self._through(up_reader, writer, link),
                             return_exceptions=True)
        for w in (writer, up_writer):
            w.transport.abort()
            self.connections.discard(w)

    @staticmethod
    async def _pass(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.transport.abort()

    async def _through(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: LinkSchedule) -> None:
        """Relay → client through the link: read, stamp, deliver when due; stop reading while
        ``queue_bytes`` are in flight."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        in_flight = 0
        room = asyncio.Event()
        room.set()

        async def deliver() -> None:
            nonlocal in_flight
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                writer.write(data)
                await writer.drain()
                in_flight -= len(data)
                if in_flight < self.conditions.queue_bytes:
                    room.set()

        sender = asyncio.create_task(deliver())
        pending, handshake = b"", True
        try:
            while data := await reader.read(4096):
                link.conditions = self.conditions
                pending += data
                if handshake:  # the relay's HTTP answer to the websocket handshake comes first, as it is
                    end = pending.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    handshake, head, pending = False, pending[:end + 4], pending[end + 4:]
                    if self._schedule is None and self.conditions.rate_schedule:  # the first call's start
                        self._schedule = asyncio.create_task(self._follow_schedule())
                    queue.put_nowait((link.deliver_at(loop.time(), len(head)), head))
                frames, pending = split_frames(pending)
                for frame in frames:
                    now = loop.time()
                    if link.conditions.rate_kbps and link.backlog(now) > link.conditions.max_queue and is_audio(frame):
                        self.dropped += 1
                        continue
                    queue.put_nowait((link.deliver_at(now, len(frame)), frame))
                    in_flight += len(frame)
                if in_flight >= self.conditions.queue_bytes:
                    room.clear()
                    await room.wait()
        finally:
            sender.cancel()


class NetemProcess:
    """``python -m benchmarks.netem`` in front of ``upstream_url``, on a free loopback port; ``url``
    is what the clients connect to instead."""

    def __init__(self, upstream_url: str, conditions: Conditions) -> None:
        from benchmarks.latency_call import wait_for_port
        from call.ports import free_loopback_port

        conditions.check()
        self.port = free_loopback_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        host, port = upstream_url.removeprefix("ws://").split(":")
        args = [f"--{k.replace('_', '-')}={v}" for k, v in asdict(conditions).items() if v is not None]
        self._folder = tempfile.TemporaryDirectory(prefix="netem-")
        self.cap_log = Path(self._folder.name) / "caps.txt"
        self.process = subprocess.Popen([sys.executable, "-m", "benchmarks.netem", "--listen", str(self.port),
                                         "--upstream", f"{host}:{port}", "--cap-log", str(self.cap_log), *args], cwd=ROOT)
        wait_for_port(self.port, "the network emulator", self.process, self.close)

    def caps(self) -> list[tuple[float, float]]:
        """``(time.monotonic(), kbps)`` of each cap of the schedule that has taken effect so far."""
        return read_caps(self.cap_log)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(5)
        self._folder.cleanup()

    def __enter__(self) -> "NetemProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_caps(path: Path) -> list[tuple[float, float]]:
    """The lines of a proxy's ``cap_log``: ``(time.monotonic(), kbps)``; none before the schedule starts."""
    if not path.is_file():
        return []
    return [(float(t), float(kbps)) for t, kbps in (line.split() for line in path.read_text().splitlines())]


def positive_or_zero(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return number


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TCP proxy that delays, jitters, caps and cuts the relay's traffic")
    parser.add_argument("--listen", type=int, required=True, help="loopback port the clients connect to")
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the relay")
    parser.add_argument("--delay", type=positive_or_zero, default=0.0, help="one-way delay, s")
    parser.add_argument("--jitter", type=positive_or_zero, default=0.0, help="99th percentile of the extra delay, s")
    parser.add_argument("--rate-kbps", type=float, default=None, help="bandwidth cap, kbit/s")
    parser.add_argument("--outage-every", type=float, default=None, help="seconds between cuts")
    parser.add_argument("--outage-for", type=positive_or_zero, default=0.0, help="seconds each cut lasts")
    parser.add_argument("--queue-bytes", type=int, default=8192, help="bytes in flight before the proxy stops reading")
    parser.add_argument("--rate-schedule", help="FROM:KBPS,... caps from seconds after the first websocket handshake on")
    parser.add_argument("--max-queue", type=float, default=0.2, help="seconds of queue at the cap before audio is dropped")
    parser.add_argument("--cap-log", type=Path, help="file that gets 'MONOTONIC_TIME KBPS' as each scheduled cap takes effect")
    args = parser.parse_args(argv)
    try:
        args.conditions = Conditions(args.delay, args.jitter, args.rate_kbps, args.outage_every, args.outage_for,
                                     args.queue_bytes, args.rate_schedule, args.max_queue)
        args.conditions.check()
    except ValueError as error:
        parser.error(str(error))
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--upstream must be HOST:PORT, got {args.upstream!r}")
    args.upstream = (host, int(port))
    return args


async def serve(args: argparse.Namespace) -> None:
    proxy = NetemProxy(args.upstream, args.conditions, cap_log=args.cap_log)
    server = await proxy.serve("127.0.0.1", args.listen)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
