"""Reconstruction losses of the EnCodec objective and the loss balancer (Défossez et al., 2022, §3.4)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """Triangular filters on the HTK mel scale, `(n_mels, n_fft // 2 + 1)`, each normalised to unit area."""
    f_max = f_max or sample_rate / 2
    mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    points = torch.linspace(mel(f_min), mel(f_max), n_mels + 2)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    low, centre, high = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs - low) / (centre - low).clamp_min(1e-5)
    down = (high - freqs) / (high - centre).clamp_min(1e-5)
    bank = torch.clamp(torch.minimum(up, down), min=0.0)
    return bank / bank.sum(1, keepdim=True).clamp_min(1e-8)


class MultiScaleMelLoss(nn.Module):
    """Σ over scales of L1(mel) + L1(log mel) between reference and reconstruction.

    EnCodec uses STFT windows 2^5…2^11 with 64 mel bins and L1 + L2; we use windows 2^6…2^11 with
    bins growing with the window (as in DAC, which avoids empty filters at small windows) and an L1 on
    the log-mel, which weighs quiet parts of speech as the ear (and PESQ/STOI) do.
    """

    def __init__(self, sample_rate: int, scales: tuple[tuple[int, int], ...] = ((64, 8), (128, 16), (256, 32), (512, 64), (1024, 80), (2048, 128))) -> None:
        super().__init__()
        self.scales = scales
        for n_fft, n_mels in scales:
            self.register_buffer(f"mel_{n_fft}", mel_filterbank(n_fft, n_mels, sample_rate), persistent=False)
            self.register_buffer(f"win_{n_fft}", torch.hann_window(n_fft), persistent=False)

    def mel(self, x: torch.Tensor, n_fft: int) -> torch.Tensor:
        spec = torch.stft(x, n_fft, n_fft // 4, window=getattr(self, f"win_{n_fft}"), return_complex=True, center=True)
        power = spec.real.pow(2) + spec.imag.pow(2)
        return torch.matmul(getattr(self, f"mel_{n_fft}"), (power + 1e-9).sqrt())

    def forward(self, reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        reference, estimate = reference.reshape(-1, reference.shape[-1]), estimate.reshape(-1, estimate.shape[-1])
        total = estimate.new_zeros(())
        for n_fft, _ in self.scales:
            ref, est = self.mel(reference, n_fft), self.mel(estimate, n_fft)
            total = total + F.l1_loss(est, ref) + F.l1_loss(torch.log10(est.clamp_min(1e-5)), torch.log10(ref.clamp_min(1e-5)))
        return total / len(self.scales)


class Balancer:
    """EnCodec's loss balancer: each loss gets a fixed share of the gradient norm at the decoder output.

    The gradient of loss i with respect to the output is rescaled to `weight_i / Σ weights × total_norm`
    of an exponential moving average of its own norm, so the weights mean fractions of the update and no
    longer depend on each loss's scale.
    """

    def __init__(self, weights: dict[str, float], total_norm: float = 1.0, ema_decay: float = 0.999) -> None:
        self.weights = weights
        self.total_norm = total_norm
        self.ema_decay = ema_decay
        self.norm_sum: dict[str, float] = {}
        self.count: dict[str, float] = {}

    def state_dict(self) -> dict:
        return {"norm_sum": dict(self.norm_sum), "count": dict(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.norm_sum, self.count = dict(state["norm_sum"]), dict(state["count"])

    def output_grad(self, losses: dict[str, torch.Tensor], output: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The balanced gradient to send back through `output` (call `output.backward(grad)` with it)."""
        grads, norms = {}, {}
        for name, loss in losses.items():
            (grad,) = torch.autograd.grad(loss, output, retain_graph=True)
            grads[name] = grad
            norm = float(grad.norm())
            self.norm_sum[name] = self.ema_decay * self.norm_sum.get(name, 0.0) + norm
            self.count[name] = self.ema_decay * self.count.get(name, 0.0) + 1.0
            norms[name] = norm
        total_weight = sum(self.weights[name] for name in losses)
        out_grad = torch.zeros_like(output)
        for name, grad in grads.items():
            avg = self.norm_sum[name] / self.count[name]
            scale = self.weights[name] / total_weight * self.total_norm / (avg + 1e-12)
            out_grad.add_(grad, alpha=scale)
        return out_grad, norms


def si_snr(reference: torch.Tensor, estimate: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SNR in dB over the last axis."""
    reference = reference - reference.mean(-1, keepdim=True)
    estimate = estimate - estimate.mean(-1, keepdim=True)
    projection = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps) * reference
    noise = estimate - projection
    return 10 * torch.log10(projection.pow(2).sum(-1) / (noise.pow(2).sum(-1) + eps) + eps)


class EnvelopeCorrelationLoss(nn.Module):
    """1 − the mean correlation of short-time one-third-octave band envelopes (a differentiable STOI).

    STOI (Taal et al., 2011) scores intelligibility by how well each 384 ms stretch of each
    one-third-octave band envelope (150 Hz–4.3 kHz) of the decoded speech correlates with the
    original's. The mel loss matches magnitudes frame by frame and lets envelopes smear over tens of
    milliseconds; this loss rewards keeping their shape. It follows STOI's framing (25.6 ms Hann
    frames, 50 % overlap, 15 bands from 150 Hz, 30-frame segments) at the model's rate, without STOI's
    clipping of the estimate and silent-frame removal, neither of which has a useful gradient.
    """

    def __init__(self, sample_rate: int, bands: int = 15, lowest_centre_hz: float = 150.0, segment_frames: int = 30) -> None:
        super().__init__()
        self.n_fft = int(round(0.0256 * sample_rate))
        self.hop = self.n_fft // 2
        self.segment_frames = segment_frames
        freqs = torch.fft.rfftfreq(self.n_fft, 1.0 / sample_rate)
        centres = lowest_centre_hz * 2.0 ** (torch.arange(bands) / 3.0)
        low, high = centres * 2.0 ** (-1 / 6), centres * 2.0 ** (1 / 6)
        self.register_buffer("band_matrix", ((freqs >= low[:, None]) & (freqs < high[:, None])).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.min_samples = self.n_fft + (segment_frames - 1) * self.hop
        """The shortest input that holds one segment."""

    def envelopes(self, x: torch.Tensor) -> torch.Tensor:
        """`(batch, samples)` → band envelopes `(batch, bands, frames)`."""
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)
        return (torch.matmul(self.band_matrix, power) + 1e-10).sqrt()

    def forward(self, reference: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        reference, estimate = reference.reshape(-1, reference.shape[-1]), estimate.reshape(-1, estimate.shape[-1])
        if reference.shape[-1] < self.min_samples:
            raise ValueError(f"the envelope loss needs at least {self.min_samples} samples (one STOI segment), got {reference.shape[-1]}")
        ref = self.envelopes(reference).unfold(-1, self.segment_frames, 1)  # (batch, bands, segments, frames)
        est = self.envelopes(estimate).unfold(-1, self.segment_frames, 1)
        ref = ref - ref.mean(-1, keepdim=True)
        est = est - est.mean(-1, keepdim=True)
        # The floor keeps silent stretches (where both envelopes are near zero) from steering the gradient.
        floor = 1e-6 * ref.pow(2).sum(-1).amax(dim=(1, 2), keepdim=True)[..., None] + 1e-12
        corr = (ref * est).sum(-1) / ((ref.pow(2).sum(-1) + floor[..., 0]) * (est.pow(2).sum(-1) + floor[..., 0])).sqrt()
        return 1.0 - corr.mean()
