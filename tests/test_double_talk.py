"""The double-talk path's bulk-delay finder (``call.double_talk._BulkDelay``), on signals whose delay is known."""

import numpy as np

from call.double_talk import DELAY_MARGIN_SECONDS, ECHO_CERTAIN, ECHO_HEARD, HEADSET_WINDOWS, Headset, _BulkDelay

RATE, CHUNK = 24000, 240


def fed(bulk: _BulkDelay, captured: np.ndarray, played: np.ndarray) -> _BulkDelay:
    for start in range(0, len(played), CHUNK):
        bulk.delayed(captured[start:start + CHUNK, None], played[start:start + CHUNK, None])
    return bulk


def test_finds_the_echo_delay_less_its_margin():
    played = np.random.default_rng(0).standard_normal(2 * RATE).astype(np.float32) * 0.1
    delay = round(0.1 * RATE)
    captured = 0.5 * np.concatenate([np.zeros(delay, np.float32), played[:-delay]])
    bulk = fed(_BulkDelay(RATE, 1), captured, played)
    assert bulk.find() >= ECHO_CERTAIN
    bulk.take()
    assert bulk.samples == delay - round(DELAY_MARGIN_SECONDS * RATE)


def test_a_silent_microphone_finds_nothing_and_keeps_no_delay():
    played = np.random.default_rng(1).standard_normal(RATE).astype(np.float32) * 0.1
    bulk = fed(_BulkDelay(RATE, 1), np.zeros_like(played), played)
    assert bulk.find() is None
    assert bulk.samples == 0


def test_a_microphone_that_does_not_hear_the_speaker_shows_no_echo():
    rng = np.random.default_rng(2)
    played, near = (rng.standard_normal(2 * RATE).astype(np.float32) * 0.1 for _ in range(2))
    bulk = fed(_BulkDelay(RATE, 1), near, played)  # headphones: the near end alone
    assert bulk.find() < ECHO_HEARD


def test_headphones_are_told_by_half_seconds_without_echo_and_never_after_a_clear_one():
    headset = Headset()
    for _ in range(HEADSET_WINDOWS - 1):
        headset.listened(4.0)
    assert not headset.on
    headset.listened(5.0)
    assert headset.on
    headset.listened(ECHO_HEARD)  # a window that hears the echo: a loudspeaker after all
    assert not headset.on
    loudspeaker = Headset()
    loudspeaker.listened(ECHO_CERTAIN)
    for _ in range(3 * HEADSET_WINDOWS):
        loudspeaker.listened(4.0)  # double talk can hide a loudspeaker's echo for a while
    assert not loudspeaker.on
