"""A call on a busy CPU degrades and comes back instead of queueing: the jitter buffer forgets a
stall and skips the delay it left, the status line says when the sender sheds work, and the CPU-load
benchmark accounts for what a live sender drops and measures the return to the idle latency.
Time is always the test's (virtual ``now``, a fake clock), never the machine's."""

from __future__ import annotations

import types

import numpy as np
import pytest

import call.sender
from benchmarks.latency import recovery_time, rolling_median
from benchmarks.latency_call import STAGES, Burners, CallSpec, CpuLoad, frame_latencies, run_load
from call.jitter import JitterBuffer
from call.meter import Meter
from call.sender import EncodeBudget, Sender
from call.status import CallStatus
from tests.models import small_model, speech_like

RATE, HOP = 24000, 320
FRAME_RATE = RATE / HOP
T = 1 / FRAME_RATE
CODES = (np.zeros(8, np.int64),)


# ------------------------------------------------------------------ the jitter buffer


Played = list[tuple[float, float, float]]


def play(arrivals: list[tuple[float, int]], ticks: list[float]) -> tuple[JitterBuffer, Played]:
    """Feed ``(arrival time, frame index)`` packets to a jitter buffer and tick it at ``ticks``;
    returns it and ``(tick, playout delay of the frame played, target delay)`` for every frame played,
    the playout delay counted from the frame's regular arrival ``index * T``."""
    arrivals = sorted(arrivals)
    jb, played, n = JitterBuffer(FRAME_RATE), [], 0
    for now in ticks:
        while n < len(arrivals) and arrivals[n][0] <= now:
            jb.put(arrivals[n][1], CODES, arrivals[n][0])
            n += 1
        index, codes = jb.playout(now)
        if codes is not None:
            played.append((now, now - index * T, jb.target_delay))
    return jb, played


def regular_ticks(seconds: float) -> list[float]:
    return [k * T + 0.0005 for k in range(int(seconds * FRAME_RATE))]


def first_time_back(played, since: float, slack: float = T) -> float:
    """When the playout delay came back within ``slack`` of the 20 ms floor for good, after ``since``."""
    late = [t for t, delay, _ in played if t >= since and delay > 0.02 + slack]
    return max(late, default=since) - since


def test_after_a_one_second_stall_the_delay_returns_to_the_target_within_a_second_and_a_half():
    """The sender stalls for 1 s, then everything it held arrives at once. The buffer stretches through
    the stall and its target jumps with the stall's transits; once a second of calm packets has come
    it forgets the stall and skips the backlog: the playout delay is back at the floor 1.5 s after the
    burst (it took 3 s before: the stall stayed in the 200-packet window, then drained a frame per tick)."""
    arrivals = [(max(i * T, 3.0) if 2.0 <= i * T < 3.0 else i * T, i) for i in range(int(8 * FRAME_RATE))]
    jb, played = play(arrivals, regular_ticks(8))
    assert max(delay for t, delay, _ in played if 3.0 <= t < 3.5) > 0.5  # the stall is in the call at first
    back = first_time_back(played, 3.0)
    assert back <= 1.5, back
    assert all(delay <= 0.02 + T for t, delay, _ in played if t > 3.0 + back)
    assert jb.target_delay == pytest.approx(jb.min_delay, abs=0.005) and jb.stats.lost <= 1


def test_ticks_a_busy_receiver_missed_are_skipped_at_once():
    """Packets keep coming but the receiver's playout stops for half a second (its CPU was taken): at
    the first tick after, the frames that piled up are skipped in one jump, not one per tick, to within
    two frames of the target; the level rule takes the rest by the end of its half second."""
    ticks = [t for t in regular_ticks(5) if not 2.0 <= t < 2.5]
    jb, played = play([(i * T, i) for i in range(int(5 * FRAME_RATE))], ticks)
    assert max(delay for t, delay, _ in played if 1.5 <= t < 2.0) <= 0.02 + T
    after = [(t, delay) for t, delay, _ in played if t >= 2.5]
    assert after[0][1] <= 0.02 + 2 * T  # back at the first tick (it was 500 ms late)
    assert all(delay <= 0.02 + 2 * T for _, delay in after)
    assert all(delay <= 0.02 + T for t, delay in after if t >= 3.5)
    assert jb.stats.skipped >= 30 and jb.stats.lost == 0 and jb.stats.stretched == 0


def test_a_sender_that_dropped_a_second_of_input_does_not_leave_its_target_up():
    """A live sender stalls 1 s and drops what piled up: its frames go on, numbered as before, 1 s later
    than their index says. The shifted timeline is not jitter: within about a second of calm packets
    the target is back at its floor (before, it stayed at the 500 ms ceiling for 200 packets, 2.7 s)."""
    arrivals = [(i * T + (1.0 if i * T >= 2.0 else 0.0), i) for i in range(int(7 * FRAME_RATE))]
    jb, played = play(arrivals, regular_ticks(8))
    targets = [(t, target) for t, _, target in played if t >= 3.0]
    seen = next(t for t, target in targets if target > 0.2)  # the jump is seen first
    assert seen < 3.2
    settled = next(t for t, target in targets if t > seen and target <= jb.min_delay + 0.005)
    assert settled - 3.0 <= 1.2, settled
    assert all(target <= jb.min_delay + 0.005 for t, target in targets if t >= settled)


# ------------------------------------------------------------------------ the status line


def test_the_status_line_says_when_the_sender_sheds_work():
    sender = Sender(small_model(), executor=None, live=True)
    link = types.SimpleNamespace(meter=Meter(), rtt=0.02, alone=False, problem=None)
    status = CallStatus(link, sender, None, HOP / RATE, 6.0)
    assert "CPU busy" not in status.line()
    sender.budget.shedding = True
    assert "CPU busy: search off |" in status.line()
    sender.dropped_samples += 2880  # 120 ms dropped since the last line
    assert "CPU busy: search off, dropped 120 ms |" in status.line()
    assert "CPU busy: search off |" in status.line()  # said once, per line
    sender.budget.shedding = False
    sender.dropped_samples += 480
    assert "CPU busy: dropped 20 ms |" in status.line()
    assert "CPU busy" not in status.line()
    filed = Sender(small_model(), executor=None, live=False)
    assert CallStatus(link, filed, None, HOP / RATE, 6.0).cpu_note() is None


# ------------------------------------------------------------------------ the codebook search


def test_a_sender_shed_by_a_burst_of_load_searches_again_once_it_has_the_time():
    """Greedy encoding at 30 % of a frame is above the restore threshold (20 %) but leaves room for the
    search: after 2 s of it the search is tried again. A probe that fails waits twice as long before the
    next; one the search survives resets the wait."""
    budget = EncodeBudget(T, smoothing=1.0)  # no smoothing: each note decides alone

    def run(load: float, frames: int) -> list[bool]:
        return [budget.note(load * T, 1) for _ in range(frames)]
    assert run(0.6, 1) == [True] and budget.sheds == 1
    assert run(0.3, 150) == [True] * 149 + [False]  # 2 s of greedy encoding under half a frame: a probe
    assert run(0.7, 1) == [True] and budget.sheds == 2  # the search does not fit yet
    assert run(0.3, 300) == [True] * 299 + [False]  # the next probe waits 4 s
    assert run(0.35, 300) == [False] * 300  # the search fits: it stays, and the wait is back to 2 s
    assert run(0.6, 1) == [True] and run(0.3, 150)[-1] is False and budget.sheds == 3
    assert run(0.6, 1) == [True] and run(0.55, 1000) == [True] * 1000  # greedy itself too slow: no probe


def test_one_stall_of_the_process_does_not_shed_the_search():
    """With the default smoothing, a push that took three frames (the whole process stalled) counts as
    one frame: the search stays. Encoding that keeps taking a frame sheds it within ten frames."""
    budget = EncodeBudget(T)
    assert not any(budget.note(0.3 * T, 1) for _ in range(100))
    assert not budget.note(3.0 * T, 1) and not any(budget.note(0.3 * T, 1) for _ in range(10))
    assert budget.sheds == 0 and any(budget.note(1.0 * T, 1) for _ in range(10)) and budget.sheds == 1


# ------------------------------------------------------------------ drops in the accounting


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now

    def time_ns(self) -> int:
        return 0


async def test_a_live_sender_tells_its_observer_what_it_dropped_and_where(monkeypatch):
    """Blocks of 240 samples, captured on a clock; one read comes 0.5 s late (a stalled encoder), and the
    sender keeps only its newest 60 ms. The ``dropped`` event names the first frame that starts after the
    gap, and the benchmark's accounting then places every frame where it was captured: each waits for
    the block completing it (one frame plus under a block), as before the gap."""
    clock = FakeClock()
    monkeypatch.setattr(call.sender, "time", clock)
    sender = Sender(small_model(), executor=None, live=True, max_backlog=0.06)
    events = []
    sender.observer = lambda event, stream, first, count, t: events.append((event, first, count, t))
    audio = speech_like(3 * RATE, RATE, seed=3)[0].numpy()
    t0, block, position = clock.now, 240, 0
    sizes = [block] * 100 + [12000] + [block] * 100  # the 12000: 0.5 s read at once
    for size in sizes:
        position += size
        clock.now = t0 + position / RATE  # the block arrives as its last sample is captured
        await sender.push(audio[:, position - size: position])
    dropped = [e for e in events if e[0] == "dropped"]
    assert len(dropped) == 1
    _, first, count, _ = dropped[0]
    assert count == 12000 - 1440 and sender.dropped_samples == count
    gap_at = 100 * block  # samples the encoder had taken in when the gap came
    assert first == -(-gap_at // HOP)  # frame 75 is the first to start after the gap

    # Hand the sender's events to frame_latencies with a receiver that plays each frame 5 ms after it
    # was encoded: each frame's input stage is then what it waited in fact, from the capture of its
    # first sample to the arrival of the block that held its last.
    encoded = {f: t for e, f0, n, t in events if e == "encoded" for f in range(f0, f0 + n)}
    received = []
    for k, t in sorted(encoded.items()):
        received += [("received", k, 1, t + 0.001), ("playout", k, 1, t + 0.002), ("decoded", k, 1, t + 0.003, k * HOP)]
    sink = [(encoded[k] + 0.005, k * HOP, HOP) for k in sorted(encoded)]
    out = frame_latencies({"sent": events, "rate": RATE, "hop": HOP, "source_t0": t0},
                          {"received": received, "sink_log": sink, "lookahead": 0},
                          CallSpec(label="t", model="x", warmup=0.0))
    assert out["dropped_samples"] == count and len(out["index"]) == len(encoded)
    ends = np.cumsum(sizes)

    def source(sample: int) -> int:  # where a sample the encoder took in was in the captured audio
        return sample + (count if sample >= gap_at else 0)

    def waited(k: int) -> float:
        last = source((k + 1) * HOP - 1)
        return (ends[np.searchsorted(ends, last, side="right")] - source(k * HOP)) / RATE
    assert np.allclose(out["input"], [waited(k) for k in out["index"]])
    assert max(out["input"]) <= T + 0.06 + 1e-9  # at most the 60 ms a live sender keeps, plus the frame
    assert np.allclose(np.sum([out[s] for s in STAGES], axis=0), out["end_to_end"])
    assert np.allclose(np.array(out["end_to_end"]) - np.array(out["input"]), 0.005)  # nothing else moved


# ------------------------------------------------------------------ the benchmark's measures


def test_recovery_is_when_the_rolling_median_is_back_for_good():
    t = np.arange(0, 20, T)
    latency = np.where((t >= 3) & (t < 14), 0.2, 0.05)
    latency[(t >= 16) & (t < 16.1)] = 0.3  # a blip shorter than half the window: the median ignores it
    assert recovery_time(rolling_median(t, latency), since=13.0, threshold=0.055) == pytest.approx(1.0, abs=2 * T)
    assert recovery_time(rolling_median(t, np.full_like(t, 0.05)), since=13.0, threshold=0.055) == 0.0
    assert recovery_time(rolling_median(t, np.where(t >= 3, 0.2, 0.05)), since=13.0, threshold=0.055) == float("inf")
    times, medians = rolling_median(t, latency)
    assert times[0] >= 0.25 - 1e-9 and times[-1] <= t[-1] - 0.25 + 1e-9 and len(times) == len(medians)


def test_burners_are_stopped_whatever_happens():
    with pytest.raises(KeyboardInterrupt):
        with Burners(2) as burners:
            burners.start()
            processes = list(burners.processes)
            assert all(p.poll() is None for p in processes)
            raise KeyboardInterrupt
    assert all(p.poll() is not None for p in processes) and not burners.processes


def test_the_load_runs_in_its_window_of_the_measured_call():
    barrier = types.SimpleNamespace(wait=lambda timeout=None: 0)
    marks = run_load(CpuLoad(1, start=0.1, stop=0.4), CallSpec(label="t", model="x", warmup=0.1, seconds=0.5), barrier)
    assert marks["measured_from"] + 0.1 - 0.01 <= marks["started_at"] < marks["stopped_at"]
    assert marks["stopped_at"] - marks["started_at"] == pytest.approx(0.3, abs=0.1)
    assert set(marks["cpu"]) == {"before", "during", "after"}
    assert any("getppid" in p["command"] for p in marks["cpu"]["during"]["top"])  # the burner ran then
