"""The microphone's audio front end: echo cancellation, noise suppression and automatic gain
between capture and the encoder, as every call stack runs one (WebRTC, Zoom, Teams).

It is WebRTC's audio processing module (AEC3 with its residual-echo suppressor, the noise
suppressor, the gain controller and a high-pass filter) through the ``livekit`` wheel, which ships
it prebuilt for Linux, macOS and Windows. The echo canceller's reference is what the client writes
to the speaker (:meth:`FrontEnd.played`); AEC3 finds the delay from that write to the echo in the
capture itself (up to about half a second: the speaker queue, the device buffers and the room).

The module takes 10 ms frames of 16-bit samples; the call hands it blocks of any length at the
model's rate (24 kHz: 320-sample codec frames, or whatever the resampler gives), so both
directions are cut into 10 ms chunks here and the remainder waits for the next block. Capturing
in 10 ms blocks (:attr:`FrontEnd.chunk`) makes every block a whole chunk: nothing waits here.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import numpy as np

CHUNK_SECONDS = 0.01
"""The audio processing module's frame: 10 ms, whatever the rate."""

LEVEL_WINDOW = 0.5
"""Seconds over which the status line's input level and echo reduction are measured."""

FAR_END_FLOOR = 1e-4
"""Mean square of the played signal (−40 dBFS) above which the far end counts as talking."""


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


def load_processing_module(stages: Stages) -> tuple[ModuleType, object]:
    """``livekit.rtc`` and WebRTC's audio processing module with ``stages`` on, or a one-line
    error saying why not."""
    try:
        from livekit import rtc
    except (ImportError, OSError) as error:  # OSError: the wheel's shared library does not load here
        raise FrontEndError(f"Cannot load WebRTC's audio processing (the livekit package): {error}. "
                            "Reinstall with pip install -e ., or run with --no-aec --no-ns --no-agc") from error
    return rtc, rtc.AudioProcessingModule(echo_cancellation=stages.echo, noise_suppression=stages.noise,
                                          high_pass_filter=True, auto_gain_control=stages.gain)


class _Chunker:
    """Cuts a stream of ``(channels, n)`` blocks into ``(chunk, channels)`` int16 chunks; keeps the rest."""

    def __init__(self, chunk: int, channels: int) -> None:
        self.chunk = chunk
        self.pending = np.zeros((0, channels), dtype=np.int16)

    def __call__(self, block: np.ndarray) -> list[np.ndarray]:
        samples = np.clip(np.round(np.asarray(block, dtype=np.float32).T * 32768.0), -32768, 32767).astype(np.int16)
        samples = np.concatenate([self.pending, samples])
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


def db(power: float) -> float:
    return 10 * np.log10(max(power, 1e-12))


class FrontEnd:
    """Capture → cleaned capture, with the played signal as the echo reference.

    Call :meth:`played` with every block written to the speaker and :meth:`process` with every
    block captured, from one thread (the event loop). Only whole chunks come out: the rest of a
    block waits for the next (nothing when capture blocks are whole chunks). The module itself
    delays the sound by 15 ms with every stage on (``benchmarks/echo_room.py`` measures it).
    """

    def __init__(self, rate: int, channels: int, stages: Stages = Stages()) -> None:
        self.rate, self.channels, self.stages = rate, channels, stages
        self.chunk = round(rate * CHUNK_SECONDS)
        self._rtc, self._apm = load_processing_module(stages)
        self._capture = _Chunker(self.chunk, channels)
        self._reference = _Chunker(self.chunk, channels)
        window = max(1, round(LEVEL_WINDOW / CHUNK_SECONDS))
        self._input = _Level(window)  # what the microphone gives
        self._far = _Level(window)  # what the speaker plays
        self._echo_in = _Level(window)  # input and output while the far end talks
        self._echo_out = _Level(window)

    def _frame(self, chunk: np.ndarray) -> object:
        return self._rtc.AudioFrame(bytearray(chunk.tobytes()), self.rate, self.channels, self.chunk)

    def played(self, block: np.ndarray) -> None:
        """The speaker is about to play ``block`` (``(channels, n)`` float32): the echo's reference."""
        for chunk in self._reference(block):
            if self.stages.echo:
                self._apm.process_reverse_stream(self._frame(chunk))
            self._far.add(float(np.mean((chunk / 32768.0) ** 2)))

    def process(self, block: np.ndarray) -> np.ndarray:
        """The cleaned capture of ``block`` (``(channels, n)`` float32): every whole 10 ms chunk
        so far, as ``(channels, m)`` float32 (``m`` may be 0)."""
        cleaned = []
        for chunk in self._capture(block):
            frame = self._frame(chunk)
            if self.stages.echo:
                self._apm.set_stream_delay_ms(0)  # a hint only; AEC3 estimates the delay itself
            self._apm.process_stream(frame)
            out = np.frombuffer(frame.data, dtype=np.int16).reshape(self.chunk, self.channels)
            cleaned.append(out)
            self._measure(chunk, out)
        if not cleaned:
            return np.zeros((self.channels, 0), dtype=np.float32)
        return (np.concatenate(cleaned).T / 32768.0).astype(np.float32)

    def _measure(self, chunk: np.ndarray, out: np.ndarray) -> None:
        power_in, power_out = float(np.mean((chunk / 32768.0) ** 2)), float(np.mean((out / 32768.0) ** 2))
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
        return db(self._input.mean)

    @property
    def echo_reduction_db(self) -> float:
        """How much the front end took out of the capture over the last half second of far-end
        talk, dB: the echo it cancels (and the near end's noise), as the status line shows it."""
        return db(self._echo_in.mean) - db(self._echo_out.mean)

    def status(self) -> str:
        """``mic -31 dBFS, echo cancelled 34 dB`` (the second part while the far end talks)."""
        parts = [f"mic {self.input_db:.0f} dBFS"]
        if self.stages.echo and self.far_end_talking:
            parts.append(f"echo cancelled {self.echo_reduction_db:.0f} dB")
        return ", ".join(parts)
