"""Audio blocks of any size in, codes of every completed 320-sample frame out."""

from __future__ import annotations

import torch

from codec import EncodecModel
from codec.quantizer import check_search_width

from .layers import State, streaming_stack
from .frame_quantizer import FrameQuantizer
from .coder import StartMode, StreamingCoder, check_sample_rate, check_streamable


class StreamingEncoder(StreamingCoder):
    """Encodes a stream of audio frame by frame, as the offline model would encode the whole signal.

    `push(audio)` takes `(batch, channels, n)` float32 blocks of any length and returns the codes
    `(batch, n_q, k)` of the k frames they completed; `flush()` ends the stream and returns the
    rest (the last frame padded as offline pads it). The bandwidth can change between pushes.
    `search_width` is the codec's (`EncodecModel.encode`): the codes equal offline codes of the same width.
    """

    def __init__(
        self,
        model: EncodecModel,
        bandwidth: float = 6.0,
        start: StartMode | str = StartMode.IMMEDIATE,
        sample_rate: int | None = None,
        search_width: int = 1,
    ) -> None:
        check_streamable(model.config)
        check_search_width(search_width)
        check_sample_rate(model.config, sample_rate)
        super().__init__(model, streaming_stack(model.encoder.layers, StartMode(start) is StartMode.EXACT), start)
        self.set_bandwidth(bandwidth)
        self.quantizer = FrameQuantizer(model)
        self.search_width = search_width

    def set_bandwidth(self, bandwidth: float) -> None:
        """Takes effect from the next frame completed; each push returns frames of one bandwidth."""
        self.config.check_bandwidth(bandwidth)
        self.bandwidth = bandwidth

    @property
    def num_codebooks(self) -> int:
        return self.config.num_quantizers_for_bandwidth(self.bandwidth)

    def _check_audio(self, audio: torch.Tensor) -> None:
        if not isinstance(audio, torch.Tensor):
            raise TypeError(f"audio must be a torch.Tensor, got {type(audio).__name__}")
        if audio.dim() != 3:
            raise ValueError(f"audio must be (batch, channels, samples), got shape {tuple(audio.shape)}")
        if audio.shape[1] != self.config.audio_channels:
            raise ValueError(f"The model takes {self.config.audio_channels} channel(s), got {audio.shape[1]}")
        if audio.dtype != torch.float32:
            raise TypeError(f"audio must be float32 in [-1, 1], got {audio.dtype} (convert int16 with x / 32768)")
        self._check_batch(audio.shape[0])

    @torch.inference_mode()
    def push(self, audio: torch.Tensor) -> torch.Tensor:
        self._check_audio(audio)
        return self._quantize(self._feed(audio, self.config.hop_length))

    @torch.inference_mode()
    def flush(self) -> torch.Tensor:
        """End the stream: the remaining frames, the last one completed with the offline padding."""
        return self._quantize(self._finish(self.config.audio_channels, self.config.hop_length))

    def _quantize(self, embeddings: torch.Tensor | None) -> torch.Tensor:
        if embeddings is None or embeddings.shape[-1] == 0:
            return torch.zeros(self.batch or 0, self.num_codebooks, 0, dtype=torch.long)
        return self.quantizer.encode(embeddings, self.num_codebooks, self.search_width)

    def _extra_state(self) -> State:
        return {"bandwidth": self.bandwidth}

    def _load_extra_state(self, state: State) -> None:
        self.set_bandwidth(state["bandwidth"])
