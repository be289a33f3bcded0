"""Beam search over the residual codebooks: same bitstream, lower error, streams like the greedy search."""

from __future__ import annotations

import itertools

import pytest
import torch

from codec.quantizer import residual_beam_search
from streaming import StartMode, StreamingEncoder
from call.search_width import SEARCH_WIDTH, default_search_width
from call.sender import Sender
from tests.models import realistic_model, speech_like
from tests.test_streaming import stream_encode


def _codebooks(sizes: list[int], dim: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(size, dim, generator=generator) / (i + 1) for i, size in enumerate(sizes)]


def _search(x: torch.Tensor, embeds: list[torch.Tensor], width: int) -> torch.Tensor:
    embeds_t = [e.t() for e in embeds]
    return residual_beam_search(x, embeds, embeds_t, [e.pow(2).sum(0, keepdim=True) for e in embeds_t], width)


def _error(x: torch.Tensor, embeds: list[torch.Tensor], codes: torch.Tensor) -> torch.Tensor:
    return (x - sum(e[codes[:, i]] for i, e in enumerate(embeds))).pow(2).sum(1)


def test_exhaustive_width_finds_the_best_codes():
    embeds = _codebooks([5, 4, 3], dim=3, seed=1)
    x = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
    codes = _search(x, embeds, width=5 * 4 * 3)
    every = torch.tensor(list(itertools.product(range(5), range(4), range(3))))
    best = torch.stack([_error(row[None].expand(len(every), -1), embeds, every).min() for row in x])
    torch.testing.assert_close(_error(x, embeds, codes), best)


def test_width_one_is_the_greedy_search_and_wider_is_better():
    model = realistic_model(seed=3)
    audio = speech_like(24_000, 24_000, seed=5)
    with torch.inference_mode():
        embeddings = model.encoder(audio)
    n_q = model.config.num_quantizers_for_bandwidth(6.0)
    greedy = model.quantizer.encode(embeddings, 6.0)
    assert torch.equal(model.quantizer.encode(embeddings, 6.0, search_width=1), greedy)
    flat = embeddings[0].t()
    embeds = [layer.codebook.embed for layer in model.quantizer.layers[:n_q]]
    errors = {w: float(_error(flat, embeds, _search(flat, embeds, w)).mean()) for w in (1, 4, 16)}
    assert errors[1] == pytest.approx(float(_error(flat, embeds, greedy[:, 0].t()).mean()))
    assert errors[16] < errors[4] < 0.97 * errors[1]


def test_model_encode_with_width_decodes_as_usual():
    model = realistic_model(seed=3)
    audio = speech_like(9_000, 24_000, seed=6)
    out = model.encode(audio, bandwidth=6.0, search_width=4)
    assert out.audio_codes.shape == model.encode(audio, bandwidth=6.0).audio_codes.shape
    decoded = model.decode(out.audio_codes, out.audio_scales, last_frame_pad_length=out.last_frame_pad_length)
    assert decoded.audio_values.shape[-1] >= audio.shape[-1]


def test_streaming_search_equals_offline_search():
    model = realistic_model(seed=3)
    audio = speech_like(int(1.1 * 24_000) + 5, 24_000, seed=7)
    offline = model.encode(audio, bandwidth=6.0, search_width=4).audio_codes[0]
    streamed = stream_encode(StreamingEncoder(model, 6.0, start=StartMode.EXACT, search_width=4), audio)
    assert torch.equal(streamed, offline)
    assert not torch.equal(offline, model.encode(audio, bandwidth=6.0).audio_codes[0])


@pytest.mark.parametrize("width", [0, -1, 2.5, True])
def test_bad_width_is_refused(width):
    model = realistic_model(seed=3)
    with pytest.raises(ValueError, match="search_width"):
        model.encode(speech_like(2_000, 24_000), bandwidth=6.0, search_width=width)
    with pytest.raises(ValueError, match="search_width"):
        StreamingEncoder(model, 6.0, search_width=width)


def test_command_lines_refuse_a_bad_width(capsys):
    import client
    from call import filecodec

    assert client.parse_args(["--room", "r"]).search_width is None  # the call's default for the bandwidth
    with pytest.raises(SystemExit):
        client.parse_args(["--room", "r", "--search-width", "0"])
    with pytest.raises(SystemExit):
        filecodec.main(["encode", "in.wav", "out.ecs", "--search-width", "four"])
    errors = capsys.readouterr().err
    assert "argument --search-width: must be a whole number, 1 (greedy) or more; got '0'" in errors
    assert "argument --search-width: must be a whole number, 1 (greedy) or more; got 'four'" in errors


def test_a_call_searches_at_low_rates_and_honours_an_explicit_width():
    from concurrent.futures import ThreadPoolExecutor

    model = realistic_model(seed=3)
    assert default_search_width(6.0) == SEARCH_WIDTH > 1 and default_search_width(12.0) == 1
    with ThreadPoolExecutor(1) as pool:
        assert Sender(model, pool, 6.0).encoder.search_width == SEARCH_WIDTH
        assert Sender(model, pool, 24.0).encoder.search_width == 1
        assert Sender(model, pool, 24.0, search_width=8).encoder.search_width == 8
        assert Sender(model, pool, 6.0, search_width=1).encoder.search_width == 1
