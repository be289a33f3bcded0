"""What the speed benchmarks share: the model under test, its input, and a one-thread timer."""

from __future__ import annotations

import argparse
import time
from typing import Callable

import numpy as np
import torch

from codec import EncodecModel, config_24khz, load_model

RANDOM_24KHZ = "random-24khz"


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=RANDOM_24KHZ,
        help=f"{RANDOM_24KHZ} (the facebook/encodec_24khz architecture with random weights: speed depends "
        "on the architecture only), default (the bundled model), a checkpoint dir, a hub id or a Meta .th file",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default %(default)s)")


def benchmark_model(spec: str) -> EncodecModel:
    if spec == RANDOM_24KHZ:
        torch.manual_seed(0)
        return EncodecModel(config_24khz()).eval()
    return load_model(spec).eval()


def benchmark_audio(model: EncodecModel, seconds: float) -> torch.Tensor:
    """Band-limited noise with a speech-like envelope `(1, channels, samples)`, the same every run."""
    rate, channels = model.config.sampling_rate, model.config.audio_channels
    rng = np.random.default_rng(0)
    samples = int(seconds * rate)
    noise = np.convolve(rng.standard_normal(samples + 63), np.hanning(64) / 32, mode="valid")[:samples]
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * np.arange(samples) / rate)
    audio = np.tile((0.3 * noise * envelope).astype(np.float32), (channels, 1))
    return torch.from_numpy(audio)[None]


def best_of(repeats: int, run: Callable[[], object]) -> float:
    """Shortest wall time of `repeats` runs: the least disturbed by whatever else the machine does."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)
