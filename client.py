"""Call client: microphone (or a WAV file) to the room, the room to the speaker (or a WAV file).

    python client.py --server ws://127.0.0.1:8765 --room demo            # a live call
    python client.py --server ws://… --room demo --input speech.wav      # speak a file
    python client.py --server ws://… --room demo --output heard.wav      # record what is heard

With neither --input nor --output the client captures the microphone and plays the room.
``--input`` replaces the microphone and turns playback off (a file sender does not listen);
``--output`` records the first stream heard, exits 0 when its sender ends it, and the file
has exactly the sender's input length; alone, it sends nothing. The connection is retried
with backoff when the server goes away, and the call continues where it was.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Iterator

import numpy as np
import soundfile
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from streaming import protocol
from streaming.call import Meter, Receiver, Sender, search_width_option
from streaming.stream import StartMode
from streaming.wav import read_wav

log = logging.getLogger("client")

FILE_BLOCK = 480
"""Samples per block read from a file (20 ms at 24 kHz), unrelated to the 320-sample frame
on purpose: the encoder buffers whole frames whatever the block size."""


class CallError(RuntimeError):
    """The call cannot go on (refused by the server, …); the message is for the user."""


@dataclass
class Options:
    """Everything a call needs besides the model (the CLI fills it; tests build it)."""

    server: str
    room: str
    token: str | None = None
    bandwidth: float = 6.0
    input: str | None = None
    output: str | None = None
    pace: bool = True
    frames_per_packet: int = 1
    search_width: int | None = None
    """Codebook search width of the encoder (``EncodecModel.encode``): better codes, same bits, more CPU.
    ``None``: ``streaming.call.default_search_width`` of the bandwidth."""
    input_device: int | str | None = None
    output_device: int | str | None = None
    status: bool = True
    start: str | None = None
    """Start mode of the encoder/decoder; default: exact for files, immediate for devices."""

    @property
    def url(self) -> str:
        return f"{self.server.rstrip('/')}/{self.room}"


def backoff(first: float = 0.1, factor: float = 2.0, limit: float = 5.0) -> Iterator[float]:
    """Reconnect delays: quick at first (a restarting server is back in a moment), then
    growing to ``limit``, with jitter so that a room does not reconnect in lockstep."""
    delay = first
    while True:
        yield delay * random.uniform(0.8, 1.2)
        delay = min(delay * factor, limit)


class Outbox:
    """Messages waiting for the socket. A live source drops its oldest audio when the
    network cannot keep up (latency first); a file source waits instead (nothing lost)."""

    def __init__(self, capacity: int, lossy: bool) -> None:
        self.queue: deque[bytes] = deque()
        self.capacity, self.lossy = capacity, lossy
        self.changed = asyncio.Event()
        self.dropped = 0

    async def put(self, message: bytes) -> None:
        while len(self.queue) >= self.capacity:
            if self.lossy and message[0] & protocol.AUDIO_FLAG:
                self.queue.popleft()
                self.dropped += 1
                break
            self.changed.clear()
            await self.changed.wait()
        self.queue.append(message)
        self.changed.set()

    async def head(self) -> bytes:
        while not self.queue:
            self.changed.clear()
            await self.changed.wait()
        return self.queue[0]

    def pop(self) -> None:
        self.queue.popleft()
        self.changed.set()


async def file_blocks(audio: np.ndarray, rate: int, pace: bool) -> AsyncIterator[np.ndarray]:
    """Blocks of a file, in real time unless ``pace`` is off."""
    started = time.monotonic()
    for start in range(0, audio.shape[-1], FILE_BLOCK):
        if pace:
            await asyncio.sleep(max(0.0, started + start / rate - time.monotonic()))
        yield audio[:, start : start + FILE_BLOCK]


class Client:
    """One participant of a call."""

    def __init__(self, options: Options, model: object) -> None:
        self.options = options
        self.model = model
        config = model.config
        self.rate, self.channels = config.sampling_rate, config.audio_channels
        self.frame_period = config.hop_length / config.sampling_rate
        self.output_margin = self.frame_period / 2
        """Audio kept at the sound card beyond one callback's block: the time a tick has to decode."""
        self.send_file = options.input is not None
        self.sends = options.input is not None or options.output is None
        self.receives = options.input is None or options.output is not None
        file_mode = StartMode.EXACT if options.input or options.output else StartMode.IMMEDIATE
        start = StartMode(options.start) if options.start else file_mode
        # One worker thread per direction: the model never runs on the event loop.
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self.sender = Sender(model, self.encode_pool, options.bandwidth, start,
                             options.frames_per_packet, options.search_width) if self.sends else None
        self.receiver = Receiver(model, self.decode_pool, start) if self.receives else None
        self.outbox = Outbox(capacity=64, lossy=not self.send_file)
        self.up = Meter()
        self.connected = asyncio.Event()
        self.sent_all = asyncio.Event()
        self.heard = asyncio.Event()
        self.arrived = asyncio.Event()
        self.peers: set[int] = set()
        self.listening = asyncio.Event()  # another peer is in the room
        self.ws: ClientConnection | None = None
        self.reconnects = 0

    # ------------------------------------------------------------------ run

    async def run(self) -> int:
        """Run the call until its files are done (or forever for a live call); exit status."""
        tasks = [asyncio.create_task(self._connection())]
        if self.sender:
            tasks.append(asyncio.create_task(self._produce()))
        if self.receiver and self.options.output:
            tasks.append(asyncio.create_task(self._drain()))
        elif self.receiver:
            tasks.append(asyncio.create_task(self._play()))
        if self.options.status:
            tasks.append(asyncio.create_task(self._status()))
        goals = []
        if self.send_file:
            goals.append(asyncio.create_task(self.sent_all.wait()))
        if self.options.output:
            goals.append(asyncio.create_task(self.heard.wait()))
        try:
            if goals:
                await self._until(goals, tasks)
            else:
                await asyncio.gather(*tasks)  # a live call runs until interrupted
        finally:
            for task in tasks + goals:
                task.cancel()
            await asyncio.gather(*tasks, *goals, return_exceptions=True)
            if self.ws is not None:
                await self.ws.close()
            self.encode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.options.output:
            audio = self.receiver.finished_output()
            soundfile.write(self.options.output, audio.T, self.rate, subtype="FLOAT")
        if self.options.status:
            print(f"\n{self.summary()}", file=sys.stderr)
        return 0

    @staticmethod
    async def _until(goals: list[asyncio.Task], tasks: list[asyncio.Task]) -> None:
        """Wait for every goal; a task that fails first (bad token, bad file) raises."""
        pending = set(goals)
        while pending:
            done, _ = await asyncio.wait(pending | set(tasks), return_when=asyncio.FIRST_COMPLETED)
            for task in done & set(tasks):
                task.result()  # raises the task's error; a clean end changes nothing
            tasks[:] = [t for t in tasks if t not in done]
            pending -= done

    # ----------------------------------------------------------- connection

    async def _connection(self) -> None:
        """Connect, and reconnect with backoff for as long as the call lasts."""
        headers = {"Authorization": f"Bearer {self.options.token}"} if self.options.token else None
        try:
            async for ws in connect(self.options.url, additional_headers=headers, compression=None,
                                    ping_interval=5, ping_timeout=10, max_size=1 << 16,
                                    open_timeout=5, reconnect_delays=backoff):
                self.ws = ws
                # Presence is per connection: until this connection hears a JOINED, nobody is
                # listening (a file sender must not flush its backlog into an empty room).
                self.peers.clear()
                self.listening.clear()
                self.connected.set()
                halves = [asyncio.create_task(self._send(ws)), asyncio.create_task(self._receive(ws))]
                try:
                    await asyncio.gather(*halves)
                except ConnectionClosed:
                    self.reconnects += 1
                    log.warning("connection lost; reconnecting")
                    continue
                finally:
                    self.connected.clear()
                    for half in halves:  # neither half may outlive its connection
                        half.cancel()
                    await asyncio.gather(*halves, return_exceptions=True)
        except InvalidStatus as error:
            raise CallError(f"The server refused us: HTTP {error.response.status_code} "
                             f"{error.response.body.decode(errors='replace').strip()}") from error

    async def _send(self, ws: ClientConnection) -> None:
        if self.sender is None:
            return
        header = self.sender.header.encode()
        await ws.send(header)  # every (re)connection starts with it
        self.up.add(header)
        while True:
            message = await self.outbox.head()
            if self.send_file:
                await self.listening.wait()  # a file is not spoken into an empty room
            await ws.send(message)  # a failed send keeps the message for the next connection
            self.up.add(message)
            self.outbox.pop()
            if message[0] == protocol.END:
                self.sent_all.set()

    async def _receive(self, ws: ClientConnection) -> None:
        """File incoming messages; a send-only client still reads, so pings get answered."""
        async for message in ws:
            if message and message[0] in (protocol.JOINED, protocol.LEFT):
                self._presence(message)
            if self.receiver is not None:
                self.receiver.handle(message, time.monotonic())
                self.arrived.set()
        await ws.recv()  # the connection is over: raises ConnectionClosed, which reconnects

    def _presence(self, message: bytes) -> None:
        try:
            peer, present = protocol.parse_presence(message)
        except protocol.ProtocolError:
            return  # the receiver counts it
        if present:
            self.peers.add(peer)
        else:
            self.peers.discard(peer)
        if self.peers:
            self.listening.set()
        else:
            self.listening.clear()

    # ---------------------------------------------------------------- media

    async def _produce(self) -> None:
        """Source → encoder → outbox, for the whole call."""
        if self.send_file:
            audio = read_wav(self.options.input, self.rate, self.channels)
            blocks = file_blocks(audio, self.rate, self.options.pace)
            await self.connected.wait()
        else:
            blocks = self._microphone()
        async for block in blocks:
            for message in await self.sender.push(block):
                await self.outbox.put(message)
        for message in await self.sender.finish():
            await self.outbox.put(message)

    async def _microphone(self) -> AsyncIterator[np.ndarray]:
        from streaming.audio_io import Microphone

        microphone = Microphone(self.rate, self.channels, self.options.input_device,
                                frame_samples=self.model.config.hop_length)
        microphone.start()
        try:
            while True:
                yield await microphone.read()
        finally:
            microphone.close()

    async def _drain(self) -> None:
        """File mode: decode frames in order as soon as the jitter buffer releases them."""
        while True:
            try:
                await asyncio.wait_for(self.arrived.wait(), self.frame_period)
            except asyncio.TimeoutError:
                pass
            self.arrived.clear()
            await self.receiver.drain(time.monotonic())
            if self.receiver.finished_output() is not None:
                self.heard.set()
                return

    async def _play(self) -> None:
        """Speaker mode: after each callback, top the sound card's queue up to one callback's block
        plus half a frame, one tick at a time. Every frame queued here is latency; the half frame
        is the time a tick has to decode before the card would run dry."""
        from streaming.audio_io import Speaker

        speaker = Speaker(self.rate, self.channels, self.options.output_device)
        speaker.start()
        try:
            while True:
                await speaker.consumed.wait()
                speaker.consumed.clear()
                while speaker.queued_seconds < speaker.block_seconds + self.output_margin:
                    audio = await self.receiver.tick(time.monotonic())
                    if audio is None:
                        break
                    speaker.write(audio)
        finally:
            speaker.close()

    # --------------------------------------------------------------- status

    def status_line(self) -> str:
        parts = [f"up {self.up.kbps():.1f} kbps"]
        rtt = self.ws.latency if self.ws is not None and self.connected.is_set() else None
        if self.receiver is not None:
            parts.append(f"down {self.receiver.meter.kbps():.1f} kbps")
            for stream in self.receiver.streams.values():
                jitter = stream.jitter
                delay = jitter.target_delay + self.frame_period + (rtt or 0) / 2
                parts.append(f"[{stream.header.stream_id:08x}] loss {100 * jitter.stats.loss_rate:.1f}% "
                             f"buffer {1000 * jitter.target_delay:.0f} ms latency ~{1000 * delay:.0f} ms")
        parts.append(f"rtt {1000 * rtt:.0f} ms" if rtt is not None else "disconnected")
        return " | ".join(parts)

    async def _status(self) -> None:
        end = "\r" if sys.stderr.isatty() else "\n"
        while True:
            await asyncio.sleep(1.0)
            print(self.status_line(), end=end, file=sys.stderr, flush=True)

    def summary(self) -> str:
        """Totals at exit, including the application-layer bitrate of what was sent."""
        lines = []
        if self.sender is not None and self.sender.next_index:
            seconds = self.sender.next_index * self.frame_period
            framed = self.up.bytes + 6 * self.up.messages  # 2-byte frame header + 4-byte mask
            nominal = self.options.bandwidth
            lines.append(
                f"sent {self.up.messages} messages, {self.up.bytes} bytes for {seconds:.2f} s of audio: "
                f"{8 * self.up.bytes / seconds / 1000:.2f} kbps at the application layer "
                f"({8 * self.up.bytes / seconds / 1000 / nominal:.3f}x nominal {nominal:g} kbps), "
                f"{8 * framed / seconds / 1000:.2f} kbps with websocket framing")
        if self.receiver is not None:
            for stream in self.receiver.streams.values():
                s = stream.jitter.stats
                lines.append(f"received stream {stream.header.stream_id:08x}: {s.received} frames, "
                             f"{s.lost} lost, {s.late} late, {s.duplicate} duplicate")
            if self.receiver.problems:
                lines.append(f"dropped messages: {self.receiver.problems}")
        return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="ws://127.0.0.1:8765", help="relay URL (default %(default)s)")
    parser.add_argument("--room", help="room name (letters, digits, _ . -)")
    parser.add_argument("--model", default="default", help="default | checkpoint dir | hub id | Meta .th file")
    parser.add_argument("--bandwidth", type=float, default=6.0, help="kbps (default %(default)s)")
    parser.add_argument("--input", help="WAV file to send instead of the microphone")
    parser.add_argument("--output", help="WAV file to write what is heard (instead of the speaker)")
    parser.add_argument("--no-pace", action="store_true", help="send --input as fast as possible")
    parser.add_argument("--frames-per-packet", type=int, default=1, help="latency/overhead trade (default 1)")
    parser.add_argument("--search-width", type=search_width_option,
                        help="codebook search width: better sound for the same bits, more encoder CPU "
                             "(default: 4 up to 6 kbps, 1 above)")
    parser.add_argument("--start", choices=[m.value for m in StartMode],
                        help="codec start mode (default: exact with files, immediate with devices)")
    parser.add_argument("--token", help="token the server asks for")
    parser.add_argument("--list-devices", action="store_true", help="print the sound devices and exit")
    parser.add_argument("--input-device", help="microphone (index or name, see --list-devices)")
    parser.add_argument("--output-device", help="speaker (index or name, see --list-devices)")
    parser.add_argument("--quiet", action="store_true", help="no status line")
    args = parser.parse_args(argv)
    if not args.list_devices and not args.room:
        parser.error("--room is required")
    return args


def device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    from streaming.audio_io import AudioDeviceError, list_devices

    if args.list_devices:
        try:
            print(list_devices())
        except AudioDeviceError as error:
            raise SystemExit(str(error)) from error
        return 0
    from codec import load_model

    options = Options(server=args.server, room=args.room, token=args.token, bandwidth=args.bandwidth,
                      input=args.input, output=args.output, pace=not args.no_pace,
                      frames_per_packet=args.frames_per_packet, search_width=args.search_width, input_device=device(args.input_device),
                      output_device=device(args.output_device), status=not args.quiet, start=args.start)
    try:
        model = load_model(args.model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"Cannot load model {args.model!r}: {error}") from error
    # Everything loaded so far lives for the whole call: freezing it keeps the garbage collector
    # from walking it again (a full collection of ~150 ms stalled the audio in the benchmark).
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(Client(options, model.eval()).run())
    except (AudioDeviceError, CallError) as error:
        raise SystemExit(str(error)) from error
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
