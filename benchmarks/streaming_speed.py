"""Streaming speed: encoder + decoder fed 320-sample blocks, against offline encode + decode.

    python benchmarks/streaming_speed.py [--seconds 10] [--bandwidth 6] [--batch 1] [--threads 1]

Prints × real time (compute seconds per second of audio) of streaming and of the offline model
on the same audio in the same run, their ratio, and percentiles of the per-frame cost (the time
from a block entering the encoder to its audio leaving the decoder, which is what a call adds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_model_arguments, benchmark_audio, benchmark_model, best_of  # noqa: E402
from streaming import StreamingDecoder, StreamingEncoder  # noqa: E402


def stream_once(model, audio: torch.Tensor, bandwidth: float, block: int) -> np.ndarray:
    """Per-block wall times (s) of one full stream, flush included in the last block."""
    encoder, decoder = StreamingEncoder(model, bandwidth), StreamingDecoder(model)
    times = []
    for start in range(0, audio.shape[-1], block):
        began = time.perf_counter()
        decoder.push(encoder.push(audio[..., start : start + block]))
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    decoder.push(encoder.flush())
    decoder.flush()
    times[-1] += time.perf_counter() - began
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=1, help="independent streams in one batch")
    parser.add_argument("--block", type=int, default=320, help="samples per push (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the fastest counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = benchmark_model(args.model)
    audio = benchmark_audio(model, args.seconds).repeat(args.batch, 1, 1)
    seconds = audio.shape[-1] / model.config.sampling_rate

    with torch.inference_mode():
        def offline() -> None:
            encoded = model.encode(audio, bandwidth=args.bandwidth)
            model.decode(encoded.audio_codes, encoded.audio_scales)

        offline_time = best_of(args.repeats, offline)
        runs = [stream_once(model, audio, args.bandwidth, args.block) for _ in range(args.repeats)]
    frames = min(runs, key=lambda times: times.sum())
    streaming_time = frames.sum()

    print(
        f"{seconds:g} s of audio × {args.batch} stream(s), {args.bandwidth:g} kbps, {args.block}-sample blocks, "
        f"{args.threads} thread(s), model {args.model}"
    )
    print(f"streaming encode+decode: {streaming_time / seconds:.3f}× real time per stream batch")
    print(f"offline   encode+decode: {offline_time / seconds:.3f}× real time")
    print(f"streaming / offline:     {streaming_time / offline_time:.2f}")
    block_ms = 1e3 * args.block / model.config.sampling_rate
    p50, p90, p99 = np.percentile(frames * 1e3, [50, 90, 99])
    print(
        f"per-block cost (a {block_ms:.1f} ms block): p50 {p50:.2f} ms, p90 {p90:.2f} ms, "
        f"p99 {p99:.2f} ms, max {frames.max() * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
