"""The benchmark's network emulator: its schedule on given times, its options, and the proxy on loopback."""

import asyncio
import time

import numpy as np
import pytest

from benchmarks import netem
from benchmarks.netem import Conditions, LinkSchedule, NetemProxy


def test_delay_and_order():
    link = LinkSchedule(Conditions(delay=0.05))
    assert [link.deliver_at(t, 10) for t in (0.0, 0.01, 0.02)] == pytest.approx([0.05, 0.06, 0.07])


def test_a_bandwidth_cap_serialises_chunks_one_after_another():
    link = LinkSchedule(Conditions(rate_kbps=8.0))  # 1000 bytes a second
    assert link.deliver_at(0.0, 100) == pytest.approx(0.1)
    assert link.deliver_at(0.0, 100) == pytest.approx(0.2)  # queued behind the first
    assert link.deliver_at(1.0, 100) == pytest.approx(1.1)  # the link was idle again


def test_jitter_has_the_asked_99th_percentile_and_keeps_order():
    link = LinkSchedule(Conditions(delay=0.01, jitter=0.02), seed=3)
    sent = np.arange(20000) * 0.0133
    out = np.array([link.deliver_at(t, 12) for t in sent])
    assert np.all(np.diff(out) >= 0)  # TCP: in order, a late chunk holds up the next
    extra = np.array([LinkSchedule(Conditions(jitter=0.02), seed=s).deliver_at(0.0, 12) for s in range(4000)])
    assert np.percentile(extra, 99) == pytest.approx(0.02, rel=0.15)


def test_outages_come_every_period_and_last_their_duration():
    link = Conditions(outage_every=5.0, outage_for=0.5)
    assert [link.in_outage(t) for t in (0.0, 4.4, 4.6, 5.1, 9.6)] == [False, False, True, False, True]
    assert not Conditions().in_outage(100.0)


@pytest.mark.parametrize("argv, message", [
    (["--delay", "-1"], "must be >= 0"),
    (["--jitter", "x"], "invalid positive_or_zero value"),
    (["--rate-kbps", "0"], "rate must be > 0"),
    (["--outage-every", "1", "--outage-for", "2"], "outages must be shorter"),
    (["--queue-bytes", "0"], "queue_bytes must be >= 1"),
    (["--max-queue", "0"], "max_queue must be > 0"),
    (["--upstream", "nohost"], "--upstream must be HOST:PORT"),
    (["--rate-schedule", "0:12,x"], "rate schedule must be FROM:KBPS"),
    (["--rate-schedule", "5:12,1:3"], "times in order"),
    (["--rate-schedule", "0:0"], "rates > 0"),
])
def test_bad_options_are_usage_errors(argv, message, capsys):
    base = ["--listen", "9", "--upstream", "127.0.0.1:1"]
    with pytest.raises(SystemExit) as exit_:
        netem.parse_args(base + argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


async def test_the_proxy_passes_bytes_both_ways_and_cuts_them_in_an_outage():
    async def echo(reader, writer):
        while data := await reader.read(100):
            writer.write(data)
            await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    proxy = NetemProxy(("127.0.0.1", port), Conditions(delay=0.001))
    server = await proxy.serve("127.0.0.1", 0)
    url_port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", url_port)
        answer, frame = b"HTTP/1.1 101 Switching Protocols\r\n\r\n", bytes([0x82, 3, 0x80, 1, 2])
        writer.write(answer + frame)  # echoed: the handshake's answer, then a websocket frame
        assert await asyncio.wait_for(reader.readexactly(len(answer) + len(frame)), 10) == answer + frame
        proxy.set_conditions(Conditions(outage_every=0.2, outage_for=0.1))
        async with asyncio.timeout(10):
            while await reader.read(100):
                pass  # the cut ends the stream
        assert proxy.cuts >= 1
        writer.close()
    finally:
        server.close()
        upstream.close()


def test_a_rate_schedule_reads_in_order():
    assert Conditions(rate_schedule="0:12,6:3,12:12").rates() == [(0.0, 12.0), (6.0, 3.0), (12.0, 12.0)]


async def test_the_proxy_logs_each_cap_as_it_takes_effect_from_the_first_handshake(tmp_path):
    async def answer(reader, writer):
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
        await writer.drain()
        await reader.read(100)

    upstream = await asyncio.start_server(answer, "127.0.0.1", 0)
    log = tmp_path / "caps.txt"
    proxy = NetemProxy(("127.0.0.1", upstream.sockets[0].getsockname()[1]),
                       Conditions(rate_schedule="0:12,0.2:3,0.4:12"), cap_log=log)
    server = await proxy.serve("127.0.0.1", 0)
    try:
        await asyncio.sleep(0.1)
        assert netem.read_caps(log) == []  # the schedule waits for a call
        shaken = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        await asyncio.wait_for(reader.readexactly(4), 10)
        async with asyncio.timeout(10):
            while len(caps := netem.read_caps(log)) < 3:
                await asyncio.sleep(0.05)
        assert [kbps for _, kbps in caps] == [12.0, 3.0, 12.0]
        times = [t - caps[0][0] for t, _ in caps]
        assert caps[0][0] >= shaken and times[1] >= 0.2 and times[2] >= 0.4 and times == sorted(times)
        writer.close()
    finally:
        server.close()
        upstream.close()


def test_the_longest_gap_and_the_senders_adaptation_are_read_from_a_call():
    from benchmarks.latency_netem import adaptation, adaptation_cell, longest_gap_ms

    period = 0.01
    # frames 0-9 played 30 ms after capture; 10-12 never played; 13 on played 34 ms after its capture
    direction = {"index": [*range(10), *range(13, 20)], "end_to_end": [0.030] * 10 + [0.034] * 7}
    assert longest_gap_ms(direction, period) == pytest.approx(34.0)  # frames 10-12 (30 ms) and 4 ms more
    assert longest_gap_ms({"index": [0, 1, 2], "end_to_end": [0.03, 0.03, 0.03]}, period) == pytest.approx(0.0)
    caps = [(100.0, 12.0), (106.0, 3.0), (112.0, 12.0)]
    senders = [{"bandwidth": 6.0, "bandwidth_log": [(106.5, 1.5), (113.0, 3.0), (114.5, 6.0)]},
               {"bandwidth": 6.0, "bandwidth_log": [(106.8, 3.0), (113.5, 6.0)]}]
    rows = adaptation({"caps": caps, "senders": senders})
    assert [(r["down_s"], r["up_s"], r["lowest_kbps"]) for r in rows] == [(0.5, 2.5, 1.5), (pytest.approx(0.8), 1.5, 3.0)]
    assert adaptation_cell({"adaptation": rows}) == "0.80 / 2.50"
    unlifted = adaptation({"caps": caps[:2], "senders": senders})
    assert adaptation_cell({"adaptation": unlifted}) == "0.80 / not lifted in the call"
    assert adaptation_cell({"adaptation": adaptation({"caps": caps, "senders": [{"bandwidth": None, "bandwidth_log": None}]})}) \
        == "no bandwidths"
    assert adaptation({"caps": [], "senders": senders}) is None and adaptation_cell({}) == "–"


def test_websocket_frames_are_split_whole_and_only_audio_may_be_dropped():
    audio = bytes([0x82, 3, 0x80, 0x01, 0x02])  # binary, 3 bytes: an audio packet
    header = bytes([0x82, 2, 0x01, 0x01])  # binary: a HEADER (control)
    long = bytes([0x82, 126, 0, 200]) + bytes([0x80]) + bytes(199)  # a 200-byte audio message
    frames, rest = netem.split_frames(audio + header + long + audio[:3])
    assert frames == [audio, header, long] and rest == audio[:3]
    assert [netem.is_audio(f) for f in frames] == [True, False, True]
    assert not netem.is_audio(bytes([0x88, 2, 0x03, 0xE8]))  # a close frame


def test_netem_report_counts_late_and_concealed_and_writes_its_files(tmp_path):
    from benchmarks import latency_netem

    stats = {"received": 95, "late": 1, "lost": 5, "stretched": 2, "duplicate": 0}
    row = {"condition": "jitter 20 ms p99", "spec": {"model": "default"}, "floor_ms": 30.0, "kbps": [7.2, 7.2],
           "end_to_end": {"p50": 40.0, "p99": 60.0}, "jitter_stats": [[stats], [stats]],
           "step_stats": [[{"expanded": 3}], [{"expanded": 4}]], "directions_oracle_ms": [35.0, 36.0]}
    row["netem_counts"] = latency_netem.counts(row)
    assert row["netem_counts"]["late"] == 2 and row["netem_counts"]["expanded"] == 7 and row["netem_counts"]["lost_pct"] == pytest.approx(5.0)
    report = {"command": "latency.py --netem", "machine": {"date_utc": "today", "loadavg": "1"}, "warmup": 3,
              "seconds": 16, "rows": [row, {**row, "spec": {"model": "opus-20ms"}}]}
    jittered = {"spec": {"model": "default", "netem": {"jitter": 0.02}}}  # p95 of the extra delay: 13.0 ms
    report["rows"] += [{**row, **jittered}, {**row, **jittered, "end_to_end": {"p50": 44.0, "p99": 60.0}}]
    table = latency_netem.markdown(report)
    assert "| jitter 20 ms p99 | default | 40.0 | 60.0 | 30.0 | 35.5 | – | 7.20 | 2 (1.0 %) | 10 (5.0 %) | 4 | 7 | nan | – |" in table
    assert "| 40.0 | 60.0 | 30.0 | 35.5 | 43.0 ✓ |" in table and "| 44.0 | 60.0 | 30.0 | 35.5 | 43.0 ✗ |" in table
    pytest.importorskip("matplotlib")  # the plot needs the bench extra
    latency_netem.write(report, tmp_path, "netem-jitter")
    assert (tmp_path / "netem-jitter.png").stat().st_size > 1000 and (tmp_path / "netem-jitter.json").is_file()


def test_extra_delay_percentiles_are_the_exponentials():
    link = Conditions(jitter=0.02)
    assert link.jitter_percentile(99) == pytest.approx(0.02) and link.jitter_percentile(95) == pytest.approx(0.0130, abs=1e-4)
    delays = np.random.default_rng(1).exponential(0.02 / np.log(100), 200_000)
    assert np.percentile(delays, 95) == pytest.approx(link.jitter_percentile(95), rel=0.01)


def test_a_subset_of_conditions_repeats_and_bad_choices_are_usage_errors(capsys):
    from benchmarks import latency_netem
    from benchmarks.latency import parse_args

    rows = latency_netem.selected(["jitter"], repeat=2)
    assert [name for name, _, _ in rows] == ["jitter 20 ms p99 #1", "jitter 20 ms p99 #2"] and rows[0][1] == {"jitter": 0.02}
    assert len(latency_netem.selected(None)) == len(latency_netem.CONDITIONS)
    args = parse_args(["--netem", "--netem-only", "jitter", "delay", "--repeat", "3"])
    assert (args.netem_only, args.repeat) == (["jitter", "delay"], 3)
    for argv, message in [(["--netem", "--netem-only", "snow"], "no condition matches snow"),
                          (["--netem", "--repeat", "0"], "--repeat must be at least 1"),
                          (["--netem-only", "jitter"], "go with --netem")]:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert message in capsys.readouterr().err
