"""Speech quality at each bitrate, ours against Opus: PESQ-WB, STOI and SI-SNR.

Every file of ``--audio`` (any rate, mono) is resampled to 24 kHz, coded, decoded, resampled to
16 kHz and compared with the original at 16 kHz. Our codec runs offline (``model.encode`` /
``decode`` with the codebook search a call uses at that bitrate: the streaming path reproduces it
exactly, see tests/test_streaming.py and tests/test_search.py); Opus runs
frame by frame through :mod:`benchmarks.opus_codec` (CBR, VoIP, as the call carries it, and VBR at
20 ms, as users and WebRTC run it) and its output is shifted by its lookahead so that it lines up
with the input.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

SPEECH_DIR = Path(os.environ.get("ENCODEC_STREAM_SPEECH", Path(__file__).resolve().parents[2] / "shared" / "audio" / "speech"))
"""The evaluation speech: ``../shared/audio/speech`` beside the checkout, or ``$ENCODEC_STREAM_SPEECH``."""
EVAL_RATE = 16000
CODEC_RATE = 24000


def load_speech(directory: str, limit: int | None = None) -> list[tuple[str, np.ndarray]]:
    """``(name, 16 kHz mono float32)`` for each WAV/FLAC of the directory, sorted by name."""
    paths = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in (".wav", ".flac"))
    if not paths:
        raise SystemExit(f"No .wav or .flac files in {directory}")
    out = []
    for path in paths[:limit]:
        audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != EVAL_RATE:
            audio = resample(audio, rate, EVAL_RATE)
        out.append((path.name, audio.astype(np.float32)))
    return out


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    g = math.gcd(rate_in, rate_out)
    return resample_poly(audio, rate_out // g, rate_in // g).astype(np.float32)


def si_snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant SNR in dB (both zero-mean; the estimate's best scaling of the reference)."""
    reference = reference - reference.mean()
    estimate = estimate - estimate.mean()
    target = (estimate @ reference) / (reference @ reference + 1e-12) * reference
    noise = estimate - target
    return float(10 * np.log10((target @ target + 1e-12) / (noise @ noise + 1e-12)))


def metrics(reference: np.ndarray, decoded_24k: np.ndarray) -> dict[str, float]:
    """PESQ-WB, STOI and SI-SNR of a 24 kHz decoding against the 16 kHz reference."""
    from pesq import pesq

    if not np.abs(np.nan_to_num(decoded_24k)).max() > 1e-6:  # the codec gave no audio at all
        return {"pesq_wb": float("nan"), "stoi": float("nan"), "si_snr": float("nan")}
    degraded = resample(np.nan_to_num(decoded_24k), CODEC_RATE, EVAL_RATE)[: len(reference)]
    degraded = np.pad(degraded, (0, len(reference) - len(degraded)))
    try:
        pesq_wb = float(pesq(EVAL_RATE, reference, degraded, "wb"))
    except Exception:  # PESQ refuses signals it finds no speech in (a codec that outputs silence)
        pesq_wb = float("nan")
    return {"pesq_wb": pesq_wb, "stoi": stoi_16k(reference, degraded), "si_snr": si_snr(reference, degraded)}


def stoi_16k(reference: np.ndarray, degraded: np.ndarray) -> float:
    """STOI of two 16 kHz signals (pystoi warns about short inputs; the value is still what we report)."""
    from pystoi import stoi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stoi(reference, degraded, EVAL_RATE, extended=False))


def ours(model, audio_24k: np.ndarray, bandwidth: float) -> tuple[np.ndarray, float]:
    """Offline encode/decode at ``bandwidth``, searched as a call searches; ``(decoded, kbps of the codes)``."""
    import torch

    from call.search_width import default_search_width

    with torch.inference_mode():
        x = torch.from_numpy(audio_24k)[None, None]
        encoded = model.encode(x, bandwidth=bandwidth, search_width=default_search_width(bandwidth))
        decoded = model.decode(encoded.audio_codes, encoded.audio_scales)[0]
    n_q = encoded.audio_codes.shape[-2]
    kbps = n_q * math.log2(model.config.codebook_size) * model.config.frame_rate / 1000
    return decoded[0, 0, : len(audio_24k)].numpy(), kbps


def evaluate(model_name: str, model, files: list[tuple[str, np.ndarray]], bandwidths: list[float],
             opus_frames_ms: list[float], progress=print) -> list[dict]:
    """One row per (codec, bitrate, file)."""
    from benchmarks.opus_codec import OpusCodec

    rows = []
    supported = [b for b in bandwidths if b in model.config.target_bandwidths]
    opus = [OpusCodec(frame_ms) for frame_ms in opus_frames_ms] + [OpusCodec(20.0, vbr=True)] * bool(opus_frames_ms)
    for n, (name, reference) in enumerate(files):
        progress(f"quality: {name} ({n + 1}/{len(files)})")
        audio_24k = resample(reference, EVAL_RATE, CODEC_RATE)
        for bandwidth in supported:
            decoded, kbps = ours(model, audio_24k, bandwidth)
            rows.append({"codec": model_name, "bandwidth": bandwidth, "kbps": kbps, "file": name,
                         **metrics(reference, decoded)})
        for codec in opus:
            for bandwidth in bandwidths:
                decoded, kbps = codec.roundtrip(audio_24k, bandwidth)
                rows.append({"codec": codec.name, "bandwidth": bandwidth, "kbps": kbps, "file": name,
                             **metrics(reference, decoded)})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean of each metric per (codec, bitrate), NaNs (PESQ refusals) left out and counted."""
    keys = sorted({(r["codec"], r["bandwidth"]) for r in rows}, key=lambda k: (k[0], k[1]))
    out = []
    for codec, bandwidth in keys:
        group = [r for r in rows if r["codec"] == codec and r["bandwidth"] == bandwidth]
        summary = {"codec": codec, "bandwidth": bandwidth, "kbps": float(np.mean([r["kbps"] for r in group])),
                   "files": len(group)}
        for metric in ("pesq_wb", "stoi", "si_snr"):
            values = np.array([r[metric] for r in group], float)
            summary[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        summary["pesq_failed"] = int(np.isnan([r["pesq_wb"] for r in group]).sum())
        summary["silent"] = int(np.isnan([r["stoi"] for r in group]).sum())
        out.append(summary)
    return out
