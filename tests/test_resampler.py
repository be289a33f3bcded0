"""The sound card's resampling: band-limited (no aliasing from a 48 kHz microphone), the same
whatever the device's block size, and no sample lost or added over a long run."""

import sys
import types

import numpy as np
import pytest

from call.resample import Resampler, WholeFactorResampler, device_resampler
from call.sound_card import Microphone, Speaker, capture_blocksize

RATE, DEVICE_RATE = 24000, 48000


class IdleStream:
    """A sounddevice stream that never calls back: the test feeds the callback itself."""

    def __init__(self, samplerate, channels, dtype, blocksize, device, callback):
        self.samplerate, self.blocksize, self.callback = samplerate, blocksize, callback


def device_at_48k():
    """A sounddevice stand-in whose devices refuse the model's 24 kHz and run at 48 kHz."""
    module = types.ModuleType("sounddevice")

    def check(device=None, samplerate=None, channels=None):
        if samplerate != DEVICE_RATE:
            raise ValueError("Invalid sample rate")

    module.check_input_settings = module.check_output_settings = check
    module.query_devices = lambda device=None, kind=None: {"default_samplerate": float(DEVICE_RATE)}
    module.InputStream = module.OutputStream = IdleStream
    return module


def tone(frequency: float, seconds: float, rate: int) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * frequency * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def level_db(signal: np.ndarray, reference: float) -> float:
    return 20 * np.log10(np.sqrt(np.mean(signal**2)) / reference)


async def captured(monkeypatch, signal: np.ndarray) -> np.ndarray:
    """What a 48 kHz microphone's ``read()`` gives the call at 24 kHz, fed in the device's blocks."""
    monkeypatch.setitem(sys.modules, "sounddevice", device_at_48k())
    microphone = Microphone(RATE, 1, frame_samples=320, seconds=4.0)
    block = capture_blocksize(DEVICE_RATE, RATE, 320)
    assert microphone.device_rate == DEVICE_RATE and microphone.stream.blocksize == block == 640
    out = []
    for start in range(0, len(signal) - block + 1, block):
        microphone._callback(signal[start : start + block, None], block, None, None)
        if start // block % 5 == 4:  # the event loop reads after a few callbacks, as a busy one does
            out.append(await microphone.read())
    return np.concatenate(out, axis=-1)[0]


@pytest.mark.parametrize("frequency, low, high", [(15000, None, -40.0), (1000, -0.5, 0.5)],
                         ids=["15kHz-removed", "1kHz-passes"])
async def test_capture_at_48k_does_not_alias(monkeypatch, frequency, low, high):
    heard = await captured(monkeypatch, tone(frequency, 2.0, DEVICE_RATE))
    steady = heard[RATE // 10 :]  # past the resampler's start
    gain = level_db(steady, 0.5 / np.sqrt(2))
    print(f"\n{frequency} Hz at 48 kHz → 24 kHz: {gain:.2f} dB")
    # Measured: 15 kHz −82 dB with the whole-factor FIR (−146 dB with libsoxr LQ; it would fold to 9 kHz at
    # full level without a filter), 1 kHz −0.00 dB.
    assert (low is None or gain >= low) and gain <= high


def test_block_sizes_do_not_matter():
    signal = np.random.default_rng(0).normal(0, 0.3, (DEVICE_RATE * 3, 1)).astype(np.float32)
    whole = Resampler(DEVICE_RATE, RATE, 1)
    one_shot = np.concatenate([whole(signal), whole.flush()])
    blocks = Resampler(DEVICE_RATE, RATE, 1)
    streamed = np.concatenate([blocks(signal[i : i + 480]) for i in range(0, len(signal), 480)] + [blocks.flush()])
    assert streamed.shape == one_shot.shape == (RATE * 3, 1)
    # Measured: identical up to float rounding (max difference ~1e-7).
    assert np.abs(streamed - one_shot).max() < 1e-5


@pytest.mark.parametrize("rate_in, rate_out, block", [(48000, 24000, 480), (24000, 48000, 240),
                                                      (44100, 24000, 441), (16000, 24000, 160)])
def test_a_long_run_loses_no_sample(rate_in, rate_out, block):
    resample = Resampler(rate_in, rate_out, 2)
    seconds, given, taken, lag = 60, 0, 0, []
    chunk = np.zeros((block, 2), np.float32)
    for _ in range(seconds * rate_in // block):
        taken += len(resample(chunk))
        given += block
        lag.append(given * rate_out / rate_in - taken)
    taken += len(resample.flush())
    assert taken == seconds * rate_out  # the output's length follows the ratio exactly
    # What is held back at any moment stays bounded (about one block of libsoxr): it does not grow.
    assert max(lag[len(lag) // 2 :]) <= max(lag[: len(lag) // 2]) + 1
    assert max(lag) < 0.05 * rate_out


async def test_speaker_at_48k_gets_the_call_resampled(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", device_at_48k())
    speaker = Speaker(RATE, 1, seconds=4.0)
    signal = tone(1000, 2.0, RATE)
    for start in range(0, len(signal), 320):
        speaker.write(signal[None, start : start + 320])
    played = np.empty((speaker.ring.available, 1), np.float32)
    speaker.ring.read_into(played)
    assert abs(len(played) - 2 * len(signal)) < 0.05 * DEVICE_RATE  # the rest is still in the resampler
    assert abs(level_db(played[DEVICE_RATE // 10 :, 0], 0.5 / np.sqrt(2))) < 0.5


@pytest.mark.parametrize("rate_in, rate_out, block", [(48000, 24000, 480), (24000, 48000, 240), (96000, 24000, 960)])
def test_a_whole_factor_holds_nothing_back(rate_in, rate_out, block):
    """A device at a whole multiple of the model's rate: the short FIR gives out every block whole at
    once (a frame a block completes need not wait for the next one), delayed by the filter's half
    length (0.7 ms at 48 kHz, where libsoxr's LQ held 11 ms on average and 20 at most), loses none over
    a long run, and does not depend on the block size."""
    resample = device_resampler(rate_in, rate_out, 2)
    assert isinstance(resample, WholeFactorResampler)
    given = taken = 0
    lag = []
    chunk = np.random.default_rng(1).normal(0, 0.3, (block, 2)).astype(np.float32)
    for _ in range(10 * rate_in // block):
        taken += len(resample(chunk))
        given += block
        lag.append(given * rate_out / rate_in - taken)
    assert max(lag) == 0
    assert len(resample.flush()) == resample.lag and resample.lag / rate_out < 0.001
    impulse = np.zeros((block, 1), np.float32)
    impulse[0] = 1.0
    response = WholeFactorResampler(rate_in, rate_out, 1)(impulse)[:, 0]
    assert abs(int(np.argmax(np.abs(response))) - resample.lag) <= 1  # the content comes `lag` late
    signal = np.random.default_rng(0).normal(0, 0.3, (rate_in, 1)).astype(np.float32)
    whole, blocks = WholeFactorResampler(rate_in, rate_out, 1), WholeFactorResampler(rate_in, rate_out, 1)
    one_shot = np.concatenate([whole(signal), whole.flush()])
    streamed = np.concatenate([blocks(signal[i : i + 441]) for i in range(0, len(signal), 441)] + [blocks.flush()])
    assert np.abs(streamed - one_shot).max() < 1e-5


def test_other_rates_keep_libsoxr():
    assert isinstance(device_resampler(44100, 24000, 1), Resampler)
