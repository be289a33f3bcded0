"""Offline encode/decode speed of our EnCodec next to transformers', same weights, same run.

    python benchmarks/codec_speed.py [--seconds 10] [--bandwidth 6] [--threads 1]

Prints × real time (seconds of compute per second of audio; lower is faster) for each.
transformers is optional (pip install '.[test]').
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import add_model_arguments, benchmark_audio, benchmark_model, best_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ours = benchmark_model(args.model)
    audio = benchmark_audio(ours, args.seconds)
    models = {"ours": ours}
    try:
        import transformers

        with tempfile.TemporaryDirectory() as directory:
            ours.save_pretrained(directory)
            models["transformers"] = transformers.EncodecModel.from_pretrained(directory).eval()
    except ImportError:
        print("transformers is not installed: timing ours only")

    print(f"{args.seconds:g} s of audio, {args.bandwidth:g} kbps, {args.threads} thread(s), best of {args.repeats}")
    results = {}
    for name, model in models.items():
        with torch.inference_mode():
            encoded = model.encode(audio, bandwidth=args.bandwidth)
            encode = best_of(args.repeats, lambda: model.encode(audio, bandwidth=args.bandwidth))
            decode = best_of(args.repeats, lambda: model.decode(encoded.audio_codes, encoded.audio_scales))
        results[name] = (encode / args.seconds, decode / args.seconds)
        print(f"{name:>12}: encode {encode / args.seconds:.3f}× real time, decode {decode / args.seconds:.3f}× real time")
    if "transformers" in results:
        (ours_enc, ours_dec), (ref_enc, ref_dec) = results["ours"], results["transformers"]
        print(f"{'ours/theirs':>12}: encode {ours_enc / ref_enc:.2f}, decode {ours_dec / ref_dec:.2f} (below 1: we are faster)")


if __name__ == "__main__":
    main()
