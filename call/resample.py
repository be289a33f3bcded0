"""Streaming sample-rate conversion (libsoxr): sound cards that refuse the model's rate, and
recordings written at another rate.

A band-limited resampler: a 48 kHz microphone's content above 12 kHz would otherwise fold back
into the 24 kHz model's band (a linear interpolator has no anti-alias filter at all).

libsoxr works in blocks, so a stream holds some output back until enough input has come: the
latency a device path pays for resampling. Measured in 10–13 ms blocks (48 ↔ 24 kHz), output held
on average / at most: ``LQ`` 11 / 20 ms, ``MQ`` and ``HQ`` 21 / 38 ms. ``LQ`` passes up to about
9 kHz (−5 dB at 10 kHz, flat to 8 kHz) and removes 15 kHz by 146 dB; ``HQ`` is flat to 11 kHz.
Files use ``HQ`` (nothing waits for them). Devices whose rate is a whole multiple of the model's
(48 kHz for the 24 kHz model) use :class:`WholeFactorResampler`, a short FIR that delays by 0.7 ms; other
device rates (44.1 kHz) use libsoxr's ``LQ`` (latency counts, the speech band fits).
"""

from __future__ import annotations

import numpy as np

DEVICE_QUALITY = "LQ"
FILE_QUALITY = "HQ"


class Resampler:
    """Resamples ``(n, channels)`` float32 blocks of one continuous signal, block after block.

    The output follows the rate ratio over the stream: what a block does not yet give out, a
    later block (or :meth:`flush`) does; nothing is lost or repeated, whatever the block sizes.
    """

    def __init__(self, rate_in: int, rate_out: int, channels: int, quality: str = DEVICE_QUALITY) -> None:
        import soxr

        self.rate_in, self.rate_out, self.channels = rate_in, rate_out, channels
        self._stream = soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality=quality)

    def __call__(self, block: np.ndarray) -> np.ndarray:
        return self._stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32))

    def flush(self) -> np.ndarray:
        """The output still held back: the end of the signal (call once, last)."""
        return self._stream.resample_chunk(np.zeros((0, self.channels), np.float32), last=True)


class WholeFactorResampler:
    """Resamples by a whole factor (48 ↔ 24 kHz, 96 → 24 kHz) with a linear-phase FIR at the higher
    rate (``lfilter`` with its state kept between blocks), the same interface as :class:`Resampler`.

    It holds nothing back: every block comes out whole at once, its content ``lag`` output samples
    late (the filter's half length, 0.7 ms at 48 kHz). Dropping those first samples instead would
    keep sample indices aligned with the content but hold back the end of every block, so a frame
    that a block completes would wait for the next block (a whole block of latency, measured 13 ms a
    way at 320-sample blocks); libsoxr's block processing holds 11 ms on average and 20 at most in
    ``LQ``. A device at 48 kHz costs the call about 1.4 ms (both ways). The Kaiser-windowed filter
    (2 · ``HALF`` + 1 taps at the higher rate, β 6) passes the speech band flat to about 9 kHz at 24 kHz and attenuates what
    would fold (above 12.2 kHz) by 60 dB or more.
    """

    HALF = 32
    """Half the filter's length at the higher rate, in samples (rounded up to a multiple of the factor)."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        from scipy.signal import firwin

        high, low = max(rate_in, rate_out), min(rate_in, rate_out)
        if high % low:
            raise ValueError(f"{rate_in} -> {rate_out} Hz is not a whole factor")
        factor = high // low
        self.up, self.down = (factor, 1) if rate_out > rate_in else (1, factor)
        half = -(-self.HALF // factor) * factor
        self.taps = (firwin(2 * half + 1, 0.45 * low, window=("kaiser", 6.0), fs=high) * self.up).astype(np.float32)
        self._state = np.zeros((2 * half, channels), np.float32)
        self._phase = 0  # high-rate samples to pass over before the next one kept (down)
        self.lag = half // self.down
        """The filter's delay in output samples: the content comes out this late (nothing is held back)."""
        self.channels = channels

    def __call__(self, block: np.ndarray) -> np.ndarray:
        from scipy.signal import lfilter

        x = np.asarray(block, np.float32)
        if self.up > 1:
            stuffed = np.zeros((len(x) * self.up, self.channels), np.float32)
            stuffed[:: self.up] = x
            x = stuffed
        y, self._state = lfilter(self.taps, 1.0, x, axis=0, zi=self._state)
        if self.down > 1:
            y = y[self._phase :: self.down]
            self._phase = (self._phase - len(x)) % self.down
        return y.astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        """The filter's last ``lag`` samples: the end of the signal, delayed (call once, last)."""
        return self(np.zeros((self.lag * self.down // self.up, self.channels), np.float32))


def device_resampler(rate_in: int, rate_out: int, channels: int) -> Resampler | WholeFactorResampler:
    """The resampler of a sound card that does not run at the model's rate: the short FIR for a
    whole factor, libsoxr's ``LQ`` otherwise."""
    if max(rate_in, rate_out) % min(rate_in, rate_out) == 0:
        return WholeFactorResampler(rate_in, rate_out, channels)
    return Resampler(rate_in, rate_out, channels)
