"""Comfort noise: what a receiver plays while its sender is silent (``call.dtx``).

Cutting to digital silence in every pause makes a call sound dead, and the line seems dropped;
playing noise of the background's level and coarse spectrum hides the switch (RFC 3389). The
noise is white noise through a short FIR filter whose response follows the ``COMFORT_NOISE``
message's bands; the filter keeps its history across frames, so frames join without a seam.
"""

from __future__ import annotations

import numpy as np

from . import wire


def noise_filter(band_db: tuple[float, ...], taps: int) -> np.ndarray:
    """A linear-phase FIR whose power response is each band's power (see
    :func:`call.dtx.band_powers`) across its band, scaled so that unit white noise through it has
    the bands' mean power: the level the sender measured."""
    powers = 10 ** (np.asarray(band_db) / 10)
    bins = taps + 1  # rfft bins of a 2 * taps-point response
    per_bin = np.concatenate([[powers[0]], np.concatenate(
        [np.full(len(part), p) for part, p in zip(np.array_split(np.arange(bins - 1), len(powers)), powers)])])
    response = np.fft.fftshift(np.fft.irfft(np.sqrt(per_bin)))[1:] * np.hanning(2 * taps - 1)
    energy = float(np.sum(response**2))
    return response * np.sqrt(powers.mean() / energy) if energy > 0 else response


class ComfortNoiseSource:
    """Frames of comfort noise for one stream: ``hop`` samples at a time, ``channels`` alike."""

    def __init__(self, hop: int, channels: int, taps: int = 32, seed: int | None = None) -> None:
        self.hop, self.channels, self.taps = hop, channels, taps
        self._rng = np.random.default_rng(seed)
        self._history = np.zeros(2 * taps - 2)
        self._bands: tuple[float, ...] | None = None
        self._filter = np.zeros(2 * taps - 1)

    def frame(self, noise: wire.ComfortNoise) -> np.ndarray:
        """The next frame, ``(channels, hop)`` float32, at the level and spectrum of ``noise``."""
        if noise.band_db != self._bands:
            self._bands, self._filter = noise.band_db, noise_filter(noise.band_db, self.taps)
        white = np.concatenate([self._history, self._rng.standard_normal(self.hop)])
        self._history = white[-len(self._history):]
        audio = np.convolve(white, self._filter, mode="valid").astype(np.float32)
        return np.repeat(audio[None], self.channels, axis=0)
