"""DTX and comfort noise: the wire message and its version rule, the voice-activity decision, the
jitter buffer's pauses, and a sender and receiver round trip on speech with a pause."""

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from benchmarks import dtx as dtx_benchmark
from call import wire
from call.comfort_noise import ComfortNoiseSource
from call.dtx import Dtx, VoiceActivity, band_powers, level_db
from call.jitter import STRETCH, JitterBuffer
from call.receiver import PeerStream, Receiver
from call.sender import Sender
from streaming import StartMode
from tests.models import small_model, speech_like

RATE, HOP = 24000, 320
PERIOD = HOP / RATE
HEADER = wire.StreamHeader(fingerprint=b"12345678", sample_rate=RATE, channels=1, samples_per_frame=HOP,
                           codebook_nbits=10, max_codebooks=32, stream_id=7, version=wire.DTX_VERSION)
NOISE = wire.ComfortNoise(3, (-50.0,) * 8)


def codes(i):
    return np.full(8, i % 1024, dtype=np.int64)


def audio(i):
    return wire.AudioPacket(i, (codes(i),)).encode(10)


# ----------------------------------------------------------------------- wire


def test_comfort_noise_round_trip_in_eleven_bytes():
    noise = wire.ComfortNoise(16384 + 9, (-40.0, -52.0, -60.0, -127.0, -70.0, -71.0, -72.0, -73.0))
    data = noise.encode()
    assert len(data) == 3 + 8
    assert wire.ComfortNoise.decode(data) == wire.ComfortNoise(9, noise.band_db)


@pytest.mark.parametrize("data", [b"\x06", b"\x06\x00\x01", b"\x06\x40\x00\x10", b"\x06\x00\x00\x80",
                                  b"\x06\x00\x00" + bytes(17)])
def test_malformed_comfort_noise_is_refused(data):
    with pytest.raises(wire.ProtocolError):
        wire.ComfortNoise.decode(data)


def test_a_dtx_stream_declares_version_2_and_comfort_noise_needs_it():
    state = wire.StreamValidator()
    assert state.accept(HEADER.encode()).version == wire.DTX_VERSION
    state.accept(audio(0))
    assert state.accept(wire.ComfortNoise(1, (-50.0,)).encode()) == wire.ComfortNoise(1, (-50.0,))
    # The relay's check: an END long after the last audio is plausible when comfort noise came since.
    for i in range(16, 400, 15):
        state.check(wire.ComfortNoise(i, (-50.0,)).encode())
    state.check(wire.EndOfStream(400, 400 * HOP).encode())

    old = wire.StreamValidator()
    old.accept(wire.StreamHeader(**{**HEADER.__dict__, "version": wire.VERSION}).encode())
    with pytest.raises(wire.ProtocolError, match="version-1 stream"):
        old.accept(NOISE.encode())


def test_a_peer_without_dtx_refuses_the_stream_cleanly(monkeypatch, caplog):
    """A build that speaks only version 1 (played here by narrowing the versions) refuses the DTX
    stream at its HEADER with one line saying why, opens no stream, decodes nothing, and counts
    what follows as out of order: nothing of the stream reaches its speaker as garbage."""
    monkeypatch.setattr(wire, "SUPPORTED_VERSIONS", (wire.VERSION,))
    with pytest.raises(wire.VersionError, match="unsupported protocol version 2 \\(this build speaks 1\\)"):
        wire.StreamHeader.decode(HEADER.encode())
    model = small_model()
    header = wire.StreamHeader(**{**HEADER.__dict__, "fingerprint": model.fingerprint()[:8]})
    receiver = Receiver(model, ThreadPoolExecutor(1))
    with caplog.at_level(logging.ERROR, logger="call"):
        for message in [header.encode(), audio(0), NOISE.encode(), header.encode()]:
            receiver.handle(message, now=0.0)
    assert receiver.streams == {}
    assert receiver.problems == {"other_version": 2, "out_of_order": 2}
    assert [r.getMessage() for r in caplog.records] == [
        "peer None's stream refused: unsupported protocol version 2 (this build speaks 1)"]


# ----------------------------------------------------------------- detection


def test_voice_activity_has_a_hangover_and_resumes_on_the_first_loud_frame():
    vad = VoiceActivity(frame_rate=75, hangover=0.2)
    levels = [-60.0] * 20 + [-30.0] * 10 + [-60.0] * 30 + [-30.0] + [-60.0] * 3
    decisions = [vad.active(level) for level in levels]
    assert decisions[:20] == [True] * 15 + [False] * 5  # a stream starts as if speech had just ended
    assert all(decisions[20:30 + 15])  # speech, then 15 frames (200 ms) of hangover
    assert not any(decisions[45:60])
    assert decisions[60]  # the onset frame itself is sent
    assert all(decisions[61:])  # and the hangover starts again


def test_voice_activity_follows_a_louder_background_and_ignores_digital_silence():
    vad = VoiceActivity(frame_rate=75, hangover=0.0)
    assert [vad.active(level) for level in [-60.0] * 5] == [False] * 5
    # The floor rises 3 dB a second: ten seconds of a steady -35 dB background are no speech.
    assert not [vad.active(-35.0) for _ in range(750)][-1]
    vad = VoiceActivity(frame_rate=75, hangover=0.0)
    assert not any(vad.active(-200.0) for _ in range(5))
    assert not vad.active(-85.0)  # 115 dB above the floor, but below any microphone's noise


def test_band_powers_and_comfort_noise_reproduce_level_and_spectrum():
    rng = np.random.default_rng(0)
    spectrum = np.fft.rfft(rng.standard_normal(HOP * 200))
    spectrum[len(spectrum) // 4:] = 0  # a background below 3 kHz
    background = np.fft.irfft(spectrum) * 0.003
    bands = np.mean([band_powers(background[i * HOP:(i + 1) * HOP]) for i in range(200)], axis=0)
    noise = wire.ComfortNoise(0, tuple(level_db(float(p)) for p in bands))
    source = ComfortNoiseSource(HOP, channels=2, seed=1)
    played = np.concatenate([source.frame(noise) for _ in range(200)], axis=1)
    assert played.shape == (2, 200 * HOP)
    assert abs(level_db(float(np.mean(played[0] ** 2))) - level_db(float(np.mean(background ** 2)))) < 1.0
    heard = np.mean([band_powers(played[0, i * HOP:(i + 1) * HOP]) for i in range(200)], axis=0)
    assert level_db(float(heard[:2].mean())) - level_db(float(heard[4:].mean())) > 30


# --------------------------------------------------------------- jitter buffer


def test_jitter_buffer_plays_a_pause_as_comfort_noise_at_the_pace_of_speech_a_frame_later():
    """In a pause, frames are due a frame after the fastest path would have brought them: the frame
    before an onset comes with it (``call.dtx.PREROLL``) and still finds its turn. Played at the
    pace of speech itself, it came a frame too late (3-4 late frames a direction in a call)."""
    jitter = JitterBuffer(75, initial_delay=PERIOD, min_delay=0.0)
    for i in range(3):
        jitter.put(i, (codes(i),), now=i * PERIOD)
    jitter.put_comfort(NOISE, now=3 * PERIOD)
    played = [jitter.playout(now=t * PERIOD)[0] for t in (1, 2, 2.5)]
    # The pause's first tick stretches its comfort noise; then one frame a tick, never ahead.
    assert jitter.playout(now=3 * PERIOD) == (STRETCH, NOISE)
    assert jitter.playout(now=3.9 * PERIOD) == (STRETCH, NOISE)
    played += [jitter.playout(now=t * PERIOD)[0] for t in range(4, 10)]
    assert played == list(range(9))
    jitter.put(9, (codes(9), codes(10)), now=10 * PERIOD)  # speech resumes at frame 10, frame 9 sent with it
    index, entry = jitter.playout(now=10 * PERIOD)
    assert index == 9 and np.array_equal(entry, codes(9))
    index, entry = jitter.playout(now=11 * PERIOD)
    assert index == 10 and np.array_equal(entry, codes(10))
    assert jitter.playout(now=12 * PERIOD) == (STRETCH, None)  # speech again: a missing frame is no pause
    assert (jitter.stats.comfort, jitter.stats.lost, jitter.stats.late) == (6, 0, 0)


def test_jitter_buffer_pop_gives_a_pause_between_frames_at_once():
    jitter = JitterBuffer(75)
    jitter.put(0, (codes(0),), now=0.0)
    jitter.put_comfort(wire.ComfortNoise(1, (-50.0,)), now=0.0)
    jitter.put(5, (codes(5),), now=0.0)
    entries = jitter.pop(now=0.0)
    assert [i for i, _ in entries] == list(range(6))
    assert all(isinstance(e, wire.ComfortNoise) for _, e in entries[1:5])
    assert (jitter.stats.comfort, jitter.stats.lost) == (4, 0)


# ------------------------------------------------------------------ round trip


@pytest.fixture(scope="module")
def model():
    return small_model()


def speech_with_a_pause(seconds_speech=0.5, seconds_pause=1.0, background=1e-3, seed=0):
    """Speech-like audio, a pause of background noise, speech again: ``(audio, onset sample)``."""
    speech = speech_like(int(seconds_speech * RATE), RATE, seed=seed)[0, 0].numpy()
    pause = np.random.default_rng(seed).standard_normal(int(seconds_pause * RATE)).astype(np.float32) * background
    return np.concatenate([speech, pause, speech]), len(speech) + len(pause)


async def round_trip(model, audio, dtx):
    with ThreadPoolExecutor(1) as pool:
        sender = Sender(model, pool, start=StartMode.IMMEDIATE, dtx=dtx)
        stream = PeerStream(model, sender.header, StartMode.IMMEDIATE)
        messages = [sender.header.encode()]
        for start in range(0, len(audio), 480):
            messages += await sender.push(audio[None, start:start + 480])
        messages += await sender.finish()
        for message in messages:
            stream.accept(message, now=0.0)
        out = np.concatenate([stream.decode(stream.jitter.pop(now=0.0)), stream.flush()], axis=-1)
    return messages, out[0, :stream.output_length()], stream


def test_dtx_round_trip_sends_comfort_noise_in_the_pause_and_resumes_on_the_onset(model):
    audio, onset = speech_with_a_pause()
    messages, out, stream = asyncio.run(round_trip(model, audio, dtx=True))
    plain, plain_out, _ = asyncio.run(round_trip(model, audio, dtx=False))
    assert len(out) == len(plain_out) == len(audio)
    comfort = [wire.ComfortNoise.decode(m) for m in messages if m[0] == wire.COMFORT_NOISE]
    assert len(messages) < 0.7 * len(plain)
    # One comfort noise every 15 frames (200 ms) of the pause, none in speech.
    assert [c.index for c in comfort] == list(range(comfort[0].index, comfort[0].index + 15 * len(comfort), 15))
    pause_frames = onset // HOP - (len(audio) - onset) // HOP
    assert 4 <= len(comfort) <= pause_frames // 15 + 1
    # The background's level travels: -60 dB full scale, in each of the 8 bands.
    assert all(abs(db + 60) <= 2 for c in comfort for db in c.band_db)
    # Speech resumes on the frame the onset lies in, with the frame before it.
    packets = [wire.AudioPacket.layout(m, 10, 32)[0] for m in messages[1:-1] if m[0] & wire.AUDIO_FLAG]
    assert onset // HOP - 1 <= min(i for i in packets if i > comfort[-1].index) <= onset // HOP
    # The receiver played the pause as noise at the background's level, and lost nothing.
    assert stream.jitter.stats.lost == 0 and stream.jitter.stats.comfort > 0
    middle = out[(comfort[1].index) * HOP:(comfort[-1].index) * HOP]
    assert abs(level_db(float(np.mean(middle ** 2))) + 60) < 2
    # Speech itself is what the codec makes of it without DTX, apart from the decoder's state at the onset.
    tail = slice(onset + 4 * HOP, len(audio))
    error = np.mean((out[tail] - plain_out[tail]) ** 2) / np.mean(plain_out[tail] ** 2)
    assert error < 0.05


def test_sender_without_dtx_sends_every_frame_in_version_1(model):
    audio, _ = speech_with_a_pause()
    messages, _, stream = asyncio.run(round_trip(model, audio, dtx=False))
    assert wire.StreamHeader.decode(messages[0]).version == wire.VERSION
    assert not any(m[0] == wire.COMFORT_NOISE for m in messages)
    assert stream.jitter.stats.comfort == 0


def test_dtx_gate_sends_the_preroll_frame_with_the_onset():
    gate = Dtx(RATE, HOP, hangover=0.0, preroll=1)
    loud = np.full(HOP, 0.1, np.float32) * np.sign(np.sin(np.arange(HOP)))
    quiet = np.random.default_rng(0).standard_normal(HOP).astype(np.float32) * 1e-3
    for block in [loud, quiet, quiet, quiet, loud]:
        gate.listen(block[None])
    verdicts = [gate.step(i, codes(i)) for i in range(5)]
    assert [i for i, _ in verdicts[0].send] == [0]
    assert verdicts[1].send == [] and verdicts[1].comfort.index == 1
    assert verdicts[2].send == verdicts[3].send == [] and verdicts[2].comfort is verdicts[3].comfort is None
    assert [i for i, _ in verdicts[4].send] == [3, 4]  # the onset, with the frame before it
    assert (gate.sent, gate.withheld, gate.comfort_messages) == (3, 2, 1)


@pytest.mark.parametrize("argv, message", [(["--silence", "1.5"], "--silence must lie in [0, 1)"),
                                           (["--files", "0"], "--files must be at least 1"),
                                           (["--bandwidth", "5"], "--bandwidth 5: the model offers")])
def test_dtx_benchmark_refuses_bad_options(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        dtx_benchmark.main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_client_takes_no_dtx():
    from client import parse_args

    assert parse_args(["--room", "r", "--no-dtx"]).no_dtx
    assert not parse_args(["--room", "r"]).no_dtx


# ------------------------------------------------------------------------ relay


async def test_the_relay_forwards_a_dtx_stream_and_hands_its_header_to_a_joiner():
    """The relay needs nothing but ``call.wire``: it checks comfort noise like audio (a long pause
    does not make the ``END`` after it implausible), forwards it, and gives a late joiner the
    version-2 header as it was sent."""
    from websockets.asyncio.client import connect

    from server import Relay
    from tests.test_server import in_room, receive, start

    relay = Relay()
    server, url = await start(relay)
    pause = [wire.ComfortNoise(i, (-50.0,) * 8).encode() for i in range(2, 300, 15)]
    stream = [HEADER.encode(), audio(0), audio(1), *pause, audio(300), wire.EndOfStream(301, 301 * HOP).encode()]
    try:
        async with connect(url + "/d", compression=None) as alice, connect(url + "/d", compression=None) as bob:
            await in_room(relay, "d", 2)
            for message in stream[:-1]:
                await alice.send(message)
            heard = await receive(bob, len(stream) - 1)
            assert [wire.unroute(heard[0])[1], *heard[1:]] == stream[:-1]
            async with connect(url + "/d", compression=None) as carol:
                await in_room(relay, "d", 3)
                assert wire.unroute((await receive(carol, 1))[0])[1] == HEADER.encode()
                await alice.send(stream[-1])
                assert (await receive(bob, 1))[0] == stream[-1]
        assert relay.counters["malformed"] == relay.counters["out_of_order"] == 0
    finally:
        server.close()
        await server.wait_closed()
