"""When the speaker's next playout tick runs: just in time for the sound card, pulled by it.

The sound card takes a block (10 ms) from the speaker's queue at each callback; a tick decodes one
frame of every stream (13.3 ms at 24 kHz). Every sample queued ahead of what the card needs is
latency. Before, each callback topped the queue up to a block plus half a frame at once, with
whatever the jitter buffer held at that moment: a frame that landed just after a callback waited for
the next one to be taken (up to a block), then sat behind the half frame of margin. Here a tick runs
only when the card would otherwise run short before the next chance to decode (the next callback),
and it waits for the frame due until the last moment that still leaves it time to decode
(:class:`Lead`): a frame that lands a few ms after a callback still plays at the next one, and the
queue holds no more than the card's next block needs.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Callable, Protocol

import numpy as np


class Lead:
    """How long before the sound card needs a tick's audio the tick must start: the 95th
    percentile of the last ``window`` ticks' durations (decoding on the model's thread, the hand-over
    there and back) plus the 95th percentile of how late the event loop woke the ticks that waited
    until their deadline (its timers round up to the millisecond, and a busy machine adds its own
    scatter), but at least ``least``. ``initial`` until ``measured`` ticks have been timed, ``margin``
    until as many wake-ups have. (A fixed 1.5 ms margin, where a quiet machine wakes within 1 ms, cost
    a whole 10 ms block at some phases of the playback clock: the frames' slack is counted in blocks.)"""

    def __init__(self, initial: float = 0.006, margin: float = 0.0015, window: int = 64, measured: int = 8,
                 least: float = 0.0005) -> None:
        self.initial, self.margin, self.measured, self.least = initial, margin, measured, least
        self._durations: deque[float] = deque(maxlen=window)
        self._wakes: deque[float] = deque(maxlen=window)

    def note(self, seconds: float) -> None:
        """A tick took ``seconds``."""
        self._durations.append(seconds)

    def woke(self, late: float) -> None:
        """A tick that waited for its frame until its deadline started ``late`` seconds after it."""
        self._wakes.append(late)

    @property
    def seconds(self) -> float:
        if len(self._durations) < self.measured:
            return self.initial
        scatter = self.margin if len(self._wakes) < self.measured else float(np.percentile(np.fromiter(self._wakes, float), 95))
        return float(np.percentile(np.fromiter(self._durations, float), 95)) + max(scatter, self.least)


def tick_deadline(runs_short_at: float, next_callback: float, lead: float) -> float | None:
    """The latest a tick may start for its audio to be queued before ``runs_short_at`` (the first
    callback the queue cannot fill); ``None`` when that is after ``next_callback``: the tick can wait
    for the next round, by when more may have come."""
    deadline = runs_short_at - lead
    return None if deadline >= next_callback else deadline


class Waits(Protocol):
    def waiting(self, now: float) -> bool: ...


async def until_due(receiver: Waits, arrived: asyncio.Event, deadline: float, clock: Callable[[], float]) -> float | None:
    """Wait until no stream's frame due is still to come (``receiver.waiting``) or ``deadline``:
    woken by ``arrived`` (set for every message the connection hands over). Returns how late the
    event loop woke it when it waited for the deadline itself (:meth:`Lead.woke`), else ``None``."""
    while receiver.waiting(now := clock()) and deadline > now:
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), deadline - now)
        except asyncio.TimeoutError:
            return clock() - deadline
    return None
