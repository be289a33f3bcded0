"""Codes of any number of frames in, every finished audio sample out."""

from __future__ import annotations

import torch

from codec import EncodecModel

from .coder import StartMode, StreamingCoder, check_streamable
from .frame_quantizer import FrameQuantizer
from .layers import streaming_stack


class StreamingDecoder(StreamingCoder):
    """Decodes a stream of codes; the concatenated output equals the offline `decode` of all the codes.

    `push(codes)` takes `(batch, n_q, k)` integer codes (n_q may change from push to push, as the
    sender switches bandwidth) and returns `(batch, channels, k * hop_length)` samples once started.
    """

    def __init__(self, model: EncodecModel, start: StartMode | str = StartMode.IMMEDIATE) -> None:
        check_streamable(model.config)
        exact = StartMode(start) is StartMode.EXACT
        super().__init__(model, streaming_stack(model.decoder.layers, exact, model.config.hop_length), start)
        self.quantizer = FrameQuantizer(model)

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor):
            raise TypeError(f"codes must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 3:
            raise ValueError(f"codes must be (batch, n_q, frames), got shape {tuple(codes.shape)}")
        if codes.dtype not in (torch.int64, torch.int32, torch.int16):
            raise TypeError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.config.num_quantizers:
            raise ValueError(f"frames must carry 1 to {self.config.num_quantizers} codebooks, got {codes.shape[1]}")
        self._check_batch(codes.shape[0])

    @torch.inference_mode()
    def push(self, codes: torch.Tensor) -> torch.Tensor:
        self._check_codes(codes)
        embeddings = self.quantizer.decode(codes.long())
        return self._audio(self._feed(embeddings, 1))

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End the stream and return the samples still held."""
        return self._audio(self._finish(self.config.hidden_size, 1))

    def _audio(self, audio: torch.Tensor | None) -> torch.Tensor:
        if audio is None:
            return torch.zeros(self.batch or 0, self.config.audio_channels, 0)
        return audio
