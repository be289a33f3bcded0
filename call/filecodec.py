"""Compressed audio files: the wire's packet stream written to disk.

    python -m call.filecodec encode speech.wav speech.ecs [--model default] [--bandwidth 6]
    python -m call.filecodec decode speech.ecs speech_out.wav [--model default]

A file is the ``HEADER``, the audio packets and the ``END`` of one stream, each prefixed
by its length (``docs/PROTOCOL.md``), so a file is a recorded call and decodes to exactly
the input's length. The same :class:`~call.sender.Sender` and
:class:`~call.receiver.PeerStream` as a call do the work, with the exact start mode, on the PyTorch
engine: the ONNX graphs start immediately and step one frame at a time, and a file's 1 s blocks through
the PyTorch layers cost half as much (0.166× against 0.343× real time, width 4, 44 s of speech, one run).
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile

from streaming import StartMode

from . import wire
from .model_header import stream_header_for
from .receiver import PeerStream
from .search_width import search_width_option
from .sender import Sender
from .wav import read_wav

BLOCK = 24000
"""Samples encoded per call into the model: large blocks, since nothing waits for them."""


def encode_file(
    model, wav_path: str, out_path: str, bandwidth: float = 6.0, frames_per_packet: int = 1, search_width: int | None = None
) -> int:
    """Encode a WAV file (any rate; resampled to the model's) to a stream file; returns its size."""
    audio = read_wav(wav_path, model.config.sampling_rate, model.config.audio_channels)

    async def encode() -> list[bytes]:
        with ThreadPoolExecutor(1) as pool:
            sender = Sender(model, pool, bandwidth, StartMode.EXACT, frames_per_packet, search_width)
            messages = [sender.header.encode()]
            for start in range(0, audio.shape[-1], BLOCK):
                messages += await sender.push(audio[:, start : start + BLOCK])
            return messages + await sender.finish()

    messages = asyncio.run(encode())
    with open(out_path, "wb") as out:
        return wire.write_stream(out, messages)


def decode_file(model, in_path: str, wav_path: str) -> np.ndarray:
    """Decode a stream file to a WAV at the model's rate; returns the ``(channels, n)`` audio.

    A corrupt or crafted file raises :class:`~call.wire.ProtocolError` naming the byte offset of
    the first message that does not fit, before anything is written; what one message can make
    the decoder produce is bounded as in a call (``JitterBuffer.max_jump``).
    """
    stream = None
    with open(in_path, "rb") as source:
        for offset, message in wire.read_records(source):
            try:
                if stream is None:
                    stream = _open_stream(model, message)
                stream.accept(message, now=0.0)
            except wire.ProtocolError as error:
                raise wire.ProtocolError(f"{in_path}: corrupt at byte {offset}: {error}") from error
    if stream is None:
        raise wire.ProtocolError(f"{in_path} holds no stream")
    if stream.end is None:
        raise wire.ProtocolError(f"{in_path} has no END message: the file is truncated")
    audio = np.concatenate([stream.decode(stream.jitter.pop(now=0.0)), stream.flush()], axis=-1)
    audio = audio[:, : stream.output_length()]
    soundfile.write(wav_path, audio.T, stream.header.sample_rate, subtype="FLOAT")
    return audio


def _open_stream(model, message: bytes) -> PeerStream:
    """The stream a file's first message (its ``HEADER``) opens, if it fits ``model``."""
    header = wire.StreamHeader.decode(message)
    if header != stream_header_for(model, header.stream_id, header.start_time_us):
        raise wire.ModelMismatchError("the file was encoded with another model: pass the same --model")
    return PeerStream(model, header, StartMode.EXACT)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Encode a WAV to a compressed stream file, or back.")
    parser.add_argument("command", choices=["encode", "decode"])
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--model", default="default", help="default | checkpoint dir | hub id | Meta .th file")
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps, for encode (default %(default)s)")
    parser.add_argument(
        "--search-width", type=search_width_option, default=None,
        help="codebook search width, for encode: more is better codes, slower (default: 4 up to 6 kbps, 1 above)",
    )
    args = parser.parse_args(argv)
    if args.command == "decode":
        check_stream_file(args.source)
    from codec import load_model

    model = load_model(args.model).eval()
    try:
        run(args, model)
    except (OSError, ValueError) as error:  # a bad file: one line, nothing half-written left behind
        raise SystemExit(f"{args.command}: {error}") from error


def check_stream_file(path: str) -> None:
    """Read the whole file's framing before a model is loaded: a cut or foreign file fails in a moment."""
    try:
        with open(path, "rb") as source:
            for _ in wire.read_records(source):
                pass
    except (OSError, wire.ProtocolError) as error:
        raise SystemExit(f"decode: {path}: {error}") from error


def run(args: argparse.Namespace, model) -> None:
    if args.command == "encode":
        size = encode_file(model, args.source, args.destination, args.bandwidth, search_width=args.search_width)
        seconds = soundfile.info(args.source).duration
        print(f"{args.destination}: {size} bytes, {8 * size / seconds / 1000:.2f} kbps")
    else:
        audio = decode_file(model, args.source, args.destination)
        print(f"{args.destination}: {audio.shape[-1]} samples")


if __name__ == "__main__":
    main()
