"""The microphone's front end (``call.front_end``): its framing, and what it does in a simulated
room around the client's sound card (``benchmarks/echo_room.py``), stepped block by block so that
nothing depends on the machine's speed. Real speech from ../shared/audio/speech for both talkers.

Issue 20's targets and where the front end (WebRTC's AEC3 through pywebrtc-audio 0.2, Speex DSP's
linear canceller beside it for double talk, Speex DSP's noise suppressor without AEC) stands on them, measured
here: ERLE >= 30 dB after 1 s holds with every stage on, from a cold start and after a near-end
turn, in the rooms at both ends of the issue's range; double talk costs the near end 0.05
STOI against no echo (0.15 with AEC3 alone); the noise suppressor raises STOI at 6 kbps over the
noisy input at 15 dB SNR after a second of the noise alone (+0.010 alone, Speex's; +0.010 with every
stage, WebRTC's beside AEC3; over 4 s) and more at 5 dB.
The tests assert what holds; the quality numbers are deterministic (the room is stepped block by
block), so the bounds are the measured values with a small margin.
"""

import numpy as np
import pytest

from benchmarks.echo_room import (FAR_TALKER, NEAR_TALKER, RATE, Codec, Room, Scene, call_in_room, erle_after, far_end_only,
                                  measure, noisy_talk, pause_reduction, stoi_of, talker)
from call.front_end import REFERENCE_MARGIN_SECONDS, EchoReference, FrontEnd, Stages
from client import parse_args

ROOM = Room(delay=0.1, decay=0.2, echo_gain=-6.0, snr=15.0)


@pytest.fixture(scope="module")
def codec():
    return Codec()


@pytest.fixture(scope="module")
def default_front_end(codec):
    """Every number of the middle room with every stage on (what a microphone gets by default);
    the far end talks alone for 3 s first, as Speex's filter needs 2.5 s of it (call.double_talk)."""
    return measure(ROOM, Stages(), far_only=3.0, both=4.0, codec=codec)


def test_any_block_sizes_give_every_whole_chunk_back():
    front_end = FrontEnd(RATE, 1, Stages())
    rng = np.random.default_rng(0)
    given = returned = 0
    for size in [1, 77, 320, 441, 240, 1024, 5] * 4:
        block = (0.05 * rng.normal(size=(1, size))).astype(np.float32)
        front_end.played(block)
        out = front_end.process(block)
        assert out.dtype == np.float32 and out.shape[0] == 1
        given, returned = given + size, returned + out.shape[-1]
        assert returned == given // front_end.chunk * front_end.chunk  # only the last partial chunk waits
    assert front_end.status().startswith("mic ") and "dBFS" in front_end.status()


@pytest.mark.parametrize("late_at", [None, 50])
def test_a_write_that_comes_after_its_capture_does_not_shift_the_echo_reference(late_at):
    """The speaker is written a 13.3 ms frame at a time, just in time, and the capture read in 10 ms
    chunks, on one loop whose order varies. A write that once comes after the capture chunk it plays
    in (step ``late_at``) must not move which played sample each captured one is compared with."""
    reference, frame, chunk = EchoReference(RATE, 1), 320, 240
    written, lags = 0, set()
    for step in range(200):
        needed = (step + 1) * chunk  # just in time: what the speaker takes in this step
        late = step == late_at
        while not late and written < needed:
            reference.write(np.arange(written + 1, written + frame + 1, dtype=np.float32)[:, None])  # sample i holds i + 1
            written += frame
        far = np.empty((chunk, 1), np.float32)
        reference.read_into(far)
        lags |= {step * chunk + i - (int(v) - 1) for i, v in enumerate(far[:, 0]) if v}
    assert len(lags) == 1, f"the reference slipped: lags {sorted(lags)}"  # (a plain ring: lags 0 and 80)


@pytest.mark.parametrize("delay, decay", [(0.06, 0.1), (0.15, 0.3)], ids=["near-short", "far-long"])
def test_echo_canceller_reaches_30_db_within_a_second(delay, decay):
    """Far end only, the rooms at the ends of the issue's range, every stage on from a cold start:
    30 dB or more out of everything after the first second, the median over the room's delay moved
    in 5 ms steps (-10 to +15 ms). One delay alone is a lottery in the long room: AEC3's ERLE there
    moves 27.7-33.1 dB from one 5 ms step to the next (measured 37.0-38.5 and 30.5 dB medians; the
    far, long room had 29.5 at 150 ms before Speex's reference was delayed by the bulk delay and the
    chunks both cancellers judge echo alone were taken 10 dB further down)."""
    erles, status = [], ""
    for shift in (-0.01, -0.005, 0.0, 0.005, 0.01, 0.015):
        room = Room(delay=delay + shift, decay=decay, snr=float("inf"))
        call, _ = far_end_only(room, Stages(), seconds=3.0)
        erles.append(erle_after(call.heard, call.sent, 1.0))
        status = status or call.status
    print(f"\ndelay {delay * 1000:.0f} ms, decay {decay * 1000:.0f} ms: ERLE after 1 s {np.round(erles, 1)} dB; {status}")
    assert np.median(erles) >= 30.0
    # The status line says the echo is being cancelled, by about what the test measures.
    shown = float(status.split("echo cancelled ")[1].split(" dB")[0])
    assert status.startswith("mic -") and shown >= 25.0


async def test_far_end_joining_later_is_cancelled_as_fast():
    """No stream to play for the call's first 2 s (the speaker plays nothing and the canceller gets
    no reference), then the far end talks: AEC3 still finds the delay and holds 30 dB after 1 s."""
    far, join = talker(FAR_TALKER, 3.0), 2.0
    silent = np.zeros(round(join * RATE) + len(far))
    call = await call_in_room(Scene(far, silent, silent), Room(snr=float("inf")), Stages(gain=False), far_end_joins=join)
    start = round(join * RATE)
    erle = erle_after(call.heard[start:], call.sent[start:], 1.0)
    print(f"\nERLE after 1 s of a far end that joined at {join:g} s: {erle:.1f} dB")  # measured 45.3 dB
    assert erle >= 30.0


def test_default_front_end_cancels_echo_and_says_so(default_front_end):
    r = default_front_end
    print(f"\nERLE after 1 s {r.erle_after_1s:.1f} dB (coded {r.erle_after_1s_coded:.1f}, after a near-end turn "
          f"{r.erle_after_1s_after_near_turn:.1f}); "
          f"curve {[round(e) for _, e in r.erle_curve]}")
    assert r.erle_after_1s >= 30.0  # measured 36.2 dB: the gain holds at 0 dB until the near end talks
    assert r.erle_after_1s_after_near_turn >= 30.0  # measured 37.3 dB: it holds on echo-only chunks
    assert r.erle_curve[0][1] < 15.0 < min(e for t, e in r.erle_curve if t >= 1.0)  # it learns, then holds


def test_double_talk_keeps_the_near_end_intelligible(default_front_end):
    r = default_front_end
    print(f"\nnear-end STOI in double talk {r.double_talk_stoi:.3f}, no echo {r.double_talk_stoi_no_echo:.3f}, "
          f"no front end {r.double_talk_stoi_no_front_end:.3f}, headphones {r.double_talk_stoi_headphones:.3f}")
    # Issue 20's target. Measured 0.856 against 0.895 (loss 0.039); AEC3 alone lost 0.15 and kept
    # less than no front end at all; with headphones 0.882 (AEC3 alone 0.60).
    assert r.double_talk_stoi >= r.double_talk_stoi_no_echo - 0.05
    assert r.double_talk_stoi > r.double_talk_stoi_no_front_end + 0.03
    # Headphones: no echo path, so the linear path keeps the near end (call.double_talk.Headset). Measured
    # 0.899 against 0.906 with the far end silent; 0.685 before it told headphones apart.
    assert r.double_talk_stoi_headphones >= r.double_talk_stoi_no_echo - 0.02


def test_front_end_cost_and_delay(default_front_end):
    r = default_front_end
    print(f"\n{r.front_end_ms_per_10ms:.3f} ms per 10 ms, delay {r.front_end_delay_ms:.1f} ms")
    assert 0 < r.front_end_delay_ms < 25  # measured 16 ms with every stage


def test_noise_suppression_raises_stoi_at_the_rooms_15_db_snr(codec):
    """Near end only, in pink noise at 15 dB SNR after a second of the noise alone: NS alone (Speex
    DSP's suppressor) takes the noise in the talker's pauses down and raises STOI at 6 kbps over
    the noisy input. Fails if the suppressor stops doing so (WebRTC's level 0 in its place, over
    6 s: +0.003)."""
    call, clean = noisy_talk(ROOM, Stages(echo=False, gain=False), seconds=4.0)
    sent, noisy = stoi_of(clean, codec(call.sent)), stoi_of(clean, codec(call.heard))
    reduction = pause_reduction(clean, call.heard, call.sent)
    print(f"\nSTOI at 6 kbps {sent:.3f} with NS, {noisy:.3f} noisy; noise in pauses {reduction:.1f} dB lower")
    assert reduction >= 8.0  # measured 12.3 dB
    assert sent >= noisy + 0.005  # measured +0.010 (0.901 against 0.891)


def test_noise_suppression_raises_stoi_where_the_noise_is_loud(codec):
    """Near end only, in pink noise at 5 dB SNR: there NS alone raises STOI at 6 kbps over the
    noisy input by more than at 15 dB."""
    call, clean = noisy_talk(Room(snr=5.0), Stages(echo=False, gain=False), seconds=4.0)
    sent, noisy = stoi_of(clean, codec(call.sent)), stoi_of(clean, codec(call.heard))
    print(f"\n5 dB SNR: STOI at 6 kbps {sent:.3f} with NS, {noisy:.3f} noisy")
    assert sent >= noisy + 0.03  # measured +0.053 (0.844 against 0.791; WebRTC's level 0 over 6 s: +0.019)


def test_default_front_end_keeps_noisy_speech_as_intelligible(default_front_end):
    r = default_front_end
    print(f"\nnoisy speech at 6 kbps: {r.noisy_stoi_sent:.3f} sent, {r.noisy_stoi_input:.3f} as it is; "
          f"noise in pauses {r.noise_reduction_in_pauses:.1f} dB lower")
    assert r.noisy_stoi_sent >= r.noisy_stoi_input + 0.005  # measured +0.010 (0.901 against 0.891; cold, before: -0.01)
    assert r.noise_reduction_in_pauses >= 6.0  # measured 7.8 dB (WebRTC's suppressor beside AEC3)


@pytest.mark.parametrize("level_db", [-20.0, 10.0], ids=["quiet", "loud"])
async def test_gain_brings_a_quiet_or_loud_talker_toward_the_codecs_level(level_db):
    """Near end only, 20 dB below or 10 dB above the room's -26 dBFS: after two seconds the gain
    controller has moved the sent voice at least half way toward -26 dBFS (measured: -45 to -30,
    -15 to -27 dBFS)."""
    voice = talker(NEAR_TALKER, 4.0) * 10 ** (level_db / 20)
    silent = np.zeros_like(voice)
    call = await call_in_room(Scene(silent, voice, silent, echo=False), Room(snr=float("inf")), Stages())
    late = slice(2 * RATE, None)
    heard, sent = (10 * np.log10(np.mean(x[late] ** 2)) for x in (call.heard, call.sent))
    print(f"\nlast 2 s: heard {heard:.1f} dBFS, sent {sent:.1f} dBFS")
    assert abs(sent - -26.0) <= abs(heard - -26.0) / 2


def test_echo_reference_is_what_plays_while_the_microphone_captures():
    """The reference is taken one chunk per captured chunk, held back by its margin: audio written to
    the speaker counts as the far end talking for as long as it takes the capture to reach it, then
    silence does."""
    front_end = FrontEnd(RATE, 1, Stages())
    held = round(REFERENCE_MARGIN_SECONDS * RATE) // front_end.chunk
    front_end.played(np.full((1, RATE // 2), 0.1, dtype=np.float32))  # half a second, queued at once
    captured = np.zeros((1, front_end.chunk), dtype=np.float32)
    assert not front_end.far_end_talking
    for _ in range(50):
        front_end.process(captured)
    assert front_end.far_end_talking  # the last half second of capture had the played half second beside it
    for _ in range(50 + held):
        front_end.process(captured)
    assert not front_end.far_end_talking  # nothing more was played: the reference is silence


def test_a_microphone_gets_the_front_end_and_a_file_does_not():
    from client import Client, Options
    from tests.models import small_model

    model = small_model()
    args = parse_args(["--room", "r", "--no-aec", "--no-agc"])
    assert (args.no_aec, args.no_ns, args.no_agc) == (True, False, True)
    live = Client(Options(server="ws://127.0.0.1:9", room="r"), model)
    assert live.front_end is not None and live.front_end.stages == Stages()
    assert "mic " in live.status.line()  # the status line shows the input level from the start
    only_ns = Client(Options(server="ws://127.0.0.1:9", room="r", front_end=Stages(echo=False, gain=False)), model)
    assert only_ns.front_end.stages.names() == "NS"
    assert Client(Options(server="ws://127.0.0.1:9", room="r", input="speech.wav"), model).front_end is None
    assert Client(Options(server="ws://127.0.0.1:9", room="r", front_end=Stages(False, False, False)), model).front_end is None


def test_an_echo_path_change_is_cancelled_again_within_a_second():
    """The far end talks for 10 s and the echo path changes at 5 s (another room response, 20 ms
    later): the linear path, whose filter then fits the old path, is held back again until Speex
    reconverges, so ERLE after the first second of the new path stays >= 30 dB (measured 31.7;
    AEC3 alone 35.7; blending the unconverged linear path in gave 5-10 dB for 4 s)."""
    from scipy.signal import fftconvolve

    far, change = talker(FAR_TALKER, 10.0), 5 * RATE
    before, after = Room(seed=0).impulse_response(RATE), Room(seed=5, delay=0.12).impulse_response(RATE)
    heard = np.concatenate([fftconvolve(far, before)[:change], fftconvolve(far, after)[change : len(far)]]).astype(np.float32)
    front_end, chunk = FrontEnd(RATE, 1, Stages()), 240
    sent = []
    for start in range(0, len(far) - chunk + 1, chunk):
        front_end.played(far[None, start : start + chunk].astype(np.float32))
        sent.append(front_end.process(heard[None, start : start + chunk])[0])
    sent = np.concatenate(sent)
    erle = erle_after(heard[change : len(sent)], sent[change:], 1.0)
    print(f"\nERLE after the first second of a new echo path: {erle:.1f} dB")
    assert erle_after(heard[:change], sent[:change], 1.0) >= 30.0
    assert erle >= 30.0


def test_speex_linear_canceller_cancels_a_linear_echo():
    """Speex's canceller alone on a far end of white noise through a 30 ms echo path: after 2 s it
    has taken the echo out (one that passed the capture through would take 0 dB)."""
    from scipy.signal import fftconvolve

    from call.speex_echo import SpeexEcho

    rng = np.random.default_rng(1)
    far = (0.05 * rng.normal(size=3 * RATE)).astype(np.float32)
    path = np.concatenate([np.zeros(RATE // 100), 0.5 * rng.normal(size=RATE // 50) * np.exp(-np.arange(RATE // 50) / 100)])
    echo = fftconvolve(far, path)[: len(far)].astype(np.float32)
    canceller, chunk = SpeexEcho(RATE, 240, 0.05), 240
    out = np.concatenate([canceller.cancel(echo[i : i + chunk], far[i : i + chunk]) for i in range(0, len(far), chunk)])
    late = slice(2 * RATE, None)
    erle = 10 * np.log10(np.sum(echo[late] ** 2) / np.sum(out[late] ** 2))
    print(f"\nSpeex alone, last second: {erle:.1f} dB")
    assert erle >= 30.0  # measured 46.5 dB


def test_without_speex_the_front_end_says_so_once_and_runs_on_webrtc_alone(monkeypatch, caplog):
    """libspeexdsp missing (a machine without the set-up script): one log line that says what is
    lost and how to install it, and the front end still runs on WebRTC's module alone (AEC3, its
    noise suppressor)."""
    import call.speex_dsp

    def missing(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(call.speex_dsp.ctypes, "CDLL", missing)
    call.speex_dsp.library.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            front_end = FrontEnd(RATE, 1, Stages())
    finally:
        call.speex_dsp.library.cache_clear()  # the tests after this one load it again
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 1 and "install-system-deps.sh" in lines[0] and "libspeexdsp1" in lines[0]
    block = (0.05 * np.random.default_rng(0).normal(size=(1, 480))).astype(np.float32)
    front_end.played(block)
    assert front_end.process(block).shape == (1, 480)
