"""The latency floor of a call's configuration (benchmarks/latency_floor.py), against cases worked by hand."""

import numpy as np
import pytest

from benchmarks.latency_floor import (call_floor_ms, capture_done, floor_samples, oracle_ms, playback_phase,
                                       spare_samples)


def test_frame_aligned_blocks_in_phase_cost_two_frames():
    # Frame k is captured by sample 320 (k + 1), ready 120 samples later; the callback at 320 (k + 2)
    # is the first to find it: 640 samples (26.7 ms) after its first sample.
    assert floor_samples(320, 320, processing=120, phase=0) == 640


def test_a_playback_clock_just_after_the_audio_is_ready_costs_one_frame_and_the_processing():
    assert floor_samples(320, 320, processing=120, phase=120) == 320 + 120
    assert floor_samples(320, 320, processing=120, phase=121) == 320 + 121


def test_ten_ms_blocks_wait_for_the_block_that_completes_a_frame():
    # Blocks of 240 end at 480, 720, 960 for frames ending at 320, 640, 960; +120 and rounded up to
    # the next callback: 720, 960, 1200, minus the frames' starts 0, 320, 640: the worst is 720.
    assert floor_samples(320, 240, processing=120, phase=0) == 720


def test_frames_per_packet_wait_for_the_packets_last_frame():
    assert floor_samples(320, 320, processing=120, phase=0, frames_per_packet=2) == 960


def test_call_floor_adds_the_lookahead_and_averages_the_directions():
    stages = {"encode": {"p50": 3.0}, "network": {"p50": 1.0}, "decode": {"p50": 1.0}, "lookahead": {"p50": 6.5}}
    spec = {"block": 240, "frames_per_packet": 1}
    # 5 ms = 120 samples of processing, as above: 30 ms, in both directions.
    assert call_floor_ms(spec, stages, [0.0, 0.0], 24000, 320) == pytest.approx(36.5)


def test_playback_phase_is_the_sink_clock_modulo_a_block():
    assert playback_phase(10.0, 10.0 + 3 * 0.01 + 100 / 24000, 240, 24000) == pytest.approx(100)


def test_the_spare_is_how_long_before_its_callback_the_frame_that_sets_the_floor_is_ready():
    # 10 ms blocks, 120 samples of processing: frame 0 is ready at 600 (its capture block ends at 480),
    # frames 1 and 2 at 520 and 440 after their first samples; the callback at 720 plays frame 0 first:
    # 120 samples (5 ms) spare. A playback clock 200 samples later plays it at 680: 80 spare.
    assert spare_samples(320, 240, processing=120, phase=0) == 120
    assert spare_samples(320, 240, processing=120, phase=200) == 80
    # Keeping the spare and a sample more beyond the medians costs the whole block: every frame 240 later.
    assert floor_samples(320, 240, processing=120 + 120, phase=0) == 720
    assert floor_samples(320, 240, processing=120 + 121, phase=0) == 720 + 240


def test_call_spare_is_per_direction_without_the_lookahead():
    stages = {"encode": {"p50": 3.0}, "network": {"p50": 1.0}, "decode": {"p50": 1.0}, "lookahead": {"p50": 6.5}}
    spec = {"block": 240, "frames_per_packet": 1}
    assert call_floor_ms(spec, stages, [200.0], 24000, 320, spare_samples) == pytest.approx(80 / 24)


def test_the_oracle_is_the_floor_when_every_frame_takes_the_median_and_a_block_more_when_a_tenth_are_late():
    """Frames that all take 5 ms from capture to decoded audio need exactly the floor; when one in
    nine, all of them frames that set the floor (the first of each three), takes 6 ms more, 95 % of
    the frames in time need the next callback for those: the oracle moves a whole block (10 ms) while
    the medians, and so the floor, do not move at all."""
    k = np.arange(300)
    stages = {"index": k.tolist(), "packetize": [0.0] * 300, "network": [0.001] * 300, "decode": [0.001] * 300,
              "lookahead": [0.0] * 300,
              "input": [(capture_done(320, 240, 1, i) - i * 320) / 24000 for i in k]}
    stages["encode"] = [0.003] * 300
    floor_ms = floor_samples(320, 240, processing=120, phase=0) / 24
    assert oracle_ms(stages, 0.0, 240, 24000, 320) == pytest.approx(floor_ms)
    stages["encode"] = [0.003 + (0.006 if i % 9 == 0 else 0.0) for i in k]
    assert oracle_ms(stages, 0.0, 240, 24000, 320) == pytest.approx(floor_ms + 10.0)
    assert oracle_ms(stages, 0.0, 240, 24000, 320, percentile=85) == pytest.approx(floor_ms)
