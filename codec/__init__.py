"""EnCodec (Défossez et al.) as `transformers.EncodecModel` users know it; offline only, no streaming logic."""

from .config import EncodecConfig, config_24khz, config_48khz
from .feature_extraction import BatchFeature, EncodecFeatureExtractor
from .loading import CheckpointError
from .model import EncodecModel
from .pretrained import DEFAULT_MODEL_DIR, load_default_model, load_model
from .outputs import EncodecDecoderOutput, EncodecEncoderOutput, EncodecOutput

__all__ = [
    "DEFAULT_MODEL_DIR",
    "BatchFeature",
    "CheckpointError",
    "EncodecConfig",
    "EncodecDecoderOutput",
    "EncodecEncoderOutput",
    "EncodecFeatureExtractor",
    "EncodecModel",
    "EncodecOutput",
    "config_24khz",
    "config_48khz",
    "load_default_model",
    "load_model",
]
