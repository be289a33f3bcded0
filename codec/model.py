"""The EnCodec model with the API of `transformers.EncodecModel`: encode, decode, forward."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from .config import EncodecConfig
from .loading import load_pretrained, save_pretrained
from .outputs import EncodecDecoderOutput, EncodecEncoderOutput, EncodecOutput
from .quantizer import EncodecResidualVectorQuantizer
from .seanet import EncodecDecoder, EncodecEncoder


def linear_overlap_add(frames: Sequence[torch.Tensor], stride: int) -> torch.Tensor:
    """Join overlapping decoded chunks with triangular weights, as the chunked 48 kHz model requires."""
    if not frames:
        raise ValueError("Cannot overlap-add an empty list of chunks")
    first = frames[0]
    total = stride * (len(frames) - 1) + frames[-1].shape[-1]
    time = torch.linspace(0, 1, first.shape[-1] + 2, device=first.device, dtype=first.dtype)[1:-1]
    weight = 0.5 - (time - 0.5).abs()
    sum_weight = torch.zeros(total, device=first.device, dtype=first.dtype)
    out = torch.zeros(*first.shape[:-1], total, device=first.device, dtype=first.dtype)
    for index, frame in enumerate(frames):
        offset, length = index * stride, frame.shape[-1]
        out[..., offset : offset + length] += weight[:length] * frame
        sum_weight[offset : offset + length] += weight[:length]
    return out / sum_weight


class EncodecModel(nn.Module):
    """SEANet encoder, residual VQ and SEANet decoder; parameter names match the hub checkpoints."""

    def __init__(self, config: EncodecConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = EncodecEncoder(config)
        self.decoder = EncodecDecoder(config)
        self.quantizer = EncodecResidualVectorQuantizer(config)
        self.bits_per_codebook = config.codebook_nbits

    # Offline encoding ---------------------------------------------------------------------------
    def _encode_frame(self, input_values: torch.Tensor, bandwidth: float, search_width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        scale = None
        if self.config.normalize:
            mono = input_values.sum(1, keepdim=True) / input_values.shape[1]
            scale = mono.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-8
            input_values = input_values / scale
            scale = scale.view(-1, 1)
        codes = self.quantizer.encode(self.encoder(input_values), bandwidth, search_width)
        return codes.transpose(0, 1), scale

    def _check_audio(self, input_values: torch.Tensor) -> None:
        if input_values.dim() != 3:
            raise ValueError(f"input_values must be (batch, channels, samples), got shape {tuple(input_values.shape)}")
        channels = input_values.shape[1]
        if channels != self.config.audio_channels:
            raise ValueError(f"This model takes {self.config.audio_channels} audio channel(s), got {channels}")
        if not input_values.is_floating_point():
            raise TypeError(f"input_values must be a float tensor, got {input_values.dtype}")
        if input_values.shape[-1] == 0:
            raise ValueError("input_values holds no samples")

    @torch.inference_mode()
    def encode(
        self,
        input_values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        bandwidth: float | None = None,
        return_dict: bool | None = None,
        search_width: int = 1,
    ) -> EncodecEncoderOutput | tuple:
        """Audio `(batch, channels, samples)` → codes `(nb_chunks, batch, n_q, frames)` and one scale per chunk.

        `bandwidth=None` takes the smallest supported bandwidth, as transformers does. `search_width`
        (not in transformers) > 1 searches the codebooks jointly (`quantizer.residual_beam_search`):
        better codes for the same bits; 1 gives transformers' codes.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        bandwidth = self.config.target_bandwidths[0] if bandwidth is None else bandwidth
        self.config.check_bandwidth(bandwidth)
        self._check_audio(input_values)
        input_length = input_values.shape[-1]
        chunk_length = self.config.chunk_length or input_length
        stride = self.config.chunk_stride if self.config.chunk_length else input_length
        if padding_mask is None:
            padding_mask = torch.ones_like(input_values, dtype=torch.bool)
        else:
            padding_mask = padding_mask.view(padding_mask.shape[0], -1, padding_mask.shape[-1]).bool()
        codes, scales = [], []
        for offset in range(0, input_length, stride):
            chunk = padding_mask[..., offset : offset + chunk_length] * input_values[..., offset : offset + chunk_length]
            chunk_codes, scale = self._encode_frame(chunk, bandwidth, search_width)
            codes.append(chunk_codes)
            scales.append(scale)
        last_frame_pad_length = codes[0].shape[-1] - codes[-1].shape[-1]
        if last_frame_pad_length > 0:
            codes[-1] = nn.functional.pad(codes[-1], (0, last_frame_pad_length), value=0)
        audio_codes = torch.stack(codes)
        if not return_dict:
            return audio_codes, scales, last_frame_pad_length
        return EncodecEncoderOutput(audio_codes, scales, last_frame_pad_length)

    # Offline decoding ---------------------------------------------------------------------------
    def _decode_frame(self, codes: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        audio = self.decoder(self.quantizer.decode(codes.transpose(0, 1)))
        return audio if scale is None else audio * scale.view(-1, 1, 1)

    @torch.inference_mode()
    def decode(
        self,
        audio_codes: torch.Tensor,
        audio_scales: Sequence[torch.Tensor | None],
        padding_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        last_frame_pad_length: int | None = 0,
    ) -> EncodecDecoderOutput | tuple:
        """Codes `(nb_chunks, batch, n_q, frames)` → audio `(batch, channels, samples)`.

        The output is trimmed to the padding mask's length when one is given.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if audio_codes.dim() != 4:
            raise ValueError(f"audio_codes must be (nb_chunks, batch, n_q, frames), got shape {tuple(audio_codes.shape)}")
        last_frame_pad_length = last_frame_pad_length or 0
        chunks = []
        for index, (chunk_codes, scale) in enumerate(zip(audio_codes, audio_scales)):
            if index == len(audio_codes) - 1 and last_frame_pad_length > 0:
                chunk_codes = chunk_codes[..., :-last_frame_pad_length]
            chunks.append(self._decode_frame(chunk_codes, scale))
        if self.config.chunk_length is None:
            if len(audio_codes) != 1:
                raise ValueError(f"This model is not chunked: expected one chunk of codes, got {len(audio_codes)}")
            audio_values = chunks[0]
        else:
            audio_values = linear_overlap_add(chunks, self.config.chunk_stride or 1)
        if padding_mask is not None and padding_mask.shape[-1] < audio_values.shape[-1]:
            audio_values = audio_values[..., : padding_mask.shape[-1]]
        if not return_dict:
            return (audio_values,)
        return EncodecDecoderOutput(audio_values)

    def forward(
        self,
        input_values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        bandwidth: float | None = None,
        audio_codes: torch.Tensor | None = None,
        audio_scales: Sequence[torch.Tensor | None] | None = None,
        return_dict: bool | None = None,
        last_frame_pad_length: int | None = 0,
    ) -> EncodecOutput | tuple:
        """Encode then decode (or decode the given codes), returning both codes and audio."""
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if (audio_codes is None) != (audio_scales is None):
            raise ValueError("audio_codes and audio_scales must be given together")
        if padding_mask is None:
            padding_mask = torch.ones_like(input_values, dtype=torch.bool)
        if audio_codes is None:
            audio_codes, audio_scales, last_frame_pad_length = self.encode(input_values, padding_mask, bandwidth, False)
        audio_values = self.decode(
            audio_codes, audio_scales, padding_mask, return_dict=False, last_frame_pad_length=last_frame_pad_length
        )[0]
        if not return_dict:
            return audio_codes, audio_values
        return EncodecOutput(audio_codes=audio_codes, audio_values=audio_values)

    # Checkpoints --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs) -> "EncodecModel":
        """Load from a local directory, a hub id (`facebook/encodec_24khz`) or a Meta `.th` file.

        Keyword arguments go to the loader: `config`, `revision`, `cache_dir`, `token`, `local_files_only`.
        """
        return load_pretrained(cls, source, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` in the layout transformers loads."""
        save_pretrained(self, directory)

    def num_parameters(self) -> int:
        return sum(math.prod(p.shape) for p in self.parameters())

    def fingerprint(self) -> bytes:
        """SHA-256 of the config and of every weight and codebook, as float32.

        Peers and files carry its first bytes so that a decoder refuses codes from another model:
        two models of one architecture (a retrained default, say) share the config but not the
        codebooks, and decoding one's codes with the other gives noise, not an error. Cached until a
        tensor is modified in place (about 0.1 s per 60 MB to compute).
        """
        tensors = sorted(self.state_dict().items())
        versions = tuple(tensor._version for _, tensor in tensors)
        cached = getattr(self, "_fingerprint", None)
        if cached is not None and cached[0] == versions:
            return cached[1]
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":")).encode())
        for name, tensor in tensors:
            values = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(f"{name}:{tuple(values.shape)};".encode())
            digest.update(values.numpy().tobytes())
        self._fingerprint = (versions, digest.digest())
        return self._fingerprint[1]
