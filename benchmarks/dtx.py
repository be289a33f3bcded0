"""What DTX saves and what it costs, on a conversation-like input.

    python -m benchmarks.dtx [--audio ../shared/audio/speech] [--model default] [--bandwidth 6]

The input is real speech with pauses: the files of ``--audio`` one after another (at 24 kHz),
each followed by a pause, the pauses long enough that ``--silence`` of the whole is silence, and
a steady background (``--background`` dB full scale, low-passed noise: a quiet room) under all of
it. The call's sender and receiver run it twice, DTX off and on, over a link without jitter (each
message arrives when the frame it ends was encoded, on a virtual clock): messages and bytes sent
(each message is also one packet the relay forwards to each listener), and STOI of each file's
span of the decoded output against the original file, DTX on against off. Clipping shows as
``speech_energy_withheld``: the share of the DTX-off decode's energy in the files' spans that lies
in frames DTX did not send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.latency_quality import CODEC_RATE, EVAL_RATE, load_speech, resample, stoi_16k
from call import wire
from call.media import FILE_BLOCK
from call.receiver import PeerStream
from call.sender import Sender
from streaming import StartMode


def conversation(files: list[np.ndarray], silence: float, background_db: float,
                 seed: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """``(audio at 24 kHz, [(start, end) of each file])``: the files with pauses after each, the
    pauses ``silence`` of the total, in lengths that vary (0.5x to 1.5x their mean)."""
    rng = np.random.default_rng(seed)
    speech = [resample(f, EVAL_RATE, CODEC_RATE) for f in files]
    weights = rng.uniform(0.5, 1.5, len(speech))
    pauses = np.ceil(weights / weights.sum() * silence / (1 - silence) * sum(len(s) for s in speech)).astype(int)
    pieces, spans, position = [], [], 0
    for clip, samples in zip(speech, pauses):
        pause = np.zeros(samples, np.float32)
        spans.append((position, position + len(clip)))
        pieces += [clip, pause]
        position += len(clip) + len(pause)
    audio = np.concatenate(pieces)
    noise = np.convolve(rng.standard_normal(len(audio) + 15), np.hanning(16), mode="valid")
    noise *= 10 ** (background_db / 20) / noise.std()
    return (audio + noise).astype(np.float32), spans


async def call(model, audio: np.ndarray, bandwidth: float, dtx: bool) -> tuple[list[bytes], np.ndarray, PeerStream]:
    """The messages a sender sends for ``audio`` and what a receiver decodes from them, each
    message arriving (on a virtual clock) when its last frame was encoded."""
    hop = model.config.hop_length
    period = hop / model.config.sampling_rate
    with ThreadPoolExecutor(1) as pool:
        sender = Sender(model, pool, bandwidth, StartMode.IMMEDIATE, dtx=dtx)
        stream = PeerStream(model, sender.header, StartMode.IMMEDIATE)
        messages = [sender.header.encode()]
        stream.accept(messages[0], 0.0)
        chunks = []
        for start in range(0, audio.shape[-1], FILE_BLOCK):
            sent = await sender.push(audio[None, start : start + FILE_BLOCK])
            now = sender.next_index * period
            for message in sent:
                stream.accept(message, now)
            messages += sent
            chunks.append(stream.decode(stream.jitter.pop(now)))
        final = await sender.finish()
        for message in final:
            stream.accept(message, float("inf"))
        messages += final
        chunks += [stream.decode(stream.jitter.pop(float("inf"))), stream.flush()]
    return messages, np.concatenate(chunks, axis=-1)[0, : len(audio)], stream


def stoi(reference_24k: np.ndarray, decoded_24k: np.ndarray) -> float:
    return stoi_16k(resample(reference_24k, CODEC_RATE, EVAL_RATE), resample(decoded_24k, CODEC_RATE, EVAL_RATE))


def withheld_energy(decoded: np.ndarray, spans: list[tuple[int, int]], sent_frames: set[int], hop: int) -> float:
    """Share of ``decoded``'s energy within ``spans`` that lies in frames not in ``sent_frames``."""
    total = withheld = 0.0
    for start, end in spans:
        for frame in range(start // hop, -(-end // hop)):
            energy = float(np.sum(decoded[max(start, frame * hop): min(end, (frame + 1) * hop)] ** 2))
            total += energy
            withheld += 0.0 if frame in sent_frames else energy
    return withheld / total


def sent_frame_indices(messages: list[bytes], nbits: int, max_codebooks: int) -> set[int]:
    """Indices of the frames the audio packets among ``messages`` carry (indices below 2^14)."""
    frames = set()
    for message in messages:
        if wire.message_kind(message) == wire.AUDIO_FLAG:
            index, counts, _ = wire.AudioPacket.layout(message, nbits, max_codebooks)
            frames.update(range(index, index + len(counts)))
    return frames


def measure(model, audio: np.ndarray, spans: list[tuple[int, int]], bandwidth: float) -> dict:
    seconds = len(audio) / model.config.sampling_rate
    runs = {}
    for dtx in (False, True):
        messages, decoded, stream = asyncio.run(call(model, audio, bandwidth, dtx))
        runs[dtx] = (messages, decoded, stream)
    header = runs[True][2].header
    result: dict = {"seconds": round(seconds, 2), "bandwidth": bandwidth,
                    "silence_share": round(1 - sum(e - s for s, e in spans) / len(audio), 3)}
    for dtx, (messages, decoded, stream) in runs.items():
        key = "dtx" if dtx else "no_dtx"
        comfort = sum(1 for m in messages if m[0] == wire.COMFORT_NOISE)
        result[key] = entry = {
            "messages": len(messages), "comfort_messages": comfort, "bytes": sum(map(len, messages)),
            "kbps_app": round(8 * sum(map(len, messages)) / seconds / 1000, 3),
            "stoi_per_file": [stoi(audio[s:e], decoded[s:e]) for s, e in spans],
            "comfort_frames": stream.jitter.stats.comfort, "lost_frames": stream.jitter.stats.lost,
        }
        entry["stoi_speech"] = round(float(np.mean(entry["stoi_per_file"])), 4)
    on, off = result["dtx"], result["no_dtx"]
    result["messages_saved"] = round(1 - on["messages"] / off["messages"], 3)
    result["bytes_saved"] = round(1 - on["bytes"] / off["bytes"], 3)
    result["stoi_drop"] = round(off["stoi_speech"] - on["stoi_speech"], 4)
    result["stoi_drop_per_file"] = [round(a - b, 4) for a, b in zip(off.pop("stoi_per_file"), on.pop("stoi_per_file"))]
    sent = sent_frame_indices(runs[True][0], header.codebook_nbits, header.max_codebooks)
    result["speech_energy_withheld"] = round(withheld_energy(runs[False][1], spans, sent, header.samples_per_frame), 5)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--audio", default="../shared/audio/speech", help="directory of speech files")
    parser.add_argument("--model", default="default")
    parser.add_argument("--bandwidth", type=float, default=6.0)
    parser.add_argument("--silence", type=float, default=0.55, help="share of the input that is pause")
    parser.add_argument("--background", type=float, default=-55.0, help="background noise level, dB full scale")
    parser.add_argument("--files", type=int, default=None, help="use only the first N files")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args(argv)
    if not 0 <= args.silence < 1:
        parser.error(f"--silence must lie in [0, 1), got {args.silence}")
    if args.files is not None and args.files < 1:
        parser.error(f"--files must be at least 1, got {args.files}")
    from codec import load_model

    model = load_model(args.model).eval()
    if args.bandwidth not in model.config.target_bandwidths:
        parser.error(f"--bandwidth {args.bandwidth:g}: the model offers {model.config.target_bandwidths}")
    audio, spans = conversation([a for _, a in load_speech(args.audio, args.files)], args.silence, args.background)
    result = measure(model, audio, spans, args.bandwidth)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(result, out, indent=1)


if __name__ == "__main__":
    main()
