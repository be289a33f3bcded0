"""The sound card boundary: microphone capture and speaker playback through sounddevice.

sounddevice is imported only here and only when a device is opened, so that file-to-file
calls, the relay and the tests run on machines without PortAudio. The audio callbacks run
on PortAudio's real-time thread: they only copy samples between the device buffers and
preallocated rings, and wake the event loop with ``call_soon_threadsafe``. Everything
else (resampling, the model, the network) happens on the asyncio side. A device that refuses
the model's rate runs at its own, through a band-limited streaming resampler
(:mod:`call.resample`: a short FIR for a whole factor such as 48 kHz, libsoxr otherwise).
"""

from __future__ import annotations

import asyncio
from time import monotonic
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .resample import device_resampler

BLOCK_SECONDS = 0.01
"""Device block size asked of PortAudio (10 ms) for playback, and for capture when the caller
names no frame size."""


def capture_blocksize(device_rate: int, rate: int, frame_samples: int | None) -> int:
    """Device samples per capture block: one codec frame where that is a whole number of device
    samples, so that each frame is complete the moment its block arrives (10 ms blocks make it
    wait 5 ms on average for the block holding its last sample), else 10 ms."""
    if frame_samples is not None and (frame_samples * device_rate) % rate == 0:
        return frame_samples * device_rate // rate
    return int(BLOCK_SECONDS * device_rate)


class AudioDeviceError(RuntimeError):
    """No usable sound device or no PortAudio library; the message says what to do."""


def import_sounddevice() -> ModuleType:
    """``sounddevice``, or a clear error telling the user how to get PortAudio."""
    try:
        import sounddevice
    except OSError as error:  # the Python package is there but libportaudio is not
        raise AudioDeviceError(
            f"Cannot load PortAudio ({error}). Install it (Debian/Ubuntu: sudo apt-get install "
            "libportaudio2; macOS: brew install portaudio), or use --input/--output files."
        ) from error
    except ImportError as error:
        raise AudioDeviceError("sounddevice is not installed: pip install sounddevice") from error
    return sounddevice


def list_devices() -> str:
    """The device table sounddevice prints (indices for --input-device/--output-device)."""
    return str(import_sounddevice().query_devices())


class Ring:
    """Single-producer single-consumer ring of float32 samples, preallocated.

    The audio thread and the event loop each move only their own index, so neither
    waits for the other and the callback allocates nothing.
    """

    def __init__(self, capacity: int, channels: int) -> None:
        self.buffer = np.zeros((capacity, channels), dtype=np.float32)
        self.capacity = capacity
        self.written = 0
        self.read = 0

    @property
    def available(self) -> int:
        return self.written - self.read

    def write(self, samples: np.ndarray) -> int:
        """Write what fits of ``samples`` (``(n, channels)``); returns how many were dropped."""
        n = min(len(samples), self.capacity - self.available)
        start = self.written % self.capacity
        first = min(n, self.capacity - start)
        self.buffer[start : start + first] = samples[:first]
        self.buffer[: n - first] = samples[first:n]
        self.written += n
        return len(samples) - n

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (``(n, channels)``) with what is available, zeros after; returns samples read."""
        n = min(len(out), self.available)
        start = self.read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.buffer[start : start + first]
        out[first:n] = self.buffer[: n - first]
        out[n:] = 0.0
        self.read += n
        return n


def _device_rate(sd: ModuleType, device: Any, kind: str, rate: int, channels: int) -> int:
    """The model rate when the device accepts it, else the device's own default rate."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    try:
        check(device=device, samplerate=rate, channels=channels)
        return rate
    except Exception:
        return int(sd.query_devices(device, kind)["default_samplerate"])


class _Device:
    """A sounddevice stream owned by a capture or playback wrapper."""

    stream: Any

    def start(self) -> None:
        self.stream.start()

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()


class Microphone(_Device):
    """Captures blocks at the model rate; ``await read()`` returns ``(channels, n)`` float32."""

    def __init__(self, rate: int, channels: int, device: Any = None, seconds: float = 2.0,
                 frame_samples: int | None = None) -> None:
        sd = import_sounddevice()
        self.device_rate = _device_rate(sd, device, "input", rate, channels)
        self.resample = device_resampler(self.device_rate, rate, channels) if self.device_rate != rate else None
        self.ring = Ring(int(seconds * self.device_rate), channels)
        self.overflows = 0
        self._loop = asyncio.get_running_loop()
        self._ready = asyncio.Event()
        self.stream = sd.InputStream(samplerate=self.device_rate, channels=channels, dtype="float32",
                                     blocksize=capture_blocksize(self.device_rate, rate, frame_samples), device=device,
                                     callback=self._callback)

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        if status or self.ring.write(indata):
            self.overflows += 1
        self._loop.call_soon_threadsafe(self._ready.set)

    async def read(self) -> np.ndarray:
        """The samples captured since the last read, at the model rate (never an empty block:
        the resampler gives out nothing for the first blocks it takes in)."""
        while True:
            while not self.ring.available:
                self._ready.clear()
                await self._ready.wait()
            block = np.empty((self.ring.available, self.ring.buffer.shape[1]), dtype=np.float32)
            self.ring.read_into(block)
            if self.resample is not None:
                block = self.resample(block)
            if len(block):
                return block.T


class Speaker(_Device):
    """Plays ``(channels, n)`` float32 blocks at the model rate; the callback always fills
    its buffer (zeros when the ring runs dry, counted as underruns)."""

    def __init__(self, rate: int, channels: int, device: Any = None, seconds: float = 1.0,
                 clock: Callable[[], float] = monotonic) -> None:
        sd = import_sounddevice()
        self.device_rate = _device_rate(sd, device, "output", rate, channels)
        self.resample = device_resampler(rate, self.device_rate, channels) if self.device_rate != rate else None
        self.ring = Ring(int(seconds * self.device_rate), channels)
        self.underruns = 0
        self.rate = rate
        self._loop = asyncio.get_running_loop()
        self.consumed = asyncio.Event()
        self.clock = clock
        self.called_at: float | None = None
        """When the last callback took its block, on ``clock``."""
        self.stream = sd.OutputStream(samplerate=self.device_rate, channels=channels, dtype="float32",
                                      blocksize=int(BLOCK_SECONDS * self.device_rate), device=device,
                                      callback=self._callback)

    def _callback(self, outdata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        self.called_at = self.clock()
        if self.ring.read_into(outdata) < frames or status:
            self.underruns += 1
        self._loop.call_soon_threadsafe(self.consumed.set)

    @property
    def queued_seconds(self) -> float:
        """Audio written and not yet played."""
        return self.ring.available / self.device_rate

    @property
    def block_seconds(self) -> float:
        """What one callback takes from the queue (the device's block, which it may choose itself)."""
        return self.stream.blocksize / self.device_rate

    @property
    def next_callback(self) -> float:
        """When the next callback is due (estimated from the last one's time and the block)."""
        return (self.called_at or self.clock()) + self.block_seconds

    def runs_short_at(self) -> float:
        """When the first callback comes that the audio queued cannot fill: a tick's audio is
        needed by then, not before."""
        return self.next_callback + self.ring.available // self.stream.blocksize * self.block_seconds

    @property
    def block_offset(self) -> int:
        """Where in its callback's block the next sample written will play, in samples at the
        model's rate (``call.time_scale.sample_slack``)."""
        return self.ring.available % self.stream.blocksize * self.rate // self.device_rate

    def write(self, block: np.ndarray) -> None:
        samples = block.T.astype(np.float32, copy=False)
        if self.resample is not None:
            samples = self.resample(samples)
        self.ring.write(samples)
