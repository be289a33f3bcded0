"""Streaming counterparts of the codec's modules: each wraps one codec module and owns its state.

A streaming layer is fed blocks of its input along time and returns every output step that the block
completed. `final=True` ends the stream and applies the right-end padding the offline model applies to
the whole signal, so that a stream and the offline model give the same result. The layers read the
codec modules' weights; weight norm is folded once (a derived cache, never written back).

Start of a stream: offline, a causal conv pads its left end (reflect-padding mirrors the first input
steps). `exact_start=True` reproduces that padding, which needs the layer's first block to hold more
than `padding_total` steps (the owner of the stack guarantees it by holding the first frames);
`exact_start=False` pads with zeros and needs nothing.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from codec.conv import EncodecConv1d, EncodecConvTranspose1d, extra_padding_for_conv1d, pad1d
from codec.seanet import EncodecLSTM, EncodecResnetBlock

State = dict[str, object]
T = TypeVar("T")


def _clone(value: object) -> object:
    return value.clone() if isinstance(value, torch.Tensor) else value


class StreamingLayer:
    """Interface: `step(x, final)`, and state that can be dropped, snapshotted and restored."""

    input_stride: int = 1  # samples of audio per input step, set by the stack that owns the layer

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def get_state(self) -> State:
        return {k: _clone(v) for k, v in vars(self.state).items()}

    def set_state(self, state: State) -> None:
        for key, value in state.items():
            setattr(self.state, key, _clone(value))

    def frames_to_start(self, hop_length: int) -> int:
        """Frames of audio the layer's first block needs for an exact start (0 if it needs none)."""
        return 0


_DERIVED: "weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[tuple[int, ...], object]]]" = weakref.WeakKeyDictionary()


def derived(module: nn.Module, kind: str, build: Callable[[], T]) -> T:
    """Tensors derived from a codec module's parameters (folded weight norm, transposed layouts).

    Built once per model and shared by every stream of that model, so that a decoder per remote
    peer does not copy the weights again; rebuilt if the parameters or buffers (codebooks) were
    modified in place since.
    """
    versions = tuple(t._version for t in itertools.chain(module.parameters(), module.buffers()))
    cache = _DERIVED.setdefault(module, {})
    if kind not in cache or cache[kind][0] != versions:
        with torch.no_grad():
            cache[kind] = (versions, build())
    return cache[kind][1]  # type: ignore[return-value]


def folded_weight(conv: nn.Module) -> torch.Tensor:
    """The conv's effective weight, with weight norm evaluated once."""
    return derived(conv, "weight", lambda: conv.weight.detach().clone())


MATRIX_MAX_STEPS = 64
"""Output steps up to which a conv runs as one matrix product (measured on one CPU thread)."""


def matrix_for(module: EncodecConv1d) -> torch.Tensor:
    """The conv's weight as a contiguous (in × kernel, out) matrix: the layout that a row of
    unfolded input windows multiplies fastest (it streams the weights in memory order)."""
    weight = folded_weight(module.conv)
    return derived(module.conv, "matrix", lambda: weight.view(weight.shape[0], -1).t().contiguous())


@dataclass
class _ConvState:
    buffer: torch.Tensor | None = None  # inputs not yet consumed, left padding included
    seen: int = 0  # input steps received since the start


class StreamingConv1d(StreamingLayer):
    def __init__(self, module: EncodecConv1d, exact_start: bool) -> None:
        if module.norm is not None:
            raise ValueError("time_group_norm normalises over the whole signal and cannot stream")
        if not module.causal:
            raise ValueError("only causal convolutions can stream")
        self.module = module
        self.weight = folded_weight(module.conv)
        self.bias = module.conv.bias.detach()
        self.stride = module.stride
        self.dilation = module.conv.dilation[0]
        self.kernel = module.effective_kernel_size
        self.padding = module.padding_total
        self.exact_start = exact_start
        use_matrix = self.dilation == 1 and self.weight.shape[0] > 1
        self.matrix = matrix_for(module) if use_matrix else None
        self.state = _ConvState()

    def reset(self) -> None:
        self.state = _ConvState()

    def frames_to_start(self, hop_length: int) -> int:
        if not self.exact_start or self.module.pad_mode == "constant":
            return 0
        return -(-(self.padding + 1) * self.input_stride // hop_length)

    def _left_pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.exact_start:
            return pad1d(x, (self.padding, 0), self.module.pad_mode)
        return F.pad(x, (self.padding, 0))

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        state = self.state
        length = x.shape[-1]
        if state.buffer is None:
            if length == 0:
                return x.new_empty(x.shape[0], self.weight.shape[0], 0)
            if final:  # the whole stream in one block: pad exactly as offline
                left, right = self.module.paddings(length)
                padded = pad1d(x, (left, right), self.module.pad_mode)
                if not self.exact_start:
                    padded = torch.cat([torch.zeros_like(padded[..., :left]), padded[..., left:]], dim=-1)
                state.seen = length
                return F.conv1d(padded, self.weight, self.bias, self.stride, 0, self.dilation)
            buffer = self._left_pad(x)
        else:
            buffer = torch.cat([state.buffer, x], dim=-1) if length else state.buffer
        state.seen += length
        if final:
            extra = extra_padding_for_conv1d(state.seen, self.kernel, self.stride, self.padding)
            buffer = pad1d(buffer, (0, extra), self.module.pad_mode)
        usable = buffer.shape[-1] - self.kernel
        if usable < 0:
            state.buffer = buffer
            return buffer.new_empty(buffer.shape[0], self.weight.shape[0], 0)
        steps = usable // self.stride + 1
        out = self._convolve(buffer[..., : (steps - 1) * self.stride + self.kernel], steps)
        state.buffer = buffer[..., steps * self.stride :]
        return out

    def _convolve(self, x: torch.Tensor, steps: int) -> torch.Tensor:
        """One matrix product over unfolded windows where that beats `conv1d`'s per-call set-up.

        On a few output steps (the low-rate layers of a 320-sample frame) oneDNN's convolution costs
        several times the product itself; on many steps, or for a 1-channel output, `conv1d` wins.
        """
        if self.matrix is None or steps > MATRIX_MAX_STEPS:
            return F.conv1d(x, self.weight, self.bias, self.stride, 0, self.dilation)
        windows = x.unfold(2, self.kernel, self.stride).transpose(1, 2).reshape(x.shape[0] * steps, -1)
        out = torch.addmm(self.bias, windows, self.matrix)
        return out.view(x.shape[0], steps, -1).transpose(1, 2)


class StreamingPointwiseConv1d(StreamingLayer):
    """A 1×1 conv has no context to keep: a matrix product per step."""

    def __init__(self, module: EncodecConv1d) -> None:
        self.matrix = matrix_for(module)
        self.bias = module.conv.bias.detach()
        self.state = _NoState()

    def reset(self) -> None:
        pass

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        batch, channels, steps = x.shape
        rows = x.transpose(1, 2).reshape(batch * steps, channels)
        return torch.addmm(self.bias, rows, self.matrix).view(batch, steps, self.matrix.shape[1]).transpose(1, 2)


@dataclass
class _NoState:
    pass


@dataclass
class _TransposedState:
    tail: torch.Tensor | None = None  # overlap of the last block's output with the next, without bias
    to_trim: int = 0  # output steps still to drop at the start


class StreamingConvTranspose1d(StreamingLayer):
    def __init__(self, module: EncodecConvTranspose1d) -> None:
        if module.norm is not None:
            raise ValueError("time_group_norm normalises over the whole signal and cannot stream")
        self.module = module
        self.weight = folded_weight(module.conv)
        self.bias = module.conv.bias.detach().view(1, -1, 1)
        self.stride = module.stride
        self.overlap = module.conv.kernel_size[0] - module.stride
        self.state = _TransposedState(to_trim=module.trim_left)

    def reset(self) -> None:
        self.state = _TransposedState(to_trim=self.module.trim_left)

    def _transpose_convolve(self, x: torch.Tensor) -> torch.Tensor:
        """`conv_transpose1d` without bias, as one matrix product plus overlap-add when the kernel is a
        multiple of the stride (always, in EnCodec): several times cheaper on a few input steps."""
        kernel = self.weight.shape[-1]
        batch, _, steps = x.shape
        if kernel % self.stride or steps > MATRIX_MAX_STEPS:
            return F.conv_transpose1d(x, self.weight, None, self.stride)
        out_channels, parts = self.weight.shape[1], kernel // self.stride
        columns = torch.matmul(x.transpose(1, 2), self.weight.view(self.weight.shape[0], -1))
        columns = columns.view(batch, steps, out_channels, parts, self.stride)
        out = x.new_zeros(batch, out_channels, steps + parts - 1, self.stride)
        for part in range(parts):
            out[:, :, part : part + steps] += columns[:, :, :, part].transpose(1, 2)
        return out.view(batch, out_channels, -1)

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        state = self.state
        steps = x.shape[-1]
        if steps:
            # No bias here: the overlap tail is added to the next block, whose output has its own bias.
            full = self._transpose_convolve(x)
            if state.tail is not None:
                full[..., : self.overlap] += state.tail
            state.tail = full[..., steps * self.stride :]
            out = full[..., : steps * self.stride]
        else:
            out = x.new_empty(x.shape[0], self.weight.shape[1], 0)
        if final and state.tail is not None:
            out = torch.cat([out, state.tail[..., : self.module.trim_left]], dim=-1)
        out = out + self.bias
        if state.to_trim:
            trimmed = min(state.to_trim, out.shape[-1])
            out, state.to_trim = out[..., trimmed:], state.to_trim - trimmed
        return out


@dataclass
class _LSTMState:
    hidden: list[torch.Tensor] = field(default_factory=list)  # (h, c) per layer, (batch, dim) each
    cell: list[torch.Tensor] = field(default_factory=list)


def _packed_lstm(lstm: nn.LSTM) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: [W_ih; W_hh] transposed into one contiguous (input + hidden, 4 × hidden) matrix
    and the two biases summed, so that a step is one matrix product per layer. The gate columns
    are reordered from PyTorch's (i, f, g, o) to (i, f, o, g): one sigmoid then covers the three
    sigmoid gates."""
    size = lstm.hidden_size
    order = torch.cat([torch.arange(0, 2 * size), torch.arange(3 * size, 4 * size), torch.arange(2 * size, 3 * size)])
    return [
        (
            torch.cat([getattr(lstm, f"weight_ih_l{i}"), getattr(lstm, f"weight_hh_l{i}")], dim=1)[order].t().contiguous(),
            (getattr(lstm, f"bias_ih_l{i}") + getattr(lstm, f"bias_hh_l{i}"))[order],
        )
        for i in range(lstm.num_layers)
    ]


class StreamingLSTM(StreamingLayer):
    """Steps the LSTM cell by hand: `nn.LSTM` on a single step costs milliseconds of set-up."""

    def __init__(self, module: EncodecLSTM) -> None:
        lstm = module.lstm
        self.hidden_size = lstm.hidden_size
        self.layers = derived(lstm, "packed", lambda: _packed_lstm(lstm))
        self.state = _LSTMState()

    def reset(self) -> None:
        self.state = _LSTMState()

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        state = self.state
        if not state.hidden:
            zeros = x.new_zeros(x.shape[0], x.shape[1])
            state.hidden = [zeros] * len(self.layers)
            state.cell = [zeros] * len(self.layers)
        outputs = []
        size = self.hidden_size
        for t in range(x.shape[-1]):
            h = x[..., t]
            for i, (weight, bias) in enumerate(self.layers):
                gates = torch.addmm(bias, torch.cat([h, state.hidden[i]], dim=1), weight)
                sigmoids = torch.sigmoid(gates[:, : 3 * size])
                in_gate, forget_gate, out_gate = sigmoids[:, :size], sigmoids[:, size : 2 * size], sigmoids[:, 2 * size :]
                c = forget_gate * state.cell[i] + in_gate * torch.tanh(gates[:, 3 * size :])
                h = out_gate * torch.tanh(c)
                state.hidden[i], state.cell[i] = h, c
            outputs.append(h)
        if not outputs:
            return x
        return torch.stack(outputs, dim=-1) + x

    def get_state(self) -> State:
        return {"hidden": [h.clone() for h in self.state.hidden], "cell": [c.clone() for c in self.state.cell]}

    def set_state(self, state: State) -> None:
        self.state = _LSTMState([h.clone() for h in state["hidden"]], [c.clone() for c in state["cell"]])


class StreamingELU(StreamingLayer):
    state = _NoState()

    def reset(self) -> None:
        pass

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        return F.elu(x)


class StreamingStack(StreamingLayer):
    """Layers applied in order; also the residual branch of a resnet block."""

    def __init__(self, layers: list[StreamingLayer]) -> None:
        self.layers = layers

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        for layer in self.layers:
            x = layer.step(x, final)
        return x

    def get_state(self) -> State:
        return {"layers": [layer.get_state() for layer in self.layers]}

    def set_state(self, state: State) -> None:
        for layer, layer_state in zip(self.layers, state["layers"]):
            layer.set_state(layer_state)

    def frames_to_start(self, hop_length: int) -> int:
        return max((layer.frames_to_start(hop_length) for layer in self.layers), default=0)


class StreamingResnetBlock(StreamingStack):
    """Residual branch plus shortcut. All their convs have stride 1, so both emit the same steps."""

    def __init__(self, block: StreamingStack, shortcut: StreamingLayer | None) -> None:
        super().__init__([block] + ([shortcut] if shortcut else []))
        self.block, self.shortcut = block, shortcut

    def step(self, x: torch.Tensor, final: bool = False) -> torch.Tensor:
        residual = self.block.step(x, final)
        return residual + (self.shortcut.step(x, final) if self.shortcut else x)


def streaming_stack(modules: nn.ModuleList, exact_start: bool, input_stride: int = 1) -> StreamingStack:
    """Streaming twin of a codec `layers` list (encoder, decoder or resnet branch)."""
    layers: list[StreamingLayer] = []
    for module in modules:
        layer: StreamingLayer
        if isinstance(module, EncodecConv1d):
            if module.effective_kernel_size == 1 and module.stride == 1:
                layer = StreamingPointwiseConv1d(module)
            else:
                layer = StreamingConv1d(module, exact_start)
        elif isinstance(module, EncodecConvTranspose1d):
            layer = StreamingConvTranspose1d(module)
        elif isinstance(module, EncodecLSTM):
            layer = StreamingLSTM(module)
        elif isinstance(module, nn.ELU):
            layer = StreamingELU()
        elif isinstance(module, EncodecResnetBlock):
            shortcut = None if isinstance(module.shortcut, nn.Identity) else streaming_stack(
                nn.ModuleList([module.shortcut]), exact_start, input_stride
            )
            layer = StreamingResnetBlock(streaming_stack(module.block, exact_start, input_stride), shortcut)
        else:
            raise TypeError(f"No streaming version of {type(module).__name__}")
        layer.input_stride = input_stride
        layers.append(layer)
        if isinstance(module, EncodecConv1d):
            input_stride *= module.stride
        elif isinstance(module, EncodecConvTranspose1d):
            input_stride //= module.stride
    return StreamingStack(layers)
