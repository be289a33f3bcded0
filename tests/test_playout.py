"""Playout pulled by the sound card (``call.playout``), simulated on a virtual clock: a sender whose
frames complete with its capture blocks, a link, the jitter buffer, a decoder that takes a given
time, and a sound card that takes a block from the speaker's queue at each callback."""

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from benchmarks.latency_floor import capture_done, floor_samples
from call.alarm import Alarm
from call.jitter import STRETCH, JitterBuffer
from call.playout import Lead, tick_deadline, until_done, until_due
from call.time_scale import SubFrameSteps, sample_slack

RATE, HOP = 24000, 320
FRAME = HOP / RATE


@dataclass
class Played:
    """What a simulated call played: each frame's delay from its first captured sample to its
    first played sample (s), and what the sound card missed."""

    delays: dict[int, float] = field(default_factory=dict)
    underruns: int = 0
    buffer: JitterBuffer | None = None
    steps: SubFrameSteps | None = None


def tone(index: int, hz: float = 180.0) -> np.ndarray:
    """Frame ``index`` of a steady tone: what the simulated decoder gives out."""
    t = (index * HOP + np.arange(HOP)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)[None]


class Unscaled:
    """Playout in whole frames only (no sub-frame steps): the policy before ``call.time_scale``."""

    stats = None

    def scale(self, audio: np.ndarray, slack: int | None, moved: int = 0, needed: int = 0) -> np.ndarray:
        return audio

    def expand(self, needed: int) -> None:
        return None  # a frame not there is concealed whole



def simulate(capture_block: int = 240, playback_block: int = 240, phase: float = 0.0, transit: float = 0.006,
             decode: float | np.ndarray = 0.004, seconds: float = 6.0, jitter: np.ndarray | None = None,
             sub_frame: bool = True, initial_delay: float | None = None) -> Played:
    """A one-way call: frame ``k`` reaches the receiver ``transit`` (+ ``jitter[k]``, in order as TCP
    delivers) after the capture block that completes it; playback callbacks every ``playback_block``
    samples from ``phase`` s; each tick decodes for ``decode`` s (an array: tick ``i`` for ``decode[i]``).
    The speaker loop is :func:`call.media.play`'s: after each callback, tick while :func:`tick_deadline`
    says so, each tick waiting for the frame due (arrivals wake it), then for its decode, until its
    deadline; a decode still running then gets pitch periods in front of it."""
    n = int(seconds / FRAME)
    landed = np.array([capture_done(HOP, capture_block, 1, k) / RATE + transit for k in range(n)])
    if jitter is not None:
        landed = np.maximum.accumulate(landed + jitter[:n])
    jb, lead, out = JitterBuffer(RATE / HOP, initial_delay), Lead(), Played()
    steps = SubFrameSteps(RATE) if sub_frame else Unscaled()
    out.buffer, out.steps = jb, steps
    writes: list[tuple[float, int, int | None]] = []  # (time written, samples, frame whose first sample leads them)
    queued_until = 0.0  # when the last write landed
    arrived = 0
    period = playback_block / RATE
    written = read = 0  # samples written to and read from the queue
    starts: dict[int, int] = {}  # frame -> queue position of its first sample
    first_played = False
    durations = iter(np.full(2 * int(seconds / period), decode) if np.isscalar(decode) else decode)

    def deliver(now: float) -> None:
        nonlocal arrived
        while arrived < n and landed[arrived] <= now:
            jb.put(arrived, (np.zeros(8, np.int64),), now=landed[arrived])
            arrived += 1

    for j in range(int(seconds / period)):
        t = phase + j * period
        ready = sum(samples for at, samples, _ in writes if at <= t)  # written by the callback's time
        taken = min(playback_block, ready - read)
        if first_played and taken < playback_block:
            out.underruns += 1
        for frame, position in starts.items():
            if read <= position < read + taken and frame not in out.delays:
                out.delays[frame] = t + (position - read) / RATE - frame * FRAME
        read += taken
        now = max(t, queued_until)
        while True:
            short = t + period + (written - read) // playback_block * period
            deadline = tick_deadline(short, t + period, lead)
            if deadline is None:
                break
            deliver(now)
            needed = playback_block - (written - read) % playback_block
            waits = deadline - lead.decoding  # (the latest a frame can land and be decoded in time)
            while jb.waiting(now) and now < waits:
                now = min(waits, landed[arrived]) if arrived < n else waits
                deliver(now)
                if now == waits:
                    lead.woke(0.0)  # waited for the deadline itself: a virtual clock wakes on time
            expansion = steps.expand(needed) if jb.missing(now) else None
            if expansion is not None:  # a few periods for the card: the frame gets until the next deadline
                writes.append((now, expansion.shape[-1], None))
                written += expansion.shape[-1]
                queued_until = now
                continue
            index, codes = jb.playout(now, deadline - lead.decoding)
            if index == STRETCH and not first_played:
                break
            first_played = True
            took = float(next(durations))
            in_place = not lead.timed or deadline - now > 2 * lead.decoding  # (awaited in place: no race)
            now += took
            lead.note(took)
            if not in_place and now > deadline and (fill := steps.expand(needed)) is not None:  # still decoding
                writes.append((deadline, fill.shape[-1], None))
                written += fill.shape[-1]
                lead.woke(0.0)
                deadline = t + period + (written - read) // playback_block * period - lead.seconds
            spare = now + lead.decoding <= deadline
            if index != STRETCH and codes is not None:
                starts[index] = written
            slack = None if jb.arrival is None else \
                sample_slack(deadline, jb.arrival + took, (written - read) % playback_block, playback_block, RATE)
            samples = steps.scale(tone(max(index, 0)), slack, jb.moved,
                                  0 if spare else playback_block - (written - read) % playback_block).shape[-1]
            writes.append((now, samples, None))
            written += samples
            queued_until = now
    return out


def settled(played: Played) -> list[float]:
    """Delays after the first two seconds (start-up fill and the first level windows are over)."""
    return [d for k, d in sorted(played.delays.items()) if k * FRAME >= 2.0]


def floor(capture_block: int, playback_block: int, phase: float, processing: float) -> float:
    return floor_samples(HOP, playback_block, processing * RATE, phase * RATE % playback_block) / RATE


LEAD = 0.004 + Lead().margin
"""What the playout reserves for a tick that decodes in 4 ms: the floor it can reach counts that."""
STEP = SubFrameSteps(RATE).settles_within / RATE
"""How far above the floor sub-frame steps may leave the delay: the margin they keep (0.5 ms) and
the shortest step (1.5 ms), under which a frame is not shortened."""


@pytest.mark.parametrize("phase", [0.0, 0.004, 0.009, 0.012])
def test_frame_aligned_blocks_play_at_the_floor(phase):
    """320-sample blocks both ways: once settled, every frame plays at the floor of the configuration
    (its capture block, encode and network, the time reserved to decode, the playback callback that
    follows), nothing concealed, the sound card never short, whatever the playback clock's phase. The
    top-up after each callback played them a frame later or more."""
    played = simulate(capture_block=320, playback_block=320, phase=phase)
    delays, least = settled(played), floor(320, 320, phase, 0.006 + LEAD)
    assert least - 1e-9 <= min(delays) and max(delays) <= least + STEP, (min(delays), max(delays))
    assert played.buffer.stats.stretched == 0 and played.buffer.stats.lost == 0 and played.underruns == 0


@pytest.mark.parametrize("phase", [0.0, 0.003, 0.006, 0.009])
def test_ten_ms_blocks_play_at_the_floor_by_sub_frame_steps(phase):
    """10 ms blocks against 13.3 ms frames: arrivals come 10, 10 and 20 ms apart. In whole frames
    playout settles 3.3 ms above the floor at every phase (a frame's first sample lands within its
    callback's block); frames played a few ms shorter take it to within a step of the floor and never
    below it, with nothing concealed and the sound card never short."""
    least = floor(240, 240, phase, 0.006 + LEAD)
    whole = settled(simulate(phase=phase, sub_frame=False))
    played = simulate(phase=phase)
    delays = settled(played)
    assert min(whole) > least + 0.003
    assert least - 1e-9 <= min(delays) and max(delays) <= least + STEP, (min(delays), max(delays))
    assert played.steps.stats.shortened > 0 and played.steps.stats.lengthened == 0
    assert played.buffer.stats.stretched == 0 and played.buffer.stats.lost == 0 and played.underruns == 0


def test_a_decode_that_runs_past_its_deadline_now_and_then_costs_an_expansion_not_every_frame_its_tail():
    """Decodes of 2 ms, one in thirty of 7 ms (a busy machine's tail): the playout sits at the floor the
    median decode allows, not above it by the tail, and each slow decode still running at its deadline
    gets pitch periods in front of it: the card is never short and no frame is concealed. (At this
    phase every frame starts decoding within twice the decode's p95 of its deadline. One that starts
    earlier is awaited in place, as every decode was before: at phases 1-2 ms later a slow decode
    started with 4-7 ms to go left the card short 2-3 times in 6 s.)"""
    slow = np.where(np.arange(1000) % 30 == 7, 0.007, 0.002)
    played = simulate(phase=0.0, decode=slow)
    delays = settled(played)
    assert np.median(delays) <= floor(240, 240, 0.0, 0.006 + 0.002 + LEAD - 0.004) + STEP, np.median(delays)
    assert played.steps.stats.expanded > 0
    assert played.buffer.stats.stretched == 0 and played.buffer.stats.lost == 0 and played.underruns == 0


def test_a_constant_extra_delay_is_taken_back_by_sub_frame_steps_within_two_seconds():
    """A jitter buffer that starts 50 ms deep on a link without jitter: the whole-frame rules take
    back the whole frames, the steps the rest, all within the first two seconds."""
    played = simulate(phase=0.004, initial_delay=0.05)
    delays = settled(played)
    assert max(delays) <= floor(240, 240, 0.004, 0.006 + LEAD) + STEP
    assert played.steps.stats.samples_cut > 0 and played.buffer.stats.stretched == 0


@pytest.mark.parametrize("block,phase", [(240, 0.0), (240, 0.003), (240, 0.006), (240, 0.009), (320, 0.0), (320, 0.003)])
def test_jitter_of_20_ms_p99_plays_within_the_floor_plus_its_p95_with_no_late_frame(block, phase):
    """The emulator's jitter (exponential, 20 ms at the 99th percentile, delivered in order as TCP
    does): the median delay is within the floor (counting the link's median transit, as the benchmark
    does) plus the jitter's 95th percentile (at 320-sample blocks, plus what steps may leave above a
    target: a frame cannot be cut below the block the card needs), and below whole-frame playout at
    10 ms blocks. No frame is late or lost: a frame due and missing gets a few pitch periods of time
    (expanded), and fewer than 0.5 % of the ticks conceal a whole frame (1 % before the expansions)."""
    rng = np.random.default_rng(5)
    jitter = rng.exponential(0.02 / np.log(100), 20 * 75)  # exponential: p99 = 20 ms
    captured = np.array([capture_done(HOP, block, 1, k) / RATE for k in range(len(jitter))])
    transit = np.median(np.maximum.accumulate(captured + jitter) - captured)  # (in order: a bit above the jitter's median)
    played = simulate(capture_block=block, playback_block=block, phase=phase, seconds=20, jitter=jitter)
    stats, frames = played.buffer.stats, len(played.delays)
    target = floor(block, block, phase, 0.006 + transit + LEAD) + np.percentile(jitter, 95)
    assert np.median(settled(played)) <= target + (STEP if block == 320 else 0), (np.median(settled(played)), target)
    assert stats.lost + stats.late == 0 and stats.stretched <= 0.005 * frames and played.steps.stats.expanded > 0, stats
    if block == 240:
        whole = simulate(capture_block=block, playback_block=block, phase=phase, seconds=20, jitter=jitter, sub_frame=False)
        assert np.median(settled(played)) < np.median(settled(whole))
    assert played.underruns == 0


def test_a_frame_that_lands_a_few_ms_after_its_deadline_is_played_after_an_expansion():
    """Frames of a 200 Hz tone on time, then one 3 ms after its tick's deadline: at the deadline the
    jitter buffer says it is missing, the steps play two of the tone's periods (what the card needs,
    rounded up to whole periods) that join the last frame and the next seamlessly, and at the next
    deadline the frame plays: not lost, not late, no whole frame concealed. A second expansion for the
    same gap would pass the bound: the frame is then concealed."""
    jb, steps = JitterBuffer(RATE / HOP, initial_delay=0.0), SubFrameSteps(RATE)
    for k in range(40):
        jb.put(k, (np.zeros(8, np.int64),), now=k * FRAME)
        index, codes = jb.playout(k * FRAME + 0.001)
        steps.scale(tone(index, hz=200.0), slack=steps.margin + 10)
    due = 40 * FRAME + 0.001
    assert jb.missing(due)
    expansion = steps.expand(200)
    assert expansion.shape[-1] == 240  # two periods of 120 samples: the least whole periods >= 200
    joined = np.concatenate([tone(39, hz=200.0), expansion, tone(40, hz=200.0)], axis=-1)
    assert np.max(np.abs(np.diff(joined[0]))) <= 1.01 * np.max(np.abs(np.diff(tone(39, hz=200.0)[0])))
    jb.put(40, (np.zeros(8, np.int64),), now=due + 0.003)
    assert not jb.missing(due + 0.004) and jb.playout(due + 0.010)[0] == 40
    assert (jb.stats.stretched, jb.stats.lost, jb.stats.late) == (0, 0, 0)
    assert steps.stats.expanded == 1 and steps.stats.samples_expanded == 240
    assert steps.expand(200) is not None and steps.expand(200) is None  # 480 samples: the 20 ms bound
    steps.scale(tone(41, hz=200.0), slack=None)  # a frame was played: the next gap may expand again
    assert steps.expand(200) is not None


def test_a_tick_waits_for_its_frame_until_its_deadline_only():
    """``until_due`` returns as soon as the frame due lands, and at the deadline if it does not."""
    class Receiver:
        def __init__(self):
            self.here = False

        def waiting(self, now):
            return not self.here

    async def run():
        loop = asyncio.get_running_loop()
        receiver, arrived = Receiver(), asyncio.Event()

        def land():
            receiver.here = True
            arrived.set()
        alarm = Alarm(loop, loop.time)
        start = loop.time()
        loop.call_later(0.05, land)
        woke_late = await until_due(receiver, arrived, start + 5.0, loop.time, alarm)
        landed = loop.time() - start
        receiver.here = False
        start = loop.time()
        late = await until_due(receiver, arrived, start + 0.05, loop.time, alarm)
        passed = await until_due(receiver, arrived, start, loop.time, alarm)
        alarm.close()
        return landed, woke_late, loop.time() - start, late, passed
    landed, woke_late, gave_up, late, passed = asyncio.run(run())
    assert 0.05 <= landed < 5.0 and woke_late is None  # the frame came: nothing to say of the loop's timers
    assert gave_up >= 0.05 and 0 <= late <= gave_up - 0.05  # how late the loop woke it
    assert passed is None  # a deadline already past: no wait, no wake-up measured


def test_a_decode_is_waited_for_until_its_deadline_only_and_runs_on():
    """``until_done`` returns ``None`` once the decode is done, and at the deadline (how late the loop
    woke) while it still runs: the decode is not cancelled, its frame plays after an expansion."""
    async def run():
        loop = asyncio.get_running_loop()
        alarm = Alarm(loop)
        quick = asyncio.ensure_future(asyncio.sleep(0.01, "quick"))
        done = await until_done(quick, time.monotonic() + 5.0, time.monotonic, alarm)
        slow = asyncio.ensure_future(asyncio.sleep(0.2, "slow"))
        start = time.monotonic()
        late = await until_done(slow, start + 0.05, time.monotonic, alarm)
        waited, running = time.monotonic() - start, not slow.done()
        alarm.close()
        return done, quick.result(), late, waited, running, await slow
    done, quick, late, waited, running, slow = asyncio.run(run())
    assert done is None and quick == "quick"
    assert late is not None and 0.05 <= waited < 0.2 and late >= 0 and running and slow == "slow"


def test_a_tick_takes_the_95th_percentile_of_the_tick_durations_to_decode():
    lead = Lead(initial=0.006, margin=0.001, measured=8)
    assert lead.decoding == 0.006
    for ms in [2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 9]:
        lead.note(ms / 1000)
    assert lead.decoding == pytest.approx(np.percentile([2] + [3] * 18 + [9], 95) / 1000)
    assert lead.seconds == 0.001  # the decode is not reserved: only the loop's wake-up is


def test_lead_counts_the_measured_wake_up_scatter_instead_of_a_fixed_margin():
    """Until 8 wake-ups at a deadline are known the margin (1.5 ms) stands for the loop's scatter;
    then their 95th percentile does, but never less than 0.5 ms."""
    lead = Lead(initial=0.006, margin=0.0015, measured=8, least=0.0005)
    for _ in range(20):
        lead.note(0.003)
    assert lead.seconds == pytest.approx(0.0015)
    for ms in [0.2, 0.9, 0.4, 0.6, 0.1, 0.8, 0.3, 0.7, 0.5, 1.0]:
        lead.woke(ms / 1000)
    assert lead.seconds == pytest.approx(np.percentile([0.2, 0.9, 0.4, 0.6, 0.1, 0.8, 0.3, 0.7, 0.5, 1.0], 95) / 1000)
    for _ in range(64):
        lead.woke(0.0)
    assert lead.seconds == pytest.approx(0.0005)


def test_a_tick_is_due_only_when_a_tick_at_the_next_callback_could_not_decode_in_time():
    lead = Lead(initial=0.004, margin=0.001)  # 4 ms to decode, 1 ms for the loop to wake
    assert tick_deadline(runs_short_at=1.010, next_callback=1.010, lead=lead) == pytest.approx(1.009)
    assert tick_deadline(runs_short_at=1.020, next_callback=1.010, lead=lead) is None
    # A decoder slower than a block: the tick must run a block ahead.
    assert tick_deadline(runs_short_at=1.020, next_callback=1.010, lead=Lead(initial=0.012, margin=0.001)) \
        == pytest.approx(1.019)


def test_the_jitter_buffer_says_what_is_worth_waiting_for():
    jb = JitterBuffer(RATE / HOP, initial_delay=0.02)
    assert not jb.waiting(0.0)  # nothing yet: no stream to wait for
    jb.put(0, (np.zeros(8, np.int64),), now=0.0)
    assert not jb.waiting(0.01)  # the first fill: playout waits by the clock, not for a frame
    assert jb.playout(0.03)[0] == 0
    assert jb.waiting(0.031)  # frame 1 is due next and has not come
    jb.put(1, (np.zeros(8, np.int64),), now=0.032)
    assert not jb.waiting(0.032)
    jb.end(2)
    assert jb.playout(0.04)[0] == 1 and not jb.waiting(0.05)


def test_the_jitter_buffer_says_when_its_frame_landed_and_how_far_it_moved_the_delay():
    """What the sub-frame steps measure from: the landing time of the frame a tick plays, none for a
    stretch (the delay then grows by a frame), and the frames a skip moved the delay back."""
    jb = JitterBuffer(RATE / HOP, initial_delay=0.0)
    jb.put(0, (np.zeros(8, np.int64),), now=0.001)
    assert jb.playout(0.002)[0] == 0 and (jb.arrival, jb.moved) == (0.001, 0)
    assert jb.playout(0.003) == (STRETCH, None) and (jb.arrival, jb.moved) == (None, 1)
    jb, ticks = JitterBuffer(RATE / HOP, initial_delay=0.0), []
    jb.put(0, (np.zeros(8, np.int64),), now=0.001)
    for k in range(1, 100):  # frames on time, each played once the next one is there: a frame too many
        jb.put(k, (np.zeros(8, np.int64),), now=k * FRAME + 0.001)
        index = jb.playout(k * FRAME + 0.002)[0]
        ticks.append((index, jb.moved, jb.arrival))
    skips = [(index, arrival) for index, moved, arrival in ticks if moved == -1]
    assert len(skips) == 1 and skips[0][1] == pytest.approx(skips[0][0] * FRAME + 0.001)
    assert all(moved == 0 and arrival == pytest.approx(index * FRAME + 0.001)
               for index, moved, arrival in ticks if moved != -1)
