"""A real browser in a call with Python peers: headless Debian Chromium opens the page served by the relay,
its fake microphone fed from a speech WAV, and joins a room with a ``client.py --output`` peer (which
records the browser) and a ``client.py --input`` peer (which the browser hears). The recording of the
browser is intelligible (STOI ≥ 0.8 against the WAV, aligned), the page decoded the Python peer's
frames, the browser console stayed clean; a screenshot of the page in the call is saved."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.signal import fftconvolve
from websockets.sync.client import connect

from call import wire
from tests.web_page import chromium, install_web_packages, open_page, relay_serving_page, wait_for, web_graphs  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "heldout_speech_24k.flac"
ARTIFACTS = Path(os.environ.get("WEB_TEST_ARTIFACTS", ROOT / "tests" / "artifacts"))
RATE = 24_000
STOI_FLOOR = 0.8


def aligned(reference: np.ndarray, heard: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`heard` and the stretches of the looped `reference` it matches best, a window of one loop at a time
    (the fake microphone loops the file, the call adds its delay, and a busy page may drop a frame, which
    shifts what follows): in each window, the lag of the cross-correlation's peak."""
    window = len(reference)
    loop = np.tile(reference, 3)
    pieces = []
    for start in range(0, len(heard) - window + 1, window):
        piece = heard[start : start + window]
        lag = int(np.argmax(fftconvolve(loop, piece[::-1], mode="valid")))
        pieces.append(loop[lag : lag + window])
    used = len(pieces) * window
    return np.concatenate(pieces), heard[:used]


def client(url: str, *arguments: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "client.py", "--server", url, "--room", "web", *arguments], cwd=ROOT,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_browser_and_python_peers_hold_a_call(tmp_path, web_graphs):
    pystoi = pytest.importorskip("pystoi")
    install_web_packages()
    speech, rate = sf.read(FIXTURE, dtype="float32")
    assert rate == RATE
    # Chromium loops the fake microphone's file in whole blocks (a 2.465 s file repeats every 2.5 s):
    # whole seconds of it, so that the looped reference is exactly what the page heard.
    microphone = np.concatenate([speech, np.zeros(-len(speech) % RATE, np.float32)])
    wav, microphone_wav = tmp_path / "speech.wav", tmp_path / "microphone.wav"
    sf.write(wav, speech, RATE, subtype="PCM_16")
    sf.write(microphone_wav, microphone, RATE, subtype="PCM_16")
    heard_path = tmp_path / "heard.wav"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with relay_serving_page(web_graphs[2]) as served, chromium(f"--use-file-for-fake-audio-capture={microphone_wav}") as browser:
        relay, ws = served.relay, served.ws_url
        recorder = client(ws, "--output", str(heard_path))
        try:
            page, errors = open_page(browser, served, viewport={"width": 390, "height": 844})  # a phone
            wait_for(lambda: relay.rooms.get("web"), 120, "the recorder to join (it records from the stream's start)")
            page.fill("#room", "web")
            page.click("#join-button")
            stats = lambda: page.evaluate("window.callStats")  # noqa: E731
            wait_for(lambda: (s := stats()) and s["sentFrames"] >= 75 * 5, 60, "the page to send 5 s of its microphone")
            speaker = client(ws, "--input", str(wav), "--quiet")
            try:
                wait_for(lambda: [s for s in stats()["streams"] if s["decoded"] >= 75], 120, "the page to play the Python peer")
            except AssertionError as timeout:
                speaker.kill()
                raise AssertionError(f"{timeout}; page: {stats()}; speaker (exit {speaker.wait()}): "
                                     f"{speaker.stderr.read()[-2000:]}") from None
            page.screenshot(path=str(ARTIFACTS / "web_call.png"), full_page=True)  # in the call: both peers talking
            assert speaker.wait(120) == 0, speaker.stderr.read()
            heard_by_page = wait_for(lambda: [s for s in stats()["streams"] if s["finished"]], 30,
                                     "the page to play the Python peer's stream out")[0]
            page.select_option("#bandwidth", "12")  # the bandwidth switches mid-stream: 16 codebooks a frame
            wait_for(lambda: stats()["codebooks"] == 16, 10, "frames of 16 codebooks")
            time.sleep(1)
            page.click("#mute")
            muted_from = wait_for(lambda: (s := stats())["muted"] and s["sentFrames"], 10, "the page to mute")
            time.sleep(1)
            final = stats()
            page.click("#leave")  # the page's END: the recorder finishes its file and exits
            assert recorder.wait(60) == 0
            recorder_log = recorder.stderr.read()
        finally:
            if recorder.poll() is None:
                recorder.kill()
    assert errors == [], errors

    heard, rate = sf.read(heard_path, dtype="float32")
    sf.write(ARTIFACTS / "web_call_heard.wav", heard, rate)  # what the Python peer recorded of the browser
    assert rate == RATE and len(heard) >= 5 * RATE
    muted = heard[(muted_from + 10) * 320 :]  # a few frames were on their way when the button was pressed
    assert len(muted) >= RATE // 2 and np.sqrt(np.mean(muted**2)) < 0.05 * np.sqrt(np.mean(speech**2))
    # Past the start (the codec's and the resamplers' warm-up), before the mute.
    reference, estimate = aligned(microphone, heard[RATE // 2 : muted_from * 320])
    stoi = pystoi.stoi(reference, estimate, RATE)
    frames = len(speech) // 320
    python_latency = [int(ms) for ms in re.findall(r"latency ~(\d+) ms", recorder_log)]
    print(f"\nbrowser → Python recording: {len(heard) / RATE:.1f} s, STOI {stoi:.3f} against the input (aligned); "
          f"page decoded {heard_by_page['decoded']} frames of the Python peer's {frames} ({heard_by_page['lost']} lost, "
          f"{heard_by_page['skipped']} skipped), "
          f"sent {final['sentFrames']} frames at {final['upKbps']:.1f} kbps ({final['droppedFrames']} dropped by a busy CPU); page encode {final['encodeMsPerFrame']:.2f} ms "
          f"+ decode {final['decodeMsPerFrame']:.2f} ms a frame; latency (jitter target + frame + playback queue): page "
          f"hearing Python ~{heard_by_page['estimateMs']:.0f} ms (by the sender's clock {heard_by_page['latencyMs']:.0f} ms), "
          f"Python hearing the page ~{np.median(python_latency) if python_latency else float('nan'):.0f} ms (median of its "
          f"status lines); screenshot {ARTIFACTS / 'web_call.png'}")
    assert heard_by_page["ended"] and heard_by_page["received"] >= frames and final["problems"] == 0
    # Every frame played or, where a burst (a busy CPU) queued far beyond the jitter target, skipped at once
    # (how many of each depends on the CPU the page gets): at least the second of speech waited for above played.
    assert heard_by_page["decoded"] + heard_by_page["skipped"] >= frames and heard_by_page["decoded"] >= 75
    assert stoi >= STOI_FLOOR


def test_page_joins_with_its_token_says_when_refused_and_reconnects(web_graphs):
    """The token box opens a room that needs one (the token rides as a websocket subprotocol); a wrong
    token is refused, said on the page, and the page is ready to join again; a connection the relay drops
    mid-call is reconnected and the page's stream goes on (same stream id, next frame index); a peer whose
    HEADER names another model is refused and said."""
    install_web_packages()
    with relay_serving_page(web_graphs[2], room_tokens={"locked": "s3cret"}) as served, chromium() as browser:
        relay = served.relay
        page, errors = open_page(browser, served)
        page.fill("#room", "locked")
        for token, joins in [("wrong", False), ("s3cret", True)]:
            page.fill("#token", token)
            page.click("#join-button")
            state = "connected" if joins else "disconnected"
            page.wait_for_function(f"window.callStats?.state === '{state}'", timeout=30_000)
            if joins:
                wait_for(lambda: page.evaluate("window.callStats.sentFrames") >= 10, 30, "the page to send")
                (first,) = relay.rooms["locked"].values()
                sent = first.stream.newest
                served.call(lambda: first.link.ws.transport.abort())  # the connection breaks under the page (the page is served on websockets)
                wait_for(lambda: page.evaluate("window.callStats.reconnects") == 1, 30, "the page to reconnect")
                wait_for(lambda: (peers := list(relay.rooms.get("locked", {}).values())) and peers[0].stream.newest > sent,
                         30, "the page's stream to go on")
                (again,) = relay.rooms["locked"].values()
                assert again.id != first.id and again.stream.header == first.stream.header, "the same stream, continued"
                stranger = wire.StreamHeader(fingerprint=b"another!", sample_rate=24000, channels=1, samples_per_frame=320,
                                             codebook_nbits=10, max_codebooks=32, stream_id=5)
                with connect(served.ws_url + "/locked", additional_headers={"Authorization": "Bearer s3cret"}) as peer:
                    peer.send(stranger.encode())  # a peer with another model: refused, counted, said
                    wait_for(lambda: page.evaluate("window.callStats.problems") == 1, 10, "the page to refuse the stranger")
                assert "another model" in page.inner_text("#down") and page.evaluate("window.callStats.streams") == []
                page.click("#leave")
            else:
                assert "refused" in page.inner_text("#error")
            page.wait_for_function("!document.getElementById('join-button').disabled", timeout=10_000)
    assert relay.counters["refused_auth"] == 1
    assert [e for e in errors if "WebSocket" not in e] == []  # Chromium reports the refused handshake itself
