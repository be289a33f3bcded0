"""``python benchmarks/latency_relay.py --suite``: the relay before and after, on one node and on
two, in one run (so their ratios hold on a shared machine), written to
``benchmarks/results/relay_capacity.{json,md}``."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.latency_relay import ROOT, capacity

RESULTS = ROOT / "benchmarks" / "results"


def run_suite(before: str, levels: list[int] | None, room_size: int, command: str) -> dict:
    """Ramp each configuration in turn, print as it goes, write the report."""
    old = Path(tempfile.mkdtemp()) / "server_before.py"
    old.write_text(subprocess.run(["git", "show", f"{before}:server.py"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout)
    configurations = {
        f"before ({before}), one node": dict(server=old),
        "after, --loop asyncio, one node": dict(relay_args=["--loop", "asyncio"]),
        "after, one node": {},
        "after, two nodes, rooms split": dict(nodes=2, placement="split"),
        "after, two nodes, rooms affine": dict(nodes=2, placement="affine"),
    }
    runs = {}
    for name, options in configurations.items():
        print(f"== {name}", flush=True)
        runs[name] = capacity(room_size=room_size, levels=levels, **options)
    report = {"command": f"python benchmarks/latency_relay.py {command}", "loadavg": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}
    (RESULTS / "relay_capacity.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "relay_capacity.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    runs = report["runs"]
    lines = [f"# Relay capacity, {report['date']}", "",
             f"`{report['command']}` — one run, each configuration ramped in turn on the same machine "
             f"(load average at the end {report['loadavg'][0]:.1f}: other work shared the 2 cores). Capacity: "
             "streams of 6 kbps (rooms of 2) up to the last level whose probe p99 stays within 5 ms of its own "
             "level-0 p99. CPU per packet: all relay processes' CPU over the packets they delivered.", "",
             "| configuration | capacity (streams) | level-0 p50 / p99 ms | relay CPU µs a packet (at each level) |",
             "|---|---|---|---|"]
    for name, run in runs.items():
        zero = run["levels"][0]
        cpu = ", ".join(f"{r['streams']}: {r['relay_cpu_us_per_packet']:.1f}" for r in run["levels"][1:])
        lines.append(f"| {name} | {run['capacity_streams']} | {zero['p50_ms']:.2f} / {zero['p99_ms']:.2f} | {cpu} |")
    one, split = runs.get("after, one node"), runs.get("after, two nodes, rooms split")
    if one and split:
        hop50 = split["levels"][0]["p50_ms"] - one["levels"][0]["p50_ms"]
        hop99 = split["levels"][0]["p99_ms"] - one["levels"][0]["p99_ms"]
        lines += ["", f"Cross-node hop (two nodes through NATS, no load, minus one node): "
                  f"p50 {hop50:+.2f} ms, p99 {hop99:+.2f} ms."]
    lines += ["", "Every level of every run is in `relay_capacity.json`."]
    return "\n".join(lines) + "\n"
