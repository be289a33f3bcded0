"""The ONNX Runtime engine streams as the PyTorch path does: same codes (float near-ties aside, each checked
to be one), the same audio within 1e-4 from the same codes, over ≥ 300 frames of real speech with a
bandwidth switch mid-stream; the end of a stream, the graph cache and what it refuses; a call between an
ONNX peer and a PyTorch peer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from client import Client, Options
from codec import load_default_model
from streaming import StartMode, StreamingDecoder, StreamingEncoder
from streaming.onnx_engine import OnnxStreamingDecoder, OnnxStreamingEncoder, graph_dir
from tests.models import codebooks, realistic_model, small_model, snr_db

FRAMES = 360
BLOCK = 441  # sound-card-like blocks: frames complete in the middle of pushes
FIXTURES = Path(__file__).parent / "fixtures"
SWITCH = (6.0, 3.0)  # bandwidth before and after the middle of the stream
# A code may differ from the PyTorch path's only where the two entries' distances from the residual are
# equal to float32 rounding: relative to the distances' scale (|r|² + |e|²), float32 rounds at ~6e-8
# per operation over a sum of `dim` products.
TIE_GAP = 1e-5
# Frames whose first differing code is such a tie, out of 360: measured 0 for both models.
MAX_TIE_FRAMES = 2
INT8_CALL_SNR_DB = 30.0  # an int8 sender heard by a PyTorch peer, against the PyTorch sender: measured 116 dB (small model)


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    """The 2.5 s fixture (peak 0.35), then again 1.5 times louder: 369 frames of real speech."""
    audio, rate = sf.read(FIXTURES / "heldout_speech_24k.flac", dtype="float32")
    audio = np.concatenate([audio, 1.5 * audio])
    assert rate == 24_000 and audio.shape[0] >= FRAMES * 320
    return torch.from_numpy(audio[: FRAMES * 320 + 123])[None, None]  # a partial last frame for flush()


@pytest.fixture(scope="module", params=["default", "full-size"])
def model(request):
    return load_default_model().eval() if request.param == "default" else realistic_model()


@pytest.fixture(autouse=True)
def one_thread():
    """One thread, as a stream runs (conftest's `keep_torch_threads` puts the count back)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def stream(encoder, audio: torch.Tensor) -> list[torch.Tensor]:
    """Codes of every push, the bandwidth switched once the middle of the audio went in, flush last."""
    pushes = []
    for start in range(0, audio.shape[-1], BLOCK):
        if start >= audio.shape[-1] // 2:
            encoder.set_bandwidth(SWITCH[1])
        pushes.append(encoder.push(audio[..., start : start + BLOCK]))
    return pushes + [encoder.flush()]


def first_ties(model, embeddings: torch.Tensor, expected: torch.Tensor, codes: torch.Tensor) -> int:
    """Frames where `codes` differ from `expected` (both `(n_q, frames)`); asserts the first differing code of
    each is an argmin near-tie along the shared residual path, in float64."""
    differing = (codes != expected).any(dim=0).nonzero().flatten().tolist()
    embeds = [e.double() for e in codebooks(model)]
    for frame in differing:
        residual = embeddings[:, frame].double()
        q = int((codes[:, frame] != expected[:, frame]).nonzero()[0])
        for earlier in range(q):
            residual = residual - embeds[earlier][expected[earlier, frame]]
        a, b = embeds[q][expected[q, frame]], embeds[q][codes[q, frame]]
        gap = abs(float((residual - a).pow(2).sum() - (residual - b).pow(2).sum()))
        scale = float(residual.pow(2).sum() + a.pow(2).sum())
        assert gap <= TIE_GAP * scale, f"frame {frame}, codebook {q}: distances differ by {gap / scale:.1e}, not a tie"
    return len(differing)


@torch.inference_mode()
def test_same_codes_and_audio_as_pytorch(model, speech, cache):
    torch_pushes = stream(StreamingEncoder(model, SWITCH[0]), speech)
    onnx_pushes = stream(OnnxStreamingEncoder(model, SWITCH[0], cache_dir=cache), speech)
    assert [p.shape for p in onnx_pushes] == [p.shape for p in torch_pushes]
    n_q = [p.shape[1] for p in torch_pushes if p.shape[-1]]
    assert n_q[0] == 8 and n_q[-1] == 4, "the bandwidth switch happened"
    embeddings = StreamingEncoder(model).stack.step(speech[..., : FRAMES * 320])[0]
    ties = 0
    for q in sorted(set(n_q)):
        expected = torch.cat([p[0] for p in torch_pushes if p.shape[1] == q], dim=-1)
        got = torch.cat([p[0] for p in onnx_pushes if p.shape[1] == q], dim=-1)
        frames = [i for i, p in enumerate(torch_pushes) if p.shape[1] == q]
        offset = sum(p.shape[-1] for p in torch_pushes[: frames[0]])
        assert all(codes.unique().numel() >= 5 for codes in expected), "every codebook's codes vary"
        assert (expected[:, 1:] != expected[:, :-1]).any(0).float().mean() > 0.5, "codes change from frame to frame"
        length = min(expected.shape[-1], embeddings.shape[-1] - offset)  # the flushed frame aside
        ties += first_ties(model, embeddings[:, offset : offset + length], expected[:, :length], got[:, :length])
        assert (expected[:, length:] == got[:, length:]).all()
    assert ties <= MAX_TIE_FRAMES

    # The same codes through both decoders, pushed as they were encoded (n_q changes mid-stream).
    torch_decoder, onnx_decoder = StreamingDecoder(model), OnnxStreamingDecoder(model, cache_dir=cache)
    reference = torch.cat([torch_decoder.push(p) for p in torch_pushes] + [torch_decoder.flush()], dim=-1)
    audio = torch.cat([onnx_decoder.push(p) for p in torch_pushes] + [onnx_decoder.flush()], dim=-1)
    assert audio.shape == reference.shape and audio.shape[-1] >= FRAMES * 320
    assert float((audio - reference).abs().max()) < 1e-4


@torch.inference_mode()
def test_search_width_4(model, speech, cache):
    """The width-4 search in the graph gives the PyTorch search's codes (first 184 frames, 6 kbps)."""
    audio = speech[..., : speech.shape[-1] // 2]
    expected = StreamingEncoder(model, 6.0, search_width=4).push(audio)
    got = OnnxStreamingEncoder(model, 6.0, search_width=4, cache_dir=cache).push(audio)
    differing = int((got != expected).any(dim=1).sum())
    assert differing <= MAX_TIE_FRAMES


@torch.no_grad()
def test_search_width_and_batches(cache):
    model = small_model()
    audio = torch.cat([speech_like_batch(model, seed) for seed in range(2)])
    for width in (1, 4):
        expected = torch.cat([StreamingEncoder(model, 6.0, search_width=width).push(audio[..., :6400])], dim=-1)
        onnx = OnnxStreamingEncoder(model, 6.0, search_width=width, cache_dir=cache)
        got = torch.cat([onnx.push(audio[..., i : i + 1000]) for i in range(0, 6400, 1000)], dim=-1)
        assert torch.equal(got, expected)
    decoder = OnnxStreamingDecoder(model, cache_dir=cache)
    assert torch.allclose(decoder.push(expected), StreamingDecoder(model).push(expected), atol=1e-5)


def speech_like_batch(model, seed: int) -> torch.Tensor:
    from tests.models import speech_like

    return speech_like(6400, model.config.sampling_rate, seed=seed)


@torch.no_grad()
def test_snapshot_and_resume(cache):
    """`state_dict()` mid-stream, loaded into fresh coders, continues exactly as the original."""
    model = small_model()
    audio = speech_like_batch(model, 0)
    encoder, decoder = OnnxStreamingEncoder(model, 6.0, cache_dir=cache), OnnxStreamingDecoder(model, cache_dir=cache)
    decoder.push(encoder.push(audio[..., :2100]))
    snapshots = encoder.state_dict(), decoder.state_dict()
    rest = [decoder.push(encoder.push(audio[..., 2100:])), decoder.push(encoder.flush()), decoder.flush()]
    encoder, decoder = OnnxStreamingEncoder(model, 3.0, cache_dir=cache), OnnxStreamingDecoder(model, cache_dir=cache)
    encoder.load_state_dict(snapshots[0])
    decoder.load_state_dict(snapshots[1])
    again = [decoder.push(encoder.push(audio[..., 2100:])), decoder.push(encoder.flush()), decoder.flush()]
    assert encoder.bandwidth == 6.0
    assert all(torch.equal(a, b) for a, b in zip(rest, again))


def test_graphs_are_cached_and_exact_start_refused(cache):
    model = small_model()
    OnnxStreamingEncoder(model, 6.0, cache_dir=cache).push(torch.zeros(1, 1, 320))
    directory = graph_dir(model, cache)
    assert (directory / "encoder_q8.onnx").is_file()
    with pytest.raises(ValueError, match="EXACT"):
        OnnxStreamingEncoder(model, start=StartMode.EXACT, cache_dir=cache)
    with pytest.raises(ValueError, match="codes must lie|Codes must lie"):
        OnnxStreamingDecoder(model, cache_dir=cache).push(torch.full((1, 2, 1), 5000))
    encoder = OnnxStreamingEncoder(model, 6.0, cache_dir=cache)
    with pytest.raises(RuntimeError, match="Nothing was pushed"):
        encoder.flush()
    assert np.isfinite(encoder.push(torch.zeros(1, 1, 100)).numpy()).all()


async def test_call_between_an_onnx_peer_and_a_pytorch_peer(cache, tmp_path, monkeypatch):
    """The engines interoperate on the wire: each way (``Options.engine``, the client's ``--engine``),
    the heard audio is the PyTorch call's."""
    from server import Relay
    from tests.models import speech_wav

    monkeypatch.setenv("ENCODEC_STREAM_ONNX_CACHE", str(cache))
    model = small_model()
    speech = speech_wav(tmp_path, 24_000 + 123, 24_000, seed=3)
    relay = Relay()
    server = await relay.start("127.0.0.1", 0).__aenter__()
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    heard = {}
    calls = [("torch", "torch", "torch"), ("onnx→torch", "onnx", "torch"), ("torch→onnx", "torch", "onnx"),
             ("onnx-int8→torch", "onnx-int8", "torch")]
    for name, sender, receiver in calls:
        out = tmp_path / f"{name}.wav"
        receiving = Client(Options(server=url, room=name.replace("→", "-"), output=str(out), status=False, start="immediate",
                                   output_format="float", engine=receiver), model)
        task = asyncio.create_task(receiving.run())
        await asyncio.wait_for(receiving.connection.connected.wait(), 5)
        await asyncio.sleep(0.05)
        sending = Client(Options(server=url, room=name.replace("→", "-"), input=str(speech[0]), pace=False, status=False,
                                 start="immediate", engine=sender), model)
        assert isinstance(sending.sender.encoder, OnnxStreamingEncoder) == sender.startswith("onnx")
        assert await asyncio.wait_for(sending.run(), 60) == 0
        assert await asyncio.wait_for(task, 60) == 0
        heard[name] = sf.read(out, dtype="float32")[0]
    server.close()
    assert heard["torch"].shape == (24_000 + 123,) and np.abs(heard["torch"]).max() > 0.01
    for name in ("onnx→torch", "torch→onnx"):
        assert heard[name].shape == heard["torch"].shape
        assert np.abs(heard[name] - heard["torch"]).max() < 1e-4, name
    # An int8 sender's stream is the same format: a PyTorch peer plays it, close to the float32 sender's.
    assert heard["onnx-int8→torch"].shape == heard["torch"].shape
    assert snr_db(torch.from_numpy(heard["torch"]), torch.from_numpy(heard["onnx-int8→torch"])) > INT8_CALL_SNR_DB
