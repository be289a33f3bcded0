"""Test models with realistic codebooks, and test signals.

A freshly built EnCodec has all-zero codebooks: every frame maps to code 0 and every comparison
passes whatever the code does. These helpers fill each codebook with residual encoder outputs of
varied audio, as a trained residual VQ would see them, so that codes vary from frame to frame.
They work on our `EncodecModel` and on `transformers.EncodecModel` alike (same module names).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from codec import EncodecConfig, EncodecModel

SMALL = dict(num_filters=4, hidden_size=16, num_lstm_layers=1)


def speech_like(samples: int, sampling_rate: int, channels: int = 1, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Speech-like audio `(batch, channels, samples)`: gliding harmonics, noise bursts and silences."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / sampling_rate
    out = torch.zeros(batch, channels, samples)
    for b in range(batch):
        for c in range(channels):
            f0 = 90 + 160 * torch.rand((), generator=generator)
            glide = f0 * (1 + 0.3 * torch.sin(2 * math.pi * (0.7 + torch.rand((), generator=generator)) * t))
            phase = 2 * math.pi * torch.cumsum(glide, 0) / sampling_rate
            voiced = sum(torch.sin(k * phase) / k for k in range(1, 8))
            envelope = (torch.sin(2 * math.pi * (2 + 3 * torch.rand((), generator=generator)) * t) > -0.3).float()
            noise = torch.randn(samples, generator=generator) * 0.1
            out[b, c] = 0.3 * voiced * envelope + noise * (1 - envelope) + 0.01 * torch.randn(samples, generator=generator)
    return out


@torch.no_grad()
def fill_realistic_codebooks(model: nn.Module, seed: int = 0, seconds: float = 2.0, clips: int = 8) -> None:
    """Give every codebook entries distributed like the residuals it would quantize."""
    config = model.config
    samples = int(seconds * config.sampling_rate)
    levels = [0.2 * 1.6**i for i in range(clips)]  # quiet to loud: the encoder's output moves with level
    audio = torch.cat(
        [level * speech_like(samples, config.sampling_rate, config.audio_channels, 1, seed + i) for i, level in enumerate(levels)]
    )
    if config.normalize:
        audio = audio / (audio.pow(2).mean(dim=(1, 2), keepdim=True).sqrt() + 1e-8)
    residual = model.encoder(audio).transpose(1, 2).reshape(-1, config.hidden_size)
    # A trained encoder's output is roughly centred; a random one carries a large offset that turns
    # every distance into a difference of big numbers (float cancellation, spurious argmin ties).
    offset = residual.mean(dim=0)
    model.encoder.layers[-1].conv.bias -= offset
    residual = residual - offset
    generator = torch.Generator().manual_seed(seed + 1)
    for layer in model.quantizer.layers:
        codebook = layer.codebook
        # Entries drawn from a Gaussian with the residuals' mean and covariance, not the residuals
        # themselves: copying data points would zero the residual and leave deeper codebooks idle.
        mean = residual.mean(dim=0)
        mixing = torch.randn(codebook.embed.shape[0], residual.shape[0], generator=generator)
        embed = mean + mixing @ (residual - mean) / residual.shape[0] ** 0.5
        codebook.embed.copy_(embed)
        codebook.embed_avg.copy_(embed)
        codebook.cluster_size.fill_(1.0)
        indices = torch.cdist(residual, embed).argmin(dim=1)
        residual = residual - embed[indices]


def realistic_model(seed: int = 0, **overrides) -> EncodecModel:
    """Our model with random weights (fixed by `seed`) and realistic codebooks, in eval mode."""
    torch.manual_seed(seed)
    model = EncodecModel(EncodecConfig(**overrides)).eval()
    fill_realistic_codebooks(model, seed)
    return model


def small_model(seed: int = 0, **overrides) -> EncodecModel:
    """A tiny 24 kHz causal model (a few thousand parameters) for fast transport and streaming tests."""
    return realistic_model(seed, **{**SMALL, **overrides})
