"""How many remote peers one core decodes in real time, with each streaming engine in the same run.

    python benchmarks/decode_peers.py [--model default] [--peers 8] [--seconds 4]

A receiver runs one decoder per remote peer on one thread: each round decodes one frame of every peer
(engines interleaved round by round, so a disturbance hits all alike: torch, onnx, onnx-int8). Peers per core = the frame
period over the median cost of one peer's frame.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_model_arguments, benchmark_audio, benchmark_model  # noqa: E402
from benchmarks.streaming_speed import STREAMING_ENGINES  # noqa: E402
from streaming import StartMode, StreamingEncoder  # noqa: E402
from streaming.onnx_engine import engine_decoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--bandwidth", type=float, default=6.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = benchmark_model(args.model)
    codes = StreamingEncoder(model, args.bandwidth).push(benchmark_audio(model, args.seconds))
    decoders = {name: [engine_decoder(model, StartMode.IMMEDIATE, name) for _ in range(args.peers)] for name in STREAMING_ENGINES}
    rounds: dict[str, list[float]] = {name: [] for name in STREAMING_ENGINES}
    for frame in range(codes.shape[-1]):
        for name, peers in decoders.items():
            began = time.perf_counter()
            for decoder in peers:
                decoder.push(codes[..., frame : frame + 1])
            rounds[name].append(time.perf_counter() - began)
    period = model.config.hop_length / model.config.sampling_rate
    print(f"{args.peers} peers, {args.bandwidth:g} kbps, {args.threads} thread(s), model {args.model}")
    for name, times in rounds.items():
        per_peer = float(np.median(times[10:])) / args.peers  # the first rounds load sessions and caches
        print(f"{name:9s}: {per_peer * 1e3:.2f} ms per peer and frame = {period / per_peer:.1f} peers per core in real time")


if __name__ == "__main__":
    main()
