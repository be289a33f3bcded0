"""Calls over emulated networks: ``python benchmarks/latency.py --netem`` runs this.

Each condition (``CONDITIONS``) puts :mod:`benchmarks.netem` between the relay and the clients
(the relay → client direction, so a call's path crosses it once) and runs the same measured call
as the rest of the benchmark, for our model and Opus (20 and 10 ms frames) with the same playout:
end-to-end p50/p99 beside the floor of the configuration (``benchmarks/latency_floor.py``, with the
network stage's median, emulated delay included: the distance to it is what jitter and the jitter
buffer cost),
frames late (arrived after their turn), concealed (played as lost), stretched (ticks with nothing
to play) and expanded (ticks that played a few pitch periods while their frame was still to come). Results in ``netem.md`` and ``netem.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

CONDITIONS = {
    "loopback": ({}, {}),
    "loopback, DTX": ({}, {"dtx": True}),
    "delay 20 ms": ({"delay": 0.02}, {}),
    "jitter 20 ms p99": ({"jitter": 0.02}, {}),
    "reconnect every 4 s (0.3 s cut)": ({"outage_every": 4.0, "outage_for": 0.3}, {}),
    "cap 12 -> 3 -> 12 kbps (at 6 and 12 s)": ({"rate_schedule": "0:12,6:3,12:12"}, {}),
}
"""Name: (``benchmarks.netem.Conditions`` fields, other ``CallSpec`` fields). With DTX only the frames
sent are timed; the cap's times count from the first connection (the warm-up starts about then)."""


def counts(summary: dict) -> dict:
    """Receivers' jitter-buffer counters of a call, both directions added."""
    stats = summary["jitter_stats"]
    total = {key: sum(s[key] for peer in stats for s in peer) for key in ("received", "late", "lost", "stretched")}
    total["expanded"] = sum(s.get("expanded", 0) for peer in summary.get("step_stats", []) for s in peer)
    frames = max(1, total["received"] + total["lost"])
    return {**total, "late_pct": 100 * total["late"] / frames, "lost_pct": 100 * total["lost"] / frames}


def selected(only: list[str] | None, repeat: int = 1) -> list[tuple[str, dict, dict]]:
    """``(row name, netem fields, CallSpec fields)`` of the conditions whose names contain one of
    ``only`` (all without), each ``repeat`` times (named "#1", "#2"… then: the spread between
    runs of one window is what a single row cannot show). ``ValueError`` names the conditions when
    ``only`` matches none."""
    picked = {name: c for name, c in CONDITIONS.items() if not only or any(word in name for word in only)}
    if not picked:
        raise ValueError(f"no condition matches {', '.join(only)}: the conditions are {'; '.join(CONDITIONS)}")
    return [(name if repeat == 1 else f"{name} #{run}", netem, extra)
            for name, (netem, extra) in picked.items() for run in range(1, repeat + 1)]


def target_ms(summary: dict) -> float | None:
    """The issue's p50 target under jitter: the floor plus the emulated extra delay's 95th percentile;
    ``None`` for a condition without jitter."""
    from benchmarks.netem import Conditions

    jitter = summary["spec"].get("netem", {}).get("jitter")
    return summary["floor_ms"] + 1000 * Conditions(jitter=jitter).jitter_percentile(95) if jitter else None


def longest_gap_ms(direction: dict, period: float) -> float:
    """The longest time (ms) a listener heard no frame of the stream: between the end of one frame's
    playing and the start of the next frame that played, concealed and expanded audio and silence
    alike (frames that never played are not in ``direction``). Frame ``k``'s first sample plays
    ``end_to_end`` after its capture, which began at ``k`` periods."""
    order = np.argsort(direction["index"])
    plays = np.asarray(direction["index"])[order] * period + np.asarray(direction["end_to_end"])[order]
    return 1000 * float(max(np.diff(plays).max(initial=period) - period, 0.0))


def adaptation(result: dict) -> list[dict] | None:
    """For each sender that can follow the link (a codec with bandwidths), when the emulator's cap
    dropped and lifted (``result["caps"]``): seconds until it sent below its call's bandwidth
    (``down_s``) and until it was back at it (``up_s``; ``None`` when that did not happen in the call),
    and ``lifted`` (whether the cap lifted within the call). ``None`` without a drop in the schedule."""
    caps = result.get("caps") or []
    changes = list(zip(caps, caps[1:]))
    drop = next((t for (_, before), (t, kbps) in changes if kbps < before), None)
    if drop is None:
        return None
    lift = next((t for (_, before), (t, kbps) in changes if kbps > before and t > drop), None)
    rows = []
    for sender in result["senders"]:
        log, nominal = sender.get("bandwidth_log"), sender.get("bandwidth")
        if log is None:
            continue
        down = next((t - drop for t, kbps in log if t >= drop and kbps < nominal), None)
        up = None if lift is None else next((t - lift for t, kbps in log if t >= lift and kbps >= nominal), None)
        rows.append({"down_s": down, "up_s": up, "lifted": lift is not None,
                     "lowest_kbps": min((kbps for _, kbps in log), default=nominal)})
    return rows


def adaptation_cell(summary: dict) -> str:
    """``down / back up`` seconds of the slower sender, for the table."""
    rows = summary.get("adaptation")
    if rows is None:
        return "–"
    if not rows:
        return "no bandwidths"
    seconds = lambda key: None if any(r[key] is None for r in rows) else max(r[key] for r in rows)  # noqa: E731
    down, up = seconds("down_s"), seconds("up_s")
    up_text = "not lifted in the call" if not all(r["lifted"] for r in rows) else "not back" if up is None else f"{up:.2f}"
    return f"{'not down' if down is None else f'{down:.2f}'} / {up_text}"


def longest_gap(summary: dict) -> float:
    """The longer of the directions' longest gaps (ms); NaN for a report written before it was measured."""
    return max(summary.get("longest_gap_ms") or [float("nan")])


def oracle(summary: dict) -> float:
    """The directions' mean of the least constant delay that plays 95 % of the frames in time
    (``benchmarks.latency_floor.oracle_ms``); NaN for a report written before it was measured."""
    values = summary.get("directions_oracle_ms") or [float("nan")]
    return sum(values) / len(values)


def netem_line(condition: str, codec: str, summary: dict) -> str:
    e, c = summary["end_to_end"], summary["netem_counts"]
    return (f"{condition:40s} {codec:10s} p50 {e['p50']:6.1f} ms  p99 {e['p99']:6.1f} ms  floor {summary['floor_ms']:5.1f} ms"
            f"  95 % oracle {oracle(summary):5.1f} ms"
            f"  {sum(summary['kbps']) / 2:.1f} kbps up"
            f"  late {c['late']} ({c['late_pct']:.1f} %)  concealed {c['lost']} ({c['lost_pct']:.1f} %)"
            f"  stretched {c['stretched']}  expanded {c.get('expanded', 0)}"
            f"  longest gap {longest_gap(summary):.0f} ms  down/up s {adaptation_cell(summary)}")


def netem_main(args: argparse.Namespace) -> dict:
    from benchmarks.latency import machine, progress, resolve_model, speech_pair, summarize_call
    from benchmarks.latency_call import CallSpec, run_call
    from benchmarks.latency_quality import load_speech

    model_spec, note = resolve_model(args.model)
    talker_a, talker_b = speech_pair(load_speech(args.audio, limit=None))
    codecs = [model_spec] + ([] if args.no_opus else ["opus-20ms", "opus-10ms"])
    report = {"command": " ".join([Path(sys.argv[0]).name] + (args.argv if args.argv is not None else sys.argv[1:])), "model": model_spec,
              "model_note": note, "machine": machine(), "engine": "torch" if args.engine == "both" else args.engine, "seconds": args.seconds, "warmup": args.warmup, "rows": []}
    started = time.monotonic()
    for condition, netem, extra in selected(args.netem_only, args.repeat):
        for codec in codecs:
            if extra.get("dtx") and codec != model_spec:
                continue  # the Opus baseline has no DTX here
            spec = CallSpec(label=f"{codec}, {condition}", model=codec, seconds=args.seconds, warmup=args.warmup,
                            netem=netem, engine=report["engine"], **extra)
            progress(f"{spec.label} ({spec.warmup:g} s warm-up + {spec.seconds:g} s)")
            result = run_call(spec, talker_a, talker_b)
            summary = summarize_call(result)
            summary.pop("samples_ms")
            period = result["senders"][0]["hop"] / result["senders"][0]["rate"]
            summary["longest_gap_ms"] = [longest_gap_ms(d, period) for d in result["directions"]]
            summary["adaptation"] = adaptation(result)
            summary["condition"], summary["netem_counts"] = condition, counts(summary)
            report["rows"].append(summary)
            print(netem_line(condition, codec, summary), flush=True)
    report["elapsed_s"] = time.monotonic() - started
    stem = "netem" if not args.netem_only else "netem-" + "-".join(re.sub(r"\W+", "_", word) for word in args.netem_only)
    write(report, args.out, stem)
    progress(f"wrote {args.out}/{stem}.json, {stem}.md and {stem}.png")
    return report


def write(report: dict, out: Path, stem: str = "netem") -> None:
    """``{stem}.json``, ``.md`` and ``.png`` in ``out`` (``python -m benchmarks.latency_netem DIR [STEM]``
    rewrites the last two from the first); a subset of the conditions has its own stem, so that it
    does not overwrite the full run."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (out / f"{stem}.md").write_text(markdown(report) + f"\n![p50 and p99 per condition]({stem}.png)\n")
    plot(report, out / f"{stem}.png")


def plot(report: dict, path: Path) -> None:
    """p50 bars with p99 marks and the floor, per condition, one colour per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = list(dict.fromkeys(row["condition"] for row in report["rows"]))
    codecs = list(dict.fromkeys(row["spec"]["model"] for row in report["rows"]))
    width = 0.8 / len(codecs)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    for k, codec in enumerate(codecs):
        rows = {row["condition"]: row for row in report["rows"] if row["spec"]["model"] == codec}
        xs = [i + k * width for i, c in enumerate(conditions) if c in rows]
        picked = [rows[c] for c in conditions if c in rows]
        ax.bar(xs, [r["end_to_end"]["p50"] for r in picked], width, label=f"{codec} p50")
        ax.scatter(xs, [r["end_to_end"]["p99"] for r in picked], marker="_", s=200, color="black")
        ax.scatter(xs, [r["floor_ms"] for r in picked], marker="x", color="red", s=20)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(conditions))], conditions, rotation=15, fontsize=8)
    ax.set_ylabel("end-to-end latency (ms); — p99, x floor")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)



def markdown(report: dict) -> str:
    lines = ["# Calls over emulated networks", "",
             f"Command: `python benchmarks/{report['command']}` — {report['machine']['date_utc']}, load average "
             f"{report['machine']['loadavg']} at the start (a shared machine: compare rows of one run). Each call: "
             f"{report['warmup']:g} s warm-up, {report['seconds']:g} s measured, both directions pooled, 6 kbps, "
             f"10 ms blocks, {report.get('engine', 'torch')} engine, shipped playout. `benchmarks/netem.py` sits on the relay → client links. "
             "Late: frames that came after their turn; concealed: frames played as lost; stretched: ticks "
             "with nothing to play (a whole concealed frame); expanded: ticks whose frame was due and missing, played "
             "as a few pitch periods of the last audio instead (`call.time_scale`). Floor: `benchmarks/latency_floor.py`, with the network stage's median (emulated delay included). "
             "95 % oracle: the least constant delay that would have played 95 % of the frames in time with each frame's own "
             "measured capture wait, encode, network and decode (`oracle_ms`): what lies above it is the playout's reserve. "
             "Target (under jitter): p50 at most the floor plus the emulated extra delay's 95th percentile. "
             "Longest gap: the longest time a listener heard no frame of the stream (concealment, expansion or "
             "silence; either direction). Down / back up: seconds from the cap's drop until the slower sender sent "
             "below the call's 6 kbps, and from its lift until both were back at 6 (`call.rate`; Opus here has no bandwidths "
             "to follow).", "",
             "| condition | codec | p50 ms | p99 ms | floor ms | 95 % oracle ms | target p50 ms | kbps sent | late | concealed "
             "| stretched | expanded | longest gap ms | down / back up s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        e, c, target = row["end_to_end"], row["netem_counts"], target_ms(row)
        met = "–" if target is None else f"{target:.1f} {'✓' if e['p50'] <= target else '✗'}"
        lines.append(f"| {row['condition']} | {row['spec']['model']} | {e['p50']:.1f} | {e['p99']:.1f} | "
                     f"{row['floor_ms']:.1f} | {oracle(row):.1f} | {met} | {sum(row['kbps']) / 2:.2f} | {c['late']} ({c['late_pct']:.1f} %) | {c['lost']} ({c['lost_pct']:.1f} %) "
                     f"| {c['stretched']} | {c.get('expanded', '-')} | {longest_gap(row):.0f} "
                     f"| {adaptation_cell(row)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    directory, stem = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "netem"
    write(json.loads((directory / f"{stem}.json").read_text()), directory, stem)
