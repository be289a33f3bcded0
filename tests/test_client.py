"""The client's device path with sounddevice faked at its boundary, and its small parts."""

import asyncio
import sys
import threading
import time
import types

import numpy as np
import pytest

from client import CallError, Client, Options, Outbox, main
from server import Relay
from call.sound_card import AudioDeviceError, LinearResampler, Ring
from tests.models import small_model


class FakeStream:
    """Calls the callback from a thread every 10 ms, like PortAudio's audio thread."""

    def __init__(self, samplerate, channels, dtype, blocksize, device, callback, signal=None):
        self.rate, self.channels, self.blocksize = samplerate, channels, blocksize
        self.callback, self.signal = callback, signal
        self.position = 0
        self.running = False
        self.played = []

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buffer = np.zeros((self.blocksize, self.channels), dtype=np.float32)
        while self.running:
            if self.signal is not None:  # microphone
                t = (self.position + np.arange(self.blocksize)) / self.rate
                buffer[:, 0] = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))
                self.callback(buffer, self.blocksize, None, None)
            else:  # speaker
                self.callback(buffer, self.blocksize, None, None)
                self.played.append(buffer.copy())
            self.position += self.blocksize
            time.sleep(self.blocksize / self.rate)

    def stop(self):
        self.running = False
        self.thread.join()

    def close(self):
        pass


def fake_sounddevice(rates_refused=()):
    """A module object standing in for sounddevice; records the streams it opened."""
    module = types.ModuleType("sounddevice")
    module.opened = []

    def check(device=None, samplerate=None, channels=None):
        if samplerate in rates_refused:
            raise ValueError("Invalid sample rate")

    def stream(signal):
        def open_stream(**kwargs):
            opened = FakeStream(signal=signal, **kwargs)
            module.opened.append(opened)
            return opened
        return open_stream

    module.InputStream = stream(signal=True)
    module.OutputStream = stream(signal=None)
    module.check_input_settings = module.check_output_settings = check
    module.query_devices = lambda device=None, kind=None: {"default_samplerate": 48000.0} if kind else "0 fake"
    return module


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.mark.parametrize("refused", [(), (24000,)], ids=["model-rate", "device-resamples"])
async def test_microphone_to_speaker_call(model, monkeypatch, refused):
    sd = fake_sounddevice(refused)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    relay = Relay()
    server = await relay.start("127.0.0.1", 0).__aenter__()
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    alice = Client(Options(server=url, room="call", status=False), model)
    bob = Client(Options(server=url, room="call", status=False), model)
    calls = [asyncio.create_task(c.run()) for c in (alice, bob)]
    await asyncio.sleep(1.5)
    status = bob.status.line()
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    server.close()
    speakers = [s for s in sd.opened if s.signal is None]
    assert len(speakers) == 2 and all(s.rate == (48000 if refused else 24000) for s in sd.opened)
    # Capture blocks are one codec frame (320 samples at 24 kHz, 640 at 48 kHz); playback blocks 10 ms.
    microphones = [s for s in sd.opened if s.signal is not None]
    assert {s.blocksize for s in microphones} == {640 if refused else 320}
    assert {s.blocksize for s in speakers} == {480 if refused else 240}
    heard = [np.concatenate(s.played)[:, 0] for s in speakers]
    assert all(np.abs(h).max() > 1e-3 for h in heard), "a peer heard nothing"
    assert "loss 0.0%" in status and "kbps" in status


def test_missing_portaudio_gives_a_clear_message(monkeypatch):
    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    try:
        import sounddevice  # noqa: F401
    except OSError:
        pass
    else:
        pytest.skip("PortAudio is installed here")
    with pytest.raises(SystemExit, match="libportaudio2"):
        main(["--list-devices"])


async def test_wrong_token_is_a_clear_error(model):
    relay = Relay(token="right")
    server = await relay.start("127.0.0.1", 0).__aenter__()
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    client = Client(Options(server=url, room="r", output="/dev/null", token="wrong", status=False), model)
    with pytest.raises(CallError, match="401"):
        await asyncio.wait_for(client.run(), 10)
    server.close()


async def test_outbox_drops_oldest_audio_only_when_lossy():
    lossy = Outbox(capacity=2, lossy=True)
    for message in (b"\x80\x01", b"\x80\x02", b"\x80\x03"):
        await lossy.put(message)
    assert list(lossy.queue) == [b"\x80\x02", b"\x80\x03"] and lossy.dropped == 1
    patient = Outbox(capacity=1, lossy=False)
    await patient.put(b"\x80\x01")
    waiting = asyncio.create_task(patient.put(b"\x80\x02"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    patient.pop()
    await waiting
    assert list(patient.queue) == [b"\x80\x02"]


def test_ring_wraps_and_pads_with_zeros():
    ring = Ring(4, 1)
    assert ring.write(np.ones((3, 1))) == 0
    out = np.empty((2, 1), np.float32)
    ring.read_into(out)
    assert ring.write(np.full((4, 1), 2.0)) == 1  # one sample did not fit
    out = np.empty((5, 1), np.float32)
    assert ring.read_into(out) == 4
    assert out[:, 0].tolist() == [1, 2, 2, 2, 0]


def test_linear_resampler_keeps_the_rate_across_blocks():
    resample = LinearResampler(48000, 24000)
    signal = np.sin(np.arange(48000) / 48000 * 2 * np.pi * 100)[:, None].astype(np.float32)
    out = np.concatenate([resample(signal[i : i + 441]) for i in range(0, 48000, 441)])
    assert abs(len(out) - 24000) <= 1
    expected = np.sin(np.arange(len(out)) / 24000 * 2 * np.pi * 100)
    assert np.abs(out[1:, 0] - expected[1:]).max() < 0.01


def test_capture_blocks_are_one_frame_where_the_device_rate_allows():
    from call.sound_card import capture_blocksize

    assert capture_blocksize(24000, 24000, 320) == 320
    assert capture_blocksize(44100, 24000, 320) == 588
    assert capture_blocksize(16000, 24000, 320) == 160  # 213.3 samples: not a whole block, so 10 ms
    assert capture_blocksize(48000, 24000, None) == 480
