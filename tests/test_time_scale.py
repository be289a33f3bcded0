"""Sub-frame playout steps (``call.time_scale``): a frame played a pitch period shorter or longer
keeps its pitch and has no step in its waveform; the policy cuts the delay the frames do not need
and counts what it cut."""

import numpy as np
import pytest

from call.time_scale import SubFrameSteps, best_lag, continuation, lengthen, sample_slack, shorten

RATE, HOP = 24000, 320


def tone(hz: float, start: int, n: int = HOP) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * (start + np.arange(n)) / RATE)).astype(np.float32)[None]


def pitch(audio: np.ndarray) -> float:
    """Frequency from the mean spacing of upward zero crossings (interpolated)."""
    x = audio[0].astype(float)
    i = np.flatnonzero((x[:-1] < 0) & (x[1:] >= 0))
    crossings = i + x[i] / (x[i] - x[i + 1])
    return RATE / float(np.mean(np.diff(crossings)))


def largest_step(audio: np.ndarray) -> float:
    return float(np.max(np.abs(np.diff(audio[0]))))


@pytest.mark.parametrize("hz", [150.0, 200.0, 220.0, 310.0])
@pytest.mark.parametrize("step", [shorten, lengthen])
def test_a_scaled_tone_keeps_its_pitch_and_has_no_step(hz, step):
    """Three frames of a tone with the middle one shortened or lengthened by its best lag: the pitch
    is the tone's within 1 % (resampling the frame to that length would move it 3-12 %) and no
    sample-to-sample step is larger than the tone's own largest by more than 5 %."""
    frame = tone(hz, HOP)
    lag = best_lag(frame, 36, HOP // 2)
    scaled = step(frame, lag)
    assert scaled.shape[-1] == HOP + (lag if step is lengthen else -lag)
    played = np.concatenate([tone(hz, 0), scaled, tone(hz, 2 * HOP)], axis=-1)
    assert largest_step(played) <= 1.05 * largest_step(tone(hz, 0, 3 * HOP))
    long = tone(hz, 0, 4 * HOP)  # (a frame holds too few periods to time the pitch well)
    assert pitch(step(long, best_lag(long, 36, HOP // 2))) == pytest.approx(hz, rel=0.01)


def test_the_best_lag_of_a_tone_is_its_period():
    assert best_lag(tone(200.0, 0), 36, 160) == 120  # 24000 / 200
    assert best_lag(tone(310.0, 0), 36, 160) == 155  # two periods (77.4 samples each): the longer step
    assert best_lag(np.zeros((1, HOP), np.float32), 36, 160) == 160  # silence: any step, the longest


def test_slack_counts_the_offset_within_the_block_and_whole_blocks_of_time():
    # Came 12 ms before its tick had to start, first sample 100 samples into a 240-sample block.
    assert sample_slack(due=1.012, arrived=1.0, offset=100, block=240, rate=RATE) == 100 + 240
    assert sample_slack(due=1.005, arrived=1.0, offset=100, block=240, rate=RATE) == 100
    assert sample_slack(due=1.0, arrived=1.002, offset=100, block=240, rate=RATE) == 100 - 240


def test_frames_at_the_target_pass_through_untouched():
    steps = SubFrameSteps(RATE)
    frame = tone(200.0, 0)
    for _ in range(100):
        assert steps.scale(frame, slack=steps.margin + 10) is frame
    assert steps.stats.shortened == steps.stats.lengthened == 0


def test_an_excess_is_cut_once_and_counted():
    """Frames that come 200 samples earlier than needed, every tick: the steps cut about those 200
    samples (less the margin) over the next ticks and stop; each cut moves the later frames, so
    nothing is cut twice. A stretch of the jitter buffer (a whole frame more) is cut again."""
    steps = SubFrameSteps(RATE)
    cut = 0
    for k in range(200):
        out = steps.scale(tone(200.0, k * HOP), slack=200 - cut)
        cut += HOP - out.shape[-1]
    assert 200 - steps.margin - steps.low < cut <= 200 - steps.margin
    assert steps.stats.samples_cut == cut and steps.stats.shortened >= 2
    before = cut
    for k in range(200):
        moved = 1 if k == 0 else 0
        out = steps.scale(tone(200.0, k * HOP), slack=200 + HOP - cut, moved=moved)
        cut += HOP - out.shape[-1]
    assert cut - before == pytest.approx(HOP, abs=steps.low)


def test_frames_that_come_later_than_the_target_allows_are_lengthened():
    steps = SubFrameSteps(RATE)
    added = 0
    for k in range(100):
        out = steps.scale(tone(200.0, k * HOP), slack=-100 + added)
        added += out.shape[-1] - HOP
    assert steps.stats.lengthened >= 1 and steps.stats.samples_added == added >= 100 + steps.margin


@pytest.mark.parametrize("hz", [110.0, 150.0, 220.0, 310.0])
def test_an_expansion_repeats_whole_periods_that_join_the_frames_around_it(hz):
    """A frame due and missing: what the steps play instead is whole pitch periods of the last audio,
    at least what the card needs, and the tone runs on through it with no step larger than its own
    (within 5 %) on either side, though a period of 77.4 samples repeated as 77 leaves 0.4 of a sample
    of phase at each repetition (13 % more than the tone's largest step, joined as it is)."""
    steps = SubFrameSteps(RATE)
    for k in range(3):
        steps.scale(tone(hz, k * HOP), slack=None)
    expansion = steps.expand(100)
    lag = best_lag(np.concatenate([tone(hz, HOP), tone(hz, 2 * HOP)], axis=-1)[:, ::-1], *steps.pitch, longest=False)
    assert expansion.shape[-1] % lag == 0 and 100 <= expansion.shape[-1] < 100 + lag
    assert abs(lag * hz / RATE - round(lag * hz / RATE)) < 0.02  # a whole number of the tone's periods
    played = np.concatenate([tone(hz, 2 * HOP), expansion, tone(hz, 3 * HOP)], axis=-1)
    assert largest_step(played) <= 1.05 * largest_step(tone(hz, 0, 3 * HOP))
    repeated = continuation(tone(hz, 0), lag, 2 * lag)
    assert np.array_equal(repeated[:, lag // 2:lag], tone(hz, 0)[:, -lag + lag // 2:])  # the period itself
    assert np.array_equal(repeated[:, lag:], repeated[:, :lag])  # repeated whole


def test_an_expansion_is_bounded_and_needs_audio_played_before():
    steps = SubFrameSteps(RATE)
    assert steps.expand(100) is None  # nothing played yet: the frame is concealed
    steps.scale(tone(200.0, 0, 2 * HOP), slack=None)
    added = 0
    while (expansion := steps.expand(100)) is not None:
        added += expansion.shape[-1]
    assert 0 < added <= steps.bound and steps.stats.samples_expanded == added
