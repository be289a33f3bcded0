"""The double-talk path's bulk-delay finder (``call.double_talk._BulkDelay``), on signals whose delay is known."""

import numpy as np

from call.double_talk import DELAY_MARGIN_SECONDS, _BulkDelay

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
    assert bulk.find()
    assert bulk.samples == delay - round(DELAY_MARGIN_SECONDS * RATE)


def test_a_silent_microphone_finds_nothing_and_keeps_no_delay():
    played = np.random.default_rng(1).standard_normal(RATE).astype(np.float32) * 0.1
    bulk = fed(_BulkDelay(RATE, 1), np.zeros_like(played), played)
    assert not bulk.find()
    assert bulk.samples == 0
