"""Pack a corpus of `training.data` into one compact lossless file, and unpack it elsewhere.

    python -m training.archive pack --data training/runs/data --out gpu/corpus.npz --train-minutes 25
    python -m training.archive unpack gpu/corpus.npz --out /tmp/data

For training on a machine that has no TTS engines to build the corpus with (a rented GPU) and
takes a limited upload. Samples are stored as their first difference (wrapping int16 arithmetic,
so a cumulative sum undoes it exactly) compressed with LZMA: 56 % of the int16 size on this corpus
(speech predicts well from the last sample; TTS silences are runs of zeros). The training split
can be cut to a random sample of whole utterances (seeded), not a prefix: a corpus with recorded
speech (`training.real_speech`) appends it after the synthetic part.
"""

from __future__ import annotations

import argparse
import json
import lzma
from pathlib import Path

import numpy as np

SAMPLE_RATE = 24_000  # training.data's; not imported from there: it needs soundfile, which a bare GPU machine lacks
SPLITS = ("train", "heldout")


def compress(pcm: np.ndarray) -> np.ndarray:
    """int16 samples → LZMA bytes of their first difference (as a uint8 array)."""
    delta = np.diff(pcm.astype(np.int16), prepend=np.int16(0))  # wraps modulo 2^16, as cumsum below does
    return np.frombuffer(lzma.compress(delta.tobytes(), preset=6), dtype=np.uint8)


def decompress(data: np.ndarray) -> np.ndarray:
    delta = np.frombuffer(lzma.decompress(data.tobytes()), dtype=np.int16)
    return np.cumsum(delta, dtype=np.int16)


def sample_utterances(index: list[dict], samples: float, seed: int) -> list[dict]:
    """Utterances drawn in a seeded random order while they fit in `samples`, kept in corpus order."""
    if sum(u["length"] for u in index) <= samples:
        return index
    chosen, total = set(), 0
    for i in np.random.default_rng(seed).permutation(len(index)):
        if total + index[i]["length"] <= samples:
            chosen.add(int(i))
            total += index[i]["length"]
    return [u for i, u in enumerate(index) if i in chosen]


def pack(data_dir: Path, out: Path, train_minutes: float = float("inf"), seed: int = 0) -> dict[str, float]:
    """Write `out` (.npz); returns the minutes of audio packed per split."""
    arrays, minutes = {}, {}
    for split in SPLITS:
        pcm = np.load(data_dir / f"{split}.npy", mmap_mode="r")
        index = json.load(open(data_dir / f"{split}_index.json"))
        if split == "train":
            index = sample_utterances(index, train_minutes * 60 * SAMPLE_RATE, seed)
        pieces, offset = [], 0
        for utterance in index:  # the chosen utterances, contiguous, with their offsets in the packed split
            pieces.append(np.asarray(pcm[utterance["offset"] : utterance["offset"] + utterance["length"]]))
            utterance["offset"], offset = offset, offset + utterance["length"]
        arrays[split] = compress(np.concatenate(pieces) if pieces else np.zeros(0, np.int16))
        arrays[f"{split}_index"] = np.array(json.dumps(index))
        minutes[split] = offset / SAMPLE_RATE / 60
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return minutes


def unpack(archive: Path, out: Path) -> None:
    """Write `<split>.npy` and `<split>_index.json` into `out`, as `training.data` does."""
    out.mkdir(parents=True, exist_ok=True)
    with np.load(archive, allow_pickle=False) as arrays:
        for split in SPLITS:
            np.save(out / f"{split}.npy", decompress(arrays[split]))
            (out / f"{split}_index.json").write_text(str(arrays[f"{split}_index"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("pack")
    p.add_argument("--data", default="training/runs/data")
    p.add_argument("--out", required=True)
    p.add_argument("--train-minutes", type=float, default=float("inf"), help="keep a random sample of the training split's utterances")
    p.add_argument("--seed", type=int, default=0, help="of that sample")
    u = commands.add_parser("unpack")
    u.add_argument("archive")
    u.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "pack":
        minutes = pack(Path(args.data), Path(args.out), args.train_minutes, args.seed)
        size = Path(args.out).stat().st_size
        print(f"{args.out}: {size / 1e6:.1f} MB; " + ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items()))
    else:
        unpack(Path(args.archive), Path(args.out))
        print(f"{args.out}: " + ", ".join(f"{s}.npy" for s in SPLITS))


if __name__ == "__main__":
    main()
