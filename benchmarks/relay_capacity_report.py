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

from benchmarks.latency_relay import ROOT, capacity, same_core_cpu

RESULTS = ROOT / "benchmarks" / "results"


def run_suite(before: str, levels: list[int] | None, room_size: int, command: str, transports: bool = False) -> dict:
    """Ramp each configuration in turn, print as it goes, write the report: ``relay_capacity``, or with
    ``transports`` the one-node relay on each websocket library (``--transport``), ``relay_transports``.
    The relay before is that revision's whole tree (its ``call/`` package too: the relay's hot path
    spans ``server.py``, ``call/wire.py`` and ``call/relay_picows.py``)."""
    old = before_tree(before) / "server.py"
    if transports:
        configurations = {f"before ({before}), --transport picows, one node":
                          dict(server=old, relay_args=["--transport", "picows"])}
        configurations.update({f"after, --transport {name}, one node": dict(relay_args=["--transport", name])
                               for name in ("websockets", "picows")})
        configurations["after, --transport picows --forwarding python, one node"] = dict(
            relay_args=["--transport", "picows", "--forwarding", "python"])  # the compiled path's twin (call/relay_fast.pyx)
    else:
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
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs,
              "message_costs_us": message_costs()}
    name = "relay_transports" if transports else "relay_capacity"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return report


def run_same_core(before: str, streams: int, relay_args: list[str], command: str) -> dict:
    """The relay at ``before`` and this checkout's on one core at once (``same_core_cpu``), written to
    ``benchmarks/results/relay_same_core.{json,md}``."""
    rows = same_core_cpu([before_tree(before) / "server.py", ROOT / "server.py"], streams, relay_args=relay_args)
    report = {"command": f"python benchmarks/latency_relay.py {command}", "date": time.strftime("%Y-%m-%d %H:%M UTC",
              time.gmtime()), "before": before, "relay_args": relay_args, "windows": rows}
    ratios = sorted(row["ratio"] for row in rows)
    lines = [f"# Relay CPU a packet, before ({before}) and after on one core at once, {report['date']}", "",
             f"`{report['command']}` — both relays pinned to core 0, one load generator on core 1 sending "
             f"{rows[0]['streams']} six-kbps streams in rooms of 2, alternate rooms to each relay; 8 s windows. "
             "Both meet the same interference at the same time, so the ratio holds on a shared machine; the "
             "absolute µs do not (they fall as a late generator batches packets).", "",
             "| window | load average | before µs a packet | after µs a packet | after / before | generator late p99 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {k + 1} | {row['loadavg']:.1f} | {row['cpu_us_per_packet'][0]:.1f} | {row['cpu_us_per_packet'][1]:.1f} "
              f"| {row['ratio']:.3f} | {row['load_late_p99_ms']:.0f} ms |" for k, row in enumerate(rows)]
    lines += ["", f"Median after / before: {ratios[len(ratios) // 2]:.3f}.", ""]
    (RESULTS / "relay_same_core.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "relay_same_core.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return report


def before_tree(revision: str) -> Path:
    """The project's files at ``revision``, in a directory of their own (its ``server.py`` imports
    its own ``call/``: a script's directory comes first on ``sys.path``)."""
    tree = Path(tempfile.mkdtemp(prefix="relay_before_"))
    archive = subprocess.run(["git", "archive", revision, "server.py", "call"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def markdown(report: dict) -> str:
    runs = report["runs"]
    notes = report.get("notes", [])
    lines = [f"# Relay capacity, {report['date']}", "",
             f"`{report['command']}` — one run, each configuration ramped in turn on the same machine "
             f"(load average at the end {report['loadavg'][0]:.1f}: other work shared the 2 cores). Capacity: "
             "streams of 6 kbps (rooms of 2) up to the last level whose probe p99 stays within 5 ms of its own "
             "level-0 p99. CPU per packet: all relay processes' CPU over the packets they delivered.", "",
             "| configuration | capacity (streams) | level-0 p50 / p99 ms | at each level: added p99 ms, busiest relay's "
             "CPU %, relay CPU µs a packet |",
             "|---|---|---|---|"]
    for name, run in runs.items():
        zero = run["levels"][0]
        cpu = "; ".join(f"{r['streams']}: {r['added_p99_ms']:.1f} ms, {r['relay_cpu']:.0f} %, "
                        f"{r['relay_cpu_us_per_packet']:.1f} µs" for r in run["levels"][1:])
        lines.append(f"| {name} | {run['capacity_streams']} | {zero['p50_ms']:.2f} / {zero['p99_ms']:.2f} | {cpu} |")
    one = next((run for name, run in runs.items() if name.startswith("after") and run["nodes"] == 1), None)
    split = runs.get("after, two nodes, rooms split")
    if one and split:
        hop50 = split["levels"][0]["p50_ms"] - one["levels"][0]["p50_ms"]
        hop99 = split["levels"][0]["p99_ms"] - one["levels"][0]["p99_ms"]
        lines += ["", f"Cross-node hop (two nodes through NATS, no load, minus one node): "
                  f"p50 {hop50:+.2f} ms, p99 {hop99:+.2f} ms."]
    costs = report.get("message_costs_us")
    if costs:
        lines += ["", "CPU µs per message of the relay's own steps, alone (no sockets; `message_costs`): "
                  + ", ".join(f"{name.replace('_', ' ')} {value:.2f}" for name, value in costs.items()) + "."]
    name = "relay_transports" if any("--transport" in run for run in runs) else "relay_capacity"
    lines += [""] + [f"* {note}" for note in notes] + ["", f"Every level of every run is in `{name}.json`."]
    return "\n".join(lines) + "\n"


def message_costs(messages: int = 200_000) -> dict[str, float]:
    """CPU µs per message of the relay's per-message steps, alone in this process (no sockets):
    what websockets' parser takes to read a client's frame, its framing of a server's message
    against the relay's 2-byte prefix, and the relay's check of a packet (``StreamValidator.check``)."""
    import base64

    from websockets.server import ServerProtocol

    from benchmarks.latency_relay import audio_packet, masked_frame, stream_header
    from call import wire

    packet = audio_packet(1)
    protocol = ServerProtocol(max_size=4096)
    key = base64.b64encode(os.urandom(16)).decode()
    protocol.receive_data(f"GET /r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    protocol.send_response(protocol.accept(protocol.events_received()[0]))
    protocol.data_to_send()

    def per_message(step, count: int = messages) -> float:
        start = time.process_time()
        step(count)
        return (time.process_time() - start) / count * 1e6

    def parse(count: int) -> None:
        frame = masked_frame(packet)
        for _ in range(count):
            protocol.receive_data(frame)
            protocol.events_received()

    def frame_websockets(count: int) -> None:
        for _ in range(count):
            protocol.send_binary(packet)
            protocol.data_to_send()

    def frame_prefix(count: int) -> None:
        for _ in range(count):
            bytes((0x82, len(packet))) + packet

    def check(count: int) -> None:
        validator = wire.StreamValidator()
        validator.check(stream_header())
        for index in range(count):
            validator.check(audio_packet(index))

    def make_packets(count: int) -> None:  # check() builds its packets: subtract what that costs
        for index in range(count):
            audio_packet(index)

    costs = {"websockets_parse_client_frame": per_message(parse),
             "websockets_frame_server_message": per_message(frame_websockets),
             "relay_prefix_frame": per_message(frame_prefix),
             "relay_check_packet": per_message(check) - per_message(make_packets)}
    return {name: round(value, 2) for name, value in costs.items()}
