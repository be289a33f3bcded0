"""An alarm that wakes the event loop at a moment of ``time.monotonic()`` within a few tenths of a ms.

asyncio's timers sleep in ``epoll_wait``, whose timeout is in whole milliseconds, rounded up: a
timer fires 0-1 ms late before any load adds to it (an idle process on the 2-core machine: p50
0.78, p95 1.85 ms late, where a kernel timer wakes a sleeping thread 0.13 / 0.17 ms late). The
speaker keeps the 95th percentile of that lateness in reserve before every sound-card callback it
may have to fill without the frame (``call.playout.Lead``), and at 10 ms blocks a reserve above the
few ms a configuration has to spare costs a whole block. A Linux ``timerfd`` in the loop's selector
wakes it when the kernel timer fires; elsewhere the loop's own timer stands in.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Callable

CLOCK_MONOTONIC = 1  # time.monotonic()'s clock on Linux
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _timerfd() -> tuple[int, ctypes.CDLL] | None:
    """A non-blocking timerfd on the monotonic clock and the libc that sets it; ``None`` off Linux."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.timerfd_create(CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, AttributeError, TypeError):  # (no such function; Windows has no CDLL(None))
        return None
    return (fd, libc) if fd >= 0 else None


class Alarm:
    """Sets an :class:`asyncio.Event` at a given moment of ``clock``; one alarm at a time. A kernel
    timer serves ``time.monotonic`` (its clock is the timer's); any other clock, such as a test's
    virtual one, rides the loop's timers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float] = time.monotonic) -> None:
        self._loop, self._clock = loop, clock
        self._event: asyncio.Event | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._timer = _timerfd() if clock is time.monotonic else None
        if self._timer is not None:
            loop.add_reader(self._timer[0], self._rang)

    @property
    def precise(self) -> bool:
        """Whether a kernel timer wakes the loop (else the loop's millisecond timers)."""
        return self._timer is not None

    def ring(self, at: float, event: asyncio.Event) -> None:
        """Set ``event`` at ``at`` (on the clock; at once if that has passed), in place of any alarm
        set before."""
        self.cancel()
        self._event = event
        if self._timer is None:
            self._handle = self._loop.call_later(max(0.0, at - self._clock()), event.set)
        else:
            seconds = max(at, 1e-9)  # (all zeros would disarm it)
            self._set(_Itimerspec(_Timespec(0, 0), _Timespec(int(seconds), int(seconds % 1 * 1e9))))

    def cancel(self) -> None:
        self._event = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        elif self._timer is not None:
            self._set(_Itimerspec())

    def close(self) -> None:
        if self._timer is not None:
            self._loop.remove_reader(self._timer[0])
            os.close(self._timer[0])
            self._timer = None
        self.cancel()

    def _set(self, spec: _Itimerspec) -> None:
        fd, libc = self._timer
        if libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")

    def _rang(self) -> None:
        try:
            os.read(self._timer[0], 8)  # the expiry count: read, or the selector reports it again
        except BlockingIOError:
            return  # disarmed after it fired: nothing left to read
        if self._event is not None:
            self._event.set()
