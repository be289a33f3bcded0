"""Compare candidate models on held-out recorded speech at one bandwidth, to choose which to ship.

    python -m training.compare --models default training/runs/d6env3/last.pt training/runs/e6env6/last.pt \
        --sets training/runs/data_mixed3/{klettres,fillets,tuxpaint,asterisk_g722}_heldout \
        training/runs/data_mixed2/asterisk_heldout --out training/results/envelope2/heldout_recorded_6kbps.json

A candidate is chosen on sets the models never trained on and that are not the real-speech
evaluation clips (../shared/audio/speech), so the evaluation that follows the choice stays honest.
This is `training.evaluate` cut down to what a choice needs: one bandwidth, no Opus, no timing, a
clip limit for quick checks while runs are still training, and one table across the candidates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from call.search_width import search_width_option

from .evaluate import codec_roundtrip, load_model, metrics, real_clips, summarise


def compare(models: list[str], sets: list[str], bandwidth: float, search_width: int, max_clips: int | None) -> dict:
    """{model: {set: summary}}, each set's clips taken in name order, the first `max_clips` of them."""
    clips = {Path(d).name: dict(list(real_clips(d).items())[:max_clips]) for d in sets}
    results: dict[str, dict] = {}
    for spec in models:
        model = load_model(spec)
        results[spec] = {}
        for set_name, set_clips in clips.items():
            rows = [metrics(ref, codec_roundtrip(model, ref, bandwidth, search_width)) for ref in set_clips.values()]
            results[spec][set_name] = summarise(rows)
            print(f"{spec} {set_name}: PESQ-WB {results[spec][set_name]['pesq_wb']:.3f} "
                  f"STOI {results[spec][set_name]['stoi']:.4f}", flush=True)
    return results


def table(results: dict, key: str) -> str:
    set_names = list(next(iter(results.values())))
    lines = [f"| {key} | " + " | ".join(set_names) + " | mean |", "| --- " * (len(set_names) + 2) + "|"]
    for spec, by_set in results.items():
        values = [by_set[s][key] for s in set_names]
        lines.append(f"| {spec} | " + " | ".join(f"{v:.4f}" for v in values) + f" | {sum(values) / len(values):.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="'default', checkpoint directories or training last.pt files")
    parser.add_argument("--sets", nargs="+", required=True, help="directories of held-out recorded WAVs")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--search-width", type=search_width_option, default=1, help="codebook search width (1: greedy)")
    parser.add_argument("--max-clips", type=int, default=None, help="the first N clips of each set (a quick check)")
    parser.add_argument("--out", default=None, help="write {model: {set: summary}} as JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    missing = [d for d in args.sets if not Path(d).is_dir()]
    if missing:
        raise SystemExit(f"No such set directory: {', '.join(missing)} (training.real_speech writes the held-out sets)")

    results = compare(args.models, args.sets, args.bandwidth, args.search_width, args.max_clips)
    print("\n" + table(results, "stoi") + "\n\n" + table(results, "pesq_wb"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
