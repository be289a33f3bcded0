"""Checkpoint loading and saving: hub directories, hub ids and Meta `.th` files.

Three naming schemes exist for the same weights: transformers' current one (weight norm as
`parametrizations.weight.original0/1`), the hub's older `weight_g`/`weight_v`, and the `encodec`
package's (`encoder.model.0.conv.conv.weight_g`). Everything is translated to the first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from .config import CONFIG_NAME, EncodecConfig, config_24khz, config_48khz

SAFETENSORS_NAME = "model.safetensors"
PYTORCH_NAME = "pytorch_model.bin"
_MAX_KEYS_SHOWN = 8

ModelT = TypeVar("ModelT", bound=nn.Module)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model: names the file and the offending keys."""


# Parameter names ------------------------------------------------------------------------------
_META_RENAMES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(encoder|decoder)\.model\."), r"\1.layers."),
    (re.compile(r"\.conv\.conv\.|\.convtr\.convtr\."), ".conv."),
    (re.compile(r"\.(conv|convtr)\.norm\."), ".norm."),
    (re.compile(r"^quantizer\.vq\.layers\.(\d+)\._codebook\."), r"quantizer.layers.\1.codebook."),
]
_WEIGHT_NORM_RENAMES = {
    "weight_g": "parametrizations.weight.original0",
    "weight_v": "parametrizations.weight.original1",
}


def _is_meta_checkpoint(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith(("encoder.model.", "decoder.model.", "quantizer.vq.")) for key in state_dict)


def to_model_names(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Meta and legacy hub parameter names to this model's names."""
    renamed = {}
    meta = _is_meta_checkpoint(state_dict)
    for key, value in state_dict.items():
        if meta:
            for pattern, replacement in _META_RENAMES:
                key = pattern.sub(replacement, key)
        prefix, _, last = key.rpartition(".")
        if last in _WEIGHT_NORM_RENAMES:
            key = f"{prefix}.{_WEIGHT_NORM_RENAMES[last]}"
        renamed[key] = value
    return renamed


def infer_config(state_dict: dict[str, torch.Tensor]) -> EncodecConfig:
    """Architecture of a checkpoint that comes without config.json (Meta's `.th` files).

    The 48 kHz preset is recognised by its group norms; sizes are read off the tensors.
    """
    has_group_norm = any(key.endswith(".norm.weight") for key in state_dict)
    config = config_48khz() if has_group_norm else config_24khz()
    first = state_dict.get("encoder.layers.0.conv.parametrizations.weight.original1", state_dict.get("encoder.layers.0.conv.weight"))
    embed = state_dict.get("quantizer.layers.0.codebook.embed")
    if first is None or embed is None:
        raise CheckpointError("Cannot infer the architecture: the checkpoint has no first encoder conv or no codebook")
    n_q = len({key.split(".")[2] for key in state_dict if key.startswith("quantizer.layers.")})
    codebook_size, hidden_size = embed.shape
    data = config.to_dict()
    data.update(
        audio_channels=first.shape[1],
        num_filters=first.shape[0],
        hidden_size=hidden_size,
        codebook_dim=hidden_size,
        codebook_size=codebook_size,
    )
    inferred = EncodecConfig.from_dict(data)
    bits_per_s = inferred.frame_rate * inferred.codebook_nbits / 1000
    largest = max(inferred.target_bandwidths)
    if round(largest / bits_per_s) != n_q:
        raise CheckpointError(f"Cannot infer the architecture: {n_q} codebooks do not match the {largest} kbps preset")
    return inferred


# Files ------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, `.bin`, `.pt` or `.th` file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt or foreign files raise many different types
        raise CheckpointError(f"Cannot read checkpoint {path}: {error}") from error
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return loaded


def _describe(keys: list[str]) -> str:
    shown = ", ".join(sorted(keys)[:_MAX_KEYS_SHOWN])
    return shown + (f" (and {len(keys) - _MAX_KEYS_SHOWN} more)" if len(keys) > _MAX_KEYS_SHOWN else "")


def load_state_dict_into(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Strict load whose error names the file and the missing, unexpected or mis-shaped keys."""
    expected = model.state_dict()
    state_dict = to_model_names(state_dict)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mis_shaped = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatches: {_describe(mis_shaped)}")
    if problems:
        raise CheckpointError(f"Checkpoint {source} does not fit this model's config: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def _resolve_hub(repo_id: str, **hub_kwargs) -> tuple[Path, Path]:
    """Download (or find in the local cache) config.json and the weights of a hub model."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    config_path = Path(hf_hub_download(repo_id, CONFIG_NAME, **hub_kwargs))
    for name in (SAFETENSORS_NAME, PYTORCH_NAME):
        try:
            return config_path, Path(hf_hub_download(repo_id, name, **hub_kwargs))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
    raise CheckpointError(f"Hub model {repo_id} has neither {SAFETENSORS_NAME} nor {PYTORCH_NAME}")


def _resolve_directory(directory: Path) -> tuple[Path, Path]:
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
    for name in (SAFETENSORS_NAME, PYTORCH_NAME):
        if (directory / name).is_file():
            return config_path, directory / name
    raise FileNotFoundError(f"{directory} has neither {SAFETENSORS_NAME} nor {PYTORCH_NAME}")


def load_pretrained(
    model_class: Callable[[EncodecConfig], ModelT],
    source: str | os.PathLike,
    config: EncodecConfig | None = None,
    **hub_kwargs,
) -> ModelT:
    """Build `model_class` from a directory, a single checkpoint file, or a hub id; in eval mode."""
    path = Path(source)
    if path.is_dir():
        config_path, weights_path = _resolve_directory(path)
    elif path.is_file():
        config_path, weights_path = None, path
    elif path.suffix in {".th", ".safetensors", ".bin", ".pt"} or path.is_absolute():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    else:
        config_path, weights_path = _resolve_hub(str(source), **hub_kwargs)
    state_dict = to_model_names(read_state_dict(weights_path))
    if config is None:
        config = EncodecConfig.from_json_file(config_path) if config_path else infer_config(state_dict)
    model = model_class(config)
    load_state_dict_into(model, state_dict, str(weights_path))
    return model.eval()


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> None:
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(directory)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / SAFETENSORS_NAME), metadata={"format": "pt"})
