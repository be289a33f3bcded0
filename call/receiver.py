"""The receiving half of a call's media path: a room's wire messages in, audio out.

:class:`Receiver` sorts the messages of every peer into :class:`PeerStream` s, each with its
own jitter buffer, concealment and decoder. Decoding runs on a worker thread (an executor),
never on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Optional

import numpy as np
import torch

from streaming import StartMode, StreamingDecoder

from . import wire
from .concealment import Concealer, GainSchedule
from .jitter import STRETCH, JitterBuffer
from .meter import Meter
from .model_header import model_fingerprint
from .timing import Observer

log = logging.getLogger("call")


def streaming_decoder(model: object, start: StartMode | str) -> object:
    """The model's streaming decoder; see :func:`call.sender.streaming_encoder`."""
    factory = getattr(model, "streaming_decoder", None)
    return factory(start) if factory else StreamingDecoder(model, start=start)


class PeerStream:
    """One peer's incoming stream: validation, jitter buffer, concealment and decoder."""

    def __init__(self, model: torch.nn.Module, header: wire.StreamHeader, start: StartMode | str) -> None:
        self.header = header
        self.state = wire.StreamValidator()
        self.jitter = JitterBuffer(header.frame_rate)
        self.concealer = Concealer()
        self.gains = GainSchedule(header.samples_per_frame)
        self.decoder = streaming_decoder(model, start)
        self.observer: Optional[Observer] = None
        self.first_index: int | None = None
        self.end: wire.EndOfStream | None = None
        self.chunks: list[np.ndarray] = []
        self.pushed_frames = 0
        self.done = False

    def accept(self, message: bytes, now: float) -> None:
        """Check a message against the stream and file it; raises :class:`wire.ProtocolError`."""
        parsed = self.state.accept(message)
        if isinstance(parsed, wire.AudioPacket):
            self.jitter.put(parsed.index, parsed.frames, now)
            self.note("received", parsed.index, len(parsed.frames), now)
        elif isinstance(parsed, wire.EndOfStream):
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
    """Demultiplexes the messages of a room into :class:`PeerStream` s.

    Streams are known by their ``stream_id``, not by the relay's peer ids, so a stream
    survives the sender or the server reconnecting.
    """

    def __init__(self, model: torch.nn.Module, executor: Executor,
                 start: StartMode | str = StartMode.EXACT) -> None:
        self.model = model
        self.executor = executor
        self.start = start
        self.fingerprint = model_fingerprint(model)
        self.streams: dict[int, PeerStream] = {}
        self.sources: dict[int, PeerStream] = {}
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
            if message and message[0] == wire.ROUTED:
                self.source, message = wire.unroute(message)
            kind = wire.message_kind(message)
            if kind in (wire.LEFT, wire.JOINED):
                peer, present = wire.parse_presence(message)
                if not present:
                    self.sources.pop(peer, None)
            elif kind == wire.HEADER:
                self._open(wire.StreamHeader.decode(message)).accept(message, now)
            elif self.source in self.sources:
                self.sources[self.source].accept(message, now)
            else:
                raise wire.OutOfOrderError("packet from a peer whose HEADER was not seen")
        except wire.OutOfOrderError:
            self._count("out_of_order")
        except wire.ModelMismatchError as error:
            if "other_model" not in self.problems:  # say it once, not once per packet
                log.error("%s", error)
            self._count("other_model")
        except wire.ProtocolError:
            self._count("malformed")

    def _count(self, problem: str) -> None:
        self.problems[problem] = self.problems.get(problem, 0) + 1

    def _open(self, header: wire.StreamHeader) -> PeerStream:
        if header.fingerprint != self.fingerprint:
            raise wire.ModelMismatchError(
                f"peer {self.source} uses another model (fingerprint {header.fingerprint.hex()}, "
                f"ours {self.fingerprint.hex()}): start both with the same --model")
        stream = self.streams.get(header.stream_id)
        if stream is None or stream.header != header:
            stream = self.streams[header.stream_id] = PeerStream(self.model, header, self.start)
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
