"""Bitrate follows the link: a receiver that cannot keep up says what it can take, and the sender
switches bandwidth (and frames per packet) from the next block it encodes.

The receiver's :class:`RateAdvisor` watches its stream in windows of ``window`` seconds: a window in
which more than ``loss_limit`` of the frames came late or not at all says the link is the limit
(unless a connection on the path was just made again: a reconnection's loss burst is no capacity)
(a relay drops the oldest audio of a slow peer; a slow link delivers late), and the advisor asks for
90 % of what actually arrived in it, websocket framing included. After ``probe_after`` seconds of
clean windows it asks for twice as much; a probe that fails doubles the wait before the next one
(up to ``probe_max``), one that holds resets it, and once a probe asks beyond ``max_kbps`` the
advisor lets go of the limit.

The sender (:class:`RateLimit`) keeps the latest request of each receiver for ``keep`` seconds and
serves the slowest: of the bandwidths the model offers up to the call's own, the highest whose
packets fit, with the fewest frames per packet that makes them fit. At 3 kbps one-frame packets
cannot fit even at 1.5 kbps (2 bytes of packet header and 2 of websocket framing for 2.5 bytes of
codes, 75 times a second: 4.2 kbps); four frames a packet carry the same codes in 2.4 kbps.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire
from .jitter import JitterStats
from .meter import RELAY_FRAMING

FRAMES_PER_PACKET_CHOICES = (1, 2, 4, 8)


def packet_kbps(codebooks: int, nbits: int, frames_per_packet: int, frame_rate: float) -> float:
    """What a stream of packets of ``frames_per_packet`` frames of ``codebooks`` codes costs on a
    relay → client link, websocket framing included (the wire format of ``docs/PROTOCOL.md``)."""
    header = 2 if frames_per_packet == 1 else 4
    size = header + wire.packed_size(codebooks * frames_per_packet, nbits) + RELAY_FRAMING
    return 8 * size * frame_rate / frames_per_packet / 1000


@dataclass(frozen=True)
class Mode:
    bandwidth: float
    frames_per_packet: int


def best_mode(kbps: float, bandwidths: list[float], codebooks_for, nbits: int, frame_rate: float) -> Mode:
    """The highest of ``bandwidths`` whose stream fits ``kbps``, with the fewest frames per packet
    that makes it fit; the lowest bandwidth in the largest packets when nothing fits."""
    for bandwidth in sorted(bandwidths, reverse=True):
        for frames in FRAMES_PER_PACKET_CHOICES:
            if packet_kbps(codebooks_for(bandwidth), nbits, frames, frame_rate) <= kbps:
                return Mode(bandwidth, frames)
    return Mode(min(bandwidths), FRAMES_PER_PACKET_CHOICES[-1])


class RateLimit:
    """The sender's side: receivers' requests in, the mode to send in out."""

    def __init__(self, keep: float = 10.0) -> None:
        self.keep = keep
        self._requests: dict[int | None, tuple[float, float]] = {}  # source → (kbps, when)

    def request(self, source: int | None, kbps: float, now: float) -> None:
        self._requests[source] = (kbps, now)

    def limit(self, now: float) -> float | None:
        """What the slowest receiver heard from in the last ``keep`` seconds can take; ``None``: no limit."""
        self._requests = {s: r for s, r in self._requests.items() if now - r[1] <= self.keep}
        return min((kbps for kbps, _ in self._requests.values()), default=None)


class RateAdvisor:
    """The receiver's side, for one stream: its jitter-buffer counters and the bytes that came in,
    a :class:`wire.RateRequest` out when the link calls for one. Time is what the caller passes."""

    def __init__(self, stream_id: int, window: float = 0.5, loss_limit: float = 0.02, probe_after: float = 1.0,
                 probe_max: float = 2.0, min_kbps: float = 1.0, max_kbps: float = 64.0) -> None:
        self.stream_id = stream_id
        self.window, self.loss_limit = window, loss_limit
        self.min_kbps, self.max_kbps = min_kbps, max_kbps
        self.probe_after, self.probe_max = probe_after, probe_max
        self.asked: float | None = None  # the limit in force; None: none
        self._wait = probe_after
        self._since: float | None = None  # start of the window
        self._bytes = 0
        self._seen = (0, 0)  # (frames accounted, frames bad) at the window's start
        self._clean = 0.0  # seconds of clean windows since the last request
        self._probing = False
        self._grace = 0  # windows still to pass over after a reconnection

    def restart(self, grace: int = 2) -> None:
        """A connection on the stream's path was lost and made again: the frames lost meanwhile, and
        the burst after, say nothing of the link's capacity. The next ``grace`` windows are not judged."""
        self._since, self._grace = None, grace

    def arrived(self, message: bytes) -> None:
        self._bytes += len(message) + RELAY_FRAMING

    def advise(self, stats: JitterStats, now: float) -> wire.RateRequest | None:
        """Call after each frame taken out of the jitter buffer; a request when the window that just
        closed calls for one."""
        frames, bad = stats.received + stats.lost, stats.lost + stats.late
        if self._since is None:
            self._since, self._seen, self._bytes = now, (frames, bad), 0
            return None
        elapsed = now - self._since
        if elapsed < self.window:
            return None
        counted, failed = frames - self._seen[0], bad - self._seen[1]
        received_kbps = 8 * self._bytes / elapsed / 1000
        self._since, self._seen, self._bytes = now, (frames, bad), 0
        if self._grace:
            self._grace -= 1
            return None
        if counted and failed / counted > self.loss_limit:
            if self._probing:
                self._wait = min(2 * self._wait, self.probe_max)
            self._probing, self._clean = False, 0.0
            arrived = max(self.min_kbps, 0.9 * received_kbps)  # (nothing at all: the least we can ask)
            return self._ask(arrived if self.asked is None else min(self.asked, arrived))
        if self.asked is None:
            return None
        self._clean += elapsed
        if self._probing and self._clean >= self._wait:
            self._wait, self._probing = self.probe_after, False  # the probe held
        if self._clean < self._wait:
            return None
        self._clean, self._probing = 0.0, True
        return self._ask(2 * self.asked)

    def _ask(self, kbps: float) -> wire.RateRequest:
        self.asked = None if kbps > self.max_kbps else kbps
        return wire.RateRequest(self.stream_id, kbps)
