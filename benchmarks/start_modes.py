"""How much the IMMEDIATE start changes a stream, against the EXACT start (= offline).

    python benchmarks/start_modes.py [--model default] [--audio ../shared/audio/speech/librivox_0870.wav]

Encodes and decodes the same audio in both start modes with 320-sample blocks and prints which
frames' codes differ, and the decoded audio's SNR against offline over the first 100 ms and after.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import benchmark_audio, benchmark_model  # noqa: E402
from benchmarks.latency_quality import SPEECH_DIR  # noqa: E402
from streaming import StartMode, StreamingDecoder, StreamingEncoder  # noqa: E402
from call.wav import read_wav  # noqa: E402

DEFAULT_AUDIO = SPEECH_DIR / "librivox_0870.wav"


def stream(model, audio: torch.Tensor, bandwidth: float, start: StartMode) -> tuple[torch.Tensor, torch.Tensor]:
    encoder, decoder = StreamingEncoder(model, bandwidth, start=start), StreamingDecoder(model, start=start)
    codes = [encoder.push(audio[..., i : i + 320]) for i in range(0, audio.shape[-1], 320)] + [encoder.flush()]
    codes = torch.cat(codes, dim=-1)
    return codes, torch.cat([decoder.push(codes), decoder.flush()], dim=-1)


def snr_db(reference: torch.Tensor, signal: torch.Tensor) -> float:
    noise = (signal - reference).pow(2).sum().item()
    return float("inf") if noise == 0 else 10 * np.log10(reference.pow(2).sum().item() / noise)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--audio", default=str(DEFAULT_AUDIO), help="a WAV; generated audio if it does not exist")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    args = parser.parse_args()
    model = benchmark_model(args.model)
    rate = model.config.sampling_rate
    if Path(args.audio).is_file():
        audio = torch.from_numpy(read_wav(args.audio, rate, model.config.audio_channels))[None]
    else:
        audio = benchmark_audio(model, 4.0)
    offline_codes = model.encode(audio, bandwidth=args.bandwidth).audio_codes[0]
    offline_audio = model.decode(offline_codes[None], [None]).audio_values
    print(f"model {args.model}, {audio.shape[-1] / rate:.2f} s of {Path(args.audio).name}, {args.bandwidth:g} kbps")
    head = rate // 10
    for start in StartMode:
        codes, decoded = stream(model, audio, args.bandwidth, start)
        differing = (codes != offline_codes).any(dim=1)[0].nonzero().flatten().tolist()
        print(
            f"{start.value:>9}: {len(differing)} of {codes.shape[-1]} frames differ"
            f"{f' (frames {differing[:12]}…)' if differing else ''}; "
            f"codes differing {(codes != offline_codes).float().mean().item():.2e}; "
            f"audio SNR vs offline: first 100 ms {snr_db(offline_audio[..., :head], decoded[..., :head]):.1f} dB, "
            f"after {snr_db(offline_audio[..., head:], decoded[..., head:]):.1f} dB"
        )


if __name__ == "__main__":
    main()
