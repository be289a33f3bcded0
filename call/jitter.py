"""Jitter buffer: puts frames back in order, decides when a missing frame is lost, and
adapts how long it waits to the jitter it measures.

Packets of a call arrive unevenly (over TCP, loss shows up as late bursts). Playing each
frame the moment it arrives would stutter; waiting a fixed long time would add latency.
Like WebRTC's NetEq, the target delay follows the measured arrival jitter: its 95th
percentile over the last 200 packets plus a small margin (``margin``). It starts low (two
frames: a frame reordered by one is still waited for; a jittery link shows itself within
20 packets), grows
as soon as late frames come (their transits join the window) and shrinks slowly (the
level rule below, and a stall forgotten after ``forget``). On a quiet link the target is
then under one frame, and playout takes each frame at the first tick after it arrives:
the floor. (Before, a fixed 80 ms start and a 20 ms floor above jitter + one frame kept
a frame and more queued on a link that had no jitter at all.)

Two ways to take frames out, for the two kinds of sink:

* :meth:`JitterBuffer.pop` — every frame in index order, exactly one entry per frame
  (``None`` for a lost one). A file sink uses it, so the output keeps the input's length.
* :meth:`JitterBuffer.playout` — one entry per tick of a sound card's clock (the speaker ticks
  when the card needs audio and passes the latest the tick could have run, ``call.playout``; the
  level rule counts what had come by then, and :meth:`JitterBuffer.waiting` says what a tick that
  still has time should wait for). When the
  buffer runs dry it stretches (returns a concealment tick without consuming a frame, so
  the delay grows). Delay that is no longer needed is given back by skipping frames: at
  once when the buffer holds far more than the target, and otherwise at the end of each
  half second in which even the lowest fill level exceeded the target: then every frame
  of that excess is skipped together (one jump, not one frame per half second for as long
  as the excess lasts). Without this rule, the 80 ms start and every stretch would stay
  in the call for good, though on a calm network the target soon falls to the margin.

A real-time call degrades, it never queues. Playout that falls behind (ticks a busy CPU
missed) is skipped back to within two frames of the target at the next tick. A stall (a busy
CPU at either end, a burst on the network) puts its delay into the measured transits and so
into the target, but once a second of packets (``forget``) has arrived calmer than that, the
stall is forgotten (the transits before it leave the window), the target falls back to what
the recent packets need, and the frames queued beyond it are skipped. Before, one stall held
the target up until its packets left the 200-packet window (2.7 s), and what it had queued
then drained a frame per tick or per half second.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from .dtx import PREROLL
from .wire import ComfortNoise

STRETCH = -1
"""Index :meth:`JitterBuffer.playout` returns for a tick with no frame to play."""

Entry = tuple[int, "np.ndarray | ComfortNoise | None"]
"""A frame taken out: its index and its codes, ``None`` when lost, or the comfort noise of a pause."""


@dataclass
class JitterStats:
    """Counters for the status line and the tests."""

    received: int = 0
    late: int = 0
    duplicate: int = 0
    lost: int = 0
    stretched: int = 0
    skipped: int = 0
    resyncs: int = 0
    """Jumps too far ahead to fill: the buffer moved to the new frame instead (see ``max_jump``)."""
    comfort: int = 0
    """Frames of a pause the sender did not send (``call.dtx``), played as comfort noise."""

    @property
    def loss_rate(self) -> float:
        expected = self.received + self.lost
        return self.lost / expected if expected else 0.0


@dataclass
class Pause:
    """Frames from ``noise.index`` on that the sender did not send, up to ``resumed`` (the first
    frame to have come after them; ``None``: none yet)."""

    noise: ComfortNoise
    resumed: int | None = None


class JitterBuffer:
    """Frames of one stream, keyed by their frame index.

    ``now`` is always passed in (seconds, any monotonic clock) so that tests can drive
    time, and so that the buffer never reads a clock itself.
    """

    def __init__(self, frame_rate: float, initial_delay: float | None = None, min_delay: float = 0.0,
                 max_delay: float = 0.5, window: int = 200, level_window: float = 0.5,
                 max_jump: float = 2.0, forget: float = 1.0, max_pauses: int = 16,
                 margin: float = 0.003, percentile: float = 95.0) -> None:
        self.frame_period = 1.0 / frame_rate
        self.margin, self.percentile = margin, percentile
        """The target: this percentile of the transits above their minimum, plus ``margin`` (the
        scatter of the receiving loop's own wake-ups, which no transit shows)."""
        self._recent = max(20, round(forget * frame_rate))
        """Transits that, all within a narrower spread than the window's, make the older ones forgotten."""
        self.max_jump = max(1, round(max_jump * frame_rate))
        """Frames a packet may lie ahead of the next one due and still be waited for: one message can
        make the buffer give out at most this many concealed frames. Further ahead (a sender back
        after a long outage, or a forged index), the buffer drops what it holds and moves there."""
        self._level_ticks = max(1, round(level_window * frame_rate))
        self._level_floor: int | None = None  # fewest frames held at a tick of this level window
        self._level_seen = 0  # ticks of this level window
        self._landed: deque[tuple[int, float]] = deque(maxlen=window)  # (index, arrival) of recent frames
        self._pending: deque[tuple[int, float]] = deque()  # (index, due) of ticks whose level is not known yet
        self._owed = 0  # frames of excess the last level window found and playout has not skipped yet
        self.min_delay, self.max_delay = min_delay, max_delay
        self._initial_delay = 2 * self.frame_period if initial_delay is None else initial_delay
        self._frames: dict[int, np.ndarray] = {}
        self._transits: deque[float] = deque(maxlen=window)
        self._packet_frames: deque[int] = deque(maxlen=window)  # frames per packet, recent packets
        self.next_index: int | None = None
        self.end_index: int | None = None
        self.stats = JitterStats()
        self._started_at: float | None = None
        self._pauses: deque[Pause] = deque(maxlen=max_pauses)  # the sender's pauses not yet played out
        self.arrival: float | None = None
        """When the frame the last :meth:`playout` gave out landed; ``None`` when that tick gave out no
        frame that came, or the first after a pause (sent late with the onset, it says nothing of the
        link). Sub-frame playout steps (``call.time_scale``) measure the playout's slack from it."""
        self.moved = 0
        """Whole frames by which the last :meth:`playout` moved the playout delay: 1 for a stretch, minus
        the frames it skipped."""
        self._paused = False  # the last tick played comfort noise

    # ----------------------------------------------------------------- filling

    def _arrive(self, index: int, now: float) -> None:
        """What any message placed at frame ``index`` does to the timeline before it is filed."""
        if self.next_index is not None and self.end_index is None and index - self.next_index > self.max_jump:
            self._resync(index, now)
        if self._transits and now - index * self.frame_period < min(self._transits) - self.max_delay:
            self._transits.clear()  # a frame from the future: the old timeline would make everything late

    def put(self, index: int, frames: tuple[np.ndarray, ...], now: float) -> None:
        """Store the frames of a packet whose first frame is ``index``."""
        self._arrive(index, now)
        self._packet_frames.append(len(frames))
        for offset, codes in enumerate(frames):
            i = index + offset
            if self.next_index is not None and i < self.next_index:
                self.stats.late += 1
                self._transits.append(now - i * self.frame_period)  # grow at once: the jitter is larger than thought
            elif i in self._frames:
                self.stats.duplicate += 1
            elif self.end_index is not None and i >= self.end_index:
                self.stats.late += 1
            else:
                self._frames[i] = codes
                self._landed.append((i, now))
                self.stats.received += 1
                self._ends_pause(i)
                # Relative transit: constant for perfectly regular arrivals.
                self._transits.append(now - i * self.frame_period)
                if self.next_index is None:
                    self.next_index, self._started_at = i, now
        self._forget_passed_stall()

    def put_comfort(self, noise: ComfortNoise, now: float) -> None:
        """The sender fell silent at ``noise.index`` (or updates its background): every frame from
        there that has not come when its turn comes is comfort noise, until audio resumes. It times
        the timeline like a frame, since it was sent when frame ``noise.index`` was encoded."""
        self._arrive(noise.index, now)
        if self.end_index is not None and noise.index >= self.end_index:
            return
        last = self._pauses[-1] if self._pauses else None
        if last is not None and last.resumed is None and noise.index >= last.noise.index:
            last.noise = ComfortNoise(last.noise.index, noise.band_db)  # the same pause, a new background
        elif last is None or last.resumed is not None and noise.index >= last.resumed:
            self._pauses.append(Pause(noise))
        else:
            return  # older than the pause known: nothing to add
        self._transits.append(now - noise.index * self.frame_period)
        if self.next_index is None:
            self.next_index, self._started_at = noise.index, now

    def _pause_at(self, index: int) -> Pause | None:
        """The latest pause that started at or before frame ``index``."""
        return next((pause for pause in reversed(self._pauses) if pause.noise.index <= index), None)

    def _ends_pause(self, index: int) -> None:
        """Frame ``index`` came: the pause it lies in, if any, ended at it at the latest."""
        pause = self._pause_at(index)
        if pause is not None and (pause.resumed is None or index < pause.resumed):
            pause.resumed = index

    def _comfort_for(self, index: int) -> ComfortNoise | None:
        """The comfort noise frame ``index`` plays if it has not come: that of the pause it lies in."""
        while self._pauses and self._pauses[0].resumed is not None and self._pauses[0].resumed <= index:
            self._pauses.popleft()  # over and played out
        pause = self._pause_at(index)
        return pause.noise if pause is not None and (pause.resumed is None or index < pause.resumed) else None

    def _forget_passed_stall(self) -> None:
        """Drop the transits before the most recent ``forget`` seconds of packets when those
        recent ones, all of them, spread less than the window's 95th percentile does: the
        window's high tail is a stall that has passed (or a shift of the whole timeline, as when
        a sender drops input), not the jitter the stream has now. For steady jitter the recent
        packets' full spread is almost never below the window's 95th percentile."""
        n = len(self._transits)
        if n <= self._recent:
            return
        transits = np.fromiter(self._transits, float, n)
        recent = transits[n - self._recent:]
        if recent.max() - recent.min() < np.percentile(transits, 95) - transits.min():
            for _ in range(n - self._recent):
                self._transits.popleft()

    def _resync(self, index: int, now: float) -> None:
        """Move to ``index``: what is held is dropped, the frames between are lost without being
        given out one by one, and playout fills up to the target again from there."""
        self.stats.lost += max(0, index - self.next_index - len(self._frames))
        self.stats.skipped += len(self._frames)
        self.stats.resyncs += 1
        self._frames.clear()
        self._transits.clear()
        self._landed.clear()
        self._pending.clear()
        self.next_index, self._started_at = None, None
        self._pauses.clear()

    def end(self, n_frames: int) -> None:
        """The sender sent ``n_frames`` frames in all: frames from there on never come."""
        if self.next_index is not None and n_frames - self.next_index > self.max_jump:
            n_frames = self.next_index + self.max_jump  # an END from far ahead: bounded like a jump
        self.end_index = n_frames
        for i in [i for i in self._frames if i >= n_frames]:
            del self._frames[i]
        if self.next_index is None:
            self.next_index = n_frames

    def close(self) -> None:
        """Nothing more will come (the sender left without ``END``): play out what is held, then finish."""
        if self.end_index is None:
            self.end(max(self._frames, default=(self.next_index or 0) - 1) + 1)

    @property
    def finished(self) -> bool:
        """Every frame up to the end has been taken out."""
        return self.end_index is not None and self.next_index is not None \
            and self.next_index >= self.end_index

    # --------------------------------------------------------------- estimates

    @property
    def target_delay(self) -> float:
        """How long a frame may lag the earliest-arriving frames before it is given up.

        The ``percentile`` of relative transit above its minimum, plus ``margin``, clamped to
        ``[min_delay, max_delay]``; the initial delay until there is data.
        """
        if len(self._transits) < 20:
            return self._initial_delay
        transits = np.fromiter(self._transits, float)
        jitter = float(np.percentile(transits, self.percentile) - transits.min())
        return min(max(jitter + self.margin, self.min_delay), self.max_delay)

    @property
    def buffered(self) -> int:
        """Frames held and not yet taken out."""
        return len(self._frames)

    def _due(self, index: int, now: float) -> bool:
        """Frame ``index`` of a pause would have come by now on the fastest path the stream has shown,
        had it been sent with the frames after it as the one before an onset is (``call.dtx.PREROLL``
        frames late). Comfort noise is played from then on: in a pause playout keeps the pace speech
        had, neither running ahead of the sender nor drifting later by waiting for the target delay,
        but that many frames later, so that the frames sent with the onset still find their turn
        (the first comfort tick of a pause stretches, which no one hears in comfort noise; the
        sub-frame steps, ``call.time_scale``, take the frame back once speech is there again). Played
        at the pace of speech itself, the frame before each onset came too late for its turn."""
        if self.end_index is not None:
            return True
        return bool(self._transits) and now >= (index + PREROLL) * self.frame_period + min(self._transits)

    def _overdue(self, index: int, now: float) -> bool:
        """A missing frame is lost once it is later than the earliest arrivals by the target."""
        if self.end_index is not None:
            return True  # END comes after every packet sent: what is missing now is lost
        if not self._transits:
            return False
        expected = index * self.frame_period + min(self._transits)
        return now >= expected + self.target_delay

    def waiting(self, now: float) -> bool:
        """The frame due next has not come and may still: :meth:`playout` now would stretch or give
        it up, or a frame owed to the level rule can be skipped once the next one is there. A sink
        that can wait (the sound card does not need it yet) waits for it rather than ticking before
        it lands. Not while the first fill builds the target, nor in a pause whose
        comfort noise is due, nor once the stream has ended."""
        if self.next_index is None or self.end_index is not None:
            return False
        if self.next_index in self._frames:
            return self._owed > 0 and self.next_index + 1 not in self._frames  # the frame to skip to
        if self._started_at is not None and now < self._started_at + self.target_delay:
            return False
        return self._comfort_for(self.next_index) is None or not self._due(self.next_index, now)

    def missing(self, now: float) -> bool:
        """The frame due next has not come, may still come, and is no pause's: :meth:`playout` now
        would stretch by a whole concealed frame. A sink that can play something shorter of its own
        (a few pitch periods, ``call.time_scale``) does that instead and gives the frame more time."""
        i = self.next_index
        if i is None or self.end_index is not None or i in self._frames or self._comfort_for(i) is not None:
            return False
        if self._started_at is not None and now < self._started_at + self.target_delay:
            return False
        return not (self._frames and self._overdue(i, now))

    # ----------------------------------------------------------------- draining

    def pop(self, now: float) -> list[Entry]:
        """Every frame whose turn has come, in order; ``None`` stands for a lost frame, a
        :class:`ComfortNoise` for a frame of a pause."""
        out: list[Entry] = []
        while self.next_index is not None and not self.finished:
            i = self.next_index
            entry: np.ndarray | ComfortNoise | None = self._frames.pop(i, None)
            if entry is None and (comfort := self._comfort_for(i)) is not None:
                if not self._frames and not self._overdue(i, now):
                    break  # (a file sink has time: the first frame after the pause may come with the frame before it)
                self.stats.comfort += 1
                entry = comfort
            elif entry is None:
                if not self._frames and self.end_index is None or not self._overdue(i, now):
                    break
                self.stats.lost += 1
            out.append((i, entry))
            self.next_index = i + 1
        return out

    def playout(self, now: float, due: float | None = None) -> Entry:
        """One sound-card tick: ``(index, codes)``, ``(index, None)`` for a lost frame,
        ``(index, ComfortNoise)`` for a frame of a pause, or ``(STRETCH, None)`` when nothing can be
        played yet (``(STRETCH, ComfortNoise)`` in a pause). ``due``: the latest this tick could have
        run (a sink that ticks as soon as its frame is there, ahead of the sound card's need,
        ``call.playout``); the fill level that decides what delay is not needed is then that at
        ``due``, not at ``now``."""
        self.arrival, self.moved = None, 0
        if self.next_index is None or self.finished:
            return STRETCH, None
        if self._started_at is not None and now < self._started_at + self.target_delay:
            return STRETCH, None  # first fill: build up the target delay before playing (no tick plays)
        self._started_at = None
        i = self.next_index
        self._excess_level(now, due)
        comfort = self._comfort_for(i) if i not in self._frames else None
        if comfort is not None:
            if not self._frames and not self._due(i, now):
                self.stats.stretched += 1
                self.moved = 1
                return STRETCH, comfort
            self.stats.comfort += 1
            self.next_index = i + 1
            self._paused = True
            return i, comfort
        if i not in self._frames:
            resumed = self._resumed_after_outage(i, now)
            if resumed is not None:
                self.stats.lost += resumed - i
                i = resumed
            elif self._frames and self._overdue(i, now) or self.end_index is not None:
                self.stats.lost += 1
                self.next_index = i + 1
                return i, None
            else:
                self.stats.stretched += 1
                self.moved = 1
                return STRETCH, None
        target = self.target_delay
        target_frames = target / self.frame_period
        excess = max(self._owed, self._late_frames(i, now, target))
        if len(self._frames) > 2 * target_frames + 2:
            excess = max(excess, 1)
        while excess > 0 and i + 1 in self._frames:
            del self._frames[i]  # more queued than the jitter needs: skip frames to cut the delay
            self.stats.skipped += 1
            i += 1
            excess -= 1
            self._owed = max(0, self._owed - 1)
        self.moved = self.next_index - i
        if not self._paused:  # (the frames that end a pause come late by design: the pause's delay is theirs)
            self.arrival = next((at for index, at in reversed(self._landed) if index == i), None)
        self.next_index, self._paused = i + 1, False
        return i, self._frames.pop(i)

    def _resumed_after_outage(self, index: int, now: float) -> int | None:
        """The first frame held, when the link is back after an outage: frames missing before it
        (lost with the connection, or dropped as stale by the sender) and it itself late beyond the
        target. Playout jumps to it at once, and the late-frame rule then skips what is queued
        beyond the target. Given out one lost frame per tick, the missing run would be concealed
        for as long again as the outage lasted while the frames that came wait behind it (a 0.3 s
        cut cost 0.55-0.78 s of audio in ``benchmarks/latency.py --netem``). ``None`` for a loss
        of one frame, which concealment covers, or frames that still have time."""
        if not self._frames or self.end_index is not None:
            return None
        first = min(self._frames)
        if first - index < 2 or self._late_frames(first, now, self.target_delay) == 0:
            return None
        return first

    def _note_level(self, level: int) -> None:
        self._level_floor = level if self._level_floor is None else min(self._level_floor, level)
        self._level_seen += 1

    def _late_frames(self, index: int, now: float, target: float) -> int:
        """Whole frames by which frame ``index``, played ``now``, plays later than the ``target``
        delay after the earliest arrivals would have it, beyond the frame a frame may wait for its
        tick and one frame of slack: delay that
        piled up while playout could not keep up (ticks missed on a busy CPU) or that a stall
        left behind once the target has come down. Skipped at once: a real-time call does not
        queue. (What is left under two frames above the target, the level rule takes.)"""
        if not self._transits:
            return 0
        delay = now - (index * self.frame_period + min(self._transits))
        return max(0, math.floor((delay - target) / self.frame_period) - 2)

    def _excess_level(self, now: float, due: float | None) -> None:
        """Track the fill level at each tick; when a level window has just closed in which the
        queue never fell to the target delay (even at its emptiest tick it held more than the
        target's worth of frames, the due one included), the frames of delay beyond the target
        at that emptiest tick are owed: excess, all of it, skipped as soon as the frames after it
        are there (:meth:`waiting` waits for them while the sink has time).

        A tick with a ``due`` time counts the frames from its own on that had come by then: a tick
        taken early holds only the frames come so far, though the delay would have let it wait
        for the next (counted at the tick, a frame and a half more than needed went unseen). Counted
        at their due times, a window whose every frame made it with the next one there too holds a
        frame of delay it did not need: the jitter of that window is in the count, and no whole
        frames of the target are kept on top (simulated with 20 ms p99 jitter on 10 ms blocks:
        p50 60 ms instead of 73, 0.5 % of frames late; ``tests/test_playout.py``).

        (Simulated with 10 ms capture blocks, 3 ms of encode and network jitter: frames wait
        13 ms on average with this rule, against 26 ms when the frame due is not counted.)"""
        if due is None:
            self._note_level(len(self._frames))
        else:
            self._pending.append((self.next_index, due))
        while self._pending and self._pending[0][1] <= now:
            index, at = self._pending.popleft()
            self._note_level(sum(1 for i, landed in self._landed if i >= index and landed <= at))
        if self._level_seen < self._level_ticks:
            return
        # Packets of N frames: the target covers the N - 1 frames by which a packet's first frame
        # lags its last, but the queue runs down to its floor just before each packet lands, so at the
        # floor those N - 1 frames are not in it. Compare the floor with the rest of the target.
        burst = max(self._packet_frames, default=1) - 1
        held = self._level_floor + burst  # frames' worth of delay at the emptiest tick
        jitter = max(0.0, self.target_delay - self.margin) if due is None else 0.0  # (at its due time, a frame
        # that made it is enough: the jitter is in the count already)
        needed = 1 + int(jitter / self.frame_period + 1e-9)  # the frame due, and the whole frames of jitter beyond it
        self._level_floor, self._level_seen = None, 0
        self._owed = max(0, held - needed)
