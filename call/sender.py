"""The sending half of a call's media path: audio blocks in, wire messages out.

The model runs on a worker thread (an executor), never on the event loop's thread: a blocked
loop would bunch sends into bursts and starve the sockets.

A live sender degrades rather than queues when the CPU is busy: input that piled up while the
encoder was late is dropped down to ``max_backlog``, and the codebook search, the one optional
cost, falls back to greedy while encoding a frame takes more than half its period
(:class:`EncodeBudget`). A file sender does neither: it has time, and must lose nothing.

Besides the events of :data:`call.timing.Observer`, a live sender tells its observer about the
input it drops, so that whoever times frames by their index can place them in the input:
``observer("dropped", stream_id, first_frame, n_samples, t)``, where the fourth argument counts
*samples*, not frames: ``n_samples`` samples of input were dropped at time ``t`` (when the block
holding them reached the sender), and every frame from ``first_frame`` on begins that many samples
later in the captured audio than ``first_frame * hop_length`` says (the gap falls just before
``first_frame``'s first sample, or inside the frame before it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from concurrent.futures import Executor
from typing import Callable, Optional

import numpy as np
import torch

from streaming import StartMode
from streaming.onnx_engine import engine_encoder

from . import wire
from .dtx import Dtx, Verdict
from .model_header import stream_header_for
from .rate import Mode, RateLimit, best_mode
from .search_width import default_search_width
from .timing import Observer

log = logging.getLogger("call")


def streaming_encoder(model: object, bandwidth: float, start: StartMode | str, search_width: int = 1,
                      engine: str = "torch") -> object:
    """The model's streaming encoder on ``engine`` (``streaming.onnx_engine.engine_encoder``). An
    object other than an EnCodec model (a baseline codec in the benchmarks) rides the same call by
    offering ``streaming_encoder(bandwidth, start)``; it has no codebooks, so ``search_width`` does
    not apply to it."""
    factory = getattr(model, "streaming_encoder", None)
    if factory:
        return factory(bandwidth, start)
    return engine_encoder(model, bandwidth, start, search_width, engine)


class EncodeBudget:
    """Decides when a live sender sheds its codebook search, from the time encoding takes.

    The search is shed while the smoothed encode time per frame exceeds ``shed_above`` of the
    frame period, and comes back once it stays below ``restore_below``: apart enough that a
    machine near the edge does not flap between the two. Greedy encoding alone can cost more
    than ``restore_below`` on a machine that has time for the search all the same (two peers
    and a relay on two cores: about a fifth of a frame, once the executor's hand-offs count),
    so a sender shed once, by a passing burst of load, would never search again. Hence the
    probe: after ``probe_after`` seconds of greedy encoding under ``shed_above``, the search is
    tried again; if it is shed again within as long, the next probe waits twice as long (up to
    ``probe_max``), and a probe the search survives resets the wait. A push counts for at most
    one frame period a frame, and the average runs over about 20 frames (``smoothing``): one
    stall of the whole process (another process's burst, a page fault) says nothing of what the
    search costs, and must not shed it for seconds. (In a call the search is a small part of
    the time an encode takes: 5.1 against 5.6 ms a push at the median with two peers and the
    relay on two cores, where the model alone takes 1.6 and 2.5 ms; the rest is the hand-off to
    the encoder's thread and the other threads' turns.)
    """

    def __init__(self, frame_period: float, shed_above: float = 0.5, restore_below: float = 0.2,
                 smoothing: float = 0.05, probe_after: float = 2.0, probe_max: float = 32.0) -> None:
        self.frame_period = frame_period
        self.shed_above, self.restore_below, self.smoothing = shed_above, restore_below, smoothing
        self.per_frame: float | None = None
        self.shedding = False
        self.sheds = 0
        self._probe_after = self._wait = max(1, round(probe_after / frame_period))  # frames
        self._probe_max = max(1, round(probe_max / frame_period))
        self._calm = 0  # frames encoded since the shed (or the last slow push) under ``shed_above``
        self._probing: int | None = None  # frames encoded with the search since a probe restored it

    def note(self, seconds: float, frames: int) -> bool:
        """Account ``seconds`` spent encoding ``frames`` frames; True while the search is shed."""
        if frames:
            cost = min(seconds / frames, self.frame_period)
            self.per_frame = cost if self.per_frame is None else \
                self.per_frame + self.smoothing * (cost - self.per_frame)
            load = self.per_frame / self.frame_period
            if not self.shedding and load > self.shed_above:
                self.shedding, self.sheds, self._calm = True, self.sheds + 1, 0
                if self._probing is not None:  # a probe failed: wait longer before the next one
                    self._wait, self._probing = min(2 * self._wait, self._probe_max), None
                log.warning("encoding takes %.0f%% of each frame: codebook search off until the CPU frees up",
                            100 * load)
            elif self.shedding:
                self._calm = self._calm + frames if load < self.shed_above else 0
                if load < self.restore_below or self._calm >= self._wait:
                    self.shedding = False
                    self._probing = 0 if load >= self.restore_below else None
            elif self._probing is not None:
                self._probing += frames
                if self._probing >= self._wait:  # the search held as long as the probe waited: it fits
                    self._wait, self._probing = self._probe_after, None
        return self.shedding


class Sender:
    """Encodes one outgoing stream: audio blocks in, ``HEADER``/audio/``END`` messages out.

    ``live``: audio from a device, where latency beats completeness (see the module's docstring).
    ``dtx``: send nothing but comfort noise in pauses (``call.dtx``; the stream's ``HEADER`` says
    protocol version 2, which peers older than DTX refuse). ``clock`` times the encoder (tests drive it).
    """

    def __init__(self, model: torch.nn.Module, executor: Executor, bandwidth: float = 6.0,
                 start: StartMode | str = StartMode.IMMEDIATE, frames_per_packet: int = 1,
                 search_width: int | None = None, live: bool = False, max_backlog: float = 0.06, engine: str = "torch",
                 dtx: bool = False, clock: Callable[[], float] = time.monotonic) -> None:
        if not 1 <= frames_per_packet <= wire.MAX_FRAMES_PER_PACKET:
            raise ValueError(f"frames per packet must be 1..{wire.MAX_FRAMES_PER_PACKET}")
        width = default_search_width(bandwidth) if search_width is None else search_width
        self.encoder = streaming_encoder(model, bandwidth, start, width, engine)
        self.header = stream_header_for(
            model, stream_id=secrets.randbits(31), start_time_us=time.time_ns() // 1000)
        config = model.config
        self.dtx = Dtx(config.sampling_rate, config.hop_length) if dtx else None
        if dtx:
            self.header = dataclasses.replace(self.header, version=wire.DTX_VERSION)
        self.executor = executor
        self.frames_per_packet = frames_per_packet
        self.n_samples = 0
        self.next_index = 0  # of the next frame out of the encoder
        self._frames: list[np.ndarray] = []  # consecutive frames waiting for a packet, from ``_first``
        self._first = 0
        self.observer: Optional[Observer] = None
        self.live, self.clock = live, clock
        self.max_backlog = round(max_backlog * config.sampling_rate)
        """Samples a live block may hold: more piled up while the encoder was late, and is dropped."""
        self.dropped_samples = 0
        self.hop = config.hop_length
        self.config, self.mode = config, Mode(bandwidth, frames_per_packet)
        self.rate_limit = RateLimit()
        """Receivers' requests (``call.rate``): the mode follows the slowest of them."""
        self.search_width = getattr(self.encoder, "search_width", 1)
        self.budget = EncodeBudget(config.hop_length / config.sampling_rate)

    def limit_rate(self, source: int | None, kbps: float, now: float) -> None:
        """A receiver (``source``) can take ``kbps``: the next push encodes in the mode that fits."""
        self.rate_limit.request(source, kbps, now)

    async def _follow_rate(self) -> None:
        """Before a push: switch to the mode the requests in force allow (the call's own when none
        is). The switch runs on the encoder's thread, between pushes: never during one, and an
        engine that builds something for a new bandwidth does not hold up the event loop."""
        if not hasattr(self.encoder, "set_bandwidth"):
            return  # a baseline codec without bandwidths
        limit, config = self.rate_limit.limit(self.clock()), self.config
        mode = self.mode if limit is None else best_mode(
            limit, [b for b in config.target_bandwidths if b <= self.mode.bandwidth],
            config.num_quantizers_for_bandwidth, config.codebook_nbits, config.frame_rate)
        if mode.bandwidth != self.bandwidth:
            await asyncio.get_running_loop().run_in_executor(self.executor, self.encoder.set_bandwidth, mode.bandwidth)
        self.frames_per_packet = max(mode.frames_per_packet, self.mode.frames_per_packet)

    @property
    def bandwidth(self) -> float:
        """The bandwidth the encoder sends at now."""
        return getattr(self.encoder, "bandwidth", self.mode.bandwidth)

    def _note(self, event: str, first: int, count: int) -> None:
        if self.observer is not None and count:
            self.observer(event, self.header.stream_id, first, count, time.monotonic())

    async def push(self, block: np.ndarray) -> list[bytes]:
        """Encode ``(channels, n)`` float32 samples; return the packets they completed."""
        arrived = time.monotonic()
        if self.live and block.shape[-1] > self.max_backlog:
            dropped = block.shape[-1] - self.max_backlog
            self.dropped_samples += dropped
            block = block[:, -self.max_backlog:]  # the newest: what is old now is not worth sending late
            if self.observer is not None:  # the first frame starting after the gap (see the module's docstring)
                self.observer("dropped", self.header.stream_id, -(-self.n_samples // self.hop), dropped, arrived)
        self.n_samples += block.shape[-1]
        await self._follow_rate()
        if self.dtx is not None:
            self.dtx.listen(block)
        audio = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None]
        started = self.clock()
        codes = await asyncio.get_running_loop().run_in_executor(self.executor, self.encoder.push, audio)
        if self.live and self.search_width > 1:
            shed = self.budget.note(self.clock() - started, codes.shape[-1])
            self.encoder.search_width = 1 if shed else self.search_width
        if self.observer is not None and codes.shape[-1]:
            first = self.next_index
            self.observer("input", self.header.stream_id, first, codes.shape[-1], arrived)
            self._note("encoded", first, codes.shape[-1])
        return self._packets(codes, final=False)

    async def finish(self) -> list[bytes]:
        """Flush the encoder: the last packets, then ``END`` with the exact sample count."""
        codes = await asyncio.get_running_loop().run_in_executor(self.executor, self.encoder.flush)
        messages = self._packets(codes, final=True)
        return messages + [wire.EndOfStream(self.next_index, self.n_samples).encode()]

    def _packets(self, codes: torch.Tensor, final: bool) -> list[bytes]:
        """The messages that the newly encoded frames complete: packets of ``frames_per_packet``
        consecutive frames (fewer at the end or before a pause), and, with DTX, comfort noise."""
        messages: list[bytes] = []
        for frame in codes[0].T.numpy():
            index, self.next_index = self.next_index, self.next_index + 1
            verdict = self.dtx.step(index, frame) if self.dtx is not None else Verdict([(index, frame)])
            for i, codes_i in verdict.send:
                if self._frames and i != self._first + len(self._frames):
                    messages += self._flush()
                if not self._frames:
                    self._first = i
                self._frames.append(codes_i)
                if len(self._frames) >= self.frames_per_packet:
                    messages += self._flush()
            if verdict.comfort is not None:
                messages += self._flush() + [verdict.comfort.encode()]
        return messages + self._flush() if final else messages

    def _flush(self) -> list[bytes]:
        """The frames waiting, as one packet (none if none wait)."""
        if not self._frames:
            return []
        packet = wire.AudioPacket(self._first, tuple(self._frames))
        self._note("packet", self._first, len(self._frames))
        self._frames = []
        return [packet.encode(self.header.codebook_nbits)]
