"""Named models: the bundled default, or anything `EncodecModel.from_pretrained` accepts."""

from __future__ import annotations

from pathlib import Path

from .model import EncodecModel

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def load_default_model() -> EncodecModel:
    """The compact model that ships with the package, so that everything works without a network."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"No bundled default model in {DEFAULT_MODEL_DIR}. Pass a model explicitly, e.g. "
            "--model facebook/encodec_24khz (needs a network once), a checkpoint directory, or a Meta .th file."
        )
    return EncodecModel.from_pretrained(DEFAULT_MODEL_DIR)


def load_model(spec: str = "default", **kwargs) -> EncodecModel:
    """`"default"`, a checkpoint directory, a hub id such as `facebook/encodec_24khz`, or a Meta `.th` file."""
    if spec == "default":
        return load_default_model()
    return EncodecModel.from_pretrained(spec, **kwargs)
