"""End-to-end call latency, per stage, against Opus; with speech quality and relay capacity.

    python benchmarks/latency.py                   # full run (about 15 min on 2 cores), results in benchmarks/results/
    python benchmarks/latency.py --quick           # under 2 min: headline call, Opus, 3 files, a short relay ramp
    python benchmarks/latency.py --model DIR       # default | DIR | hub id | Meta .th | untrained-24khz
    python benchmarks/latency.py --cpu-load 2      # a call while 2 processes burn CPU (3 to 13 s of 20), vs idle
    python benchmarks/latency.py --engine both     # the headline call on PyTorch and on ONNX Runtime (stages side by side)
    python benchmarks/latency.py --netem --netem-only jitter --repeat 4   # one emulated condition 4 times: netem-jitter.md

Each measured call is real: ``server.py`` and two ``client.py`` peers (separate processes) on
loopback, sound cards replaced by a clocked source and sink (``--block`` samples per callback, in
real time), both peers talking. Every frame's delay is split into stages (input buffering,
encode, packetize, network/relay, jitter buffer, decode, output; plus the codec's lookahead)
through the observer hook of ``call/sender.py`` and ``call/receiver.py``; see ``benchmarks/latency_call.py``. Opus
(libopus, VoIP, CBR, 20 ms and 10 ms frames) rides the same client, relay, wire format, jitter
buffer and playout. The first line printed with "p50" is our end-to-end latency in ms.

``--cpu-load N`` runs only the CPU-contention scenario: for our model (and Opus 20 ms unless
``--no-opus``) an idle call, then the same call with N processes spinning ``while True: pass``
from ``--load-from`` to ``--load-until`` seconds of its measured part; p50/p99 before, during and
after the load, the time the latency takes to come back after it, what was dropped, lost and shed.
Results in ``benchmarks/results/cpu_load.md`` and ``.json`` (see :func:`cpu_load_main`).
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

from benchmarks.latency_call import STAGES, UNTRAINED, CallSpec, CpuLoad, run_call  # noqa: E402
from benchmarks.latency_floor import call_floor_ms, oracle_ms, spare_samples  # noqa: E402
from benchmarks.latency_quality import CODEC_RATE, SPEECH_DIR  # noqa: E402
from call.front_end import chunk_samples  # noqa: E402

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
    stages = {s: percentiles(pooled[s]) for s in STAGES}
    spec, rate, hop = result["spec"], result["senders"][0]["rate"], result["senders"][0]["hop"]
    directions = list(zip(result["directions"], result.get("phases", [0.0, 0.0])))
    own = [({s: percentiles(d[s]) for s in STAGES}, phase) for d, phase in directions]  # each direction's stages
    return {"spec": result["spec"], "end_to_end": percentiles(pooled["end_to_end"]), "stages": stages,
            "directions_end_to_end": [percentiles(d["end_to_end"]) for d in result["directions"]],
            "samples_ms": np.round(1000 * np.asarray(pooled["end_to_end"]), 1).tolist(),
            "frames": len(pooled["end_to_end"]), "lost": sum(d["lost"] for d in result["directions"]),
            "kbps": result["kbps"], "jitter_stats": result["jitter_stats"], "step_stats": result.get("step_stats", []),
            "device_late_max_ms": result["device_late_max_ms"],
            "floor_ms": call_floor_ms(spec, stages, result.get("phases", [0.0]), rate, hop),
            # each direction's own floor and its spare (a policy that must keep more plays a block above)
            "directions_floor_ms": [call_floor_ms(spec, s, [phase], rate, hop) for s, phase in own],
            "directions_spare_ms": [call_floor_ms(spec, s, [phase], rate, hop, spare_samples) for s, phase in own],
            "directions_oracle_ms": [oracle_ms(d, phase, spec["block"], rate, hop) for d, phase in directions]}


def p_line(label: str, stats: dict, floor_ms: float = float("nan")) -> str:
    """``end-to-end p50 X ms …  [label]``: the numbers first, so the first one after "p50" is the figure."""
    return (f"end-to-end p50 {stats['p50']:.1f} ms  p90 {stats['p90']:.1f} ms  p99 {stats['p99']:.1f} ms  "
            f"max {stats['max']:.1f} ms  floor {floor_ms:.1f} ms  n={stats['n']}  [{label}]")


# ------------------------------------------------------------------------ the calls


def plan(args: argparse.Namespace, model: str) -> list[tuple[str, CallSpec]]:
    """``(group, spec)`` of every call to run, the headline first."""
    engines = ["torch", "onnx"] if args.engine == "both" else [args.engine]
    base = dict(seconds=args.seconds, warmup=args.warmup, bandwidth=6.0, engine=engines[0])
    chunked = BLOCKS[args.block] % chunk_samples(CODEC_RATE) == 0  # whole chunks for the microphone's front end
    head = {**base, "block": BLOCKS[args.block], "front_end": chunked}
    blocks = ("10 ms blocks" if args.block == "10ms" else f"{args.block}-sample blocks") \
        + ("" if chunked else ", no AEC/NS/AGC")
    calls = [("headline", CallSpec(label=f"{model} 6 kbps, 1 frame/packet, {blocks}" + engine_note(engine),
                                   model=model, **{**head, "engine": engine})) for engine in engines]
    if not args.no_opus:
        calls += [("headline", CallSpec(label=f"opus 20 ms, 6 kbps, {blocks}", model="opus-20ms", **head)),
                  ("headline", CallSpec(label=f"opus 10 ms, 6 kbps, {blocks}", model="opus-10ms", **head))]
    calls.append(("device", CallSpec(label=f"{model} 6 kbps, {blocks}, sound cards at 48 kHz", model=model,
                                     device_rate=48000, **head)))
    if args.quick:
        return calls
    for name, block in BLOCKS.items():
        if block != head["block"]:
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
    tight = {"jitter_initial": 0.02, "jitter_min": 0.005}
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


def engine_note(engine: str) -> str:
    """Label suffix of a call on another engine than the reference (PyTorch)."""
    return "" if engine == "torch" else f", {engine} engine"


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
        if group == "headline" and spec.model == model:  # ours, on each engine: its stages
            print(p_line(spec.label, summary["end_to_end"], summary["floor_ms"]), flush=True)
            for stage in STAGES:
                s = summary["stages"][stage]
                print(f"  {stage:10s} median {s['p50']:6.1f} ms  p99 {s['p99']:6.1f}  mean {s['mean']:6.1f}", flush=True)
        else:
            print(p_line(spec.label, summary["end_to_end"], summary["floor_ms"]), flush=True)
        print("  per direction p50 / floor / spare / 95 % oracle " + " and ".join(
            f"{d['p50']:.1f} / {f:.1f} / {r:.1f} / {o:.1f}" for d, f, r, o in zip(
                summary["directions_end_to_end"], summary["directions_floor_ms"], summary["directions_spare_ms"],
                summary["directions_oracle_ms"]))
              + " ms; " + step_line(summary["step_stats"]), flush=True)
    return results


def step_line(step_stats: list[list[dict]]) -> str:
    """What the sub-frame playout steps (``call.time_scale``) of each peer did in a call."""
    return "sub-frame steps " + "; ".join(", ".join(
        f"{s['shortened']} shorter (-{s['samples_cut']} samples) {s['lengthened']} longer (+{s['samples_added']})"
        f" {s.get('expanded', 0)} expanded (+{s.get('samples_expanded', 0)})"
        for s in peer) or "none" for peer in step_stats)


def fake_result(spec: CallSpec) -> dict:  # --dry: exercise the reporting without calls
    rng = np.random.default_rng(0)
    d = {s: list(rng.uniform(0, 0.01, 50)) for s in STAGES}
    d["end_to_end"] = list(np.sum([d[s] for s in STAGES], axis=0))
    d["lost"] = 0
    return {"spec": vars(spec), "directions": [d, d], "kbps": [6, 6], "jitter_stats": [], "device_late_max_ms": [],
            "senders": [{"rate": 24000, "hop": 320}] * 2, "phases": [0.0, 0.0]}


# --------------------------------------------------------------------- CPU load


RECOVERY_WINDOW = 0.5
"""Seconds of frames (by capture time) in the rolling median that decides when a call is back."""
RECOVERY_TOLERANCE = 0.10
"""Back means a rolling median at most this much above the idle call's p50."""


def rolling_median(captured: np.ndarray, latency: np.ndarray,
                   window: float = RECOVERY_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """The median latency of the frames captured within ``window / 2`` of each frame's capture,
    for every frame whose window lies wholly inside the call: ``(times, medians)``."""
    order = np.argsort(captured)
    c, v = np.asarray(captured, float)[order], np.asarray(latency, float)[order]
    half = window / 2
    keep = (c - half >= c[0]) & (c + half <= c[-1]) if len(c) else np.zeros(0, bool)
    lo, hi = np.searchsorted(c, c - half, side="left"), np.searchsorted(c, c + half, side="right")
    medians = np.array([np.median(v[a:b]) for a, b in zip(lo[keep], hi[keep])])
    return c[keep], medians


def recovery_time(rolled: tuple[np.ndarray, np.ndarray], since: float, threshold: float) -> float:
    """Seconds from ``since`` (the load's end) until the rolling median latency (``rolled``, what
    :func:`rolling_median` returns) is at most ``threshold`` and stays there to the end of the call:
    0 when it never rose above it after ``since``; ``inf`` when it is not back by the end."""
    times, medians = rolled
    later = times >= since
    times, medians = times[later], medians[later]
    if not len(times):
        return float("nan")
    above = np.flatnonzero(medians > threshold)
    if not len(above):
        return 0.0
    if above[-1] == len(times) - 1:
        return float("inf")
    return float(times[above[-1] + 1] - since)


def load_summary(result: dict, idle: dict | None = None) -> dict:
    """One call of the CPU-load scenario: end-to-end p50/p99 over the whole measured part and
    before, during and after the load (by each frame's capture time), the recovery after the
    load, each direction against the same direction of the ``idle`` call (this summary's own
    kind; this call itself when None), and what the call dropped, lost and shed. Times in ms
    except where named."""
    marks = result["load"]
    start, stop = marks["started_at"], marks["stopped_at"]
    directions = result["directions"]

    def pooled(key: str) -> np.ndarray:  # both directions, in one order for every key
        return np.concatenate([np.asarray(d[key], float) for d in directions])

    captured, latency = pooled("captured"), pooled("end_to_end")
    masks = {"all": np.ones(len(captured), bool), "before": captured < start,
             "during": (captured >= start) & (captured < stop), "after": captured >= stop}
    stats = {name: percentiles(latency[mask].tolist()) for name, mask in masks.items()}
    stages = {phase: {stage: float(1000 * pooled(stage)[masks[phase]].mean()) if masks[phase].any() else float("nan")
                      for stage in STAGES} for phase in ("before", "during", "after")}
    p50s = [float(1000 * np.median(d["end_to_end"])) if len(d["end_to_end"]) else float("nan") for d in directions]
    pre_load = [float(1000 * np.median([x for x, c in zip(d["end_to_end"], d["captured"]) if c < start] or [np.nan]))
                for d in directions]
    senders = result.get("senders") or []
    frame = senders[0]["hop"] / senders[0]["rate"] if senders and senders[0].get("hop") else 0.0
    # Each direction keeps its own level (the phase of its frames against the sound card's blocks): it is
    # compared with the same direction (same peers, same speech) of the idle call, and with itself before
    # the load. Playout moves in whole frames (13.3 ms for ours, 20 ms for Opus 20 ms), more than 10 % of a
    # 60 ms call, so a call can settle a frame above its old level with nothing queued: "frame" allows that.
    recovery = {}
    rolled = [rolling_median(d["captured"], d["end_to_end"]) for d in directions]  # once: four thresholds read it
    for name, references in (("idle", idle["directions_p50"] if idle else p50s), ("pre_load", pre_load)):
        limits = [(1 + RECOVERY_TOLERANCE) * ms / 1000 for ms in references]
        strict = [recovery_time(r, stop, t) for r, t in zip(rolled, limits)]
        loose = [recovery_time(r, stop, t + frame) for r, t in zip(rolled, limits)]
        recovery[name] = {"thresholds_ms": [1000 * t for t in limits], "s": max(strict), "frame_s": max(loose),
                          "directions_s": strict}
    playout = {}  # the receivers' jitter buffers, by tick time: what the jitter stage is made of
    traces = [np.asarray(t, float).reshape(-1, 3) for t in result.get("jitter_traces") or []]
    tick = np.concatenate(traces) if traces else np.zeros((0, 3))
    spans = {"before": (marks["measured_from"], start), "during": (start, stop),
             "after": (stop, marks["measured_from"] + result["spec"]["seconds"])}
    for phase, (lo, hi) in spans.items():
        rows = tick[(tick[:, 0] >= lo) & (tick[:, 0] < hi)]
        playout[phase] = {"target_ms": float(1000 * rows[:, 1].mean()) if len(rows) else float("nan"),
                          "held_frames": float(rows[:, 2].mean()) if len(rows) else float("nan"),
                          "ticks_per_s": len(rows) / max(hi - lo, 1e-9) / max(len(traces), 1)}
    jitter = [s for peer in result["jitter_stats"] for s in peer]
    begin, end = marks["measured_from"], marks["measured_from"] + result["spec"]["seconds"]
    shed_seconds = 0.0  # in the measured part, both senders added
    for sender in senders:
        log = sender.get("shed_log") or []
        for (t, on), (t_next, _) in zip(log, log[1:] + [(end, False)]):
            shed_seconds += max(0.0, min(t_next, end) - max(t, begin)) if on else 0.0
    return {
        "label": result["spec"]["label"], "model": result["spec"]["model"], "processes": marks["processes"],
        "phases": stats, "stages": stages, "playout": playout, "directions_p50": p50s,
        "recovery": recovery, "frame_ms": 1000 * frame,
        "frames": len(latency), "lost": sum(d["lost"] for d in directions),
        "late": sum(s["late"] for s in jitter), "skipped": sum(s["skipped"] for s in jitter),
        "stretched": sum(s["stretched"] for s in jitter),
        "dropped_ms": sum(1000 * (s.get("dropped_samples") or 0) / s.get("rate", 24000) for s in senders),
        "sheds": sum(s.get("sheds") or 0 for s in senders), "shed_seconds": shed_seconds,
        "input_overflows": sum(s.get("input_overflows") or 0 for s in senders),
        "device_late_max_ms": max((max(d.values()) for d in result["device_late_max_ms"] if d), default=0.0),
        "cpu": marks["cpu"], "load_window_s": [start - marks["measured_from"], stop - marks["measured_from"]],
        "series": [{"t": np.round(np.asarray(d["captured"]) - marks["measured_from"], 4).tolist(),
                    "ms": np.round(1000 * np.asarray(d["end_to_end"]), 1).tolist()} for d in directions],
    }


def cpu_load_main(args: argparse.Namespace) -> dict:
    """The CPU-contention scenario: for each model an idle call and a loaded one, back to back,
    same schedule (``--load-from``/``--load-until`` of ``--seconds`` measured), N burners in the
    second. Writes ``cpu_load.json``, ``cpu_load.md`` and ``cpu_load.png`` to ``args.out``."""
    from benchmarks import latency_report
    from benchmarks.latency_quality import load_speech

    if not 0 <= args.load_from < args.load_until <= args.seconds:
        raise SystemExit(f"need 0 <= --load-from < --load-until <= --seconds ({args.seconds:g})")
    model_spec, note = resolve_model(args.model)
    files = load_speech(args.audio, limit=None)
    talker_a, talker_b = speech_pair(files)
    models = [model_spec] + ([] if args.no_opus else ["opus-20ms"])
    report = {"command": " ".join([Path(sys.argv[0]).name] + (args.argv if args.argv is not None else sys.argv[1:])),
              "model": model_spec, "model_note": note, "machine": machine(), "seconds": args.seconds,
              "warmup": args.warmup, "load_processes": args.cpu_load, "load_from": args.load_from,
              "load_until": args.load_until, "tolerance": RECOVERY_TOLERANCE, "window_s": RECOVERY_WINDOW,
              "model_info": model_info(model_spec), "calls": []}
    for model in models:
        idle = None
        for processes in (0, args.cpu_load):
            label = f"{model} 6 kbps, " + (f"{processes} busy processes" if processes else "idle")
            spec = CallSpec(label=label, model=model, seconds=args.seconds, warmup=args.warmup, bandwidth=6.0)
            progress(f"{label} ({spec.warmup:g} s warm-up + {spec.seconds:g} s"
                     + (f", load {args.load_from:g}-{args.load_until:g} s)" if processes else ")"))
            result = run_call(spec, talker_a, talker_b, load=CpuLoad(processes, args.load_from, args.load_until))
            summary = load_summary(result, idle)
            if idle is None:
                idle = summary
            report["calls"].append(summary)
            print(load_line(summary), flush=True)
    report["machine_after"] = {"loadavg": machine()["loadavg"]}
    report["elapsed_s"] = time.monotonic() - STARTED
    latency_report.write_cpu_load(report, args.out)
    progress(f"wrote {args.out}/cpu_load.json, cpu_load.md and cpu_load.png ({report['elapsed_s']:.0f} s in all)")
    return report


def load_line(s: dict) -> str:
    ph = s["phases"]
    text = (f"{s['label']}: all p50 {ph['all']['p50']:.1f} / p99 {ph['all']['p99']:.1f} ms; before "
            f"{ph['before']['p50']:.1f} / {ph['before']['p99']:.1f}, during {ph['during']['p50']:.1f} / "
            f"{ph['during']['p99']:.1f}, after {ph['after']['p50']:.1f} / {ph['after']['p99']:.1f}")
    if s["processes"]:
        idle, own = s["recovery"]["idle"], s["recovery"]["pre_load"]
        text += ("; back within 10 % of idle p50 (" + " / ".join(f"{t:.1f}" for t in idle["thresholds_ms"])
                 + f" ms) after {idle['s']:.2f} s ({idle['frame_s']:.2f} s with a frame more; against its own "
                 f"p50 before the load {own['s']:.2f} s, {own['frame_s']:.2f} s)")
    return (text + f"; lost {s['lost']}, late {s['late']}, dropped {s['dropped_ms']:.0f} ms, "
            f"search shed {s['sheds']}x ({s['shed_seconds']:.1f} s)")


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
            "busy_processes": sh("ps -eo pcpu,etime,args --sort=-pcpu | head -8 | cut -c1-160"),
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
    parser.add_argument("--audio", default=str(SPEECH_DIR), help="directory of speech WAVs (default %(default)s)")
    parser.add_argument("--out", help="results directory (default benchmarks/results, or benchmarks/results/quick)")
    parser.add_argument("--seconds", type=float, help="measured seconds per call (default 20, quick 4)")
    parser.add_argument("--warmup", type=float, help="seconds per call before measuring (default 5, quick 3)")
    parser.add_argument("--engine", choices=["torch", "onnx", "onnx-int8", "both"], default="torch",
                        help="streaming engine of our calls (client.py --engine); both: the headline call on each, "
                             "the rest on torch (default %(default)s)")
    parser.add_argument("--block", choices=list(BLOCKS), default="10ms",
                        help="samples per sound-card callback of the headline calls (320: one frame at 24 kHz) "
                             "(default %(default)s)")
    parser.add_argument("--no-opus", action="store_true", help="skip Opus")
    parser.add_argument("--no-quality", action="store_true", help="skip PESQ/STOI/SI-SNR")
    parser.add_argument("--no-relay", action="store_true", help="skip the relay capacity ramp")
    parser.add_argument("--cpu-load", type=int, metavar="N",
                        help="only the CPU-contention scenario: idle call, then N processes burning CPU during it")
    parser.add_argument("--load-from", type=float, default=3.0,
                        help="with --cpu-load: seconds into the measured call the load starts (default %(default)s)")
    parser.add_argument("--load-until", type=float, default=13.0,
                        help="with --cpu-load: seconds into the measured call the load stops (default %(default)s)")
    parser.add_argument("--netem", action="store_true",
                        help="only calls over emulated networks (benchmarks/latency_netem.py): netem.md, netem.json")
    parser.add_argument("--netem-only", nargs="+", metavar="WORD",
                        help="with --netem: only the conditions whose names contain a WORD (e.g. jitter), "
                             "in netem-WORD.md")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="with --netem: each condition N times in a row (default %(default)s)")
    parser.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rewrite", metavar="DIR", help="only rewrite the Markdown and plots from DIR/latency.json "
                        "(with --cpu-load: from DIR/cpu_load.json)")
    args = parser.parse_args(argv)
    if (args.netem_only or args.repeat != 1) and not args.netem:
        parser.error("--netem-only and --repeat go with --netem")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.netem_only:
        from benchmarks.latency_netem import selected

        try:
            selected(args.netem_only)
        except ValueError as error:
            parser.error(str(error))
    args.seconds = args.seconds or (4.0 if args.quick else 20.0)
    args.warmup = args.warmup or (3.0 if args.quick else 5.0)
    args.out = Path(args.out) if args.out else RESULTS / "quick" if args.quick else RESULTS
    args.argv = argv
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.rewrite:
        from benchmarks import latency_report

        name, write = ("cpu_load.json", latency_report.write_cpu_load) if args.cpu_load is not None \
            else ("latency.json", latency_report.write)
        report = json.loads((Path(args.rewrite) / name).read_text())
        write(report, Path(args.rewrite))
        return report
    if args.cpu_load is not None:
        return cpu_load_main(args)
    if args.netem:
        from benchmarks.latency_netem import netem_main

        return netem_main(args)
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
