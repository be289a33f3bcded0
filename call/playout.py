"""When the speaker's next playout tick runs: just in time for the sound card, pulled by it.

The sound card takes a block (10 ms) from the speaker's queue at each callback; a tick decodes one
frame of every stream (13.3 ms at 24 kHz). Every sample queued ahead of what the card needs is
latency. Before, each callback topped the queue up to a block plus half a frame at once, with
whatever the jitter buffer held at that moment: a frame that landed just after a callback waited for
the next one to be taken (up to a block), then sat behind the half frame of margin. Here a tick runs
only when the card would otherwise run short before the next chance to decode (the next callback),
and it waits for the frame due while it could still be decoded in time, then for its decode until
the last moment the card can still be given something else (:class:`Lead`): a frame that lands a
few ms after a callback still plays at the next one, a frame or a decode later than that gets a few
pitch periods in front of it, and the queue holds no more than the card's next block needs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Protocol

import numpy as np

from .alarm import Alarm


class Lead:
    """How much time a tick needs, in two parts, measured over the last ``window`` ticks.

    :attr:`seconds`: how long before the sound card runs short the last decision must be taken,
    that the audio in hand is all there will be and a few pitch periods must fill in
    (``call.time_scale``): the 95th percentile of how late the event loop woke the waits that
    ran to their deadline (a busy machine's scatter, and asyncio's own timers round up to the
    millisecond where the speaker's alarm, ``call.alarm``, does not), at least ``least``; ``margin``
    until ``measured`` wake-ups have been timed.

    :attr:`decoding`: the 95th percentile of the ticks' durations (decoding on the model's thread,
    the hand-over there and back); ``initial`` until ``measured`` ticks have been timed. A frame not
    there yet is waited for until that long before the deadline (landing later, it could not be
    decoded in time). A frame in hand is not held to it: it decodes from the moment it lands, and a
    decode still running at the deadline gets an expansion in front of it, its frame playing at the
    next callback. Reserved for every frame, the decode's tail put the 10 ms-block call a whole block
    above its floor (4-5 ms of spare against a 5-6 ms reserve, ``benchmarks/results/playout.md``)."""

    margin = 0.0015
    """The loop's timers (``epoll_wait`` rounds up to the ms) wake an idle process up to 1.85 ms late (p95)."""
    least = 0.0005
    """A kernel timer (``call.alarm``) wakes it within 0.2 ms: what is left is the loop's own work."""

    def __init__(self, initial: float = 0.006, margin: float = margin, window: int = 64, measured: int = 8,
                 least: float = least) -> None:
        self.initial, self.margin, self.measured, self.least = initial, margin, measured, least
        self._durations: deque[float] = deque(maxlen=window)
        self._wakes: deque[float] = deque(maxlen=window)
        # (kept up to date as samples come, one percentile each: a tick reads them several times)
        self.seconds = max(margin, least)
        self.decoding = initial

    def note(self, seconds: float) -> None:
        """A tick took ``seconds``."""
        self._durations.append(seconds)
        if self.timed:
            self.decoding = _p95(self._durations)

    def woke(self, late: float) -> None:
        """A wait that ran to its deadline went on ``late`` seconds after it."""
        self._wakes.append(late)
        if len(self._wakes) >= self.measured:
            self.seconds = max(_p95(self._wakes), self.least)

    @property
    def timed(self) -> bool:
        """Whether enough ticks have been timed for :attr:`decoding` to be theirs, not ``initial``."""
        return len(self._durations) >= self.measured


def _p95(values: deque[float]) -> float:
    return float(np.percentile(np.fromiter(values, float), 95))


def tick_deadline(runs_short_at: float, next_callback: float, lead: Lead) -> float | None:
    """The last moment a tick can give the sound card audio before ``runs_short_at`` (the first
    callback the queue cannot fill); ``None`` when a tick started at ``next_callback`` still has
    time to decode before it: the tick can wait for the next round, by when more may have come."""
    if runs_short_at - lead.seconds - lead.decoding >= next_callback:
        return None
    return runs_short_at - lead.seconds


class Waits(Protocol):
    def waiting(self, now: float) -> bool: ...


async def until_due(receiver: Waits, arrived: asyncio.Event, deadline: float, clock: Callable[[], float],
                    alarm: Alarm) -> float | None:
    """Wait until no stream's frame due is still to come (``receiver.waiting``) or ``deadline``:
    woken by ``arrived`` (set for every message the connection hands over, and by ``alarm`` at the
    deadline). Returns how late the event loop woke it when it waited for the deadline itself
    (:meth:`Lead.woke`), else ``None``."""
    if not (receiver.waiting(clock()) and deadline > clock()):
        return None
    alarm.ring(deadline, arrived)
    try:
        while receiver.waiting(now := clock()) and deadline > now:
            arrived.clear()
            await arrived.wait()
    finally:
        alarm.cancel()
    return now - deadline if now >= deadline else None


async def until_done(task: asyncio.Future, deadline: float, clock: Callable[[], float], alarm: Alarm) -> float | None:
    """Wait for ``task`` until ``deadline`` (``alarm`` wakes the loop then): ``None`` when it is done,
    else how late the event loop woke (:meth:`Lead.woke`); the task runs on."""
    if task.done():
        return None
    rang = asyncio.Event()
    alarm.ring(deadline, rang)
    waiter = asyncio.ensure_future(rang.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        alarm.cancel()
    return None if task.done() else max(0.0, clock() - deadline)
