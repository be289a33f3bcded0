"""Call client: microphone (or a WAV file) to the room, the room to the speaker (or a WAV file).

    python client.py --server ws://127.0.0.1:8765 --room demo            # a live call
    python client.py --server ws://… --room demo --input speech.wav      # speak a file
    python client.py --server ws://… --room demo --output heard.wav      # record what is heard

With neither --input nor --output the client captures the microphone and plays the room.
``--input`` replaces the microphone and turns playback off (a file sender does not listen);
``--output`` records the first stream heard as it is decoded (the WAV on disk is valid at every
moment, so Ctrl-C or a crash keeps what was heard), exits 0 when its sender ends it, and the file
has exactly the sender's input length; alone, it sends nothing. The connection is retried
with backoff when the server goes away, and the call continues where it was; a relay that cannot
be reached is given up after --connect-timeout (at the start) or --reconnect-timeout (later)
seconds, with the reason in one line.

Everything that can be checked before the model loads is (the room name, the files, the
bandwidth against the model's config.json), and a mistake is one line, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import soundfile

from call import wire
from call.connection import FOREVER, CallError, Connection, Patience, plaintext_token_warning
from call.front_end import FrontEnd, FrontEndError, Stages
from call.media import file_blocks, microphone_blocks, play, record
from call.meter import Meter
from call.outbox import Outbox
from call.receiver import Receiver
from call.recording import OUTPUT_FORMATS, Recording
from call.rooms import ROOM_RULE, room_name_option
from call.search_width import search_width_option
from call.sender import Sender
from call.status import CallStatus
from call.threads import DEFAULT_THREADS, configure_threads
from call.wav import read_wav
from codec.config import EncodecConfig
from codec.pretrained import known_config
from streaming import StartMode
from streaming.coder import check_streamable
from streaming.onnx_engine import ENGINES, INSTALL_HINT, EngineUnavailable, choose_engine, missing_onnx_module

STALE_AFTER_GAP = 0.1
"""Seconds of a live sender's audio queued while disconnected that go out when the connection
is back; older audio is dropped (it would put its whole age into the call's delay)."""


@dataclass
class Options:
    """Everything a call needs besides the model (the CLI fills it; tests build it)."""

    server: str
    room: str
    more_servers: tuple[str, ...] = ()
    """Other nodes of the relay's cluster: tried in turn when one cannot be reached."""
    token: str | None = None
    bandwidth: float = 6.0
    input: str | None = None
    output: str | None = None
    pace: bool = True
    frames_per_packet: int = 1
    search_width: int | None = None
    """Codebook search width of the encoder (``EncodecModel.encode``): better codes, same bits, more CPU.
    ``None``: ``call.search_width.default_search_width`` of the bandwidth."""
    engine: str = "auto"
    """Streaming engine of the encoder and decoder (``streaming.onnx_engine.ENGINES``): ``auto`` is ONNX
    Runtime where it is installed and the start is immediate, PyTorch (the reference) otherwise."""
    input_device: int | str | None = None
    output_device: int | str | None = None
    status: bool = True
    start: str | None = None
    """Start mode of the encoder/decoder; default: exact for files, immediate for devices."""
    dtx: bool | None = None
    """Discontinuous transmission (``call.dtx``): comfort noise instead of frames in pauses.
    ``None``: on for the microphone, off for a file (which arrives whole, exactly)."""
    output_format: str = "pcm16"
    """Sample format of ``output``: ``pcm16`` or ``float`` (see ``call.recording.OUTPUT_FORMATS``)."""
    output_rate: int | None = None
    """Sample rate of ``output``; ``None``: the model's."""
    connect_timeout: float | None = Patience.first
    """Seconds to reach the relay at the start before giving up; ``None``: for ever."""
    reconnect_timeout: float | None = Patience.again
    """Seconds to get a lost connection back before giving up; ``None``: for ever."""
    front_end: Stages = Stages()
    """Echo cancellation, noise suppression, gain on the microphone (``call.front_end``); a file is sent as it is."""

    @property
    def urls(self) -> list[str]:
        """The room on every node given, the first one first."""
        return [f"{server.rstrip('/')}/{self.room}" for server in (self.server, *self.more_servers)]


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
        self.send_file = options.input is not None
        sends = options.input is not None or options.output is None
        receives = options.input is None or options.output is not None
        file_mode = StartMode.EXACT if options.input or options.output else StartMode.IMMEDIATE
        start = StartMode(options.start) if options.start else file_mode
        self.engine = choose_engine(model, start, options.engine)
        if options.status:
            print(self.engine.line(), file=sys.stderr)
        # One worker thread per direction: the model never runs on the event loop.
        self.encode_pool = ThreadPoolExecutor(1, thread_name_prefix="encode")
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self.sender = Sender(model, self.encode_pool, options.bandwidth, start, options.frames_per_packet,
                             options.search_width, live=not self.send_file, engine=options.engine,
                             dtx=not self.send_file if options.dtx is None else options.dtx) if sends else None
        self.receiver = Receiver(model, self.decode_pool, start, engine=options.engine) if receives else None
        live_microphone = sends and not self.send_file
        self.front_end = FrontEnd(self.rate, self.channels, options.front_end) \
            if live_microphone and options.front_end.any else None
        self.arrived = asyncio.Event()
        self.up = Meter()
        keep = max(1, int(STALE_AFTER_GAP / (self.frame_period * options.frames_per_packet)))
        self.connection = Connection(
            options.urls, options.token, Outbox(capacity=64, lossy=not self.send_file, keep_after_gap=keep),
            self.up, header=self.sender.header.encode() if self.sender else None,
            on_message=self._arrived if self.receiver else None, wait_for_listener=self.send_file,
            patience=Patience(options.connect_timeout, options.reconnect_timeout))
        self.recording = Recording(options.output, self.rate, self.channels, options.output_rate,
                                   options.output_format) if options.output else None
        if self.receiver:
            self.connection.on_connect = self.receiver.new_connection
            self.receiver.send = self._send_control
            if self.sender:
                self.receiver.on_rate = self._rate_requested
        self.status = CallStatus(self.connection, self.sender, self.receiver, self.frame_period, options.bandwidth,
                                 self.front_end)

    def _send_control(self, message: bytes) -> None:
        """A receiver's request to a sender (``call.rate``): through the outbox, without waiting."""
        asyncio.get_running_loop().create_task(self.connection.outbox.put(message))

    def _rate_requested(self, source: int | None, request: wire.RateRequest, now: float) -> None:
        if request.stream_id == self.sender.header.stream_id:
            self.sender.limit_rate(source, request.kbps, now)

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
            if self.recording is not None:
                self.recording.close()  # what was heard is on disk already; this closes it as it is
            await self.connection.close()
            self.encode_pool.shutdown(wait=False, cancel_futures=True)
            self.decode_pool.shutdown(wait=False, cancel_futures=True)
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
                                       self.model.config.hop_length, self.front_end)
        outbox = self.connection.outbox
        async for block in blocks:
            for message in await self.sender.push(block):
                await outbox.put(message)
        for message in await self.sender.finish():
            await outbox.put(message)

    async def _consume(self) -> None:
        """Receiver → file (until a stream ends) or → speaker (for the whole call)."""
        if self.recording is not None:
            if not await record(self.receiver, self.arrived, self.frame_period, self.recording):
                raise CallError(f"The stream ended without its END (its sender left?): {self.options.output} "
                                f"holds the {self.recording.seconds:.2f} s heard")
        else:
            await play(self.receiver, self.rate, self.channels, self.options.output_device, self.arrived,
                       self.front_end)


def bandwidths(config: EncodecConfig) -> str:
    return ", ".join(f"{b:g}" for b in config.target_bandwidths)


def model_problem(config: EncodecConfig, model: str, bandwidth: float) -> str | None:
    """What makes a model unfit for this call (it cannot stream, or lacks the bandwidth), from
    its config alone; ``None`` when it fits."""
    try:
        check_streamable(config)
    except ValueError as error:
        return f"--model {model}: {error}"
    if bandwidth not in config.target_bandwidths:
        return f"--bandwidth {bandwidth:g}: model {model!r} offers {bandwidths(config)} kbps"
    return None


def number_option(kind: Callable[[str], float], low: float, high: float | None = None) -> Callable[[str], float]:
    """``argparse`` type of a number in ``[low, high]``: a usage error, not a traceback, for anything else."""
    bounds = f"from {low:g} to {high:g}" if high is not None else f"of {low:g} or more"
    name = "a whole number" if kind is int else "a number"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= (high if high is not None else float("inf")):
            raise argparse.ArgumentTypeError(f"must be {name} {bounds}, got {text!r}")
        return value
    return parse


def server_option(text: str) -> str:
    from websockets.exceptions import InvalidURI
    from websockets.uri import parse_uri

    try:
        parse_uri(text)
    except (InvalidURI, ValueError) as error:  # ValueError: a port out of range
        raise argparse.ArgumentTypeError(f"{text!r} is not a relay URL like ws://HOST:PORT or wss://HOST ({error})")
    return text


def input_option(path: str) -> str:
    """``argparse`` type of ``--input``: an audio file soundfile can read."""
    if not os.path.isfile(path):
        raise argparse.ArgumentTypeError(f"no such file: {path}")
    try:
        soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError) as error:
        reason = str(error).rpartition(": ")[2] or str(error)
        raise argparse.ArgumentTypeError(f"{path} is not an audio file this client reads (WAV, FLAC, OGG…): {reason}")
    return path


def output_option(path: str) -> str:
    """``argparse`` type of ``--output``: a file that can be created where it is asked for."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{path} is a directory; name the WAV file to write")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"no such directory: {folder}")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {folder}")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default = known_config("default")
    offered = bandwidths(default) if default is not None else "1.5, 3, 6, 12, 24"
    seconds = number_option(float, 0.0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", type=server_option, metavar="URL", action="append",
                        help="relay URL, ws://HOST:PORT or wss://HOST:PORT (default ws://127.0.0.1:8765); "
                        "repeat it for the nodes of a cluster: the next is tried when one goes away")
    parser.add_argument("--room", type=room_name_option, metavar="NAME", help=f"room name: {ROOM_RULE}")
    parser.add_argument("--model", default="default", help="default | checkpoint dir | hub id | Meta .th file")
    parser.add_argument("--bandwidth", type=number_option(float, 0.1), default=6.0, metavar="KBPS",
                        help=f"kbps, one the model offers: {offered} for the default model; another model's "
                             "own (checked as soon as its config.json is read) (default %(default)s)")
    parser.add_argument("--input", type=input_option, metavar="FILE", help="audio file to send instead of the microphone")
    parser.add_argument("--output", type=output_option, metavar="WAV",
                        help="WAV file to write what is heard (instead of the speaker), on disk as it is heard")
    parser.add_argument("--output-format", choices=list(OUTPUT_FORMATS), default="pcm16",
                        help="sample format of --output: pcm16 (16-bit, what players expect) or float "
                             "(32-bit, the decoder's own samples) (default %(default)s)")
    parser.add_argument("--output-rate", type=number_option(int, 1000, 384000), metavar="HZ",
                        help="sample rate of --output in Hz (default: the model's; resampled as it is written)")
    parser.add_argument("--no-pace", action="store_true", help="send --input as fast as possible")
    parser.add_argument("--no-dtx", action="store_true",
                        help="send every frame of the microphone's pauses too, instead of comfort noise "
                             "(peers older than DTX need it)")
    parser.add_argument("--frames-per-packet", type=number_option(int, 1, wire.MAX_FRAMES_PER_PACKET), default=1, metavar="N",
                        help="latency/overhead trade (default 1)")
    parser.add_argument("--search-width", type=search_width_option,
                        help="codebook search width: better sound for the same bits, more encoder CPU "
                             "(default: 4 up to 6 kbps, 1 above)")
    parser.add_argument("--start", choices=[m.value for m in StartMode],
                        help="codec start mode (default: exact with files, immediate with devices)")
    parser.add_argument("--token", help="token the server asks for")
    parser.add_argument("--connect-timeout", type=seconds, default=Patience.first, metavar="SECONDS",
                        help="seconds to reach the relay at the start before giving up (default %(default)g)")
    parser.add_argument("--reconnect-timeout", type=seconds, default=Patience.again, metavar="SECONDS",
                        help="seconds to get a lost relay back before giving up (default %(default)g)")
    parser.add_argument("--retry-forever", action="store_true", help="never give up on the relay")
    parser.add_argument("--threads", type=number_option(int, 1), default=DEFAULT_THREADS, metavar="N",
                        help="torch threads for each of the encoder and the decoder (default %(default)s)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="streaming engine: onnx (ONNX Runtime, faster), torch (the reference), or auto: onnx "
                             "where onnxruntime is installed and the start is immediate, else torch (default auto); "
                             "onnx-int8: int8 weights, for models larger than the CPU cache (same bitstream)")
    parser.add_argument("--list-devices", action="store_true", help="print the sound devices and exit")
    parser.add_argument("--input-device", help="microphone (index or name, see --list-devices)")
    parser.add_argument("--output-device", help="speaker (index or name, see --list-devices)")
    parser.add_argument("--quiet", action="store_true", help="no status line")
    for flag, stage in (("--no-aec", "echo cancellation (use with headphones)"), ("--no-ns", "noise suppression"),
                        ("--no-agc", "automatic gain")):
        parser.add_argument(flag, action="store_true", help=f"microphone without {stage} (files never get any)")
    args = parser.parse_args(argv)
    args.server = args.server or ["ws://127.0.0.1:8765"]
    if args.list_devices:
        return args
    if not args.room:
        parser.error("--room is required")
    missing = missing_onnx_module() if args.engine.startswith("onnx") else None
    if missing:
        parser.error(f"--engine {args.engine} needs {missing}, which is not installed: {INSTALL_HINT}")
    try:
        config = known_config(args.model)
    except ValueError as error:
        parser.error(f"--model {args.model}: {error}")
    problem = model_problem(config, args.model, args.bandwidth) if config is not None else None
    if problem:
        parser.error(problem)
    return args


def device(value: str | None) -> int | str | None:
    return int(value) if value is not None and value.isdigit() else value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("streaming.onnx_engine").setLevel(logging.INFO)  # the first use's graph build, as it goes
    from call.sound_card import AudioDeviceError, list_devices

    if args.list_devices:
        try:
            print(list_devices())
        except AudioDeviceError as error:
            raise SystemExit(str(error)) from error
        return 0
    for warning in {plaintext_token_warning(server, args.token) for server in args.server} - {None}:
        print(warning, file=sys.stderr)
    configure_threads(args.threads)
    from codec import load_model

    patience = FOREVER if args.retry_forever else Patience(args.connect_timeout, args.reconnect_timeout)
    options = Options(server=args.server[0], more_servers=tuple(args.server[1:]), room=args.room,
                      token=args.token, bandwidth=args.bandwidth,
                      input=args.input, output=args.output, pace=not args.no_pace,
                      frames_per_packet=args.frames_per_packet, search_width=args.search_width, input_device=device(args.input_device),
                      output_device=device(args.output_device), status=not args.quiet, start=args.start,
                      output_format=args.output_format, output_rate=args.output_rate,
                      connect_timeout=patience.first, reconnect_timeout=patience.again, engine=args.engine,
                      dtx=False if args.no_dtx else None,
                      front_end=Stages(echo=not args.no_aec, noise=not args.no_ns, gain=not args.no_agc))
    try:
        model = load_model(args.model)
    except (OSError, ValueError) as error:
        raise SystemExit(f"Cannot load model {args.model!r}: {error}") from error
    problem = model_problem(model.config, args.model, args.bandwidth)  # a model without config.json
    if problem:
        raise SystemExit(problem)
    # Everything loaded so far lives for the whole call: freezing it keeps the garbage collector
    # from walking it again (a full collection of ~150 ms stalled the audio in the benchmark).
    gc.collect()
    gc.freeze()
    try:
        return asyncio.run(Client(options, model.eval()).run())
    except (AudioDeviceError, CallError, EngineUnavailable, FrontEndError) as error:
        raise SystemExit(str(error)) from error
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
