"""EnCodec's multi-scale STFT discriminator (Défossez et al., 2022, §3.3), with its hinge and
feature-matching losses.

Each scale looks at the complex STFT (real and imaginary parts as two channels) of one window size
through 2-D convolutions over (time, frequency) that halve the frequency axis as they go, as in the
paper. The width (`filters`) and the set of windows are arguments because the paper's size (32
filters, 5 windows) costs about 25 s per step on one CPU core; the CPU runs use a narrow one.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

Features = list[torch.Tensor]


class STFTDiscriminator(nn.Module):
    """One scale: logits over (time, frequency) and the feature maps that feature matching compares."""

    def __init__(self, n_fft: int, filters: int, dilations: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        convs = [nn.Conv2d(2, filters, (3, 9), padding=(1, 4))]
        for dilation in dilations:
            convs.append(nn.Conv2d(filters, filters, (3, 9), stride=(1, 2), dilation=(dilation, 1), padding=(dilation, 4)))
        convs.append(nn.Conv2d(filters, filters, (3, 3), padding=(1, 1)))
        self.convs = nn.ModuleList(weight_norm(conv) for conv in convs)
        self.post = weight_norm(nn.Conv2d(filters, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, Features]:
        spec = torch.stft(audio.reshape(-1, audio.shape[-1]), self.n_fft, self.n_fft // 4, window=self.window,
                          return_complex=True, normalized=True)
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # (batch, 2, time, frequency)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        return self.post(x), features


class MultiScaleSTFTDiscriminator(nn.Module):
    def __init__(self, filters: int = 32, n_ffts: tuple[int, ...] = (2048, 1024, 512, 256, 128)) -> None:
        super().__init__()
        self.scales = nn.ModuleList(STFTDiscriminator(n_fft, filters) for n_fft in n_ffts)

    def forward(self, audio: torch.Tensor) -> list[tuple[torch.Tensor, Features]]:
        return [scale(audio) for scale in self.scales]


def generator_losses(discriminator: MultiScaleSTFTDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> dict[str, torch.Tensor]:
    """The generator's hinge loss ("adv") and relative feature-matching L1 ("feat"), averaged over scales.

    The real audio's features are targets only, so they are computed without a graph.
    """
    with torch.no_grad():
        real_out = discriminator(real)
    adv, feat = fake.new_zeros(()), fake.new_zeros(())
    for (fake_logits, fake_features), (_, real_features) in zip(discriminator(fake), real_out):
        adv = adv + F.relu(1 - fake_logits).mean()
        feat = feat + sum(
            F.l1_loss(f, r) / (r.abs().mean() + 1e-8) for f, r in zip(fake_features, real_features)
        ) / len(fake_features)
    return {"adv": adv / len(real_out), "feat": feat / len(real_out)}


def discriminator_loss(discriminator: MultiScaleSTFTDiscriminator, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator on real audio and (detached) reconstructions."""
    loss = real.new_zeros(())
    for (real_logits, _), (fake_logits, _) in zip(discriminator(real), discriminator(fake.detach())):
        loss = loss + F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    return loss / len(discriminator.scales)
