"""Sub-frame playout steps: a frame played a pitch period shorter or longer, as WebRTC's NetEq
accelerates and expands, so that the playout delay can move by a few ms instead of a whole frame.

The jitter buffer moves the delay in whole frames (13.3 ms at 24 kHz): it skips a frame when one is
held that no tick needed, and stretches by a concealed frame when the frame due has not come. So a
call settles anywhere within a frame above the least delay its link and sound card allow (its floor),
depending on the phase of the sender's capture clock against the receiver's playback clock.

:class:`SubFrameSteps` watches, for every tick, how many samples earlier the frame's audio could
have been placed and still been written before the sound card's callback needed it (its *slack*,
:func:`sample_slack`), and keeps a low percentile of the recent slacks at a small margin: above it,
the frame is played shortened by about the excess (:func:`shorten`); below it, lengthened
(:func:`lengthen`). Both cut or repeat a whole pitch period with an overlap-add cross-fade (WSOLA),
so the pitch is kept and the waveform has no step. A frame that needs no step passes through
untouched (the same array).

When the frame due has not come by the last moment a tick can wait for it, the card is fed whole
pitch periods of what it played last instead (:meth:`SubFrameSteps.expand`, NetEq's expand): as many
as its next block needs, a few ms, where a concealed frame added a whole frame of delay, and the
frame, landing a little later, is played at the next callback: not concealed, not late. That makes a
frame missing its tick cheap, so the target can sit at the 5th percentile of the slack (simulated
20 ms p99 jitter at 10 ms blocks: medians 46.5-50.0 ms against floor + the jitter's p95 of 48.6-55.6,
where whole concealed frames and the 1st percentile gave 51.8-53.5; ``benchmarks/results/playout.md``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np


def _fades(lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Raised-cosine fade-out and fade-in of ``lag`` samples that sum to one."""
    fade_in = (0.5 - 0.5 * np.cos(np.pi * (np.arange(lag) + 0.5) / lag)).astype(np.float32)
    return 1.0 - fade_in, fade_in


def best_lag(audio: np.ndarray, low: int, high: int, tolerance: float = 0.02, longest: bool = True) -> int:
    """The lag in ``[low, high]`` (``2 * high <= n``) at which the frame's first ``lag`` samples best
    match the next ``lag`` (normalised cross-correlation over all channels): a pitch period of voiced
    audio, or a whole number of them, so that cutting or repeating that many samples keeps the
    waveform's period. Of the lags within ``tolerance`` of the best match, the longest: a step
    of two periods takes the delay back in half the steps (``longest`` off: the shortest, for an
    expansion that should add no more delay than the sound card needs). All lags at once (it runs on the event
    loop between a tick's decode and the sound card's callback: 0.3 ms on a busy machine, where a
    loop over the lags took 1.4)."""
    x = audio.astype(np.float64)
    lags = np.arange(low, high + 1)
    padded = np.concatenate([x, np.zeros((x.shape[0], high))], axis=1)
    shifted = np.lib.stride_tricks.sliding_window_view(padded, high, axis=1)[:, lags]  # [c, k, i] = x[c, lags[k] + i]
    products = (x[:, None, :high] * shifted).sum(axis=0)
    cross = np.cumsum(products, axis=1)[lags - low, lags - 1]  # sum over i < lag of x[i] * x[i + lag]
    power = np.concatenate([[0.0], np.cumsum((x * x).sum(axis=0))])
    energy = np.sqrt(power[lags] * (power[2 * lags] - power[lags]))
    scores = np.where(energy > 0, cross / np.where(energy > 0, energy, 1.0), 1.0)  # silence: any lag is seamless
    near = scores >= scores.max() - tolerance
    peak = scores >= np.maximum(np.r_[scores[1:], -np.inf], np.r_[-np.inf, scores[:-1]])  # (a peak: not its slope)
    return int(lags[np.flatnonzero(near & peak)[-1 if longest else 0]])


def shorten(audio: np.ndarray, lag: int) -> np.ndarray:
    """``audio`` (``(channels, n)``, ``2 * lag <= n``) played ``lag`` samples shorter: its first
    ``2 * lag`` samples become ``lag`` that fade from the first period into the second. The first
    sample and everything after the cross-fade are the frame's own: no step at either end."""
    fade_out, fade_in = _fades(lag)
    joined = audio[:, :lag] * fade_out + audio[:, lag:2 * lag] * fade_in
    return np.concatenate([joined, audio[:, 2 * lag:]], axis=-1).astype(audio.dtype, copy=False)


def lengthen(audio: np.ndarray, lag: int) -> np.ndarray:
    """``audio`` (``(channels, n)``, ``2 * lag <= n``) played ``lag`` samples longer: after its first
    period, a period that fades from the second back into the first, then the rest from the second
    period on (the first period once more, joined seamlessly at both ends)."""
    fade_out, fade_in = _fades(lag)
    joined = audio[:, lag:2 * lag] * fade_out + audio[:, :lag] * fade_in
    return np.concatenate([audio[:, :lag], joined, audio[:, lag:]], axis=-1).astype(audio.dtype, copy=False)


def continuation(history: np.ndarray, lag: int, n: int) -> np.ndarray:
    """``n`` samples (a whole number of ``lag``) that follow ``history`` (``(channels, m)``, ``lag < m``)
    by repeating its last ``lag`` samples: they end as the history ends, so the frame decoded next
    joins them exactly as it would have joined the history. Where a repetition follows the history's
    last sample, the period's first sample is off by as much as that last sample differs from the one
    a period before it (nothing for an exact period, :func:`best_lag`; 0.4 of a sample of phase for
    a 310 Hz tone repeated at 77 samples): that offset is added at the start and faded out over half a
    period, so that no repetition starts with a step."""
    period = history[:, -lag:].astype(np.float32)
    fade_out, _ = _fades(max(1, lag // 2))
    period[:, :fade_out.shape[0]] += (history[:, -1:] - history[:, -lag - 1:-lag]) * fade_out
    return np.tile(period, n // lag).astype(history.dtype, copy=False)


def sample_slack(due: float, arrived: float, offset: int, block: int, rate: int) -> int:
    """Samples by which a frame's audio could have been placed earlier in the sound card's queue
    and still been ready in time: its tick had to start by ``due`` (the callback that plays its
    first sample, less the tick's lead) and it ``arrived`` then; ``offset`` is where in that
    callback's ``block`` (model samples) its first sample falls. Moving it back within the block is
    free; each whole block further needs a block period more of time between arrival and ``due``.
    Negative when it came after ``due`` (written in time only because the tick ran late)."""
    blocks = math.floor((due - arrived) * rate / block + 1e-6)  # (a whole block's time, less rounding, is one)
    return offset + blocks * block


@dataclass
class StepStats:
    """What the steps cost: frames played shorter or longer, and the samples cut or repeated."""

    shortened: int = 0
    lengthened: int = 0
    samples_cut: int = 0
    samples_added: int = 0
    expanded: int = 0
    """Ticks whose frame was due and not there, played as a few pitch periods of what was played last
    (:meth:`SubFrameSteps.expand`) instead of a whole concealed frame."""
    samples_expanded: int = 0


class SubFrameSteps:
    """Keeps the playout delay at the ``percentile`` of the recent frames' slack (in samples) plus
    ``margin``: a tick that played a frame that came reports its slack (:meth:`scale`), and its
    audio comes back shortened by about the excess beyond the target, or lengthened by a period
    when the target is not met. Each step, and each whole frame the jitter buffer stretches, moves
    every later frame: the slacks kept are moved with it, so that one excess is not cut twice and a
    frame that came too late still counts after the stretch it caused. Frames the jitter buffer skips
    (its level rule found them not needed in its own, shorter window) start the window afresh: moved
    down, slacks older than that window would call for lengthening what it has just cut, and the two
    rules would take turns.

    ``percentile`` 5 of a 2 s window: one frame in twenty may come too late for the reduced delay;
    its tick then expands by a few pitch periods (:meth:`expand`) and the frame plays at the next
    callback, the delay grown by those periods, to be taken back again by steps."""

    def __init__(self, rate: int, percentile: float = 5.0, margin: float = 0.0005, window: int = 150,
                 settle: int = 25, shortest: float = 0.0015, pitch: tuple[float, float] = (0.0025, 0.01),
                 bound: float = 0.02) -> None:
        self.percentile = percentile
        self.margin = round(margin * rate)
        self.low = max(1, round(shortest * rate))
        """The shortest step: a cross-fade shorter than this (1.5 ms) would be heard as a click."""
        self.pitch = (round(pitch[0] * rate), round(pitch[1] * rate))
        """The periods an expansion repeats: voices' pitch, 100 to 400 Hz."""
        self.bound = round(bound * rate)
        """Samples an expansion may add while a frame is missing (20 ms): a frame later than that is
        concealed whole, as a periodic continuation much longer than a word's pitch varies buzzes."""
        self._history = np.zeros((0, 0), np.float32)  # the last 2 * longest period played
        self._expanded = 0  # samples expanded since the last tick that played from the jitter buffer
        self._slacks: deque[int] = deque(maxlen=window)  # ticks (150: 2 s of 13.3 ms frames)
        self._settle = settle
        """Ticks observed before the first step: a percentile of fewer says too little."""
        self.stats = StepStats()

    @property
    def settles_within(self) -> int:
        """Samples of delay the steps may leave above the least the frames allow: the margin, and an
        excess shorter than the shortest step."""
        return self.margin + self.low

    def excess(self) -> int | None:
        """Samples of delay beyond the target (negative: short of it); ``None`` until enough ticks."""
        if len(self._slacks) < self._settle:
            return None
        return int(np.percentile(np.fromiter(self._slacks, float), self.percentile)) - self.margin

    def scale(self, audio: np.ndarray, slack: int | None, moved: int = 0, needed: int = 0) -> np.ndarray:
        """The tick's audio (``(channels, n)``), with the step its frame's ``slack`` calls for (``None``:
        it played no frame that came); ``moved``: whole frames by which the jitter buffer moved the delay
        at this tick (a stretch, skipped frames); ``needed``: samples the sound card needs from this tick
        before it can come again, which a shortened frame still gives (cut below that, the next tick would
        decode in the time of this one's and come too late for the card)."""
        out = self._step(audio, slack, moved, needed)
        self._played(out)
        self._expanded = 0
        return out

    def expand(self, needed: int) -> np.ndarray | None:
        """The frame due has not come and the sound card needs ``needed`` samples more before it can:
        whole pitch periods of what was played last, at least ``needed`` (NetEq's expand), so that the
        frame still plays when it lands a few ms later instead of being replaced by a concealed frame
        (a whole frame of delay). ``None`` when that would take the expansion since the last frame
        beyond :attr:`bound`, or nothing has been played yet: the frame is then concealed."""
        high = self.pitch[1]
        if self._history.shape[-1] < 2 * high:
            return None
        lag = best_lag(self._history[:, ::-1], self.pitch[0], high, longest=False)  # (reversed: the last periods)
        n = max(1, math.ceil(needed / lag)) * lag
        if self._expanded + n > self.bound:
            return None
        out = continuation(self._history, lag, n)
        self._expanded += n
        self.stats.expanded += 1
        self.stats.samples_expanded += n
        self._move(n)
        self._played(out)
        return out

    def _played(self, audio: np.ndarray) -> None:
        """Keep the end of what was played: what an expansion repeats."""
        self._history = np.concatenate([self._history.reshape(audio.shape[0], -1), audio], axis=-1)[:, -2 * self.pitch[1]:]

    def _step(self, audio: np.ndarray, slack: int | None, moved: int, needed: int) -> np.ndarray:
        if moved < 0:
            self._slacks.clear()  # the jitter buffer's own rules judged frames not needed: measure afresh
        elif moved:
            self._move(moved * audio.shape[-1])  # (a tick plays one frame)
        if slack is None:
            return audio
        self._slacks.append(slack)
        excess = self.excess()
        if excess is None or audio.shape[-1] < 2 * self.low or -self.low < excess < self.low:
            return audio
        high = audio.shape[-1] // 2
        if excess > 0:
            most = min(high, excess, audio.shape[-1] - needed)
            if most < self.low:
                return audio
            lag = best_lag(audio, self.low, most)
            self.stats.shortened += 1
            self.stats.samples_cut += lag
            self._move(-lag)
            return shorten(audio, lag)
        lag = best_lag(audio, min(high, -excess), high)
        self.stats.lengthened += 1
        self.stats.samples_added += lag
        self._move(lag)
        return lengthen(audio, lag)

    def _move(self, samples: int) -> None:
        """Every later frame plays ``samples`` later: their slack grows by as much."""
        moved = [slack + samples for slack in self._slacks]
        self._slacks.clear()
        self._slacks.extend(moved)
