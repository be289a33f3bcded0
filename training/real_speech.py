"""Add recorded speech that a Debian package ships to a synthetic corpus of `training.data`.

    apt-get install klettres-data
    python -m training.real_speech --corpus training/runs/data --out training/runs/data_mixed --tts-minutes 90

KLettres (`klettres-data`, GPL-2+) holds letters and syllables read by native speakers of
20 languages: 1,836 recordings, 51 minutes, 44.1 kHz. It is the only openly licensed recorded speech
found in the reachable package registries, and the synthetic corpus lacks what it has: human
voices, breath, real microphones and rooms. Its syllables are short, so it teaches timbre and
recording conditions rather than running speech; the TTS corpus keeps supplying that.

The output corpus has the layout `training.data` writes: `train.npy` is the first `--tts-minutes`
of the synthetic training split followed by the KLettres recordings of every language but
HELDOUT_LANGUAGES; `heldout.npy` is the synthetic held-out split unchanged, so held-out losses stay
comparable across runs. The held-out languages' recordings go to `klettres_heldout/*.wav` (24 kHz) for
`python -m training.evaluate --real-dir`.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf

from .data import SAMPLE_RATE, resample_to_model_rate, trim_and_level

KLETTRES_DIR = Path("/usr/share/klettres")
# Three speakers no training step hears: a German, a Hebrew and a Norwegian voice (≈ 3.4 min).
HELDOUT_LANGUAGES = ("de", "he", "nb")
SHORTEST_UTTERANCE = 0.25  # seconds of sound: a spoken letter is short


def klettres_recordings(root: Path = KLETTRES_DIR) -> list[Path]:
    files = sorted(root.glob("*/*/*.ogg"))
    if not files:
        raise SystemExit(f"no KLettres recordings under {root}: apt-get install klettres-data")
    return files


def language(path: Path, root: Path = KLETTRES_DIR) -> str:
    return path.relative_to(root).parts[0]


def load_utterance(path: Path) -> np.ndarray | None:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    return trim_and_level(resample_to_model_rate(audio.mean(1), rate), SHORTEST_UTTERANCE)


def build(corpus: Path, out: Path, tts_minutes: float, root: Path = KLETTRES_DIR) -> dict[str, float]:
    """Write the mixed corpus; returns minutes of synthetic, recorded and held-out recorded speech."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "klettres_heldout").mkdir(exist_ok=True)
    tts = np.load(corpus / "train.npy", mmap_mode="r")
    index = [u for u in json.load(open(corpus / "train_index.json")) if u["offset"] + u["length"] <= tts_minutes * 60 * SAMPLE_RATE]
    end = index[-1]["offset"] + index[-1]["length"]
    chunks, offset, heldout_samples = [np.asarray(tts[:end])], end, 0
    for path in klettres_recordings(root):
        audio = load_utterance(path)
        if audio is None:
            continue
        pcm = (audio * 32767).astype(np.int16)
        name = "/".join(path.relative_to(root).parts)
        if language(path, root) in HELDOUT_LANGUAGES:
            sf.write(out / "klettres_heldout" / (name.replace("/", "_")[:-4] + ".wav"), pcm, SAMPLE_RATE, subtype="PCM_16")
            heldout_samples += len(pcm)
            continue
        chunks.append(pcm)
        index.append({"offset": offset, "length": len(pcm), "engine": "klettres", "voice": language(path, root), "text": name})
        offset += len(pcm)
    np.save(out / "train.npy", np.concatenate(chunks))
    (out / "train_index.json").write_text(json.dumps(index, indent=0))
    for name in ("heldout.npy", "heldout_index.json"):
        shutil.copyfile(corpus / name, out / name)
    minutes = lambda samples: samples / SAMPLE_RATE / 60  # noqa: E731
    return {"synthetic": minutes(end), "recorded": minutes(offset - end), "recorded_heldout": minutes(heldout_samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="training/runs/data", help="a corpus written by training.data")
    parser.add_argument("--out", default="training/runs/data_mixed")
    parser.add_argument("--tts-minutes", type=float, default=90.0, help="synthetic minutes to keep (recorded speech is 45 of them)")
    parser.add_argument("--klettres", default=str(KLETTRES_DIR))
    args = parser.parse_args()
    minutes = build(Path(args.corpus), Path(args.out), args.tts_minutes, Path(args.klettres))
    print(f"{args.out}: " + ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items()), flush=True)


if __name__ == "__main__":
    main()
