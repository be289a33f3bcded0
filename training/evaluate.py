"""Measure a model against Opus on held-out synthetic speech and on real speech.

    python -m training.evaluate                                  # the bundled codec/default_model
    python -m training.evaluate --model training/runs/default/last.pt
    python -m training.evaluate --real-dir ../shared/audio/speech --out training/runs/eval.json
    python -m training.evaluate --heldout-count 0 --real-dir ../shared/audio/speech training/runs/data_mixed/klettres_heldout

Metrics per clip at each bandwidth: PESQ-WB (ITU-T P.862.2, on 16 kHz resampled copies), STOI and
SI-SNR (at 24 kHz), averaged per set. Opus (libopus through `opuslib`, VOIP mode, 20 ms frames,
24 kHz, constant bitrate) runs on the same clips at the same bitrate, aligned by its lookahead.
Also times offline encode + decode on one thread.

Needs the `eval` extras: `pip install pesq pystoi opuslib` and the libopus shared library
(`apt-get install libopus0`). Real speech (../shared/audio/speech) is evaluation-only material.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

from codec import EncodecModel, load_default_model

from .checkpoints import model_from_checkpoint

SAMPLE_RATE = 24_000
# What pystoi returns for a clip with under 30 frames (384 ms) of sound: a spoken letter, a short word.
STOI_TOO_SHORT = 1e-5


def load_model(spec: str | None) -> EncodecModel:
    if spec is None or spec == "default":
        return load_default_model()
    if spec.endswith(".pt"):
        return model_from_checkpoint(spec)[0]
    return EncodecModel.from_pretrained(spec)


def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return x
    g = np.gcd(rate, target)
    return resample_poly(x, target // g, rate // g)


def real_clips(directory: str) -> dict[str, np.ndarray]:
    clips = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.wav"))):
        audio, rate = sf.read(path, dtype="float64", always_2d=True)
        clips[Path(path).stem] = resample(audio.mean(1), rate, SAMPLE_RATE)
    return clips


def heldout_clips(data_dir: str, count: int, max_seconds: float = 6.0) -> dict[str, np.ndarray]:
    audio = np.load(os.path.join(data_dir, "heldout.npy"))
    index = json.load(open(os.path.join(data_dir, "heldout_index.json")))
    clips = {}
    for i, u in enumerate(index[:count]):
        length = min(u["length"], int(max_seconds * SAMPLE_RATE))
        clips[f"heldout_{i:02d}_{u['engine']}_{u['voice']}"] = audio[u["offset"] : u["offset"] + length] / 32768.0
    return clips


@torch.inference_mode()
def codec_roundtrip(model: EncodecModel, x: np.ndarray, bandwidth: float, search_width: int = 1) -> np.ndarray:
    audio = torch.from_numpy(x.astype(np.float32))[None, None]
    codes = model.encode(audio, bandwidth=bandwidth, search_width=search_width)
    out = model.decode(codes.audio_codes, codes.audio_scales, last_frame_pad_length=codes.last_frame_pad_length)
    return out.audio_values[0, 0, : len(x)].double().numpy()


def opus_roundtrip(x: np.ndarray, bitrate: int) -> np.ndarray:
    import opuslib
    from opuslib.api import ctl, encoder as opus_encoder

    frame = SAMPLE_RATE // 50
    enc = opuslib.Encoder(SAMPLE_RATE, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = bitrate
    enc.vbr = False
    dec = opuslib.Decoder(SAMPLE_RATE, 1)
    lookahead = opus_encoder.encoder_ctl(enc.encoder_state, ctl.get_lookahead)
    pcm = np.clip(np.concatenate([x, np.zeros(lookahead + frame)]), -1, 1)
    pcm = (pcm * 32767).astype("<i2")
    out = []
    for start in range(0, len(pcm) - frame + 1, frame):
        packet = enc.encode(pcm[start : start + frame].tobytes(), frame)
        out.append(np.frombuffer(dec.decode(packet, frame), dtype="<i2"))
    y = np.concatenate(out).astype(np.float64) / 32768.0
    return y[lookahead : lookahead + len(x)]


def si_snr(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = ref - ref.mean(), est - est.mean()
    proj = (est @ ref) / (ref @ ref + 1e-12) * ref
    return float(10 * np.log10((proj @ proj) / ((est - proj) @ (est - proj) + 1e-12) + 1e-12))


def metrics(ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    from pesq import pesq
    from pystoi import stoi

    ref16, est16 = resample(ref, SAMPLE_RATE, 16_000), resample(est, SAMPLE_RATE, 16_000)
    try:
        pesq_wb = float(pesq(16_000, ref16, est16, "wb"))
    except Exception:  # PESQ refuses clips it finds no speech in
        pesq_wb = float("nan")
    intelligibility = float(stoi(ref, est, SAMPLE_RATE, extended=False))
    if intelligibility == STOI_TOO_SHORT:  # not a score: left out of the averages, as PESQ's refusals are
        intelligibility = float("nan")
    return {"pesq_wb": pesq_wb, "stoi": intelligibility, "si_snr": si_snr(ref, est)}


def speed(model: EncodecModel, seconds: float = 10.0) -> dict[str, float]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(1, 1, int(seconds * SAMPLE_RATE)) * 0.05
    with torch.inference_mode():
        model.encode(x, bandwidth=6.0)
        t0 = time.perf_counter()
        enc = model.encode(x, bandwidth=6.0)
        t1 = time.perf_counter()
        model.decode(enc.audio_codes, enc.audio_scales)
        t2 = time.perf_counter()
    torch.set_num_threads(threads)
    return {"encode_rtf": (t1 - t0) / seconds, "decode_rtf": (t2 - t1) / seconds}


def streaming_speed(model: EncodecModel, seconds: float = 5.0, bandwidth: float = 6.0) -> dict[str, float] | None:
    """Frame-by-frame (320 samples) encode + decode through the project's streaming layer, one thread."""
    try:
        from streaming import StreamingDecoder
        from streaming import StreamingEncoder
    except ImportError:
        return None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    hop = model.config.hop_length
    x = torch.randn(1, 1, int(seconds * SAMPLE_RATE)) * 0.05
    encoder, decoder = StreamingEncoder(model, bandwidth=bandwidth), StreamingDecoder(model)
    for start in range(0, 20 * hop, hop):  # warm up
        decoder.push(encoder.push(x[..., start : start + hop]))
    encoder, decoder = StreamingEncoder(model, bandwidth=bandwidth), StreamingDecoder(model)
    t_enc = t_dec = 0.0
    frames = x.shape[-1] // hop
    for i in range(frames):
        t0 = time.perf_counter()
        codes = encoder.push(x[..., i * hop : (i + 1) * hop])
        t1 = time.perf_counter()
        decoder.push(codes)
        t_dec += time.perf_counter() - t1
        t_enc += t1 - t0
    torch.set_num_threads(threads)
    frame_s = hop / SAMPLE_RATE
    return {
        "encode_ms_per_frame": 1000 * t_enc / frames,
        "decode_ms_per_frame": 1000 * t_dec / frames,
        "rtf": (t_enc + t_dec) / frames / frame_s,
    }


def summarise(rows: list[dict]) -> dict:
    out = {}
    for key in ("pesq_wb", "stoi", "si_snr"):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        out[key] = float(np.nanmean(values))
    out["clips"] = len(rows)
    out["stoi_clips"] = int(np.isfinite([r["stoi"] for r in rows]).sum())  # clips long enough for STOI
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default', a checkpoint directory, or a training last.pt")
    parser.add_argument("--data", default="training/runs/data", help="where training.data wrote the held-out split")
    parser.add_argument("--heldout-count", type=int, default=16)
    parser.add_argument(
        "--real-dir", nargs="+", default=[str(Path(__file__).resolve().parents[2] / "shared" / "audio" / "speech")],
        help="directories of recorded-speech WAVs: the first is reported as real_speech, others by their folder name",
    )
    parser.add_argument("--bandwidths", default="1.5,3,6,12,24")
    parser.add_argument(
        "--search-widths", default="1",
        help="codebook search widths to evaluate each bandwidth with (1: greedy, as transformers; see EncodecModel.encode)",
    )
    parser.add_argument("--opus-kbps", default="6")
    parser.add_argument("--out", default=None, help="write the full results as JSON here")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = load_model(args.model)
    sets = {}
    if args.heldout_count > 0 and os.path.exists(os.path.join(args.data, "heldout.npy")):
        sets["heldout_synthetic"] = heldout_clips(args.data, args.heldout_count)
    for n, directory in enumerate(args.real_dir):
        if os.path.isdir(directory):
            sets["real_speech" if n == 0 else Path(directory).name] = real_clips(directory)
    if not sets:
        raise SystemExit("No evaluation audio: run `python -m training.data` and/or pass --real-dir")

    results: dict = {"model": args.model, "parameters": model.num_parameters(), "sets": {}}
    for set_name, clips in sets.items():
        systems: dict[str, list[dict]] = {}
        for name, ref in clips.items():
            for bw in [float(b) for b in args.bandwidths.split(",")]:
                for width in [int(w) for w in args.search_widths.split(",")]:
                    system = f"codec {bw:g} kbps" + (f", search {width}" if width > 1 else "")
                    systems.setdefault(system, []).append({"clip": name, **metrics(ref, codec_roundtrip(model, ref, bw, width))})
            for kbps in [float(b) for b in args.opus_kbps.split(",")]:
                systems.setdefault(f"opus {kbps:g} kbps", []).append({"clip": name, **metrics(ref, opus_roundtrip(ref, int(kbps * 1000)))})
        results["sets"][set_name] = {
            "seconds": sum(len(c) for c in clips.values()) / SAMPLE_RATE,
            "summary": {system: summarise(rows) for system, rows in systems.items()},
            "per_clip": systems,
        }
    results["speed_1_thread"] = speed(model)
    results["streaming_1_thread"] = streaming_speed(model)

    for set_name, data in results["sets"].items():
        print(f"\n{set_name}: {data['summary'][next(iter(data['summary']))]['clips']} clips, {data['seconds']:.1f} s")
        print(f"| system | PESQ-WB | STOI | SI-SNR (dB) |\n| --- | --- | --- | --- |")
        for system, s in data["summary"].items():
            print(f"| {system} | {s['pesq_wb']:.2f} | {s['stoi']:.3f} | {s['si_snr']:.1f} |")
    sp = results["speed_1_thread"]
    print(f"\nparameters: {results['parameters']:,}; offline, 1 thread: encode {sp['encode_rtf']:.3f}x, decode {sp['decode_rtf']:.3f}x real time")
    st = results["streaming_1_thread"]
    if st:
        print(f"streaming frame by frame at 6 kbps, 1 thread: encode {st['encode_ms_per_frame']:.2f} ms + decode "
              f"{st['decode_ms_per_frame']:.2f} ms per 13.3 ms frame = {st['rtf']:.3f}x real time")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
