"""Writes a latency benchmark's results: ``latency.json``, ``latency.md`` and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from benchmarks.latency_call import STAGES

STAGE_COLOURS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def call_table(calls: list[dict]) -> list[str]:
    lines = ["| call | e2e p50 | p90 | p99 | max | " + " | ".join(f"{s} (mean)" for s in STAGES)
             + " | frames | lost | wire kbps |",
             "|---" * (8 + len(STAGES)) + "|"]
    for c in calls:
        e = c["end_to_end"]
        stages = " | ".join(fmt(c["stages"][s]["mean"]) for s in STAGES)
        lines.append(f"| {c['spec']['label']} | **{fmt(e['p50'])}** | {fmt(e['p90'])} | {fmt(e['p99'])} | "
                     f"{fmt(e['max'])} | {stages} | {c['frames']} | {c['lost']} | {fmt(np.mean(c['kbps']), 2)} |")
    return lines


def stage_table(call: dict) -> list[str]:
    lines = ["| stage | p50 | p99 | max | mean |", "|---|---|---|---|---|"]
    for s in STAGES:
        st = call["stages"][s]
        lines.append(f"| {s} | {fmt(st['p50'])} | {fmt(st['p99'])} | {fmt(st['max'])} | {fmt(st['mean'])} |")
    e = call["end_to_end"]
    lines.append(f"| **end to end** | **{fmt(e['p50'])}** | **{fmt(e['p99'])}** | {fmt(e['max'])} | {fmt(e['mean'])} |")
    return lines


def markdown(report: dict) -> str:
    calls = report["calls"]
    head = calls[0]
    out = [f"# Call latency benchmark{' (quick run)' if report['quick'] else ''}", "",
           f"Command: `python benchmarks/{report['command']}` — {report['machine']['date_utc']}, "
           f"{report['elapsed_s']:.0f} s in all. Model: `{report['model']}`"
           + (f" ({report['model_info']['parameters'] / 1e6:.2f} M parameters"
              + (f", weights sha256 {report['model_info']['sha256']}…, written {report['model_info']['file_mtime_utc']} UTC"
                 if report["model_info"].get("sha256") else "") + ")" if report.get("model_info") else "") + "."]
    if report.get("model_note"):
        out += ["", f"**Note:** {report['model_note']}."]
    out += ["", f"Each call: {report['warmup']:g} s warm-up, then {report['seconds']:g} s measured, both "
            "directions pooled; times in ms. A frame's end-to-end latency runs from the capture of its "
            "first sample (clocked source) to the moment the clocked sink plays that sample, plus the "
            "codec's lookahead. Stage means add up to the end-to-end mean. Source and sink share one clock "
            "(no drift), so once the jitter buffer has settled every frame has the same end-to-end delay: "
            "percentiles move only when the jitter buffer stretches or skips. \"wire kbps\" counts every "
            "byte the sender's client sent (headers included) at the application layer.", "",
            f"## Headline: {head['spec']['label']}", ""] + stage_table(head)
    if head.get("directions_end_to_end"):
        a, b = head["directions_end_to_end"]
        out += ["", f"Per direction, end to end: first peer → second p50 {fmt(a['p50'])} / p99 {fmt(a['p99'])} ms, "
                f"second → first p50 {fmt(b['p50'])} / p99 {fmt(b['p99'])} ms."]
    headline = [c for c in calls if c["group"] == "headline"]
    out += ["", "## Ours against Opus (same client, relay, wire format, jitter buffer, playout)", ""]
    out += call_table(headline)
    for group, title in (("block", "Block size (samples per sound-card callback)"),
                         ("frames_per_packet", "Frames per packet"), ("bandwidth", "Bandwidth"),
                         ("model", "Model"),
                         ("playout", "What-if: a tighter playout policy (NOT the shipped defaults: jitter buffer "
                                     "starting at 20 ms with a 5 ms floor instead of 80/20 ms, nothing queued at "
                                     "the sound card beyond one block instead of half a frame)")):
        rows = [c for c in calls if c["group"] == group]
        if rows:
            reference = headline if group in ("block", "playout") else [head]
            out += ["", f"## Sweep: {title}", ""] + call_table(reference + rows)
    if report.get("quality"):
        out += ["", f"## Quality ({len(report['files'])} files of `{report['audio']}`, means)", "",
                "| codec | target kbps | kbps | PESQ-WB | STOI | SI-SNR dB | PESQ refused | no output |",
                "|---|---|---|---|---|---|---|---|"]
        for q in report["quality"]:
            out.append(f"| {q['codec']} | {q['bandwidth']:g} | {fmt(q['kbps'], 2)} | {fmt(q['pesq_wb'], 2)} | "
                       f"{fmt(q['stoi'], 3)} | {fmt(q['si_snr'])} | {q['pesq_failed']} | {q.get('silent', 0)} |")
    ramps = report.get("relay") or []
    ramps = [ramps] if isinstance(ramps, dict) else ramps
    for n, r in enumerate(ramps):
        if n == 0:
            out += ["", "## Relay capacity", "", r["method"]]
        out += ["", f"### Rooms of {r['room_size']} (each stream forwarded to {r['room_size'] - 1} peer"
                f"{'s' if r['room_size'] > 2 else ''})", "",
                f"**Capacity: {r['capacity_streams']} streams** of 6 kbps with ≤ {r['budget_ms']:g} ms added p99.", "",
                "| streams | forwarded msg/s | probe p50 | probe p99 | added p99 | relay CPU % | load late p99 |",
                "|---|---|---|---|---|---|---|"]
        for level in r["levels"]:
            out.append(f"| {level['streams']} | {level['forwarded_per_s']:.0f} | {fmt(level['p50_ms'], 2)} | "
                       f"{fmt(level['p99_ms'], 2)} | {fmt(level['added_p99_ms'], 2)} | {fmt(level['relay_cpu'], 0)} | "
                       f"{fmt(level['load_late_p99_ms'], 2)} |")
    m = report["machine"]
    out += ["", "## Machine", "", f"Python {m['python']}, torch {m['torch']}, {m['libopus']}, {m['cores']} cores.",
            "", "```", m["lscpu"], "", m["memory"], "```", "",
            f"Load average at the start: `{m['loadavg']}`; at the end: `{report['machine_after']['loadavg']}`.",
            "Busiest processes at the start:", "", "```", m["busy_processes"], "```", ""]
    late = [max(d.values()) for c in calls for d in c["device_late_max_ms"] if d]
    if late:
        out += [f"Clocked devices: the worst callback was done {max(late):.1f} ms after it was due "
                "(CPU contention shows up here).", ""]
    return "\n".join(out)


def plots(report: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    calls = report["calls"]
    # Latency CDF of the headline calls.
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for c in [c for c in calls if c["group"] == "headline"] + [c for c in calls if c["group"] == "frames_per_packet"]:
        samples = np.sort(c.get("samples_ms", []))
        if len(samples):
            ax.plot(samples, np.arange(1, len(samples) + 1) / len(samples), label=c["spec"]["label"])
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of frames")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("End-to-end latency, CDF")
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    written.append("latency_cdf.png")
    # Stacked mean per stage, every call.
    fig, ax = plt.subplots(figsize=(9, 0.38 * len(calls) + 1.5))
    labels = [c["spec"]["label"] for c in calls][::-1]
    left = np.zeros(len(calls))
    for colour, stage in zip(STAGE_COLOURS, STAGES):
        values = np.array([c["stages"][stage]["mean"] for c in calls][::-1])
        values = np.nan_to_num(values)
        ax.barh(labels, values, left=left, color=colour, label=stage)
        left += values
    ax.set_xlabel("mean latency per stage (ms); the bar is the end-to-end mean")
    ax.legend(fontsize=8, ncol=4, loc="lower right")
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_stages.png", dpi=110)
    plt.close(fig)
    written.append("latency_stages.png")
    if report.get("quality"):
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
        codecs = sorted({q["codec"] for q in report["quality"]})
        for ax, (metric, name) in zip(axes, (("pesq_wb", "PESQ-WB"), ("stoi", "STOI"), ("si_snr", "SI-SNR (dB)"))):
            for codec in codecs:
                rows = sorted((q for q in report["quality"] if q["codec"] == codec), key=lambda q: q["kbps"])
                ax.plot([q["kbps"] for q in rows], [q[metric] for q in rows], marker="o", label=codec)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks([1.5, 3, 6, 12, 24], ["1.5", "3", "6", "12", "24"])
            ax.set_xlabel("kbps")
            ax.set_title(name)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "quality_vs_bitrate.png", dpi=110)
        plt.close(fig)
        written.append("quality_vs_bitrate.png")
    return written


def write(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = plots(report, out)
    (out / "latency.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    text = markdown(report)
    text += "\n" + "\n".join(f"![{p}]({p})" for p in report["plots"]) + "\n"
    (out / "latency.md").write_text(text)
