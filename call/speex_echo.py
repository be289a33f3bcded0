"""Speex DSP's linear echo canceller (the multidelay block frequency-domain filter, MDF) through
ctypes on the system's ``libspeexdsp`` (Debian's ``libspeexdsp1``, from ``scripts/install-system-deps.sh``).

WebRTC's AEC3 has a linear filter of about 50 ms behind the delay it finds; the rest of a room's
100-300 ms reverberation is left to its residual-echo suppressor. MDF's filter covers as long a path
as it is given, delay and tail together, so what it leaves is the near end and 10-20 dB less echo
(``call.double_talk`` uses it while both ends talk). No wheel carries the library: the PyPI bindings
are sdists that compile against it or ctypes wrappers over it, as this is.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

SPEEX_ECHO_SET_SAMPLING_RATE = 24
"""``speex_echo.h``'s request that tells the canceller the rate (it assumes 8 kHz otherwise)."""

INT16_SCALE = 32768.0
"""The library works on 16-bit samples: float ±1.0 is ±32768."""


class SpeexUnavailable(RuntimeError):
    """``libspeexdsp`` does not load here; the message says how to install it."""


def _library() -> ctypes.CDLL:
    try:
        library = ctypes.CDLL(ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1")
    except OSError as error:
        raise SpeexUnavailable(f"Speex DSP is not installed ({error}): double talk is left to WebRTC's suppressor, "
                               "which takes more of the near end out; install it with scripts/install-system-deps.sh "
                               "(Debian: apt-get install libspeexdsp1)") from error
    library.speex_echo_state_init.restype = ctypes.c_void_p
    library.speex_echo_state_init.argtypes = [ctypes.c_int, ctypes.c_int]
    library.speex_echo_state_destroy.argtypes = [ctypes.c_void_p]
    library.speex_echo_ctl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    library.speex_echo_cancellation.argtypes = [ctypes.c_void_p] + [np.ctypeslib.ndpointer(np.int16, flags="C")] * 3
    return library


class SpeexEcho:
    """One channel's linear echo canceller over ``filter_seconds`` of echo path, ``chunk`` samples
    at a time: :meth:`cancel` takes each captured chunk with the chunk played beside it."""

    def __init__(self, rate: int, chunk: int, filter_seconds: float) -> None:
        self._library = _library()
        self._state = self._library.speex_echo_state_init(chunk, round(filter_seconds * rate))
        self._library.speex_echo_ctl(self._state, SPEEX_ECHO_SET_SAMPLING_RATE, ctypes.byref(ctypes.c_int(rate)))
        self._out = np.empty(chunk, dtype=np.int16)

    def cancel(self, captured: np.ndarray, played: np.ndarray) -> np.ndarray:
        """``captured`` less its estimated echo of ``played`` (float32 chunks of ``chunk`` samples)."""
        self._library.speex_echo_cancellation(self._state, _int16(captured), _int16(played), self._out)
        return self._out.astype(np.float32) / np.float32(INT16_SCALE)

    def __del__(self) -> None:
        if getattr(self, "_state", None):
            self._library.speex_echo_state_destroy(self._state)
            self._state = None


def _int16(samples: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.round(samples * INT16_SCALE), -32768, 32767), dtype=np.int16)
