"""Add recorded speech that Debian packages ship to a synthetic corpus of `training.data`.

    apt-get install klettres-data asterisk-core-sounds-{en,es,fr,it,ru}-{wav,g722} festvox-ru \
        fillets-ng-data fillets-ng-data-cs fillets-ng-data-nl tuxpaint-stamps-default
    pip install G722
    python -m training.real_speech --corpus training/runs/data --out training/runs/data_mixed --tts-minutes 90

The synthetic corpus lacks what recordings have: human voices, breath, natural prosody, real
microphones and rooms. These packages ship openly licensed recordings (SOURCES below):

- KLettres (`klettres-data`, GPL-2+): letters and syllables read by native speakers of 20 languages,
  44.1 kHz; short, so it teaches timbre and recording conditions more than running speech;
- Asterisk's core prompts (CC-BY-SA-3.0, ru and it CC-BY-3.0): running phrases ("please enter your
  password…") by five professional voices, telephone-band in `-wav` (8 kHz) and wideband in `-g722`
  (16 kHz, the same recordings; G.722 is decoded by the `G722` package, public domain and BSD-2);
- festvox-ru (BSD-like): the 620 read sentences (16 kHz) behind Festival's Russian voice, one man;
- Fish Fillets NG (`fillets-ng-data*`, GPL-2): acted game dialogue in Czech, Dutch and English,
  22–44 kHz Ogg Vorbis, by a cast of several actors playing about 30 characters;
- Tux Paint's stamp descriptions (`tuxpaint-stamps-default`, GPL-2): short phrases read by volunteers
  in nine languages, 44.1 kHz Ogg Vorbis.

The output corpus has the layout `training.data` writes: `train.npy` is the first `--tts-minutes`
of the synthetic training split followed by the recordings of every speaker but the held-out ones;
`heldout.npy` is the synthetic held-out split unchanged, so held-out losses stay comparable across
runs. Held-out speakers' recordings go to `<source>_heldout/*.wav` (24 kHz) for
`python -m training.evaluate --real-dir`.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .data import SAMPLE_RATE, read_mono, to_corpus_rate, trim_and_level

SHORTEST_UTTERANCE = 0.25  # seconds of sound: a spoken letter is short


def first_folder(relative: Path) -> str:
    return relative.parts[0]


def read_g722(path: Path) -> np.ndarray:
    """A headerless 64 kbit/s G.722 file (Asterisk's wideband prompts) as float32 mono at SAMPLE_RATE."""
    try:
        from G722 import G722
    except ImportError as error:
        raise SystemExit("reading .g722 prompts needs the G722 package: pip install G722") from error

    pcm = np.asarray(G722(16_000, 64_000).decode(path.read_bytes()), dtype=np.float32) / 32768.0
    return to_corpus_rate(pcm, 16_000)


@dataclass(frozen=True)
class Source:
    """Recordings under `root` matching `pattern`; `speaker_of` names the speaker (or group) of a path
    relative to `root`, by default its first folder, and `read` loads one as float32 mono at SAMPLE_RATE."""

    name: str
    root: Path
    pattern: str
    package: str
    heldout_speakers: tuple[str, ...]
    minutes_per_speaker: float = float("inf")  # keeps one prolific speaker from dominating
    heldout_clips: int = 1_000_000  # held-out recordings written out at most (evaluation time)
    speaker_of: Callable[[Path], str] = first_folder
    read: Callable[[Path], np.ndarray] = read_mono

    def recordings(self) -> list[Path]:
        files = sorted(self.root.glob(self.pattern))
        if not files:
            raise SystemExit(f"no {self.name} recordings under {self.root}: apt-get install {self.package}")
        if self.minutes_per_speaker < float("inf") or self.heldout_clips < len(files):
            random.Random(self.name).shuffle(files)  # a capped speaker keeps a sample of all its prompts
        return files

    def speaker(self, path: Path) -> str:
        return self.speaker_of(path.relative_to(self.root))


SOURCES = {
    # Three speakers no training step hears: German, Hebrew and Norwegian (143 recordings, 2.9 min).
    "klettres": Source("klettres", Path("/usr/share/klettres"), "*/*/*.ogg", "klettres-data", ("de", "he", "nb")),
    # Speakers' folders (the per-language folders beside them are symlinks); the Russian voice is held out.
    "asterisk": Source(
        "asterisk", Path("/usr/share/asterisk/sounds"), "*_*_*_*/**/*.wav", "asterisk-core-sounds-{en,es,fr,it,ru}-wav",
        ("ru_RU_f_IvrvoiceRU",), minutes_per_speaker=10.0, heldout_clips=60,
    ),
    # The same voices and prompts, wideband; the same voice held out.
    "asterisk_g722": Source(
        "asterisk_g722", Path("/usr/share/asterisk/sounds"), "*_*_*_*/**/*.g722",
        "asterisk-core-sounds-{en,es,fr,it,ru}-g722", ("ru_RU_f_IvrvoiceRU",), minutes_per_speaker=10.0,
        heldout_clips=60, read=read_g722,
    ),
    # One speaker: none held out; capped so that he does not outweigh the many-voiced sources.
    "festvox_ru": Source(
        "festvox_ru", Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits/wav"), "ru_*.wav", "festvox-ru",
        (), minutes_per_speaker=25.0, speaker_of=lambda relative: "nsh",
    ),
    # sound/<level>/<language>/*.ogg; grouped by level (the cast varies from level to level), three held out.
    "fillets": Source(
        "fillets", Path("/usr/share/games/fillets-ng/sound"), "*/[a-z][a-z]/*.ogg",
        "fillets-ng-data fillets-ng-data-cs fillets-ng-data-nl", ("city", "columns", "corridor"),
        minutes_per_speaker=1.5, heldout_clips=60,
    ),
    # <stamp>_desc_<language>.ogg; grouped by language (one to three readers each), Danish held out.
    "tuxpaint": Source(
        "tuxpaint", Path("/usr/share/tuxpaint/stamps"), "**/*_desc_*.ogg", "tuxpaint-stamps-default", ("da",),
        minutes_per_speaker=8.0, heldout_clips=60, speaker_of=lambda relative: relative.stem.rsplit("_desc_", 1)[1],
    ),
}


def load_utterance(path: Path, source: Source) -> np.ndarray | None:
    return trim_and_level(source.read(path), SHORTEST_UTTERANCE)


def build(corpus: Path, out: Path, tts_minutes: float, sources: list[Source]) -> dict[str, float]:
    """Write the mixed corpus; returns minutes of synthetic speech and, per source, of training and held-out recordings."""
    out.mkdir(parents=True, exist_ok=True)
    tts = np.load(corpus / "train.npy", mmap_mode="r")
    index = [u for u in json.load(open(corpus / "train_index.json")) if u["offset"] + u["length"] <= tts_minutes * 60 * SAMPLE_RATE]
    end = index[-1]["offset"] + index[-1]["length"]
    chunks, offset, minutes = [np.asarray(tts[:end])], end, {"synthetic": end / SAMPLE_RATE / 60}
    for source in sources:
        heldout_dir = out / f"{source.name}_heldout"
        if source.heldout_speakers:
            heldout_dir.mkdir(exist_ok=True)
        taken: dict[str, int] = {}
        heldout_written = trained = heldout = 0
        for path in source.recordings():
            speaker = source.speaker(path)
            is_heldout = speaker in source.heldout_speakers
            if is_heldout and heldout_written >= source.heldout_clips:
                continue
            if not is_heldout and taken.get(speaker, 0) >= source.minutes_per_speaker * 60 * SAMPLE_RATE:
                continue
            audio = load_utterance(path, source)
            if audio is None:
                continue
            pcm = (audio * 32767).astype(np.int16)
            name = "_".join(path.relative_to(source.root).parts)
            if is_heldout:
                sf.write(heldout_dir / (name.rsplit(".", 1)[0] + ".wav"), pcm, SAMPLE_RATE, subtype="PCM_16")
                heldout_written += 1
                heldout += len(pcm)
                continue
            taken[speaker] = taken.get(speaker, 0) + len(pcm)
            chunks.append(pcm)
            index.append({"offset": offset, "length": len(pcm), "engine": source.name, "voice": speaker, "text": name})
            offset += len(pcm)
            trained += len(pcm)
        minutes[source.name] = trained / SAMPLE_RATE / 60
        minutes[f"{source.name}_heldout"] = heldout / SAMPLE_RATE / 60
    np.save(out / "train.npy", np.concatenate(chunks))
    (out / "train_index.json").write_text(json.dumps(index, indent=0))
    for name in ("heldout.npy", "heldout_index.json"):
        shutil.copyfile(corpus / name, out / name)
    return minutes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="training/runs/data", help="a corpus written by training.data")
    parser.add_argument("--out", default="training/runs/data_mixed")
    parser.add_argument("--tts-minutes", type=float, default=90.0, help="synthetic minutes to keep")
    parser.add_argument("--sources", default="klettres,asterisk", help=f"any of {', '.join(SOURCES)}")
    args = parser.parse_args()
    minutes = build(Path(args.corpus), Path(args.out), args.tts_minutes, [SOURCES[name] for name in args.sources.split(",")])
    print(f"{args.out}: " + ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items()), flush=True)


if __name__ == "__main__":
    main()
