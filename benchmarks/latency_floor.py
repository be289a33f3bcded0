"""The floor of a call's latency: what its configuration allows with a perfect playout policy.

A frame's first sample cannot play before (1) the capture block that completes its packet's last
frame has reached the sender, (2) it has been encoded, sent and decoded, and (3) the playback
callback that is to play it has come round: a sound card takes audio a block at a time, on its
own clock. The floor is the smallest constant delay ``L`` (first sample captured to first sample
played) that meets (3) for every frame with (1) and (2) as measured (the medians of the encode,
network and decode stages), at the phase the playback clock runs at against the capture clock,
plus the codec's lookahead. Everything above it is playout policy: the jitter buffer's target and
the audio queued at the sound card beyond what a block needs.

With blocks of one frame and the two clocks in phase (a duplex sound card), the floor is two frames
as long as a frame's round through the codec takes under one: 26.7 ms at 24 kHz; 10 ms blocks
(240 samples) against 320-sample frames add the wait for the block that completes a frame, 30 ms.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def capture_done(frame: int, block: int, frames_per_packet: int, k: int) -> int:
    """Sample time at which the capture block completing frame ``k``'s packet reaches the sender."""
    last = (k // frames_per_packet + 1) * frames_per_packet  # frames up to the packet's end
    return math.ceil(last * frame / block) * block


def floor_samples(frame: int, block: int, processing: float, phase: float, frames_per_packet: int = 1) -> float:
    """Smallest constant delay, in samples, from a frame's first captured sample to its first played
    sample: ``processing`` samples from capture to decoded audio, playback callbacks at ``phase +
    j * block``. Frame ``k`` first plays in the callback of block ``j = floor((k * frame + L - phase)
    / block)``, which must come after its audio is ready; the pattern repeats with the least common
    multiple of the frame, the block and the packet."""
    period = math.lcm(frame * frames_per_packet, block) // frame
    need = 0.0
    for k in range(period):
        ready = capture_done(frame, block, frames_per_packet, k) + processing
        need = max(need, math.ceil((ready - phase) / block) * block + phase - k * frame)
    return need


def spare_samples(frame: int, block: int, processing: float, phase: float, frames_per_packet: int = 1) -> float:
    """How long before the callback that plays it at the floor the frame that sets the floor is
    ready: the room a playout policy has for what it must keep beyond the medians (the decode time's
    tail, the event loop's wake-ups, the arrivals' spread). With less, the policy plays that frame,
    and with a constant delay every frame, a whole block later. At 10 ms blocks every frame is ready
    at the same phase of the playback clock (the capture blocks that complete the frames are whole
    blocks), so this is the spare of every frame of the pattern."""
    worst = max(capture_done(frame, block, frames_per_packet, k) + processing - k * frame
                for k in range(math.lcm(frame * frames_per_packet, block) // frame))
    return floor_samples(frame, block, processing, phase, frames_per_packet) - worst


def oracle_ms(direction: dict, phase: float, block: int, rate: int, hop: int, percentile: float = 95.0) -> float:
    """The least constant delay (ms) at which ``percentile`` % of a measured direction's frames would
    have played in time, had each been decoded the moment it landed: each frame's own capture wait,
    encode, network and decode as measured (where :func:`floor_samples` takes their medians), rounded
    up to the callback that first finds it, plus the lookahead. A policy that lets the other frames in
    a hundred come late (``call.time_scale`` expands for them) cannot sit lower; what it keeps above
    this is its own reserve, what lies between this and the floor is the processing's scatter."""
    start = np.asarray(direction["index"]) * hop / rate
    ready = sum(np.asarray(direction[stage], float) for stage in ("input", "encode", "packetize", "network", "decode"))
    period, offset = block / rate, phase / rate
    need = np.ceil((start + ready - offset) / period - 1e-9) * period + offset - start
    return 1000 * float(np.percentile(need, percentile) + np.median(direction["lookahead"]))


def playback_phase(source_t0: float, sink_t0: float, block: int, rate: int) -> float:
    """Where, in samples within a block, the receiver's playback callbacks fall against the
    sender's capture blocks (both clocks are the machine's in the benchmark)."""
    return ((sink_t0 - source_t0) * rate) % block


def call_floor_ms(spec: dict, stages: dict, phases: list[float], rate: int, hop: int,
                  of: Callable[..., float] = floor_samples) -> float:
    """The floor of a measured call in ms, mean over its two directions: the stages' medians give
    the processing time, ``phases`` (samples, one a direction) the playback clocks' offsets. ``of``
    :func:`spare_samples`: the floor's spare instead (no lookahead)."""
    processing = sum(stages[s]["p50"] for s in ("encode", "network", "decode")) / 1000 * rate
    floors = [of(hop, spec["block"], processing, phase, spec["frames_per_packet"]) for phase in phases]
    return 1000 * sum(floors) / len(floors) / rate + (stages["lookahead"]["p50"] if of is floor_samples else 0.0)
