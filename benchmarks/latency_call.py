"""One measured call: the relay (``server.py``) and two clients (``client.py``) on loopback, each in
its own process, with the sound cards replaced by a clocked source and sink.

The source delivers blocks of ``block`` samples of speech in real time (block ``b`` arrives when
its last sample has been "captured", at ``t0 + (b + 1) * block / rate``); the sink asks for
``block`` samples every ``block / rate`` seconds and "plays" them from that moment. Both clients
talk (two speech files), so both directions are measured and each process encodes and decodes
as in a real call. The observer hook of ``call/sender.py`` and ``call/receiver.py`` timestamps every frame on its way
(``time.monotonic()``, one clock for all processes on Linux), and the sink logs which samples
it played when; from these each frame's end-to-end latency splits into stages:

    input      first sample of the frame captured -> the block completing the frame reaches the encoder
    encode     -> its codes are back from the encoder thread
    packetize  -> the packet holding it is built (waits for the other frames of a packet)
    network    -> the receiver reads it from its socket (outbox, websocket, relay, websocket)
    jitter     -> it leaves the jitter buffer (playout tick)
    decode     -> its audio is back from the decoder thread
    output     -> the sink plays its first sample (audio queued at the "sound card")
    lookahead  the codec's algorithmic delay beyond the frame (Opus: 6.5 ms; ours: none)

The sink is ideal: a sample handed over in a callback plays at once, with no hardware buffer.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.latency_floor import playback_phase
from call.ports import free_loopback_port, wait_until_listening

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("input", "encode", "packetize", "network", "jitter", "decode", "output", "lookahead")
EVENTS = ("input", "encoded", "packet", "received", "playout", "decoded")
UNTRAINED = {"untrained-24khz": "the full-size 24 kHz architecture with random weights (tests/models.py)",
             "untrained-small": "a tiny 24 kHz model with random weights (tests/models.py), for tests"}


# ----------------------------------------------------------------------------- models


def load_codec(spec: str):
    """``default`` | checkpoint dir | hub id | Meta ``.th`` | ``untrained-24khz`` | ``untrained-small``
    | ``opus-20ms`` | ``opus-10ms``: an object the call pipeline accepts as its model."""
    if spec.startswith("opus-"):
        from benchmarks.opus_codec import OpusCodec

        return OpusCodec(frame_ms=float(spec[len("opus-"):].removesuffix("ms")))
    if spec in UNTRAINED:
        sys.path.insert(0, str(ROOT))
        from tests.models import realistic_model, small_model

        return (realistic_model() if spec == "untrained-24khz" else small_model()).eval()
    from codec import load_model

    return load_model(spec).eval()


def is_opus(spec: str) -> bool:
    return spec.startswith("opus-")


# ---------------------------------------------------------------------- clocked devices


class ClockedStream:
    """Stands in for ``sounddevice.InputStream``/``OutputStream``: a thread calls the callback on
    an absolute schedule of ``blocksize`` samples (no drift), like a sound card's clock."""

    def __init__(self, owner: "ClockedDevices", kind: str, samplerate, channels, dtype, blocksize,
                 device, callback) -> None:
        self.owner, self.kind = owner, kind
        self.rate, self.channels = int(samplerate), channels
        self.blocksize = owner.block  # the benchmark's block size, whatever the client asked
        self.callback = callback
        self.running = False
        self.t0: float | None = None
        self.log: list[tuple[float, int, int]] = []  # sink: (nominal time, ring read before, samples read)
        self.late_max = 0.0
        self.buffer = np.zeros((self.blocksize, channels), np.float32)
        owner.streams[kind] = self
        self.taken = 0  # sink: samples the client handed its speaker, at the model's rate
        if kind == "output":
            speaker = callback.__self__
            write = speaker.write

            def counted(block: np.ndarray) -> None:
                self.taken += block.shape[-1]
                write(block)
            speaker.write = counted

    def resampler_lag(self) -> int:
        """The delay of the client's resampler on this device (``call.resample``: the content comes
        this many samples late, at the resampler's output rate); 0 when the device runs at the model's rate."""
        return getattr(getattr(self.callback.__self__, "resample", None), "lag", 0)

    def position(self, model_samples: int) -> int:
        """Where the content of the sample the client handed over as its ``model_samples``-th plays in
        the sink's queue: past the resampler's delay, which the call pays."""
        return model_samples * self.rate // self.owner.rate + self.resampler_lag()

    def start(self) -> None:
        self.running = True
        self.t0 = time.monotonic() + 0.01
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"clocked-{self.kind}")
        self.thread.start()

    def due(self, b: int) -> float:
        """When block ``b`` is due: the source's is complete at ``t0 + (b + 1) * period``, the
        sink's starts playing at ``t0 + b * period``."""
        return self.t0 + (b + 1 if self.kind == "input" else b) * self.blocksize / self.rate

    def step(self, b: int) -> None:
        """Block ``b``: the source hands it over, the sink takes it."""
        n, audio = self.blocksize, self.owner.audio
        if self.kind == "input":
            self.buffer[:, 0] = audio[(b * n + np.arange(n)) % len(audio)]
            self.callback(self.buffer, n, None, None)
        else:
            ring = self.callback.__self__.ring
            before = ring.read
            self.callback(self.buffer, n, None, None)
            self.log.append((self.due(b), before, ring.read - before))

    def _run(self) -> None:
        b = 0
        while self.running:
            delay = self.due(b) - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.step(b)
            late = time.monotonic() - self.due(b)  # block b was done this long after it was due
            if late > self.late_max:
                self.late_max, self.late_at = late, b
            b += 1

    def stop(self) -> None:
        self.running = False
        self.thread.join()

    def close(self) -> None:
        pass


class ClockedDevices:
    """A module object that replaces ``sounddevice`` in a peer process: devices at the model's
    ``rate``, or at ``device_rate`` only (they refuse the model's, so the client resamples), with
    blocks of ``block`` samples at the model's rate (as many ms at the device's)."""

    stream_class = ClockedStream

    def __init__(self, audio: np.ndarray, block: int, rate: int = 24000, device_rate: int | None = None) -> None:
        self.rate, self.device_rate = rate, device_rate or rate
        if self.device_rate != rate:
            import soxr

            audio = soxr.resample(audio, rate, self.device_rate)
        self.audio, self.block = audio.astype(np.float32), block * self.device_rate // rate
        self.streams: dict[str, ClockedStream] = {}

    def check(self, samplerate: float | None = None, **kw) -> None:
        if samplerate is not None and samplerate != self.device_rate:
            raise ValueError(f"clocked device runs at {self.device_rate} Hz only")

    def module(self) -> types.ModuleType:
        module = types.ModuleType("sounddevice")
        module.InputStream = lambda **kw: self.stream_class(self, "input", **kw)
        module.OutputStream = lambda **kw: self.stream_class(self, "output", **kw)
        module.check_input_settings = module.check_output_settings = self.check
        module.query_devices = lambda device=None, kind=None: \
            {"default_samplerate": float(self.device_rate)} if kind else "clocked benchmark device"
        return module


# ------------------------------------------------------------------------- one peer


@dataclass
class CallSpec:
    """One call of the benchmark."""

    label: str
    model: str
    bandwidth: float = 6.0
    block: int = 240
    frames_per_packet: int = 1
    seconds: float = 10.0
    warmup: float = 2.0
    inject: dict = field(default_factory=dict)
    """Known delays to add, for the tests: ``{"encode": s, "network": s, "decode": s}``."""
    playout: dict = field(default_factory=dict)
    """A what-if, not the shipped defaults: ``{"jitter_initial": s, "jitter_min": s}`` replace the jitter
    buffer's start (two frames) and floor (none), to show what the codec allows with another playout policy."""
    engine: str = "torch"
    """Streaming engine of both peers' encoder and decoder (``client.py --engine``); Opus ignores it."""
    netem: dict = field(default_factory=dict)
    """Conditions of the relay → client links (``benchmarks.netem.Conditions`` fields); empty: plain loopback."""
    front_end: bool = True
    """Echo cancellation, noise suppression and gain on the microphone, as a call from a microphone has
    them by default (``call.front_end``). They work in 10 ms chunks: with blocks that are not whole
    chunks (320 samples) the rest of each block waits for the next, so frame-aligned calls run without."""
    device_rate: int | None = None
    """Sample rate of both peers' sound cards when it is not the model's (they then resample)."""
    dtx: bool = False
    """Comfort noise in pauses (``call.dtx``), as a call from a microphone does by default. Off for
    the latency rows: every frame then travels, and every frame's delay is measured."""


class DelayedOutbox:
    """Wraps the client's outbox so that each message leaves ``delay`` s after it was queued
    (a constant extra network delay, without changing throughput). Time is the event loop's
    (``time.monotonic()`` in a call; a test's virtual clock in a simulated one)."""

    def __init__(self, outbox, delay: float) -> None:
        self.outbox, self.delay = outbox, delay
        self.due: dict[int, float] = {}

    def __getattr__(self, name):
        return getattr(self.outbox, name)

    async def put(self, message: bytes) -> None:
        self.due[id(message)] = asyncio.get_running_loop().time() + self.delay
        await self.outbox.put(message)

    async def head(self) -> bytes:
        message = await self.outbox.head()
        wait = self.due.get(id(message), 0.0) - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        return message

    def pop(self) -> None:
        self.due.pop(id(self.outbox.queue[0]), None)
        self.outbox.pop()


class Slowed:
    """A streaming encoder or decoder whose ``push`` takes ``delay`` s longer (on its worker thread);
    ``sleep`` spends the time (a test's simulated call passes one that spends virtual time)."""

    def __init__(self, inner, delay: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner, self.delay, self.sleep = inner, delay, sleep

    def push(self, *args):
        self.sleep(self.delay)
        return self.inner.push(*args)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def warm_up(model, bandwidth: float, seconds: float = 1.0, engine: str = "torch") -> None:
    """Run the codec once before the call: the first calls into torch are slow (lazy set-up),
    and a cold start would put a burst, then a backlog, into the first seconds of the call."""
    import torch

    from call.receiver import streaming_decoder
    from call.sender import streaming_encoder

    encoder = streaming_encoder(model, bandwidth, "immediate", engine=engine)
    decoder = streaming_decoder(model, "immediate", engine)
    rate, hop = model.config.sampling_rate, model.config.hop_length
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.1, (1, 1, hop)).astype(np.float32))
    for _ in range(int(seconds * rate / hop)):
        decoder.push(encoder.push(noise))


def front_end_stages(spec: CallSpec):
    """The microphone front end a peer of ``spec`` runs (``client.Options.front_end``)."""
    from call.front_end import Stages

    return Stages() if spec.front_end else Stages(echo=False, noise=False, gain=False)


def tighten_playout(playout: dict) -> None:
    """The what-if of :attr:`CallSpec.playout`: jitter buffers opened from now on in this process
    start at ``jitter_initial`` and never aim below ``jitter_min`` (each where given)."""
    import functools

    from call import receiver

    names = {"jitter_initial": "initial_delay", "jitter_min": "min_delay"}
    receiver.JitterBuffer = functools.partial(receiver.JitterBuffer,
                                              **{names[key]: value for key, value in playout.items() if key in names})


def peer_main(spec: dict, url: str, room: str, audio: np.ndarray, barrier, results) -> None:
    """Body of a peer process: load the codec, run a client for warm-up + measured seconds,
    send back its timestamps."""
    try:
        results.put(_peer(CallSpec(**spec), url, room, audio, barrier))
    except BaseException as error:  # report, so that the parent does not wait forever
        import traceback

        results.put({"error": f"{type(error).__name__}: {error}\n{traceback.format_exc()}"})
        barrier.abort()


def _peer(spec: CallSpec, url: str, room: str, audio: np.ndarray, barrier) -> dict:
    sys.path.insert(0, str(ROOT))
    from call.threads import configure_threads
    from client import Client, Options

    configure_threads()  # what the command line does: one intra-op thread per model thread

    model = load_codec(spec.model)
    warm_up(model, spec.bandwidth, engine=spec.engine)
    # A full garbage collection in a process that imported torch holds the GIL for ~150 ms; left
    # to chance it lands in the call (it did, in every Opus call, whose warm-up allocates little)
    # and stalls the "sound card" threads. Collect once and freeze what survives, as a latency-
    # sensitive client should after loading its model.
    gc.collect()
    gc.freeze()
    if spec.playout:
        tighten_playout(spec.playout)
    devices = ClockedDevices(audio, spec.block, model.config.sampling_rate, spec.device_rate)
    sys.modules["sounddevice"] = devices.module()

    async def call() -> dict:
        client = Client(Options(server=url, room=room, status=False, bandwidth=spec.bandwidth,
                                frames_per_packet=spec.frames_per_packet, start="immediate", engine=spec.engine,
                                dtx=spec.dtx, front_end=front_end_stages(spec)), model)
        collect = instrument(client, spec, devices)
        barrier.wait(30)
        task = asyncio.create_task(client.run())
        await asyncio.sleep(spec.warmup + spec.seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return collect()

    return asyncio.run(call())


def log_sheds(budget) -> list[tuple[float, bool]]:
    """``(time.monotonic(), shedding)`` at each change of a sender's :class:`call.sender.EncodeBudget`:
    when the codebook search went off and came back."""
    log: list[tuple[float, bool]] = []
    note = budget.note

    def logged(seconds: float, frames: int) -> bool:
        was = budget.shedding
        shedding = note(seconds, frames)
        if shedding != was:
            log.append((time.monotonic(), shedding))
        return shedding
    budget.note = logged
    return log


def log_bandwidth(encoder) -> list[tuple[float, float]] | None:
    """``(time.monotonic(), kbps)`` at each bandwidth switch of a sender's streaming ``encoder``
    (``call.sender``'s rate following, ``call.rate``); ``None`` for a codec without bandwidths (Opus here)."""
    switch = getattr(encoder, "set_bandwidth", None)
    if switch is None:
        return None
    log: list[tuple[float, float]] = []

    def logged(bandwidth: float) -> None:
        switch(bandwidth)
        log.append((time.monotonic(), float(bandwidth)))
    encoder.set_bandwidth = logged
    return log


def trace_jitter(receiver) -> list[tuple[float, float, int]]:
    """``(now, target delay, frames held)`` at every playout tick of every stream ``receiver``
    opens from now on: where the jitter stage's time goes (the target, or a queue beyond it)."""
    trace: list[tuple[float, float, int]] = []
    original = receiver._open

    def traced_open(*args, **kwargs):
        stream = original(*args, **kwargs)
        jitter = stream.jitter
        if not hasattr(jitter, "traced"):
            playout = jitter.playout

            def traced(now: float, due: float | None = None):
                trace.append((now, jitter.target_delay, jitter.buffered))
                return playout(now, due)
            jitter.playout, jitter.traced = traced, True
        return stream
    receiver._open = traced_open
    return trace


def trace_steps() -> list:
    """The sub-frame playout steps (``call.time_scale``) that speaker loops of this process open from
    now on: their counters say what each cut and added."""
    from call import media

    opened = []

    class Traced(media.SubFrameSteps):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            opened.append(self)
    media.SubFrameSteps = Traced
    return opened


def instrument(client, spec: CallSpec, devices: ClockedDevices,
               sleep: Callable[[float], None] = time.sleep) -> Callable[[], dict]:
    """Make ``client`` (not yet running) a measured peer: timestamp every frame through the
    observers of its sender and receiver, apply ``spec.playout`` and add the delays of
    ``spec.inject`` (``sleep`` spends the encoder's and decoder's). Returns the function that
    collects what a peer reports once its call is over."""
    sent: list[tuple] = []
    received: list[tuple] = []

    def on_sent(event, stream, first, count, t):
        sent.append((event, first, count, t))

    def on_received(event, stream, first, count, t):
        sink = devices.streams["output"]
        written = sink.position(sink.taken) if event == "decoded" else -1
        received.append((event, first, count, t, written))

    client.sender.observer = on_sent
    client.receiver.observer = on_received
    shed_log = log_sheds(client.sender.budget)
    bandwidth_log = log_bandwidth(client.sender.encoder)
    if spec.inject.get("encode"):
        client.sender.encoder = Slowed(client.sender.encoder, spec.inject["encode"], sleep)
    if spec.inject.get("network"):
        client.connection.outbox = DelayedOutbox(client.connection.outbox, spec.inject["network"])
    if spec.inject.get("decode"):
        original = client.receiver._open

        def slowed_open(*args, **kwargs):
            stream = original(*args, **kwargs)
            if not isinstance(stream.decoder, Slowed):
                stream.decoder = Slowed(stream.decoder, spec.inject["decode"], sleep)
            return stream
        client.receiver._open = slowed_open
    trace = trace_jitter(client.receiver)
    steps = trace_steps()

    def collect() -> dict:
        stats = [s.jitter.stats for s in client.receiver.streams.values()]
        model = client.model
        return {"sent": sent, "received": received,
                "source_t0": devices.streams["input"].t0,
                # the content of the client's sample i was captured a resampler's delay before sample i
                "input_lag_s": devices.streams["input"].resampler_lag() / model.config.sampling_rate,
                "sink_log": devices.streams["output"].log,
                "late_max": {k: s.late_max for k, s in devices.streams.items()},
                "late_at_block": {k: getattr(s, "late_at", -1) for k, s in devices.streams.items()},
                "jitter_stats": [asdict(s) for s in stats],
                "step_stats": [asdict(s.stats) for s in steps],
                "lookahead": getattr(model, "lookahead_samples", 0),
                "rate": model.config.sampling_rate, "hop": model.config.hop_length,
                "device_rate": devices.device_rate,
                "up_bytes": client.up.bytes, "sent_frames": client.sender.next_index,
                "dropped_samples": client.sender.dropped_samples, "sheds": client.sender.budget.sheds,
                "shed_log": shed_log, "bandwidth_log": bandwidth_log, "bandwidth": spec.bandwidth, "jitter_trace": trace,
                "input_overflows": getattr(devices.streams["input"].callback.__self__, "overflows", 0)}

    return collect


# --------------------------------------------------------------------------- relay


def wait_for_port(port: int, name: str, process: subprocess.Popen | None = None,
                  close: Callable[[], None] | None = None) -> None:
    """Return once something accepts connections on ``port``; raise if nothing does within 20 s or
    ``process`` exits (``close`` it first)."""
    if not wait_until_listening(port, process):
        if close is not None:
            close()
        raise RuntimeError(f"{name} did not start")


class RelayProcess:
    """``python server.py`` on a free loopback port, as a user starts it."""

    def __init__(self, extra: list[str] | None = None) -> None:
        self.port = free_loopback_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, str(ROOT / "server.py"), "--port", str(self.port)]
                                        + (extra or []), cwd=ROOT, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, "the relay (server.py)", self.process, self.close)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def __enter__(self) -> "RelayProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------- CPU load


@dataclass
class CpuLoad:
    """``processes`` processes that burn a core each from ``start`` to ``stop`` seconds into the
    measured part of a call (after its warm-up). ``processes=0`` keeps the same schedule and
    measurements without load: the idle baseline."""

    processes: int
    start: float = 3.0
    stop: float = 13.0


BURN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(200000): pass\n"
"""A busy process: ``while True: pass``, that ends by itself if the benchmark dies without stopping it."""


class Burners:
    """Processes spinning on the CPU, started and stopped by the benchmark; as a context manager
    they are stopped on the way out whatever happens (an error, Ctrl-C). Each also ends by itself
    once its parent is gone."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.processes: list[subprocess.Popen] = []

    def start(self) -> float:
        """Start them; returns the time they were all running."""
        for _ in range(self.n):
            self.processes.append(subprocess.Popen([sys.executable, "-c", BURN], stdin=subprocess.DEVNULL))
        return time.monotonic()

    def stop(self) -> float:
        """Stop them (those this object started, by handle); returns the time they were stopped."""
        for process in self.processes:
            process.kill()
        stopped = time.monotonic()
        for process in self.processes:
            process.wait()
        self.processes = []
        return stopped

    def __enter__(self) -> "Burners":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of the whole machine since boot (``/proc/stat``)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def process_ticks() -> dict[int, tuple[int, str, int]]:
    """``{pid: (user + system clock ticks, command line, parent pid)}`` of every process now running."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry.name)] = (int(fields[11]) + int(fields[12]), cmd or stat.split("(", 1)[1].split(")")[0],
                                int(fields[1]))
    return out


def cpu_between(a: tuple, b: tuple, top: int = 6) -> dict:
    """What ran between two samples ``(monotonic time, cpu_ticks(), process_ticks())``: the machine's
    busy share of its cores, the processes that used the most CPU (in cores, e.g. 1.0 = one core), and
    how many cores this benchmark's processes (this one and its descendants: relay, peers, burners) and
    all the others used."""
    (t0, (busy0, total0), procs0), (t1, (busy1, total1), procs1) = a, b
    seconds = max(t1 - t0, 1e-9)
    hz = os.sysconf("SC_CLK_TCK")
    used = {pid: (ticks - procs0.get(pid, (0,))[0]) / hz / seconds for pid, (ticks, *_) in procs1.items()}
    ours, grew = {os.getpid()}, True
    while grew:  # descendants of this process
        grew = False
        for pid, (_, _, parent) in procs1.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                grew = True
    busy = (busy1 - busy0) / max(total1 - total0, 1)
    ours_cores = sum(c for pid, c in used.items() if pid in ours)
    ranked = sorted(((c, procs1[pid][1][:100]) for pid, c in used.items() if c > 0), reverse=True)
    return {"seconds": t1 - t0, "busy": busy, "ours_cores": ours_cores,
            "others_cores": max(0.0, busy * (os.cpu_count() or 1) - ours_cores),
            "top": [{"cores": round(c, 2), "command": cmd} for c, cmd in ranked[:top]]}


def sample() -> tuple:
    return time.monotonic(), cpu_ticks(), process_ticks()


def sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def run_load(load: CpuLoad, spec: CallSpec, barrier) -> dict:
    """The benchmark's side of a call under load: pass the barrier with the peers (their clients
    start then), start the burners ``load.start`` s into the measured part, stop them at
    ``load.stop``, and sample the machine's CPU use in each phase. Returns the marks (peers' clock)."""
    barrier.wait(120)
    began = sample()
    measured = began[0] + spec.warmup
    with Burners(load.processes) as burners:
        sleep_until(measured + load.start)
        before = sample()
        started = burners.start()
        sleep_until(measured + load.stop)
        during = sample()
        stopped = burners.stop()
    sleep_until(measured + spec.seconds)
    after = sample()
    return {"processes": load.processes, "start": load.start, "stop": load.stop,
            "call_started_at": began[0], "measured_from": measured, "started_at": started, "stopped_at": stopped,
            "cpu": {"before": cpu_between(began, before), "during": cpu_between(before, during),
                    "after": cpu_between(during, after)}}


# --------------------------------------------------------------------------- a call


def run_call(spec: CallSpec, audio_a: np.ndarray, audio_b: np.ndarray, relay_url: str | None = None,
             load: CpuLoad | None = None) -> dict:
    """Run one call (two peer processes through the relay); per-frame stage latencies of both
    directions, in seconds. With ``load``, burn CPU during part of it (see :class:`CpuLoad`);
    the result's ``load`` says when, and what ran."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2 if load is None else 3)
    results = context.Queue()
    owned = None
    if relay_url is None:
        owned = RelayProcess()
        relay_url = owned.url
    netem = None
    if spec.netem:
        from benchmarks.netem import Conditions, NetemProcess

        netem = NetemProcess(relay_url, Conditions(**spec.netem))
        relay_url = netem.url
    room = f"bench-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    peers = [context.Process(target=peer_main, args=(asdict(spec), relay_url, room, audio, barrier, results),
                             daemon=True) for audio in (audio_a, audio_b)]
    try:
        for p in peers:
            p.start()
        marks = None
        if load is not None:
            try:
                marks = run_load(load, spec, barrier)
            except threading.BrokenBarrierError:
                pass  # a peer failed before the call began: its error is on the queue
        timeout = spec.warmup + spec.seconds + 120
        outs = [results.get(timeout=timeout) for _ in peers]
        for p in peers:
            p.join(10)
        caps = netem.caps() if netem is not None else []
    finally:
        for p in peers:
            if p.is_alive():
                p.kill()
        if netem is not None:
            netem.close()
        if owned is not None:
            owned.close()
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError("a peer failed:\n" + "\n".join(errors))
    result = call_result(spec, outs)
    result["caps"] = caps  # (when, kbps) of the emulator's scheduled caps, as they took effect
    if load is not None:
        result["load"] = marks
    return result


def call_result(spec: CallSpec, outs: list[dict]) -> dict:
    """What two peers reported (see :func:`instrument`), as :func:`run_call` returns it."""
    directions = [frame_latencies(outs[0], outs[1], spec), frame_latencies(outs[1], outs[0], spec)]
    return {"spec": asdict(spec), "directions": directions,
            "kbps": [8 * o["up_bytes"] / max(o["sent_frames"] * o["hop"] / o["rate"], 1e-9) / 1000 for o in outs],
            "jitter_stats": [o["jitter_stats"] for o in outs],
            "step_stats": [o.get("step_stats", []) for o in outs],
            "device_late_max_ms": [{k: 1000 * v for k, v in o["late_max"].items()} for o in outs],
            "device_late_at_block": [o["late_at_block"] for o in outs],
            "senders": [{key: o.get(key) for key in ("dropped_samples", "sheds", "shed_log", "input_overflows",
                                                     "rate", "hop", "bandwidth_log", "bandwidth")} for o in outs],
            "jitter_traces": [o.get("jitter_trace", []) for o in outs],
            "phases": [playback_phase(a["source_t0"], b["sink_log"][0][0], spec.block, a["rate"]) if b["sink_log"] else 0.0
                       for a, b in (outs, outs[::-1])]}


def frame_latencies(sender: dict, receiver: dict, spec: CallSpec) -> dict:
    """Join one direction's timestamps by frame index: ``{stage: [seconds per frame]}``, plus
    ``end_to_end``, ``index``, ``captured`` (when each frame's first sample was captured, on the
    peers' clock), ``lost`` (frames the receiver concealed) and ``dropped_samples``.

    Frame ``k`` begins at sample ``k * hop`` of what the encoder took in; a live sender that drops
    input (its ``"dropped"`` events, see ``call/sender.py``) moves every later frame that many
    samples further into the captured audio, so its capture time is counted from there."""
    rate, hop = sender["rate"], sender["hop"]
    times: dict[str, dict[int, float]] = {e: {} for e in EVENTS}
    written: dict[int, int] = {}
    drops: list[tuple[int, int]] = []  # (first frame after the gap, samples dropped)
    lost = 0
    for event, first, count, t, *rest in sender["sent"] + receiver["received"]:
        if event == "lost":
            lost += 1
            continue
        if event == "dropped":
            drops.append((first, count))
            continue
        for k in range(first, first + count):
            times[event].setdefault(k, t)  # the first time counts (a resent packet does not)
        if event == "decoded":
            written.setdefault(first, rest[0])
    sink = np.array(receiver["sink_log"], dtype=float).reshape(-1, 3)
    lookahead = receiver["lookahead"] / rate
    warmup_frames = int(spec.warmup * rate / hop)
    drops.sort()
    drop_firsts = np.array([first for first, _ in drops], dtype=np.int64)
    drop_total = np.cumsum([0] + [count for _, count in drops])
    rows, captures = [], []
    for k in sorted(times["decoded"]):
        if k < warmup_frames or not all(k in times[e] for e in EVENTS) or k not in written:
            continue
        w = written[k]
        i = np.searchsorted(sink[:, 1], w, side="right") - 1  # the callback whose read covered w
        if i < 0 or w >= sink[i, 1] + sink[i, 2]:
            continue  # not played before the call ended
        played = sink[i, 0] + (w - sink[i, 1]) / receiver.get("device_rate", rate)
        skipped = drop_total[np.searchsorted(drop_firsts, k, side="right")]  # dropped before frame k began
        captured = sender["source_t0"] - sender.get("input_lag_s", 0.0) + (k * hop + skipped) / rate
        t = [captured] + [times[e][k] for e in EVENTS] + [played]
        rows.append([k] + list(np.diff(t)) + [lookahead])
        captures.append(captured)
    rows = np.array(rows, dtype=float).reshape(-1, 1 + len(STAGES))
    out = {stage: rows[:, 1 + j].tolist() for j, stage in enumerate(STAGES)}
    out["end_to_end"] = rows[:, 1:].sum(axis=1).tolist()
    out["index"] = rows[:, 0].astype(int).tolist()
    out["captured"] = captures
    out["lost"] = lost
    out["dropped_samples"] = int(drop_total[-1])
    return out
