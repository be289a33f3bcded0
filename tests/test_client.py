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
from call.sound_card import AudioDeviceError, Ring
from call.front_end import Stages
from codec import load_model
from tests.models import small_model


class FakeStream:
    """Calls the callback from a thread every block, on the clock's schedule, like PortAudio's audio
    thread. A microphone (``voice`` given) captures ``voice(seconds)``."""

    def __init__(self, samplerate, channels, dtype, blocksize, device, callback, voice=None):
        self.rate, self.channels, self.blocksize = samplerate, channels, blocksize
        self.callback, self.voice = callback, voice
        self.position = 0
        self.running = False
        self.played = []

    def start(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buffer = np.zeros((self.blocksize, self.channels), dtype=np.float32)
        started = time.monotonic()
        while self.running:
            if self.voice is not None:  # microphone
                buffer[:, 0] = self.voice((self.position + np.arange(self.blocksize)) / self.rate)
                self.callback(buffer, self.blocksize, None, None)
            else:  # speaker: keeps what it took from the ring (not the zeros of an underrun)
                ring = self.callback.__self__.ring
                before = ring.read
                self.callback(buffer, self.blocksize, None, None)
                self.played.append(buffer[: ring.read - before].copy())
            self.position += self.blocksize
            time.sleep(max(0.0, started + self.position / self.rate - time.monotonic()))

    def stop(self):
        self.running = False
        self.thread.join()

    def close(self):
        pass


class Talker:
    """A voice for a fake microphone: a tone of its own pitch, talking and silent by turns
    (100 ms segments in a random pattern of its own)."""

    def __init__(self, pitch: float, seed: int) -> None:
        self.pitch = pitch
        self.pattern = np.random.default_rng(seed).integers(0, 2, 64).astype(np.float32)

    def talks(self, t):
        return self.pattern[(np.asarray(t) / 0.1).astype(int) % len(self.pattern)]

    def __call__(self, t):
        return 0.3 * np.sin(2 * np.pi * self.pitch * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 * self.talks(t)


def fake_sounddevice(rates_refused=(), voices=()):
    """A module object standing in for sounddevice; records the streams it opened. The n-th
    microphone opened captures ``voices[n]`` (silence when none is given)."""
    module = types.ModuleType("sounddevice")
    module.opened = []

    def check(device=None, samplerate=None, channels=None):
        if samplerate in rates_refused:
            raise ValueError("Invalid sample rate")

    def stream(microphone):
        def open_stream(**kwargs):
            n = len([s for s in module.opened if s.voice is not None])
            voice = (voices[n] if n < len(voices) else lambda t: 0 * t) if microphone else None
            opened = FakeStream(voice=voice, **kwargs)
            module.opened.append(opened)
            return opened
        return open_stream

    module.InputStream = stream(microphone=True)
    module.OutputStream = stream(microphone=False)
    module.check_input_settings = module.check_output_settings = check
    module.query_devices = lambda device=None, kind=None: {"default_samplerate": 48000.0} if kind else "0 fake"
    return module


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def speech_model():
    """The bundled model: it decodes a tone as a tone and silence as silence (a random one's output
    hardly depends on its codes), so what a peer plays shows whose audio it is."""
    return load_model("default").eval()


async def until(condition, timeout=60.0):
    """Wait until ``condition()`` holds (checked every 20 ms)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def band_power(audio, rate, pitch):
    """Power of ``audio`` within 30 Hz of ``pitch``."""
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    frequencies = np.fft.rfftfreq(len(audio), 1 / rate)
    return spectrum[np.abs(frequencies - pitch) < 30].sum()


@pytest.mark.parametrize("refused", [(), (24000,)], ids=["model-rate", "device-resamples"])
async def test_microphone_to_speaker_call(speech_model, monkeypatch, refused):
    """Two peers talk, microphone to speaker through the relay: each one's speaker plays the other's
    voice (its pitch, not its own), frame by frame: loud where the other talked, quiet where it did not."""
    talkers = [Talker(220.0, seed=1), Talker(330.0, seed=2)]
    sd = fake_sounddevice(refused, talkers)
    monkeypatch.setitem(sys.modules, "sounddevice", sd)
    relay = Relay()
    server = await relay.start("127.0.0.1", 0).__aenter__()
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    # The tones are no room's echo: the front end (tests/test_front_end.py) stays out of this call.
    raw = Stages(echo=False, noise=False, gain=False)
    alice = Client(Options(server=url, room="call", status=False, front_end=raw), speech_model)
    bob = Client(Options(server=url, room="call", status=False, front_end=raw), speech_model)
    frame = speech_model.config.hop_length / speech_model.config.sampling_rate
    placed = [[], []]  # per listener: (frame index, where in its speaker's ring the frame's audio went)
    encoded = [[], []]  # per talker: the audio its encoder was given (a busy sender may drop some)
    for n, client in enumerate((alice, bob)):
        def on_decoded(event, stream, first, count, t, n=n):
            if event == "decoded":
                placed[n].append((first, speaker(n).callback.__self__.ring.written))

        def push(audio, n=n, push=client.sender.encoder.push):
            encoded[n].append(audio[0, 0].numpy().copy())
            return push(audio)
        client.receiver.observer = on_decoded
        client.sender.encoder.push = push

    def speaker(n):
        return [s for s in sd.opened if s.voice is None][n]

    def played(n):
        """Frames of the other's talk that listener ``n``'s speaker has played."""
        length = sum(len(block) for block in speaker(n).played)
        return sum(at + round(frame * speaker(n).rate) <= length for _, at in placed[n])

    calls = [asyncio.create_task(alice.run())]
    await until(lambda: len(sd.opened) == 2)  # Alice's microphone and speaker are the first two
    calls.append(asyncio.create_task(bob.run()))
    frames = 120  # 1.6 s of talk heard by each
    await until(lambda: len(sd.opened) == 4 and played(0) >= frames and played(1) >= frames)
    status = bob.status.line()
    for task in calls:
        task.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    server.close()
    speakers = [s for s in sd.opened if s.voice is None]
    microphones = [s for s in sd.opened if s.voice is not None]
    assert len(speakers) == 2 and all(s.rate == (48000 if refused else 24000) for s in sd.opened)
    # Capture blocks are one codec frame (320 samples at 24 kHz, 640 at 48 kHz); playback blocks 10 ms.
    assert {s.blocksize for s in microphones} == {640 if refused else 320}
    assert {s.blocksize for s in speakers} == {480 if refused else 240}
    hop = speech_model.config.hop_length
    talked = []  # per talker and frame: whether it talked (the frame and two either side loud)
    for audio in encoded:
        audio = np.concatenate(audio)
        loud = np.sqrt(np.mean(audio[: len(audio) // hop * hop].reshape(-1, hop) ** 2, axis=1)) > 0.01
        talked.append({k: (loud[k - 2 : k + 3].all(), not loud[k - 2 : k + 3].any()) for k in range(2, len(loud) - 2)})
    for n, (own, other) in enumerate((talkers, talkers[::-1])):
        rate = speakers[n].rate
        heard = np.concatenate(speakers[n].played)[:, 0]
        last = heard[-3 * rate // 2:]  # the last 1.5 s
        pitch = band_power(last, rate, other.pitch) / band_power(last, rate, own.pitch)
        size = round(frame * rate)
        level = {k: np.sqrt(np.mean(heard[at : at + size] ** 2)) for k, at in placed[n] if at + size <= len(heard)}

        def loud_to_quiet(talk):
            """Mean level of the frames heard where ``talk`` says the talker talked over that where
            it was silent (frames within two of a switch left out: the codec smears a switch)."""
            on = [level[k] for k in level if talk.get(k, (False, False))[0]]
            off = [level[k] for k in level if talk.get(k, (False, False))[1]]
            return np.mean(on) / np.mean(off)

        follows, control = loud_to_quiet(talked[1 - n]), loud_to_quiet(talked[n])
        print(f"\nheard {other.pitch:.0f} Hz {pitch:.0f}x stronger than its own {own.pitch:.0f} Hz; "
              f"{len(level)} frames, {follows:.0f}x louder where the other talked than where it was "
              f"silent (split by its own talk instead: {control:.2f}x)")
        # Measured on a busy machine: pitch 23x to 1274x, loudness 18x to 2000x. A peer that heard
        # itself, noise or a steady sound would score about 1 or less on either.
        assert pitch > 5 and follows > 5
    # The status line of a call on a lossless link: every frame arrived, and the bitrate shows.
    print(status)
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


def test_capture_blocks_are_one_frame_where_the_device_rate_allows():
    from call.sound_card import capture_blocksize

    assert capture_blocksize(24000, 24000, 320) == 320
    assert capture_blocksize(44100, 24000, 320) == 588
    assert capture_blocksize(16000, 24000, 320) == 160  # 213.3 samples: not a whole block, so 10 ms
    assert capture_blocksize(48000, 24000, None) == 480
