"""Bitrate follows the link (call/rate.py): the modes that fit a rate, the advisor's windows and
probes, and a sender and receiver adapting through the network emulator's schedule on a virtual clock."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from benchmarks.netem import Conditions, LinkSchedule
from call import wire
from call.jitter import STRETCH, JitterStats
from call.rate import Mode, RateAdvisor, RateLimit, best_mode, packet_kbps
from call.receiver import PeerStream
from call.sender import Sender
from streaming import StartMode
from tests.models import small_model, speech_like

RATE, HOP = 24000, 320
PERIOD = HOP / RATE
BANDWIDTHS = [1.5, 3.0, 6.0, 12.0, 24.0]


def codebooks(bandwidth):
    return int(bandwidth * 1000 / 750)  # 10-bit codes at 75 frames a second


def test_rate_message_round_trip_and_refusals():
    request = wire.RateRequest(2**31 - 1, 2.7)
    assert wire.RateRequest.decode(request.encode()) == request
    for data in (b"\x07", b"\x07\x01", b"\x07\x01\x00", b"\x07\x01\x01\x00"):
        with pytest.raises(wire.ProtocolError):
            wire.RateRequest.decode(data)
    # The relay's validator lets any peer send one, header or not, and knows it is no audio.
    assert wire.StreamValidator().accept(request.encode()) == request


def test_one_frame_packets_cost_what_the_issue_measured_and_four_frame_packets_halve_it():
    assert packet_kbps(8, 10, 1, 75) == pytest.approx(8.4)  # 6 kbps: 10 + 2 + 2 bytes, 75 a second
    assert packet_kbps(2, 10, 1, 75) == pytest.approx(4.2)
    assert packet_kbps(2, 10, 4, 75) == pytest.approx(2.4)


def test_best_mode_prefers_bandwidth_then_small_packets():
    def mode(kbps):
        return best_mode(kbps, BANDWIDTHS[:3], codebooks, 10, 75)

    assert mode(12.0) == Mode(6.0, 1)
    assert mode(8.0) == Mode(6.0, 2)
    assert mode(2.7) == Mode(1.5, 4)
    assert mode(0.5) == Mode(1.5, 8)


def test_rate_limit_serves_the_slowest_fresh_request():
    limit = RateLimit(keep=10.0)
    assert limit.limit(0.0) is None
    limit.request(1, 6.0, now=0.0)
    limit.request(2, 3.0, now=1.0)
    assert limit.limit(5.0) == 3.0
    limit.request(1, 6.0, now=10.0)
    assert limit.limit(11.5) == 6.0  # receiver 2 has not asked again: its request lapsed
    assert limit.limit(25.0) is None


def test_advisor_asks_for_what_arrived_then_probes_up_with_backoff():
    advisor = RateAdvisor(stream_id=5, window=0.5, probe_after=1.0, probe_max=4.0)
    stats = JitterStats()
    assert advisor.advise(stats, 0.0) is None
    for _ in range(25):  # half a second: 25 messages of 13 bytes (+2 of framing) arrived, 5 of 37 frames lost
        advisor.arrived(bytes(13))
    stats.received, stats.lost = 32, 5
    request = advisor.advise(stats, 0.5)
    assert request.stream_id == 5 and request.kbps == pytest.approx(0.9 * 25 * 15 * 8 / 0.5 / 1000)
    asked = request.kbps
    clean = [advisor.advise(stats, 0.5 + 0.5 * k) for k in range(1, 3)]
    assert clean[0] is None and clean[1].kbps == pytest.approx(2 * asked)  # a second of clean windows: probe
    for _ in range(25):
        advisor.arrived(bytes(13))
    stats.lost += 5  # the probe fails: back to what arrives, and the next probe waits twice as long
    assert advisor.advise(stats, 2.0).kbps == pytest.approx(asked)
    assert [advisor.advise(stats, 2.0 + 0.5 * k) for k in range(1, 4)] == [None] * 3
    assert advisor.advise(stats, 4.0).kbps == pytest.approx(2 * asked)
    # Nothing arrived at all in a bad window: the least it can ask, never zero.
    stats.lost += 50
    assert RateAdvisor(1).advise(stats, 0.0) is None


def test_advisor_does_not_take_a_reconnections_loss_for_the_links_capacity():
    advisor = RateAdvisor(stream_id=5, window=0.5)
    stats = JitterStats()
    advisor.advise(stats, 0.0)
    advisor.restart()  # our connection, or the sender's, was made again
    stats.lost = 30  # the frames of the cut, declared lost once the stream resumes
    assert [advisor.advise(stats, t) for t in (0.6, 1.1, 1.6)] == [None] * 3  # baseline, then two windows of grace
    stats.lost += 30
    assert advisor.advise(stats, 2.1) is not None  # loss after the grace is the link's again


async def adapt(model, caps, seconds):
    """A sender and a receiver through a relay queue of 16 messages and a link whose cap changes at the
    times of ``caps`` ([(from, kbps)]), one frame a tick on a virtual clock: what the sender sent in,
    and the longest run of ticks without audio."""
    audio = speech_like(int(seconds * RATE), RATE, seed=1)[0].numpy()
    now = 0.0
    with ThreadPoolExecutor(1) as pool:
        sender = Sender(model, pool, bandwidth=6.0, start=StartMode.IMMEDIATE, clock=lambda: now)
        stream = PeerStream(model, sender.header, StartMode.IMMEDIATE)
        stream.accept(sender.header.encode(), 0.0)
        link = LinkSchedule(Conditions())
        in_flight: list[tuple[float, bytes]] = []
        trace, run, longest, drops = [], 0, 0, 0
        for tick in range(int(seconds / PERIOD)):
            now = tick * PERIOD
            link.conditions = Conditions(rate_kbps=[kbps for since, kbps in caps if since <= now][-1])
            for message in await sender.push(audio[:, tick * HOP:(tick + 1) * HOP]):
                if link.backlog(now) > 16 * PERIOD:
                    drops += 1  # the relay's queue for this receiver is full: audio dropped
                    continue
                in_flight.append((link.deliver_at(now, len(message) + 2), message))
            for due, message in [m for m in in_flight if m[0] <= now]:
                stream.accept(message, due)
            in_flight = [m for m in in_flight if m[0] > now]
            index, codes = stream.jitter.playout(now)
            run = run + 1 if index == STRETCH or codes is None else 0
            longest = max(longest, run)
            request = stream.advisor.advise(stream.jitter.stats, now)
            if request is not None:
                sender.limit_rate(1, request.kbps, now)
            trace.append((now, sender.bandwidth, sender.frames_per_packet))
    return trace, longest, drops


def test_adaptation_follows_a_cap_from_12_to_3_kbps_and_back():
    trace, longest, drops = asyncio.run(adapt(small_model(), [(0.0, 12.0), (3.0, 3.0), (9.0, 12.0)], 16.0))
    assert all(b == 6.0 and f == 1 for t, b, f in trace if t < 3.0)  # 8.4 kbps fits 12
    settled = [(b, f) for t, b, f in trace if 5.0 <= t < 9.0]
    # Down within the first window: 1.5 kbps in packets of 4 frames (2.4 kbps with framing) fit 3.
    first_down = min(t for t, b, f in trace if t >= 3.0 and b < 6.0)
    assert first_down < 3.0 + 1.0
    fits = [packet_kbps(codebooks(b), 10, f, 75) <= 3.0 for b, f in settled]
    assert sum(fits) >= 0.5 * len(fits)  # the rest: probes up, undone when they fail
    # Back up to 6 kbps within 5 s of the cap's return, and the link never stalled audio for 200 ms.
    back = min(t for t, b, f in trace if t >= 9.0 and b == 6.0)
    assert back - 9.0 <= 5.0
    assert longest * PERIOD <= 0.2, f"{longest} ticks without audio"
    print(f"\ndown after {first_down - 3.0:.2f} s, fitting 3 kbps {100 * sum(fits) / len(fits):.0f} % of 5-9 s, "
          f"back after {back - 9.0:.2f} s, "
          f"longest stall {1000 * longest * PERIOD:.0f} ms, {drops} packets dropped")


def test_rates_at_three_layers():
    from call.meter import CLIENT_FRAMING, Meter

    meter = Meter()
    for k in range(76):  # one-frame packets at 6 kbps, 75 a second (76 over the second from the first to the last)
        meter.add(bytes(12), now=k / 75)
    assert meter.layers(CLIENT_FRAMING) == "7.3/10.9/42.6 kbps"  # what the issue measured, and IP on top
