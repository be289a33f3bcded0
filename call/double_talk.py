"""Double talk: keep the near end that AEC3's residual-echo suppressor takes out with the echo.

With the room's reverberation longer than AEC3's ~50 ms linear filter, its suppressor sees a strong
residual echo and, while both ends talk, takes most of the near end with it (near-end STOI at
6 kbps 0.76 against 0.91 with no echo, in ``benchmarks/echo_room.py``'s room). Speex DSP's linear
canceller (``call.speex_echo``), whose filter covers the whole echo path, leaves the near end whole
and the echo 10-20 dB down, where the near end masks it. So a second path runs beside AEC3:
Speex's linear canceller, then the same high-pass filter (and WebRTC's noise suppressor where it
is the main path's) as the main path (so both have the same delay and noise), and each 10 ms chunk is a blend of the two, weighted to
the linear path by how much the chunk looks like the near end:

* AEC3 took little out of it (10 dB: the near end is there; 50 dB or more: echo alone),
* Speex took little out of it (4 dB: the near end dominates; 10 dB or more: echo it cancels),
* the far end has talked long enough for Speex's filter to converge (1.5-2.5 s of far-end talk
  after the first half second, which finds the echo path's bulk delay; before that it cancels
  2-6 dB and the echo alone would pass as near end), counted again from zero when Speex's filter
  shows it no longer matches the echo path (the delay is kept: finding it again restarted Speex
  each time, and with the far end in headphones, where there is no echo to find, near-end STOI
  fell 0.689 → 0.656; kept, 0.685).

Measured in the room (100 ms delay, 200 ms decay): STOI loss 0.147 → 0.047 with ERLE unchanged
(35.6 dB); the weights are ramped over each chunk so that a change makes no click. A chunk both
cancellers judge echo alone is then taken 10 dB further down, to no lower than the noise floor
(:data:`RESIDUAL_AEC3_DB`): ERLE after a near-end turn in the long room 29.2 → 30.6 dB.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from .dtx import level_db, mean_power
from .speex_echo import SpeexEcho

LINEAR_FILTER_SECONDS = 0.25
"""Echo path covered by Speex's filter, behind :class:`_BulkDelay`'s delay. Measured (before the delay): 0.25 s kept the near end better
than 0.5 s (STOI loss 0.049 against 0.058) and cancelled more in the first seconds of far-end talk."""

SUPPRESSED_NEAR_DB, SUPPRESSED_ECHO_DB = 10.0, 50.0
"""dB AEC3 took out of a chunk: at most the first, the chunk is the near end's; the second or more, echo."""

LINEAR_NEAR_DB, LINEAR_ECHO_DB = 4.0, 10.0
"""dB Speex took out of a chunk: at most the first, the near end's; the second or more, echo."""

CONVERGING_SECONDS = (1.5, 2.5)
"""Seconds of far-end talk, from when the delay is found, over which the linear path is let in:
Speex's filter converges in them."""

ECHO_ONLY_TOOK_DB, DIVERGED_DB = 20.0, -3.0
"""A chunk AEC3 took this much or more out of (the far end's echo alone) that Speex made 3 dB louder
instead: Speex's filter is the wrong echo path (the laptop moved, the room changed), and the linear
path waits again for :data:`CONVERGING_SECONDS` of far-end talk. Without it, ERLE stayed at 5-10 dB
for 4 s after an echo path change; with it, 31.7 dB after the first second (AEC3 alone: 35.7).
At -1 or -2 dB, double talk itself set it off (STOI loss 0.133)."""

DELAY_FINDING_SECONDS, MOST_DELAY_SECONDS, DELAY_MARGIN_SECONDS = 0.5, 0.5, 0.02
"""Speex's filter covers the echo path from where its reference starts, so a bulk delay (the sound
card's buffers, the distance to the microphone) takes the filter's length away from the room's tail:
in a room with 150 ms delay only 100 ms of the 300 ms tail. The first half second of far-end talk
finds the delay (the phase-transform cross-correlation peak of the played and captured sound, up to
half a second), and Speex's reference is then delayed by it less 20 ms (the first echo stays inside
the filter should the delay shrink a little). Measured (room delay found, its 12 ms behind the
reference included, within a sample in all three rooms), double-talk STOI loss before → after: 150 ms
delay, 300 ms decay 0.052 → 0.045; 100/200 ms 0.049 → 0.047; 60/100 ms 0.048 → 0.046; ERLE after
1 s unchanged or up (30.2 → 30.9 dB in the long room). Without the delay (Speex restarted at the
same time) the long room lost 0.062."""

RESIDUAL_AEC3_DB, RESIDUAL_LINEAR_DB, RESIDUAL_ATTENUATION_DB = 10.0, 13.0, 10.0
"""A chunk both cancellers judge the far end's echo alone (AEC3 took 10 dB or more out of it, Speex
13 dB or more, with the delay found) is taken 10 dB further down, never below the noise floor
(:class:`_NoiseFloor`). AEC3's residual in the long room (150 ms delay, 300 ms decay) is mostly in
the few chunks it took 10-20 dB out of (80% of the residual's energy after a near-end turn): ERLE
after a turn 29.2 → 30.6 dB, from a cold start 30.9 → 33.1, double-talk STOI loss 0.045 → 0.046
(100/200 ms room 35.6 → 37.3 dB after a turn, 60/100 ms 35.4 → 37.7). Speex at 10 dB or AEC3 at
30 dB: 31.5 dB but loss 0.052, or 29.5 dB; 15 dB down instead of 10 gained 0.1 dB."""

FLOOR_RISE_DB_PER_SECOND = 3.0
"""How fast the noise floor estimate follows the noise up (it follows it down at once)."""


class _NoiseFloor:
    """The noise floor under the echo: the running minimum of the linear path's chunk power (Speex
    leaves the noise as it is, and the noise suppressor after it is the main path's), rising by
    :data:`FLOOR_RISE_DB_PER_SECOND`. The residual-echo attenuation stops at it, so that the noise
    the listener hears does not dip while the far end talks: at 15 dB SNR in the long room, the
    sent noise during far-end talk stayed at -54.4 dB (chunk spread 4.4 dB) as with AEC3 alone,
    where the running minimum of the blended output let it fall to -57.0 dB (spread 5.9 dB)."""

    def __init__(self, seconds_per_chunk: float) -> None:
        self._rise = 10 ** (FLOOR_RISE_DB_PER_SECOND * seconds_per_chunk / 10)
        self.power = float("inf")

    def update(self, power: float) -> float:
        self.power = min(self.power * self._rise, power) if power > 0.0 else self.power
        return self.power


def _across(start: float, end: float, length: int) -> np.ndarray:
    """A weight going from ``start`` to ``end`` over a chunk's ``length`` samples: a change makes no click."""
    return np.linspace(start, end, length, dtype=np.float32)[:, None]


def _ramp(value: float, near: float, far: float) -> float:
    """1 at ``near`` or closer to it, 0 at ``far`` or beyond, linear between."""
    return float(np.clip((far - value) / (far - near), 0.0, 1.0))


class DoubleTalk:
    """The linear path beside AEC3 and the blend of the two, chunk by chunk (``(chunk, channels)``
    float32). Raises :class:`call.speex_dsp.SpeexUnavailable` where Speex DSP is not installed."""

    def __init__(self, webrtc: ModuleType, rate: int, channels: int, chunk: int, noise_suppression: bool, ns_level: int) -> None:
        self._rate, self._chunk = rate, chunk
        self._cancellers = self._new_cancellers(channels)
        self._bulk = _BulkDelay(rate, channels)
        self._delay_found = False
        self._cleaner = webrtc.AudioProcessor(sample_rate=rate, num_channels=channels, noise_suppression=noise_suppression,
                                              high_pass_filter=True, ns_level=ns_level)
        self._far_talked = 0.0
        self._weight = 0.0
        self._gain = 1.0
        self._floor = _NoiseFloor(seconds_per_chunk=chunk / rate)

    def __call__(self, chunk: np.ndarray, far: np.ndarray, suppressed: np.ndarray, input_db: float,
                 far_talking: bool) -> np.ndarray:
        """``suppressed`` (AEC3's output for ``chunk``) blended toward the linear path's where the
        near end talks; ``input_db`` is ``chunk``'s level."""
        reference = self._bulk.delayed(chunk, far)
        linear = np.stack([canceller.cancel(chunk[:, c], reference[:, c]) for c, canceller in enumerate(self._cancellers)], axis=1)
        linear = self._cleaner.process(linear.ravel()).reshape(chunk.shape)
        weight, echo_alone = 0.0, False
        if far_talking:
            self._far_talked += self._chunk / self._rate
            if not self._delay_found and self._far_talked >= DELAY_FINDING_SECONDS:
                self._delay_found = self._bulk.find()
                if self._delay_found:
                    self._cancellers = self._new_cancellers(len(self._cancellers))
                self._far_talked = 0.0  # (not found: looked for again after the next half second)
            suppressed_took = input_db - level_db(mean_power(suppressed))
            linear_took = input_db - level_db(mean_power(linear))
            if suppressed_took >= ECHO_ONLY_TOOK_DB and linear_took < DIVERGED_DB:
                self._far_talked = 0.0
            weight = (_ramp(suppressed_took, SUPPRESSED_NEAR_DB, SUPPRESSED_ECHO_DB)
                      * _ramp(linear_took, LINEAR_NEAR_DB, LINEAR_ECHO_DB)
                      * (1.0 - _ramp(self._far_talked, *CONVERGING_SECONDS)))
            echo_alone = self._delay_found and suppressed_took >= RESIDUAL_AEC3_DB and linear_took >= RESIDUAL_LINEAR_DB
        blended = suppressed
        if weight != 0.0 or self._weight != 0.0:
            blended = suppressed + _across(self._weight, weight, len(chunk)) * (linear - suppressed)
        self._weight = weight
        return self._attenuated(blended, mean_power(linear), echo_alone)

    def _attenuated(self, blended: np.ndarray, linear_power: float, echo_alone: bool) -> np.ndarray:
        """``blended`` :data:`RESIDUAL_ATTENUATION_DB` down where it is ``echo_alone``, not below the noise floor."""
        floor, power = self._floor.update(linear_power), mean_power(blended)
        gain = 1.0
        if echo_alone and power > 0.0:
            gain = min(1.0, max(10 ** (-RESIDUAL_ATTENUATION_DB / 20), float(np.sqrt(floor / power))))
        if gain == self._gain == 1.0:
            return blended
        out = blended * _across(self._gain, gain, len(blended))
        self._gain = gain
        return out

    def _new_cancellers(self, channels: int) -> list[SpeexEcho]:
        return [SpeexEcho(self._rate, self._chunk, LINEAR_FILTER_SECONDS) for _ in range(channels)]


class _BulkDelay:
    """The played sound delayed by the echo path's bulk delay less a margin, once :meth:`find` has
    found it in the last :data:`DELAY_FINDING_SECONDS` of played and captured sound."""

    def __init__(self, rate: int, channels: int) -> None:
        self._most, self._margin = round(MOST_DELAY_SECONDS * rate), round(DELAY_MARGIN_SECONDS * rate)
        finding = round(DELAY_FINDING_SECONDS * rate)
        self._played = np.zeros((self._most + finding, channels), dtype=np.float32)
        self._captured = np.zeros((finding, channels), dtype=np.float32)
        self.samples = 0

    def delayed(self, captured: np.ndarray, played: np.ndarray) -> np.ndarray:
        """``played`` as it was :attr:`samples` ago (both chunks go into the history)."""
        self._played = np.concatenate([self._played[len(played):], played])
        self._captured = np.concatenate([self._captured[len(captured):], captured])
        end = len(self._played) - self.samples
        return self._played[end - len(played) : end]

    def find(self) -> bool:
        """Whether a delay was found (not where nothing was played or captured, e.g. a muted
        microphone: then it is looked for again later). The phase transform weighs every frequency alike, so the peak is the first echo's
        arrival rather than the speech's low-frequency bulk smeared over the tail."""
        played, captured = self._played.mean(axis=1), self._captured.mean(axis=1)
        size = len(played) + len(captured)
        cross = np.fft.rfft(played, size) * np.conj(np.fft.rfft(captured, size))
        if not cross.any():
            return False
        weights = np.abs(cross) + 1e-3 * np.abs(cross).max()  # bands where neither has sound stay out
        correlation = np.fft.irfft(cross / weights, size)[: self._most + 1]
        lag = self._most - int(np.argmax(correlation))  # the captured window starts ``most`` into the played one
        self.samples = max(0, lag - self._margin)
        return True
