"""A simulated room around the client's sound card: how much echo and noise the audio front end
(``call.front_end``) takes out of what the client sends, and what it costs.

    python benchmarks/echo_room.py [--delay 0.1] [--decay 0.2] [--echo-gain -6] [--snr 15]
                                   [--noise pink|white] [--stages aec,ns,agc] [--out benchmarks/results]

The client's own ``play`` and ``microphone_blocks`` run against a stand-in for ``sounddevice``
(:class:`RoomSoundCard`): what the speaker plays is convolved with a room impulse response (a
delay, then exponentially decaying noise that falls 60 dB over ``decay``, scaled to
``echo_gain`` dB) and added to the microphone together with a near-end talker and noise at
``snr`` dB below that talker. Both talkers are real speech from ``../shared/audio/speech``.
The sound card is stepped one 10 ms block at a time and the client's coroutines run to a stop
after every block, so the run is the same on a busy machine and an idle one.

What the client sends (what its microphone path gives the encoder) is scored, also after the
bundled codec at 6 kbps (what a peer hears):
* ERLE (echo return loss enhancement) while only the far end talks, in 250 ms windows over time;
* near-end STOI during double talk, against the same room with no echo at all;
* STOI of noisy speech (no far end, after a second of the noise alone) with the front end,
  against the noisy input as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from unittest import mock

import numpy as np
import soundfile
import soxr
import torch
from scipy.signal import fftconvolve

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.latency_quality import SPEECH_DIR, ours  # noqa: E402
from call.front_end import FrontEnd, Stages  # noqa: E402
from call.media import microphone_blocks, play  # noqa: E402

"""Real speech (evaluation material: never trained on)."""
FAR_TALKER = ("librivox_0870.wav", "librivox_0880.wav")
NEAR_TALKER = ("librivox_0920.wav", "librivox_0930.wav")
TALK_RMS = 0.05
"""Both talkers' level (−26 dBFS), a usual speech level at a microphone."""
RATE = 24000
BLOCK = 240
"""The room's sound-card block: 10 ms."""
WINDOW = 0.25
"""Seconds per point of the ERLE curve."""
RESULTS = ROOT / "benchmarks" / "results"
NOISE_LEAD_IN = 1.0
"""Seconds of the room's noise alone before the near end's first word in the noisy-speech score (not
scored): in a call the microphone hears the room before anyone talks, and a suppressor learns the
noise from it. Speex DSP's suppressor, started cold on the first word, scored 0.010 less STOI at
15 dB SNR over the next 6 s; the double-talk scenes have the far end's 3 s before it."""


@dataclass(frozen=True)
class Room:
    """The acoustic path from the client's speaker to its microphone, and the noise at the microphone."""

    delay: float = 0.1
    """Seconds before the first echo arrives (60–150 ms in the tests)."""
    decay: float = 0.2
    """Length of the decaying response: it falls 60 dB over this many seconds (100–300 ms)."""
    echo_gain: float = -6.0
    """Energy gain of the whole response, dB."""
    snr: float = 15.0
    """Near-end talker over the noise, dB."""
    noise: str = "pink"
    """``pink`` (a fan, a street) or ``white``."""
    seed: int = 0

    def impulse_response(self, rate: int) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        t = np.arange(round(self.decay * rate)) / rate
        tail = rng.normal(size=len(t)) * 10 ** (-3 * t / self.decay)  # −60 dB at ``decay``
        tail *= 10 ** (self.echo_gain / 20) / np.sqrt(np.sum(tail**2))
        return np.concatenate([np.zeros(round(self.delay * rate)), tail])

    def noise_like(self, speech: np.ndarray, length: int) -> np.ndarray:
        """``length`` samples of noise ``snr`` dB below ``speech``'s mean power."""
        rng = np.random.default_rng(self.seed + 1)
        noise = rng.normal(size=length)
        if self.noise == "pink":
            spectrum = np.fft.rfft(noise)
            spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
            spectrum[0] = 0.0
            noise = np.fft.irfft(spectrum, length)
        return noise * np.sqrt(np.mean(speech**2) / np.mean(noise**2)) * 10 ** (-self.snr / 20)


def talker(names: tuple[str, ...], seconds: float) -> np.ndarray:
    """Real speech from ``SPEECH_DIR``, at :data:`TALK_RMS` and ``RATE``, cut to ``seconds``."""
    parts = []
    for name in names:
        path = SPEECH_DIR / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the echo room needs the real speech of ../shared/audio/speech "
                                    "(or $ENCODEC_STREAM_SPEECH)")
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        parts.append(soxr.resample(audio[:, 0], rate, RATE))
    speech = np.concatenate(parts)[: round(seconds * RATE)].astype(np.float64)
    if len(speech) < round(seconds * RATE):
        raise ValueError(f"{names}: less than {seconds} s of speech")
    return speech * TALK_RMS / np.sqrt(np.mean(speech**2))


@dataclass
class Scene:
    """What happens in the room, sample by sample: the far end's voice (what the client is given
    to play), the near-end talker and the noise at the microphone, and whether the speaker is
    heard by the microphone (``echo`` off: headphones)."""

    far: np.ndarray
    near: np.ndarray
    noise: np.ndarray
    echo: bool = True


class FarEnd:
    """Stands in for the receiver: one codec frame of the far end's voice a playout tick (silence
    after); no stream at all (``None``, nothing to play) for the first ``absent`` ticks."""

    def __init__(self, voice: np.ndarray, hop: int, absent: int = 0) -> None:
        self.voice, self.hop, self.position = voice.astype(np.float32), hop, 0
        self.absent, self.nothing = absent, 0

    async def tick(self, now: float, due: float | None = None) -> np.ndarray | None:
        if self.nothing < self.absent:
            self.nothing += 1
            return None
        frame = np.zeros((1, self.hop), dtype=np.float32)
        part = self.voice[self.position : self.position + self.hop]
        frame[0, : len(part)] = part
        self.position += self.hop
        return frame

    decoded = True  # each tick's frame is the far end's voice
    arrival, moved = None, 0  # no slack to measure: playout takes no sub-frame steps (call.time_scale)

    def waiting(self, now: float) -> bool:
        return False  # its next frame is always there

    def missing(self, now: float) -> bool:
        return False  # (nor is it ever missing: no expansion, call.time_scale)


class _Stream:
    def __init__(self, samplerate, channels, dtype, blocksize, device, callback) -> None:
        self.samplerate, self.channels, self.blocksize, self.callback = samplerate, channels, blocksize, callback

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


class RoomSoundCard(types.ModuleType):
    """A ``sounddevice`` whose speaker sounds into the room and whose microphone hears it.

    :meth:`step` is one 10 ms block of the room's time: the speaker's callback takes its block
    from the client's ring, the room adds it (convolved with the impulse response) to the echo
    still to come, and the microphone's callback captures echo, talker and noise."""

    def __init__(self, scene: Scene, response: np.ndarray) -> None:
        super().__init__("sounddevice")
        self.scene, self.response = scene, response
        length = len(scene.near)
        self.echo = np.zeros(length + len(response) + BLOCK)
        self.played = np.zeros(length)
        self.microphone_heard = np.zeros(length)
        self.position = 0
        self.speaker = self.microphone = None

    def check_input_settings(self, device=None, samplerate=None, channels=None) -> None:
        pass

    check_output_settings = check_input_settings

    def query_devices(self, device=None, kind=None):
        return {"default_samplerate": float(RATE)} if kind else "0 room"

    def InputStream(self, **kwargs) -> _Stream:  # noqa: N802 (sounddevice's name)
        self.microphone = _Stream(**kwargs)
        return self.microphone

    def OutputStream(self, **kwargs) -> _Stream:  # noqa: N802
        self.speaker = _Stream(**kwargs)
        return self.speaker

    @property
    def done(self) -> bool:
        return self.position + BLOCK > len(self.played)

    def step(self) -> None:
        start, end = self.position, self.position + BLOCK
        out = np.zeros((BLOCK, 1), dtype=np.float32)
        self.speaker.callback(out, BLOCK, None, None)
        self.played[start:end] = out[:, 0]
        if self.scene.echo:
            self.echo[start : end + len(self.response) - 1] += fftconvolve(out[:, 0], self.response)
        heard = self.echo[start:end] + self.scene.near[start:end] + self.scene.noise[start:end]
        self.microphone_heard[start:end] = heard
        self.microphone.callback(heard[:, None].astype(np.float32), BLOCK, None, None)
        self.position = end


@dataclass
class Capture:
    """One call in the room: what the microphone heard, what the client sent, how long the
    front end took per 10 ms of capture, and what it told the status line at the end."""

    heard: np.ndarray
    sent: np.ndarray
    front_end_ms: float = float("nan")
    status: str = ""


async def _settle(condition, limit: int = 10_000) -> None:
    """Let the client's coroutines run until ``condition()`` holds (no clock involved)."""
    for _ in range(limit):
        if condition():
            return
        await asyncio.sleep(0)
    raise RuntimeError("the client did not take the sound card's block")


async def call_in_room(scene: Scene, room: Room, stages: Stages | None, hop: int = 320,
                       far_end_joins: float = 0.0) -> Capture:
    """Run the client's speaker and microphone paths in ``room`` through ``scene``; ``stages``
    ``None``: no front end (what a file sender does). Before ``far_end_joins`` seconds the client
    has no stream to play (``scene.far`` is played from then on)."""
    card = RoomSoundCard(scene, room.impulse_response(RATE))
    front_end = FrontEnd(RATE, 1, stages) if stages is not None else None
    cost = [0.0]
    if front_end is not None:  # timed where it runs, for the benchmark's cost column
        process = front_end.process

        def timed(block: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            out = process(block)
            cost[0] += time.perf_counter() - started
            return out
        front_end.process = timed
    sent: list[np.ndarray] = []
    with mock.patch.dict(sys.modules, {"sounddevice": card}):
        far_end = FarEnd(scene.far, hop, absent=round(far_end_joins * RATE / BLOCK))
        player = asyncio.create_task(play(far_end, RATE, 1, None, asyncio.Event(), front_end))

        async def send() -> None:
            async for block in microphone_blocks(RATE, 1, None, hop, front_end):
                sent.append(block[0])
        sender = asyncio.create_task(send())
        try:
            await _settle(lambda: card.speaker is not None and card.microphone is not None)
            speaker = card.speaker.callback.__self__
            while not card.done:
                nothing = far_end.nothing
                card.step()
                await _settle(lambda: (speaker.queued_seconds >= speaker.block_seconds
                                       or far_end.nothing > nothing)
                              and sum(map(len, sent)) >= card.position - (front_end.chunk - 1 if front_end else 0))
        finally:
            for task in (player, sender):
                task.cancel()
            await asyncio.gather(player, sender, return_exceptions=True)
    out = np.concatenate(sent)[: card.position]
    steps = card.position / BLOCK
    return Capture(card.microphone_heard[: card.position], np.pad(out, (0, card.position - len(out))),
                   1000 * cost[0] / steps if front_end is not None else float("nan"),
                   front_end.status() if front_end is not None else "")


# ------------------------------------------------------------------------------ scores


def erle_curve(heard: np.ndarray, sent: np.ndarray, window: float = WINDOW) -> list[tuple[float, float]]:
    """(start, ERLE dB) per window: echo heard by the microphone over echo left in what was sent."""
    size = round(window * RATE)
    return [(start / RATE, 10 * np.log10(np.sum(heard[start : start + size] ** 2) /
                                          max(np.sum(sent[start : start + size] ** 2), 1e-20)))
            for start in range(0, len(heard) - size + 1, size)]


def erle_after(heard: np.ndarray, sent: np.ndarray, start: float) -> float:
    """ERLE over everything from ``start`` seconds on (energy ratio, dB)."""
    first = round(start * RATE)
    return float(10 * np.log10(np.sum(heard[first:] ** 2) / max(np.sum(sent[first:] ** 2), 1e-20)))


def delay(reference: np.ndarray, signal: np.ndarray, most: float = 0.06) -> int:
    """Samples by which ``signal`` lags ``reference`` (cross-correlation peak, up to ``most`` s)."""
    n = len(reference)
    return int(np.argmax(fftconvolve(signal, reference[::-1])[n - 1 : n - 1 + round(most * RATE)]))


def shifted(signal: np.ndarray, lag: int) -> np.ndarray:
    """``signal`` moved ``lag`` samples earlier (zeros at the end)."""
    return np.concatenate([signal[lag:], np.zeros(lag)])


def aligned(reference: np.ndarray, signal: np.ndarray) -> np.ndarray:
    """``signal`` moved earlier by its :func:`delay`: the front end's and the codec's fixed delays
    are no loss of intelligibility."""
    return shifted(signal, delay(reference, signal))


def stoi_lag(clean: np.ndarray, signal: np.ndarray, most: float = 0.06) -> tuple[float, int]:
    """(STOI, lag): ``signal``'s STOI against ``clean`` at the lag (0 to ``most`` s, 1 ms steps,
    then 0.25 ms around the best) where it scores best. The cross-correlation peak of
    :func:`delay` is no fair alignment here: it follows the speech's low frequencies, which the
    high-pass filter and the suppressors shift or remove, and missed the best lag by 2-4 ms in the
    room (0.01-0.02 STOI), by different amounts for each row of the table."""
    from pystoi import stoi

    def score(lag: int) -> float:
        return float(stoi(clean, shifted(signal, lag), RATE))

    coarse, fine = round(0.001 * RATE), round(0.00025 * RATE)
    best = max(range(0, round(most * RATE), coarse), key=score)
    best = max(range(max(0, best - coarse + fine), best + coarse, fine), key=score)
    return score(best), best


def pause_reduction(clean: np.ndarray, heard: np.ndarray, sent: np.ndarray, frame: float = 0.02) -> float:
    """dB by which the noise heard in the talker's pauses (20 ms frames where ``clean`` is 30 dB
    or more below its mean) is lower in what was sent (moved back by its delay)."""
    sent = aligned(heard, sent)
    size = round(frame * RATE)
    count = len(clean) // size
    framed = [x[: count * size].reshape(count, size) for x in (clean, heard, sent)]
    power = np.mean(framed[0] ** 2, axis=1)
    pauses = power < 1e-3 * power.mean()
    if not pauses.any():
        raise ValueError("the talker never pauses: no noise to measure alone")
    return float(10 * np.log10(np.sum(framed[1][pauses] ** 2) / max(np.sum(framed[2][pauses] ** 2), 1e-20)))


def stoi_of(clean: np.ndarray, signal: np.ndarray) -> float:
    """STOI of ``signal`` against ``clean`` at their best alignment (:func:`stoi_lag`)."""
    return stoi_lag(clean, signal)[0]


class Codec:
    """The bundled model at 6 kbps, searched as a call searches (``latency_quality.ours``)."""

    def __init__(self, bandwidth: float = 6.0) -> None:
        from codec import load_model

        self.model, self.bandwidth = load_model("default").eval(), bandwidth

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return ours(self.model, audio.astype(np.float32), self.bandwidth)[0].astype(np.float64)


# ------------------------------------------------------------------------------ the runs


@dataclass
class Results:
    room: dict
    stages: str
    far_only_seconds: float
    double_talk_seconds: float
    erle_curve: list = field(default_factory=list)
    erle_after_1s: float = 0.0
    erle_after_1s_coded: float = 0.0
    erle_after_1s_after_near_turn: float = 0.0
    double_talk_stoi: float = 0.0
    double_talk_stoi_no_echo: float = 0.0
    double_talk_stoi_no_front_end: float = 0.0
    double_talk_stoi_headphones: float = 0.0
    noisy_stoi_input: float = 0.0
    noisy_stoi_sent: float = 0.0
    noise_reduction_in_pauses: float = 0.0
    front_end_ms_per_10ms: float = 0.0
    front_end_delay_ms: float = 0.0


def far_end_only(room: Room, stages: Stages, seconds: float) -> tuple[Capture, np.ndarray]:
    """Only the far end talks, in a quiet room (ITU-T G.168's ERLE: no near-end signal at all)."""
    far = talker(FAR_TALKER, seconds)
    silent = np.zeros_like(far)
    return asyncio.run(call_in_room(Scene(far, silent, silent), room, stages)), far


def far_end_after_near_turn(room: Room, stages: Stages, near_seconds: float, far_seconds: float) -> tuple[Capture, int]:
    """A conversation's turn: the near end talks alone for ``near_seconds`` (the gain controller
    settles on its voice), then only the far end talks, in a quiet room. Returns the call and the
    sample where the far end starts."""
    voice, far = talker(NEAR_TALKER, near_seconds), talker(FAR_TALKER, far_seconds)
    near = np.concatenate([voice, np.zeros(len(far))])
    scene = Scene(np.concatenate([np.zeros(len(voice)), far]), near, np.zeros_like(near))
    return asyncio.run(call_in_room(scene, room, stages)), len(voice)


def double_talk(room: Room, stages: Stages | None, far_only: float, both: float, echo: bool = True,
                far_end: bool = True) -> tuple[Capture, np.ndarray]:
    """The far end talks alone for ``far_only`` s (the canceller converges), then both talk for
    ``both`` s, in noise; returns the call and the near-end talker's clean voice. ``far_end``
    off: the far end is silent (no echo at all); ``echo`` off: it talks into headphones."""
    far, voice = talker(FAR_TALKER, far_only + both), talker(NEAR_TALKER, both)
    far = far if far_end else np.zeros_like(far)
    near = np.concatenate([np.zeros(len(far) - len(voice)), voice])
    scene = Scene(far, near, room.noise_like(voice, len(far)), echo)
    return asyncio.run(call_in_room(scene, room, stages)), near


def noisy_talk(room: Room, stages: Stages, seconds: float, lead_in: float = NOISE_LEAD_IN) -> tuple[Capture, np.ndarray]:
    """Only the near end talks, in noise, no far end, after ``lead_in`` seconds of the noise alone;
    returns the call from the first word on and the talker's clean voice."""
    near = talker(NEAR_TALKER, seconds)
    lead = round(lead_in * RATE)
    voice = np.concatenate([np.zeros(lead), near])
    scene = Scene(np.zeros_like(voice), voice, room.noise_like(near, len(voice)), echo=False)
    call = asyncio.run(call_in_room(scene, room, stages))
    return Capture(call.heard[lead:], call.sent[lead:], call.front_end_ms, call.status), near


def measure(room: Room, stages: Stages, far_only: float = 3.0, both: float = 6.0, codec: Codec | None = None) -> Results:
    codec = codec or Codec()
    results = Results(asdict(room), stages.names(), far_only, both)
    quiet = Room(**{**asdict(room), "snr": float("inf")})
    echo, _ = far_end_only(quiet, stages, far_only + 1.0)
    results.erle_curve = [(round(t, 3), round(e, 2)) for t, e in erle_curve(echo.heard, echo.sent)]
    results.erle_after_1s = erle_after(echo.heard, echo.sent, 1.0)
    results.erle_after_1s_coded = erle_after(echo.heard, codec(echo.sent), 1.0)
    results.front_end_ms_per_10ms = echo.front_end_ms
    turn, start = far_end_after_near_turn(quiet, stages, far_only, far_only + 1.0)
    results.erle_after_1s_after_near_turn = erle_after(turn.heard[start:], turn.sent[start:], 1.0)
    talk = slice(round(far_only * RATE), None)
    with_echo, near = double_talk(room, stages, far_only, both)
    no_echo, _ = double_talk(room, stages, far_only, both, far_end=False)
    headphones, _ = double_talk(room, stages, far_only, both, echo=False)
    raw, _ = double_talk(room, None, far_only, both)
    results.double_talk_stoi = stoi_of(near[talk], codec(with_echo.sent)[talk])
    results.double_talk_stoi_no_echo = stoi_of(near[talk], codec(no_echo.sent)[talk])
    results.double_talk_stoi_no_front_end = stoi_of(near[talk], codec(raw.sent)[talk])
    results.double_talk_stoi_headphones = stoi_of(near[talk], codec(headphones.sent)[talk])
    noisy, clean = noisy_talk(room, stages, both)
    results.noisy_stoi_input = stoi_of(clean, codec(noisy.heard))
    results.noisy_stoi_sent = stoi_of(clean, codec(noisy.sent))
    results.noise_reduction_in_pauses = pause_reduction(clean, noisy.heard, noisy.sent)
    results.front_end_delay_ms = 1000 * stoi_lag(clean, noisy.sent)[1] / RATE
    return results


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, erle = zip(*results.erle_curve)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    axis.step(t, erle, where="post", label=f"{results.stages}")
    axis.axhline(30, color="grey", linestyle="--", label="30 dB")
    axis.axvline(1, color="grey", linestyle=":")
    axis.set(xlabel="seconds of far-end talk", ylabel="ERLE, dB (250 ms windows)",
             title=f"Echo room: delay {results.room['delay'] * 1000:.0f} ms, decay {results.room['decay'] * 1000:.0f} ms, "
                   f"{results.room['echo_gain']:g} dB")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def report(results: Results) -> str:
    r = results
    return "\n".join([
        f"room {r.room}, front end {r.stages}",
        f"ERLE, far end only: {r.erle_after_1s:.1f} dB after 1 s ({r.erle_after_1s_coded:.1f} dB after the codec); "
        "curve: " + " ".join(f"{e:.0f}" for _, e in r.erle_curve) + "; after the near end talked first: "
        f"{r.erle_after_1s_after_near_turn:.1f} dB",
        f"near-end STOI in double talk, 6 kbps: {r.double_talk_stoi:.3f} (no echo: {r.double_talk_stoi_no_echo:.3f}, "
        f"loss {r.double_talk_stoi_no_echo - r.double_talk_stoi:.3f}; no front end: {r.double_talk_stoi_no_front_end:.3f}; "
        f"far end heard in headphones: {r.double_talk_stoi_headphones:.3f})",
        f"noisy speech at {r.room['snr']:g} dB SNR, 6 kbps: STOI {r.noisy_stoi_sent:.3f} sent vs {r.noisy_stoi_input:.3f} "
        f"for the noisy input ({r.noisy_stoi_sent - r.noisy_stoi_input:+.3f}); noise in the pauses "
        f"{r.noise_reduction_in_pauses:.1f} dB lower",
        f"front end: {r.front_end_ms_per_10ms:.3f} ms per 10 ms = {r.front_end_ms_per_10ms * 4 / 3:.3f} ms per "
        f"13.3 ms frame; its own delay {r.front_end_delay_ms:.1f} ms",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay", type=float, default=Room.delay, help="seconds to the first echo (default %(default)s)")
    parser.add_argument("--decay", type=float, default=Room.decay, help="seconds for the echo to fall 60 dB (default %(default)s)")
    parser.add_argument("--echo-gain", type=float, default=Room.echo_gain, help="dB (default %(default)s)")
    parser.add_argument("--snr", type=float, default=Room.snr, help="near talker over noise, dB (default %(default)s)")
    parser.add_argument("--noise", choices=["pink", "white"], default=Room.noise)
    parser.add_argument("--seed", type=int, default=Room.seed)
    parser.add_argument("--stages", default="aec,ns,agc", help="comma-separated front-end stages (default %(default)s)")
    parser.add_argument("--far-only", type=float, default=3.0, help="seconds the far end talks alone (default %(default)s)")
    parser.add_argument("--both", type=float, default=6.0, help="seconds of double talk (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where echo_room.json/.md/.png go (default %(default)s)")
    args = parser.parse_args(argv)
    names = {name.strip() for name in args.stages.split(",") if name.strip()}
    if names - {"aec", "ns", "agc"}:
        parser.error(f"--stages: unknown {sorted(names - {'aec', 'ns', 'agc'})}; choose from aec, ns, agc")
    stages = Stages(echo="aec" in names, noise="ns" in names, gain="agc" in names)
    room = Room(args.delay, args.decay, args.echo_gain, args.snr, args.noise, args.seed)
    torch.set_num_threads(1)
    results = measure(room, stages, args.far_only, args.both)
    text = report(results)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"echo_room_{'_'.join(sorted(names)) or 'off'}"
    if (room.delay, room.decay) != (Room.delay, Room.decay):  # the middle room keeps the short name
        stem = stem.with_name(f"{stem.name}_{room.delay * 1000:.0f}ms_{room.decay * 1000:.0f}ms")
    if room.snr != Room.snr:
        stem = stem.with_name(f"{stem.name}_snr{room.snr:g}")
    stem.with_suffix(".json").write_text(json.dumps(asdict(results), indent=1))
    stem.with_suffix(".md").write_text(f"    python benchmarks/echo_room.py {' '.join(argv if argv is not None else sys.argv[1:])}\n\n"
                                       + "\n".join(f"* {line}" for line in text.splitlines()) + "\n")
    plot(results, stem.with_suffix(".png"))


if __name__ == "__main__":
    main()
