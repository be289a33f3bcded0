"""The microphone's audio front end: echo cancellation, noise suppression and automatic gain
between capture and the encoder, as every call stack runs one (WebRTC, Zoom, Teams).

It is WebRTC's audio processing module (AEC3 with its residual-echo suppressor, the noise
suppressor, AGC2 and a high-pass filter) through the ``pywebrtc-audio`` wheel (Linux, macOS and
Windows, Python 3.10-3.14, under 1 MB), chosen over the ``livekit`` wheel's copy of the same module
because it exposes what the room measurements needed: the noise suppressor's level (``livekit``'s
fixed one lowered STOI at 6 kbps; the mildest level keeps it) and a gain controller apart from the cleaner.

The echo canceller's reference is what the client writes to the speaker (:meth:`FrontEnd.played`),
queued and taken one 10 ms chunk per captured chunk, zeros when nothing was written (what the
speaker then plays), held back by a margin so that the loop's order of writes and captures does not
move it (:class:`EchoReference`): the reference reaches AEC3 about when the speaker plays it, and
AEC3 finds the rest of the delay (the device buffers and the room, up to about half a second) itself.

While both ends talk, a second path beside AEC3 keeps the near end that its suppressor would take
out with the echo: Speex DSP's linear canceller over the whole echo path (``call.double_talk``).
Without an echo canceller (``--no-aec``: headphones) Speex DSP's noise suppressor takes the noise
(``call.speex_noise``: it keeps more of the words at 6 kbps than WebRTC's); beside AEC3 WebRTC's does,
on both paths, as the double-talk blend's thresholds were measured with it. Speex's there, measured
in ``benchmarks/echo_room.py``: after the blend, double talk lost only 0.015 STOI (0.047 with
WebRTC's) but ERLE after a near-end turn in the 150 ms / 300 ms room fell to 28.8 dB (30.6); on
both paths before the blend, double talk lost 0.073 and that ERLE was 29.6 dB. Without
``libspeexdsp`` one log line says so, AEC3 runs alone and WebRTC's suppressor takes the noise.

The gain controller only decides a gain, which is applied here, aimed at the level the codec
codes best (:data:`SPEECH_DBFS`): it hears neither the far end's residual echo (chunks where the
canceller took 10 dB or more out while the far end talks) nor what its voice detector doubts, and
the gain stays at 0 dB until it has heard the near end talk. Fed everything, AGC2 starts at
+15 dB and lifts the residual echo with it (ERLE 21 dB, not 36).

The module takes 10 ms chunks; the call hands it blocks of any length at the model's rate, so the
capture is cut into 10 ms chunks here and the remainder waits for the next block. Capturing in
10 ms blocks (:attr:`FrontEnd.chunk`) makes every block a whole chunk: nothing waits here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from . import speex_dsp
from .double_talk import DoubleTalk
from .dtx import level_db, mean_power
from .sound_card import Ring
from .speex_dsp import SpeexUnavailable
from .speex_noise import SpeexNoise

log = logging.getLogger("call")

CHUNK_SECONDS = 0.01
"""The audio processing module's frame: 10 ms, whatever the rate."""


def chunk_samples(rate: int) -> int:
    """Samples of one chunk of the audio processing module at ``rate``: capture blocks that are whole
    chunks pass through the front end without waiting."""
    return round(rate * CHUNK_SECONDS)


LEVEL_WINDOW = 0.5
"""Seconds over which the status line's input level and echo reduction are measured."""

FAR_END_FLOOR = 1e-4
"""Mean square of the played signal (−40 dBFS) above which the far end counts as talking."""

NOISE_LEVEL = 0
"""WebRTC's noise suppression level (0-3: 6, 12, 18, 21 dB), where Speex DSP is missing. Measured in
the echo room at 6 kbps (STOI of noisy speech at 15 dB SNR, input 0.900): level 0 0.906, 1 0.906,
2 0.903; ``livekit``'s fixed level 0.888. Level 1 takes more noise out of the pauses than 0 for the
same STOI."""

ECHO_ONLY_DB = 10.0
"""While the far end talks, a chunk the canceller took this many dB out of is its echo, not the
near end (in double talk the near end keeps the chunk within a few dB): the gain holds."""

NEAR_SPEECH = 0.9
"""The gain controller's speech probability from which its gain is taken: below it, the chunk is
noise or echo not yet cancelled (the canceller's first half second), and the gain holds."""

AGC2_SPEECH_DBFS = -15.0
"""Where WebRTC's gain controller (AGC2) brings speech: measured in the echo room, it lifts a
−26 dBFS talker by 11 dB."""

SPEECH_DBFS = -26.0
"""Where the front end brings speech instead: the bundled codec at 6 kbps codes quieter speech
better (STOI of noisy speech at −46/−32/−26/−20/−16/−12 dBFS: 0.909/0.905/0.899/0.889/0.864/0.840),
and at AGC2's level the gain cost 0.014 STOI. A quieter talker is still lifted, a louder one
lowered (by at most 11 dB: AGC2 itself only lifts)."""

REFERENCE_SECONDS = 1.0
"""Played audio that may wait for the capture (the speaker's own queue is about 20 ms)."""

REFERENCE_MARGIN_SECONDS = 0.02
"""How far the echo reference is held back behind the speaker's writes, from the start and again
each time it runs dry (see :class:`EchoReference`): more than the loop's write of a frame moves
against the capture's chunks (up to a frame, 13.3 ms, in ``benchmarks/echo_room.py``)."""


class FrontEndError(RuntimeError):
    """The audio processing library cannot be loaded here; the message says what to do."""


@dataclass(frozen=True)
class Stages:
    """Which stages run: each can be switched off (``--no-aec``, ``--no-ns``, ``--no-agc``)."""

    echo: bool = True
    noise: bool = True
    gain: bool = True

    @property
    def any(self) -> bool:
        return self.echo or self.noise or self.gain

    def names(self) -> str:
        names = [name for name, on in (("AEC", self.echo), ("NS", self.noise), ("AGC", self.gain)) if on]
        return "+".join(names) or "off"


def load_processing_library() -> ModuleType:
    """``pywebrtc_audio``, or a one-line error saying what to do."""
    try:
        import pywebrtc_audio
    except (ImportError, OSError) as error:  # OSError: the wheel's shared library does not load here
        raise FrontEndError(f"Cannot load WebRTC's audio processing (the pywebrtc-audio package): {error}. "
                            "Reinstall with pip install -e ., or run with --no-aec --no-ns --no-agc") from error
    return pywebrtc_audio


class _Chunker:
    """Cuts a stream of ``(channels, n)`` blocks into ``(chunk, channels)`` float32 chunks; keeps the rest."""

    def __init__(self, chunk: int, channels: int) -> None:
        self.chunk = chunk
        self.pending = np.zeros((0, channels), dtype=np.float32)

    def __call__(self, block: np.ndarray) -> list[np.ndarray]:
        samples = np.concatenate([self.pending, np.asarray(block, dtype=np.float32).T])
        whole = len(samples) // self.chunk * self.chunk
        self.pending = samples[whole:]
        return [np.ascontiguousarray(samples[start : start + self.chunk]) for start in range(0, whole, self.chunk)]


class _Level:
    """Mean square of a signal over the last :data:`LEVEL_WINDOW` seconds, chunk by chunk."""

    def __init__(self, chunks: int) -> None:
        self.powers = np.zeros(chunks)
        self.count = 0

    def add(self, power: float) -> None:
        self.powers[self.count % len(self.powers)] = power
        self.count += 1

    @property
    def mean(self) -> float:
        return float(self.powers.mean())


class EchoReference:
    """What the speaker played, one capture chunk at a time: the echo canceller's reference.

    It is written as the call writes to the speaker and read as the microphone's chunks are
    cleaned, both on the event loop, whose order varies: a frame's write may come just before or
    just after the capture chunk that plays it. Read up to the last sample written, the reference
    runs dry the first time a write comes late, and the zeros it then gives shift it for the rest
    of the call: a 10 ms slip made AEC3 start over (ERLE after a near-end turn 37 → 24 dB). So when
    it runs dry (nothing played yet, a speaker that ran dry, a write that came late) it is held
    back by :data:`REFERENCE_MARGIN_SECONDS` more, and a write that comes late by less than that
    from then on moves nothing. The echo of a sample comes later still (the speaker's queue, the
    devices, the room), so the reference still leads it, as AEC3 needs."""

    def __init__(self, rate: int, channels: int) -> None:
        self._ring = Ring(round(REFERENCE_SECONDS * rate), channels)
        self.margin = round(REFERENCE_MARGIN_SECONDS * rate)
        self._holding = self.margin  # zeros still to give before the ring is read again

    def write(self, block: np.ndarray) -> None:
        """``block`` (``(n, channels)``) goes to the speaker."""
        self._ring.write(block)

    def read_into(self, far: np.ndarray) -> None:
        """Fill ``far`` (``(n, channels)``) with what played during the capture chunk of its length."""
        held = min(self._holding, len(far))
        far[:held] = 0.0
        self._holding -= held
        if self._ring.read_into(far[held:]) < len(far) - held:  # (the rest is zeros: the speaker played silence)
            self._holding = self.margin


class FrontEnd:
    """Capture → cleaned capture, with the played signal as the echo reference.

    Call :meth:`played` with every block written to the speaker and :meth:`process` with every
    block captured, from one thread (the event loop). Only whole chunks come out: the rest of a
    block waits for the next (nothing when capture blocks are whole chunks). The module itself
    delays the sound by about 17 ms with every stage on (``benchmarks/echo_room.py`` measures it).
    """

    def __init__(self, rate: int, channels: int, stages: Stages = Stages()) -> None:
        self.rate, self.channels, self.stages = rate, channels, stages
        self.chunk = chunk_samples(rate)
        webrtc = load_processing_library()
        speex = self._speex_loads()
        self._denoiser = SpeexNoise(rate, channels, self.chunk) if stages.noise and not stages.echo and speex else None
        webrtc_noise = stages.noise and self._denoiser is None
        self._cleaner = webrtc.AudioProcessor(sample_rate=rate, num_channels=channels, echo_cancellation=stages.echo,
                                              noise_suppression=webrtc_noise, high_pass_filter=True, ns_level=NOISE_LEVEL)
        self._double_talk = DoubleTalk(webrtc, rate, channels, self.chunk, stages.noise, NOISE_LEVEL) if stages.echo and speex else None
        self._gain = webrtc.AudioProcessor(sample_rate=rate, num_channels=channels, auto_gain_control=True) if stages.gain else None
        self.gain_db = 0.0
        self._capture = _Chunker(self.chunk, channels)
        self._reference = EchoReference(rate, channels)
        window = max(1, round(LEVEL_WINDOW / CHUNK_SECONDS))
        self._input = _Level(window)  # what the microphone gives
        self._far = _Level(window)  # what the speaker plays
        self._echo_in = _Level(window)  # input and output while the far end talks
        self._echo_out = _Level(window)

    def played(self, block: np.ndarray) -> None:
        """The speaker is about to play ``block`` (``(channels, n)`` float32): the echo's reference."""
        self._reference.write(np.asarray(block, dtype=np.float32).T)

    def process(self, block: np.ndarray) -> np.ndarray:
        """The cleaned capture of ``block`` (``(channels, n)`` float32): every whole 10 ms chunk
        so far, as ``(channels, m)`` float32 (``m`` may be 0)."""
        cleaned = []
        for chunk in self._capture(block):
            far = np.empty_like(chunk)
            self._reference.read_into(far)
            self._far.add(mean_power(far))
            power_in = mean_power(chunk)
            out = self._cleaner.process(chunk.ravel(), far.ravel() if self.stages.echo else None).reshape(chunk.shape)
            if self._denoiser is not None:
                out = self._denoiser(out)
            if self._double_talk is not None:
                out = self._double_talk(chunk, far, out, level_db(power_in), self.far_end_talking)
            out, power_out = self._gained(out, power_in)
            cleaned.append(out)
            self._measure(power_in, power_out)
        if not cleaned:
            return np.zeros((self.channels, 0), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(cleaned).T)

    def _speex_loads(self) -> bool:
        """Whether Speex DSP is there for the stages that use it; one log line says what is lost if not."""
        if not (self.stages.echo or self.stages.noise):
            return False
        try:
            speex_dsp.library()
        except SpeexUnavailable as error:
            log.warning("%s. Without it double talk is left to AEC3's suppressor, which takes more of the near end "
                        "out, and the noise (with --no-aec) to WebRTC's suppressor, which keeps fewer of the words", error)
            return False
        return True

    def _gained(self, cleaned: np.ndarray, power_in: float) -> tuple[np.ndarray, float]:
        """``cleaned`` at the gain controller's gain, decided on the near end's voice only, and its power."""
        power_cleaned = mean_power(cleaned)
        if self._gain is None:
            return cleaned, power_cleaned
        echo_only = self.far_end_talking and power_cleaned < power_in * 10 ** (-ECHO_ONLY_DB / 10)
        if not echo_only:
            self._gain.process(cleaned.ravel())
            if self._gain.speech_probability >= NEAR_SPEECH:
                self.gain_db = self._gain.gain_db + SPEECH_DBFS - AGC2_SPEECH_DBFS
        gain = 10 ** (self.gain_db / 20)
        return np.clip(cleaned * np.float32(gain), -1.0, 1.0), power_cleaned * gain**2

    def _measure(self, power_in: float, power_out: float) -> None:
        self._input.add(power_in)
        if self.far_end_talking:
            self._echo_in.add(power_in)
            self._echo_out.add(power_out)

    @property
    def far_end_talking(self) -> bool:
        return self._far.mean > FAR_END_FLOOR

    @property
    def input_db(self) -> float:
        """Level of the raw capture over the last half second, dBFS."""
        return level_db(self._input.mean)

    @property
    def echo_reduction_db(self) -> float:
        """How much the front end took out of the capture over the last half second of far-end
        talk, dB: the echo it cancels (and the near end's noise), as the status line shows it."""
        return level_db(self._echo_in.mean) - level_db(self._echo_out.mean)

    def status(self) -> str:
        """``mic -31 dBFS, echo cancelled 34 dB`` (the second part while the far end talks, or
        once the far end is known to play into headphones)."""
        parts = [f"mic {self.input_db:.0f} dBFS"]
        if self._double_talk is not None and self._double_talk.headset.on:
            parts.append("no echo heard (headphones?)")
        elif self.stages.echo and self.far_end_talking:
            parts.append(f"echo cancelled {self.echo_reduction_db:.0f} dB")
        return ", ".join(parts)
