"""--output is on disk as it is heard: a valid WAV after Ctrl-C or kill -9, the exact length at END."""

import asyncio
import os
import signal
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile
from websockets.asyncio.client import connect

from call.connection import CallError
from call.recording import Recording
from client import Client, Options
from server import Relay
from tests.models import small_model, speech_wav
from tests.test_call import offline

ROOT = Path(__file__).resolve().parent.parent
RATE = 24000
LENGTH = 4 * RATE + 123
TOLERANCE = 1e-3
"""Heard against the offline decode of the same input: measured 2.4e-7 in float, 3.1e-5 in 16-bit
PCM (its rounding) over the first second or so of a call; a complete call is held to the same 1e-3
in ``tests/test_call.py``."""


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_wav(tmp_path_factory.mktemp("audio"), LENGTH, RATE, seed=5)


@pytest.fixture(scope="module")
def long_speech(tmp_path_factory):
    """A call that cannot end on its own before it is interrupted, whatever a busy machine's stalls."""
    return speech_wav(tmp_path_factory.mktemp("long_audio"), 30 * RATE, RATE, seed=5)


def frames_on_disk(path: Path) -> int:
    """Frames a strict WAV reader (Python's ``wave``, 16-bit PCM only) sees in the header."""
    with wave.open(str(path)) as file:
        return file.getnframes()


def frames_so_far(path: Path) -> int:
    try:
        return soundfile.info(path).frames
    except (soundfile.LibsndfileError, RuntimeError):  # not there yet
        return 0


# ----------------------------------------------------------------------------- the file itself


def test_the_file_is_valid_after_every_write(tmp_path):
    path = tmp_path / "heard.wav"
    recording = Recording(str(path), RATE, 1)
    block = np.full((1, 320), 0.25, np.float32)
    for written in range(1, 6):
        recording.write(block)
        assert frames_on_disk(path) == 320 * written  # the header's length follows the data
    recording.close()
    info = soundfile.info(path)
    assert (info.frames, info.subtype, info.samplerate) == (1600, "PCM_16", RATE)


def test_end_trims_what_came_before_it_and_pads_what_is_missing(tmp_path):
    early = Recording(str(tmp_path / "early.wav"), RATE, 1, output_format="float")
    early.write(np.ones((1, 1000), np.float32))  # the last frame's padding, before END said the length
    early.length = 900
    early.write(np.ones((1, 320), np.float32))  # nothing past the length once it is known
    early.finish(900)
    assert soundfile.info(tmp_path / "early.wav").frames == 900
    short = Recording(str(tmp_path / "short.wav"), RATE, 1)
    short.write(np.ones((1, 500), np.float32))
    short.finish(700)
    audio, _ = soundfile.read(tmp_path / "short.wav", dtype="float32")
    assert len(audio) == 700 and (audio[500:] == 0).all()


def test_another_rate_is_resampled_to_the_exact_length(tmp_path):
    path = tmp_path / "heard48.wav"
    recording = Recording(str(path), RATE, 1, file_rate=48000)
    signal = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(RATE + 77) / RATE)).astype(np.float32)
    for start in range(0, len(signal), 320):
        recording.write(signal[None, start : start + 320])
    recording.finish(len(signal))
    audio, rate = soundfile.read(path, dtype="float32")
    assert rate == 48000 and len(audio) == round(len(signal) * 2)
    expected = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(len(audio)) / 48000)
    assert np.abs(audio[100:-100] - expected[100:-100]).max() < 2e-3  # 16-bit and the filter's ripple


# --------------------------------------------------------------------- a receiver that is killed


async def start_relay(relay: Relay | None = None):
    relay = relay or Relay()
    server = await relay.start("127.0.0.1", 0).__aenter__()
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def signal_state(pid: int) -> str:
    """Each thread's blocked, ignored, caught and pending signals (``/proc``, hex masks): what a
    process that ignores a Ctrl-C had (``test_ctrl_c_...`` failed so in full local runs under load,
    cause not found; an inherited blocked or ignored SIGINT would show here)."""
    rows = []
    for status in sorted(Path(f"/proc/{pid}/task").glob("*/status")):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:  # the thread ended
            continue
        rows.append(f"{fields['Name'].strip()} blk {fields['SigBlk'].strip()} ign {fields['SigIgn'].strip()} "
                    f"cgt {fields['SigCgt'].strip()} pnd {fields['SigPnd'].strip()}")
    return "; ".join(rows)


async def interrupted_call(model, model_dir, speech, out: Path, how: signal.Signals, *flags: str):
    """A receiving client.py in a subprocess, a paced sender in this process; ``how`` stops the
    receiver once half a second is on disk. Returns its exit status and what is on disk."""
    relay = Relay()
    server, url = await start_relay(relay)
    receiver = await asyncio.create_subprocess_exec(
        sys.executable, "client.py", "--server", url, "--room", "r", "--model", str(model_dir),
        "--output", str(out), "--quiet", *flags, cwd=ROOT, stderr=asyncio.subprocess.PIPE)
    sending = None
    try:
        for _ in range(2400):  # up to 120 s for the subprocess to start and join (a busy machine)
            if relay.rooms.get("r") or receiver.returncode is not None:
                break
            await asyncio.sleep(0.05)
        # The paced sender starts once the receiver is in the room. A file sender alone queues its
        # packets until a listener joins: a receiver that took longer to start than the file lasts
        # (CI, under load) was handed the whole call at once and had finished, exit 0, by its Ctrl-C.
        sender = Client(Options(server=url, room="r", input=str(speech[0]), pace=True, status=False), model)
        sending = asyncio.create_task(sender.run())
        for _ in range(1200):  # up to 60 s to hear half a second
            if frames_so_far(out) >= RATE // 2 or receiver.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert receiver.returncode is None, (await receiver.stderr.read()).decode()
        at_signal, signals = frames_so_far(out), signal_state(receiver.pid)
        receiver.send_signal(how)
        try:
            status = await asyncio.wait_for(receiver.wait(), 10)
            stderr = (await receiver.stderr.read()).decode()
        except asyncio.TimeoutError:  # (it went on: say so, with what it logged, rather than wait for its call to end)
            receiver.kill()
            await receiver.wait()
            status, stderr = None, (await receiver.stderr.read()).decode()
        # What was on disk when the signal went, whether it was still running 10 s later, and the
        # signal masks then: Ctrl-C was ignored so in full local runs under load, cause not found.
        stderr = (f"[{at_signal} samples on disk at the signal; status {status}; the receiver's signals then: "
                  f"{signals}; this process's: {signal_state(os.getpid())}] {stderr}")
    finally:
        if receiver.returncode is None:
            receiver.kill()
        if sending is not None:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
        server.close()
    return status, stderr


def assert_holds_the_start_of_the_call(model, speech, out: Path):
    heard, rate = soundfile.read(out, dtype="float32", always_2d=True)
    assert rate == RATE
    assert RATE // 2 <= len(heard) < speech[1].shape[-1], "stopped mid-call with what was heard on disk"
    _, expected = offline(model, speech[1])
    error = np.abs(heard[:, 0] - expected[0, : len(heard)]).max()
    print(f"\n{len(heard) / RATE:.2f} s on disk, max error against the offline decode {error:.2e}")
    assert error < TOLERANCE


async def test_kill_9_leaves_a_valid_wav_of_what_was_heard(model, model_dir, long_speech, tmp_path):
    out = tmp_path / "heard.wav"
    status, stderr = await interrupted_call(model, model_dir, long_speech, out, signal.SIGKILL)
    assert status == -signal.SIGKILL
    assert soundfile.info(out).subtype == "PCM_16"  # the default: what a player expects
    assert frames_on_disk(out) == soundfile.info(out).frames  # a strict reader agrees with the data
    assert_holds_the_start_of_the_call(model, long_speech, out)


async def test_ctrl_c_leaves_a_valid_wav_of_what_was_heard(model, model_dir, long_speech, tmp_path):
    out = tmp_path / "heard.wav"
    status, stderr = await interrupted_call(model, model_dir, long_speech, out, signal.SIGINT, "--output-format", "float")
    assert status == 130 and "Traceback" not in stderr, f"exit {status}, {frames_so_far(out)} samples on disk: {stderr}"
    assert soundfile.info(out).subtype == "FLOAT"
    assert_holds_the_start_of_the_call(model, long_speech, out)


# ------------------------------------------------------------------ a sender that leaves without END


async def test_a_recording_stops_when_cancelled_as_a_frame_arrives(tmp_path):
    """Ctrl-C cancels the file sink; a cancellation that comes in the same loop iteration as a
    message (``arrived`` set) must not be swallowed (``asyncio.wait_for`` did, before Python 3.12:
    the recording went on under load, where that coincidence is common)."""
    from call.media import record

    class Silent:  # a receiver that has heard nothing yet
        streams: dict = {}

        async def drain(self, now: float) -> None:
            pass

    arrived = asyncio.Event()
    recording = Recording(str(tmp_path / "heard.wav"), RATE, 1)
    sink = asyncio.create_task(record(Silent(), arrived, 0.5, recording))
    await asyncio.sleep(0.01)  # the sink waits for a message
    arrived.set()
    sink.cancel()
    done, _ = await asyncio.wait({sink}, timeout=2)
    assert done and sink.cancelled(), "the sink went on after its cancellation"
    recording.close()


async def test_a_stream_cut_without_end_is_kept_and_said(model, speech, tmp_path):
    """A sender that vanishes mid-stream: the receiver does not wait for ever (the receiver closes
    a silent stream), keeps what it heard, and says so in one line."""
    from call.sender import Sender
    from concurrent.futures import ThreadPoolExecutor

    server, url = await start_relay()
    out = tmp_path / "heard.wav"
    receiver = Client(Options(server=url, room="r", output=str(out), status=False), model)
    receiving = asyncio.create_task(receiver.run())
    await asyncio.wait_for(receiver.connection.connected.wait(), 10)
    with ThreadPoolExecutor(1) as pool:
        sender = Sender(model, pool, start="exact")
        messages = [sender.header.encode()] + await sender.push(speech[1][:, : RATE].numpy())
    async with connect(f"{url}/r", compression=None) as ws:  # sends a second, then goes away: no END
        for message in messages:
            await ws.send(message)
        for _ in range(1000):
            streams = list(receiver.receiver.streams.values())
            if streams and streams[0].jitter.stats.received == sender.next_index:
                break
            await asyncio.sleep(0.02)
    receiver.receiver.silence_timeout = 0.0  # the stream has fallen silent: now, not 15 s from now
    with pytest.raises(CallError, match="ended without its END") as raised:
        await asyncio.wait_for(receiving, 30)
    server.close()
    heard, _ = soundfile.read(out, dtype="float32", always_2d=True)
    print(f"\n{raised.value}; {len(heard)} samples on disk, {sender.next_index} frames sent")
    assert f"holds the {len(heard) / RATE:.2f} s heard" in str(raised.value)
    assert (sender.next_index - 7) * 320 <= len(heard) <= (sender.next_index + 1) * 320


async def test_a_call_recorded_at_the_inputs_rate_keeps_its_exact_length(model, speech, tmp_path):
    server, url = await start_relay()
    out = tmp_path / "heard44.wav"
    receiver = Client(Options(server=url, room="r", output=str(out), output_rate=44100, status=False), model)
    receiving = asyncio.create_task(receiver.run())
    await asyncio.wait_for(receiver.connection.connected.wait(), 10)
    sender = Client(Options(server=url, room="r", input=str(speech[0]), pace=False, status=False), model)
    assert await asyncio.wait_for(sender.run(), 60) == 0
    assert await asyncio.wait_for(receiving, 60) == 0
    server.close()
    info = soundfile.info(out)
    assert (info.samplerate, info.subtype, info.frames) == (44100, "PCM_16", round(LENGTH * 44100 / RATE))
