"""End-to-end call latency, per stage, against Opus; with speech quality and relay capacity.

    python benchmarks/latency.py                   # full run (about 15 min on 2 cores), results in benchmarks/results/
    python benchmarks/latency.py --quick           # under 2 min: headline call, Opus, 3 files, a short relay ramp
    python benchmarks/latency.py --model DIR       # default | DIR | hub id | Meta .th | untrained-24khz

Each measured call is real: ``server.py`` and two ``client.py`` peers (separate processes) on
loopback, sound cards replaced by a clocked source and sink (``--block`` samples per callback, in
real time), both peers talking. Every frame's delay is split into stages (input buffering,
encode, packetize, network/relay, jitter buffer, decode, output; plus the codec's lookahead)
through the observer hook of ``call/sender.py`` and ``call/receiver.py``; see ``benchmarks/latency_call.py``. Opus
(libopus, VoIP, CBR, 20 ms and 10 ms frames) rides the same client, relay, wire format, jitter
buffer and playout. The first line printed with "p50" is our end-to-end latency in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from benchmarks.latency_call import STAGES, UNTRAINED, CallSpec, run_call  # noqa: E402

DEFAULT_AUDIO = "/work/shared/audio/speech"
RESULTS = ROOT / "benchmarks" / "results"
BLOCKS = {"10ms": 240, "256": 256, "320": 320, "480": 480, "1024": 1024}  # 320: one frame, what the client asks of a microphone
BANDWIDTHS = [1.5, 3.0, 6.0, 12.0, 24.0]
STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------ statistics


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in ms (NaN when there is nothing to measure)."""
    v = 1000 * np.asarray(values, float)
    if not len(v):
        return {k: float("nan") for k in ("p50", "p90", "p99", "max", "mean", "n")}
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)),
            "p99": float(np.percentile(v, 99)), "max": float(v.max()), "mean": float(v.mean()), "n": len(v)}


def summarize_call(result: dict) -> dict:
    """Both directions pooled: end-to-end and per-stage statistics."""
    pooled = {key: sum((d[key] for d in result["directions"]), []) for key in ("end_to_end",) + STAGES}
    return {"spec": result["spec"], "end_to_end": percentiles(pooled["end_to_end"]),
            "stages": {s: percentiles(pooled[s]) for s in STAGES},
            "directions_end_to_end": [percentiles(d["end_to_end"]) for d in result["directions"]],
            "samples_ms": np.round(1000 * np.asarray(pooled["end_to_end"]), 1).tolist(),
            "frames": len(pooled["end_to_end"]), "lost": sum(d["lost"] for d in result["directions"]),
            "kbps": result["kbps"], "jitter_stats": result["jitter_stats"],
            "device_late_max_ms": result["device_late_max_ms"]}


def p_line(label: str, stats: dict) -> str:
    """``end-to-end p50 X ms …  [label]``: the numbers first, so the first one after "p50" is the figure."""
    return (f"end-to-end p50 {stats['p50']:.1f} ms  p90 {stats['p90']:.1f} ms  p99 {stats['p99']:.1f} ms  "
            f"max {stats['max']:.1f} ms  n={stats['n']}  [{label}]")


# ------------------------------------------------------------------------ the calls


def plan(args: argparse.Namespace, model: str) -> list[tuple[str, CallSpec]]:
    """``(group, spec)`` of every call to run, the headline first."""
    base = dict(seconds=args.seconds, warmup=args.warmup, bandwidth=6.0)
    calls = [("headline", CallSpec(label=f"{model} 6 kbps, 1 frame/packet, 10 ms blocks", model=model, **base))]
    if not args.no_opus:
        calls += [("headline", CallSpec(label="opus 20 ms, 6 kbps, 10 ms blocks", model="opus-20ms", **base)),
                  ("headline", CallSpec(label="opus 10 ms, 6 kbps, 10 ms blocks", model="opus-10ms", **base))]
    if args.quick:
        return calls
    for name, block in BLOCKS.items():
        if block != 240:
            calls.append(("block", CallSpec(label=f"block {name} samples", model=model, block=block, **base)))
            if not args.no_opus:
                calls.append(("block", CallSpec(label=f"opus 20 ms, block {name}", model="opus-20ms",
                                                block=block, **base)))
    for fpp in (2, 4):
        calls.append(("frames_per_packet", CallSpec(label=f"{fpp} frames/packet", model=model,
                                                    frames_per_packet=fpp, **base)))
    for bandwidth in BANDWIDTHS:
        if bandwidth != 6.0:
            calls.append(("bandwidth", CallSpec(label=f"{bandwidth:g} kbps", model=model,
                                                **{**base, "bandwidth": bandwidth})))
    tight = {"jitter_initial": 0.02, "jitter_min": 0.005, "output_margin": 0.0}
    calls.append(("playout", CallSpec(label=f"what-if tight playout, {model}", model=model, playout=tight, **base)))
    if not args.no_opus:
        calls += [("playout", CallSpec(label="what-if tight playout, opus 20 ms", model="opus-20ms",
                                       playout=tight, **base)),
                  ("playout", CallSpec(label="what-if tight playout, opus 10 ms", model="opus-10ms",
                                       playout=tight, **base))]
    for other in args.sweep_models:
        if other != model:
            calls.append(("model", CallSpec(label=f"model {other}", model=other, **base)))
    return calls


def speech_pair(files: list[tuple[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Two talkers' signals at 24 kHz: the files concatenated, the second in reverse order."""
    from benchmarks.latency_quality import CODEC_RATE, EVAL_RATE, resample

    a = np.concatenate([resample(x, EVAL_RATE, CODEC_RATE) for _, x in files])
    b = np.concatenate([resample(x, EVAL_RATE, CODEC_RATE) for _, x in files[::-1]])
    return a, b


def run_calls(args: argparse.Namespace, model: str, files) -> list[dict]:
    calls = plan(args, model)
    talker_a, talker_b = speech_pair(files)
    results = []
    for n, (group, spec) in enumerate(calls):
        progress(f"call {n + 1}/{len(calls)}: {spec.label} ({spec.warmup:g} s warm-up + {spec.seconds:g} s)")
        summary = summarize_call(run_call(spec, talker_a, talker_b) if not args.dry else fake_result(spec))
        summary["group"] = group
        results.append(summary)
        if n == 0:
            print(p_line(spec.label, summary["end_to_end"]), flush=True)
            for stage in STAGES:
                s = summary["stages"][stage]
                print(f"  {stage:10s} median {s['p50']:6.1f} ms  p99 {s['p99']:6.1f}  mean {s['mean']:6.1f}", flush=True)
        else:
            print(p_line(spec.label, summary["end_to_end"]), flush=True)
    return results


def fake_result(spec: CallSpec) -> dict:  # --dry: exercise the reporting without calls
    rng = np.random.default_rng(0)
    d = {s: list(rng.uniform(0, 0.01, 50)) for s in STAGES}
    d["end_to_end"] = list(np.sum([d[s] for s in STAGES], axis=0))
    d["lost"] = 0
    return {"spec": vars(spec), "directions": [d, d], "kbps": [6, 6], "jitter_stats": [], "device_late_max_ms": []}


# ---------------------------------------------------------------------- machine


def machine() -> dict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception as error:  # noqa: BLE001
            return f"({error})"

    import torch

    from benchmarks.opus_codec import libopus_version

    try:
        opus = libopus_version()
    except RuntimeError as error:
        opus = str(error)
    return {"lscpu": sh("lscpu"), "memory": sh("free -h"), "loadavg": sh("cat /proc/loadavg"),
            "busy_processes": sh("ps -eo pcpu,etime,args --sort=-pcpu | head -8"),
            "python": platform.python_version(), "torch": torch.__version__, "libopus": opus,
            "cores": os.cpu_count(), "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


# ---------------------------------------------------------------------- main


def model_info(spec: str) -> dict:
    """Parameters and, for a checkpoint on disk, the first bytes of its SHA-256: which model ran."""
    import hashlib

    from benchmarks.latency_call import load_codec

    model = load_codec(spec)
    info = {"parameters": sum(p.numel() for p in model.parameters()) if hasattr(model, "parameters") else 0}
    path = None
    if spec == "default":
        from codec import DEFAULT_MODEL_DIR

        path = DEFAULT_MODEL_DIR / "model.safetensors"
    elif Path(spec).is_dir() and (Path(spec) / "model.safetensors").is_file():
        path = Path(spec) / "model.safetensors"
    elif Path(spec).is_file():
        path = Path(spec)
    if path is not None and path.is_file():
        info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        info["file_mtime_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(path.stat().st_mtime))
    return info


def resolve_model(spec: str) -> tuple[str, str | None]:
    """The model to measure, and a note when the bundled default is missing."""
    if spec == "default":
        from codec import DEFAULT_MODEL_DIR

        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            note = (f"no bundled default model in {DEFAULT_MODEL_DIR}: measured untrained-24khz "
                    f"({UNTRAINED['untrained-24khz']}) instead; latency is that of the full-size "
                    "architecture, quality figures are meaningless for it")
            return "untrained-24khz", note
    return spec, None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="headline calls, 3 files, short relay ramp (< 2 min)")
    parser.add_argument("--model", default="default",
                        help="default | checkpoint dir | hub id | Meta .th | " + " | ".join(UNTRAINED))
    parser.add_argument("--sweep-models", nargs="*", default=None,
                        help="other models for the model sweep (default: untrained-24khz, when --model is another)")
    parser.add_argument("--audio", default=DEFAULT_AUDIO, help="directory of speech WAVs (default %(default)s)")
    parser.add_argument("--out", help="results directory (default benchmarks/results, or benchmarks/results/quick)")
    parser.add_argument("--seconds", type=float, help="measured seconds per call (default 20, quick 4)")
    parser.add_argument("--warmup", type=float, help="seconds per call before measuring (default 5, quick 3)")
    parser.add_argument("--no-opus", action="store_true", help="skip Opus")
    parser.add_argument("--no-quality", action="store_true", help="skip PESQ/STOI/SI-SNR")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay capacity ramp")
    parser.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rewrite", metavar="DIR", help="only rewrite the Markdown and plots from DIR/latency.json")
    args = parser.parse_args(argv)
    args.seconds = args.seconds or (4.0 if args.quick else 20.0)
    args.warmup = args.warmup or (3.0 if args.quick else 5.0)
    args.out = Path(args.out) if args.out else RESULTS / "quick" if args.quick else RESULTS
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.rewrite:
        from benchmarks import latency_report

        report = json.loads((Path(args.rewrite) / "latency.json").read_text())
        latency_report.write(report, Path(args.rewrite))
        return report
    from benchmarks import latency_report
    from benchmarks.latency_quality import evaluate, load_speech, summarize

    model_spec, note = resolve_model(args.model)
    if note:
        progress(f"NOTE: {note}")
    if args.sweep_models is None:
        args.sweep_models = [] if args.quick or model_spec == "untrained-24khz" else ["untrained-24khz"]
    files = load_speech(args.audio, limit=3 if args.quick else None)
    report = {"command": " ".join([Path(sys.argv[0]).name] + (argv if argv is not None else sys.argv[1:])),
              "model": model_spec, "model_note": note, "quick": args.quick, "machine": machine(),
              "seconds": args.seconds, "warmup": args.warmup, "audio": args.audio,
              "files": [name for name, _ in files]}
    report["model_info"] = model_info(model_spec)
    report["calls"] = run_calls(args, model_spec, files)
    if not args.no_quality:
        from benchmarks.latency_call import load_codec
        from call.threads import configure_threads

        configure_threads()  # as in a call: 2 threads on a shared 2-core machine made the LSTM 20x slower
        rows = evaluate(model_spec, load_codec(model_spec), files, BANDWIDTHS,
                        [] if args.no_opus else [20.0, 10.0], progress)
        report["quality"] = summarize(rows)
        report["quality_per_file"] = rows
        for row in report["quality"]:
            print(f"quality {row['codec']:16s} {row['kbps']:5.1f} kbps  PESQ-WB {row['pesq_wb']:.2f}  "
                  f"STOI {row['stoi']:.3f}  SI-SNR {row['si_snr']:6.1f} dB", flush=True)
    if not args.no_relay:
        from benchmarks.latency_relay import capacity

        report["relay"] = []
        for room_size in [2] if args.quick else [2, 5]:
            ramp = capacity(quick=args.quick, progress=progress, room_size=room_size)
            report["relay"].append(ramp)
            print(f"relay capacity: {ramp['capacity_streams']} streams of 6 kbps on one core "
                  f"(rooms of {room_size}, added p99 <= {ramp['budget_ms']:g} ms)", flush=True)
    report["machine_after"] = {"loadavg": machine()["loadavg"]}
    report["elapsed_s"] = time.monotonic() - STARTED
    latency_report.write(report, args.out)
    progress(f"wrote {args.out}/latency.json, latency.md and plots ({report['elapsed_s']:.0f} s in all)")
    return report


if __name__ == "__main__":
    main()
