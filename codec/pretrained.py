"""Named models: the bundled default, or anything `EncodecModel.from_pretrained` accepts; and their configs,
read without the weights where they are at hand (a command checks its options before loading a model)."""

from __future__ import annotations

from pathlib import Path

from .config import CONFIG_NAME, EncodecConfig
from .model import EncodecModel

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


def load_default_model() -> EncodecModel:
    """The compact model that ships with the package, so that everything works without a network."""
    if not (DEFAULT_MODEL_DIR / CONFIG_NAME).is_file():
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


def known_config(spec: str) -> EncodecConfig | None:
    """A model's config.json, read without its weights where it is at hand: the bundled model, a
    checkpoint directory, a hub model in the local cache. ``None`` where it is not (a Meta ``.th``
    file, a hub model not downloaded yet): such a model is checked once loaded.
    Raises ``ValueError`` for a config.json that is not one."""
    if spec == "default":
        path = DEFAULT_MODEL_DIR / CONFIG_NAME
    elif Path(spec).is_dir():
        path = Path(spec) / CONFIG_NAME
    elif Path(spec).exists() or spec.count("/") != 1:
        return None
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec, CONFIG_NAME)  # the local cache only: no network here
        except Exception:  # not a hub id either: the loader will say what it is not
            cached = None
        path = Path(cached) if isinstance(cached, str) else None
    return EncodecConfig.from_json_file(path) if path is not None and path.is_file() else None
