"""Which engine a call runs on: ``auto`` (the client's default) takes ONNX Runtime where it is installed and
the stream starts immediately, PyTorch otherwise with one line that says why; ``onnx`` insists, with one line
where it cannot; a graph that cannot be cached falls back under ``auto``."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from client import Client, Options
from streaming import StreamingDecoder, StreamingEncoder
from streaming.onnx_engine import choose_engine, engine_decoder, engine_encoder
from tests.models import small_model

ROOT = Path(__file__).resolve().parent.parent

WITHOUT_ONNXRUNTIME = r'''
import importlib.abc, sys

class NoOnnxRuntime(importlib.abc.MetaPathFinder):
    """As if onnxruntime were not installed: importing it fails as it would there."""
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "onnxruntime":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoOnnxRuntime())

from streaming import StreamingDecoder, StreamingEncoder
from streaming.onnx_engine import EngineUnavailable, choose_engine, engine_decoder, engine_encoder
from tests.models import small_model

model = small_model()
choice = choose_engine(model, "immediate", "auto")
assert choice.engine == "torch", choice
print(choice.line())
assert isinstance(engine_encoder(model, 6.0, "immediate", engine="auto"), StreamingEncoder)
assert isinstance(engine_decoder(model, "immediate", engine="auto"), StreamingDecoder)
try:
    choose_engine(model, "immediate", "onnx")
except EngineUnavailable as error:
    print(error)
else:
    raise AssertionError("--engine onnx ran without onnxruntime")
'''


@pytest.fixture(scope="module")
def model():
    return small_model()


def test_auto_without_onnxruntime_runs_on_torch_and_says_why():
    """Where onnxruntime cannot be imported, auto streams on PyTorch and its line names what to install;
    --engine onnx refuses with one line, in the library and on the command line (before a model loads)."""
    result = subprocess.run([sys.executable, "-c", WITHOUT_ONNXRUNTIME], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    auto, onnx = result.stdout.strip().splitlines()
    assert auto == "engine: torch (onnxruntime is not installed; pip install onnxruntime onnx for the faster ONNX engine)"
    assert onnx == "--engine onnx needs onnxruntime, which is not installed: pip install onnxruntime onnx"
    blocked = WITHOUT_ONNXRUNTIME.split("from streaming import")[0]
    command = blocked + "import client\nclient.parse_args(['--room', 'r', '--engine', 'onnx'])\n"
    refused = subprocess.run([sys.executable, "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].endswith(
        "error: --engine onnx needs onnxruntime, which is not installed: pip install onnxruntime onnx")


def test_auto_with_onnxruntime(model, tmp_path, monkeypatch, capsys):
    """With onnxruntime installed, auto is ONNX Runtime for an immediate start (what a live call uses) and
    PyTorch for an exact start (files); the client says which in its first line."""
    monkeypatch.setenv("ENCODEC_STREAM_ONNX_CACHE", str(tmp_path))
    assert choose_engine(model, "immediate", "auto").engine == "onnx"
    exact = choose_engine(model, "exact", "auto")
    assert exact.engine == "torch" and "exact start" in exact.reason
    assert choose_engine(model, "immediate", "torch").engine == "torch"
    with pytest.raises(ValueError, match="engine must be one of"):
        choose_engine(model, "immediate", "fast")
    client = Client(Options(server="ws://127.0.0.1:9", room="r", status=True), model)
    assert client.engine.engine == "onnx"
    assert type(client.sender.encoder).__name__ == "OnnxStreamingEncoder"
    assert capsys.readouterr().err.startswith("engine: onnx (ONNX Runtime ")
    client.encode_pool.shutdown()
    client.decode_pool.shutdown()


def test_a_graph_that_cannot_be_cached_falls_back_under_auto(model, tmp_path, monkeypatch, caplog):
    """A cache folder that cannot be written (here a file stands where it should be): auto warns and streams on
    PyTorch; --engine onnx raises the error."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("ENCODEC_STREAM_ONNX_CACHE", str(blocked))
    with caplog.at_level(logging.WARNING, logger="streaming.onnx_engine"):
        assert isinstance(engine_encoder(model, 6.0, "immediate", engine="auto"), StreamingEncoder)
        assert isinstance(engine_decoder(model, "immediate", engine="auto"), StreamingDecoder)
    assert "the ONNX graphs could not be built" in caplog.text and "running on PyTorch" in caplog.text
    with pytest.raises(OSError):
        engine_encoder(model, 6.0, "immediate", engine="onnx")
