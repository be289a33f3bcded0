"""A live sender on a busy CPU degrades instead of queueing: stale input is dropped and the
codebook search is shed while encoding is slow, then comes back. Time is the test's clock."""

from __future__ import annotations

import pytest

from call.sender import EncodeBudget, Sender
from tests.models import small_model, speech_like

RATE, HOP = 24000, 320
FRAME = HOP / RATE


class SlowClock:
    """A clock on which every encode of one frame takes ``per_frame`` seconds (set by the test):
    each reading is ``per_frame`` after the one before, and the sender reads it around each encode."""

    def __init__(self) -> None:
        self.now, self.per_frame = 0.0, 0.0

    def __call__(self) -> float:
        self.now += self.per_frame
        return self.now


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_the_budget_sheds_above_half_a_frame_and_restores_below_a_fifth():
    budget = EncodeBudget(FRAME, smoothing=1.0)  # no smoothing: each note decides alone
    assert not budget.note(0.4 * FRAME, 1)
    assert budget.note(0.6 * FRAME, 1) and budget.sheds == 1
    assert budget.note(0.3 * FRAME, 1)  # between the two thresholds: stays shed (no flapping)
    assert not budget.note(0.1 * FRAME, 1)
    assert not budget.note(0.0, 0)  # a push that completed no frame says nothing


async def test_a_slow_encoder_sheds_the_search_and_gets_it_back(model):
    clock = SlowClock()
    sender = Sender(model, executor=None, bandwidth=6.0, search_width=4, live=True, clock=clock)
    audio = speech_like(RATE * 2, RATE, seed=1)[0].numpy()
    widths = []
    for step, start in enumerate(range(0, audio.shape[-1], HOP)):
        clock.per_frame = 0.8 * FRAME if 30 <= step < 80 else 0.05 * FRAME  # a busy second
        await sender.push(audio[:, start : start + HOP])
        widths.append(sender.encoder.search_width)
    assert widths[:30] == [4] * 30
    assert 1 in widths[30:80] and widths[79] == 1
    assert widths[-1] == 4 and sender.budget.sheds == 1


async def test_a_live_sender_drops_what_piled_up_and_a_file_sender_drops_nothing(model):
    audio = speech_like(RATE, RATE, seed=2)[0].numpy()
    live = Sender(model, executor=None, live=True, max_backlog=0.06)
    await live.push(audio)  # a second that piled up behind a stalled encoder
    assert live.dropped_samples == RATE - round(0.06 * RATE) and live.n_samples == round(0.06 * RATE)
    filed = Sender(model, executor=None, live=False)
    packets = await filed.push(audio)
    assert filed.dropped_samples == 0 and len(packets) == RATE // HOP
