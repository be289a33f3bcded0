"""Convolutions with EnCodec's causal/asymmetric padding, weight norm or time group norm.

The padding arithmetic lives in a few named helpers so that the streaming layer can apply exactly the
same left/right padding rules one block at a time, and reuse these modules' weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm

from .config import EncodecConfig


def extra_padding_for_conv1d(length: int, kernel_size: int, stride: int, padding_total: int) -> int:
    """Right padding that completes the last window, so that no input sample is dropped."""
    n_frames = (length - kernel_size + padding_total) / stride + 1
    ideal_length = (math.ceil(n_frames) - 1) * stride + (kernel_size - padding_total)
    return ideal_length - length


def pad1d(x: torch.Tensor, paddings: tuple[int, int], mode: str) -> torch.Tensor:
    """`F.pad` that also reflect-pads inputs shorter than the padding (zeros are inserted first)."""
    length = x.shape[-1]
    left, right = paddings
    if mode != "reflect":
        return F.pad(x, paddings, mode, 0.0)
    extra = max(0, max(left, right) - length + 1)
    if extra:
        x = F.pad(x, (0, extra))
    padded = F.pad(x, paddings, mode)
    return padded[..., : padded.shape[-1] - extra]


def _normalized(module: nn.Module, config: EncodecConfig, out_channels: int) -> tuple[nn.Module, nn.Module | None]:
    if config.norm_type == "weight_norm":
        return weight_norm(module), None
    return module, nn.GroupNorm(1, out_channels)


class EncodecConv1d(nn.Module):
    """Conv1d padded so that the output has `ceil(length / stride)` steps (causally, if configured)."""

    def __init__(
        self,
        config: EncodecConfig,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.causal = config.use_causal_conv
        self.pad_mode = config.pad_mode
        self.conv, self.norm = _normalized(
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation), config, out_channels
        )
        self.stride = stride
        self.effective_kernel_size = (kernel_size - 1) * dilation + 1
        self.padding_total = self.effective_kernel_size - stride

    def paddings(self, length: int) -> tuple[int, int]:
        """(left, right) padding that offline inference applies to an input of `length` steps."""
        extra = extra_padding_for_conv1d(length, self.effective_kernel_size, self.stride, self.padding_total)
        if self.causal:
            return self.padding_total, extra
        right = self.padding_total // 2
        return self.padding_total - right, right + extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(pad1d(x, self.paddings(x.shape[-1]), self.pad_mode))
        return x if self.norm is None else self.norm(x)


class EncodecConvTranspose1d(nn.Module):
    """ConvTranspose1d whose output is trimmed back to `length * stride` steps."""

    def __init__(self, config: EncodecConfig, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv, self.norm = _normalized(
            nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride), config, out_channels
        )
        self.stride = stride
        padding_total = kernel_size - stride
        if config.use_causal_conv:
            self.trim_right = math.ceil(padding_total * config.trim_right_ratio)
        else:
            self.trim_right = padding_total // 2
        self.trim_left = padding_total - self.trim_right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return x[..., self.trim_left : x.shape[-1] - self.trim_right]
