"""A training run's checkpoint (`<run-dir>/last.pt`) and the model in it, for every module that reads or writes one.

`train.py` writes and resumes checkpoints, `export.py` turns one into the bundled model and
`evaluate.py` / `compare.py` measure the model in one; they all come here instead of importing each
other. A checkpoint is a `torch.save`d dict: "model", "optimizer" and "balancer" state, "step",
"trained_seconds", "args" (the run's options), "config" (the model's `EncodecConfig`) and, in an
adversarial run, "discriminator", "disc_optimizer" and "disc_start".
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from codec import EncodecConfig, EncodecModel

# The bundled model's architecture; see codec/MODEL_CARD.md for why these sizes.
DEFAULT_CONFIG = dict(num_filters=22, hidden_size=64, num_lstm_layers=1)
# Every checkpoint written before checkpoints carried their config is of this width.
FIRST_NUM_FILTERS = 16


def model_config(num_filters: int = DEFAULT_CONFIG["num_filters"]) -> EncodecConfig:
    """The bundled model's architecture at `num_filters` wide: a run may widen it (`--num-filters`), and
    the first runs' checkpoints are narrower."""
    return EncodecConfig(**{**DEFAULT_CONFIG, "num_filters": num_filters})


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """The whole state in `path`, tensors on `device`.

    Not `weights_only`: besides tensors a checkpoint holds the run's options and the optimizers' and
    balancer's plain-Python state, and it is only ever a file this project wrote.
    """
    return torch.load(path, map_location=device, weights_only=False)


def checkpoint_config(state: dict) -> EncodecConfig:
    """The architecture a checkpoint's weights are for; checkpoints from before widening do not say it."""
    return EncodecConfig.from_dict(state["config"]) if "config" in state else model_config(FIRST_NUM_FILTERS)


def model_from_checkpoint(path: str | Path) -> tuple[EncodecModel, dict]:
    """The model of a `last.pt` (in evaluation mode) and the checkpoint's state."""
    state = load_checkpoint(path)
    model = EncodecModel(checkpoint_config(state))
    model.load_state_dict(state["model"])
    return model.eval(), state


def save_checkpoint(path: Path, state: dict) -> None:
    """Write `state` to `path` through a temporary file, so that a run killed while saving still has its
    previous checkpoint to resume from."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export_model(model: EncodecModel, out: str, dtype: torch.dtype = torch.float16) -> int:
    """Write `model` (cast in place to `dtype`) in the hub layout; returns the size of its weights file.

    float16 halves the file (the 32 codebooks with their EMA statistics are most of it); loading casts
    back to float32, so the shipped model *is* the rounded one.
    """
    model.to(dtype).save_pretrained(out)
    return os.path.getsize(os.path.join(out, "model.safetensors"))
