"""Speex DSP's linear echo canceller (the multidelay block frequency-domain filter, MDF), through
``call.speex_dsp``.

WebRTC's AEC3 has a linear filter of about 50 ms behind the delay it finds; the rest of a room's
100-300 ms reverberation is left to its residual-echo suppressor. MDF's filter covers as long a path
as it is given, delay and tail together, so what it leaves is the near end and 10-20 dB less echo
(``call.double_talk`` uses it while both ends talk).
"""

from __future__ import annotations

import numpy as np

from .speex_dsp import float32, int16, library, set_int

SPEEX_ECHO_SET_SAMPLING_RATE = 24
"""``speex_echo.h``'s request that tells the canceller the rate (it assumes 8 kHz otherwise)."""


class SpeexEcho:
    """One channel's linear echo canceller over ``filter_seconds`` of echo path, ``chunk`` samples
    at a time: :meth:`cancel` takes each captured chunk with the chunk played beside it. Raises
    :class:`call.speex_dsp.SpeexUnavailable` where the library is not installed."""

    def __init__(self, rate: int, chunk: int, filter_seconds: float) -> None:
        self._library = library()
        self._state = self._library.speex_echo_state_init(chunk, round(filter_seconds * rate))
        set_int(self._state, self._library.speex_echo_ctl, SPEEX_ECHO_SET_SAMPLING_RATE, rate)
        self._out = np.empty(chunk, dtype=np.int16)

    def cancel(self, captured: np.ndarray, played: np.ndarray) -> np.ndarray:
        """``captured`` less its estimated echo of ``played`` (float32 chunks of ``chunk`` samples)."""
        self._library.speex_echo_cancellation(self._state, int16(captured), int16(played), self._out)
        return float32(self._out)

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._library.speex_echo_state_destroy(self._state)
            self._state = None
