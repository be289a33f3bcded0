"""Training-time residual VQ on the codec's own codebook buffers.

`codec.quantizer` is inference-only (nearest entry, no gradient). Training needs three more things,
all here, all acting on `model.quantizer.layers[i].codebook.{embed, embed_avg, cluster_size}` so the
trained codebooks land in the model's state dict and `save_pretrained` writes them:

- a straight-through estimator, so the decoder's gradient reaches the encoder through the quantizer;
- a commitment loss pulling each residual towards its chosen entry (EnCodec eq. 2, weight 1);
- codebook learning by exponential moving averages of the assigned vectors (k-means in the limit,
  as in EnCodec/SoundStream), with dead entries (rarely used) re-seeded from the current batch.

Quantizer dropout picks how many codebooks a step uses; the caller chooses the number.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from codec.quantizer import EncodecResidualVectorQuantizer


class EmaResidualVQ:
    def __init__(self, quantizer: EncodecResidualVectorQuantizer, decay: float = 0.99, eps: float = 1e-5, dead_threshold: float = 1.0) -> None:
        self.quantizer = quantizer
        self.decay = decay
        self.eps = eps
        self.dead_threshold = dead_threshold

    @property
    def codebooks(self):
        return [layer.codebook for layer in self.quantizer.layers]

    @torch.no_grad()
    def initialise(self, embeddings: torch.Tensor, generator: torch.Generator) -> None:
        """Seed every codebook with residuals of `embeddings` `(B, D, T)`, layer after layer, as an RVQ sees them."""
        flat = embeddings.transpose(1, 2).reshape(-1, embeddings.shape[1])
        residual = flat
        for codebook in self.codebooks:
            pick = torch.randint(0, residual.shape[0], (codebook.codebook_size,), generator=generator).to(residual.device)
            codebook.embed.copy_(residual[pick])
            codebook.embed_avg.copy_(residual[pick] * self.dead_threshold)
            codebook.cluster_size.fill_(self.dead_threshold)
            codebook.inited.fill_(1.0)
            residual = residual - F.embedding(self._nearest(codebook, residual), codebook.embed)

    @staticmethod
    def _nearest(codebook, flat: torch.Tensor) -> torch.Tensor:
        embed = codebook.embed
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ embed.t() + embed.pow(2).sum(1)[None]
        return dist.argmin(1)

    @torch.no_grad()
    def _update(self, codebook, flat: torch.Tensor, indices: torch.Tensor, generator: torch.Generator) -> None:
        size = codebook.codebook_size
        counts = torch.bincount(indices, minlength=size).to(flat.dtype)
        sums = torch.zeros_like(codebook.embed).index_add_(0, indices, flat)
        codebook.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        codebook.embed_avg.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = codebook.cluster_size.sum()
        smoothed = (codebook.cluster_size + self.eps) / (n + size * self.eps) * n
        codebook.embed.copy_(codebook.embed_avg / smoothed[:, None])
        dead = codebook.cluster_size < self.dead_threshold * (1 - self.decay) * 10
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), generator=generator).to(flat.device)
            fresh = flat[pick]
            codebook.embed[dead] = fresh
            codebook.embed_avg[dead] = fresh * self.dead_threshold
            codebook.cluster_size[dead] = self.dead_threshold

    def __call__(self, embeddings: torch.Tensor, n_q: int, generator: torch.Generator, update: bool = True):
        """Quantize `(B, D, T)` with the first `n_q` codebooks.

        Returns (straight-through quantized embeddings, commitment loss, codes `(n_q, B, T)`).
        """
        batch, dim, frames = embeddings.shape
        flat_x = embeddings.transpose(1, 2).reshape(-1, dim)
        residual = flat_x.detach()
        quantized = torch.zeros_like(residual)
        commit = embeddings.new_zeros(())
        codes = []
        for codebook in self.codebooks[:n_q]:
            indices = self._nearest(codebook, residual)
            if update:
                self._update(codebook, residual, indices, generator)
            chosen = F.embedding(indices, codebook.embed).detach()
            # The encoder's output minus what earlier layers took: commitment acts on the encoder.
            live_residual = flat_x - quantized
            commit = commit + F.mse_loss(live_residual, chosen)
            quantized = quantized + chosen
            residual = residual - chosen
            codes.append(indices.view(batch, frames))
        straight_through = flat_x + (quantized - flat_x).detach()
        return straight_through.view(batch, frames, dim).transpose(1, 2), commit / n_q, torch.stack(codes)
