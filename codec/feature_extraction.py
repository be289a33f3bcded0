"""`EncodecFeatureExtractor`: raw audio (lists or arrays, mono or stereo, batched or not) → padded model input.

Follows the documented behaviour of `transformers.EncodecFeatureExtractor`, including chunk-aligned
padding for chunked models, so that code written for transformers runs unchanged.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import numpy as np
import torch

from .config import ChunkGeometry

logger = logging.getLogger(__name__)
PREPROCESSOR_NAME = "preprocessor_config.json"
_PAD_LONGEST = {True, "longest"}
_NO_PADDING = {False, "do_not_pad"}


class BatchFeature(dict):
    """A dict whose keys are also attributes (`inputs.input_values`), as transformers returns."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as error:
            raise AttributeError(name) from error


class EncodecFeatureExtractor(ChunkGeometry):
    def __init__(
        self,
        feature_size: int = 1,
        sampling_rate: int = 24_000,
        padding_value: float = 0.0,
        chunk_length_s: float | None = None,
        overlap: float | None = None,
        **_: Any,
    ) -> None:
        if feature_size not in (1, 2):
            raise ValueError(f"feature_size is the number of audio channels, 1 or 2; got {feature_size}")
        self.feature_size = feature_size
        self.sampling_rate = sampling_rate
        self.padding_value = padding_value
        self.chunk_length_s = chunk_length_s
        self.overlap = overlap

    @classmethod
    def from_config(cls, config: Any) -> "EncodecFeatureExtractor":
        """The feature extractor that matches an `EncodecConfig`."""
        return cls(config.audio_channels, config.sampling_rate, 0.0, config.chunk_length_s, config.overlap)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "EncodecFeatureExtractor":
        with open(os.path.join(directory, PREPROCESSOR_NAME), encoding="utf-8") as f:
            return cls(**json.load(f))

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        data = {
            "feature_extractor_type": "EncodecFeatureExtractor",
            "feature_size": self.feature_size,
            "sampling_rate": self.sampling_rate,
            "padding_value": self.padding_value,
            "padding_side": "right",
            "return_attention_mask": True,
            "chunk_length_s": self.chunk_length_s,
            "overlap": self.overlap,
        }
        with open(os.path.join(directory, PREPROCESSOR_NAME), "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2)

    def __call__(
        self,
        raw_audio: np.ndarray | Sequence[float] | Sequence[np.ndarray] | Sequence[Sequence[float]],
        padding: bool | str | None = None,
        truncation: bool | None = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        sampling_rate: int | None = None,
    ) -> BatchFeature:
        """Mono `(samples,)` or stereo `(2, samples)` audio, or a list of them → `input_values` `(batch, channels, samples)`.

        `padding_mask` marks real samples with 1 whenever padding is on.
        """
        if sampling_rate is None:
            logger.warning("Pass sampling_rate to EncodecFeatureExtractor() to catch audio at the wrong rate.")
        elif sampling_rate != self.sampling_rate:
            raise ValueError(
                f"The model expects audio sampled at {self.sampling_rate} Hz, got {sampling_rate} Hz: resample it first"
            )
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        if padding and truncation:
            raise ValueError("Both padding and truncation were set. Make sure you only set one.")
        if padding is None:
            padding = True
        if padding not in _PAD_LONGEST | _NO_PADDING | {"max_length"}:
            raise ValueError(f"padding must be True, False, 'longest', 'max_length' or 'do_not_pad', got {padding!r}")

        examples = self._time_major_examples(raw_audio)
        if self.chunk_length is not None and self.chunk_stride is not None and max_length is None:
            if truncation:
                steps = int(np.floor(min(len(e) for e in examples) / self.chunk_stride))
                max_length = (steps - 1) * self.chunk_stride + self.chunk_length
            elif padding:
                steps = int(np.ceil(max(len(e) for e in examples) / self.chunk_stride))
                max_length = (steps - 1) * self.chunk_stride + self.chunk_length
                padding = "max_length"
        if truncation:
            if max_length is None:
                raise ValueError("When setting truncation=True, make sure that max_length is defined.")
            examples = [e[:max_length] for e in examples]

        features = BatchFeature()
        if padding in _NO_PADDING:
            target = None
        elif padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length (or a chunked feature extractor)")
            target = max_length
        else:
            target = max(len(e) for e in examples)
        if target is not None:
            masks = [np.zeros(max(target, len(e)), dtype=np.int32) for e in examples]
            for mask, example in zip(masks, examples):
                mask[: len(example)] = 1
            examples = [self._pad(e, target) for e in examples]
            features["padding_mask"] = masks
        features["input_values"] = [e.reshape(len(e), -1).T for e in examples]
        if return_tensors is not None:
            for key, values in features.items():
                if len({v.shape for v in values}) > 1:
                    raise ValueError(
                        "Examples have different lengths: set padding=True (or 'max_length') to batch them"
                    )
                stacked = np.stack(values)
                features[key] = torch.from_numpy(stacked) if return_tensors == "pt" else stacked
        return features

    def _time_major_examples(self, raw_audio: Any) -> list[np.ndarray]:
        """Each example as float32 `(samples,)` (mono) or `(samples, 2)` (stereo), validated."""
        is_batched = isinstance(raw_audio, (list, tuple)) and len(raw_audio) > 0 and isinstance(
            raw_audio[0], (np.ndarray, list, tuple)
        )
        items = raw_audio if is_batched else [raw_audio]
        examples = [np.asarray(item, dtype=np.float32).T for item in items]
        if not examples:
            raise ValueError("raw_audio is empty")
        for example in examples:
            if example.ndim > 2:
                raise ValueError(f"Expected audio of shape (samples,) or (channels, samples), got {example.T.shape}")
            if self.feature_size == 1 and example.ndim != 1:
                raise ValueError(f"Expected mono audio of shape (samples,), got shape {example.T.shape}")
            if self.feature_size == 2 and (example.ndim != 2 or example.shape[-1] != 2):
                raise ValueError(f"Expected stereo audio of shape (2, samples), got shape {example.T.shape}")
        return examples

    def _pad(self, example: np.ndarray, length: int) -> np.ndarray:
        missing = length - len(example)
        if missing <= 0:
            return example
        widths = [(0, missing)] + [(0, 0)] * (example.ndim - 1)
        return np.pad(example, widths, constant_values=self.padding_value)
