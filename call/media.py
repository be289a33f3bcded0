"""Where a call peer's audio comes from and where it goes.

Sources yield ``(channels, n)`` float32 blocks at the model's rate for the sender: a WAV file
(paced in real time or not) or the microphone. Sinks take the receiver's audio: the speaker,
one playout tick at a time, or a file, every frame in order.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import numpy as np

from .receiver import Receiver

FILE_BLOCK = 480
"""Samples per block read from a file (20 ms at 24 kHz), unrelated to the 320-sample frame
on purpose: the encoder buffers whole frames whatever the block size."""


async def file_blocks(audio: np.ndarray, rate: int, pace: bool) -> AsyncIterator[np.ndarray]:
    """Blocks of a file, in real time unless ``pace`` is off."""
    started = time.monotonic()
    for start in range(0, audio.shape[-1], FILE_BLOCK):
        if pace:
            await asyncio.sleep(max(0.0, started + start / rate - time.monotonic()))
        yield audio[:, start : start + FILE_BLOCK]


async def microphone_blocks(rate: int, channels: int, device: int | str | None,
                            frame_samples: int) -> AsyncIterator[np.ndarray]:
    """Blocks of the microphone, for as long as the call lasts."""
    from .sound_card import Microphone  # PortAudio is loaded only when a device is opened

    microphone = Microphone(rate, channels, device, frame_samples=frame_samples)
    microphone.start()
    try:
        while True:
            yield await microphone.read()
    finally:
        microphone.close()


async def play(receiver: Receiver, rate: int, channels: int, device: int | str | None,
               output_margin: float) -> None:
    """Speaker sink: after each callback, top the sound card's queue up to one callback's block
    plus ``output_margin``, one tick at a time. Every frame queued here is latency; the margin
    is the time a tick has to decode before the card would run dry."""
    from .sound_card import Speaker

    speaker = Speaker(rate, channels, device)
    speaker.start()
    try:
        while True:
            await speaker.consumed.wait()
            speaker.consumed.clear()
            while speaker.queued_seconds < speaker.block_seconds + output_margin:
                audio = await receiver.tick(time.monotonic())
                if audio is None:
                    break
                speaker.write(audio)
    finally:
        speaker.close()


async def record(receiver: Receiver, arrived: asyncio.Event, frame_period: float) -> None:
    """File sink: decode frames in order as soon as the jitter buffer releases them; returns
    once a stream has ended and is wholly decoded (``receiver.finished_output()``)."""
    while True:
        try:
            await asyncio.wait_for(arrived.wait(), frame_period)
        except asyncio.TimeoutError:
            pass
        arrived.clear()
        await receiver.drain(time.monotonic())
        if receiver.finished_output() is not None:
            return
