"""The int8 variant of the ONNX step graphs (``--engine onnx-int8``): most weights are int8, the bitstream is the
same format (a float32 peer decodes an int8 sender's codes), and what it changes is small: on the
full-size architecture the int8 stream's audio stays close to the float32 stream's; on the trained
bundled model, real speech loses at most 0.01 STOI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from pystoi import stoi

from codec import load_default_model
from streaming import StreamingDecoder
from streaming.onnx_engine import OnnxStreamingDecoder, OnnxStreamingEncoder, engine_decoder, engine_encoder, graph_dir
from tests.models import realistic_model, snr_db
from tests.test_onnx_engine import one_thread  # noqa: F401 (autouse: one thread, as a stream runs)

FIXTURES = Path(__file__).parent / "fixtures"
FRAMES = 150
SENDER_SNR_DB = 40.0  # measured 79 dB: the float32 decoding of the int8 sender's codes against the float32 sender's
DECODER_SNR_DB = 30.0  # measured 62 dB: the int8 decoder against the float32 one, same codes


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """The first 2 s of the held-out speech fixture."""
    audio, rate = sf.read(FIXTURES / "heldout_speech_24k.flac", dtype="float32")
    assert rate == 24_000
    return torch.from_numpy(audio[: FRAMES * 320])[None, None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx_int8")


def encode(model, audio: torch.Tensor, cache, precision: str) -> torch.Tensor:
    encoder = OnnxStreamingEncoder(model, 6.0, cache_dir=cache, precision=precision)
    return torch.cat([encoder.push(audio), encoder.flush()], dim=-1)


def decode(decoder, codes: torch.Tensor) -> torch.Tensor:
    return torch.cat([decoder.push(codes), decoder.flush()], dim=-1)


@torch.no_grad()
def test_full_size_int8_stream_is_read_by_a_float32_peer(speech, cache):
    """Full-size architecture (weights beyond the cache, the case int8 is for): its weights are int8 (the largest
    matrices 4-bit);
    an int8 sender's codes decode on the float32 PyTorch path close to the float32 sender's; an int8 decoder
    plays the float32 codes close to the float32 decoder."""
    model = realistic_model()
    float_codes, int8_codes = encode(model, speech, cache, "float32"), encode(model, speech, cache, "int8")
    assert int8_codes.shape == float_codes.shape and int8_codes.dtype == float_codes.dtype
    assert 0 <= int(int8_codes.min()) and int(int8_codes.max()) < model.config.codebook_size

    reference = decode(StreamingDecoder(model), float_codes)
    heard = decode(StreamingDecoder(model), int8_codes)  # a float32 peer hears the int8 sender
    assert heard.shape == reference.shape
    assert snr_db(reference, heard) > SENDER_SNR_DB
    played = decode(OnnxStreamingDecoder(model, cache_dir=cache, precision="int8"), float_codes)
    assert snr_db(reference, played) > DECODER_SNR_DB

    directory = graph_dir(model, cache)
    for name in ("encoder_q8_int8.onnx", "decoder_int8.onnx"):
        graph = onnx.load(directory / name)
        eight_bit = (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)  # MatMulNBits' blocks are uint8 about 2^(bits − 1)
        blocks = {node.input[1]: {a.name: a.i for a in node.attribute} for node in graph.graph.node if node.op_type == "MatMulNBits"}
        assert blocks and all(b["bits"] == 4 for b in blocks.values()), name  # the LSTMs and the largest conv
        weights = sum(blocks[t.name]["K"] * blocks[t.name]["N"] if t.name in blocks else int(np.prod(t.dims))  # 4-bit: two a byte
                      for t in graph.graph.initializer if t.data_type in eight_bit)
        # measured 1.12 (with the codebooks its search reads, which are not encoder parameters) and 0.98
        assert weights > 0.8 * sum(p.numel() for p in getattr(model, name.split("_")[0]).parameters()), name


@torch.no_grad()
def test_bundled_model_int8_costs_little_stoi_on_real_speech(speech, cache, monkeypatch):
    """Trained weights, real speech, 6 kbps: int8 encoder and decoder (``engine="onnx-int8"``) against the
    float32 graphs, STOI against the clean speech."""
    monkeypatch.setenv("ENCODEC_STREAM_ONNX_CACHE", str(cache))
    model = load_default_model().eval()
    encoder = engine_encoder(model, 6.0, "immediate", engine="onnx-int8")
    assert isinstance(encoder, OnnxStreamingEncoder) and encoder.precision == "int8"
    decoder = engine_decoder(model, "immediate", engine="onnx-int8")
    assert isinstance(decoder, OnnxStreamingDecoder) and decoder.precision == "int8"
    clean = speech[0, 0].numpy()
    float32 = decode(OnnxStreamingDecoder(model, cache_dir=cache), encode(model, speech, cache, "float32"))
    int8 = decode(OnnxStreamingDecoder(model, cache_dir=cache, precision="int8"), encode(model, speech, cache, "int8"))
    scores = {name: stoi(clean, audio[0, 0, : len(clean)].numpy(), 24_000) for name, audio in [("float32", float32), ("int8", int8)]}
    assert scores["float32"] > 0.8
    assert scores["int8"] >= scores["float32"] - 0.01, scores  # measured 0.9226 → 0.9183
