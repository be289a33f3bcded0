"""EnCodec hyper-parameters, with the fields, defaults and config.json format of `transformers.EncodecConfig`.

Keeping the hub's exact format means a `config.json` written by transformers loads here and ours loads
there, so checkpoints move freely between the two implementations.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

CONFIG_NAME = "config.json"
MODEL_TYPE = "encodec"
_PAD_MODES = ("reflect", "replicate", "constant", "circular")
_NORM_TYPES = ("weight_norm", "time_group_norm")


class ChunkGeometry:
    """Chunk length and stride in samples, for the config and the feature extractor alike.

    Needs `chunk_length_s`, `overlap` and `sampling_rate` attributes; None where not chunked.
    """

    chunk_length_s: float | None
    overlap: float | None
    sampling_rate: int

    @property
    def chunk_length(self) -> int | None:
        return None if self.chunk_length_s is None else int(self.chunk_length_s * self.sampling_rate)

    @property
    def chunk_stride(self) -> int | None:
        if self.chunk_length_s is None or self.overlap is None:
            return None
        return max(1, int((1.0 - self.overlap) * self.chunk_length))


@dataclass
class EncodecConfig(ChunkGeometry):
    """Architecture of an EnCodec model; defaults describe `facebook/encodec_24khz`."""

    target_bandwidths: list[float] = field(default_factory=lambda: [1.5, 3.0, 6.0, 12.0, 24.0])
    sampling_rate: int = 24_000
    audio_channels: int = 1
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None
    hidden_size: int = 128
    num_filters: int = 32
    num_residual_layers: int = 1
    upsampling_ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    norm_type: str = "weight_norm"
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_growth_rate: int = 2
    use_causal_conv: bool = True
    pad_mode: str = "reflect"
    compress: int = 2
    num_lstm_layers: int = 2
    trim_right_ratio: float = 1.0
    codebook_size: int = 1024
    codebook_dim: int | None = None
    use_conv_shortcut: bool = True
    return_dict: bool = True

    def __post_init__(self) -> None:
        self.target_bandwidths = [float(b) for b in self.target_bandwidths]
        self.upsampling_ratios = [int(r) for r in self.upsampling_ratios]
        if self.codebook_dim is None:
            self.codebook_dim = self.hidden_size
        self._validate()

    def _validate(self) -> None:
        problems = []
        if self.norm_type not in _NORM_TYPES:
            problems.append(f"norm_type must be one of {_NORM_TYPES}, got {self.norm_type!r}")
        if self.audio_channels not in (1, 2):
            problems.append(f"audio_channels must be 1 (mono) or 2 (stereo), got {self.audio_channels}")
        if self.pad_mode not in _PAD_MODES:
            problems.append(f"pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")
        if self.sampling_rate <= 0:
            problems.append(f"sampling_rate must be positive, got {self.sampling_rate}")
        if not self.upsampling_ratios or any(r < 1 for r in self.upsampling_ratios):
            problems.append(f"upsampling_ratios must be positive integers, got {self.upsampling_ratios}")
        if not self.target_bandwidths or any(b <= 0 for b in self.target_bandwidths):
            problems.append(f"target_bandwidths must be positive, got {self.target_bandwidths}")
        if self.codebook_size < 2 or self.codebook_size & (self.codebook_size - 1):
            problems.append(f"codebook_size must be a power of 2, got {self.codebook_size}")
        if self.codebook_dim != self.hidden_size:
            problems.append(
                f"codebook_dim ({self.codebook_dim}) must equal hidden_size ({self.hidden_size}): "
                "the quantizer works directly on the encoder's output"
            )
        if self.compress < 1 or self.num_filters < 1 or self.hidden_size < 1:
            problems.append("compress, num_filters and hidden_size must be positive")
        elif self.num_filters < self.compress:
            problems.append(f"num_filters ({self.num_filters}) must be at least compress ({self.compress})")
        if not 0.0 <= self.trim_right_ratio <= 1.0:
            problems.append(f"trim_right_ratio must lie in [0, 1], got {self.trim_right_ratio}")
        if not self.use_causal_conv and self.trim_right_ratio != 1.0:
            problems.append("trim_right_ratio != 1.0 only makes sense for causal convolutions")
        if self.chunk_length_s is not None and self.chunk_length_s <= 0:
            problems.append(f"chunk_length_s must be positive, got {self.chunk_length_s}")
        if self.overlap is not None and not 0.0 <= self.overlap < 1.0:
            problems.append(f"overlap must lie in [0, 1), got {self.overlap}")
        if self.num_lstm_layers < 0 or self.num_residual_layers < 0:
            problems.append("num_lstm_layers and num_residual_layers cannot be negative")
        if problems:
            raise ValueError("Invalid EncodecConfig: " + "; ".join(problems))

    # Derived values, named as in transformers (chunk_length and chunk_stride come from ChunkGeometry).
    @property
    def hop_length(self) -> int:
        return math.prod(self.upsampling_ratios)

    @property
    def codebook_nbits(self) -> int:
        return math.ceil(math.log2(self.codebook_size))

    @property
    def frame_rate(self) -> int:
        return math.ceil(self.sampling_rate / self.hop_length)

    @property
    def num_quantizers(self) -> int:
        return int(1000 * self.target_bandwidths[-1] // (self.frame_rate * self.codebook_nbits))

    def num_quantizers_for_bandwidth(self, bandwidth: float | None) -> int:
        """Codebooks used at `bandwidth` kbps (all of them for None or 0), as the residual VQ counts them."""
        if bandwidth is None or bandwidth <= 0.0:
            return self.num_quantizers
        bits_per_codebook_per_s = math.log2(self.codebook_size) * self.frame_rate
        return int(max(1, math.floor(bandwidth * 1000 / bits_per_codebook_per_s)))

    def check_bandwidth(self, bandwidth: float) -> None:
        if bandwidth not in self.target_bandwidths:
            raise ValueError(
                f"This model doesn't support the bandwidth {bandwidth} kbps. "
                f"Select one of {self.target_bandwidths}."
            )

    # Serialisation in the hub's format.
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("return_dict")
        data["model_type"] = MODEL_TYPE
        data["architectures"] = ["EncodecModel"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncodecConfig":
        """Build from a hub config.json dict; generic transformers keys (dtype, architectures…) are ignored."""
        model_type = data.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config.json describes a {model_type!r} model, not an {MODEL_TYPE!r} model")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "EncodecConfig":
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        return cls.from_dict(data)


def config_24khz() -> EncodecConfig:
    """The architecture of `facebook/encodec_24khz`."""
    return EncodecConfig()


def config_48khz() -> EncodecConfig:
    """The architecture of `facebook/encodec_48khz`: stereo, non-causal, normalised 1 s chunks."""
    return EncodecConfig(
        target_bandwidths=[3.0, 6.0, 12.0, 24.0],
        sampling_rate=48_000,
        audio_channels=2,
        normalize=True,
        chunk_length_s=1.0,
        overlap=0.01,
        norm_type="time_group_norm",
        use_causal_conv=False,
    )
