"""SEANet encoder and decoder as EnCodec assembles them, with transformers' module names and order.

Module names matter: they are the checkpoint's parameter names (`encoder.layers.13.lstm.weight_ih_l0`).
"""

from __future__ import annotations

import torch
from torch import nn

from .config import EncodecConfig
from .conv import EncodecConv1d, EncodecConvTranspose1d


class EncodecLSTM(nn.Module):
    """LSTM over the time axis of a `(batch, channels, time)` tensor, with a skip connection."""

    def __init__(self, config: EncodecConfig, dimension: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dimension, dimension, config.num_lstm_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        x = self.lstm(x)[0] + x
        return x.permute(1, 2, 0)


class EncodecResnetBlock(nn.Module):
    """ELU → dilated conv → ELU → 1×1 conv, added to a 1×1 conv (or identity) shortcut."""

    def __init__(self, config: EncodecConfig, dim: int, dilations: tuple[int, int]) -> None:
        super().__init__()
        kernel_sizes = (config.residual_kernel_size, 1)
        hidden = dim // config.compress
        block: list[nn.Module] = []
        for i, (kernel_size, dilation) in enumerate(zip(kernel_sizes, dilations)):
            in_channels = dim if i == 0 else hidden
            out_channels = dim if i == len(kernel_sizes) - 1 else hidden
            block += [nn.ELU(), EncodecConv1d(config, in_channels, out_channels, kernel_size, dilation=dilation)]
        self.block = nn.ModuleList(block)
        self.shortcut = EncodecConv1d(config, dim, dim, kernel_size=1) if config.use_conv_shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        for layer in self.block:
            x = layer(x)
        return self.shortcut(residual) + x


class _Sequential(nn.Module):
    """A `layers` ModuleList applied in order (the checkpoints name it `layers`, not nn.Sequential's indices)."""

    layers: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class EncodecEncoder(_Sequential):
    """Audio `(batch, channels, samples)` → embeddings `(batch, hidden_size, frames)`."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = [EncodecConv1d(config, config.audio_channels, config.num_filters, config.kernel_size)]
        scaling = 1
        for ratio in reversed(config.upsampling_ratios):
            channels = scaling * config.num_filters
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, channels, (config.dilation_growth_rate**j, 1)))
            layers += [nn.ELU(), EncodecConv1d(config, channels, channels * 2, kernel_size=ratio * 2, stride=ratio)]
            scaling *= 2
        channels = scaling * config.num_filters
        if config.num_lstm_layers:  # Meta's SEANet leaves the LSTM out when it has no layers
            layers.append(EncodecLSTM(config, channels))
        layers.append(nn.ELU())
        layers.append(EncodecConv1d(config, channels, config.hidden_size, config.last_kernel_size))
        self.layers = nn.ModuleList(layers)


class EncodecDecoder(_Sequential):
    """Embeddings `(batch, hidden_size, frames)` → audio `(batch, channels, frames * hop_length)`."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        scaling = 2 ** len(config.upsampling_ratios)
        channels = scaling * config.num_filters
        layers: list[nn.Module] = [EncodecConv1d(config, config.hidden_size, channels, config.kernel_size)]
        if config.num_lstm_layers:
            layers.append(EncodecLSTM(config, channels))
        for ratio in config.upsampling_ratios:
            channels = scaling * config.num_filters
            layers += [
                nn.ELU(),
                EncodecConvTranspose1d(config, channels, channels // 2, kernel_size=ratio * 2, stride=ratio),
            ]
            for j in range(config.num_residual_layers):
                layers.append(EncodecResnetBlock(config, channels // 2, (config.dilation_growth_rate**j, 1)))
            scaling //= 2
        layers += [nn.ELU(), EncodecConv1d(config, config.num_filters, config.audio_channels, config.last_kernel_size)]
        self.layers = nn.ModuleList(layers)
