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

With the far end in headphones there is no echo to cancel, yet AEC3's suppressor still takes the near
end out while the far end talks (near-end STOI 0.685 against 0.906 with the far end silent): once
two seconds of far-end talk have shown no echo at all (:class:`Headset`), the linear path, which
then cancels nothing, is the output (0.898 in all three rooms).

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
At -1 or -2 dB, double talk itself set it off (STOI loss 0.133).

Only a chunk no louder than the far end's own sound (the reference) counts: an echo path's return
is below it, and one louder has the near end in it. Double talk still set it off now and then: in
the long room (150 ms / 300 ms) one chunk 0.9 s into double talk, 3.5 dB louder than the reference,
shut the linear path out for two seconds (near-end STOI 0.781 instead of 0.854 at 5 ms less
delay); the chunks after a change of path were 10-24 dB below it. Requiring two or three such
chunks instead cost the path change 6 dB of ERLE (its first one comes alone, 0.7 s before the next).
Left: in the 60 ms / 100 ms room one double-talk chunk 2 dB below the reference still does (0.787)."""

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

ECHO_HEARD, ECHO_CERTAIN, HEADSET_WINDOWS = 6.0, 9.0, 4
"""Whether the microphone hears the speaker at all, from the phase-transform correlation of half a
second of far-end talk with what was captured: its peak over the correlation's RMS. Measured in
the echo room (``benchmarks/echo_room.py``, three rooms, echo at -6 dB): 9-19 while the far end
talks alone, 4.4-14 in double talk; echo at -20 dB 7.3-9.7 alone; with the far end in headphones
(no echo at all) 3.7-5.4 alone, 4.1-7.3 in double talk. At :data:`ECHO_HEARD` or more a window
hears the echo (its delay is taken from it); :data:`HEADSET_WINDOWS` windows in a row below it,
with never one at :data:`ECHO_CERTAIN` or more, mean there is no echo path: headphones."""

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


class Headset:
    """Whether the far end plays into headphones: the microphone has not heard the speaker in
    :data:`HEADSET_WINDOWS` half seconds of far-end talk in a row, and never clearly.

    AEC3's suppressor does not know: with no echo to cancel it still takes the near end out while
    the far end talks (near-end STOI in double talk 0.685 at 6 kbps, against 0.906 with the far end
    silent). The linear path, which cancels nothing there, keeps it. Once the echo was clearly
    heard (a loudspeaker), it is not taken for headphones again in the call: in double talk a
    loudspeaker's echo can look as faint as none for a second."""

    def __init__(self) -> None:
        self.quiet = 0
        """Half seconds of far-end talk in a row whose echo was not heard."""
        self.echo_certain = False

    def listened(self, prominence: float) -> None:
        """One half second of far-end talk, with the echo's correlation peak (see :data:`ECHO_HEARD`)."""
        self.echo_certain = self.echo_certain or prominence >= ECHO_CERTAIN
        self.quiet = self.quiet + 1 if prominence < ECHO_HEARD else 0

    @property
    def on(self) -> bool:
        return not self.echo_certain and self.quiet >= HEADSET_WINDOWS


class DoubleTalk:
    """The linear path beside AEC3 and the blend of the two, chunk by chunk (``(chunk, channels)``
    float32). Raises :class:`call.speex_dsp.SpeexUnavailable` where Speex DSP is not installed."""

    def __init__(self, webrtc: ModuleType, rate: int, channels: int, chunk: int, noise_suppression: bool, ns_level: int) -> None:
        self._rate, self._chunk = rate, chunk
        self._cancellers = self._new_cancellers(channels)
        self._bulk = _BulkDelay(rate, channels)
        self._delay_found = False
        self.headset = Headset()
        self._listened = 0.0  # far-end talk since the echo path was last listened for, s
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
            self._listened += self._chunk / self._rate
            if self._listened >= DELAY_FINDING_SECONDS:
                self._listen()
        if self.headset.on:
            weight = 1.0  # no echo to cancel: the linear path, which cancels nothing, keeps the near end whole
        elif far_talking:
            suppressed_took = input_db - level_db(mean_power(suppressed))
            linear_took = input_db - level_db(mean_power(linear))
            if suppressed_took >= ECHO_ONLY_TOOK_DB and linear_took < DIVERGED_DB and input_db <= level_db(mean_power(far)):
                self._far_talked = 0.0
            weight = (_ramp(suppressed_took, SUPPRESSED_NEAR_DB, SUPPRESSED_ECHO_DB)
                      * _ramp(linear_took, LINEAR_NEAR_DB, LINEAR_ECHO_DB)
                      * (1.0 - _ramp(self._far_talked, *CONVERGING_SECONDS)))
            echo_alone = self._delay_found and suppressed_took >= RESIDUAL_AEC3_DB and linear_took >= RESIDUAL_LINEAR_DB
        return self._attenuated(self._blend(suppressed, linear, weight), mean_power(linear), echo_alone)

    def _blend(self, suppressed: np.ndarray, linear: np.ndarray, weight: float) -> np.ndarray:
        blended = suppressed
        if weight != 0.0 or self._weight != 0.0:
            blended = suppressed + _across(self._weight, weight, len(suppressed)) * (linear - suppressed)
        self._weight = weight
        return blended

    def _listen(self) -> None:
        """Half a second of far-end talk: is its echo heard? The first time it is, its delay is
        taken and the linear path starts over behind it (nothing played or captured: asked again
        after the next half second)."""
        self._listened = 0.0
        if self._delay_found and self.headset.echo_certain:
            return  # a loudspeaker, whose delay is known: nothing more to learn (each look is an FFT of 1.5 s)
        if not self._delay_found:
            self._far_talked = 0.0  # (the linear path's convergence counts from the delay found)
        prominence = self._bulk.find()
        if prominence is None:
            return
        self.headset.listened(prominence)
        if not self._delay_found and prominence >= ECHO_HEARD:
            self._bulk.take()
            self._delay_found = True
            self._cancellers = self._new_cancellers(len(self._cancellers))

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
        self._lag = 0

    def delayed(self, captured: np.ndarray, played: np.ndarray) -> np.ndarray:
        """``played`` as it was :attr:`samples` ago (both chunks go into the history)."""
        self._played = np.concatenate([self._played[len(played):], played])
        self._captured = np.concatenate([self._captured[len(captured):], captured])
        end = len(self._played) - self.samples
        return self._played[end - len(played) : end]

    def find(self) -> float | None:
        """How clearly the echo shows in the last :data:`DELAY_FINDING_SECONDS` of played and
        captured sound (the correlation peak over its RMS, see :data:`ECHO_HEARD`), its delay kept
        for :meth:`take`; ``None`` where nothing was played or captured (a muted microphone). The
        phase transform weighs every frequency alike, so the peak is the first echo's arrival rather
        than the speech's low-frequency bulk smeared over the tail."""
        played, captured = self._played.mean(axis=1), self._captured.mean(axis=1)
        size = len(played) + len(captured)
        cross = np.fft.rfft(played, size) * np.conj(np.fft.rfft(captured, size))
        if not cross.any():
            return None
        weights = np.abs(cross) + 1e-3 * np.abs(cross).max()  # bands where neither has sound stay out
        correlation = np.fft.irfft(cross / weights, size)[: self._most + 1]
        peak = int(np.argmax(correlation))
        self._lag = self._most - peak  # the captured window starts ``most`` into the played one
        return float(correlation[peak] / max(np.sqrt(np.mean(correlation**2)), 1e-30))

    def take(self) -> None:
        """Delay the played sound by the echo delay :meth:`find` found, less the margin."""
        self.samples = max(0, self._lag - self._margin)
