"""Widen a trained model (a larger `num_filters`) so that it starts out computing what the narrow one did.

The bundled model's encoder and decoder, not its bit rate, limit it on real speech (24 kbps is hardly
better than 6), and a wider model trained from scratch needs far more steps than a session buys. So a
wider model starts from the narrow one, as in Net2WiderNet (Chen et al., 2016): every channel of the
wider model copies a channel of the narrow one, and each layer that reads a channel's copies shares that
channel's weights among them. The output is unchanged (up to float rounding), and training goes on from
the narrow model's quality with more capacity.

Copies of one channel have the same inputs, so they stay equal under training unless the layers reading
them weigh them differently. Those shares are therefore drawn at random for every weight (and still sum
to the original weight), rather than split evenly: the function is kept exactly, and the copies get
different gradients.

Every SEANet layer is a channel-linear map followed by an elementwise nonlinearity (ELU, the LSTM's
gates), with residual sums inside a channel space, which is what makes copying channels exact.
"""

from __future__ import annotations

import torch
from torch import nn

from codec import EncodecConfig, EncodecModel
from codec.conv import EncodecConv1d, EncodecConvTranspose1d
from codec.seanet import EncodecLSTM, EncodecResnetBlock

SHARE_SPREAD = 0.2  # relative spread of the random shares of a copied channel's outgoing weights


def channel_map(old: int, new: int, generator: torch.Generator) -> torch.Tensor:
    """Which old channel each new channel copies: the old ones in place, then distinct random extras."""
    if new < old:
        raise ValueError(f"cannot narrow a layer from {old} to {new} channels")
    rounds = -(-(new - old) // old)
    extra = [torch.randperm(old, generator=generator) for _ in range(rounds)]
    return torch.cat([torch.arange(old), *extra])[:new]


def _shares(weight: torch.Tensor, inputs: torch.Tensor, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Random positive factors, one per weight, that sum to 1 over the copies of each input channel."""
    factors = (1.0 + SHARE_SPREAD * torch.randn(weight.shape, generator=generator)).clamp(min=0.1)
    totals = torch.zeros_like(factors).narrow(dim, 0, int(inputs.max()) + 1).index_add(dim, inputs, factors)
    return factors / totals.index_select(dim, inputs)


def _widened(weight: torch.Tensor, outputs: torch.Tensor, inputs: torch.Tensor, out_dim: int, in_dim: int,
             generator: torch.Generator) -> torch.Tensor:
    selected = weight.index_select(out_dim, outputs).index_select(in_dim, inputs)
    return selected * _shares(selected, inputs, in_dim, generator)


def _copy_conv(old: nn.Module, new: nn.Module, inputs: torch.Tensor, outputs: torch.Tensor,
               generator: torch.Generator) -> None:
    """Set a weight-normed conv (or transposed conv) of the wide model from one of the narrow model."""
    transposed = isinstance(old, EncodecConvTranspose1d)
    out_dim, in_dim = (1, 0) if transposed else (0, 1)
    weight = _widened(old.conv.weight, outputs, inputs, out_dim, in_dim, generator)
    parametrization = new.conv.parametrizations.weight
    parametrization.original1.copy_(weight)  # v; with g = |v| the effective weight is v itself
    parametrization.original0.copy_(weight.norm(dim=[d for d in range(weight.dim()) if d != 0], keepdim=True))
    new.conv.bias.copy_(old.conv.bias[outputs])


def _copy_lstm(old: nn.LSTM, new: nn.LSTM, channels: torch.Tensor, generator: torch.Generator) -> None:
    """Input and hidden state are the same channel space (the LSTM's output is added to its input)."""
    old_size = old.hidden_size
    rows = torch.cat([gate * old_size + channels for gate in range(4)])  # gates i, f, g, o
    for layer in range(old.num_layers):
        for kind in ("ih", "hh"):
            weight = getattr(old, f"weight_{kind}_l{layer}")
            getattr(new, f"weight_{kind}_l{layer}").copy_(_widened(weight, rows, channels, 0, 1, generator))
            getattr(new, f"bias_{kind}_l{layer}").copy_(getattr(old, f"bias_{kind}_l{layer}")[rows])


def _copy_stack(old_layers: nn.ModuleList, new_layers: nn.ModuleList, channels: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """Copy a SEANet stack layer by layer; `channels` maps its input's channels, the result its output's."""
    for old, new in zip(old_layers, new_layers):
        if isinstance(old, EncodecResnetBlock):
            hidden = channel_map(old.block[1].conv.out_channels, new.block[1].conv.out_channels, generator)
            _copy_conv(old.block[1], new.block[1], channels, hidden, generator)
            _copy_conv(old.block[3], new.block[3], hidden, channels, generator)
            _copy_conv(old.shortcut, new.shortcut, channels, channels, generator)
        elif isinstance(old, EncodecLSTM):
            _copy_lstm(old.lstm, new.lstm, channels, generator)
        elif isinstance(old, (EncodecConv1d, EncodecConvTranspose1d)):
            outputs = channel_map(old.conv.out_channels, new.conv.out_channels, generator)
            _copy_conv(old, new, channels, outputs, generator)
            channels = outputs
    return channels


@torch.no_grad()
def widen(model: EncodecModel, num_filters: int, seed: int = 0) -> EncodecModel:
    """A model with `num_filters` filters whose encoder, codebooks and decoder compute what `model`'s do."""
    if model.config.norm_type != "weight_norm":
        raise ValueError("widening copies weight-normed convolutions; this model uses a time group norm")
    wide = EncodecModel(EncodecConfig.from_dict({**model.config.to_dict(), "num_filters": num_filters})).to(
        next(model.parameters()).dtype)
    generator = torch.Generator().manual_seed(seed)
    audio = torch.arange(model.config.audio_channels)
    latent = _copy_stack(model.encoder.layers, wide.encoder.layers, audio, generator)
    if not torch.equal(latent, torch.arange(model.config.hidden_size)):
        raise AssertionError("the encoder's last conv must keep the latent channels")
    _copy_stack(model.decoder.layers, wide.decoder.layers, latent, generator)
    wide.quantizer.load_state_dict(model.quantizer.state_dict())
    return wide
