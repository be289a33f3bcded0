"""ONNX Runtime as the streaming engine: the encoder and decoder steps of ``streaming.onnx_export`` run one
frame at a time, their state fed back each step; same API as :class:`StreamingEncoder` and
:class:`StreamingDecoder`, which stay the reference and the fallback.

The graphs are exported on first use and cached on disk under
``$ENCODEC_STREAM_ONNX_CACHE`` or ``~/.cache/encodec-stream/onnx/<model fingerprint>-v<graph format>/``; one
``InferenceSession`` per graph is shared by every stream of the process (``run`` is thread-safe), so a
receiver that opens a decoder per remote peer loads the weights once. Only ``StartMode.IMMEDIATE``:
an exact start holds and reflects the first frames, which the PyTorch path does. ``flush()`` hands the
state to the PyTorch layers, which apply the offline model's right-end padding to the last frame.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from codec import EncodecModel
from codec.quantizer import check_codes, check_search_width

from .coder import StartMode, StreamingCoder, check_sample_rate, check_streamable
from .decoder import StreamingDecoder
from .encoder import StreamingEncoder
from .layers import StreamingConv1d, StreamingConvTranspose1d
from .onnx_export import GRAPH_FORMAT, PRECISIONS, StateSpec, check_exportable, export_step, graph_name, state_specs, stateful_layers

log = logging.getLogger(__name__)
_SESSIONS: dict[str, object] = {}
_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    root = os.environ.get("ENCODEC_STREAM_ONNX_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "encodec-stream" / "onnx"


def session_options() -> object:
    """Options for one frame at a time on one core: one thread, no thread pool, every graph optimisation."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def graph_dir(model: EncodecModel, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the model's step graphs are cached: a folder per model fingerprint and graph format."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{model.fingerprint().hex()[:16]}-v{GRAPH_FORMAT}"


def step_session(
    model: EncodecModel, directory: Path, kind: str, num_codebooks: int | None = None, search_width: int = 1,
    precision: str = "float32",
) -> object:
    """The shared session of one step graph, exported into `directory` first if it is not there."""
    import onnxruntime as ort

    path = directory / graph_name(kind, num_codebooks, search_width, precision)
    key = str(path)
    with _LOCK:
        session = _SESSIONS.get(key)
        if session is None:
            if not path.is_file():  # first use: seconds, said as it happens (the client shows INFO of this logger)
                log.info("building the ONNX graph %s (first use of this model; cached in %s) ...", path.name, directory)
                started = time.perf_counter()
                export_step(model, path, kind, num_codebooks, search_width, precision)
                log.info("built %s in %.1f s", path.name, time.perf_counter() - started)
            session = _SESSIONS[key] = ort.InferenceSession(key, session_options(), providers=["CPUExecutionProvider"])
    return session


class _OnnxCoder:
    """Runs a step graph frame by frame with its state as numpy arrays, zeros at the start."""

    kind: str

    def __init__(self, model: EncodecModel, start: StartMode | str, cache_dir: str | os.PathLike | None, precision: str) -> None:
        check_streamable(model.config)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if StartMode(start) is not StartMode.IMMEDIATE:
            raise ValueError("The ONNX engine starts streams immediately; StartMode.EXACT runs on the PyTorch path")
        check_exportable(model)
        self.model, self.config, self.start = model, model.config, StartMode.IMMEDIATE
        self.directory = graph_dir(model, cache_dir)
        self.specs: list[StateSpec] = state_specs(model, self.kind)
        self.state_names = [spec.name for spec in self.specs]
        self.reset()

    def reset(self) -> None:
        self.frames = 0  # frames run through the graph since the start
        self.flushed = False
        self.batch: int | None = None
        self.buffers: list[list[np.ndarray]] = []

    def _check_batch(self, batch: int) -> None:
        StreamingCoder._check_batch(self, batch)  # type: ignore[arg-type]
        if not self.buffers:
            # Two sets of state buffers, bound once: each step reads one set and writes the other.
            self.buffers = [[np.zeros((batch, *spec.shape), np.float32) for spec in self.specs] for _ in range(2)]
            self.parity = 0
            self.bindings: dict[tuple[int, int, str], object] = {}
            self.io: dict[str, np.ndarray] = {}

    @property
    def state(self) -> list[np.ndarray]:
        return self.buffers[self.parity]

    def state_dict(self) -> dict[str, object]:
        """A snapshot of the stream (arrays copied): `load_state_dict` resumes exactly from here."""
        return {
            "state": [array.copy() for array in self.state] if self.buffers else None,
            "frames": self.frames, "flushed": self.flushed, "batch": self.batch, **self._extra_state(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.reset()
        if state["batch"] is not None:
            self._check_batch(state["batch"])
            for array, saved in zip(self.state, state["state"]):
                np.copyto(array, saved)
        self.frames, self.flushed = state["frames"], state["flushed"]
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, object]:
        return {}

    def _load_extra_state(self, state: dict[str, object]) -> None:
        pass

    def _step(self, session: object, key: str, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """One frame: `inputs` and `outputs` are this coder's own buffers under `key`, bound once with the state."""
        binding = self.bindings.get((id(session), self.parity, key))
        if binding is None:
            binding = self.bindings[(id(session), self.parity, key)] = session.io_binding()
            bound = [(name, array, binding.bind_input) for name, array in inputs.items()]
            bound += [(name, array, binding.bind_output) for name, array in outputs.items()]
            bound += [(name, array, binding.bind_input) for name, array in zip(self.state_names, self.buffers[self.parity])]
            bound += [(f"new_{name}", array, binding.bind_output) for name, array in zip(self.state_names, self.buffers[1 - self.parity])]
            for name, array, bind in bound:
                bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
        session.run_with_iobinding(binding)
        self.parity = 1 - self.parity
        self.frames += 1

    def _io(self, key: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """This coder's buffer `key` of `(batch, *shape)`, kept so that its binding stays valid."""
        array = self.io.get(key)
        if array is None:
            array = self.io[key] = np.zeros((self.batch, *shape), dtype)
        return array

    def _torch_twin(self, twin: StreamingCoder) -> StreamingCoder:
        """The PyTorch coder in this stream's state: it finishes the stream (the right-end padding)."""
        twin._check_batch(self.batch)
        if not self.frames:
            return twin
        states = iter(torch.from_numpy(s.copy()) for s in self.state)
        for layer in stateful_layers(twin.stack):
            if isinstance(layer, StreamingConv1d):
                buffer = next(states) if layer.padding else torch.zeros(self.batch, layer.weight.shape[1], 0)
                layer.state.buffer = buffer
                layer.state.seen = self.frames * self.config.hop_length // layer.input_stride  # its input steps so far
            elif isinstance(layer, StreamingConvTranspose1d):
                layer.state.tail, layer.state.to_trim = next(states), 0
            else:
                layer.state.hidden = [next(states) for _ in range(2 * len(layer.layers))]
                layer.state.hidden, layer.state.cell = layer.state.hidden[0::2], layer.state.hidden[1::2]
        return twin


class OnnxStreamingEncoder(_OnnxCoder):
    """:class:`StreamingEncoder` on ONNX Runtime: `(batch, channels, n)` float32 blocks of any size in,
    the codes `(batch, n_q, k)` of the k frames they completed out. The codebook search runs in the graph:
    one graph per codebook count and search width (measured faster than one graph of all codebooks, and
    than the search in PyTorch on the graph's embeddings)."""

    kind = "encoder"

    def __init__(
        self,
        model: EncodecModel,
        bandwidth: float = 6.0,
        start: StartMode | str = StartMode.IMMEDIATE,
        sample_rate: int | None = None,
        search_width: int = 1,
        cache_dir: str | os.PathLike | None = None,
        precision: str = "float32",
    ) -> None:
        check_search_width(search_width)
        check_sample_rate(model.config, sample_rate)
        super().__init__(model, start, cache_dir, precision)
        self.search_width = search_width
        self.sessions: dict[tuple[int, int], object] = {}
        self.set_bandwidth(bandwidth)

    def reset(self) -> None:
        super().reset()
        self.pending = np.zeros((0, self.config.audio_channels, 0), np.float32)

    def _extra_state(self) -> dict[str, object]:
        return {"bandwidth": self.bandwidth, "pending": self.pending.copy()}

    def _load_extra_state(self, state: dict[str, object]) -> None:
        self.set_bandwidth(state["bandwidth"])
        self.pending = state["pending"].copy()

    def set_bandwidth(self, bandwidth: float) -> None:
        """Takes effect from the next frame completed; each push returns frames of one bandwidth.

        Loads (and on first use exports) the graphs the bandwidth needs now, not on the next push: the
        graph of its codebook count and search width, and the greedy one, so that a sender that sheds
        its search (width 4 → 1) finds its graph ready."""
        self.config.check_bandwidth(bandwidth)
        self.bandwidth = bandwidth
        self._session(self.num_codebooks, 1)
        self._session(self.num_codebooks, self.search_width)

    @property
    def num_codebooks(self) -> int:
        return self.config.num_quantizers_for_bandwidth(self.bandwidth)

    def _session(self, num_codebooks: int, search_width: int) -> object:
        session = self.sessions.get((num_codebooks, search_width))
        if session is None:
            session = step_session(self.model, self.directory, "encoder", num_codebooks, search_width, self.precision)
            self.sessions[(num_codebooks, search_width)] = session
        return session

    def push(self, audio: torch.Tensor) -> torch.Tensor:
        StreamingEncoder._check_audio(self, audio)
        block = audio.detach().numpy()
        pending = np.concatenate([self.pending, block], axis=-1) if self.pending.shape[-1] else block
        hop = self.config.hop_length
        frames = pending.shape[-1] // hop
        self.pending = pending[..., frames * hop :].copy()
        n_q, width = self.num_codebooks, self.search_width
        if not frames:
            return torch.zeros(self.batch, n_q, 0, dtype=torch.long)
        session = self._session(n_q, width)
        frame = self._io("audio", (self.config.audio_channels, hop), np.float32)
        outputs = {"embeddings": self._io("embeddings", (self.config.hidden_size,), np.float32),
                   "codes": self._io(f"codes{n_q}", (n_q,), np.int64)}
        out = np.empty((self.batch, n_q, frames), np.int64)
        for f in range(frames):
            np.copyto(frame, pending[..., f * hop : (f + 1) * hop])
            self._step(session, f"{n_q}/{width}", {"audio": frame}, outputs)
            out[..., f] = outputs["codes"]
        return torch.from_numpy(out)

    def flush(self) -> torch.Tensor:
        """End the stream: the PyTorch layers, given this stream's state, pad and encode the last frame."""
        if self.batch is None:
            raise RuntimeError("Nothing was pushed: there is no stream to flush")
        self._check_batch(self.batch)
        twin = StreamingEncoder(self.model, self.bandwidth, StartMode.IMMEDIATE, search_width=self.search_width)
        twin = self._torch_twin(twin)
        codes = twin.push(torch.from_numpy(self.pending)) if self.pending.shape[-1] else None
        tail = twin.flush()
        self.flushed = True
        return tail if codes is None else torch.cat([codes, tail], dim=-1)


class OnnxStreamingDecoder(_OnnxCoder):
    """:class:`StreamingDecoder` on ONNX Runtime: codes `(batch, n_q, k)` in (n_q may change from push to
    push), `(batch, channels, k * hop)` samples out."""

    kind = "decoder"

    def __init__(
        self, model: EncodecModel, start: StartMode | str = StartMode.IMMEDIATE, cache_dir: str | os.PathLike | None = None,
        precision: str = "float32",
    ) -> None:
        super().__init__(model, start, cache_dir, precision)
        self.session = step_session(model, self.directory, "decoder", precision=precision)

    def push(self, codes: torch.Tensor) -> torch.Tensor:
        StreamingDecoder._check_codes(self, codes)
        check_codes(codes, self.config.codebook_size)
        values = codes.detach().numpy()
        n_q, frames, hop = values.shape[1], values.shape[-1], self.config.hop_length
        frame, audio = self._io(f"codes{n_q}", (n_q,), np.int64), self._io("audio", (self.config.audio_channels, hop), np.float32)
        out = np.empty((self.batch, self.config.audio_channels, frames * hop), np.float32)
        for f in range(frames):
            np.copyto(frame, values[..., f])
            self._step(self.session, str(n_q), {"codes": frame}, {"audio": audio})
            out[..., f * hop : (f + 1) * hop] = audio
        return torch.from_numpy(out)

    def flush(self) -> torch.Tensor:
        """End the stream and return the samples still held (the PyTorch layers finish it)."""
        if self.batch is None:
            raise RuntimeError("Nothing was pushed: there is no stream to flush")
        self._check_batch(self.batch)
        twin = self._torch_twin(StreamingDecoder(self.model, StartMode.IMMEDIATE))
        self.flushed = True
        return twin.flush()


ENGINES = ("auto", "torch", "onnx", "onnx-int8")
"""``auto``: ONNX Runtime where it is installed, the model exports and the stream starts immediately;
PyTorch otherwise. ``onnx`` insists (an error where onnxruntime is missing or the model does not export;
an exact start still runs on PyTorch). ``onnx-int8``: as ``onnx``, with int8 weights (opt-in: faster for
models larger than the cache, at a measured quality cost). ``torch``: the reference."""
INSTALL_HINT = "pip install onnxruntime onnx"


class EngineUnavailable(ValueError):
    """``onnx`` or ``onnx-int8`` asked for where it cannot run: the message is one line that says why and what to do."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine a stream runs on (``torch``, ``onnx`` or ``onnx-int8``) and, in a few words, why."""

    engine: str
    reason: str

    def line(self) -> str:
        return f"engine: {self.engine} ({self.reason})"


def missing_onnx_module() -> str | None:
    """The first of onnxruntime and onnx (the export needs it) that cannot be imported, or None."""
    for name in ("onnxruntime", "onnx"):
        try:
            __import__(name)
        except ImportError:
            return name
    return None


def choose_engine(model: object, start: StartMode | str, engine: str = "auto") -> EngineChoice:
    """The engine of `engine` for streams of `model` started as `start`; raises :class:`EngineUnavailable`
    where an ONNX engine was asked for and cannot run."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "torch":
        return EngineChoice("torch", "asked for")
    if not isinstance(model, EncodecModel):
        return EngineChoice("torch", f"the ONNX graphs are EnCodec's, not {type(model).__name__}'s")
    if StartMode(start) is not StartMode.IMMEDIATE:
        return EngineChoice("torch", "an exact start runs on PyTorch; the ONNX graphs start immediately")
    missing = missing_onnx_module()
    if missing is None:
        try:
            check_exportable(model)
        except ValueError as error:
            if engine != "auto":
                raise EngineUnavailable(f"--engine {engine}: the model has no ONNX step graph: {error}") from error
            return EngineChoice("torch", f"the model has no ONNX step graph: {error}")
        import onnxruntime

        if engine == "onnx-int8":
            return EngineChoice(engine, f"ONNX Runtime {onnxruntime.__version__}, int8 weights")
        return EngineChoice("onnx", f"ONNX Runtime {onnxruntime.__version__}")
    if engine != "auto":
        raise EngineUnavailable(f"--engine {engine} needs {missing}, which is not installed: {INSTALL_HINT}")
    return EngineChoice("torch", f"{missing} is not installed; {INSTALL_HINT} for the faster ONNX engine")


def _on_engine(model: EncodecModel, start: StartMode | str, engine: str, build_onnx, build_torch):
    """`build_onnx(precision)` where `engine` chooses ONNX Runtime, else `build_torch()`; under ``auto`` a graph
    that cannot be built or cached (a read-only home, an export error) falls back to PyTorch with a warning."""
    chosen = choose_engine(model, start, engine).engine
    if chosen == "torch":
        return build_torch()
    try:
        return build_onnx("int8" if chosen == "onnx-int8" else "float32")
    except (OSError, RuntimeError) as error:
        if engine != "auto":
            raise
        log.warning("the ONNX graphs could not be built (%s: %s): running on PyTorch", type(error).__name__, error)
        return build_torch()


def engine_encoder(
    model: EncodecModel, bandwidth: float, start: StartMode | str, search_width: int = 1, engine: str = "torch"
) -> StreamingEncoder | OnnxStreamingEncoder:
    """The streaming encoder of `engine` (see :data:`ENGINES`); PyTorch is the reference and the fallback."""
    return _on_engine(
        model, start, engine,
        lambda precision: OnnxStreamingEncoder(model, bandwidth, start, search_width=search_width, precision=precision),
        lambda: StreamingEncoder(model, bandwidth=bandwidth, start=start, search_width=search_width),
    )


def engine_decoder(model: EncodecModel, start: StartMode | str, engine: str = "torch") -> StreamingDecoder | OnnxStreamingDecoder:
    """The streaming decoder of `engine`, as :func:`engine_encoder` chooses."""
    return _on_engine(
        model, start, engine, lambda precision: OnnxStreamingDecoder(model, start, precision=precision),
        lambda: StreamingDecoder(model, start=start),
    )
