"""The ONNX step graphs of this version against those of another version, one step at a time, in one run.

    git worktree add /tmp/before COMMIT
    python benchmarks/onnx_steps.py --before /tmp/before [--model default|random-24khz] [--precision int8] [--rounds 200]

Exports the encoder (greedy, the bandwidth's codebooks) and decoder steps of this version and of the
checkout `--before` (its own code, the same model), then runs each graph and its twin alternately, 20 steps a
round, fed the same random frame and state, and prints the CPU time of this thread per step (the fastest
round and the 20th percentile: what other processes' time slices do not disturb; a shared cache or memory
bus still does) and the ratio now / before; then the encoder and decoder steps in turn, as a stream runs
them (a graph run many times in a row keeps more of its weights in the cache than a stream does). Then whole streams (`--seconds` of the benchmark's audio, encoder
and decoder, 320-sample blocks) on this version's engine with either version's graphs, alternately, `--repeats`
times each: × real time in CPU time, the fastest run. Both need the two versions' graphs to take the same state.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPOSITORY))

from benchmarks.common import add_model_arguments, benchmark_audio, benchmark_model  # noqa: E402
from streaming.onnx_engine import OnnxStreamingDecoder, OnnxStreamingEncoder, graph_dir, session_options  # noqa: E402
from streaming.onnx_export import PRECISIONS, graph_name  # noqa: E402

STEPS_PER_ROUND = 20
EXPORT = """
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks.common import benchmark_model
from streaming.onnx_export import export_step
export_step(benchmark_model(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]) or None, precision=sys.argv[6])
"""


def export(source: Path, model: str, path: Path, kind: str, num_codebooks: int | None, precision: str) -> None:
    """One step graph as the code in `source` exports it."""
    command = [sys.executable, "-c", EXPORT, str(source), model, str(path), kind, str(num_codebooks or 0), precision]
    subprocess.run(command, check=True, cwd=source, stdout=subprocess.DEVNULL)


def feeds(session, num_codebooks: int, codebook_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A frame (or a frame's codes) and a state of the scale a stream sees."""
    values = {}
    for node in session.get_inputs():
        if node.name == "codes":
            values[node.name] = rng.integers(0, codebook_size, (1, num_codebooks)).astype(np.int64)
        else:
            shape = [1 if not isinstance(d, int) else d for d in node.shape]
            values[node.name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    return values


def cpu_per_step(steps: list[tuple[object, dict[str, np.ndarray]]]) -> float:
    """CPU time of one pass of `steps` (sessions and their feeds, run in turn), the fastest round's mean."""
    began = time.thread_time()
    for _ in range(STEPS_PER_ROUND):
        for session, values in steps:
            session.run(None, values)
    return (time.thread_time() - began) / STEPS_PER_ROUND


def interleaved(rounds: int, steps: list[list[tuple[object, dict[str, np.ndarray]]]]) -> list[list[float]]:
    """CPU times per pass of the two versions' `steps`, alternately, `rounds` each."""
    times: list[list[float]] = [[], []]
    for round_ in range(rounds):
        for which in (0, 1) if round_ % 2 else (1, 0):
            times[which].append(cpu_per_step(steps[which]))
    return times


def report(label: str, times: list[list[float]]) -> None:
    fastest, p20 = [min(t) for t in times], [np.percentile(t, 20) for t in times]
    print(f"{label:24s} before {1e6 * fastest[0]:6.0f} µs, now {1e6 * fastest[1]:6.0f} µs: now / before "
          f"{fastest[1] / fastest[0]:.2f} (20th percentile {p20[1] / p20[0]:.2f})")


def stream_cpu_time(model, audio, bandwidth: float, cache: Path, precision: str) -> float:
    """CPU seconds of one stream through the ONNX engine reading the graphs cached under `cache`."""
    encoder = OnnxStreamingEncoder(model, bandwidth, cache_dir=cache, precision=precision)
    decoder = OnnxStreamingDecoder(model, cache_dir=cache, precision=precision)
    hop = model.config.hop_length
    began = time.thread_time()
    for start in range(0, audio.shape[-1] - hop + 1, hop):
        decoder.push(encoder.push(audio[..., start : start + hop]))
    return time.thread_time() - began


def main() -> None:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--before", required=True, type=Path, help="a checkout of the version to compare with")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--rounds", type=int, default=200, help="rounds of each graph (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="whole streams of each (default %(default)s)")
    args = parser.parse_args()
    model = benchmark_model(args.model)
    num_codebooks = model.config.num_quantizers_for_bandwidth(args.bandwidth)
    rng = np.random.default_rng(0)
    print(f"model {args.model}, {args.bandwidth:g} kbps, {args.precision}, CPU time of one thread per step, "
          f"{args.rounds} rounds of {STEPS_PER_ROUND} steps, interleaved")
    with tempfile.TemporaryDirectory() as folder:
        caches = [Path(folder) / "before", Path(folder) / "now"]  # as the engine's cache folders
        pairs: list[list[tuple[object, dict[str, np.ndarray]]]] = [[], []]
        for kind, count in (("encoder", num_codebooks), ("decoder", None)):
            name = graph_name(kind, count, precision=args.precision)
            paths = [graph_dir(model, cache) / name for cache in caches]
            for source, path in zip((args.before.resolve(), REPOSITORY), paths):
                export(source, args.model, path, kind, count, args.precision)
            sessions = [ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"]) for path in paths]
            values = feeds(sessions[0], num_codebooks, model.config.codebook_size, rng)
            report(name, interleaved(args.rounds, [[(session, values)] for session in sessions]))
            for pair, session in zip(pairs, sessions):
                pair.append((session, values))
        # As a stream runs them: each step's weights wait in the cache while the other graph runs
        report("encoder + decoder", interleaved(args.rounds, pairs))
        audio = benchmark_audio(model, args.seconds)
        runs: list[list[float]] = [[], []]
        for repeat in range(args.repeats):
            for which in (0, 1) if repeat % 2 else (1, 0):
                runs[which].append(stream_cpu_time(model, audio, args.bandwidth, caches[which], args.precision))
        before, now = (min(r) / args.seconds for r in runs)
        print(f"whole streams, {args.seconds:g} s: before {before:.3f}×, now {now:.3f}× real time (CPU): now / before {now / before:.2f}")


if __name__ == "__main__":
    main()
