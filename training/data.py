"""Synthetic speech corpus for training the default model: Debian TTS engines reading dictionary text.

    python -m training.data --out training/runs/data [--minutes 90] [--seed 0]

Writes, for each split (`train`, `heldout`), `<split>.npy` (int16 samples at 24 kHz, utterances
concatenated), `<split>_index.json` (offset, length, engine, voice, text of every utterance).
Engines: espeak-ng (languages x voice variants x rate x pitch), flite (its built-in voices, with
duration and pitch changes) and festival (diphone and HTS voices). Held-out utterances use voices
and words that the training split never contains (see HELDOUT_* below), so the held-out numbers
measure generalisation to unseen speakers and texts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 24_000
TARGET_DBFS = -23.0

ESPEAK_LANGS = ["en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029"]
ESPEAK_FOREIGN = ["de", "fr", "es", "it", "nl", "pl", "pt", "sv", "hi", "ru"]
ESPEAK_VARIANTS = (
    "Alex Alicia Andrea Annie AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario "
    "Michael Mike Nguyen RicishayMax Storm Tweaky adam anika announcer antonio aunty belinda benjamin "
    "boris caleb croak david ed edward edward2 f1 f2 f3 f5 fast gustave iven iven2 iven3 john "
    "kaukovalta klatt klatt2 klatt3 klatt5 linda m1 m2 m3 m4 m6 m8 marcelo max michel miguel norbert "
    "pablo paul pedro quincy rob robert steph steph2 steph3 travis victor zac"
).split()
FLITE_VOICES = ["slt", "rms", "kal16"]
FESTIVAL_VOICES = ["voice_cmu_us_slt_arctic_hts", "voice_kal_diphone"]

# Never in the training split.
HELDOUT_ESPEAK_VARIANTS = ["m7", "f4", "Andy", "klatt4", "m5"]
HELDOUT_FLITE_VOICES = ["awb"]
HELDOUT_FESTIVAL_VOICES = ["voice_ked_diphone"]
HELDOUT_WORD_FRACTION = 0.1


def load_words() -> tuple[list[str], list[str]]:
    """Dictionary words, split by a hash into training and held-out vocabularies."""
    words = []
    with open("/usr/share/dict/words", encoding="utf-8", errors="ignore") as f:
        for line in f:
            word = line.strip()
            if word.isalpha() and word.isascii() and 1 < len(word) <= 12 and "'" not in word:
                words.append(word)
    train, heldout = [], []
    for word in words:
        (heldout if zlib.crc32(word.lower().encode()) % 1000 < HELDOUT_WORD_FRACTION * 1000 else train).append(word)
    return train, heldout


def make_sentence(rng: random.Random, words: list[str]) -> str:
    parts = []
    for _ in range(rng.randint(1, 3)):
        n = rng.randint(3, 9)
        clause = [rng.choice(words) for _ in range(n)]
        if rng.random() < 0.15:
            clause.insert(rng.randrange(len(clause) + 1), str(rng.randint(0, 2000)))
        parts.append(" ".join(clause))
    text = ", ".join(parts)
    return text[0].upper() + text[1:] + rng.choice([".", ".", ".", "?", "!"])


def to_corpus_rate(audio: np.ndarray, rate: int) -> np.ndarray:
    """float32 mono audio at `rate` → float32 at SAMPLE_RATE."""
    if rate == SAMPLE_RATE:
        return audio
    g = np.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def read_mono(path: str | os.PathLike) -> np.ndarray:
    """An audio file as float32 mono at SAMPLE_RATE."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return to_corpus_rate(audio.mean(1), rate)


def synth_espeak(rng: random.Random, text: str, voice: str, path: str) -> None:
    cmd = ["espeak-ng", "-v", voice, "-s", str(rng.randint(120, 230)), "-p", str(rng.randint(15, 85)),
           "-g", str(rng.randint(0, 4)), "-w", path, text]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def synth_flite(rng: random.Random, text: str, voice: str, path: str) -> None:
    cmd = ["flite", "-voice", voice, "-t", text, "-o", path,
           "--setf", f"duration_stretch={rng.uniform(0.75, 1.35):.2f}",
           "--setf", f"int_f0_target_mean={rng.uniform(80, 230):.0f}",
           "--setf", f"int_f0_target_stddev={rng.uniform(10, 40):.0f}"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def synth_festival(rng: random.Random, text: str, voice: str, path: str) -> None:
    stretch = rng.uniform(0.8, 1.3)
    cmd = ["text2wave", "-eval", f"({voice})", "-eval", f"(Parameter.set 'Duration_Stretch {stretch:.2f})", "-o", path]
    subprocess.run(cmd, input=text.encode(), check=True, capture_output=True, timeout=120)


def trim_and_level(audio: np.ndarray, shortest: float = 0.5) -> np.ndarray | None:
    """Trim silence to at most 0.2 s at each end; scale to TARGET_DBFS RMS over the active part.

    None when fewer than `shortest` seconds of samples are above 1 % of the peak (a failed synthesis).
    """
    env = np.abs(audio)
    if env.size == 0:
        return None
    active = np.nonzero(env > 0.01 * (env.max() + 1e-9))[0]
    if len(active) < int(shortest * SAMPLE_RATE):
        return None
    keep = int(0.2 * SAMPLE_RATE)
    audio = audio[max(0, active[0] - keep) : active[-1] + keep]
    frames = audio[: len(audio) // 480 * 480].reshape(-1, 480)
    energy = (frames**2).mean(1)
    loud = energy[energy > 0.01 * energy.max()]
    rms = np.sqrt(loud.mean()) + 1e-9
    audio = audio * (10 ** (TARGET_DBFS / 20) / rms)
    return np.clip(audio, -1.0, 1.0)


def build_split(split: str, seconds: float, seed: int, out: Path) -> None:
    rng = random.Random(f"{split}-{seed}")
    train_words, heldout_words = load_words()
    if split == "train":
        words = train_words
        espeak = [(l, v) for l in ESPEAK_LANGS for v in ESPEAK_VARIANTS] + [(l, "") for l in ESPEAK_LANGS]
        foreign = [(l, v) for l in ESPEAK_FOREIGN for v in ESPEAK_VARIANTS[::4]]
        flite, festival = FLITE_VOICES, FESTIVAL_VOICES
    else:
        words = heldout_words
        espeak = [(l, v) for l in ESPEAK_LANGS[:4] for v in HELDOUT_ESPEAK_VARIANTS]
        foreign = []
        flite, festival = HELDOUT_FLITE_VOICES, HELDOUT_FESTIVAL_VOICES
    chunks, index, total, offset = [], [], 0, 0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "u.wav")
        while total < seconds * SAMPLE_RATE:
            text = make_sentence(rng, words)
            r = rng.random()
            if r < 0.55 or (r < 0.62 and not foreign):
                lang, variant = rng.choice(espeak)
                engine, voice = "espeak-ng", lang + (f"+{variant}" if variant else "")
                synth_espeak(rng, text, voice, path)
            elif r < 0.62:
                lang, variant = rng.choice(foreign)
                engine, voice = "espeak-ng", f"{lang}+{variant}"
                synth_espeak(rng, text, voice, path)
            elif r < 0.85:
                engine, voice = "flite", rng.choice(flite)
                synth_flite(rng, text, voice, path)
            else:
                engine, voice = "festival", rng.choice(festival)
                synth_festival(rng, text, voice, path)
            audio = trim_and_level(read_mono(path))
            if audio is None:
                continue
            pcm = (audio * 32767).astype(np.int16)
            chunks.append(pcm)
            index.append({"offset": offset, "length": len(pcm), "engine": engine, "voice": voice, "text": text})
            offset += len(pcm)
            total += len(pcm)
            if len(index) % 200 == 0:
                print(f"{split}: {len(index)} utterances, {total / SAMPLE_RATE / 60:.1f} min", flush=True)
    np.save(out / f"{split}.npy", np.concatenate(chunks))
    with open(out / f"{split}_index.json", "w") as f:
        json.dump(index, f, indent=0)
    print(f"{split}: {len(index)} utterances, {total / SAMPLE_RATE / 60:.1f} min -> {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="training/runs/data")
    parser.add_argument("--minutes", type=float, default=90.0, help="training split length")
    parser.add_argument("--heldout-minutes", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="heldout,train")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in args.splits.split(","):
        build_split(split, (args.minutes if split == "train" else args.heldout_minutes) * 60, args.seed, out)


if __name__ == "__main__":
    main()
