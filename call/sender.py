"""The sending half of a call's media path: audio blocks in, wire messages out.

The model runs on a worker thread (an executor), never on the event loop's thread: a blocked
loop would bunch sends into bursts and starve the sockets.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import Executor
from typing import Optional

import numpy as np
import torch

from streaming import StartMode, StreamingEncoder

from . import wire
from .model_header import stream_header_for
from .search_width import default_search_width
from .timing import Observer


def streaming_encoder(model: object, bandwidth: float, start: StartMode | str, search_width: int = 1) -> object:
    """The model's streaming encoder. An object other than an EnCodec model (a baseline codec in
    the benchmarks) rides the same call by offering ``streaming_encoder(bandwidth, start)``; it has
    no codebooks, so ``search_width`` does not apply to it."""
    factory = getattr(model, "streaming_encoder", None)
    if factory:
        return factory(bandwidth, start)
    return StreamingEncoder(model, bandwidth=bandwidth, start=start, search_width=search_width)


class Sender:
    """Encodes one outgoing stream: audio blocks in, ``HEADER``/audio/``END`` messages out."""

    def __init__(self, model: torch.nn.Module, executor: Executor, bandwidth: float = 6.0,
                 start: StartMode | str = StartMode.IMMEDIATE, frames_per_packet: int = 1,
                 search_width: int | None = None) -> None:
        if not 1 <= frames_per_packet <= wire.MAX_FRAMES_PER_PACKET:
            raise ValueError(f"frames per packet must be 1..{wire.MAX_FRAMES_PER_PACKET}")
        width = default_search_width(bandwidth) if search_width is None else search_width
        self.encoder = streaming_encoder(model, bandwidth, start, width)
        self.header = stream_header_for(
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
        return messages + [wire.EndOfStream(self.next_index, self.n_samples).encode()]

    def _packets(self, codes: torch.Tensor, final: bool) -> list[bytes]:
        self._frames.extend(codes[0].T.numpy())
        messages = []
        while len(self._frames) >= self.frames_per_packet or final and self._frames:
            frames = self._frames[: self.frames_per_packet]
            del self._frames[: self.frames_per_packet]
            packet = wire.AudioPacket(self.next_index, tuple(frames))
            messages.append(packet.encode(self.header.codebook_nbits))
            self._note("packet", self.next_index, len(frames))
            self.next_index += len(frames)
        return messages
