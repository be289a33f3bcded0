"""What the ONNX engine's int8 weights cost in quality, on real speech: PESQ-WB and STOI of the int8 stream
against the clean speech and against the float32 graphs' stream, per bandwidth.

    python benchmarks/onnx_quality.py [--model default] [--audio ../shared/audio/speech] [--bandwidth 6 12]
                                      [--blockwise-min-weights N]

Each file streams through three pipelines, each with the search width a call uses at that bandwidth:
float32 encoder → float32 decoder (the reference), int8 → int8 (a call of two int8 peers), and int8 →
float32 (an int8 sender heard by a float32 peer: the bitstream is the same format). Prints the mean of
each metric per pipeline and bandwidth, and the fraction of frames whose codes the int8 encoder changed.
`--blockwise-min-weights` gives matrices of that many weights or more the large matrices' 4-bit blocks (the
full-size model's LSTMs and largest convs get them; the bundled model's, all under 1 M weights, do not): 0.5 M
puts the bundled model's same layers in 4-bit, the full-size recipe on the only trained model here. Its graphs
are cached in a temporary folder.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.latency_quality import CODEC_RATE, EVAL_RATE, SPEECH_DIR, load_speech, metrics, resample  # noqa: E402
from call.search_width import default_search_width  # noqa: E402
from codec import load_model  # noqa: E402
from streaming import onnx_export  # noqa: E402
from streaming.onnx_engine import OnnxStreamingDecoder, OnnxStreamingEncoder  # noqa: E402

PIPELINES = {"float32": ("float32", "float32"), "int8": ("int8", "int8"), "int8 -> float32": ("int8", "float32")}


def stream(model, audio: torch.Tensor, bandwidth: float, encoder: str, decoder: str, cache: str | None) -> tuple[np.ndarray, torch.Tensor]:
    """One file through an encoder and a decoder of the given precisions: ``(decoded audio, codes)``."""
    coder = OnnxStreamingEncoder(model, bandwidth, search_width=default_search_width(bandwidth), precision=encoder, cache_dir=cache)
    codes = torch.cat([coder.push(audio), coder.flush()], dim=-1)
    player = OnnxStreamingDecoder(model, precision=decoder, cache_dir=cache)
    decoded = torch.cat([player.push(codes), player.flush()], dim=-1)
    return decoded[0, 0, : audio.shape[-1]].numpy(), codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default | checkpoint dir | hub id | Meta .th file")
    parser.add_argument("--audio", default=str(SPEECH_DIR), help="directory of speech files")
    parser.add_argument("--bandwidth", type=float, nargs="+", default=[6.0, 12.0])
    parser.add_argument("--blockwise-min-weights", type=int, help="matrices of this many weights or more in 4-bit blocks")
    args = parser.parse_args()
    cache = None
    if args.blockwise_min_weights is not None:
        onnx_export.BLOCKWISE_MIN_WEIGHTS = args.blockwise_min_weights
        cache = tempfile.mkdtemp(prefix="onnx_quality_")
    torch.set_num_threads(1)
    model = load_model(args.model).eval()
    files = load_speech(args.audio)
    seconds = sum(len(x) for _, x in files) / EVAL_RATE
    print(f"model {args.model}, {len(files)} files, {seconds:.1f} s of speech, matrices of ≥ {onnx_export.BLOCKWISE_MIN_WEIGHTS} weights in 4-bit blocks")
    for bandwidth in args.bandwidth:
        scores: dict[str, list[dict]] = {name: [] for name in PIPELINES}
        against_float: dict[str, list[dict]] = {name: [] for name in PIPELINES if name != "float32"}
        changed = frames = 0
        for _, speech in files:
            audio = torch.from_numpy(resample(speech, EVAL_RATE, CODEC_RATE).astype(np.float32))[None, None]
            outputs = {name: stream(model, audio, bandwidth, *precisions, cache) for name, precisions in PIPELINES.items()}
            reference = resample(outputs["float32"][0], CODEC_RATE, EVAL_RATE)
            for name, (decoded, _) in outputs.items():
                scores[name].append(metrics(speech, decoded))
                if name != "float32":
                    against_float[name].append(metrics(reference, decoded))
            float_codes, int8_codes = outputs["float32"][1], outputs["int8"][1]
            changed += int((float_codes != int8_codes).any(dim=1).sum())
            frames += float_codes.shape[-1]
        for name, rows in scores.items():
            print(f"{bandwidth:4g} kbps {name:16s} vs clean speech: " + summary(rows)
                  + (f"; vs the float32 stream: {summary(against_float[name])}" if name in against_float else ""))
        print(f"{bandwidth:4g} kbps int8 encoder changed the codes of {changed} of {frames} frames ({100 * changed / frames:.1f} %)")


def summary(rows: list[dict]) -> str:
    pesq = np.nanmean([r["pesq_wb"] for r in rows])
    stoi = np.mean([r["stoi"] for r in rows])
    return f"PESQ-WB {pesq:.3f}  STOI {stoi:.4f}"


if __name__ == "__main__":
    main()
