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
