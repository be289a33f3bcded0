"""The training pipeline: the discriminator's losses, and a run that warm-starts, checkpoints and resumes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.models import speech_like
from training.discriminator import MultiScaleSTFTDiscriminator, discriminator_loss, generator_losses

ROOT = Path(__file__).resolve().parent.parent


def test_discriminator_losses_reach_the_right_parameters():
    torch.manual_seed(0)
    discriminator = MultiScaleSTFTDiscriminator(filters=4, n_ffts=(256, 64))
    real = torch.randn(2, 1, 4800) * 0.1
    fake = (torch.randn(2, 1, 4800) * 0.1).requires_grad_()
    outputs = discriminator(fake)
    assert len(outputs) == 2
    for logits, features in outputs:
        assert logits.shape[:2] == (2, 1) and len(features) == 5

    losses = generator_losses(discriminator, real, fake)
    assert set(losses) == {"adv", "feat"} and all(torch.isfinite(v) for v in losses.values())
    (grad,) = torch.autograd.grad(losses["adv"] + losses["feat"], fake)
    assert grad.abs().sum() > 0  # the codec learns through the discriminator
    assert all(p.grad is None for p in discriminator.parameters())

    loss = discriminator_loss(discriminator, real, fake)
    loss.backward()
    assert fake.grad is None  # the discriminator's update never reaches the codec
    assert all(p.grad is not None for p in discriminator.parameters())
    assert float(loss.detach()) == pytest.approx(2.0, abs=0.5)  # hinge at an untrained discriminator ≈ 1 + 1


def write_corpus(directory: Path) -> None:
    """A few seconds of speech-like audio in the layout `training.data` writes."""
    directory.mkdir()
    rate = 24_000
    train = (speech_like(6 * rate, rate, seed=1)[0, 0].numpy() * 32767).astype(np.int16)
    heldout = (speech_like(5 * rate, rate, seed=2)[0, 0].numpy() * 32767).astype(np.int16)
    np.save(directory / "train.npy", train)
    np.save(directory / "heldout.npy", heldout)
    index = [{"offset": 0, "length": 2 * rate}, {"offset": 2 * rate, "length": 3 * rate}]
    (directory / "heldout_index.json").write_text(json.dumps(index))


def train(data: Path, run: Path, steps: int) -> str:
    command = [
        sys.executable, "-m", "training.train", "--data", str(data), "--run-dir", str(run), "--init", "default",
        "--adversarial", "--disc-filters", "4", "--disc-ffts", "256,64", "--disc-batch", "1", "--disc-warmup", "1",
        "--steps", str(steps), "--batch", "2", "--segment", "0.2", "--warmup", "1", "--log-every", "1", "--threads", "1",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_warm_started_adversarial_run_checkpoints_and_resumes(tmp_path):
    write_corpus(tmp_path / "data")
    run = tmp_path / "run"
    first = train(tmp_path / "data", run, steps=2)
    assert "stopped at step 2 of 2" in first
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 2 and "discriminator" in state and state["disc_start"] == 0

    second = train(tmp_path / "data", run, steps=3)
    assert "resumed from" in second and "at step 2" in second and "stopped at step 3 of 3" in second
    rows = list(csv.DictReader(open(run / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert rows[0]["adv"] == "" and rows[2]["adv"] != ""  # the adversary joins after its warm-up
    assert [int(r["step"]) for r in csv.DictReader(open(run / "eval.csv"))] == [2, 3]
    # Warm-started from the bundled model: the first step already reconstructs (a fresh model's mel loss is > 1).
    assert float(rows[0]["mel"]) < 1.0


def test_worker_processes_build_the_batches_the_training_process_would(tmp_path):
    from training.augment import SegmentSampler
    from training.batches import BatchStream

    audio = (speech_like(3 * 24_000, 24_000, seed=3)[0, 0].numpy() * 32767).astype(np.int16)
    sampler = SegmentSampler(audio, 2400)
    bandwidths, probs = [1.5, 6.0, 24.0], np.array([0.2, 0.5, 0.3])
    serial = BatchStream(sampler, 7, 3, bandwidths, probs, workers=0)
    ahead = BatchStream(sampler, 7, 3, bandwidths, probs, workers=2)
    try:
        # Resuming at step 5 must give step 5's batch, whichever process builds it.
        for (x, bw), (y, bw_ahead), _ in zip(serial(5), ahead(5), range(6)):
            assert bw == bw_ahead and np.array_equal(x, y)
            assert x.shape == (3, 1, 2400) and x.dtype == np.float32
        first, second = next(serial(5))[0], next(serial(6))[0]
        assert not np.array_equal(first, second)
    finally:
        ahead.close()


def test_fit_schedule_ends_the_learning_rate_schedule_with_the_time(capsys):
    import argparse

    from training.train import FIT_STEP_SHARE, fit_schedule, lr_at

    args = argparse.Namespace(steps=1_000_000, warmup=200, lr=1e-3)
    args.steps = fit_schedule(40, seconds_per_step=0.05, seconds_left=480.0, args=args)
    assert args.steps == 40 + int(FIT_STEP_SHARE * 480 / 0.05)
    assert args.warmup == 200 and lr_at(args.steps, args) == pytest.approx(1e-4)  # the cosine floor, reached in time
    args.steps = 1_000_000
    # Too little time for the warm-up: it shrinks to a tenth of the schedule; --steps stays a ceiling.
    assert fit_schedule(40, 0.5, 60.0, args) == 40 + int(FIT_STEP_SHARE * 60 / 0.5) and args.warmup == 15
    assert fit_schedule(40, 0.001, 1e6, argparse.Namespace(steps=5000, warmup=200, lr=1e-3)) == 5000
    assert "[fit-schedule]" in capsys.readouterr().out


def test_corpus_archive_round_trips_exactly_and_samples_whole_utterances(tmp_path):
    from training.archive import pack, unpack

    rate = 24_000
    rng = np.random.default_rng(0)
    corpus = tmp_path / "data"
    corpus.mkdir()
    lengths = [rate * 20, rate * 25, rate * 30, rate * 12]
    utterances = [(speech_like(n, rate, seed=i)[0, 0].numpy() * 32767).astype(np.int16) for i, n in enumerate(lengths)]
    utterances[0][:3] = [32767, -32768, 32767]  # extreme steps wrap in int16 and must still come back exactly
    heldout = rng.integers(-32768, 32767, rate, dtype=np.int16)
    offsets = np.cumsum([0] + lengths[:-1])
    np.save(corpus / "train.npy", np.concatenate(utterances))
    np.save(corpus / "heldout.npy", heldout)
    (corpus / "train_index.json").write_text(json.dumps([{"offset": int(o), "length": n, "voice": f"v{i}"} for i, (o, n) in enumerate(zip(offsets, lengths))]))
    (corpus / "heldout_index.json").write_text(json.dumps([{"offset": 0, "length": rate}]))

    everything = pack(corpus, tmp_path / "all.npz")
    assert everything["train"] == pytest.approx(87 / 60)
    samples = []
    for seed in range(4):
        minutes = pack(corpus, tmp_path / "corpus.npz", train_minutes=1.0, seed=seed)
        assert 32 / 60 <= minutes["train"] <= 1.0 and minutes["heldout"] == pytest.approx(1 / 60)
        unpack(tmp_path / "corpus.npz", tmp_path / "out")
        train = np.load(tmp_path / "out" / "train.npy")
        index = json.load(open(tmp_path / "out" / "train_index.json"))
        voices = [u["voice"] for u in index]
        samples.append(set(voices))
        assert voices == sorted(voices) and len(train) == sum(u["length"] for u in index) == minutes["train"] * 60 * rate
        for u in index:  # whole utterances, exactly, at their new offsets
            assert np.array_equal(train[u["offset"] : u["offset"] + u["length"]], utterances[int(u["voice"][1:])])
        assert np.array_equal(np.load(tmp_path / "out" / "heldout.npy"), heldout)
    # A sample, not a prefix: the seeds draw different utterances, the last one included.
    assert len({frozenset(s) for s in samples}) > 1 and any("v3" in s for s in samples)


def test_recorded_speech_joins_the_corpus_and_held_out_speakers_stay_out(tmp_path):
    import soundfile as sf

    from training.real_speech import Source, build

    write_corpus(tmp_path / "data")
    (tmp_path / "data" / "train_index.json").write_text(json.dumps([
        {"offset": 0, "length": 2 * 24_000}, {"offset": 2 * 24_000, "length": 4 * 24_000},
    ]))
    root = tmp_path / "recordings"
    recorded = {"en/alpha/a.ogg": 44_100, "en/alpha/b.ogg": 44_100, "en/alpha/c.ogg": 44_100, "ml/syllab/ka.ogg": 8_000,
                "de/alpha/b.ogg": 48_000, "de/alpha/c.ogg": 48_000}
    for name, rate in recorded.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        voice = speech_like(rate, rate, seed=len(name))[0, 0].numpy() * 0.3
        sf.write(root / name, np.stack([voice, voice], 1), rate, format="OGG", subtype="VORBIS")
    sf.write(root / "ml" / "syllab" / "silence.ogg", np.zeros(8_000), 8_000, format="OGG", subtype="VORBIS")
    source = Source("letters", root, "*/*/*.ogg", "letters-data", heldout_speakers=("de",),
                    minutes_per_speaker=1.5 / 60, heldout_clips=1)

    minutes = build(tmp_path / "data", tmp_path / "mixed", tts_minutes=3 / 60, sources=[source])

    assert minutes["synthetic"] == pytest.approx(2 / 60)  # whole utterances only: the second ends at 6 s
    train = np.load(tmp_path / "mixed" / "train.npy")
    index = json.load(open(tmp_path / "mixed" / "train_index.json"))
    # 'en' stops once it passes its 1.5 s; 'ml' (resampled from 8 kHz) once; the silence and 'de' never.
    assert sorted(u["voice"] for u in index[1:]) == ["en", "en", "ml"] and {u["engine"] for u in index[1:]} == {"letters"}
    assert minutes["letters"] == pytest.approx(sum(u["length"] for u in index[1:]) / 24_000 / 60)
    assert index[-1]["offset"] + index[-1]["length"] == len(train)
    assert np.array_equal(train[: 2 * 24_000], np.load(tmp_path / "data" / "train.npy")[: 2 * 24_000])
    assert np.array_equal(np.load(tmp_path / "mixed" / "heldout.npy"), np.load(tmp_path / "data" / "heldout.npy"))
    (heldout,) = (tmp_path / "mixed" / "letters_heldout").glob("*.wav")  # one clip: heldout_clips=1
    audio, rate = sf.read(heldout)
    assert rate == 24_000 and heldout.name.startswith("de_alpha_") and 0.3 < len(audio) / rate < 1.5


def test_widening_keeps_what_the_model_computes():
    from codec import EncodecConfig, EncodecModel
    from tests.models import SMALL, fill_realistic_codebooks
    from training.widen import widen

    torch.manual_seed(0)
    narrow = EncodecModel(EncodecConfig(**SMALL)).eval()
    fill_realistic_codebooks(narrow)
    wide, other = widen(narrow, 6, seed=0).eval(), widen(narrow, 6, seed=1).eval()
    assert wide.config.num_filters == 6 and wide.num_parameters() > 2 * narrow.num_parameters()
    audio = speech_like(9600, 24_000, seed=4)
    with torch.no_grad():
        codes = narrow.encode(audio, bandwidth=6.0).audio_codes
        assert torch.equal(wide.encode(audio, bandwidth=6.0).audio_codes, codes)
        assert torch.allclose(wide.encoder(audio), narrow.encoder(audio), atol=1e-5)
        decoded = narrow.decode(codes, [None]).audio_values
        assert torch.allclose(wide.decode(codes, [None]).audio_values, decoded, atol=1e-5)
        assert decoded.abs().max() > 1e-3
        # Copies of a channel are read with different random shares, so the seeds differ in weights only.
        assert torch.allclose(other.decode(codes, [None]).audio_values, decoded, atol=1e-5)
    assert not torch.equal(wide.decoder.layers[-1].conv.weight, other.decoder.layers[-1].conv.weight)
    with pytest.raises(ValueError, match="cannot narrow"):
        widen(wide, 4)


def test_a_run_widens_the_bundled_model_and_exports_it(tmp_path):
    from codec import EncodecModel
    from training.evaluate import load_model
    from training.export import export

    write_corpus(tmp_path / "data")
    command = [
        sys.executable, "-m", "training.train", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
        "--init", "default", "--num-filters", "24", "--steps", "1", "--batch", "2", "--segment", "0.2", "--warmup", "1",
        "--threads", "1",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "widened from 22 to 24 filters" in done.stdout
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert float(rows[0]["mel"]) < 1.0  # it starts from the bundled model's quality, not from scratch
    assert load_model(str(tmp_path / "run" / "last.pt")).config.num_filters == 24
    resumed = subprocess.run([c for c in command if c not in ("--num-filters", "24")], cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode != 0 and "resume it with --num-filters 24" in resumed.stderr
    exported = export(str(tmp_path / "run" / "last.pt"), str(tmp_path / "bundle"))
    assert EncodecModel.from_pretrained(tmp_path / "bundle").config.num_filters == exported.config.num_filters == 24


def test_wideband_g722_prompts_decode_to_the_corpus_rate(tmp_path):
    from G722 import G722

    from training.real_speech import read_g722

    rate = 16_000
    speech = speech_like(rate, rate, seed=5)[0, 0].numpy() * 0.5
    path = tmp_path / "prompt.g722"
    path.write_bytes(G722(rate, 64_000).encode((speech * 32767).astype(np.int16)))  # headerless, as Asterisk ships it
    audio = read_g722(path)
    assert audio.dtype == np.float32 and len(audio) == 24_000  # 1 s at 24 kHz
    # The decoder's output is the speech, delayed by G.722's filter bank (under 2 ms).
    reference = np.interp(np.arange(24_000) * 2 / 3, np.arange(rate), speech)
    best = max(np.corrcoef(audio[lag:], reference[: len(audio) - lag])[0, 1] for lag in range(48))
    assert best > 0.95


def test_a_source_can_name_speakers_by_file_name(tmp_path):
    import soundfile as sf

    from training.real_speech import Source, build

    write_corpus(tmp_path / "data")
    (tmp_path / "data" / "train_index.json").write_text(json.dumps([{"offset": 0, "length": 2 * 24_000}]))
    root = tmp_path / "stamps"
    for name in ("animals/dog_desc_ro.ogg", "animals/cat_desc_da.ogg", "food/apple_desc_ro.ogg"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, speech_like(44_100, 44_100, seed=len(name))[0, 0].numpy() * 0.3, 44_100,
                 format="OGG", subtype="VORBIS")
    source = Source("stamps", root, "**/*_desc_*.ogg", "stamps-data", ("da",),
                    speaker_of=lambda relative: relative.stem.rsplit("_desc_", 1)[1])

    build(tmp_path / "data", tmp_path / "mixed", tts_minutes=1.0, sources=[source])

    index = json.load(open(tmp_path / "mixed" / "train_index.json"))
    assert sorted(u["voice"] for u in index[1:]) == ["ro", "ro"]
    assert [p.name for p in (tmp_path / "mixed" / "stamps_heldout").iterdir()] == ["animals_cat_desc_da.wav"]


def test_envelope_loss_scores_envelope_shape_not_level():
    from training.losses import EnvelopeCorrelationLoss

    loss = EnvelopeCorrelationLoss(24_000)
    speech = speech_like(loss.min_samples + 4_800, 24_000, seed=4)[:, 0]
    assert float(loss(speech, speech)) == pytest.approx(0.0, abs=1e-4)
    assert float(loss(speech, 0.3 * speech)) == pytest.approx(0.0, abs=1e-3)  # correlation ignores level
    noisy = speech + 0.05 * torch.randn_like(speech)
    smeared = torch.nn.functional.avg_pool1d(speech[None], 241, stride=1, padding=120)[0]
    assert 0.01 < float(loss(speech, noisy)) < float(loss(speech, smeared))
    estimate = noisy.clone().requires_grad_()
    loss(torch.zeros_like(speech), estimate).backward()  # silence as reference: a finite gradient
    assert torch.isfinite(estimate.grad).all()
    with pytest.raises(ValueError, match="at least"):
        loss(speech[:, :1000], speech[:, :1000])


def test_a_run_with_the_envelope_loss_and_chosen_bandwidths(tmp_path):
    write_corpus(tmp_path / "data")
    command = [
        sys.executable, "-m", "training.train", "--data", str(tmp_path / "data"), "--run-dir", str(tmp_path / "run"),
        "--init", "default", "--steps", "2", "--batch", "2", "--segment", "0.5", "--warmup", "1", "--log-every", "1",
        "--threads", "1", "--envelope-weight", "0.5", "--bandwidth-probs", "6:0.5,24:0.5",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    assert all(0 < float(r["envelope"]) < 1 and float(r["bandwidth"]) in (6.0, 24.0) for r in rows)
    for bad, message in (("6:0.5,7:0.5", "no bandwidth [7.0]"), ("6:0.4", "sum to 1"), ("six", "KBPS:P")):
        refused = subprocess.run(command[:-1] + [bad], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert refused.returncode != 0 and message in refused.stderr
    short = subprocess.run([c if c != "0.5" else "0.2" for c in command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert short.returncode != 0 and "--envelope-weight needs --segment" in short.stderr


def test_candidates_compare_on_held_out_sets_with_a_clip_limit(tmp_path, monkeypatch):
    import soundfile as sf

    from training import compare

    for set_name in ("set_a", "set_b"):
        (tmp_path / set_name).mkdir()
        for n in range(3):  # 16 kHz files, as most recorded sets are: real_clips resamples them to 24 kHz
            sf.write(tmp_path / set_name / f"clip{n}.wav", speech_like(32_000, 16_000, seed=n)[0, 0].numpy() * 0.3, 16_000)
    sets = [str(tmp_path / "set_a"), str(tmp_path / "set_b")]
    results = compare.compare(["default"], sets, bandwidth=6.0, search_width=1, max_clips=2)
    assert list(results["default"]) == ["set_a", "set_b"]
    assert all(s["clips"] == 2 and 0.5 < s["stoi"] <= 1 and 1 < s["pesq_wb"] < 4.7 for s in results["default"].values())
    assert "| default | " in compare.table(results, "stoi")

    monkeypatch.setattr(sys, "argv", ["compare", "--models", "default", "--sets", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match="No such set directory"):
        compare.main()
