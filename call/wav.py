"""WAV files at the model's rate: what a file sender reads and a file receiver writes."""

from __future__ import annotations

import numpy as np
import soundfile


def read_wav(path: str, rate: int, channels: int) -> np.ndarray:
    """``(channels, n)`` float32 at ``rate``; resampled (polyphase) and remixed if needed.

    Raises ``ValueError`` naming the file when it is not readable audio.
    """
    try:
        data, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        raise ValueError(f"Cannot read audio file {path}: {error}") from error
    data = data.T
    if data.shape[0] != channels:
        data = np.repeat(data.mean(axis=0, keepdims=True), channels, axis=0)
    if file_rate != rate:
        from scipy.signal import resample_poly

        data = resample_poly(data, rate, file_rate, axis=-1).astype(np.float32)
    return np.ascontiguousarray(data)
