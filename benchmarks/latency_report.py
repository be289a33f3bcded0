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
    lines = ["| call | e2e p50 | floor | p90 | p99 | max | " + " | ".join(f"{s} (mean)" for s in STAGES)
             + " | frames | lost | wire kbps |",
             "|---" * (9 + len(STAGES)) + "|"]
    for c in calls:
        e = c["end_to_end"]
        stages = " | ".join(fmt(c["stages"][s]["mean"]) for s in STAGES)
        lines.append(f"| {c['spec']['label']} | **{fmt(e['p50'])}** | {fmt(c.get('floor_ms'))} | {fmt(e['p90'])} | {fmt(e['p99'])} | "
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
            "byte the sender's client sent (headers included) at the application layer. \"floor\" is the "
            "least the call's configuration allows (capture and playback block alignment at the phase the "
            "clocks ran at, the medians of encode, network and decode, the lookahead; "
            "`benchmarks/latency_floor.py`): what lies above it is playout policy.", "",
            f"## Headline: {head['spec']['label']}", ""] + stage_table(head)
    if head.get("directions_end_to_end"):
        a, b = head["directions_end_to_end"]
        out += ["", f"Per direction, end to end: first peer → second p50 {fmt(a['p50'])} / p99 {fmt(a['p99'])} ms, "
                f"second → first p50 {fmt(b['p50'])} / p99 {fmt(b['p99'])} ms."]
        if head.get("directions_oracle_ms"):
            out[-1] += (" The least constant delay that would have played 95 % of the frames in time, with each "
                        "frame's own measured capture wait, encode, network and decode (`latency_floor.oracle_ms`): "
                        + " and ".join(f"{fmt(o)} ms" for o in head["directions_oracle_ms"])
                        + "; what lies above it is the playout's reserve, between it and the floor the processing's scatter.")
    headline = [c for c in calls if c["group"] == "headline"]
    out += ["", "## Ours against Opus (same client, relay, wire format, jitter buffer, playout)", ""]
    out += call_table(headline)
    for group, title in (("block", "Block size (samples per sound-card callback)"),
                         ("frames_per_packet", "Frames per packet"), ("bandwidth", "Bandwidth"),
                         ("model", "Model"), ("device", "Sound cards at 48 kHz (the client resamples both ways)"),
                         ("playout", "What-if: another playout policy (NOT the shipped defaults: jitter buffer "
                                     "starting at 20 ms with a 5 ms floor instead of two frames and none)")):
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


# ------------------------------------------------------------------ CPU-load scenario

P99_TARGET_MS = 150.0
"""ITU-T G.114: one-way delay up to 150 ms is acceptable for most users."""
RECOVERY_TARGET_S = 2.0


def cpu_load_markdown(report: dict) -> str:
    calls = report["calls"]
    m = report["machine"]
    model_name = next((line.split(":", 1)[1].strip() for line in m["lscpu"].splitlines()
                       if line.startswith("Model name")), "?")
    n = report["load_processes"]
    out = ["# Call latency under CPU contention", "",
           f"Command: `python benchmarks/{report['command']}` — {m['date_utc']}, {report['elapsed_s']:.0f} s in all. "
           f"Machine: {model_name}, {m['cores']} cores; Python {m['python']}, torch {m['torch']}, {m['libopus']}.",
           "", f"For each codec an idle call, then at once the same call with **{n} processes spinning "
           f"`while True: pass`** from {report['load_from']:g} s to {report['load_until']:g} s of its "
           f"{report['seconds']:g} measured seconds ({report['warmup']:g} s warm-up before), at the same "
           "priority as the call (relay and both peers on this machine, both peers talking, 6 kbps, one "
           "frame per packet, 10 ms blocks). Phases by each frame's capture time (the load's actual start and "
           "stop, as the benchmark recorded them). **Back after** is the time from the load's end until the "
           f"median end-to-end latency of the frames captured within ±{report['window_s'] / 2:g} s stays at "
           f"most {100 * report['tolerance']:.0f} % above the idle call's p50 to the end of the call "
           "(0: it never rose above; ∞: not back by the end), for each direction against the same direction "
           "of the idle call (each direction keeps its own level: the phase of its frames against the sound "
           "card's blocks), the later of the two. Playout "
           "moves in whole frames (13.3 ms for ours, 20 ms for Opus 20 ms: more than 10 % of a 60 ms call), so a "
           "call can settle one frame above its idle level with nothing queued: **back within a frame more** "
           "allows that frame. In an idle call the same measures, taken at the same moments with no load "
           "(against its own p50), are the control: what they give for the ordinary moves of playout. "
           f"Targets: p99 ≤ {P99_TARGET_MS:g} ms under load (ITU-T G.114), back within "
           f"{RECOVERY_TARGET_S:g} s. Times in ms.", "",
           "| call | all p50 | all p99 | before p50 / p99 | during p50 / p99 | after p50 / p99 "
           "| back (s), vs idle: 10 % / + a frame | vs before the load: 10 % / + a frame "
           "| lost (concealed) | late | skipped | stretched | dropped at sender (ms) "
           "| search shed (times, s) | worst device lateness |",
           "|---" * 15 + "|"]

    def seconds(value: float, bold: bool = False) -> str:
        text = "∞" if math.isinf(value) else fmt(value, 2)
        return f"**{text}**" if bold else text
    for c in calls:
        ph = c["phases"]
        out.append(f"| {c['label']} | **{fmt(ph['all']['p50'])}** | **{fmt(ph['all']['p99'])}** | "
                   f"{fmt(ph['before']['p50'])} / {fmt(ph['before']['p99'])} | "
                   f"{fmt(ph['during']['p50'])} / **{fmt(ph['during']['p99'])}** | "
                   f"{fmt(ph['after']['p50'])} / {fmt(ph['after']['p99'])} | "
                   f"{seconds(c['recovery']['idle']['s'], bool(c['processes']))} / "
                   f"{seconds(c['recovery']['idle']['frame_s'])} | "
                   f"{seconds(c['recovery']['pre_load']['s'])} / "
                   f"{seconds(c['recovery']['pre_load']['frame_s'])} | {c['lost']} | {c['late']} | "
                   f"{c['skipped']} | {c['stretched']} | {fmt(c['dropped_ms'], 0)} | {c['sheds']}, "
                   f"{fmt(c['shed_seconds'])} | {fmt(c['device_late_max_ms'])} |")
    out += ["", "## Targets", ""]
    for c in [c for c in calls if c["processes"]]:
        p99, idle, own = c["phases"]["during"]["p99"], c["recovery"]["idle"], c["recovery"]["pre_load"]
        out.append(f"- {c['label']}: p99 during the load {fmt(p99)} ms "
                   f"({'met' if p99 <= P99_TARGET_MS else 'MISSED'}, ≤ {P99_TARGET_MS:g}; after it "
                   f"{fmt(c['phases']['after']['p99'])} ms); back within {100 * report['tolerance']:.0f} % of the "
                   f"idle p50 of each direction ({' / '.join(fmt(t) for t in idle['thresholds_ms'])} ms) "
                   f"{'never' if math.isinf(idle['s']) else 'after ' + fmt(idle['s'], 2) + ' s'} "
                   f"({'met' if idle['s'] <= RECOVERY_TARGET_S else 'MISSED'}, ≤ {RECOVERY_TARGET_S:g} s), with a "
                   f"frame more {seconds(idle['frame_s'])} s; against the same call before the load "
                   f"({' / '.join(fmt(t) for t in own['thresholds_ms'])} ms) {seconds(own['s'])} s, with a "
                   f"frame more {seconds(own['frame_s'])} s.")
    others = max(c["cpu"][phase].get("others_cores", 0.0) for c in calls for phase in c["cpu"])
    if others > 0.25:
        out.append(f"- **Other work shared the machine** (up to {others:.2f} cores in a phase, see below): "
                   "an idle call that shared it is no idle baseline, and a loaded call that did carried more "
                   "than the burners' load.")
    out += ["", "## Where the time goes", "",
            "Stage means (ms), and the receivers' jitter buffers at their playout ticks: the mean target "
            "delay, the frames held, and the ticks per second (a frame is 13.3 ms for ours, 20 ms for Opus "
            "20 ms: 75 or 50 a second when playout keeps up).", "",
            "| call | phase | " + " | ".join(STAGES) + " | jitter target | frames held | ticks/s |",
            "|---" * (5 + len(STAGES)) + "|"]
    for c in calls:
        for phase in ("before", "during", "after"):
            play = c.get("playout", {}).get(phase, {})
            out.append(f"| {c['label']} | {phase} | " + " | ".join(fmt(c["stages"][phase][s]) for s in STAGES)
                       + f" | {fmt(play.get('target_ms'))} | {fmt(play.get('held_frames'))} | "
                       f"{fmt(play.get('ticks_per_s'), 0)} |")
    out += ["", "## What else ran", "",
            "In each phase of each call: the machine's busy share of its cores, the cores this benchmark used "
            "(relay, peers, burners) and the cores **other work** used (other users' jobs on this shared machine), "
            "and the processes that used the most CPU then, in cores (the peers are `… multiprocessing.spawn …`, "
            "the burners `python -c import os …`):", "",
            "| call | phase | busy | benchmark (cores) | other work (cores) |", "|---|---|---|---|---|"]
    for c in calls:
        for phase in ("before", "during", "after"):
            cpu = c["cpu"][phase]
            out.append(f"| {c['label']} | {phase} | {100 * cpu['busy']:.0f} % | {fmt(cpu.get('ours_cores'), 2)} | "
                       f"{fmt(cpu.get('others_cores'), 2)} |")
    out.append("")
    for c in calls:
        for phase in ("before", "during", "after"):
            cpu = c["cpu"][phase]
            top = "; ".join(f"{p['cores']:.2f} `{' '.join(p['command'].split())[:70]}`" for p in cpu["top"][:5])
            out.append(f"- {c['label']}, {phase} ({cpu['seconds']:.1f} s): {top}")
    out += ["", f"Load average at the start: `{m['loadavg']}`; at the end: `{report['machine_after']['loadavg']}`.",
            "Busiest processes at the start (`ps`, lifetime averages):", "", "```", m["busy_processes"], "```", "",
            "```", m["lscpu"], "", m["memory"], "```", ""]
    out += [f"![{plot}]({plot})" for plot in report.get("plots", [])]
    return "\n".join(out) + "\n"


def cpu_load_plot(report: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = report["calls"]
    fig, axes = plt.subplots(len(calls), 1, figsize=(9, 2.3 * len(calls)), sharex=True, squeeze=False)
    for ax, c in zip(axes[:, 0], calls):
        for n, series in enumerate(c["series"]):
            line, = ax.plot(series["t"], series["ms"], lw=0.8, label=f"direction {n + 1}")
            if c["processes"]:
                ax.axhline(c["recovery"]["idle"]["thresholds_ms"][n], color=line.get_color(), lw=0.6, ls="--",
                           label=f"direction {n + 1}: idle p50 + 10 %")
        if c["processes"]:
            ax.axvspan(*c["load_window_s"], color="#c44e52", alpha=0.12, label=f"{c['processes']} busy processes")
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(c["label"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("capture time of the frame, s into the measured call")
    fig.tight_layout()
    fig.savefig(out / "cpu_load.png", dpi=110)
    plt.close(fig)
    return "cpu_load.png"


def write_cpu_load(report: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    try:
        report["plots"] = [cpu_load_plot(report, out)]
    except ImportError:  # matplotlib is in the [bench] extra: the tables do without it
        report["plots"] = []
    (out / "cpu_load.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / "cpu_load.md").write_text(cpu_load_markdown(report))
