"""Wire format of a codec stream, also used as the compressed file format.

Every message is one websocket binary message (or, in a file, one length-prefixed
record). The first byte says what it is. Audio packets are the hot path: at 6 kbps a
13.3 ms frame is only 10 bytes of codes, so an audio packet spends exactly two bytes on
its header and nothing else — no JSON, no per-packet stream parameters. Everything that
does not change during a stream travels once, in the ``HEADER`` message.
``docs/PROTOCOL.md`` documents the byte layouts; this module is their implementation.

It imports neither torch nor the codec: the relay, and anything else that only routes packets,
parses them without loading a model. What a model implies for its stream header lives with the
peers that run one (``call.model_header``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, Union, cast

import numpy as np

VERSION = 1
"""Protocol version of a stream without comfort noise: what every build since the first reads."""

DTX_VERSION = 2
"""Protocol version of a stream that may hold ``COMFORT_NOISE`` messages (discontinuous
transmission). A build that speaks only version 1 refuses its ``HEADER`` by the version byte, so
an old peer plays nothing of such a stream rather than misreading its silences as lost frames."""

SUPPORTED_VERSIONS = (VERSION, DTX_VERSION)
"""Versions this build decodes (looked up at each decode, so a test can play an older build)."""

FILE_MAGIC = b"ECS1"
"""First bytes of a compressed stream file (the digit is the file layout's version)."""

HEADER = 0x01
END = 0x02
ROUTED = 0x03
LEFT = 0x04
JOINED = 0x05
COMFORT_NOISE = 0x06
RATE = 0x07

AUDIO_FLAG = 0x80
MULTI_FLAG = 0x40
UNIFORM_FLAG = 0x80

INDEX_BITS = 14
INDEX_MODULUS = 1 << INDEX_BITS
"""Audio packets carry the low 14 bits of their first frame's index (3.6 min at 75 Hz)."""

MAX_FRAMES_PER_PACKET = 128
FINGERPRINT_SIZE = 8


class ProtocolError(ValueError):
    """A message that does not follow this format (truncated, malformed, out of range)."""


class VersionError(ProtocolError):
    """A stream of a protocol version this build does not speak: refused as a whole, with a
    message that says which side must change."""


# --------------------------------------------------------------------------- varints


def write_varint(value: int) -> bytes:
    """Unsigned LEB128: 1 byte below 128, 2 below 16384 — small numbers stay small."""
    if value < 0:
        raise ValueError(f"varint must be non-negative, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, pos: int, max_bytes: int = 10) -> tuple[int, int]:
    """Read a varint at ``pos``; return ``(value, next_pos)``. Bounded to refuse garbage."""
    value = shift = 0
    for i in range(max_bytes):
        if pos + i >= len(data):
            raise ProtocolError("truncated varint")
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise ProtocolError("varint too long")


# ------------------------------------------------------------------------ bit packing


def pack_codes(codes: np.ndarray, nbits: int) -> bytes:
    """Pack integer codes (any shape, row-major) at ``nbits`` bits each, MSB first.

    Vectorised: one unpack of the codes into a bit matrix and one ``np.packbits``. The
    last byte is padded with zero bits.
    """
    flat = np.asarray(codes, dtype=np.int64).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << nbits):
        raise ValueError(f"codes must lie in [0, {1 << nbits}) to be packed at {nbits} bits")
    shifts = np.arange(nbits - 1, -1, -1, dtype=np.int64)
    bits = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1)).tobytes()


def unpack_codes(payload: bytes, count: int, nbits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``count`` codes as int64. Padding bits must be zero."""
    needed = (count * nbits + 7) // 8
    if len(payload) != needed:
        raise ProtocolError(f"expected {needed} payload bytes for {count} codes, got {len(payload)}")
    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    if bits[count * nbits :].any():
        raise ProtocolError("non-zero padding bits")
    return _codes_from_bits(bits, count, nbits)


def _codes_from_bits(bits: np.ndarray, count: int, nbits: int) -> np.ndarray:
    weights = (1 << np.arange(nbits - 1, -1, -1, dtype=np.int64))
    return bits[: count * nbits].reshape(count, nbits).astype(np.int64) @ weights


def packed_size(count: int, nbits: int) -> int:
    """Bytes taken by ``count`` codes packed at ``nbits`` bits."""
    return (count * nbits + 7) // 8


# ------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class StreamHeader:
    """What a receiver must know before it can decode a stream; sent once per stream.

    ``stream_id`` tells a continued stream (a sender that reconnected resends the same
    header) from a new one. ``start_time_us`` is the sender's wall clock at frame 0, so a
    receiver with a synchronised clock can measure one-way latency.
    """

    fingerprint: bytes
    sample_rate: int
    channels: int
    samples_per_frame: int
    codebook_nbits: int
    max_codebooks: int
    stream_id: int = 0
    start_time_us: int = 0
    version: int = VERSION

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.samples_per_frame

    def validate(self) -> None:
        """Refuse parameters this format cannot carry or a receiver cannot honour."""
        if len(self.fingerprint) != FINGERPRINT_SIZE:
            raise ProtocolError(f"fingerprint must be {FINGERPRINT_SIZE} bytes")
        if not 8 <= self.codebook_nbits <= 16:
            # >= 8 bits keeps a one-frame packet's codebook count implied by its length.
            raise ProtocolError(f"codebook_nbits must be 8..16, got {self.codebook_nbits}")
        if not 1 <= self.max_codebooks <= 255:
            raise ProtocolError(f"max_codebooks must be 1..255, got {self.max_codebooks}")
        if not 1 <= self.channels <= 255:
            raise ProtocolError(f"channels must be 1..255, got {self.channels}")
        if self.sample_rate <= 0 or self.samples_per_frame <= 0:
            raise ProtocolError("sample_rate and samples_per_frame must be positive")

    def encode(self) -> bytes:
        self.validate()
        return b"".join(
            [
                bytes([HEADER, self.version]),
                self.fingerprint,
                write_varint(self.sample_rate),
                bytes([self.channels]),
                write_varint(self.samples_per_frame),
                bytes([self.codebook_nbits, self.max_codebooks]),
                write_varint(self.stream_id),
                write_varint(self.start_time_us),
            ]
        )

    @classmethod
    def decode(cls, data: bytes) -> "StreamHeader":
        if len(data) < 2 or data[0] != HEADER:
            raise ProtocolError("not a HEADER message")
        if data[1] not in SUPPORTED_VERSIONS:
            raise VersionError(f"unsupported protocol version {data[1]} (this build speaks "
                               f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
        pos = 2 + FINGERPRINT_SIZE
        if len(data) < pos:
            raise ProtocolError("truncated HEADER")
        fingerprint = bytes(data[2:pos])
        sample_rate, pos = read_varint(data, pos, 5)
        if pos >= len(data):
            raise ProtocolError("truncated HEADER")
        channels = data[pos]
        samples_per_frame, pos = read_varint(data, pos + 1, 5)
        if pos + 2 > len(data):
            raise ProtocolError("truncated HEADER")
        nbits, max_codebooks = data[pos], data[pos + 1]
        stream_id, pos = read_varint(data, pos + 2, 5)
        start_time_us, pos = read_varint(data, pos, 10)
        if pos != len(data):
            raise ProtocolError("trailing bytes after HEADER")
        header = cls(fingerprint, sample_rate, channels, samples_per_frame, nbits,
                     max_codebooks, stream_id, start_time_us, data[1])
        header.validate()
        return header


@dataclass(frozen=True)
class AudioPacket:
    """One or more consecutive frames of codes.

    ``index`` is the index of the first frame since the start of the stream: it is both
    the packet's sequence number and its timestamp (in frames), like RTP's timestamp.
    Only its low 14 bits travel; :func:`unwrap_index` restores it on the receiver.
    ``frames`` holds one int64 array of codes per frame; their lengths (numbers of
    codebooks) may differ, which is how a bandwidth switch at a frame boundary travels.
    """

    index: int
    frames: tuple[np.ndarray, ...]

    def encode(self, nbits: int) -> bytes:
        n = len(self.frames)
        if not 1 <= n <= MAX_FRAMES_PER_PACKET:
            raise ValueError(f"a packet holds 1..{MAX_FRAMES_PER_PACKET} frames, got {n}")
        counts = [len(f) for f in self.frames]
        if min(counts) < 1 or max(counts) > 255:
            raise ValueError("each frame needs 1..255 codebooks")
        wire_index = self.index % INDEX_MODULUS
        payload = pack_codes(np.concatenate(self.frames), nbits)
        if n == 1:
            head = bytes([AUDIO_FLAG | wire_index >> 8, wire_index & 0xFF])
            return head + payload
        head = bytes([AUDIO_FLAG | MULTI_FLAG | wire_index >> 8, wire_index & 0xFF])
        if len(set(counts)) == 1:
            layout = bytes([UNIFORM_FLAG | (n - 1), counts[0]])
        else:
            layout = bytes([n - 1, *counts])
        return head + layout + payload

    @classmethod
    def decode(cls, data: bytes, nbits: int, max_codebooks: int) -> "AudioPacket":
        """Parse a packet; ``index`` is the 14-bit wire value (see :func:`unwrap_index`)."""
        wire_index, counts, pos = cls.layout(data, nbits, max_codebooks)  # sizes and padding checked there
        codes = _codes_from_bits(np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=pos)), sum(counts), nbits)
        frames = tuple(np.split(codes, np.cumsum(counts)[:-1]))
        return cls(wire_index, frames)

    @staticmethod
    def layout(data: bytes, nbits: int, max_codebooks: int) -> tuple[int, list[int], int]:
        """``(wire index, codebooks of each frame, payload offset)``, with every check that
        :meth:`decode` makes (sizes, zero padding bits) but without unpacking the codes:
        all that a relay needs, at a fraction of the cost."""
        if len(data) < 3 or not data[0] & AUDIO_FLAG:
            raise ProtocolError("not an audio packet (or truncated)")
        wire_index = (data[0] & 0x3F) << 8 | data[1]
        if not data[0] & MULTI_FLAG:
            payload = data[2:]
            count = len(payload) * 8 // nbits
            if not 1 <= count <= max_codebooks or packed_size(count, nbits) != len(payload):
                raise ProtocolError(f"a {len(payload)}-byte payload is no whole frame")
            counts = [count]
        else:
            layout = data[2]
            n = (layout & 0x7F) + 1
            if layout & UNIFORM_FLAG:
                if len(data) < 4:
                    raise ProtocolError("truncated packet layout")
                counts, pos = [data[3]] * n, 4
            else:
                if len(data) < 3 + n:
                    raise ProtocolError("truncated packet layout")
                counts, pos = list(data[3 : 3 + n]), 3 + n
            if min(counts) < 1 or max(counts) > max_codebooks:
                raise ProtocolError(f"codebook count outside 1..{max_codebooks}")
            payload = data[pos:]
        total = sum(counts)
        if packed_size(total, nbits) != len(payload):
            raise ProtocolError(f"expected {packed_size(total, nbits)} payload bytes for {total} codes, got {len(payload)}")
        spare = len(payload) * 8 - total * nbits
        if spare and payload[-1] & ((1 << spare) - 1):
            raise ProtocolError("non-zero padding bits")
        return wire_index, counts, len(data) - len(payload)


def _two_varints(data: bytes, kind: int, name: str, max_bytes: tuple[int, int]) -> tuple[int, int]:
    """The two varints of a ``kind`` message, which holds nothing else."""
    if not data or data[0] != kind:
        raise ProtocolError(f"not a{'n' if name[0] in 'AEIOU' else ''} {name} message")
    first, pos = read_varint(data, 1, max_bytes[0])
    second, pos = read_varint(data, pos, max_bytes[1])
    if pos != len(data):
        raise ProtocolError(f"trailing bytes after {name}")
    return first, second


@dataclass(frozen=True)
class EndOfStream:
    """The sender's stream is over: ``n_frames`` frames were sent for ``n_samples`` input
    samples, so the receiver trims its output to exactly the input's length."""

    n_frames: int
    n_samples: int

    def encode(self) -> bytes:
        return bytes([END]) + write_varint(self.n_frames) + write_varint(self.n_samples)

    @classmethod
    def decode(cls, data: bytes) -> "EndOfStream":
        return cls(*_two_varints(data, END, "END", (6, 8)))


MAX_NOISE_BANDS = 16
NOISE_FLOOR_DB = 127
"""A band byte holds the band's power in dB below full scale, 0..127; 127 stands for nothing."""


@dataclass(frozen=True)
class ComfortNoise:
    """The sender fell silent from frame ``index`` on: play noise of this spectrum until audio
    resumes or the next ``COMFORT_NOISE`` updates it.

    ``band_db`` is the background's power, in dB relative to full scale, in equal-width bands
    from 0 Hz to half the sample rate (a coarse spectrum, as RFC 3389's comfort noise carries):
    the power of white noise that has this band's spectral density. Whole decibels on the wire.
    """

    index: int
    band_db: tuple[float, ...]

    def encode(self) -> bytes:
        if not 1 <= len(self.band_db) <= MAX_NOISE_BANDS:
            raise ValueError(f"comfort noise has 1..{MAX_NOISE_BANDS} bands, got {len(self.band_db)}")
        wire_index = self.index % INDEX_MODULUS
        levels = [min(NOISE_FLOOR_DB, max(0, round(-db))) for db in self.band_db]
        return bytes([COMFORT_NOISE, wire_index >> 8, wire_index & 0xFF, *levels])

    @classmethod
    def decode(cls, data: bytes) -> "ComfortNoise":
        """Parse the message; ``index`` is the 14-bit wire value (see :func:`unwrap_index`)."""
        if not data or data[0] != COMFORT_NOISE:
            raise ProtocolError("not a COMFORT_NOISE message")
        if not 4 <= len(data) <= 3 + MAX_NOISE_BANDS:
            raise ProtocolError(f"COMFORT_NOISE needs 1..{MAX_NOISE_BANDS} bands, got {len(data) - 3} bytes")
        if data[1] >> 6 or max(data[3:]) > NOISE_FLOOR_DB:
            raise ProtocolError("COMFORT_NOISE field out of range")
        return cls(data[1] << 8 | data[2], tuple(-float(level) for level in data[3:]))


@dataclass(frozen=True)
class RateRequest:
    """A receiver asks the sender of stream ``stream_id`` to send at most ``kbps`` (what its link
    carries, websocket framing included). It travels through the relay like any message, to every
    peer of the room; only the stream's sender acts on it. Tenths of a kbps on the wire."""

    stream_id: int
    kbps: float

    def encode(self) -> bytes:
        return bytes([RATE]) + write_varint(self.stream_id) + write_varint(max(1, round(10 * self.kbps)))

    @classmethod
    def decode(cls, data: bytes) -> "RateRequest":
        stream_id, tenths = _two_varints(data, RATE, "RATE", (5, 4))
        if tenths == 0:
            raise ProtocolError("a RATE of 0 kbps")
        return cls(stream_id, tenths / 10)


def route(source: int, message: bytes) -> bytes:
    """Server → client envelope naming the peer whose messages follow.

    The relay sends it only when the source changes from the previous message on that
    connection, so a two-party call pays nothing for it in the steady state.
    """
    return bytes([ROUTED]) + write_varint(source) + message


def unroute(data: bytes) -> tuple[int, bytes]:
    """Split a ``ROUTED`` envelope into ``(source, inner message)``."""
    if not data or data[0] != ROUTED:
        raise ProtocolError("not a ROUTED message")
    source, pos = read_varint(data, 1, 5)
    inner = bytes(data[pos:])
    if not inner or inner[0] == ROUTED:
        raise ProtocolError("empty or nested ROUTED envelope")
    return source, inner


def left(peer: int) -> bytes:
    """Server → client notice that a peer left, so receivers can finish its stream."""
    return bytes([LEFT]) + write_varint(peer)


def joined(peer: int) -> bytes:
    """Server → client notice that a peer is in the room, so a file sender knows someone listens."""
    return bytes([JOINED]) + write_varint(peer)


def parse_presence(data: bytes) -> tuple[int, bool]:
    """``(peer, present)`` of a ``JOINED`` or ``LEFT`` message."""
    if not data or data[0] not in (JOINED, LEFT):
        raise ProtocolError("not a JOINED or LEFT message")
    peer, pos = read_varint(data, 1, 5)
    if pos != len(data):
        raise ProtocolError("trailing bytes after a presence message")
    return peer, data[0] == JOINED


def message_kind(data: bytes) -> int:
    """The message type of ``data``: ``AUDIO_FLAG`` or one of the control types."""
    if not data:
        raise ProtocolError("empty message")
    if data[0] & AUDIO_FLAG:
        return AUDIO_FLAG
    if data[0] not in (HEADER, END, ROUTED, LEFT, JOINED, COMFORT_NOISE, RATE):
        raise ProtocolError(f"unknown message type 0x{data[0]:02x}")
    return data[0]


def unwrap_index(wire_index: int, reference: int) -> int:
    """The full frame index congruent to ``wire_index`` (mod 2**14) nearest ``reference``.

    Exact as long as consecutive packets a receiver sees lie within ±1.8 minutes of
    frames of each other, far beyond any jitter buffer or relay queue.
    """
    delta = (wire_index - reference) % INDEX_MODULUS
    if delta >= INDEX_MODULUS // 2:
        delta -= INDEX_MODULUS
    return reference + delta


# -------------------------------------------------------------------- stream state


def single_frame_padding(nbits: int, max_codebooks: int) -> dict[int, int]:
    """Every size of a valid one-frame audio packet (2 header bytes and whole codes, as
    :meth:`AudioPacket.layout` reads them) → the mask of the bits that must be zero in its last byte."""
    sizes = {}
    for payload in range(1, packed_size(max_codebooks, nbits) + 1):
        count = payload * 8 // nbits
        if 1 <= count <= max_codebooks and packed_size(count, nbits) == payload:
            sizes[2 + payload] = (1 << (payload * 8 - count * nbits)) - 1
    return sizes

Message = Union[StreamHeader, AudioPacket, EndOfStream, ComfortNoise, RateRequest]

REORDER_WINDOW = 150
"""Frames (2 s at 75 Hz) a packet may lag the newest one before it counts as stale, and an ``END``
may lie beyond the newest packet (those last packets were dropped on the way)."""


class ModelMismatchError(ProtocolError):
    """A well-formed stream from a peer whose model (architecture or weights) is not ours: its codes
    would decode to noise."""


class OutOfOrderError(ProtocolError):
    """A well-formed message in the wrong place: audio before a header or after the end,
    or a packet older than the reorder window."""


class StreamValidator:
    """One sender's stream as seen by a relay or a receiver: typed, checked messages.

    Turns raw messages into :class:`StreamHeader`, :class:`AudioPacket` and :class:`ComfortNoise`
    (with their full, unwrapped frame index) and :class:`EndOfStream`, and raises :class:`ProtocolError`
    for malformed input and :class:`OutOfOrderError` for misplaced input, so that both
    the server and the client count and drop bad packets the same way.
    """

    def __init__(self) -> None:
        self.header: StreamHeader | None = None
        self.newest = -1
        self.ended = False
        self.single_frame_padding: dict[int, int] = {}
        """Size of each valid one-frame audio packet under ``header`` → the mask of its padding bits
        (:meth:`check`'s shortcut for the packet a relay forwards most)."""

    def accept(self, data: bytes) -> Message:
        """The typed message, the codes of audio unpacked; raises for bad or misplaced input."""
        return cast(Message, self._accept(data, unpack=True))

    def check(self, data: bytes) -> None:
        """Everything :meth:`accept` checks and tracks, without unpacking audio codes: what a
        relay needs to forward a message (unpacking took a third of its CPU).

        A one-frame audio packet that is in order, of a size its header allows, with zero padding
        bits, is taken in a few steps (it is nearly every message of a call, and these checks were
        the largest part of the relay's own work a packet); anything else, including every packet
        to refuse, goes the full way, so the verdicts and their messages are :meth:`accept`'s."""
        padding = self.single_frame_padding.get(len(data))
        if padding is not None and data[0] & (AUDIO_FLAG | MULTI_FLAG) == AUDIO_FLAG and not data[-1] & padding \
                and not self.ended:
            newest = self.newest
            wire_index = (data[0] & 0x3F) << 8 | data[1]
            if newest < 0:
                self.newest = wire_index
                return
            delta = (wire_index - newest) % INDEX_MODULUS  # unwrap_index, inline
            if delta < INDEX_MODULUS // 2:
                self.newest = newest + delta
                return
            if delta - INDEX_MODULUS >= -REORDER_WINDOW and newest + delta - INDEX_MODULUS >= 0:
                return  # late, within the reorder window: the newest frame stays
        self._accept(data, unpack=False)

    def _accept(self, data: bytes, unpack: bool) -> Message | None:
        kind = message_kind(data)
        if kind == RATE:  # about another peer's stream: not part of this one, allowed at any time
            return RateRequest.decode(data)
        if kind == HEADER:
            header = StreamHeader.decode(data)
            if header != self.header:  # a new stream; a resent identical one continues
                self.newest, self.ended = -1, False
                self.single_frame_padding = single_frame_padding(header.codebook_nbits, header.max_codebooks)
            self.header = header
            return header
        if self.header is None:
            raise OutOfOrderError("audio or END before the stream HEADER")
        if self.ended:
            raise OutOfOrderError("message after END")
        if kind == END:
            end = EndOfStream.decode(data)
            if end.n_frames < self.newest + 1 or end.n_samples > end.n_frames * self.header.samples_per_frame:
                raise ProtocolError("END contradicts the frames already sent")
            if self.newest >= 0 and end.n_frames > self.newest + 1 + REORDER_WINDOW:
                raise ProtocolError(f"END claims {end.n_frames} frames, {end.n_frames - self.newest - 1} beyond "
                                    f"the newest sent: implausible")
            self.ended = True
            return end
        if kind == COMFORT_NOISE:
            if self.header.version < DTX_VERSION:
                raise ProtocolError(f"COMFORT_NOISE in a version-{self.header.version} stream")
            noise = ComfortNoise.decode(data)
            return ComfortNoise(self._place(noise.index, 1), noise.band_db)
        if kind != AUDIO_FLAG:
            raise ProtocolError("server-only message type from a sender")
        nbits, max_codebooks = self.header.codebook_nbits, self.header.max_codebooks
        if unpack:
            packet = AudioPacket.decode(data, nbits, max_codebooks)
            wire_index, n_frames = packet.index, len(packet.frames)
        else:
            wire_index, counts, _ = AudioPacket.layout(data, nbits, max_codebooks)
            n_frames = len(counts)
        index = self._place(wire_index, n_frames)
        return AudioPacket(index, packet.frames) if unpack else None

    def _place(self, wire_index: int, n_frames: int) -> int:
        """The full index of a message covering ``n_frames`` frames from ``wire_index``; the stream's
        newest frame moves past it. A silence counts like audio here: an ``END`` after a long
        silence lies just beyond its last ``COMFORT_NOISE``, not far beyond the last audio."""
        # The first packet seen fixes the high bits: a receiver may join mid-stream.
        index = wire_index if self.newest < 0 else unwrap_index(wire_index, self.newest)
        if index < 0 or index < self.newest - REORDER_WINDOW:
            raise OutOfOrderError(f"stale packet (frame {index}, newest {self.newest})")
        self.newest = max(self.newest, index + n_frames - 1)
        return index


# ----------------------------------------------------------------------- file format


def write_stream(out: BinaryIO, messages: Iterable[bytes]) -> int:
    """Write a compressed stream file: magic, then each message prefixed by its varint length.

    Returns the number of bytes written. The messages are exactly those of the wire, so a
    file is a recorded call and a call is a streamed file.
    """
    written = out.write(FILE_MAGIC)
    for message in messages:
        written += out.write(write_varint(len(message)))
        written += out.write(message)
    return written


def read_stream(source: BinaryIO, max_message: int = 1 << 16) -> Iterator[bytes]:
    """Yield the messages of a compressed stream file; clear errors for foreign or cut files."""
    for _, message in read_records(source, max_message):
        yield message


def read_records(source: BinaryIO, max_message: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, message)`` for each message of a compressed stream file; a
    :class:`ProtocolError` names the offset where the file stops making sense."""
    if source.read(len(FILE_MAGIC)) != FILE_MAGIC:
        raise ProtocolError("not a compressed stream file (bad magic)")
    offset = len(FILE_MAGIC)
    while True:
        prefix = bytearray()
        while True:
            byte = source.read(1)
            if not byte:
                if prefix:
                    raise ProtocolError(f"file ends inside a length prefix at byte {offset}")
                return
            prefix += byte
            if not byte[0] & 0x80:
                break
            if len(prefix) > 4:
                raise ProtocolError(f"corrupt length prefix at byte {offset}")
        length, _ = read_varint(bytes(prefix), 0)
        if length > max_message:
            raise ProtocolError(f"message of {length} bytes at byte {offset} exceeds the {max_message}-byte limit")
        message = source.read(length)
        if len(message) != length:
            raise ProtocolError(f"file ends inside the message at byte {offset} (truncated file)")
        yield offset, message
        offset += len(prefix) + length
