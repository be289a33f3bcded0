"""Our EnCodec against transformers as an oracle: same weights, same codes, same audio, same shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from codec import EncodecFeatureExtractor, EncodecModel, config_48khz
from tests.models import fill_realistic_codebooks, speech_like

PRESETS = {
    "24khz": dict(kwargs={}, bandwidths=[1.5, 6.0, 24.0], seconds=1.5),
    "48khz": dict(kwargs=config_48khz().to_dict(), bandwidths=[3.0, 24.0], seconds=1.3),
}


@pytest.fixture(scope="module", params=sorted(PRESETS))
def pair(request, tmp_path_factory):
    """(preset, transformers model, our model loaded from the transformers checkpoint, checkpoint dir)."""
    preset = PRESETS[request.param]
    kwargs = {k: v for k, v in preset["kwargs"].items() if k not in ("model_type", "architectures")}
    torch.manual_seed(0)
    reference = transformers.EncodecModel(transformers.EncodecConfig(**kwargs)).eval()
    with torch.no_grad():
        fill_realistic_codebooks(reference, seed=1)
    directory = tmp_path_factory.mktemp(request.param)
    reference.save_pretrained(directory)
    ours = EncodecModel.from_pretrained(directory)
    return preset, reference, ours, directory


def _audio(model, seconds: float, batch: int = 2) -> torch.Tensor:
    config = model.config
    return speech_like(int(seconds * config.sampling_rate), config.sampling_rate, config.audio_channels, batch, seed=3)


def test_codes_identical_and_varied(pair):
    preset, reference, ours, _ = pair
    audio = _audio(ours, preset["seconds"])
    for bandwidth in preset["bandwidths"]:
        with torch.no_grad():
            expected = reference.encode(audio, bandwidth=bandwidth)
        got = ours.encode(audio, bandwidth=bandwidth)
        assert got.audio_codes.shape == expected.audio_codes.shape
        assert torch.equal(got.audio_codes, expected.audio_codes), f"codes differ at {bandwidth} kbps"
        assert got.last_frame_pad_length == expected.last_frame_pad_length
        for scale, expected_scale in zip(got.audio_scales, expected.audio_scales):
            assert (scale is None) == (expected_scale is None)
            if scale is not None:
                torch.testing.assert_close(scale, expected_scale)
        for q in range(got.audio_codes.shape[2]):
            assert got.audio_codes[0, 0, q].unique().numel() > 10, "codes barely vary: the comparison would be vacuous"


def test_decode_matches(pair):
    preset, reference, ours, _ = pair
    audio = _audio(ours, preset["seconds"])
    encoded = ours.encode(audio, bandwidth=preset["bandwidths"][-1])
    with torch.no_grad():
        expected = reference.decode(encoded.audio_codes, encoded.audio_scales, last_frame_pad_length=encoded.last_frame_pad_length)
    got = ours.decode(encoded.audio_codes, encoded.audio_scales, last_frame_pad_length=encoded.last_frame_pad_length)
    assert got.audio_values.shape == expected.audio_values.shape
    assert got.audio_values.abs().max() > 1e-3
    torch.testing.assert_close(got.audio_values, expected.audio_values, atol=1e-4, rtol=0)
    # Indexing the output as transformers' users do gives transformers' audio.
    for key in (0, "audio_values"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=0)


def test_feature_extractor_batches_and_forward(pair):
    """Batches of different lengths, padded by both feature extractors, give the same forward outputs."""
    preset, reference, ours, _ = pair
    config = ours.config
    rate, channels = config.sampling_rate, config.audio_channels
    lengths = [int(preset["seconds"] * rate), int(0.6 * preset["seconds"] * rate) + 17]
    raw = [speech_like(n, rate, channels, seed=i)[0].numpy() for i, n in enumerate(lengths)]
    raw = [r[0] if channels == 1 else r for r in raw]
    kwargs = dict(feature_size=channels, sampling_rate=rate, chunk_length_s=config.chunk_length_s, overlap=config.overlap)
    inputs = EncodecFeatureExtractor(**kwargs)(raw, sampling_rate=rate, return_tensors="pt")
    expected_inputs = transformers.EncodecFeatureExtractor(**kwargs)(raw, sampling_rate=rate, return_tensors="pt")
    assert torch.equal(inputs.input_values, expected_inputs["input_values"])
    assert torch.equal(inputs.padding_mask, expected_inputs["padding_mask"])
    for bandwidth in preset["bandwidths"][-1:]:  # every bandwidth is covered by the encode test
        got = ours(inputs.input_values, inputs.padding_mask, bandwidth=bandwidth)
        with torch.no_grad():
            expected = reference(inputs.input_values, inputs.padding_mask, bandwidth=bandwidth)
        assert torch.equal(got.audio_codes, expected.audio_codes)
        assert got.audio_values.shape == expected.audio_values.shape
        torch.testing.assert_close(got.audio_values, expected.audio_values, atol=1e-4, rtol=0)
        # The tuple form, against transformers' tuple form (not against our own dict form).
        codes, values = ours(inputs.input_values, inputs.padding_mask, bandwidth=bandwidth, return_dict=False)
        with torch.no_grad():
            expected_codes, expected_values = reference(inputs.input_values, inputs.padding_mask, bandwidth=bandwidth, return_dict=False)
        assert torch.equal(codes, expected_codes)
        torch.testing.assert_close(values, expected_values, atol=1e-4, rtol=0)


def test_bandwidth_none_is_smallest_and_unknown_raises(pair):
    preset, reference, ours, _ = pair
    audio = _audio(ours, 0.5, batch=1)
    smallest = ours.encode(audio).audio_codes
    with torch.no_grad():
        assert torch.equal(smallest, reference.encode(audio).audio_codes)  # transformers' bandwidth=None
    assert smallest.shape[2] == ours.config.num_quantizers_for_bandwidth(ours.config.target_bandwidths[0])
    assert smallest[0, 0, 0].unique().numel() > 5, "codes barely vary"
    with pytest.raises(ValueError, match="bandwidth 5.0"):
        ours.encode(audio, bandwidth=5.0)


def test_save_pretrained_loads_in_transformers(pair, tmp_path):
    preset, reference, ours, _ = pair
    ours.save_pretrained(tmp_path)
    reloaded = transformers.EncodecModel.from_pretrained(tmp_path).eval()
    for key, value in reference.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key
    config = transformers.EncodecConfig.from_pretrained(tmp_path)
    for name, value in ours.config.to_dict().items():
        if name not in ("model_type", "architectures"):
            assert getattr(config, name) == value or list(getattr(config, name)) == value, name


def test_legacy_weight_norm_names_and_bin_files(pair, tmp_path):
    """The hub's older weight_g/weight_v names, in a pytorch_model.bin, load to the same model."""
    _, _, ours, directory = pair
    tensors = load_file(str(directory / "model.safetensors"))
    legacy = {
        k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
        for k, v in tensors.items()
    }
    assert any(k.endswith("weight_g") for k in legacy) or ours.config.norm_type != "weight_norm"
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    loaded = EncodecModel.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_feature_extractor_matches_transformers_options():
    rate = 24_000
    raw = [np.random.default_rng(0).standard_normal(n).astype(np.float32) for n in (1000, 1500)]
    ours, reference = EncodecFeatureExtractor(), transformers.EncodecFeatureExtractor()
    cases = [
        dict(padding=True),
        dict(padding="longest"),
        dict(padding="max_length", max_length=2000),
        dict(padding=False, truncation=True, max_length=900),
    ]
    for case in cases:
        got = ours(raw, sampling_rate=rate, return_tensors="np", **case)
        expected = reference(raw, sampling_rate=rate, return_tensors="np", **case)
        assert sorted(got) == sorted(expected.keys()), case
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key])
    single = ours(raw[0].tolist(), sampling_rate=rate, return_tensors="pt")
    assert single.input_values.shape == (1, 1, 1000) and single.padding_mask.all()
    unpadded = ours(raw, sampling_rate=rate, padding=False)
    assert [v.shape for v in unpadded.input_values] == [(1, 1000), (1, 1500)] and "padding_mask" not in unpadded


def test_feature_extractor_errors():
    extractor = EncodecFeatureExtractor()
    audio = np.zeros(100, dtype=np.float32)
    with pytest.raises(ValueError, match="48000 Hz"):
        extractor(audio, sampling_rate=48_000)
    with pytest.raises(ValueError, match="return_tensors"):
        extractor(audio, sampling_rate=24_000, return_tensors="tf")
    with pytest.raises(ValueError, match="padding and truncation"):
        extractor(audio, sampling_rate=24_000, padding=True, truncation=True)
    with pytest.raises(ValueError, match="mono"):
        extractor(np.zeros((2, 100)), sampling_rate=24_000)
    with pytest.raises(ValueError, match="stereo"):
        EncodecFeatureExtractor(feature_size=2)(np.zeros((3, 100)), sampling_rate=24_000)
    with pytest.raises(ValueError, match="different lengths"):
        extractor([audio, audio[:50]], sampling_rate=24_000, padding=False, return_tensors="pt")


def test_stereo_chunk_aligned_padding():
    extractor = EncodecFeatureExtractor(feature_size=2, sampling_rate=48_000, chunk_length_s=1.0, overlap=0.01)
    out = extractor(np.zeros((2, 50_000), dtype=np.float32), sampling_rate=48_000, return_tensors="pt")
    stride, length = extractor.chunk_stride, extractor.chunk_length
    assert out.input_values.shape == (1, 2, stride + length)
    assert out.padding_mask[0, :50_000].all() and not out.padding_mask[0, 50_000:].any()
