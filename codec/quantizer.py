"""Residual vector quantizer: each codebook quantizes what the previous ones left over."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import EncodecConfig


def nearest_entries(x: torch.Tensor, embed_t: torch.Tensor, embed_sqnorm: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook entry for each row of `x` `(n, dim)`.

    `embed_t` is the codebook transposed `(dim, size)` and `embed_sqnorm` its squared column norms
    `(1, size)`. The distance is written as transformers and Meta write it, so near-ties break the same way.
    """
    # transformers: -(x² - 2·x@e + e²).max(-1). `sub(alpha=2)` rounds exactly as `a - 2 * b` (the doubling
    # is exact) and argmin of d picks the same first index as max of -d, in fewer operations (the
    # streaming encoder runs this per frame and codebook).
    dist = torch.sub(x.pow(2).sum(1, keepdim=True), x @ embed_t, alpha=2)
    return dist.add_(embed_sqnorm).argmin(dim=-1)


def check_codes(codes: torch.Tensor, codebook_size: int) -> None:
    """Codes outside the codebooks would index garbage (or crash): refuse them with their range."""
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"Codes must lie in [0, {codebook_size}), got values in [{int(codes.min())}, {int(codes.max())}]"
        )


class EncodecEuclideanCodebook(nn.Module):
    """One codebook. `inited`, `cluster_size` and `embed_avg` are training statistics kept for checkpoints."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        embed = torch.zeros(config.codebook_size, config.codebook_dim)
        self.codebook_size = config.codebook_size
        self.register_buffer("inited", torch.tensor([1.0]))
        self.register_buffer("cluster_size", torch.zeros(config.codebook_size))
        self.register_buffer("embed", embed)
        self.register_buffer("embed_avg", embed.clone())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest entry for each vector of `x` `(..., dim)`."""
        embed_t = self.embed.t()
        indices = nearest_entries(x.reshape(-1, x.shape[-1]), embed_t, embed_t.pow(2).sum(0, keepdim=True))
        return indices.view(x.shape[:-1])

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return F.embedding(indices, self.embed)


class EncodecVectorQuantization(nn.Module):
    """Codebook applied to `(batch, dim, time)` tensors."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.codebook = EncodecEuclideanCodebook(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.codebook.encode(x.transpose(1, 2))

    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook.decode(indices).transpose(1, 2)


class EncodecResidualVectorQuantizer(nn.Module):
    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([EncodecVectorQuantization(config) for _ in range(config.num_quantizers)])

    def encode(self, embeddings: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
        """Embeddings `(batch, dim, frames)` → codes `(n_q, batch, frames)`."""
        residual = embeddings
        codes = []
        for layer in self.layers[: self.config.num_quantizers_for_bandwidth(bandwidth)]:
            indices = layer.encode(residual)
            residual = residual - layer.decode(indices)
            codes.append(indices)
        return torch.stack(codes)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(n_q, batch, frames)` → the sum of their entries `(batch, dim, frames)`; any n_q ≤ the maximum."""
        if codes.shape[0] > len(self.layers):
            raise ValueError(f"Got {codes.shape[0]} codebooks, but this model has {len(self.layers)}")
        check_codes(codes, self.config.codebook_size)
        quantized = self.layers[0].decode(codes[0])
        for layer, indices in zip(self.layers[1:], codes[1:]):
            quantized = quantized + layer.decode(indices)
        return quantized
