"""A call's media path, apart from sockets and sound cards.

:class:`Sender` turns audio blocks into wire messages; :class:`Receiver` turns wire
messages from any number of peers into audio. The model runs on a single worker thread
(an executor), never on the event loop's thread: a blocked loop would bunch sends into
bursts and starve the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from . import protocol
from .concealment import Concealer, GainSchedule
from .decoder import StreamingDecoder
from .encoder import StreamingEncoder
from .jitter import STRETCH, JitterBuffer
from .stream import StartMode

log = logging.getLogger("call")

Observer = Callable[[str, int, int, int, float], None]
"""Optional timing hook: ``observer(event, stream_id, first_frame, n_frames, time.monotonic())``.

Events, in the order a frame meets them: ``input`` (the block that completed the frames reached
the sender), ``encoded``, ``packet`` (the packet holding them was built), ``received`` (its
message reached the receiver), ``playout`` (the frame left the jitter buffer; ``lost`` instead
when it never came), ``decoded``. The latency benchmark attributes a call's delay to stages with
it; ``None`` (the default) costs one attribute test per step.
"""


SEARCH_WIDTH = 4
SEARCH_UP_TO_KBPS = 6.0


def default_search_width(bandwidth: float) -> int:
    """A call's codebook search width (see ``EncodecModel.encode``) when none is asked for.

    On the bundled model at 6 kbps, width 4 raises PESQ-WB by 0.04–0.07 and STOI by
    0.003–0.011 over the greedy search for the same bits (``codec/MODEL_CARD.md``) for 0.3–0.5 ms
    more encoding a frame (0.9 ms in session 5's latency benchmark calls). Above 6 kbps the
    quantization error is already small, the gain is little and the cost grows with the codebooks
    searched (about 1.8 ms a frame at 24 kbps in a call), so those rates search greedily, as
    transformers does.
    """
    return SEARCH_WIDTH if bandwidth <= SEARCH_UP_TO_KBPS else 1


def search_width_option(text: str) -> int:
    """``argparse`` type of the ``--search-width`` options: the command line refuses a bad width
    with a usage message, before any model is loaded or socket opened."""
    try:
        width = int(text)
    except ValueError:
        width = 0
    if width < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 (greedy) or more; got {text!r}")
    return width


def streaming_encoder(model: object, bandwidth: float, start: StartMode | str, search_width: int = 1) -> object:
    """The model's streaming encoder. An object other than an EnCodec model (a baseline codec in
    the benchmarks) rides the same call by offering ``streaming_encoder(bandwidth, start)``; it has
    no codebooks, so ``search_width`` does not apply to it."""
    factory = getattr(model, "streaming_encoder", None)
    if factory:
        return factory(bandwidth, start)
    return StreamingEncoder(model, bandwidth=bandwidth, start=start, search_width=search_width)


def streaming_decoder(model: object, start: StartMode | str) -> object:
    """The model's streaming decoder; see :func:`streaming_encoder`."""
    factory = getattr(model, "streaming_decoder", None)
    return factory(start) if factory else StreamingDecoder(model, start=start)


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


class Sender:
    """Encodes one outgoing stream: audio blocks in, ``HEADER``/audio/``END`` messages out."""

    def __init__(self, model: torch.nn.Module, executor: Executor, bandwidth: float = 6.0,
                 start: StartMode | str = StartMode.IMMEDIATE, frames_per_packet: int = 1,
                 search_width: int | None = None) -> None:
        if not 1 <= frames_per_packet <= protocol.MAX_FRAMES_PER_PACKET:
            raise ValueError(f"frames per packet must be 1..{protocol.MAX_FRAMES_PER_PACKET}")
        width = default_search_width(bandwidth) if search_width is None else search_width
        self.encoder = streaming_encoder(model, bandwidth, start, width)
        self.header = protocol.stream_header_for(
            model, stream_id=secrets.randbits(31), start_time_us=time.time_ns() // 1000)
        self.executor = executor
        self.frames_per_packet = frames_per_packet
        self.n_samples = 0
        self.next_index = 0  # of the next frame to put in a packet
        self._frames: list[np.ndarray] = []
        self.observer: Optional[Observer] = None

    def _note(self, event: str, first: int, count: int) -> None:
        if self.observer is not None and count:
            self.observer(event, self.header.stream_id, first, count, time.monotonic())

    async def push(self, block: np.ndarray) -> list[bytes]:
        """Encode ``(channels, n)`` float32 samples; return the packets they completed."""
        arrived = time.monotonic()
        self.n_samples += block.shape[-1]
        audio = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None]
        codes = await asyncio.get_running_loop().run_in_executor(self.executor, self.encoder.push, audio)
        if self.observer is not None and codes.shape[-1]:
            first = self.next_index + len(self._frames)
            self.observer("input", self.header.stream_id, first, codes.shape[-1], arrived)
            self._note("encoded", first, codes.shape[-1])
        return self._packets(codes, final=False)

    async def finish(self) -> list[bytes]:
        """Flush the encoder: the last packets, then ``END`` with the exact sample count."""
        codes = await asyncio.get_running_loop().run_in_executor(self.executor, self.encoder.flush)
        messages = self._packets(codes, final=True)
        return messages + [protocol.EndOfStream(self.next_index, self.n_samples).encode()]

    def _packets(self, codes: torch.Tensor, final: bool) -> list[bytes]:
        self._frames.extend(codes[0].T.numpy())
        messages = []
        while len(self._frames) >= self.frames_per_packet or final and self._frames:
            frames = self._frames[: self.frames_per_packet]
            del self._frames[: self.frames_per_packet]
            packet = protocol.AudioPacket(self.next_index, tuple(frames))
            messages.append(packet.encode(self.header.codebook_nbits))
            self._note("packet", self.next_index, len(frames))
            self.next_index += len(frames)
        return messages


class RemoteStream:
    """One peer's incoming stream: validation, jitter buffer, concealment and decoder."""

    def __init__(self, model: torch.nn.Module, header: protocol.StreamHeader, start: StartMode | str) -> None:
        self.header = header
        self.state = protocol.StreamState()
        self.jitter = JitterBuffer(header.frame_rate)
        self.concealer = Concealer()
        self.gains = GainSchedule(header.samples_per_frame)
        self.decoder = streaming_decoder(model, start)
        self.observer: Optional[Observer] = None
        self.first_index: int | None = None
        self.end: protocol.EndOfStream | None = None
        self.chunks: list[np.ndarray] = []
        self.pushed_frames = 0
        self.done = False

    def accept(self, message: bytes, now: float) -> None:
        """Check a message against the stream and file it; raises :class:`protocol.ProtocolError`."""
        parsed = self.state.accept(message)
        if isinstance(parsed, protocol.AudioPacket):
            self.jitter.put(parsed.index, parsed.frames, now)
            self.note("received", parsed.index, len(parsed.frames), now)
        elif isinstance(parsed, protocol.EndOfStream):
            self.end = parsed
            self.jitter.end(parsed.n_frames)

    def note(self, event: str, first: int, count: int = 1, now: float | None = None) -> None:
        """Tell the observer, if any (see :data:`Observer`); stretch ticks are no frame."""
        if self.observer is not None and first != STRETCH:
            self.observer(event, self.header.stream_id, first, count, time.monotonic() if now is None else now)

    def note_entries(self, event: str, entries: list[tuple[int, np.ndarray | None]]) -> None:
        if self.observer is not None:
            for index, codes in entries:
                self.note("lost" if codes is None and event == "playout" else event, index)

    def decode(self, entries: list[tuple[int, np.ndarray | None]]) -> np.ndarray:
        """Decode frames in order (``None`` = lost, concealed); runs on the model's thread.

        Consecutive frames with the same number of codebooks go through the decoder in one
        call: fewer calls, same result.
        """
        if self.first_index is None:
            self.first_index = next((i for i, _ in entries if i != STRETCH), None)
        out: list[np.ndarray] = []
        run: list[np.ndarray] = []
        for _, codes in entries:
            decoded, gain = self.concealer.next(codes)
            if run and len(run[0]) != len(decoded):
                out.append(self._push(run))
                run = []
            self.gains.set(self.pushed_frames + len(run), gain)
            run.append(decoded)
        if run:
            out.append(self._push(run))
        audio = np.concatenate(out, axis=-1) if out else np.zeros((self.header.channels, 0), np.float32)
        return self.gains.apply(audio)

    def _push(self, frames: list[np.ndarray]) -> np.ndarray:
        codes = torch.from_numpy(np.stack(frames, axis=1))[None]
        self.pushed_frames += len(frames)
        return self.decoder.push(codes)[0].numpy()

    def flush(self) -> np.ndarray:
        """The decoder's last samples (the stream is over)."""
        return self.gains.apply(self.decoder.flush()[0].numpy())

    def output_length(self) -> int | None:
        """Samples the received stream must have: the sender's exact input length."""
        if self.end is None:
            return None
        skipped = (self.first_index or 0) * self.header.samples_per_frame
        return max(0, self.end.n_samples - skipped)


class Receiver:
    """Demultiplexes the messages of a room into :class:`RemoteStream` s.

    Streams are known by their ``stream_id``, not by the relay's peer ids, so a stream
    survives the sender or the server reconnecting.
    """

    def __init__(self, model: torch.nn.Module, executor: Executor,
                 start: StartMode | str = StartMode.EXACT) -> None:
        self.model = model
        self.executor = executor
        self.start = start
        self.fingerprint = protocol.model_fingerprint(model)
        self.streams: dict[int, RemoteStream] = {}
        self.sources: dict[int, RemoteStream] = {}
        self.source: int | None = None
        self.meter = Meter()
        self.problems: dict[str, int] = {}
        self.observer: Optional[Observer] = None
        """Timing hook handed to every stream this receiver opens (see :data:`Observer`)."""

    def handle(self, message: bytes | str, now: float) -> None:
        """File one websocket message; bad ones are counted and dropped, never raised."""
        if isinstance(message, str):
            return self._count("malformed")
        self.meter.add(message)
        try:
            if message and message[0] == protocol.ROUTED:
                self.source, message = protocol.unroute(message)
            kind = protocol.message_kind(message)
            if kind in (protocol.LEFT, protocol.JOINED):
                peer, present = protocol.parse_presence(message)
                if not present:
                    self.sources.pop(peer, None)
            elif kind == protocol.HEADER:
                self._open(protocol.StreamHeader.decode(message)).accept(message, now)
            elif self.source in self.sources:
                self.sources[self.source].accept(message, now)
            else:
                raise protocol.OutOfOrderError("packet from a peer whose HEADER was not seen")
        except protocol.OutOfOrderError:
            self._count("out_of_order")
        except protocol.ModelMismatchError as error:
            if "other_model" not in self.problems:  # say it once, not once per packet
                log.error("%s", error)
            self._count("other_model")
        except protocol.ProtocolError:
            self._count("malformed")

    def _count(self, problem: str) -> None:
        self.problems[problem] = self.problems.get(problem, 0) + 1

    def _open(self, header: protocol.StreamHeader) -> RemoteStream:
        if header.fingerprint != self.fingerprint:
            raise protocol.ModelMismatchError(
                f"peer {self.source} uses another model (fingerprint {header.fingerprint.hex()}, "
                f"ours {self.fingerprint.hex()}): start both with the same --model")
        stream = self.streams.get(header.stream_id)
        if stream is None or stream.header != header:
            stream = self.streams[header.stream_id] = RemoteStream(self.model, header, self.start)
            stream.observer = self.observer
        self.sources[self.source] = stream
        return stream

    async def drain(self, now: float) -> None:
        """Decode every frame whose turn has come (file mode); finish ended streams."""
        loop = asyncio.get_running_loop()
        for stream in self.streams.values():
            if stream.done:
                continue
            entries = stream.jitter.pop(now)
            if entries:
                stream.note_entries("playout", entries)
                stream.chunks.append(await loop.run_in_executor(self.executor, stream.decode, entries))
                stream.note_entries("decoded", entries)
            if stream.jitter.finished:
                if stream.first_index is not None:
                    stream.chunks.append(await loop.run_in_executor(self.executor, stream.flush))
                stream.done = True

    async def tick(self, now: float) -> np.ndarray | None:
        """One playout tick (speaker mode): one frame of every live stream, mixed."""
        live = [s for s in self.streams.values() if not s.done and s.jitter.next_index is not None]
        if not live:
            return None
        loop = asyncio.get_running_loop()
        mixed = None
        for stream in live:
            if stream.jitter.finished:
                stream.done = True
                continue
            entry = stream.jitter.playout(now)
            if entry[0] == STRETCH and stream.first_index is None:
                continue  # still filling the buffer before the first frame: nothing to play
            stream.note_entries("playout", [entry])
            audio = await loop.run_in_executor(self.executor, stream.decode, [entry])
            stream.note_entries("decoded", [entry])
            mixed = audio if mixed is None or mixed.shape != audio.shape else mixed + audio
        return mixed

    def finished_output(self) -> np.ndarray | None:
        """The first finished stream, trimmed to the sender's exact length, or ``None``."""
        for stream in self.streams.values():
            if stream.done and stream.end is not None:
                audio = np.concatenate(stream.chunks, axis=-1) if stream.chunks else \
                    np.zeros((stream.header.channels, 0), np.float32)
                length = stream.output_length()
                if audio.shape[-1] < length:
                    audio = np.pad(audio, ((0, 0), (0, length - audio.shape[-1])))
                return audio[:, :length]
        return None
