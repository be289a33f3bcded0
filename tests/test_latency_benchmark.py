"""The latency benchmark measures what it claims: known delays land in the stage they were put in."""

import numpy as np
import pytest

from benchmarks.latency_call import STAGES, CallSpec, frame_latencies, run_call
from benchmarks.opus_codec import OpusCodec
from tests.models import speech_like

RATE, HOP = 24000, 320


def test_frame_latencies_splits_known_timestamps_into_stages():
    """Synthetic timestamps, each stage a different known length; packets of two frames."""
    t0 = 100.0
    known = {"input": 0.020, "encode": 0.003, "packetize": 0.0, "network": 0.007, "jitter": 0.030,
             "decode": 0.002, "output": 0.011}
    sent, received, sink = [], [], []
    for k in range(0, 40, 2):  # frames k, k+1 travel together; the later frame waits no packetize
        for j in (k, k + 1):
            t = t0 + j * HOP / RATE + known["input"]
            sent += [("input", j, 1, t), ("encoded", j, 1, t + known["encode"])]
        packet = t0 + (k + 1) * HOP / RATE + known["input"] + known["encode"]
        sent.append(("packet", k, 2, packet))
        received.append(("received", k, 2, packet + known["network"]))
    for j in range(40):
        out = t0 + (j + 1) * HOP / RATE + known["input"] + known["encode"] + known["network"] + known["jitter"]
        received += [("playout", j, 1, out), ("decoded", j, 1, out + known["decode"], j * HOP)]
    for b in range(200):  # the sink reads 240 samples per callback, in step with the ring positions
        start = t0 + known["input"] + known["encode"] + known["network"] + known["jitter"] + known["decode"] \
            + known["output"] + HOP / RATE
        sink.append((start + b * 240 / RATE, b * 240, 240))
    sender = {"sent": sent, "rate": RATE, "hop": HOP, "source_t0": t0}
    receiver = {"received": received + [("lost", 41, 1, 0.0)], "sink_log": sink, "lookahead": 156}
    out = frame_latencies(sender, receiver, CallSpec(label="t", model="x", warmup=0.0))
    assert out["index"] == list(range(40)) and out["lost"] == 1
    even = np.array(out["index"]) % 2 == 0
    assert np.allclose(np.array(out["packetize"])[even], HOP / RATE)  # waited for its packet's second frame
    assert np.allclose(np.array(out["packetize"])[~even], 0.0)
    assert np.allclose(np.array(out["jitter"])[even], known["jitter"])
    assert np.allclose(np.array(out["jitter"])[~even], known["jitter"] + HOP / RATE)  # played a frame later
    for stage in ("input", "encode", "network", "decode", "output"):
        assert np.allclose(out[stage], known[stage], atol=1e-9), stage
    assert np.allclose(out["lookahead"], 156 / RATE)
    total = np.sum([out[s] for s in STAGES], axis=0)
    assert np.allclose(out["end_to_end"], total)


def medians(result):
    pooled = {k: sum((d[k] for d in result["directions"]), []) for k in STAGES + ("end_to_end",)}
    return {k: 1000 * float(np.median(v)) for k, v in pooled.items()}


@pytest.fixture(scope="module")
def talkers():
    audio = speech_like(RATE * 4, RATE, batch=2, seed=5)[:, 0].numpy()
    return audio[0], audio[1]


def test_injected_delays_show_up_in_their_stage(talkers):
    """A real call (relay and two client processes), then the same call with 30 ms added on the
    network and 6 ms in the encoder: those stages grow by that much and the others do not."""
    spec = dict(model="untrained-small", seconds=3.0, warmup=2.5)
    base = medians(run_call(CallSpec(label="base", **spec), *talkers))
    slow = medians(run_call(CallSpec(label="slow", inject={"network": 0.030, "encode": 0.006}, **spec), *talkers))
    print("\nbaseline ms:", {k: round(v, 1) for k, v in base.items()},
          "\ninjected ms:", {k: round(v, 1) for k, v in slow.items()})
    assert slow["network"] - base["network"] == pytest.approx(30, abs=4)
    assert slow["encode"] - base["encode"] == pytest.approx(6, abs=3)
    for stage in ("input", "packetize", "decode"):
        assert abs(slow[stage] - base[stage]) < 4, stage
    assert base["input"] >= 1000 * HOP / RATE  # a frame waits for its last sample
    assert 25 < slow["end_to_end"] - base["end_to_end"] < 36 + 15


def test_opus_roundtrip_is_aligned_and_at_the_asked_bitrate():
    t = np.arange(RATE) / RATE
    audio = (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(2 * np.pi * 2 * t)) / 2).astype(np.float32)
    for frame_ms in (20.0, 10.0):
        decoded, kbps = OpusCodec(frame_ms).roundtrip(audio, 24.0)
        assert decoded.shape == audio.shape and kbps == pytest.approx(24.0, rel=0.05)
        assert np.corrcoef(audio[2000:-2000], decoded[2000:-2000])[0, 1] > 0.9
