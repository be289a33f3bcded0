"""Speex DSP's noise suppressor (its preprocessor's spectral denoiser), through ``call.speex_dsp``.

Chosen over WebRTC's suppressor by STOI at 6 kbps in the echo room's pink noise (near end only,
what the bundled codec makes of it against what it makes of the noisy input, each at its best
alignment; 6 s after a second of the noise alone, chunk by chunk outside the client, after the
same high-pass filter): at 15 dB SNR Speex at −10 dB +0.014, WebRTC level 0 +0.005, level 1 +0.003;
at 5 dB SNR +0.034 against +0.014, +0.019 (Speex at −15 dB: +0.012 / +0.040). Started cold on the
first word: 15 dB +0.004 against +0.001 (levels 1-3: ±0.000, −0.002, −0.010), 5 dB +0.023 against
+0.015 (+0.023, +0.023, +0.028). WebRTC's followed by Speex's: −0.010 at 15 dB, cold. It adds about
4 ms more delay than WebRTC's (12 ms with the high-pass filter, WebRTC's 8 ms) and 0.1 ms of CPU a
10 ms chunk. RNNoise (``pyrnnoise``'s library, at 48 kHz) scored +0.012 / +0.056 but delays 20 ms
before any resampling and its package pulls PyAV.
"""

from __future__ import annotations

import numpy as np

from .speex_dsp import float32, int16, library, set_int

SPEEX_PREPROCESS_SET_DENOISE, SPEEX_PREPROCESS_SET_NOISE_SUPPRESS = 0, 18
"""``speex_preprocess.h``'s requests: denoising on or off; the most it takes out of the noise, dB (negative)."""

SUPPRESS_DB = -10
"""The most the suppressor takes out of the noise (Speex's default −15): see the module's measurements."""


class SpeexNoise:
    """The noise suppressor on ``(chunk, channels)`` float32 chunks, one state per channel. Raises
    :class:`call.speex_dsp.SpeexUnavailable` where the library is not installed."""

    def __init__(self, rate: int, channels: int, chunk: int, suppress_db: int = SUPPRESS_DB) -> None:
        self._library = library()
        self._states = [self._library.speex_preprocess_state_init(chunk, rate) for _ in range(channels)]
        for state in self._states:
            set_int(state, self._library.speex_preprocess_ctl, SPEEX_PREPROCESS_SET_DENOISE, 1)
            set_int(state, self._library.speex_preprocess_ctl, SPEEX_PREPROCESS_SET_NOISE_SUPPRESS, suppress_db)

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk`` with its noise taken down."""
        samples = int16(chunk.T)
        for state, channel in zip(self._states, samples):
            self._library.speex_preprocess_run(state, channel)
        return np.ascontiguousarray(float32(samples).T)

    def __del__(self) -> None:
        for state in getattr(self, "_states", []):
            self._library.speex_preprocess_state_destroy(state)
        self._states = []
