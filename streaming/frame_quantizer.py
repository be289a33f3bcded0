"""The residual VQ for one frame at a time: the streaming counterpart of ``codec.quantizer``, with the
codebooks' transposes and norms computed once per model instead of on every call.

Recomputing each codebook's squared norms on every frame reads every codebook twice per frame;
the results are the same numbers as the codec's quantizer computes. The layouts are shared by
every coder of the model (a receiver opens a decoder per remote stream: 8-17 MB each otherwise).
"""

from __future__ import annotations

import torch

from codec import EncodecModel
from codec.quantizer import check_codes, nearest_entries, residual_beam_search

from .layers import derived


def _codebook_layouts(model: EncodecModel) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Each codebook, its transpose (what a frame's distance product reads fastest) and its squared norms."""
    embeds = [layer.codebook.embed for layer in model.quantizer.layers]
    transposed = [embed.t().contiguous() for embed in embeds]
    return embeds, transposed, [embed_t.pow(2).sum(0, keepdim=True) for embed_t in transposed]


class FrameQuantizer:
    def __init__(self, model: EncodecModel) -> None:
        self.size = model.config.codebook_size
        self.embeds, self.transposed, self.sqnorms = derived(
            model.quantizer, "frame_quantizer", lambda: _codebook_layouts(model))

    def encode(self, embeddings: torch.Tensor, num_codebooks: int, search_width: int = 1) -> torch.Tensor:
        """Embeddings `(batch, dim, frames)` → codes `(batch, num_codebooks, frames)`, searched as the codec searches."""
        batch, dim, frames = embeddings.shape
        residual = embeddings.transpose(1, 2).reshape(-1, dim)
        if search_width > 1:
            codes = residual_beam_search(
                residual, self.embeds[:num_codebooks], self.transposed[:num_codebooks], self.sqnorms[:num_codebooks], search_width
            )
            return codes.view(batch, frames, num_codebooks).transpose(1, 2)
        codes = []
        for layer in range(num_codebooks):
            indices = nearest_entries(residual, self.transposed[layer], self.sqnorms[layer])
            if layer + 1 < num_codebooks:  # the last residual is never read
                residual = residual - self.embeds[layer][indices]
            codes.append(indices)
        return torch.stack(codes, dim=1).view(batch, frames, num_codebooks).transpose(1, 2)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `(batch, n_q, frames)` → the sum of their entries `(batch, dim, frames)`."""
        check_codes(codes, self.size)
        total = self.embeds[0][codes[:, 0]]
        for embed, indices in zip(self.embeds[1:], codes[:, 1:].unbind(1)):
            total = total + embed[indices]
        return total.transpose(1, 2)
