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

    def kbps(self, per_message: int = 0) -> float:
        """Kilobits per second between the first message and the last (0 until two have come), with
        ``per_message`` bytes added to each message (a layer's headers, see :func:`layers`)."""
        if self.first is None or self.last is None or self.last <= self.first:
            return 0.0
        return 8 * (self.bytes + per_message * self.messages) / (self.last - self.first) / 1000

    def layers(self, websocket: int) -> str:
        """``7.2/8.4/16.5 kbps``: the rate at the application layer, with websocket framing
        (``websocket`` bytes a message: 6 from a client, masked; 2 from the relay), and an estimate
        of what IP carries (:data:`TCP_IP_BYTES` more a message: with TCP_NODELAY each small message
        leaves in a segment of its own)."""
        return "/".join(f"{self.kbps(extra):.1f}" for extra in (0, websocket, websocket + TCP_IP_BYTES)) + " kbps"


TCP_IP_BYTES = 52
"""IPv4 (20) and TCP (20, and 12 of the timestamp option Linux sends) headers of one segment."""

CLIENT_FRAMING, RELAY_FRAMING = 6, 2
"""Websocket framing of a small message: 2 bytes, and a 4-byte mask from a client."""
