"""Bytes and messages over time: the bitrate a status line shows and a summary reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Meter:
    """Bytes and messages over time, for the status line and the bitrate report."""

    bytes: int = 0
    messages: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, message: bytes) -> None:
        self.bytes += len(message)
        self.messages += 1

    def kbps(self, now: float | None = None) -> float:
        elapsed = (now or time.monotonic()) - self.started
        return 8 * self.bytes / elapsed / 1000 if elapsed > 0 else 0.0
