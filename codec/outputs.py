"""Model outputs that read like `transformers.ModelOutput`: attributes, keys, or positions."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


class ModelOutput:
    """A dataclass whose non-None fields can also be read as `out[0]` or `out["audio_codes"]`.

    Positions skip fields that are None, exactly as transformers does, so code written as
    `model.encode(x)[0]` keeps working.
    """

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self):
        return iter(self.to_tuple())

    def __len__(self) -> int:
        return len(self.to_tuple())


@dataclass
class EncodecEncoderOutput(ModelOutput):
    """`audio_codes` is `(nb_chunks, batch, n_q, frames)`; one scale `(batch, 1)` per chunk (None if not normalised)."""

    audio_codes: torch.Tensor | None = None
    audio_scales: list[torch.Tensor | None] | None = None
    last_frame_pad_length: int | None = None


@dataclass
class EncodecDecoderOutput(ModelOutput):
    audio_values: torch.Tensor | None = None


@dataclass
class EncodecOutput(ModelOutput):
    audio_codes: torch.Tensor | None = None
    audio_values: torch.Tensor | None = None
