"""One-command local call: a relay and two peers on loopback; one speaks a WAV, the other
records what it hears.

    python demo.py [--model default] [--input speech.wav] [--output heard.wav] [--no-pace]

Without --input it speaks a generated three-second voice-like signal (a gliding harmonic
tone with noise bursts and pauses). Prints each peer's totals, including the wire bitrate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from client import Client, Options
from server import Relay


def voice_like(seconds: float, rate: int) -> np.ndarray:
    """A deterministic stand-in for speech: harmonics on a gliding pitch, syllable-like gating."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = 140 * (1 + 0.25 * np.sin(2 * np.pi * 0.8 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    syllables = (np.sin(2 * np.pi * 3 * t) > -0.2).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 0.05, t.shape)
    return (0.25 * voiced * syllables + noise * (1 - syllables)).astype(np.float32)


async def demo(model, input_path: str, output_path: str, pace: bool) -> None:
    relay = Relay()
    async with relay.start("127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        listener = Client(Options(server=url, room="demo", output=output_path, status=False), model)
        speaker = Client(Options(server=url, room="demo", input=input_path, pace=pace, status=False), model)
        # The speaker waits until someone is in the room, so the start order does not matter.
        await asyncio.gather(listener.run(), speaker.run())
    print(speaker.status.summary())
    print(listener.status.summary())
    print(f"wrote {output_path} ({soundfile.info(output_path).frames} samples, "
          f"input had {soundfile.info(input_path).frames})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default | checkpoint dir | hub id | Meta .th file")
    parser.add_argument("--input", help="WAV to speak (default: a generated voice-like signal)")
    parser.add_argument("--output", default="heard.wav", help="where the listener writes (default %(default)s)")
    parser.add_argument("--no-pace", action="store_true", help="send as fast as possible, not in real time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from codec import load_model

    try:
        model = load_model(args.model).eval()
    except (OSError, ValueError) as error:
        raise SystemExit(f"Cannot load model {args.model!r}: {error}") from error
    input_path = args.input
    if input_path is None:
        input_path = str(Path(tempfile.mkdtemp()) / "voice.wav")
        soundfile.write(input_path, voice_like(3.0, model.config.sampling_rate), model.config.sampling_rate)
    asyncio.run(demo(model, input_path, args.output, pace=not args.no_pace))


if __name__ == "__main__":
    main()
