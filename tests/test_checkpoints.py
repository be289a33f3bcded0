"""Loading from Meta `.th` files, from the hub's cache layout, and the errors users meet."""

from __future__ import annotations

import hashlib
import sys
import types

import pytest
import torch

from codec import CheckpointError, EncodecConfig, EncodecModel, load_model
from tests.models import fill_realistic_codebooks, small_model, speech_like


def _import_meta_encodec():
    """Meta's `encodec` package, as an oracle. It imports torchaudio only for file I/O, which we don't use;
    a torchaudio wheel that does not match this torch build cannot load, so a stand-in replaces it."""
    try:
        import torchaudio  # noqa: F401
    except Exception:
        sys.modules.pop("torchaudio", None)
        stub = types.ModuleType("torchaudio")
        stub.transforms = types.ModuleType("torchaudio.transforms")
        sys.modules["torchaudio"], sys.modules["torchaudio.transforms"] = stub, stub.transforms
    return pytest.importorskip("encodec")


@pytest.mark.parametrize("preset", ["24khz", "48khz"])
def test_meta_checkpoint_matches_meta_model(preset, tmp_path):
    encodec = _import_meta_encodec()
    torch.manual_seed(0)
    meta = getattr(encodec.EncodecModel, f"encodec_model_{preset}")(pretrained=False).eval()
    path = tmp_path / f"encodec_{preset}-test.th"
    torch.save(meta.state_dict(), path)

    # Realistic codebooks (and the encoder offset they assume) are computed on our model, then written into
    # Meta's model under Meta's own names, spelled out here rather than through our loader's renaming: a
    # mistake in that renaming must not travel into the oracle. Every other tensor is Meta's own.
    ours = EncodecModel.from_pretrained(path)
    fill_realistic_codebooks(ours, seed=1)
    with torch.no_grad():
        for layer, meta_layer in zip(ours.quantizer.layers, meta.quantizer.vq.layers):
            for name in ("embed", "embed_avg", "cluster_size"):
                getattr(meta_layer._codebook, name).copy_(getattr(layer.codebook, name))
        meta.encoder.model[-1].conv.conv.bias.copy_(ours.encoder.layers[-1].conv.bias)
    torch.save(meta.state_dict(), path)
    ours = EncodecModel.from_pretrained(path)
    assert ours.config.sampling_rate == meta.sample_rate and ours.config.audio_channels == meta.channels

    config = ours.config
    audio = speech_like(int(1.2 * config.sampling_rate), config.sampling_rate, config.audio_channels, seed=2)
    bandwidth = config.target_bandwidths[2]
    meta.set_target_bandwidth(bandwidth)
    with torch.no_grad():
        meta_frames = meta.encode(audio)
        meta_audio = meta.decode(meta_frames)
    encoded = ours.encode(audio, bandwidth=bandwidth)
    assert len(meta_frames) == encoded.audio_codes.shape[0]
    for index, ((codes, scale), our_codes, our_scale) in enumerate(zip(meta_frames, encoded.audio_codes, encoded.audio_scales)):
        # Only the last chunk is shorter in Meta's frames: ours pads it to the others' length, as transformers does.
        last = index == len(meta_frames) - 1
        assert our_codes.shape[-1] - codes.shape[-1] == (encoded.last_frame_pad_length if last else 0)
        assert torch.equal(codes, our_codes[..., : codes.shape[-1]])
        assert codes[0, 0].unique().numel() > 10, "codes barely vary"
        if scale is not None:
            torch.testing.assert_close(our_scale.view(-1), scale.view(-1))
    decoded = ours.decode(encoded.audio_codes, encoded.audio_scales, last_frame_pad_length=encoded.last_frame_pad_length)
    torch.testing.assert_close(decoded.audio_values, meta_audio, atol=1e-4, rtol=0)


def _write_hub_cache(cache, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40) -> None:
    """The Hugging Face cache layout: blobs named by content hash, snapshots linking to them, refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        blob = repo / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        (snapshot / name).symlink_to(blob)


def test_hub_id_loads_from_the_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    model = small_model()
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    cache = tmp_path / "hub"
    files = {name: (saved / name).read_bytes() for name in ("config.json", "model.safetensors")}
    _write_hub_cache(cache, "facebook/encodec_24khz", files)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    loaded = load_model("facebook/encodec_24khz", cache_dir=cache)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(Exception, match="encodec_48khz|cache|offline|not found"):
        load_model("facebook/encodec_48khz", cache_dir=cache)


def test_mismatched_checkpoint_names_file_and_keys(tmp_path):
    small_model().save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*shape mismatches: decoder\.layers\.0\.conv\.bias \(64,\) != \(128,\)"):
        EncodecModel.from_pretrained(tmp_path, config=EncodecConfig(num_filters=8, hidden_size=16, num_lstm_layers=1))
    with pytest.raises(CheckpointError, match=r"missing keys: decoder\.layers\.1\.lstm"):
        EncodecModel.from_pretrained(tmp_path, config=EncodecConfig(num_filters=4, hidden_size=16, num_lstm_layers=2))


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        EncodecModel.from_pretrained(tmp_path)
    small_model().config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        EncodecModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="Cannot read checkpoint"):
        EncodecModel.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.th"):
        EncodecModel.from_pretrained(tmp_path / "missing.th")


def test_config_validation_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="norm_type"):
        EncodecConfig(norm_type="batch_norm")
    with pytest.raises(ValueError, match="audio_channels"):
        EncodecConfig(audio_channels=3)
    with pytest.raises(ValueError, match="power of 2"):
        EncodecConfig(codebook_size=1000)
    with pytest.raises(ValueError, match=r"num_filters \(1\) must be at least compress \(2\)"):
        EncodecConfig(num_filters=1)
    config = EncodecConfig(num_filters=8, target_bandwidths=[1.5, 6])
    config.save_pretrained(tmp_path)
    assert EncodecConfig.from_json_file(tmp_path / "config.json") == config
    assert (config.hop_length, config.frame_rate, config.num_quantizers, config.codebook_nbits) == (320, 75, 8, 10)
    assert EncodecConfig(chunk_length_s=1.0, overlap=0.01).chunk_stride == 23760


def test_fingerprint_names_the_weights_not_just_the_architecture(tmp_path):
    model = small_model()
    model.save_pretrained(tmp_path / "saved")
    assert EncodecModel.from_pretrained(tmp_path / "saved").fingerprint() == model.fingerprint()

    retrained = EncodecModel.from_pretrained(tmp_path / "saved")
    before = retrained.fingerprint()
    with torch.no_grad():  # same config, one codebook entry moved: the codes mean something else
        retrained.quantizer.layers[0].codebook.embed[3] += 1e-3
    assert retrained.config == model.config
    assert retrained.fingerprint() != before  # the cached value follows in-place changes
    assert len(before) == 32
