"""The page's codec is the Python ONNX engine's: in headless Chromium, the codec worker (onnxruntime-web,
WASM, one thread) encodes real speech to the codes ``OnnxStreamingEncoder`` gives from the same graph files
(float near-ties aside, each checked to be one) and decodes codes to its audio within 1e-4; its speed per
13.3 ms frame (target ≤ 4 ms, 0.3x real time) is printed beside the Python engine's in the same run."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from streaming import StreamingEncoder  # noqa: E402
from streaming.onnx_engine import OnnxStreamingDecoder, OnnxStreamingEncoder  # noqa: E402
from tests.test_onnx_engine import MAX_TIE_FRAMES, first_ties, speech  # noqa: E402,F401  (speech: the fixture)
from tests.web_page import chromium, install_web_packages, open_page, relay_serving_page, web_graphs  # noqa: E402,F401

FRAMES = 360
CODEC = """async ([pcm, codes, numCodebooks]) => {
  const { CodecWorker } = await import("/codec-client.js");
  const codec = new CodecWorker();
  await codec.request("init", { models: new URL("/models", location.href).href, bandwidth: "6" });
  await codec.request("encodeSignal", { pcm: Float32Array.from(pcm.slice(0, 3200)), bandwidth: "6" });  // warm-up
  const encoded = await codec.request("encodeSignal", { pcm: Float32Array.from(pcm), bandwidth: "6" });
  const decoded = await codec.request("decodeCodes", { codes: Int32Array.from(codes), numCodebooks });
  return { codes: Array.from(encoded.codes), encodeMs: encoded.msPerFrame, audio: Array.from(decoded.audio), decodeMs: decoded.msPerFrame };
}"""


@torch.no_grad()
def test_page_codec_equals_python_onnx_engine(speech, web_graphs):
    install_web_packages()
    model, cache, graphs = web_graphs  # the page and the Python engine read these very files
    audio = speech[..., : FRAMES * 320]
    encoder, decoder = OnnxStreamingEncoder(model, 6.0, cache_dir=cache), OnnxStreamingDecoder(model, cache_dir=cache)
    decoder.push(encoder.push(audio[..., :3200]))  # warm-up, as the page's
    encoder, decoder = OnnxStreamingEncoder(model, 6.0, cache_dir=cache), OnnxStreamingDecoder(model, cache_dir=cache)
    started = time.perf_counter()
    expected = encoder.push(audio)[0]  # (8, frames)
    encoded = time.perf_counter()
    reference = decoder.push(expected[None])[0, 0].numpy()
    python_ms = (encoded - started) * 1e3 / FRAMES, (time.perf_counter() - encoded) * 1e3 / FRAMES
    assert (expected[:, 1:] != expected[:, :-1]).any(0).float().mean() > 0.5, "codes change from frame to frame"

    with relay_serving_page(graphs) as served, chromium() as browser:
        page, errors = open_page(browser, served)
        result = page.evaluate(CODEC, [audio[0, 0].tolist(), expected.T.reshape(-1).tolist(), expected.shape[0]])
    assert errors == []

    got = torch.tensor(result["codes"]).reshape(FRAMES, -1).T
    embeddings = StreamingEncoder(model).stack.step(audio)[0]
    ties = first_ties(model, embeddings, expected, got)
    heard = np.array(result["audio"], np.float32)
    error = float(np.abs(heard - reference).max())
    print(f"\npage codec vs Python ONNX engine, {FRAMES} frames of speech at 6 kbps: {ties} frames differ (near-ties), "
          f"decoded audio within {error:.1e}; in Chromium (WASM, 1 thread): encode {result['encodeMs']:.2f} ms + "
          f"decode {result['decodeMs']:.2f} ms = {result['encodeMs'] + result['decodeMs']:.2f} ms a 13.3 ms frame "
          f"({(result['encodeMs'] + result['decodeMs']) / 13.333:.2f}x real time, target 4 ms); Python's ONNX Runtime "
          f"(1 thread) in the same run: {python_ms[0]:.2f} + {python_ms[1]:.2f} ms, the page takes "
          f"{(result['encodeMs'] + result['decodeMs']) / sum(python_ms):.2f}x its time (machine shared)")
    assert ties <= MAX_TIE_FRAMES
    assert heard.shape == reference.shape and error < 1e-4
