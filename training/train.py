"""Train the compact default EnCodec model on CPU (or a GPU when one is present), resumably.

    python -m training.train --run-dir training/runs/default --steps 4000 --minutes 70

Re-running the same command resumes from `<run-dir>/last.pt`; every batch, augmentation, bandwidth
choice and codebook re-seed is drawn from generators seeded by (seed, step), so a resumed run
repeats what an uninterrupted one would have done. Progress goes to stdout, `<run-dir>/log.csv`,
`<run-dir>/eval.csv` and `<run-dir>/loss.png`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from codec import EncodecModel

from .augment import SegmentSampler
from .batches import BatchStream
from .checkpoints import DEFAULT_CONFIG, checkpoint_config, export_model, load_checkpoint, model_config, save_checkpoint
from .discriminator import MultiScaleSTFTDiscriminator, discriminator_loss, generator_losses
from .losses import Balancer, EnvelopeCorrelationLoss, MultiScaleMelLoss, si_snr
from .vq import EmaResidualVQ
from .widen import widen

# Quantizer dropout: bandwidth (kbps) → probability per step. 6 kbps, the call default, gets the most.
BANDWIDTH_PROBS = {1.5: 0.15, 3.0: 0.2, 6.0: 0.35, 12.0: 0.15, 24.0: 0.15}
LOSS_WEIGHTS = {"time_l1": 0.1, "mel": 1.0}  # EnCodec's λt, λf; commitment λw = 1 outside the balancer
ADVERSARIAL_WEIGHTS = {"adv": 3.0, "feat": 3.0}  # EnCodec's λg, λfeat


def parse_bandwidth_probs(text: str) -> dict[float, float]:
    """`"1.5:0.1,6:0.9"` → {1.5: 0.1, 6.0: 0.9}, checked to be a distribution over bandwidths the model has."""
    try:
        probs = {float(k): float(v) for k, v in (pair.split(":") for pair in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KBPS:P pairs separated by commas, got {text!r}") from None
    unknown = set(probs) - set(model_config().target_bandwidths)
    if unknown:
        raise argparse.ArgumentTypeError(f"the model has no bandwidth {sorted(unknown)} kbps")
    if any(p < 0 for p in probs.values()) or not math.isclose(sum(probs.values()), 1.0, abs_tol=1e-6):
        raise argparse.ArgumentTypeError(f"probabilities must be non-negative and sum to 1, got {text!r}")
    return probs


@torch.no_grad()
def init_weights(model: EncodecModel, gain: float = 1.0, last_gain: float = 0.25) -> None:
    """Variance-preserving init of every (weight-normed) conv: std = gain / sqrt(fan_in), zero bias.

    PyTorch's default conv init shrinks the signal about √3× per layer; through SEANet's ~20 convs and
    1×1 shortcuts the encoder's output then hardly depends on its input (measured: time-std of the
    embeddings 0.002 vs 0.12 with this init) and a CPU-budget run never recovers (measured: after 300
    steps the decoder still emitted the same signal for every input). The decoder's last conv starts
    small so the first outputs have about the input's level.
    """
    from codec.conv import EncodecConv1d, EncodecConvTranspose1d

    last = model.decoder.layers[-1]
    for module in model.modules():
        if not isinstance(module, (EncodecConv1d, EncodecConvTranspose1d)):
            continue
        conv = module.conv
        v, g = conv.parametrizations.weight.original1, conv.parametrizations.weight.original0
        fan_in = v.shape[0] * v.shape[2] / conv.stride[0] if isinstance(module, EncodecConvTranspose1d) else v.shape[1] * v.shape[2]
        v.normal_(0.0, (last_gain if module is last else gain) / math.sqrt(fan_in))
        g.copy_(v.norm(dim=[d for d in range(v.dim()) if d != 0], keepdim=True))
        conv.bias.zero_()


@torch.no_grad()
def warm_start(model: EncodecModel, source: str) -> None:
    """Copy weights and codebooks (with their EMA statistics) from a trained model of the same config,
    or of a narrower one (fewer `num_filters`), widened so that it computes the same (`training.widen`).

    A CPU budget buys a few thousand steps per session; continuing from the bundled model lets
    sessions add up instead of each starting over. The optimizer and the balancer start fresh.
    """
    from codec import load_model

    trained = load_model(source).float()
    narrower = {**trained.config.to_dict(), "num_filters": model.config.num_filters} == model.config.to_dict()
    if narrower and trained.config.num_filters < model.config.num_filters:
        print(f"--init {source}: widened from {trained.config.num_filters} to {model.config.num_filters} filters", flush=True)
        trained = widen(trained, model.config.num_filters)
    elif trained.config.to_dict() != model.config.to_dict():
        raise SystemExit(f"--init {source}: its config differs from the training config {model.config.to_dict()}")
    model.load_state_dict(trained.state_dict())
    for layer in model.quantizer.layers:
        layer.codebook.inited.fill_(1.0)


# Steps of a fresh run timed by --fit-schedule: from the first (after cuDNN's autotuning) to the second.
FIT_TIMED_STEPS = (10, 110)
# Share of the wall time the steps get at the first fit; checkpoints (held-out evaluation, saving,
# plotting) take the rest. Every checkpoint re-fits with the pace measured since, checkpoints included.
FIT_STEP_SHARE = 0.93


def fit_schedule(step: int, seconds_per_step: float, seconds_left: float, args, ceiling: int | None = None,
                 share: float = FIT_STEP_SHARE) -> int:
    """The total step count (at most `ceiling`, the --steps asked for) whose schedule ends when
    `--minutes` runs out, at the measured pace."""
    steps = step + int(share * seconds_left / seconds_per_step)
    steps = max(step + 1, min(args.steps if ceiling is None else ceiling, steps))
    args.warmup = min(args.warmup, steps // 10)
    print(f"[fit-schedule] {seconds_per_step * 1000:.0f} ms/step at step {step}: schedule of {steps} steps "
          f"(warm-up {args.warmup}) for the {seconds_left / 60:.1f} min left", flush=True)
    return steps


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def plot(run_dir: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # the CSVs hold everything; the picture is a convenience
        print("matplotlib is not installed (pip install matplotlib): no loss.png", flush=True)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(run_dir / "log.csv")))
    if not rows:
        return
    steps = np.array([int(r["step"]) for r in rows])
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key, ax in zip(("mel", "time_l1", "commit"), axes[:2].tolist() + [axes[2]]):
        values = np.array([float(r[key]) for r in rows])
        ax.plot(steps, values, alpha=0.3, label=key)
        k = min(25, len(values))
        ax.plot(steps[k - 1 :], np.convolve(values, np.ones(k) / k, mode="valid"), label=f"{key} (avg {k})")
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    if (run_dir / "eval.csv").exists():
        ev = list(csv.DictReader(open(run_dir / "eval.csv")))
        if ev:
            ax = axes[0]
            ax.plot([int(r["step"]) for r in ev], [float(r["mel_6kbps"]) for r in ev], "o-", label="held-out mel @6 kbps")
            ax.legend()
            ax2 = axes[1].twinx()
            ax2.plot([int(r["step"]) for r in ev], [float(r["si_snr_6kbps"]) for r in ev], "rs-", label="held-out SI-SNR @6 kbps (dB)")
            ax2.legend(loc="upper center")
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    fig.savefig(run_dir / "loss.png", dpi=80)
    plt.close(fig)


@torch.no_grad()
def evaluate(model: EncodecModel, vq: EmaResidualVQ, mel_loss: MultiScaleMelLoss, batch: torch.Tensor) -> dict[str, float]:
    model.eval()
    embeddings = model.encoder(batch)
    result = {}
    for bw in (1.5, 6.0, 24.0):
        n_q = model.config.num_quantizers_for_bandwidth(bw)
        quantized, _, _ = vq(embeddings, n_q, torch.Generator().manual_seed(0), update=False)
        out = model.decoder(quantized)[..., : batch.shape[-1]]
        tag = f"{bw:g}kbps".replace(".", "_")
        result[f"mel_{tag}"] = float(mel_loss(batch, out))
        result[f"si_snr_{tag}"] = float(si_snr(batch, out).mean())
    model.train()
    return result


def heldout_batch(data_dir: Path, seconds: float = 2.0, count: int = 8) -> torch.Tensor:
    audio = np.load(data_dir / "heldout.npy")
    index = json.load(open(data_dir / "heldout_index.json"))
    length = int(seconds * 24_000)
    clips = [audio[u["offset"] : u["offset"] + length] for u in index if u["length"] >= length][:count]
    return torch.from_numpy(np.stack(clips).astype(np.float32) / 32768.0)[:, None]


def write_args(run_dir: Path, args, model: EncodecModel) -> None:
    """`<run-dir>/args.json`: the run's options (`--steps` as fitted) and the model config."""
    with open(run_dir / "args.json", "w") as f:
        json.dump({**vars(args), "config": model.config.to_dict()}, f, indent=2)


@dataclass
class Trainee:
    """The codec under training with everything a step updates or uses, kept together because a
    checkpoint must hold all of it (optimizer moments, balancer averages, the discriminator) for a
    resumed run to continue exactly where it stopped."""

    model: EncodecModel
    vq: EmaResidualVQ
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    balancer: Balancer
    mel_loss: MultiScaleMelLoss
    envelope_loss: EnvelopeCorrelationLoss | None
    discriminator: MultiScaleSTFTDiscriminator | None
    disc_optimizer: torch.optim.Optimizer | None
    device: torch.device
    disc_start: int = 0  # the step the discriminator joined the run
    step: int = 0
    trained_seconds: float = 0.0  # by the sessions before this one

    def state_dict(self, trained_seconds: float, args: argparse.Namespace) -> dict:
        """What `last.pt` holds (see `training.checkpoints`); the options and config ride along so that a
        checkpoint alone says what it is a run of."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "balancer": self.balancer.state_dict(),
            "step": self.step, "trained_seconds": trained_seconds, "args": vars(args),
            "config": self.model.config.to_dict(),
            **({} if self.discriminator is None else {
                "discriminator": self.discriminator.state_dict(), "disc_optimizer": self.disc_optimizer.state_dict(),
                "disc_start": self.disc_start,
            }),
        }

    def load_state_dict(self, state: dict) -> None:
        """Take up a checkpoint's run. A discriminator new to the run (`--adversarial` added on resuming)
        starts its warm-up now rather than at step 0."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.balancer.load_state_dict(state["balancer"])
        self.step, self.trained_seconds = state["step"], state["trained_seconds"]
        self.disc_start = self.step
        if self.discriminator is not None and "discriminator" in state:
            self.discriminator.load_state_dict(state["discriminator"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
            self.disc_start = state["disc_start"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options are the whole of a run's configuration: `args.json` and every checkpoint keep them,
    and re-running the same command is how a run resumes."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="training/runs/data")
    parser.add_argument("--run-dir", default="training/runs/default")
    parser.add_argument("--steps", type=int, default=4000, help="total steps of the schedule")
    parser.add_argument("--minutes", type=float, default=float("inf"), help="stop (with a checkpoint) after this wall time")
    parser.add_argument(
        "--fit-schedule", action="store_true",
        help="with --minutes, on a fresh run: time the first steps and shorten --steps so the learning-rate schedule "
        "ends when the time does, re-fitted at every checkpoint (for a rented GPU, whose pace is unknown beforehand)",
    )
    parser.add_argument("--workers", type=int, default=0, help="processes that build batches ahead (0: the training process)")
    parser.add_argument("--export-dir", default=None, help="also write the model as a float16 bundle here at every checkpoint")
    parser.add_argument(
        "--num-filters", type=int, default=DEFAULT_CONFIG["num_filters"],
        help="model width; with --init, a narrower model is widened to it (training.widen)",
    )
    parser.add_argument(
        "--bandwidth-probs", type=parse_bandwidth_probs, default=BANDWIDTH_PROBS, metavar="KBPS:P,...",
        help="quantizer dropout: how often each bandwidth is trained, e.g. 1.5:0.05,3:0.15,6:0.6,12:0.1,24:0.1 "
        f"(default {','.join(f'{k:g}:{v:g}' for k, v in BANDWIDTH_PROBS.items())})",
    )
    parser.add_argument(
        "--envelope-weight", type=float, default=0.0,
        help="balancer weight of the band-envelope correlation loss (a differentiable STOI; 0: off), against mel 1",
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--segment", type=float, default=0.8, help="seconds")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-minutes", type=float, default=4.0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--adversarial", action="store_true", help="add the multi-scale STFT discriminator (hinge + feature matching)")
    parser.add_argument("--disc-filters", type=int, default=16, help="discriminator width (EnCodec: 32)")
    parser.add_argument("--disc-ffts", default="2048,512,128", help="discriminator STFT windows (EnCodec: 2048,1024,512,256,128)")
    parser.add_argument("--disc-batch", type=int, default=4, help="examples of each batch the adversarial losses see")
    parser.add_argument("--disc-lr", type=float, default=3e-4, help="discriminator learning rate (EnCodec: 3e-4)")
    parser.add_argument(
        "--adv-weight", type=float, default=ADVERSARIAL_WEIGHTS["adv"],
        help="balancer weight of the adversarial and of the feature-matching loss each (EnCodec: 3, against mel 1)",
    )
    parser.add_argument(
        "--disc-warmup", type=int, default=300,
        help="steps the discriminator trains alone before its losses reach the codec (a random one only adds noise)",
    )
    parser.add_argument(
        "--init", default=None, metavar="MODEL",
        help="start a new run from these weights and codebooks (a model directory, or 'default' for the bundled model) "
        "instead of a fresh initialisation; ignored when the run directory already has a checkpoint",
    )
    return parser.parse_args(argv)


def data_stream(args: argparse.Namespace) -> tuple[SegmentSampler, BatchStream]:
    """The training split and the stream of each step's batch and bandwidth drawn from it.

    Its `--workers` are forked: call this before anything starts CUDA (a forked CUDA context is unusable).
    """
    bandwidths, probs = list(args.bandwidth_probs), np.array(list(args.bandwidth_probs.values()))
    segment = int(args.segment * model_config().sampling_rate)
    sampler = SegmentSampler(np.load(Path(args.data) / "train.npy"), segment)
    return sampler, BatchStream(sampler, args.seed, args.batch, bandwidths, probs, args.workers)


def training_device() -> torch.device:
    """A GPU when there is one, so that the same command trains on a rented machine; never needed."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        # TF32 convolutions and matmuls: ~2x faster steps; the shipped model runs in float32 all the same.
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


def build_trainee(args: argparse.Namespace, segment: int, device: torch.device) -> Trainee:
    """The model, its losses and optimizers as the options ask, before any checkpoint is loaded into them.

    Fresh weights and the discriminator come from the global generator that `main` seeded: keep the order
    of construction, or the same command no longer starts from the same weights.
    """
    model = EncodecModel(model_config(args.num_filters))
    if args.init:
        warm_start(model, args.init)
    else:
        init_weights(model)
    model = model.to(device).train()
    vq = EmaResidualVQ(model.quantizer)
    mel_loss = MultiScaleMelLoss(model.config.sampling_rate).to(device)
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    envelope_loss = EnvelopeCorrelationLoss(model.config.sampling_rate).to(device) if args.envelope_weight else None
    if envelope_loss is not None and segment < envelope_loss.min_samples:
        raise SystemExit(f"--envelope-weight needs --segment of at least {envelope_loss.min_samples / model.config.sampling_rate:.3f} s")
    balancer = Balancer({
        **LOSS_WEIGHTS, "envelope": args.envelope_weight, **{name: args.adv_weight for name in ADVERSARIAL_WEIGHTS},
    })
    discriminator = disc_optimizer = None
    if args.adversarial:
        discriminator = MultiScaleSTFTDiscriminator(args.disc_filters, tuple(int(n) for n in args.disc_ffts.split(","))).to(device)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=args.disc_lr, betas=(0.5, 0.9))
    return Trainee(model, vq, params, optimizer, balancer, mel_loss, envelope_loss, discriminator, disc_optimizer, device)


def start(trainee: Trainee, args: argparse.Namespace, run_dir: Path, sampler: SegmentSampler) -> None:
    """Begin a new run. Fresh codebooks are seeded from the freshly initialised encoder's own outputs, so
    that every entry starts where embeddings are and gets used; the batches for it come from a generator
    no training step draws from. `--init` brings trained codebooks instead."""
    write_args(run_dir, args, trainee.model)
    if not args.init:
        rng = np.random.default_rng([args.seed, 10**9])
        init = torch.from_numpy(np.concatenate([sampler.batch(rng, args.batch) for _ in range(4)])).to(trainee.device)
        with torch.no_grad():
            trainee.vq.initialise(trainee.model.encoder(init), torch.Generator().manual_seed(args.seed))
    print(f"model: {trainee.model.num_parameters():,} parameters; num_filters {args.num_filters}; device {trainee.device}", flush=True)


def resume(trainee: Trainee, last: Path, args: argparse.Namespace) -> None:
    """Continue the run that `last` checkpointed, refusing a width that is not the checkpoint's (its
    weights would not fit, and `--num-filters` is easy to forget on a widened run)."""
    state = load_checkpoint(last, trainee.device)
    width = checkpoint_config(state).num_filters
    if width != args.num_filters:
        raise SystemExit(f"{last} is a run of a {width}-filter model: resume it with --num-filters {width}")
    trainee.load_state_dict(state)
    drop_rows_after(last.parent, trainee.step)
    print(f"resumed from {last} at step {trainee.step} ({trainee.trained_seconds / 60:.1f} min trained)", flush=True)


def drop_rows_after(run_dir: Path, step: int) -> None:
    """Drop the CSV rows an interrupted run wrote after its last checkpoint: the resumed run does those
    steps again, and each step must appear once."""
    for name in ("log.csv", "eval.csv"):
        if (run_dir / name).exists():
            rows = list(csv.DictReader(open(run_dir / name)))
            if rows:
                with open(run_dir / name, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                    writer.writeheader()
                    writer.writerows(r for r in rows if int(r["step"]) <= step)


def open_log(run_dir: Path) -> tuple[TextIO, csv.DictWriter]:
    """`<run-dir>/log.csv`, to append to. A resumed run keeps the columns its file began with, so that a
    run started before a column existed stays one readable table."""
    log_fields = ["step", "wall_s", "lr", "bandwidth", "loss", "mel", "time_l1", "commit", "envelope", "adv", "feat", "disc", "grad_norm", "step_s"]
    if (run_dir / "log.csv").exists() and (run_dir / "log.csv").stat().st_size:
        log_fields = next(csv.reader(open(run_dir / "log.csv")))
    log_file = open(run_dir / "log.csv", "a", newline="")
    log = csv.DictWriter(log_file, fieldnames=log_fields, extrasaction="ignore")
    if log_file.tell() == 0:
        log.writeheader()
    return log_file, log


def train_step(trainee: Trainee, x: np.ndarray, bandwidth: float, args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], float]:
    """One update of the codec (and of the discriminator), advancing `trainee.step`; returns the step's
    losses (commitment and discriminator included) and the gradient norm before clipping.

    Its randomness (codebook re-seeding) comes from a generator seeded by (seed, step), so a resumed run
    repeats what an uninterrupted one would have done.
    """
    generator = torch.Generator().manual_seed(args.seed * 1_000_003 + trainee.step)
    x = torch.from_numpy(x).to(trainee.device, non_blocking=True)
    n_q = trainee.model.config.num_quantizers_for_bandwidth(bandwidth)
    for group in trainee.optimizer.param_groups:
        group["lr"] = lr_at(trainee.step, args)

    embeddings = trainee.model.encoder(x)
    quantized, commit, _ = trainee.vq(embeddings, n_q, generator)
    y = trainee.model.decoder(quantized)[..., : x.shape[-1]]
    losses = {"time_l1": torch.nn.functional.l1_loss(y, x), "mel": trainee.mel_loss(x, y)}
    if trainee.envelope_loss is not None:
        losses["envelope"] = trainee.envelope_loss(x, y)
    seen = slice(0, args.disc_batch)
    if trainee.discriminator is not None and trainee.step - trainee.disc_start >= args.disc_warmup:
        losses.update(generator_losses(trainee.discriminator, x[seen], y[seen]))
    trainee.optimizer.zero_grad(set_to_none=True)
    out_grad, _ = trainee.balancer.output_grad(losses, y)
    torch.autograd.backward([y, commit], [out_grad, torch.ones_like(commit)])
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainee.params, 10.0))
    trainee.optimizer.step()
    losses["commit"] = commit
    if trainee.discriminator is not None:
        trainee.disc_optimizer.zero_grad(set_to_none=True)
        losses["disc"] = discriminator_loss(trainee.discriminator, x[seen], y[seen])
        losses["disc"].backward()
        trainee.disc_optimizer.step()
    trainee.step += 1
    return losses, grad_norm


class Session:
    """This process's share of a run: its wall clock (for `--minutes`, `--checkpoint-minutes` and
    `--fit-schedule`'s pace), the log it appends to, and the held-out batch its checkpoints score."""

    def __init__(self, trainee: Trainee, args: argparse.Namespace, run_dir: Path, eval_batch: torch.Tensor) -> None:
        self.trainee, self.args, self.run_dir, self.eval_batch = trainee, args, run_dir, eval_batch
        self.log_file, self.log = open_log(run_dir)
        self.start = time.time()
        self.last_checkpoint = self.start
        self.steps_asked, self.timed_from = args.steps, None  # timed_from: (step, time) where --fit-schedule's timing began

    def trained_seconds(self) -> float:
        """The run's training time so far, earlier sessions included: `wall_s` in the log, and what a
        checkpoint carries on to the next session."""
        return self.trainee.trained_seconds + time.time() - self.start

    def train(self, batches: BatchStream) -> None:
        """Step until `--steps` are done or `--minutes` are up, checkpointing every `--checkpoint-minutes`
        and at the end, so that an interrupted run loses at most the steps since its last checkpoint."""
        args, trainee = self.args, self.trainee
        # Only a fresh run is fitted: a resumed one keeps the schedule its checkpoint was made under.
        fit_at = FIT_TIMED_STEPS[1] if args.fit_schedule and trainee.step == 0 and math.isfinite(args.minutes) else None
        for x, bandwidth in batches(trainee.step):
            if trainee.step >= args.steps or (time.time() - self.start) / 60 > args.minutes:
                break
            if fit_at is not None and trainee.step == FIT_TIMED_STEPS[0]:
                timing = (trainee.step, time.time())
            if trainee.step == fit_at:
                self.timed_from = timing
                self.refit(FIT_STEP_SHARE)
            t0 = time.time()
            losses, grad_norm = train_step(trainee, x, bandwidth, args)
            if trainee.step % args.log_every == 0 or trainee.step == 1:
                self.log_step(bandwidth, losses, grad_norm, t0)
            if time.time() - self.last_checkpoint > args.checkpoint_minutes * 60:
                self.checkpoint()
        batches.close()
        self.checkpoint(final=True)
        print(f"stopped at step {trainee.step} of {args.steps}", flush=True)

    def log_step(self, bandwidth: float, losses: dict[str, torch.Tensor], grad_norm: float, t0: float) -> None:
        """A row of `log.csv` every `--log-every` steps, and on stdout every fifth; the first step's too,
        to see at once that a run has started sensibly. Only logged steps read the losses back from the
        device, which would otherwise wait for every step to finish."""
        step, args = self.trainee.step, self.args
        row = {
            "step": step, "wall_s": f"{self.trained_seconds():.1f}", "lr": f"{lr_at(step - 1, args):.2e}",
            "bandwidth": bandwidth, "loss": f"{float((losses['mel'] + 0.1 * losses['time_l1'] + losses['commit']).detach()):.4f}",
            "mel": f"{float(losses['mel'].detach()):.4f}", "time_l1": f"{float(losses['time_l1'].detach()):.5f}",
            "commit": f"{float(losses['commit'].detach()):.5f}",
            **{name: f"{float(losses[name].detach()):.4f}" for name in ("envelope", *ADVERSARIAL_WEIGHTS, "disc") if name in losses},
            "grad_norm": f"{grad_norm:.3f}", "step_s": f"{time.time() - t0:.2f}",
        }
        self.log.writerow(row)
        if step % (args.log_every * 5) == 0 or step == 1:
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)

    def checkpoint(self, final: bool = False) -> None:
        """Score the held-out batch, save `last.pt` (and `--export-dir`'s bundle) and redraw `loss.png`:
        what a run stopped now needs to resume, and what tells whether it is worth resuming."""
        trainee, args = self.trainee, self.args
        metrics = evaluate(trainee.model, trainee.vq, trainee.mel_loss, self.eval_batch)
        new = not (self.run_dir / "eval.csv").exists()
        with open(self.run_dir / "eval.csv", "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["step"] + list(metrics))
            if new:
                writer.writeheader()
            writer.writerow({"step": trainee.step, **{k: f"{v:.4f}" for k, v in metrics.items()}})
        save_checkpoint(self.run_dir / "last.pt", trainee.state_dict(self.trained_seconds(), args))
        self.log_file.flush()
        if args.export_dir:
            export_model(copy.deepcopy(trainee.model).cpu(), args.export_dir)
        plot(self.run_dir)
        print(f"[checkpoint] step {trainee.step}: " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()), flush=True)
        self.last_checkpoint = time.time()
        if not final:
            self.refit()

    def refit(self, share: float = 1.0) -> None:
        """With `--fit-schedule`, once its timing has begun: set `--steps` so that the schedule ends when
        `--minutes` do, at the pace measured so far (checkpoints included, as they will go on costing)."""
        step, args = self.trainee.step, self.args
        if self.timed_from is not None and step > self.timed_from[0]:
            pace = (time.time() - self.timed_from[1]) / (step - self.timed_from[0])
            args.steps = fit_schedule(step, pace, args.minutes * 60 - (time.time() - self.start), args, self.steps_asked, share)
            write_args(self.run_dir, args, self.trainee.model)


def main() -> None:
    """A run, fresh or resumed, in the order its steps need: the seed before the weights it draws, the
    batch workers forked before CUDA starts, the checkpoint loaded into a model built as the options ask."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    sampler, batches = data_stream(args)  # forks: before CUDA starts
    device = training_device()
    trainee = build_trainee(args, sampler.segment, device)
    eval_batch = heldout_batch(Path(args.data)).to(device)
    if (run_dir / "last.pt").exists():
        resume(trainee, run_dir / "last.pt", args)
    else:
        start(trainee, args, run_dir, sampler)
    Session(trainee, args, run_dir, eval_batch).train(batches)


if __name__ == "__main__":
    main()
