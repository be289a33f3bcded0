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
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import soundfile

from call.connection import CallError, Connection
from call.media import file_blocks, microphone_blocks, play, record
from call.meter import Meter
from call.outbox import Outbox
from call.receiver import Receiver
from call.search_width import search_width_option
from call.sender import Sender
from call.status import CallStatus
from call.wav import read_wav
from streaming import StartMode

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
    ``None``: ``call.search_width.default_search_width`` of the bandwidth."""
    input_device: int | str | None = None
    output_device: int | str | None = None
    status: bool = True
    start: str | None = None
    """Start mode of the encoder/decoder; default: exact for files, immediate for devices."""

    @property
    def url(self) -> str:
        return f"{self.server.rstrip('/')}/{self.room}"


class Client:
    """One participant of a call: the media path (sender and receiver on their worker threads),
    the connection, the source and sink of audio, and the status, started together and stopped
    together. Each part lives in its own module of ``call``; this class only wires them."""

    def __init__(self, options: Options, model: object) -> None:
        self.options = options
        self.model = model
        config = model.config
        self.rate, self.channels = config.sampling_rate, config.audio_channels
        self.frame_period = config.hop_length / config.sampling_rate
        self.output_margin = self.frame_period / 2
        """Audio kept at the sound card beyond one callback's block: the time a tick has to decode."""
        self.send_file = options.input is not None
        sends = options.input is not None or options.output is None
        receives = options.input is None or options.output is not None
        file_mode = StartMode.EXACT if options.input or options.output else StartMode.IMMEDIATE
        start = StartMode(options.start) if options.start else file_mode
        # One worker thread per direction: the model never runs on the event loop.
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self.sender = Sender(model, self.encode_pool, options.bandwidth, start,
                             options.frames_per_packet, options.search_width) if sends else None
        self.receiver = Receiver(model, self.decode_pool, start) if receives else None
        self.arrived = asyncio.Event()
        self.up = Meter()
        self.connection = Connection(
            options.url, options.token, Outbox(capacity=64, lossy=not self.send_file), self.up,
            header=self.sender.header.encode() if self.sender else None,
            on_message=self._arrived if self.receiver else None, wait_for_listener=self.send_file)
        if self.receiver:
            self.connection.on_connect = self.receiver.new_connection
        self.status = CallStatus(self.connection, self.sender, self.receiver, self.frame_period, options.bandwidth)

    def _arrived(self, message: bytes | str, now: float) -> None:
        self.receiver.handle(message, now)
        self.arrived.set()

    async def run(self) -> int:
        """Run the call until its files are done (or forever for a live call); exit status."""
        tasks = [asyncio.create_task(self.connection.run())]
        goals = []  # what ends a call of files; a live call runs until interrupted
        if self.sender:
            tasks.append(asyncio.create_task(self._produce()))
        if self.send_file:
            goals.append(asyncio.create_task(self.connection.sent_all.wait()))
        if self.receiver:
            consume = asyncio.create_task(self._consume())
            (goals if self.options.output else tasks).append(consume)
        if self.options.status:
            tasks.append(asyncio.create_task(self.status.show()))
        try:
            if goals:
                await self._until(goals, tasks)
            else:
                await asyncio.gather(*tasks)  # a live call runs until interrupted
        finally:
            for task in tasks + goals:
                task.cancel()
            await asyncio.gather(*tasks, *goals, return_exceptions=True)
            await self.connection.close()
            self.encode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
        if self.options.output:
            audio = self.receiver.finished_output()
            soundfile.write(self.options.output, audio.T, self.rate, subtype="FLOAT")
        if self.options.status:
            print(f"\n{self.status.summary()}", file=sys.stderr)
        return 0

    @staticmethod
    async def _until(goals: list[asyncio.Task], tasks: list[asyncio.Task]) -> None:
        """Wait for every goal; a task or goal that fails first (bad token, bad file) raises."""
        pending = set(goals)
        while pending:
            done, _ = await asyncio.wait(pending | set(tasks), return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises the task's error; a clean end changes nothing
            tasks[:] = [t for t in tasks if t not in done]
            pending -= done

    async def _produce(self) -> None:
        """Source → encoder → outbox, for the whole call."""
        if self.send_file:
            audio = read_wav(self.options.input, self.rate, self.channels)
            blocks = file_blocks(audio, self.rate, self.options.pace)
            await self.connection.connected.wait()
        else:
            blocks = microphone_blocks(self.rate, self.channels, self.options.input_device,
                                       self.model.config.hop_length)
        outbox = self.connection.outbox
        async for block in blocks:
            for message in await self.sender.push(block):
                await outbox.put(message)
        for message in await self.sender.finish():
            await outbox.put(message)

    async def _consume(self) -> None:
        """Receiver → file (until a stream ends) or → speaker (for the whole call)."""
        if self.options.output:
            await record(self.receiver, self.arrived, self.frame_period)
        else:
            await play(self.receiver, self.rate, self.channels, self.options.output_device, self.output_margin)


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
    from call.sound_card import AudioDeviceError, list_devices

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
