"""The page's modules that need no browser, run by Node: its wire format (``web/wire.js``) reads what
``call/wire.py`` writes and writes the same bytes (headers, one- and many-frame packets with a bandwidth
switch inside one, END, the relay's envelopes, protocol version 2's COMFORT_NOISE, RATE) and refuses what
the Python side refuses; its jitter buffer and concealment (``web/jitter.js``) reorder, count and conceal
losses, skip a backlog, forget a stall and play a sender's pauses as ``call/jitter.py`` does; its comfort
noise (``web/comfort-noise.js``) has ``call/comfort_noise.py``'s filter and level per band; its rate limit
(``web/rate.js``) serves the slowest receiver as ``call/rate.py`` does, with one-frame packets; the codec
worker answers every request of the playback worklet (``web/playback-feed.js``)."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess

import numpy as np
import pytest

from call import wire
from call.comfort_noise import ComfortNoiseSource, noise_filter
from call.dtx import band_powers, level_db
from call.jitter import STRETCH, JitterBuffer
from call.rate import packet_kbps
from call.web_routes import WEB_ROOT

NODE = shutil.which("node")
RUNNER = """
import * as wire from "%s";
let input = "";
for await (const chunk of process.stdin) input += chunk;
const bytes = (hex) => Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
const hex = (array) => Array.from(array, (b) => b.toString(16).padStart(2, "0")).join("");
const out = [];
for (const [kind, message] of JSON.parse(input)) {
  const data = bytes(message);
  try {
    if (kind === "header") {
      const h = wire.decodeHeader(data);
      out.push({ ...h, fingerprint: hex(h.fingerprint), again: hex(wire.encodeHeader(h)) });
    } else if (kind === "audio") {
      const p = wire.decodeAudio(data, 10, 32);
      out.push({ index: p.index, frames: p.frames.map((f) => Array.from(f)),
                 again: p.frames.length === 1 ? hex(wire.encodeAudio(p.index, p.frames[0], 10)) : null });
    } else if (kind === "end") {
      const e = wire.decodeEnd(data);
      out.push({ ...e, again: hex(wire.encodeEnd(e.nFrames, e.nSamples)) });
    } else if (kind === "comfort") {
      const c = wire.decodeComfortNoise(data);
      out.push({ ...c, again: hex(wire.encodeComfortNoise(c.index, c.bandDb)) });
    } else if (kind === "rate") {
      const r = wire.decodeRate(data);
      out.push({ ...r, again: hex(wire.encodeRate(r.streamId, r.kbps)) });
    } else if (kind === "routed") {
      const [source, inner] = wire.unroute(data);
      out.push({ source, inner: hex(inner) });
    } else {
      out.push({ presence: wire.parsePresence(data) });
    }
  } catch (error) {
    out.push({ error: error.constructor.name + ": " + error.message });
  }
}
console.log(JSON.stringify(out));
"""


JITTER = """
import { JitterBuffer, Concealer } from "%s";
const period = 1 / 75, buffer = new JitterBuffer(75), concealer = new Concealer();
const order = [];
for (let i = 0; i < 300; i++) order.push(i);
[order[10], order[11]] = [order[11], order[10]];  // reordered
const lost = new Set([50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 200]);
const stall = (i) => (i >= 100 && i < 130 ? (130 - i) * period : 0);  // 400 ms without packets, then a burst
const played = [], gains = [], targets = {};
let tick = 0;
for (const i of order) {
  if (i === 250 || i === 251) {
    // frames 250-252 come in one packet, with 252
  } else if (i === 252) buffer.push(250, [250, 251, 252].map((f) => Int32Array.of(f)), i * period);
  else if (!lost.has(i)) buffer.push(i, [Int32Array.of(i)], i * period + stall(i));
  const due = buffer.playout(i * period);  // one playout tick per frame time
  if (due) {
    const [codes, gain] = concealer.next(due.codes);
    played.push(due.codes === null ? -1 : due.index);
    gains.push(gain);
  }
  if (i === 140 || i === 299) targets[i] = buffer.targetDelay;
}
console.log(JSON.stringify({ played, gains, stats: buffer.stats, concealed: concealer.concealed, targets, held: buffer.buffered }));
"""


def run_node(script: str, stdin: str = "") -> object:
    if NODE is None:
        pytest.skip("node is not installed: sudo scripts/install-system-deps.sh")
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, input=stdin)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def page_reads(messages: list[tuple[str, bytes]]) -> list[dict]:
    return run_node(RUNNER % (WEB_ROOT / "wire.js").as_uri(), json.dumps([(kind, data.hex()) for kind, data in messages]))


def test_page_jitter_buffer_orders_conceals_skips_and_forgets():
    got = run_node(JITTER % (WEB_ROOT / "jitter.js").as_uri())
    played, stats = got["played"], got["stats"]
    real = [i for i in played if i >= 0]
    assert real == sorted(real) and {10, 11, 250, 251, 252} <= set(real), "reordered and packed frames played in order"
    assert stats["lost"] == 11 and stats["received"] == 289
    assert got["concealed"] == played.count(-1) > stats["stretched"] > 0  # lost frames and dry ticks are concealed
    run = played.index(-1)  # the buffer ran dry at frame 50: concealment fades out
    assert got["gains"][run : run + 8] == pytest.approx([1, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0, 0])
    assert stats["skipped"] > 0 and len(real) + stats["skipped"] + got["held"] == stats["received"], "every frame played, skipped or held"
    assert got["targets"]["140"] > 0.3 and got["targets"]["299"] < 0.05, "the stall raised the target; a calm second later it is forgotten"


def test_page_reads_and_writes_the_python_wire_format():
    rng = np.random.default_rng(0)
    header = wire.StreamHeader(fingerprint=bytes(range(8)), sample_rate=24000, channels=1, samples_per_frame=320,
                               codebook_nbits=10, max_codebooks=32, stream_id=2**31 - 5, start_time_us=1_796_044_000_123_456)
    one = wire.AudioPacket(16383 + 5, (rng.integers(0, 1024, 8),))  # the index wraps on the wire
    uniform = wire.AudioPacket(7, tuple(rng.integers(0, 1024, 8) for _ in range(3)))
    switch = wire.AudioPacket(9, (rng.integers(0, 1024, 8), rng.integers(0, 1024, 4), rng.integers(0, 1024, 32)))
    bad_padding = bytearray(wire.AudioPacket(1, (rng.integers(0, 1024, 3),)).encode(10))
    bad_padding[-1] |= 1
    messages = [("header", header.encode()), ("audio", one.encode(10)), ("audio", uniform.encode(10)),
                ("audio", switch.encode(10)), ("end", wire.EndOfStream(184, 58_923).encode()),
                ("routed", wire.route(300, one.encode(10))), ("presence", wire.joined(3)), ("presence", wire.left(70_000)),
                ("audio", bytes(bad_padding)), ("audio", uniform.encode(10)[:3]), ("header", header.encode() + b"\0")]
    got = page_reads(messages)
    for kind, data in messages[-3:]:  # what the page refuses, the Python side refuses too
        with pytest.raises(wire.ProtocolError):
            wire.StreamHeader.decode(data) if kind == "header" else wire.AudioPacket.decode(data, 10, 32)

    assert got[0]["fingerprint"] == header.fingerprint.hex() and got[0]["startTimeUs"] == header.start_time_us
    assert got[0]["streamId"] == header.stream_id and got[0]["again"] == header.encode().hex()
    for result, packet in zip(got[1:4], (one, uniform, switch)):
        assert result["index"] == packet.index % wire.INDEX_MODULUS
        assert result["frames"] == [frame.tolist() for frame in packet.frames]
    assert got[1]["again"] == one.encode(10).hex()
    assert got[4] == {"nFrames": 184, "nSamples": 58_923, "again": wire.EndOfStream(184, 58_923).encode().hex()}
    assert got[5] == {"source": 300, "inner": one.encode(10).hex()}
    assert got[6] == {"presence": [3, True]} and got[7] == {"presence": [70_000, False]}
    assert "non-zero padding" in got[8]["error"]
    assert "truncated packet layout" in got[9]["error"]
    assert "trailing bytes" in got[10]["error"]


def test_page_reads_and_writes_protocol_version_2():
    header = wire.StreamHeader(fingerprint=bytes(range(8)), sample_rate=24000, channels=1, samples_per_frame=320,
                               codebook_nbits=10, max_codebooks=32, stream_id=7, version=wire.DTX_VERSION)
    version_3 = bytearray(header.encode())
    version_3[1] = 3
    noise = wire.ComfortNoise(16384 + 9, (-40.0, -52.0, -60.0, -127.0, -70.0, -71.0, -72.0, -73.0))
    rate = wire.RateRequest(2**31 - 5, 7.3)
    malformed = [b"\x06", b"\x06\x00\x01", b"\x06\x40\x00\x10", b"\x06\x00\x00\x80", b"\x06\x00\x00" + bytes(17)]
    bad_rates = [b"\x07\x05\x00", b"\x07\x05\x49\x00", b"\x07\x05"]
    messages = [("header", header.encode()), ("header", bytes(version_3)), ("comfort", noise.encode()),
                ("comfort", wire.ComfortNoise(3, (-50.0,) * 16).encode()), ("rate", rate.encode()),
                ("rate", wire.RateRequest(1, 0.01).encode()), *[("comfort", m) for m in malformed],
                *[("rate", m) for m in bad_rates]]
    got = page_reads(messages)
    with pytest.raises(wire.VersionError):
        wire.StreamHeader.decode(bytes(version_3))
    for data in malformed:  # what the page refuses, the Python side refuses too
        with pytest.raises(wire.ProtocolError):
            wire.ComfortNoise.decode(data)
    for data in bad_rates:
        with pytest.raises(wire.ProtocolError):
            wire.RateRequest.decode(data)

    assert got[0]["version"] == 2 and got[0]["again"] == header.encode().hex()
    assert "unsupported protocol version 3 (this page speaks 1, 2)" in got[1]["error"]
    assert got[2] == {"index": 9, "bandDb": [-40, -52, -60, -127, -70, -71, -72, -73], "again": noise.encode().hex()}
    assert wire.ComfortNoise.decode(bytes.fromhex(got[2]["again"])) == wire.ComfortNoise(9, noise.band_db)
    assert got[3]["bandDb"] == [-50] * 16 and got[3]["again"] == wire.ComfortNoise(3, (-50.0,) * 16).encode().hex()
    assert got[4] == {"streamId": rate.stream_id, "kbps": 7.3, "again": rate.encode().hex()}
    assert got[5]["kbps"] == 0.1 and wire.RateRequest.decode(bytes.fromhex(got[5]["again"])) == wire.RateRequest(1, 0.1)
    assert all("error" in result for result in got[6:]), got[6:]


PAUSE = """
import { JitterBuffer } from "%s";
const period = 1 / 75, buffer = new JitterBuffer(75, { initialDelay: period, minDelay: 0 });
const played = [], bands = [];
const arrivals = %s;  // [time in frames, kind, index, bands]
let next = 0;
for (let tick = 0; tick < 140; tick++) {
  for (; next < arrivals.length && arrivals[next][0] <= tick; next++) {
    const [, kind, index, band] = arrivals[next];
    if (kind === "audio") buffer.push(index, [Int32Array.of(index)], arrivals[next][0] * period);
    else buffer.pushComfort(index, band, arrivals[next][0] * period);
  }
  const due = tick ? buffer.playout((tick + 0.5) * period) : null;  // from tick 1: one frame of delay, as Python's first fill
  played.push(due ? due.index : -1), bands.push(due?.comfort ?? null);
}
console.log(JSON.stringify({ played, bands, stats: buffer.stats }));
"""


def test_page_jitter_buffer_plays_a_pause_as_the_python_receiver_does():
    """Speech, a pause announced at frame 30 (a new background at 45), speech again from frame 74 with the
    frame before the onset: the page plays the same frames, the pause as comfort noise at the pace of
    speech, as call/jitter.py, and loses nothing."""
    arrivals = [[i, "audio", i, None] for i in range(30)]
    arrivals += [[30, "comfort", 30, [-50] * 8], [45, "comfort", 45, [-55] * 8], [60, "comfort", 60, [-55] * 8]]
    arrivals += [[75, "audio", 74, None]] + [[i, "audio", i, None] for i in range(75, 120)]
    got = run_node(PAUSE % ((WEB_ROOT / "jitter.js").as_uri(), json.dumps(arrivals)))
    python = JitterBuffer(75, initial_delay=1 / 75, min_delay=0.0)
    expected = []
    for tick in range(140):
        for when, kind, index, bands in arrivals:
            if when == tick:
                if kind == "audio":
                    python.put(index, (np.array([index]),), when / 75)
                else:
                    python.put_comfort(wire.ComfortNoise(index, tuple(map(float, bands))), when / 75)
        index, entry = python.playout((tick + 0.5) / 75)
        expected.append(-1 if index == STRETCH else index)
    # Tick for tick through the pause and past the onset (later the two skip rules differ: the page's is smaller).
    assert got["played"][:100] == expected[:100]
    assert [i for i in got["played"] if i >= 0] == list(range(120))
    assert got["stats"]["comfort"] == python.stats.comfort == 44 and got["stats"]["lost"] == python.stats.lost == 0
    comfort = {i: b for i, b in zip(got["played"], got["bands"]) if b is not None and i >= 0}
    assert sorted(comfort) == list(range(30, 74)) and comfort[40] == [-50] * 8 and comfort[50] == [-55] * 8


COMFORT = """
import { noiseFilter, ComfortNoiseSource } from "%s";
const bands = %s;
const source = new ComfortNoiseSource(320, { seed: 5 }), audio = [];
for (let i = 0; i < 300; i++) audio.push(...source.frame(bands));
console.log(JSON.stringify({ filter: Array.from(noiseFilter(bands)), audio }));
"""


def test_page_comfort_noise_has_the_python_filter_and_level_per_band():
    bands = (-40.0, -52.0, -60.0, -127.0, -70.0, -71.0)  # 6 bands: the 32 bins split unevenly
    got = run_node(COMFORT % ((WEB_ROOT / "comfort-noise.js").as_uri(), json.dumps(bands)))
    assert np.allclose(got["filter"], noise_filter(bands, 32), rtol=0, atol=1e-12)
    source = ComfortNoiseSource(320, channels=1, seed=5)
    python = np.concatenate([source.frame(wire.ComfortNoise(0, bands))[0] for _ in range(300)])
    page = np.asarray(got["audio"])

    def levels(audio):
        return np.array([level_db(float(p)) for p in np.mean([band_powers(audio[i * 320:(i + 1) * 320]) for i in range(300)], axis=0)])

    assert np.abs(levels(page) - levels(python)).max() < 1.0  # each band (8 measured) within 1 dB
    assert abs(level_db(float(np.mean(page**2))) - level_db(float(np.mean(python**2)))) < 0.5


RATE_LIMIT = """
import { RateLimit, bestBandwidth, codebooksAt } from "%s";
const bandwidths = [1.5, 3, 6, 12, 24], asked = %s;
const limit = new RateLimit();
limit.request(4, 20, 0);
limit.request(5, 9, 1);
const slowest = limit.limit(2);
limit.request(5, 30, 3);  // a later request raises it
const raised = limit.limit(4);
const expired = limit.limit(14);  // no request heard for 10 s: no limit
console.log(JSON.stringify({ chosen: asked.map((kbps) => bestBandwidth(kbps, bandwidths, 10, 75)),
                             codebooks: bandwidths.map((b) => codebooksAt(b, 10, 75)), slowest, raised, expired }));
"""


def test_page_rate_limit_serves_the_slowest_receiver_as_call_rate_does():
    from codec.config import EncodecConfig

    config = EncodecConfig()
    bandwidths = [1.5, 3.0, 6.0, 12.0, 24.0]
    asked = [1.0, 3.6, 4.8, 8.3, 8.5, 14.4, 20.0, 26.4, 100.0]
    got = run_node(RATE_LIMIT % ((WEB_ROOT / "rate.js").as_uri(), json.dumps(asked)))
    assert got["codebooks"] == [config.num_quantizers_for_bandwidth(b) for b in bandwidths]
    fits = lambda b, kbps: packet_kbps(config.num_quantizers_for_bandwidth(b), 10, 1, 75) <= kbps  # noqa: E731
    assert got["chosen"] == [max((b for b in bandwidths if fits(b, kbps)), default=1.5) for kbps in asked]
    assert got["chosen"] == [1.5, 1.5, 1.5, 3, 6, 12, 12, 24, 24]  # 6 kbps costs 8.4 kbps in one-frame packets
    assert (got["slowest"], got["raised"], got["expired"]) == (9, 20, None)


RECONNECT = """
import { reconnectDelay } from "%s";
const middle = () => 0.5, low = () => 0, high = () => 1 - 1e-12;
console.log(JSON.stringify([middle, low, high].map((random) => [...Array(24).keys()].map((retry) => reconnectDelay(retry, random)))));
"""


def test_page_waits_between_reconnects_as_the_python_client_does():
    from unittest import mock

    from call.connection import backoff

    middle, low, high = run_node(RECONNECT % (WEB_ROOT / "reconnect.js").as_uri())
    for page, spread in ((middle, 1.0), (low, 0.8), (high, 1.2)):
        with mock.patch("call.connection.random.uniform", lambda a, b: spread):
            python = list(itertools.islice(backoff(), 24))
        assert page == pytest.approx(python)


PLAYBACK_FEED = """
import { feedPlayback } from "%s";
const { port1, port2 } = new MessageChannel();
let call = null;
feedPlayback(port1, async (queued) => {
  if (call === "broken") throw new Error("a decoder failed");
  return call ? Float32Array.from([queued, queued, queued]) : null;
}, 3);
const ask = (queued) => new Promise((resolve) => {
  port2.onmessage = ({ data }) => resolve(Array.from(data));
  port2.postMessage({ queued });
  setTimeout(() => resolve("no answer"), 5000);
});
const answers = [];
for (const [state, queued] of [[null, 1], ["joined", 2], ["broken", 3], ["joined", 4]]) {
  call = state;
  answers.push(await ask(queued));
}
console.log(JSON.stringify(answers));
process.exit(0);
"""


def test_page_answers_every_playback_request():
    """The worklet asks again only once answered: before the call is joined (the worklet's first request
    may come first on a busy CPU, which left a page silent for a whole call) and after a failed playout it
    gets silence, and the call's frames once there are some."""
    done = subprocess.run([NODE or pytest.skip("node is not installed: sudo scripts/install-system-deps.sh"),
                           "--input-type=module", "-e", PLAYBACK_FEED % (WEB_ROOT / "playback-feed.js").as_uri()],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [[0, 0, 0], [2, 2, 2], [0, 0, 0], [4, 4, 4]]
    assert "playout failed: a decoder failed" in done.stderr
