"""Speex DSP (``libspeexdsp``) through ctypes: the system's library (Debian's ``libspeexdsp1``, from
``scripts/install-system-deps.sh``), loaded once for its linear echo canceller (``call.speex_echo``)
and its noise suppressor (``call.speex_noise``). No wheel carries the library: the PyPI bindings are
sdists that compile against it or ctypes wrappers over it, as this is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

import numpy as np

INT16_SCALE = 32768.0
"""The library works on 16-bit samples: float ±1.0 is ±32768."""


class SpeexUnavailable(RuntimeError):
    """``libspeexdsp`` does not load here; the message says how to install it."""


@functools.cache
def library() -> ctypes.CDLL:
    """The loaded library with the signatures of the functions used here."""
    try:
        speex = ctypes.CDLL(ctypes.util.find_library("speexdsp") or "libspeexdsp.so.1")
    except OSError as error:
        raise SpeexUnavailable(f"Speex DSP is not installed ({error}); install it with scripts/install-system-deps.sh "
                               "(Debian: apt-get install libspeexdsp1)") from error
    samples = np.ctypeslib.ndpointer(np.int16, flags="C")
    for kind, arguments in (("echo", [ctypes.c_int, ctypes.c_int]), ("preprocess", [ctypes.c_int, ctypes.c_int])):
        getattr(speex, f"speex_{kind}_state_init").restype = ctypes.c_void_p
        getattr(speex, f"speex_{kind}_state_init").argtypes = arguments
        getattr(speex, f"speex_{kind}_state_destroy").argtypes = [ctypes.c_void_p]
        getattr(speex, f"speex_{kind}_ctl").argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    speex.speex_echo_cancellation.argtypes = [ctypes.c_void_p, samples, samples, samples]
    speex.speex_preprocess_run.argtypes = [ctypes.c_void_p, samples]
    return speex


def set_int(state: int, control: Callable[..., int], request: int, value: int) -> None:
    """One of the library's ``*_ctl`` requests that take an ``int``."""
    control(state, request, ctypes.byref(ctypes.c_int(value)))


def int16(samples: np.ndarray) -> np.ndarray:
    """Float samples (±1.0) as the library's 16-bit ones, clipped."""
    return np.ascontiguousarray(np.clip(np.round(samples * INT16_SCALE), -32768, 32767), dtype=np.int16)


def float32(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / np.float32(INT16_SCALE)
