"""Streaming sample-rate conversion (libsoxr): sound cards that refuse the model's rate, and
recordings written at another rate.

A band-limited resampler: a 48 kHz microphone's content above 12 kHz would otherwise fold back
into the 24 kHz model's band (a linear interpolator has no anti-alias filter at all).

libsoxr works in blocks, so a stream holds some output back until enough input has come: the
latency a device path pays for resampling. Measured in 10–13 ms blocks (48 ↔ 24 kHz), output held
on average / at most: ``LQ`` 11 / 20 ms, ``MQ`` and ``HQ`` 21 / 38 ms. ``LQ`` passes up to about
9 kHz (−5 dB at 10 kHz, flat to 8 kHz) and removes 15 kHz by 146 dB; ``HQ`` is flat to 11 kHz.
Devices use ``LQ`` (latency counts, the speech band fits), files ``HQ`` (nothing waits for them).
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
