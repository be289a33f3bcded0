"""Packet-loss concealment in the code domain.

A lost frame is replaced by the codes of the last frame received, fed through the decoder
like any other frame. That keeps the decoder's state (conv history, LSTM) continuous, so
the next real frame joins without a click, and it keeps the output's length exact. A long
run of repeated codes would buzz, so repeated frames fade out and stay silent after
``fade_frames``; the decoder still runs on them to stay in step.
"""

from __future__ import annotations

import numpy as np


class Concealer:
    """Chooses the codes to decode for each frame and the gain to apply to its audio."""

    def __init__(self, fade_frames: int = 6) -> None:
        self.fade_frames = fade_frames
        self._last: np.ndarray | None = None
        self._run = 0
        self.concealed = 0

    def next(self, codes: np.ndarray | None) -> tuple[np.ndarray | None, float]:
        """``(codes to decode, gain)`` for a frame; ``codes`` is ``None`` for a lost frame.

        A loss before any frame arrived decodes a one-codebook frame of code 0 at gain 0:
        silence, with the decoder kept one frame per frame index.
        """
        if codes is not None:
            self._last, self._run = codes, 0
            return codes, 1.0
        self.concealed += 1
        if self._last is None:
            return np.zeros(1, dtype=np.int64), 0.0
        self._run += 1
        gain = max(0.0, 1.0 - (self._run - 1) / self.fade_frames)
        return self._last, gain


class GainSchedule:
    """Applies per-frame gains to decoder output that may lag its input.

    A streaming decoder can hold frames back (the exact start mode holds the first six),
    so the audio of frame ``i`` is located by its sample position, not by when it comes out.
    """

    def __init__(self, samples_per_frame: int) -> None:
        self.samples_per_frame = samples_per_frame
        self._gains: dict[int, float] = {}
        self.position = 0

    def set(self, frame: int, gain: float) -> None:
        if gain != 1.0:
            self._gains[frame] = gain

    def apply(self, audio: np.ndarray) -> np.ndarray:
        """Scale ``audio`` (``(channels, n)``, the next ``n`` output samples) in place."""
        start, n, hop = self.position, audio.shape[-1], self.samples_per_frame
        self.position += n
        for frame in [f for f in self._gains if f * hop < start + n]:
            lo, hi = max(frame * hop, start), min((frame + 1) * hop, start + n)
            audio[..., lo - start : hi - start] *= self._gains[frame]
            if (frame + 1) * hop <= start + n:
                del self._gains[frame]
        return audio
