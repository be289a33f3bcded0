"""What a call peer tells its user: a status line while the call runs, totals when it ends."""

from __future__ import annotations

import asyncio
import sys

from .connection import Connection
from .front_end import FrontEnd
from .meter import CLIENT_FRAMING, RELAY_FRAMING, TCP_IP_BYTES
from .receiver import Receiver
from .sender import Sender


class CallStatus:
    """Reads the sender, the receiver and the connection; changes none of them."""

    def __init__(self, connection: Connection, sender: Sender | None, receiver: Receiver | None,
                 frame_period: float, bandwidth: float, front_end: FrontEnd | None = None) -> None:
        self.connection, self.sender, self.receiver, self.front_end = connection, sender, receiver, front_end
        self.frame_period, self.bandwidth = frame_period, bandwidth
        self._dropped_seen = 0  # the sender's dropped samples at the previous line

    def cpu_note(self) -> str | None:
        """``CPU busy: search off, dropped 120 ms`` while a live sender sheds its codebook search,
        or when it dropped input since the previous call (the previous status line); else None."""
        sender = self.sender
        if sender is None or not sender.live:
            return None
        dropped, self._dropped_seen = sender.dropped_samples - self._dropped_seen, sender.dropped_samples
        notes = ["search off"] if sender.budget.shedding else []
        if dropped:
            notes.append(f"dropped {1000 * dropped * self.frame_period / sender.hop:.0f} ms")
        return "CPU busy: " + ", ".join(notes) if notes else None

    def line(self) -> str:
        parts = [f"up {self.connection.meter.layers(CLIENT_FRAMING)} (app/ws/IP)"]
        if self.front_end is not None:
            parts.append(self.front_end.status())
        cpu = self.cpu_note()
        if cpu:
            parts.append(cpu)
        rtt = self.connection.rtt
        if self.receiver is not None:
            parts.append(f"down {self.receiver.meter.layers(RELAY_FRAMING)}")
            for stream in self.receiver.streams.values():
                jitter = stream.jitter
                delay = jitter.target_delay + self.frame_period + (rtt or 0) / 2
                parts.append(f"[{stream.header.stream_id:08x}] loss {100 * jitter.stats.loss_rate:.1f}% "
                             f"buffer {1000 * jitter.target_delay:.0f} ms latency ~{1000 * delay:.0f} ms")
        if self.connection.alone:
            parts.append("waiting for a listener")
        if rtt is not None:
            parts.append(f"rtt {1000 * rtt:.0f} ms")
        else:
            problem = self.connection.problem
            parts.append(f"disconnected: {problem}" if problem else "disconnected")
        return " | ".join(parts)

    async def show(self, period: float = 1.0) -> None:
        """Print :meth:`line` every ``period`` seconds, in place on a terminal."""
        end = "\r" if sys.stderr.isatty() else "\n"
        while True:
            await asyncio.sleep(period)
            print(self.line(), end=end, file=sys.stderr, flush=True)

    def summary(self) -> str:
        """Totals at exit, including the application-layer bitrate of what was sent."""
        lines = []
        up = self.connection.meter
        if self.sender is not None and self.sender.next_index:
            seconds = self.sender.next_index * self.frame_period
            framed = up.bytes + CLIENT_FRAMING * up.messages
            ip = framed + TCP_IP_BYTES * up.messages
            nominal = self.bandwidth
            lines.append(
                f"sent {up.messages} messages, {up.bytes} bytes for {seconds:.2f} s of audio: "
                f"{8 * up.bytes / seconds / 1000:.2f} kbps at the application layer "
                f"({8 * up.bytes / seconds / 1000 / nominal:.3f}x nominal {nominal:g} kbps), "
                f"{8 * framed / seconds / 1000:.2f} kbps with websocket framing, "
                f"~{8 * ip / seconds / 1000:.1f} kbps with TCP/IP headers")
            dtx = self.sender.dtx
            if dtx is not None:
                lines.append(f"DTX: {dtx.sent} of {self.sender.next_index} frames sent, "
                             f"{dtx.comfort_messages} comfort-noise messages in the pauses")
        if self.receiver is not None:
            down = self.receiver.meter
            if down.messages:
                lines.append(f"received {down.messages} messages, {down.bytes} bytes: {down.kbps():.2f} kbps "
                             "from the first to the last")
            for stream in self.receiver.streams.values():
                s = stream.jitter.stats
                lines.append(f"received stream {stream.header.stream_id:08x}: {s.received} frames, "
                             f"{s.lost} lost, {s.late} late, {s.duplicate} duplicate, {s.comfort} of comfort noise")
            if self.receiver.problems:
                lines.append(f"dropped messages: {self.receiver.problems}")
        return "\n".join(lines)
