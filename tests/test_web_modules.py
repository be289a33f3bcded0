"""The page's modules that need no browser, run by Node: its wire format (``web/wire.js``) reads what
``call/wire.py`` writes and writes the same bytes (headers, one- and many-frame packets with a bandwidth
switch inside one, END, the relay's envelopes) and refuses what the Python side refuses; its jitter buffer
and concealment (``web/jitter.js``) reorder, count and conceal losses, skip a backlog and forget a stall."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from call import wire
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
  const due = buffer.playout();  // one playout tick per frame time
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
