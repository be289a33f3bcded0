"""What the streaming encoder and decoder share: the start mode, the start-up hold, flush and snapshots."""

from __future__ import annotations

import enum

import torch

from codec import EncodecConfig, EncodecModel

from .layers import State, StreamingStack


class StartMode(str, enum.Enum):
    """How a stream begins.

    EXACT holds the first frames once (7 frames, 80 ms extra, for the 24 kHz model) so that the
    reflect padding of the offline model can be reproduced: the stream is then identical to offline.
    IMMEDIATE holds nothing and pads the start with zeros: only the first few frames differ from
    offline, and no start-up delay enters the call. A live call wants IMMEDIATE: a held start would
    put 80 ms of backlog in the receiver's buffer for the whole call.
    """

    EXACT = "exact"
    IMMEDIATE = "immediate"


def check_streamable(config: EncodecConfig) -> None:
    """Raises ``ValueError`` saying why a model of this config cannot stream frame by frame; reads
    nothing but the config, so a command can refuse a model before loading its weights."""
    if not config.use_causal_conv or config.chunk_length_s is not None or config.normalize:
        raise ValueError(
            "This model cannot stream frame by frame: it is non-causal, chunked or normalised per chunk "
            "(like facebook/encodec_48khz, whose latency is a whole 1 s chunk). Stream a causal model such as "
            "facebook/encodec_24khz, or encode such a model offline with EncodecModel.encode."
        )
    if config.norm_type != "weight_norm":
        raise ValueError("time_group_norm normalises over the whole signal and cannot stream")


def check_sample_rate(config: EncodecConfig, sample_rate: int | None) -> None:
    """Raises ``ValueError`` for audio declared at another rate than the model's (``None``: not declared);
    the encoders do not resample."""
    if sample_rate is not None and sample_rate != config.sampling_rate:
        raise ValueError(f"The model runs at {config.sampling_rate} Hz, the audio is at {sample_rate} Hz: resample it first")


class StreamingCoder:
    """The base of the streaming encoder and decoder: a stack of streaming layers fed along time,
    with the start-up hold of the EXACT mode."""

    def __init__(self, model: EncodecModel, stack: StreamingStack, start: StartMode | str) -> None:
        self.model = model
        self.config = model.config
        self.start = StartMode(start)
        self.stack = stack
        self.frames_to_start = stack.frames_to_start(self.config.hop_length)
        self.reset()

    def reset(self) -> None:
        """Forget everything: the next push starts a new stream (possibly with another batch size)."""
        self.stack.reset()
        self.held: torch.Tensor | None = None  # input kept back until the stream can start exactly
        self.started = self.start is StartMode.IMMEDIATE
        self.flushed = False
        self.batch: int | None = None

    def _check_batch(self, batch: int) -> None:
        if self.flushed:
            raise RuntimeError("This stream was flushed; call reset() to start a new one")
        if self.batch is None:
            self.batch = batch
        elif batch != self.batch:
            raise ValueError(f"This stream carries a batch of {self.batch}, got {batch}; call reset() to change it")

    def _feed(self, x: torch.Tensor, steps_per_frame: int, final: bool = False) -> torch.Tensor | None:
        """Run `x` through the stack; None while the start of an EXACT stream is held back."""
        if not self.started:
            self.held = x if self.held is None else torch.cat([self.held, x], dim=-1)
            if self.held.shape[-1] < self.frames_to_start * steps_per_frame and not final:
                return None
            x, self.held, self.started = self.held, None, True
        if final:
            self.flushed = True
        return self.stack.step(x, final)

    def _finish(self, channels: int, steps_per_frame: int) -> torch.Tensor | None:
        """End the stream: run the right-end padding through the stack and return what comes out."""
        if self.batch is None:
            raise RuntimeError("Nothing was pushed: there is no stream to flush")
        self._check_batch(self.batch)
        return self._feed(torch.zeros(self.batch, channels, 0), steps_per_frame, final=True)

    def state_dict(self) -> State:
        """A snapshot of the stream (tensors cloned): `load_state_dict` resumes exactly from here."""
        return {
            "stack": self.stack.get_state(),
            "held": None if self.held is None else self.held.clone(),
            "started": self.started,
            "flushed": self.flushed,
            "batch": self.batch,
            **self._extra_state(),
        }

    def load_state_dict(self, state: State) -> None:
        self.stack.set_state(state["stack"])
        self.held = None if state["held"] is None else state["held"].clone()
        self.started, self.flushed, self.batch = state["started"], state["flushed"], state["batch"]
        self._load_extra_state(state)

    def _extra_state(self) -> State:
        return {}

    def _load_extra_state(self, state: State) -> None:
        pass
