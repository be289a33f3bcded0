"""The streaming encoder and decoder steps as ONNX graphs, every piece of state an explicit input and output.

    python -m streaming.onnx_export --model default|DIR|hub id|.th --out DIR [--bandwidth 6 ...] [--search-width 1 ...]
                                    [--precision float32|int8]

One step is one 320-sample frame (one hop) of a causal model started with ``StartMode.IMMEDIATE``
(zeros before the stream): the encoder step takes the frame and the state, and returns the frame's
embedding, its residual-VQ codes (one graph per codebook count and search width: greedy, or the beam
search of ``codec.quantizer.residual_beam_search``) and the new state; the
decoder step takes one frame's codes (any number of codebooks) and the state, and returns 320 samples
and the new state. The state is what the streaming layers (``streaming.layers``) keep, in the order
``stateful_layers`` walks them: a causal conv's last ``kernel − stride`` input steps, a transposed
conv's overlap tail (without bias), each LSTM layer's h and c. The graphs read the weights the
streaming layers read (weight norm folded, the LSTM packed), exported with
``torch.onnx.export(..., dynamo=False, opset_version=17)``. The exact start, and the end of a stream
(its right-end padding), stay with the PyTorch layers: ``streaming.onnx_engine`` hands its state to
them for ``flush()``.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from codec import EncodecModel, load_model
from codec.conv import EncodecConv1d, EncodecConvTranspose1d
from codec.seanet import EncodecLSTM, EncodecResnetBlock

from .coder import check_streamable
from .frame_quantizer import FrameQuantizer
from .onnx_conv_int8 import calibration_streams, constant_values, conv_calibrations, int8_conv, quantizes
from .layers import (
    StreamingConv1d, StreamingConvTranspose1d, StreamingLSTM, StreamingStack, _packed_lstm, derived, folded_weight,
)

if TYPE_CHECKING:
    import onnx

OPSET = 17


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of a step graph: `(batch, *shape)` float32, zeros at the start of a stream."""

    name: str
    shape: tuple[int, ...]


def check_exportable(model: EncodecModel) -> None:
    """Raises ``ValueError`` where the step graphs cannot represent the model (the PyTorch path still can)."""
    check_streamable(model.config)
    for module in model.decoder.modules():
        if isinstance(module, EncodecConvTranspose1d) and module.trim_left:
            raise ValueError("trim_right_ratio < 1 delays the first samples: the ONNX step needs trim_right_ratio = 1")


POLYPHASE_MAX_STEPS = 40
"""Input steps up to which a transposed conv runs as a 2-D conv over its input (the phases of each output
channel as channels) rather than as ONNX ``ConvTranspose`` (measured, full-size: 79 against 125 µs on 8 steps
of 256 → 128 channels, 67 against 80 µs on 40 steps, a tie on 160 steps)."""


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """`F.conv1d` as a 2-D conv of height 1: ONNX Runtime runs 2-D convs in its blocked (NCHWc) layout with
    direct kernels, 1-D ones through im2col (measured: full-size encoder step 0.90×, bundled 0.92×)."""
    return F.conv2d(x.unsqueeze(2), weight.unsqueeze(2), bias, (1, stride), 0, (1, dilation)).squeeze(2)


def _stepped(x: torch.Tensor) -> torch.Tensor:
    """`x` as `(batch, channels, steps)`: a frame-rate `(batch, channels)` tensor gets its one step back
    (for a conv, which needs the steps axis)."""
    return x if x.dim() == 3 else x[..., None]


def _pointwise(module: nn.Module) -> bool:
    """A 1×1 conv: one input step to one output step, no state."""
    return isinstance(module, EncodecConv1d) and module.effective_kernel_size == 1 and module.stride == 1


def stateful_layers(stack: StreamingStack) -> Iterator[object]:
    """The streaming layers that keep state, in the order of the step graphs' state inputs."""
    for layer in stack.layers:
        if isinstance(layer, StreamingStack):
            yield from stateful_layers(layer)
        elif isinstance(layer, (StreamingConv1d, StreamingConvTranspose1d, StreamingLSTM)):
            yield layer


class _Step(nn.Module):
    """Runs a codec `layers` list on one frame from explicit state; the state order is `stateful_layers`'.

    The matrix products of one step (LSTM gates, the convs of one output step, the transposed convs of one
    input step: nearly all the weight bytes a frame reads) are MatMul, or with `products_as_convs` 1×1 convs:
    ONNX Runtime's native CPU builds run those in their blocked NCHWc layout, which reads the weights from
    memory faster than their MatMul does (measured, one thread, matrices far larger than the cache: 1024×2048
    26.0 against 21.3 GB/s, 4096×512 26.7 against 19.8, 704×1408 24.5 against 20.0). MatMul is what the int8
    variant's quantization reads (int8 ``ConvInteger`` measured slower) and what the browser's WASM build,
    which has no NCHWc, runs faster (page codec 8.5–9.9 against 9.9–15.1 ms a frame, noisy runs)."""

    def __init__(self, layers: nn.ModuleList, steps: int, products_as_convs: bool = False) -> None:
        super().__init__()
        self.specs: list[StateSpec] = []
        self._tensors = 0
        self.products_as_convs = products_as_convs
        # (kind, what it needs, input steps per frame) per layer; a resnet block holds two sub-plans
        self.plan: list[tuple[str, object, int]] = self._build(layers, steps)

    def _tensor(self, value: torch.Tensor) -> str:
        name = f"w{self._tensors}"
        self._tensors += 1
        self.register_buffer(name, value.detach().clone().contiguous(), persistent=False)
        return name

    def _matrix(self, matrix: torch.Tensor) -> str:
        """A `(in, out)` matrix of `_product`, held as its op reads it."""
        return self._tensor(matrix.t()[..., None, None] if self.products_as_convs else matrix)

    def _product(self, x: torch.Tensor, matrix: str, bias: str | None = None) -> torch.Tensor:
        """`x @ matrix (+ bias)` for `x` of `(batch, in)`."""
        weight, offset = getattr(self, matrix), None if bias is None else getattr(self, bias)
        if self.products_as_convs:
            return F.conv2d(x[..., None, None], weight, offset).flatten(1)
        return x @ weight if offset is None else x @ weight + offset

    def _state(self, prefix: str, shape: tuple[int, ...]) -> None:
        self.specs.append(StateSpec(f"{prefix}{len(self.specs)}", shape))

    def _build(self, layers: nn.ModuleList, steps: int) -> list:
        plan = []
        for module in layers:
            if isinstance(module, EncodecConv1d):
                weight = folded_weight(module.conv)
                padding = module.padding_total
                if padding:
                    self._state("conv", (weight.shape[1], padding))
                out_steps = steps // module.stride
                if out_steps == 1 and module.conv.dilation[0] == 1:
                    # One output step reads exactly its input window: one product (ONNX Runtime's Conv costs several)
                    plan.append(("windows", (self._matrix(weight.reshape(weight.shape[0], -1).t()), self._tensor(module.conv.bias),
                                             padding), steps))
                else:
                    plan.append(("conv", (self._tensor(weight), self._tensor(module.conv.bias), module.stride,
                                          module.conv.dilation[0], padding), steps))
                steps //= module.stride
            elif isinstance(module, EncodecConvTranspose1d):
                weight = folded_weight(module.conv)
                overlap = module.conv.kernel_size[0] - module.stride
                self._state("tail", (weight.shape[1], overlap))
                if steps == 1 and overlap == module.stride:
                    matrix = weight.reshape(weight.shape[0], -1)  # (in, out × kernel)
                    plan.append(("transposed", (self._matrix(matrix), self._tensor(module.conv.bias), module.stride), steps))
                elif steps <= POLYPHASE_MAX_STEPS and overlap == module.stride:
                    # Output channel o, phase j ← taps (earlier step: W[:, o, j + stride], this step: W[:, o, j])
                    taps = torch.stack([weight[:, :, module.stride :], weight[:, :, : module.stride]], dim=-1)
                    phases = taps.permute(1, 2, 0, 3).reshape(-1, weight.shape[0], 2)
                    plan.append(("polyphase", (self._tensor(phases), self._tensor(module.conv.bias), module.stride, overlap), steps))
                else:
                    plan.append(("convtranspose", (self._tensor(weight), self._tensor(module.conv.bias), module.stride, overlap), steps))
                steps *= module.stride
            elif isinstance(module, EncodecLSTM):
                lstm = module.lstm
                packed = derived(lstm, "packed", lambda: _packed_lstm(lstm))
                names = []
                for weight, bias in packed:
                    self._state("h", (lstm.hidden_size,))
                    self._state("c", (lstm.hidden_size,))
                    names.append((self._matrix(weight), self._tensor(bias)))
                plan.append(("lstm", (names, lstm.hidden_size), steps))
            elif isinstance(module, nn.ELU):
                plan.append(("elu", None, steps))
            elif isinstance(module, EncodecResnetBlock) and _pointwise(module.block[-1]) and _pointwise(module.shortcut):
                # The branch's last 1×1 conv and the 1×1 shortcut as one conv over both inputs stacked: a Concat
                # instead of a Conv and an Add (measured 2–3 % of the bundled model's steps)
                last, shortcut = module.block[-1].conv, module.shortcut.conv
                weight = torch.cat([folded_weight(last), folded_weight(shortcut)], dim=1)
                plan.append(("folded", (self._build(module.block[:-1], steps), self._tensor(weight),
                                        self._tensor(last.bias + shortcut.bias)), steps))
            elif isinstance(module, EncodecResnetBlock):
                block = self._build(module.block, steps)
                shortcut = None
                if not isinstance(module.shortcut, nn.Identity):
                    shortcut = self._build(nn.ModuleList([module.shortcut]), steps)
                plan.append(("resnet", (block, shortcut), steps))
            else:
                raise TypeError(f"No ONNX step for {type(module).__name__}")
        return plan

    def _run(self, plan: list, x: torch.Tensor, states: Iterator[torch.Tensor], new: list[torch.Tensor]) -> torch.Tensor:
        """`x` is `(batch, channels, steps)`, or `(batch, channels)` at the frame rate (one step a frame): the
        layers there (LSTM, bottleneck convs, quantizer) then need no Gather, Unsqueeze or Transpose nodes."""
        for kind, spec, steps in plan:
            if kind in ("conv", "windows"):
                padding = spec[-1]
                x = _stepped(x)
                if padding:
                    full = torch.cat([next(states), x], dim=-1)
                    new.append(full[..., steps:])
                else:
                    full = x
                if kind == "conv":
                    weight, bias, stride, dilation, _ = spec
                    x = _conv(full, getattr(self, weight), getattr(self, bias), stride, dilation)
                else:  # one output step: the whole input window, (in, kernel) flattened, is the product's row
                    matrix, bias, _ = spec
                    x = self._product(full.reshape(full.shape[0], -1), matrix, bias)
            elif kind == "transposed":  # one input step: one product holds the frame's samples and the next tail
                matrix, bias, stride = spec
                columns = self._product(x, matrix).reshape(x.shape[0], -1, 2 * stride)
                head, tail = columns.split(stride, dim=-1)
                new.append(tail)
                x = head + next(states) + getattr(self, bias).view(1, -1, 1)
            elif kind in ("convtranspose", "polyphase"):
                weight, bias, stride, overlap = spec
                if kind == "convtranspose":
                    full = F.conv_transpose1d(x, getattr(self, weight), None, stride)
                else:  # a conv of kernel 2 over the input padded by a zero step each side, then its phases interleaved
                    phases = _conv(F.pad(x, (1, 1)), getattr(self, weight), None)  # (batch, out × stride, steps + 1)
                    full = phases.reshape(x.shape[0], -1, stride, steps + 1).transpose(2, 3).reshape(x.shape[0], -1, (steps + 1) * stride)
                body, tail = (full + F.pad(next(states), (0, steps * stride))).split([steps * stride, overlap], dim=-1)
                new.append(tail)
                x = body + getattr(self, bias).view(1, -1, 1)
            elif kind == "lstm":
                names, size = spec
                inputs = [x] if x.dim() == 2 else [x[..., t] for t in range(steps)]
                outputs = []
                hidden = [(next(states), next(states)) for _ in names]
                updated = [None] * len(names)
                for h in inputs:
                    for i, (weight, bias) in enumerate(names):
                        h_prev, c_prev = updated[i] or hidden[i]
                        gates = self._product(torch.cat([h, h_prev], dim=1), weight, bias)
                        sigmoids = torch.sigmoid(gates[:, : 3 * size])
                        c = sigmoids[:, size : 2 * size] * c_prev + sigmoids[:, :size] * torch.tanh(gates[:, 3 * size :])
                        h = sigmoids[:, 2 * size :] * torch.tanh(c)
                        updated[i] = (h, c)
                    outputs.append(h)
                for h, c in updated:
                    new += [h, c]
                x = (outputs[0] if x.dim() == 2 else torch.stack(outputs, dim=-1)) + x
            elif kind == "elu":
                # ONNX Runtime's Elu is not vectorized: on a few thousand values it costs 2.4× this equivalent
                # max(x, min(eˣ − 1, 0)) (as Elu, eˣ − 1; measured 13.7 against 5.6 µs on 22 × 320 values), which
                # only loses on the frame rate's few hundred (1.2 against 1.7 µs on 352)
                x = F.elu(x) if x.dim() == 2 else torch.maximum(x, (torch.exp(x) - 1).clamp(max=0))
            elif kind == "folded":
                branch, weight, bias = spec
                x = _stepped(x)
                x = _conv(torch.cat([self._run(branch, x, states, new), x], dim=1), getattr(self, weight), getattr(self, bias))
            else:  # resnet
                block, shortcut = spec
                residual = self._run(block, x, states, new)
                x = residual + (self._run(shortcut, x, states, new) if shortcut else x)
        return x


class EncoderStep(_Step):
    """(audio `(batch, channels, hop)`, *state) → (embeddings `(batch, dim)`, [codes `(batch, n_q)`,] *new state)."""

    def __init__(
        self, model: EncodecModel, num_codebooks: int | None = None, search_width: int = 1, products_as_convs: bool = False
    ) -> None:
        super().__init__(model.encoder.layers, model.config.hop_length, products_as_convs)
        self.num_codebooks, self.search_width = num_codebooks, search_width
        if num_codebooks:
            quantizer = FrameQuantizer(model)
            for q in range(num_codebooks):
                self.register_buffer(f"embed{q}", quantizer.embeds[q], persistent=False)
                self.register_buffer(f"minus_2_embed_t{q}", -2 * quantizer.transposed[q], persistent=False)
                self.register_buffer(f"sqnorm{q}", quantizer.sqnorms[q], persistent=False)

    def forward(self, audio: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new: list[torch.Tensor] = []
        embeddings = self._run(self.plan, audio, iter(state), new)
        if not self.num_codebooks:
            return (embeddings, *new)
        if self.search_width > 1:
            return (embeddings, self._beam_search(embeddings), *new)
        residual, codes = embeddings, []
        for q in range(self.num_codebooks):  # as `codec.quantizer.nearest_entries`, the greedy residual VQ
            # Without |r|², which ``nearest_entries`` adds: the same for every entry, so the same argmin but
            # for float near-ties (measured: none over 2 × 360 frames of speech, bundled and full-size
            # models). −2 is folded into the codebook (exactly: a power of two), so that MatMul + Add is one Gemm
            # in ONNX Runtime, and a MatMul for the int8 quantizer.
            indices = (residual @ getattr(self, f"minus_2_embed_t{q}") + getattr(self, f"sqnorm{q}")).argmin(dim=-1)
            codes.append(indices)
            if q + 1 < self.num_codebooks:
                residual = residual - getattr(self, f"embed{q}")[indices]
        return (embeddings, torch.cat(codes).reshape(self.num_codebooks, -1).t(), *new)

    def _beam_search(self, embeddings: torch.Tensor) -> torch.Tensor:
        """`codec.quantizer.residual_beam_search`, written out for the graph (the first stage has one candidate)."""
        width, dim = self.search_width, embeddings.shape[1]
        residual, paths = embeddings[:, None, :], None  # (batch, candidates, dim), (batch, candidates, stages)
        for q in range(self.num_codebooks):
            embed = getattr(self, f"embed{q}")
            dist = residual.pow(2).sum(-1, keepdim=True) + residual @ getattr(self, f"minus_2_embed_t{q}") + getattr(self, f"sqnorm{q}")
            size = embed.shape[0]
            best = dist.reshape(dist.shape[0], -1).topk(min(width, residual.shape[1] * size), dim=1, largest=False).indices
            parent, entry = best // size, best % size
            residual = residual.gather(1, parent[..., None].expand(-1, -1, dim)) - embed[entry]
            if paths is None:
                paths = entry[..., None]
            else:
                paths = torch.cat([paths.gather(1, parent[..., None].expand(-1, -1, paths.shape[-1])), entry[..., None]], dim=-1)
        return paths[:, 0]


class DecoderStep(_Step):
    """(codes `(batch, n_q)` int64, any n_q, *state) → (audio `(batch, channels, hop)`, *new state)."""

    def __init__(self, model: EncodecModel, products_as_convs: bool = False) -> None:
        super().__init__(model.decoder.layers, 1, products_as_convs)
        embeds = FrameQuantizer(model).embeds
        self.register_buffer("table", torch.cat(embeds).contiguous(), persistent=False)
        self.size = model.config.codebook_size

    def forward(self, codes: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        offsets = torch.arange(codes.shape[1], dtype=torch.int64) * self.size
        embeddings = self.table[codes + offsets].sum(dim=1)
        new: list[torch.Tensor] = []
        audio = self._run(self.plan, embeddings, iter(state), new)
        return (audio, *new)


GRAPH_FORMAT = 5
"""Version of what the graphs compute and how (part of their cache folder's name): bump it with any change
to the export, so that graphs cached by an older version are not used."""
PRECISIONS = ("float32", "int8")
"""Weights of the step graphs: ``int8`` is the opt-in lighter variant for models whose weights exceed the
cache (``quantized_int8``); the codes it sends are the same format, for any peer to decode."""


def graph_name(kind: str, num_codebooks: int | None = None, search_width: int = 1, precision: str = "float32") -> str:
    """File name of a step graph: `encoder` (embeddings), `encoder_q8` (and 8 greedy codes), `encoder_q8_w4`
    (8 codes of a width-4 search), `decoder`; `_int8` after the name for int8 weights."""
    name = kind
    if num_codebooks:
        name += f"_q{num_codebooks}" + (f"_w{search_width}" if search_width > 1 else "")
    return name + ("" if precision == "float32" else f"_{precision}") + ".onnx"


BLOCK_INPUTS = 128
"""Inputs per scale of the large matrices (``MatMulNBits``' block size)."""
BLOCKWISE_MIN_WEIGHTS = 1 << 20
"""Matrices of at least this many weights (4 MB in float32: the full-size model's LSTMs, its stride-8 conv and
first transposed conv, 6 of them a frame) are ``MatMulNBits`` blocks of `BLOCK_BITS`, whose kernel streams them
from memory faster than ``quantize_dynamic``'s per-tensor ``DynamicQuantizeMatMul`` (8-bit blocks: full-size
encoder + decoder step 0.90× the time, same run); the smaller ones stay ``DynamicQuantizeMatMul``, faster where
they come from the cache (the bundled model's 1 M-weight matrices as 8-bit ``MatMulNBits``: its step pair 1.03×)."""


BLOCK_BITS = 4
"""Bits of the large matrices' weights. A 1024 × 2048 matrix read from memory (one thread, 16 distinct copies
in turn): 4-bit blocks of 128 in 52 µs, 8-bit in 78 µs (4-bit blocks of 32: 86 µs, its scales cost more than the
halved weights save); from the cache both take 36 µs. Real speech, bundled model with its matrices of ≥ 0.5 M
weights (the same layers: LSTMs, stride-8 conv, first transposed conv) in 4-bit blocks: STOI 0.8814 (encoder)
and 0.8830 (decoder) against 0.8840 float32, 0.8837 and 0.8840 with 8-bit blocks (13 files, 6 kbps)."""


def _blocks(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """`(in, out)` float32 weights as ``MatMulNBits`` reads `bits`-bit ones: per output, blocks of `BLOCK_INPUTS`
    inputs with one scale each, symmetric about the op's default zero point (2^(bits − 1)); 4-bit values two to
    a byte, the first in the low half."""
    rows, columns = weight.shape
    blocks = -(-rows // BLOCK_INPUTS)
    padded = np.zeros((columns, blocks * BLOCK_INPUTS), np.float32)
    padded[:, :rows] = weight.T
    padded = padded.reshape(columns, blocks, BLOCK_INPUTS)
    largest = 2 ** (bits - 1) - 1
    scales = np.abs(padded).max(axis=-1) / largest
    scales[scales == 0] = 1
    values = (np.clip(np.round(padded / scales[..., None]), -largest, largest) + largest + 1).astype(np.uint8)
    if bits == 4:
        values = values[..., 0::2] | (values[..., 1::2] << 4)
    return values, scales.astype(np.float32).reshape(-1)


def _blockwise(node: onnx.NodeProto, weight: np.ndarray, graph: onnx.ModelProto) -> onnx.NodeProto:
    """`node`, a MatMul by the constant `weight`, as ``MatMulNBits`` with `BLOCK_BITS`-bit blocks (its
    activations quantized to int8 per block at run time: ``accuracy_level`` 4), the weights stored in `graph`."""
    from onnx import helper, numpy_helper

    values, scales = _blocks(weight, BLOCK_BITS)
    name = node.input[1]
    graph.graph.initializer.extend([numpy_helper.from_array(values, f"{name}_blocks"), numpy_helper.from_array(scales, f"{name}_scales")])
    return helper.make_node(
        "MatMulNBits", [node.input[0], f"{name}_blocks", f"{name}_scales"], list(node.output), name=node.name,
        domain="com.microsoft", K=weight.shape[0], N=weight.shape[1], bits=BLOCK_BITS, block_size=BLOCK_INPUTS, accuracy_level=4,
    )


def quantized_int8(graph: onnx.ModelProto, path: str | os.PathLike, calibration: list[list[np.ndarray]], audio_channels: int) -> None:
    """Writes `graph` with the weights of its matrix products (convs of one output step, transposed convs of
    one input step, LSTMs, the codebook search) as int8: a frame reads a quarter of the bytes or less. The large
    ones 4-bit with a scale per block of inputs (``MatMulNBits``, see `BLOCKWISE_MIN_WEIGHTS`), the others
    dynamically quantized per tensor (ONNX Runtime's ``quantize_dynamic``). Most convs over many steps run as
    int8 ``QLinearConv``, their output scales measured on the `calibration` streams (the step graph's first
    input, frame by frame: ``streaming.onnx_conv_int8``). The search in int8 measured 15 % faster than in float32 (full-size encoder
    step 0.96 against 1.13 ms) at no cost on real speech (bundled model, STOI 0.8839 against 0.8838 at 6
    kbps, 0.9034 against 0.9027 at 12 kbps)."""
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    calibrations = iter(conv_calibrations(graph, calibration))
    # The exporter writes constant tensors as Constant nodes; the quantizer reads weights from initializers.
    values = constant_values(graph)
    constants = {name: value for name, value in values.items() if value.ndim >= 2}
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    for node in nodes:
        weight = constants.get(node.input[1]) if node.op_type in ("MatMul", "Conv") else None
        found = next(calibrations) if node.op_type == "Conv" else None
        if found and weight is not None and quantizes(weight, found, audio_channels):
            bias = values[node.input[2]] if len(node.input) > 2 else None
            graph.graph.node.extend(int8_conv(node, weight, bias, found, graph))
        elif node.op_type == "MatMul" and weight is not None and weight.ndim == 2 and weight.size >= BLOCKWISE_MIN_WEIGHTS:
            graph.graph.node.append(_blockwise(node, weight, graph))
        elif node.output[0] not in constants:
            graph.graph.node.append(node)
    used = {name for node in graph.graph.node for name in node.input}
    graph.graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in constants.items() if name in used)
    graph.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    logging.disable(logging.WARNING)  # quiets its advice, on every call, to pre-process (shape inference) the graph
    try:
        quantize_dynamic(graph, path, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8,
                         extra_options={"MatMulConstBOnly": True})
    finally:
        logging.disable(logging.NOTSET)


def export_step(
    model: EncodecModel, path: str | os.PathLike, kind: str, num_codebooks: int | None = None, search_width: int = 1,
    precision: str = "float32", nchwc: bool = True,
) -> Path:
    """Writes one step graph to `path` (atomically: a half-written file is never seen) and returns it.
    `nchwc`: for a runtime with ONNX Runtime's NCHWc kernels (its native CPU builds, not the browser's WASM):
    a float32 graph's matrix products are then 1×1 convs (see `_Step`)."""
    check_exportable(model)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    config = model.config
    products_as_convs = nchwc and precision == "float32"
    step: _Step
    if kind == "encoder":
        step = EncoderStep(model, num_codebooks, search_width, products_as_convs)
        example = torch.zeros(1, config.audio_channels, config.hop_length)
        inputs, outputs = ["audio"], ["embeddings"] + (["codes"] if num_codebooks else [])
    elif kind == "decoder":
        step = DecoderStep(model, products_as_convs)
        example = torch.zeros(1, num_codebooks or 1, dtype=torch.int64)
        inputs, outputs = ["codes"], ["audio"]
    else:
        raise ValueError(f"kind must be 'encoder' or 'decoder', got {kind!r}")
    states = [torch.zeros(1, *spec.shape) for spec in step.specs]
    state_names = [spec.name for spec in step.specs]
    inputs += state_names
    outputs += [f"new_{name}" for name in state_names]
    dynamic = {name: {0: "batch"} for name in inputs + outputs}
    if kind == "decoder":
        dynamic["codes"] = {0: "batch", 1: "codebooks"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                step.eval(), (example, *states), temporary, input_names=inputs, output_names=outputs,
                dynamic_axes=dynamic, opset_version=OPSET, dynamo=False, do_constant_folding=True,
            )
        if precision == "int8":
            import onnx

            quantized_int8(onnx.load(temporary), temporary, calibration_streams(model, kind), config.audio_channels)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def state_specs(model: EncodecModel, kind: str) -> list[StateSpec]:
    """The state inputs of a step graph, in order (what an engine allocates, zeros, per stream); once per model."""
    if kind == "encoder":
        return derived(model.encoder, "onnx_state", lambda: EncoderStep(model).specs)
    return derived(model.decoder, "onnx_state", lambda: DecoderStep(model).specs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default", help="default (the bundled model), a checkpoint dir, a hub id or a Meta .th file")
    parser.add_argument("--out", required=True, help="directory for the .onnx files")
    parser.add_argument(
        "--bandwidth", type=float, action="append",
        help="an encoder graph with the quantizer for this bandwidth (repeatable; default: every bandwidth of the model)",
    )
    parser.add_argument(
        "--search-width", type=int, action="append",
        help="codebook search width of the encoder graphs (repeatable; default: 1 and 4, what calls use)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="weights: float32, or int8 (the lighter variant for models larger than the cache)")
    args = parser.parse_args(argv)
    try:
        model = load_model(args.model).eval()
        check_exportable(model)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    out = Path(args.out)
    counts = sorted({model.config.num_quantizers_for_bandwidth(b) for b in (args.bandwidth or model.config.target_bandwidths)})
    widths = sorted(set(args.search_width or [1, 4]))
    precision = args.precision
    written = [export_step(model, out / graph_name("decoder", precision=precision), "decoder", precision=precision)]
    written += [export_step(model, out / graph_name("encoder", n, w, precision), "encoder", n, w, precision)
                for n in counts for w in widths]
    for path in written:
        print(f"{path}  {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
