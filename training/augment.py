"""Random training segments with level, noise, reverberation and band-limiting augmentation.

Everything is drawn from a `numpy.random.Generator` that the caller seeds per step, so a resumed run
sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import fftconvolve, resample_poly

SAMPLE_RATE = 24_000


def colored_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian noise with a random spectral slope between brown (-2) and blue (+1)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(len(spectrum), dtype=np.float64)
    freqs[0] = 1.0
    spectrum *= freqs ** (rng.uniform(-2.0, 1.0) / 2)
    noise = np.fft.irfft(spectrum, n)
    return noise / (noise.std() + 1e-12)


def room_impulse(rng: np.random.Generator) -> np.ndarray:
    """A direct path plus exponentially decaying noise with RT60 between 0.1 and 0.7 s."""
    rt60 = rng.uniform(0.1, 0.7)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail *= rng.uniform(0.05, 0.4) / (np.sqrt((tail**2).sum()) + 1e-12)
    rir = tail
    rir[0] = 1.0
    return rir


def band_limit(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """Resample down and back up, as audio that was recorded at 8, 16 or 22.05 kHz reaches a 24 kHz codec."""
    up, down = [(1, 3), (2, 3), (147, 160)][rng.integers(3)]
    y = resample_poly(resample_poly(x, up, down), down, up)
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def augment(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    if rng.random() < 0.3:
        rir = room_impulse(rng)
        x = fftconvolve(x, rir)[: len(x)]
    if rng.random() < 0.4:
        x = band_limit(rng, x)
    if rng.random() < 0.5:
        snr_db = rng.uniform(10.0, 45.0)
        power = np.mean(x**2) + 1e-10
        x = x + colored_noise(rng, len(x)) * np.sqrt(power / 10 ** (snr_db / 10))
    # Level: speech normalised to -23 dBFS by training.data, moved to -45…-12 dBFS here.
    x = x * 10 ** (rng.uniform(-22.0, 11.0) / 20)
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x * (0.99 / peak)
    return x


class SegmentSampler:
    def __init__(self, audio: np.ndarray, segment: int) -> None:
        self.audio = audio
        self.segment = segment

    def batch(self, rng: np.random.Generator, batch_size: int, augment_prob: float = 0.85) -> np.ndarray:
        out = np.empty((batch_size, 1, self.segment), dtype=np.float32)
        for i in range(batch_size):
            start = int(rng.integers(0, len(self.audio) - self.segment))
            x = self.audio[start : start + self.segment].astype(np.float64) / 32768.0
            if rng.random() < augment_prob:
                x = augment(rng, x)
            else:
                x = x * 10 ** (rng.uniform(-10.0, 6.0) / 20)
            out[i, 0] = x
        return out
