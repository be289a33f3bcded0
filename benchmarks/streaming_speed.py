"""Streaming speed: encoder + decoder fed 320-sample blocks, against offline encode + decode.

    python benchmarks/streaming_speed.py [--seconds 10] [--bandwidth 6] [--batch 1] [--threads 1] [--search-width 1]
                                         [--engine torch|onnx|onnx-int8|both|all] [--front-end]

Prints × real time (compute seconds per second of audio) of streaming and of the offline model
on the same audio in the same run, their ratio, and percentiles of the per-frame cost (the time
from a block entering the encoder to its audio leaving the decoder, which is what a call adds).
Also the memory floor of a batch-1 stream: each frame must read every weight of the network once
(the low-rate layers take one step per frame), at the speed this machine reads memory on one thread
by matrix-vector products (and a stricter one at the speed of a plain read of the same bytes);
offline encoding reuses each weight across all frames and never pays it. `--engine both` streams with
the PyTorch layers and with ONNX Runtime (``streaming.onnx_engine``) in the same run; `all` adds ONNX
Runtime with int8 weights, which reads a quarter of the bytes and so can go below the float32 floor. `--front-end`
also runs the microphone's front end (``call.front_end``: AEC, NS, AGC) over the same audio, its
own decoded sound as the echo reference, and prints its cost per frame beside the codec's.
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
from streaming import StartMode  # noqa: E402
from streaming.onnx_engine import ENGINES, engine_decoder, engine_encoder  # noqa: E402
from call.front_end import FrontEnd  # noqa: E402
from call.search_width import search_width_option  # noqa: E402


STREAMING_ENGINES = [engine for engine in ENGINES if engine != "auto"]
"""The engines a stream can run on, as ``--engine`` of a call names them (``auto`` picks one of them)."""
GROUPS = {"both": ["torch", "onnx"], "all": STREAMING_ENGINES}


def stream_once(model, audio: torch.Tensor, bandwidth: float, block: int, search_width: int = 1, engine: str = "torch") -> np.ndarray:
    """Per-block wall times (s) of one full stream, flush included in the last block."""
    encoder = engine_encoder(model, bandwidth, StartMode.IMMEDIATE, search_width, engine)
    decoder = engine_decoder(model, StartMode.IMMEDIATE, engine)
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


def front_end_once(audio: np.ndarray, rate: int) -> float:
    """Seconds the front end (every stage) takes over ``audio`` (``(1, n)``), fed in 10 ms
    chunks with the same audio, 100 ms earlier, as what the speaker plays."""
    front_end = FrontEnd(rate, 1)
    chunk, lag = front_end.chunk, rate // 10
    played = np.concatenate([np.zeros((1, lag), np.float32), audio], axis=-1)
    began = time.perf_counter()
    for start in range(0, audio.shape[-1] - chunk + 1, chunk):
        front_end.played(played[:, start : start + chunk])
        front_end.process(audio[:, start : start + chunk])
    return time.perf_counter() - began


def weights_read_per_frame(model, bandwidth: float) -> int:
    """Bytes a batch-1 stream must read each frame: every encoder and decoder weight (the low-rate
    layers run one step per frame, so nothing amortises them) and the codebooks searched."""
    network = sum(p.numel() * p.element_size() for p in [*model.encoder.parameters(), *model.decoder.parameters()])
    searched = model.config.num_quantizers_for_bandwidth(bandwidth)
    codebook = model.quantizer.layers[0].codebook.embed
    return network + searched * codebook.numel() * codebook.element_size()


def last_level_cache_bytes() -> int | None:
    """Size of the CPU's largest cache (Linux sysfs), or None where it cannot be read."""
    sizes = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = int((index / "level").read_text()), (index / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        sizes[level] = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return sizes[max(sizes)] if sizes else None


def memory_bandwidth(total_bytes: int = 256 << 20, matrix_bytes: int = 8 << 20) -> tuple[float, float]:
    """Bytes/s of one thread over weights far larger than any CPU cache: read by matrix-vector products, which
    is how a batch-1 stream reads its low-rate layers' weights (the floor), and by a plain sum, which reads
    the same bytes faster (measured here 1.2× the product's speed) and so gives a stricter floor, one that
    only a product as fast as a bare read could reach."""
    columns = 2048
    rows = matrix_bytes // 4 // columns
    matrices = [torch.randn(rows, columns) for _ in range(total_bytes // matrix_bytes)]
    vector = torch.randn(1, rows)

    def products() -> None:
        for matrix in matrices:
            torch.mm(vector, matrix)

    def sums() -> None:
        for matrix in matrices:
            matrix.sum()

    products(), sums()
    return total_bytes / best_of(3, products), total_bytes / best_of(3, sums)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--batch", type=int, default=1, help="independent streams in one batch")
    parser.add_argument("--block", type=int, default=320, help="samples per push (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--search-width", type=search_width_option, default=1, help="codebook search width of both (default %(default)s)")
    parser.add_argument("--engine", choices=[*STREAMING_ENGINES, *GROUPS], default="torch",
                        help="streaming engine; both: torch and onnx, all: and onnx-int8, in the same run (default %(default)s)")
    parser.add_argument("--front-end", action="store_true", help="also time the microphone's front end (AEC, NS, AGC)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = benchmark_model(args.model)
    audio = benchmark_audio(model, args.seconds).repeat(args.batch, 1, 1)
    seconds = audio.shape[-1] / model.config.sampling_rate

    with torch.inference_mode():
        def offline() -> None:
            encoded = model.encode(audio, bandwidth=args.bandwidth, search_width=args.search_width)
            model.decode(encoded.audio_codes, encoded.audio_scales)

        engines = GROUPS.get(args.engine, [args.engine])
        offline()  # PyTorch's kernels chosen and caches warmed before timing, as the streams' below
        for engine in engines:  # graphs exported (first use) and sessions loaded before timing
            stream_once(model, audio[..., : 4 * args.block], args.bandwidth, args.block, args.search_width, engine)
        runs = {engine: [] for engine in engines}
        offline_times = []
        for _ in range(args.repeats):  # offline and the engines interleaved: a disturbance hits all alike
            offline_times.append(best_of(1, offline))
            for engine in engines:
                runs[engine].append(stream_once(model, audio, args.bandwidth, args.block, args.search_width, engine))
        offline_time = min(offline_times)
    best = {engine: min(times, key=lambda t: t.sum()) for engine, times in runs.items()}
    if args.front_end:
        mono = audio[0].numpy().astype(np.float32)
        front_end_time = min(front_end_once(mono, model.config.sampling_rate) for _ in range(args.repeats))

    print(
        f"{seconds:g} s of audio × {args.batch} stream(s), {args.bandwidth:g} kbps, search width {args.search_width}, "
        f"{args.block}-sample blocks, "
        f"{args.threads} thread(s), model {args.model}"
    )
    for engine, frames in best.items():
        print(f"streaming encode+decode: {frames.sum() / seconds:.3f}× real time per stream batch ({engine})")
    print(f"offline   encode+decode: {offline_time / seconds:.3f}× real time")
    for engine, frames in best.items():
        print(f"streaming / offline:     {frames.sum() / offline_time:.2f} ({engine})")
    for engine in [e for e in best if e != "torch" and "torch" in best]:
        print(f"{engine} / torch streaming:  {best[engine].sum() / best['torch'].sum():.2f}")
    frames_per_second = model.config.sampling_rate / model.config.hop_length
    weight_bytes, cache_bytes = weights_read_per_frame(model, args.bandwidth), last_level_cache_bytes()
    bytes_per_second, read_bytes_per_second = memory_bandwidth()
    floor = weight_bytes / bytes_per_second * frames_per_second * seconds
    cache = "" if cache_bytes is None else f"{cache_bytes >> 20} MiB "
    print(
        f"memory floor:            {floor / seconds:.3f}× real time = {floor / offline_time:.2f}× offline "
        f"({weight_bytes / 1e6:.1f} MB of weights read per frame at {bytes_per_second / 1e9:.1f} GB/s, the one-thread "
        f"matrix-vector speed on weights larger than the {cache}cache)"
    )
    if cache_bytes is not None and weight_bytes < cache_bytes:
        # Not a floor then: where the encoder's and decoder's weights stay in the cache between frames, a stream
        # reads them faster. Where other processes (or the other graph) evict them, it is one.
        print(f"                         (the weights fit in the {cache}cache: a quiet machine may stream below it)")
    for engine, frames in best.items():
        print(f"streaming / float32 memory floor: {frames.sum() / floor:.2f} ({engine})")
    strict = floor * bytes_per_second / read_bytes_per_second
    print(f"stricter floor:          {strict / seconds:.3f}× real time (the same bytes at a plain read's "
          f"{read_bytes_per_second / 1e9:.1f} GB/s); streaming / it: "
          + ", ".join(f"{frames.sum() / strict:.2f} ({engine})" for engine, frames in best.items()))
    frames_in_audio = audio.shape[-1] / model.config.hop_length
    if args.front_end:
        for engine, frames in best.items():
            print(f"front end (AEC+NS+AGC):  {1e3 * front_end_time / frames_in_audio:.3f} ms per 13.3 ms frame = "
                  f"{front_end_time / frames.sum():.3f}× the streaming codec's time ({engine})")
    block_ms = 1e3 * args.block / model.config.sampling_rate
    for engine, frames in best.items():
        p50, p90, p99 = np.percentile(frames * 1e3, [50, 90, 99])
        print(
            f"per-block cost (a {block_ms:.1f} ms block): p50 {p50:.2f} ms, p90 {p90:.2f} ms, "
            f"p99 {p99:.2f} ms, max {frames.max() * 1e3:.2f} ms ({engine})"
        )


if __name__ == "__main__":
    main()
