"""The int8 step graphs' convs over many steps as ``QLinearConv``: int8 weights (a scale per output channel), the
input quantized to uint8 every frame with that frame's range (``DynamicQuantizeLinear``), the output's scale that
input scale times a ratio measured once, at export, by running the float32 graph on music.

ONNX Runtime's int8 conv kernels do these convs' arithmetic faster than its float32 ones (full-size shapes, one
thread, with the quantization nodes around them: 0.46–0.79× the float32 ``Conv`` for kernels of 3 to 10 at 8–160
steps). A scale fixed at export for the input too (``QuantizeLinear``, no per-frame range) was faster still but
cost real speech 0.007–0.03 STOI (bundled model, 6 kbps): a fixed step is coarse for quiet passages, which a
frame's own range follows. Left float32: the convs that read or write audio (the encoder's first, the decoder's
last: 8-bit audio would be heard), those over more than `DYNAMIC_MAX_STEPS` steps (1.15–1.23× the float32 time
as int8) and the 1×1 convs (with them and the 320-step ones as int8 too, PESQ-WB lost 0.03 at 6 kbps for no
measurable speed in the step graphs).

The calibration signal is 5 s of music (``calibration_music.flac``: seconds 10–15 of ``test_24k.wav`` from the
``encodec`` 0.1.1 source distribution on PyPI, MIT licence), never speech, so that the speech that judges the
variant's quality is not what set it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from codec import EncodecModel

if TYPE_CHECKING:
    import onnx

CALIBRATION_AUDIO = Path(__file__).with_name("calibration_music.flac")
DYNAMIC_MAX_STEPS = 160
"""Output steps a frame up to which a conv runs as int8."""


def calibration_streams(model: EncodecModel, kind: str) -> list[list[np.ndarray]]:
    """The first input of a step graph, frame by frame, for the calibration music: audio frames for the encoder;
    for the decoder, the music's codes at the model's highest and lowest bandwidths (two streams; the greedy
    codes of fewer codebooks are the first codebooks' of more)."""
    import soundfile

    audio, rate = soundfile.read(CALIBRATION_AUDIO, dtype="float32")
    config = model.config
    if rate != config.sampling_rate:
        raise ValueError(f"the int8 calibration music is at {rate} Hz; this model runs at {config.sampling_rate} Hz")
    hop = config.hop_length
    frames = len(audio) // hop
    signal = torch.from_numpy(np.tile(audio[: frames * hop], (config.audio_channels, 1)))[None]
    if kind == "encoder":
        return [[signal[..., f * hop : (f + 1) * hop].numpy() for f in range(frames)]]
    codes = model.encode(signal, bandwidth=max(config.target_bandwidths), return_dict=False)[0][0].numpy()  # (1, n_q, frames)
    fewest = config.num_quantizers_for_bandwidth(min(config.target_bandwidths))
    return [[np.ascontiguousarray(codes[:, :count, f]) for f in range(frames)] for count in (codes.shape[1], fewest)]


@dataclass
class ConvCalibration:
    """What the calibration streams showed of one conv: its output steps a frame, and the largest ratio of a
    frame's output swing (|value − bias|) to 127 × that frame's input scale: the output's scale is this × the
    input's, so that no calibration frame's output is clipped."""

    steps: int = 0
    ratio: float = 0.0

    def observe(self, x: np.ndarray, y: np.ndarray, bias: np.ndarray | None) -> None:
        self.steps = y.shape[-1]
        x_scale = max(float(x.max()), 0.0) - min(float(x.min()), 0.0)  # as DynamicQuantizeLinear: 0 within the range
        swing = float(np.abs(y if bias is None else y - bias.reshape(1, -1, 1, 1)).max())
        self.ratio = max(self.ratio, swing / 127 / max(x_scale / 255, 1e-12))


def constant_values(graph: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The values of `graph`'s ``Constant`` nodes (how the exporter writes weights and biases), by output name."""
    from onnx import numpy_helper

    return {node.output[0]: numpy_helper.to_array(node.attribute[0].t) for node in graph.graph.node
            if node.op_type == "Constant" and node.attribute[0].name == "value"}


def conv_calibrations(graph: onnx.ModelProto, streams: list[list[np.ndarray]]) -> list[ConvCalibration]:
    """What `streams`, run through `graph` frame by frame (each from zero state) as a stream runs it, showed of
    each ``Conv`` node, in node order."""
    import onnx
    import onnxruntime as ort

    from .onnx_engine import session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(graph)
    constants = constant_values(probe)
    convs = [node for node in probe.graph.node if node.op_type == "Conv"]
    biases = [constants.get(node.input[2]) if len(node.input) > 2 else None for node in convs]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for node in convs for name in (node.input[0], node.output[0]))
    session = ort.InferenceSession(probe.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    first, *states = session.get_inputs()
    names = [output.name for output in session.get_outputs()]
    found = [ConvCalibration() for _ in convs]
    for stream in streams:
        state = {node.name: np.zeros([1, *node.shape[1:]], np.float32) for node in states}
        for frame in stream:
            values = dict(zip(names, session.run(names, {first.name: frame, **state})))
            state = {node.name: values[f"new_{node.name}"] for node in states}
            for calibration, node, bias in zip(found, convs, biases):
                calibration.observe(values[node.input[0]], values[node.output[0]], bias)
    return found


def quantizes(weight: np.ndarray, calibration: ConvCalibration, audio_channels: int) -> bool:
    """Whether a conv of `weight` (out, in, 1, kernel) runs as int8 (see the module's docstring)."""
    return min(weight.shape[:2]) > audio_channels and weight.shape[-1] > 1 and calibration.steps <= DYNAMIC_MAX_STEPS


def int8_conv(node: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray | None, calibration: ConvCalibration,
              graph: onnx.ModelProto) -> list[onnx.NodeProto]:
    """`node`, a ``Conv`` by constant `weight` and `bias`, as DynamicQuantizeLinear → QLinearConv →
    DequantizeLinear → Add (the bias, in float32: its int32 form would need the frame's input scale), its
    constants stored in `graph`."""
    from onnx import helper, numpy_helper

    name = node.output[0]
    w_scale = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1) / 127
    w_scale[w_scale == 0] = 1
    offset = np.zeros(weight.shape[0], np.float32) if bias is None else bias
    constants = {
        "w": np.clip(np.round(weight / w_scale[:, None, None, None]), -127, 127).astype(np.int8),
        "w_scale": w_scale.astype(np.float32), "w_zero": np.zeros(weight.shape[0], np.int8),
        "ratio": np.array(calibration.ratio, np.float32), "y_zero": np.array(128, np.uint8),
        "bias": offset.reshape(1, -1, 1, 1).astype(np.float32),
    }
    graph.graph.initializer.extend(numpy_helper.from_array(value, f"{name}_{key}") for key, value in constants.items())
    c = {key: f"{name}_{key}" for key in constants}
    x_q, x_scale, x_zero, y_q, y_scale, y = (f"{name}_{suffix}" for suffix in ("xq", "xs", "xz", "yq", "ys", "nobias"))
    return [
        helper.make_node("DynamicQuantizeLinear", [node.input[0]], [x_q, x_scale, x_zero]),
        helper.make_node("Mul", [x_scale, c["ratio"]], [y_scale]),
        helper.make_node("QLinearConv", [x_q, x_scale, x_zero, c["w"], c["w_scale"], c["w_zero"], y_scale, c["y_zero"]],
                         [y_q], name=node.name, **{a.name: helper.get_attribute_value(a) for a in node.attribute}),
        helper.make_node("DequantizeLinear", [y_q, y_scale, c["y_zero"]], [y]),
        helper.make_node("Add", [y, c["bias"]], [name]),
    ]
