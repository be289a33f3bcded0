"""Bytes and messages over time: the bitrate a status line shows and a summary reports."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Meter:
    """Bytes and messages over time, for the status line and the bitrate report.

    The rate runs from the first message to the last: the time before a stream starts (a
    receiver waiting for a sender, a sender for a listener) and after it ends does not dilute
    it, so at the end of a call both ends report the rate the sender's summary gives.
    """

    bytes: int = 0
    messages: int = 0
    first: float | None = None
    last: float | None = None

    def add(self, message: bytes, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if self.first is None:
            self.first = now
        self.last = now
        self.bytes += len(message)
        self.messages += 1

    def kbps(self) -> float:
        """Kilobits per second between the first message and the last (0 until two have come)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return 8 * self.bytes / (self.last - self.first) / 1000
