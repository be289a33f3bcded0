"""The receiving half of a call's media path: a room's wire messages in, audio out.

:class:`Receiver` sorts the messages of every peer into :class:`PeerStream` s, each with its
own jitter buffer, concealment and decoder. Decoding runs on a worker thread (an executor),
never on the event loop's thread.

Every peer in a room may be hostile or buggy, so nothing a peer sends can end the call or grow
without bound: a header must fit our model exactly; streams are keyed by (source, stream id) and
an id another peer holds is refused; live streams are bounded per source and in all, and are
freed when they end or after a silence; a stream whose source left is not decoded once its
buffer is played out (a reconnecting sender may still take it over until the silence ends it);
one message can make a stream give out a bounded number of frames (``JitterBuffer.max_jump``);
and an error while handling one stream drops that stream alone, counted and logged once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from typing import Callable, Optional

import numpy as np
import torch

from streaming import StartMode
from streaming.onnx_engine import engine_decoder

from . import wire
from .comfort_noise import ComfortNoiseSource
from .concealment import Concealer, GainSchedule
from .jitter import STRETCH, Entry, JitterBuffer
from .meter import Meter
from .rate import RateAdvisor
from .model_header import stream_header_for
from .timing import Observer

log = logging.getLogger("call")

MAX_STREAMS = 16
"""Live remote streams in all: more than a room's worth of talkers, few enough that a flood of
headers cannot exhaust memory (each holds a decoder's state and a jitter buffer)."""
MAX_STREAMS_PER_SOURCE = 2
"""Live streams of one peer: a peer restarting its stream may overlap the old one's last frames;
a further one retires its oldest."""
KEEP_ENDED = 8
"""Ended streams kept for their statistics and output (their decoders are freed at once)."""
SILENCE_TIMEOUT = 15.0
"""Seconds without a message after which a stream with nothing left to play is closed."""


class StreamRefused(wire.ProtocolError):
    """A well-formed header the receiver will not open a stream for; ``problem`` names the count."""

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem


def streaming_decoder(model: object, start: StartMode | str, engine: str = "torch") -> object:
    """The model's streaming decoder on ``engine``; see :func:`call.sender.streaming_encoder`."""
    factory = getattr(model, "streaming_decoder", None)
    return factory(start) if factory else engine_decoder(model, start, engine)


class PeerStream:
    """One peer's incoming stream: validation, jitter buffer, concealment and decoder."""

    def __init__(self, model: torch.nn.Module, header: wire.StreamHeader, start: StartMode | str,
                 source: int | None = None, now: float = 0.0, engine: str = "torch") -> None:
        self.header = header
        self.source = source
        """The relay's id of the peer sending it (``None`` outside a relayed room: a file)."""
        self.codebook_size = getattr(model.config, "codebook_size", 1 << header.codebook_nbits)
        self.state = wire.StreamValidator()
        self.jitter = JitterBuffer(header.frame_rate)
        self.concealer = Concealer()
        self.gains = GainSchedule(header.samples_per_frame)
        self.comfort = ComfortNoiseSource(header.samples_per_frame, header.channels, seed=header.stream_id)
        self.advisor = RateAdvisor(header.stream_id)
        self.decoder = streaming_decoder(model, start, engine)
        self.observer: Optional[Observer] = None
        self.first_index: int | None = None
        self.end: wire.EndOfStream | None = None
        self.chunks: list[np.ndarray] = []
        self.pushed_frames = 0
        self.done = False
        self.departed = False  # its source left the room: play out what is held, then wait silently
        self.last_heard = now

    def accept(self, message: bytes, now: float) -> None:
        """Check a message against the stream and file it; raises :class:`wire.ProtocolError`."""
        parsed = self.state.accept(message)
        self.last_heard = now
        self.advisor.arrived(message)
        if isinstance(parsed, wire.AudioPacket):
            if any(int(codes.max(initial=0)) >= self.codebook_size for codes in parsed.frames):
                raise wire.ProtocolError(f"code beyond the {self.codebook_size}-entry codebooks")
            self.jitter.put(parsed.index, parsed.frames, now)
            self.note("received", parsed.index, len(parsed.frames), now)
        elif isinstance(parsed, wire.ComfortNoise):
            self.jitter.put_comfort(parsed, now)
        elif isinstance(parsed, wire.EndOfStream):
            self.end = parsed
            self.jitter.end(parsed.n_frames)

    def note(self, event: str, first: int, count: int = 1, now: float | None = None) -> None:
        """Tell the observer, if any (see :data:`Observer`); stretch ticks are no frame."""
        if self.observer is not None and first != STRETCH:
            self.observer(event, self.header.stream_id, first, count, time.monotonic() if now is None else now)

    def note_entries(self, event: str, entries: list[Entry]) -> None:
        if self.observer is not None:
            for index, codes in entries:
                self.note("lost" if codes is None and event == "playout" else event, index)

    def decode(self, entries: list[Entry]) -> np.ndarray:
        """Decode frames in order (``None`` = lost, concealed); runs on the model's thread.

        Consecutive frames with the same number of codebooks go through the decoder in one
        call: fewer calls, same result. A frame of a pause is comfort noise and leaves the decoder
        alone: after the hangover's quiet frames its state suits the next onset as it is.
        """
        if self.first_index is None:
            self.first_index = next((i for i, _ in entries if i != STRETCH), None)
        out: list[np.ndarray] = []
        run: list[np.ndarray] = []
        for _, codes in entries:
            if isinstance(codes, wire.ComfortNoise):
                if run:
                    out.append(self._push(run))
                    run = []
                out.append(self.comfort.frame(codes))
                continue
            decoded, gain = self.concealer.next(codes)
            if run and len(run[0]) != len(decoded):
                out.append(self._push(run))
                run = []
            self.gains.set(self.pushed_frames + len(run), gain)
            run.append(decoded)
        if run:
            out.append(self._push(run))
        return np.concatenate(out, axis=-1) if out else np.zeros((self.header.channels, 0), np.float32)

    def _push(self, frames: list[np.ndarray]) -> np.ndarray:
        codes = torch.from_numpy(np.stack(frames, axis=1))[None]
        self.pushed_frames += len(frames)
        return self.gains.apply(self.decoder.push(codes)[0].numpy().copy())  # scaled in place: not the decoder's buffer

    def flush(self) -> np.ndarray:
        """The decoder's last samples (the stream is over)."""
        return self.gains.apply(self.decoder.flush()[0].numpy())

    def retire(self) -> None:
        """The stream is over: free its decoder and buffer; its statistics and output stay."""
        self.done = True
        self.decoder = None
        self.jitter.close()
        self.jitter.pop(float("inf"))  # drops what is held; bounded by the END or jump limits

    def output_length(self) -> int | None:
        """Samples the received stream must have: the sender's exact input length."""
        if self.end is None:
            return None
        skipped = (self.first_index or 0) * self.header.samples_per_frame
        return max(0, self.end.n_samples - skipped)


class Receiver:
    """Demultiplexes the messages of a room into :class:`PeerStream` s.

    Streams are keyed by their source (the relay's peer id) and their ``stream_id``. A sender
    that reconnects comes back with a new source id and the same stream id: once its old source
    has left, it takes its stream over and the call goes on where it was.
    """

    def __init__(self, model: torch.nn.Module, executor: Executor,
                 start: StartMode | str = StartMode.EXACT, max_streams: int = MAX_STREAMS,
                 silence_timeout: float = SILENCE_TIMEOUT, engine: str = "torch") -> None:
        self.model = model
        self.engine = engine
        self.executor = executor
        self.start = start
        self.expected = stream_header_for(model)
        self.max_streams, self.silence_timeout = max_streams, silence_timeout
        self.streams: dict[tuple[int | None, int], PeerStream] = {}
        """Live streams and the last :data:`KEEP_ENDED` ended ones, oldest first."""
        self.current: dict[int | None, PeerStream] = {}  # source → the stream its audio belongs to
        self.claims: dict[int, tuple[int | None, wire.StreamHeader]] = {}  # stream id → refused claimant
        self.source: int | None = None
        self.meter = Meter()
        self.problems: dict[str, int] = {}
        self.observer: Optional[Observer] = None
        """Timing hook handed to every stream this receiver opens (see :data:`Observer`)."""
        self.on_rate: Optional[Callable[[int | None, wire.RateRequest, float], None]] = None
        """Called with (source, request, now) for each ``RATE`` a peer sends (``call.rate``)."""
        self.send: Optional[Callable[[bytes], None]] = None
        """Where this receiver's own ``RATE`` requests go (the connection); ``None``: nowhere."""
        self.decoded = False
        """The last :meth:`tick` ran the decoder (not only comfort noise): its time says what a tick costs."""
        self.arrival: float | None = None
        """When the last frame of the last :meth:`tick` landed; ``None`` when a stream played no frame that
        came (:attr:`JitterBuffer.arrival`): the playout's slack (``call.time_scale``) comes from it."""
        self.moved = 0
        """Whole frames by which the last :meth:`tick` moved the playout delay (:attr:`JitterBuffer.moved`;
        the least of the streams': a sub-frame step then cuts no delay a stream still needs)."""

    # ---------------------------------------------------------------- messages

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
                self._presence(*wire.parse_presence(message))
            elif kind == wire.RATE:
                if self.on_rate is not None:
                    self.on_rate(self.source, wire.RateRequest.decode(message), now)
            elif kind == wire.HEADER:
                self._open(wire.StreamHeader.decode(message), now).accept(message, now)
            elif self.source in self.current:
                self.current[self.source].accept(message, now)
            else:
                raise wire.OutOfOrderError("packet from a peer whose HEADER was not seen")
        except wire.OutOfOrderError:
            self._count("out_of_order")
        except wire.ModelMismatchError as error:
            self._count("other_model", error)
        except wire.VersionError as error:
            self._count("other_version", RuntimeError(f"peer {self.source}'s stream refused: {error}"))
        except StreamRefused as error:
            self._count(error.problem, error)
        except wire.ProtocolError:
            self._count("malformed")
        except Exception as error:  # a bug, or input nothing above foresaw: lose that stream only
            stream = self.current.get(self.source)
            if stream is None:
                self._count("failed", error)
            else:
                self._fail(stream, error)

    def _count(self, problem: str, error: Exception | None = None) -> None:
        """Count a dropped message; say why once per kind of problem, not once per packet."""
        if error is not None and problem not in self.problems:
            log.error("%s", error)
        self.problems[problem] = self.problems.get(problem, 0) + 1

    def _fail(self, stream: PeerStream, error: Exception) -> None:
        self._count("stream_failed", RuntimeError(
            f"stream {stream.header.stream_id:08x} of peer {stream.source} dropped: {type(error).__name__}: {error}"))
        self._retire(stream)

    def _presence(self, peer: int, present: bool) -> None:
        if present:
            return
        stream = self.current.pop(peer, None)
        for live in self._live():
            if live.source == peer:
                live.departed = True
                live.advisor.restart()
        claim = self.claims.get(stream.header.stream_id) if stream is not None else None
        if claim is not None and not stream.done:  # the claimant was the same sender, reconnected
            del self.claims[stream.header.stream_id]
            self._move(stream, claim[0])

    def new_connection(self) -> None:
        """Our own connection to the relay was opened again: every source id we knew belongs to
        the old one, so every stream is as good as departed until its sender reappears (with a
        new id, it takes its stream over)."""
        for stream in self._live():
            stream.departed = True
            stream.advisor.restart()
        self.current.clear()
        self.claims.clear()
        self.source = None

    def _check_model(self, header: wire.StreamHeader) -> None:
        expected = self.expected
        if header.fingerprint != expected.fingerprint:
            raise wire.ModelMismatchError(
                f"peer {self.source} uses another model (fingerprint {header.fingerprint.hex()}, "
                f"ours {expected.fingerprint.hex()}): start both with the same --model")
        fields = ("sample_rate", "channels", "samples_per_frame", "codebook_nbits", "max_codebooks")
        wrong = [f"{name} {getattr(header, name)} (ours {getattr(expected, name)})" for name in fields
                 if getattr(header, name) != getattr(expected, name)]
        if wrong:
            raise wire.ModelMismatchError(f"peer {self.source}'s stream header does not fit our model: {', '.join(wrong)}")

    def _open(self, header: wire.StreamHeader, now: float) -> PeerStream:
        """The stream a header opens or continues; raises what refuses it."""
        self._check_model(header)
        stream = self.streams.get((self.source, header.stream_id))
        if stream is not None and not stream.done:
            if stream.header == header:  # resent on a reconnection of the relay: it continues
                self.current[self.source] = stream
                return stream
            self._retire(stream)  # the same id with new parameters: a new stream
        holder = next((s for s in self._live() if s.header.stream_id == header.stream_id), None)
        if holder is not None:
            if not holder.departed:
                if len(self.claims) < self.max_streams:
                    self.claims[header.stream_id] = (self.source, header)
                raise StreamRefused("stream_id_taken", f"peer {self.source} sent a header for stream "
                                    f"{header.stream_id:08x}, which peer {holder.source} holds: refused")
            self._move(holder, self.source)
            return holder
        mine = [s for s in self._live() if s.source == self.source]
        if len(mine) >= MAX_STREAMS_PER_SOURCE:
            self._retire(mine[0])
        if sum(1 for _ in self._live()) >= self.max_streams:
            raise StreamRefused("too_many_streams", f"{self.max_streams} streams are open: "
                                f"peer {self.source}'s new stream refused")
        stream = PeerStream(self.model, header, self.start, self.source, now, self.engine)
        stream.observer = self.observer
        self.streams[(self.source, header.stream_id)] = self.current[self.source] = stream
        return stream

    def _move(self, stream: PeerStream, source: int | None) -> None:
        """Hand a stream whose source left to the peer that now sends it (a reconnected sender)."""
        self.streams.pop((stream.source, stream.header.stream_id), None)
        stream.source, stream.departed = source, False
        self.streams[(source, stream.header.stream_id)] = self.current[source] = stream

    def _live(self) -> list[PeerStream]:
        return [s for s in self.streams.values() if not s.done]

    def _retire(self, stream: PeerStream) -> None:
        stream.retire()
        if self.current.get(stream.source) is stream:
            del self.current[stream.source]
        ended = [key for key, s in self.streams.items() if s.done]
        for key in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self.streams[key]

    def _expire(self, now: float) -> None:
        """Close streams that fell silent, once they hold nothing more to play."""
        for stream in self._live():
            if now - stream.last_heard > self.silence_timeout and not stream.jitter.buffered:
                stream.jitter.close()

    # ------------------------------------------------------------------ output

    def _advise(self, stream: PeerStream, now: float) -> None:
        """Ask the stream's sender for the rate our link carries, when the link calls for it."""
        request = stream.advisor.advise(stream.jitter.stats, now)
        if request is not None and self.send is not None:
            self.send(request.encode())

    async def drain(self, now: float) -> None:
        """Decode every frame whose turn has come (file mode); finish ended streams."""
        self._expire(now)
        loop = asyncio.get_running_loop()
        for stream in self._live():  # a copy: messages handled while a stream decodes add streams
            try:
                entries = stream.jitter.pop(now)
                if entries:
                    stream.note_entries("playout", entries)
                    self._advise(stream, now)
                    stream.chunks.append(await loop.run_in_executor(self.executor, stream.decode, entries))
                    stream.note_entries("decoded", entries)
                if stream.jitter.finished and not stream.done:
                    if stream.first_index is not None:
                        stream.chunks.append(await loop.run_in_executor(self.executor, stream.flush))
                    self._retire(stream)
            except Exception as error:
                self._fail(stream, error)

    def _playing(self) -> list[PeerStream]:
        """The streams a playout tick takes a frame of (a stream whose source left, once played
        out, is not concealed for ever)."""
        return [s for s in self._live() if s.jitter.next_index is not None and not (s.departed and not s.jitter.buffered)]

    def waiting(self, now: float) -> bool:
        """A stream's frame due next may still come (:meth:`JitterBuffer.waiting`): worth waiting
        for while the sound card does not need the tick yet."""
        return any(stream.jitter.waiting(now) for stream in self._playing())

    def missing(self, now: float) -> bool:
        """A stream that has played is missing its frame due (:meth:`JitterBuffer.missing`): a tick
        now would conceal a whole frame of it."""
        return any(s.first_index is not None and s.jitter.missing(now) for s in self._playing())

    async def tick(self, now: float, due: float | None = None) -> np.ndarray | None:
        """One playout tick (speaker mode): one frame of every live stream, mixed; ``due``: see
        :meth:`JitterBuffer.playout`."""
        self._expire(now)
        for stream in [s for s in self._live() if s.jitter.finished]:
            self._retire(stream)
        playing = self._playing()  # (a peer that left, played out: concealing it would cost a decode per tick)
        if not playing:
            return None
        loop = asyncio.get_running_loop()
        mixed = None
        self.decoded = False
        arrivals, moves = [], []
        for stream in playing:
            entry = stream.jitter.playout(now, due)
            self.decoded |= not isinstance(entry[1], wire.ComfortNoise)
            arrivals.append(stream.jitter.arrival)
            moves.append(stream.jitter.moved)
            if entry[0] == STRETCH and stream.first_index is None:
                continue  # still filling the buffer before the first frame: nothing to play
            try:
                stream.note_entries("playout", [entry])
                self._advise(stream, now)
                audio = await loop.run_in_executor(self.executor, stream.decode, [entry])
                stream.note_entries("decoded", [entry])
            except Exception as error:
                self._fail(stream, error)
                continue
            mixed = audio if mixed is None or mixed.shape != audio.shape else mixed + audio
        self.arrival, self.moved = None if None in arrivals else max(arrivals), min(moves)
        return mixed
