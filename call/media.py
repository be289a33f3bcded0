"""Where a call peer's audio comes from and where it goes.

Sources yield ``(channels, n)`` float32 blocks at the model's rate for the sender: a WAV file
(paced in real time or not) or the microphone. Sinks take the receiver's audio: the speaker,
one playout tick at a time, or a file, every frame in order as soon as it is decoded.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import numpy as np

from .alarm import Alarm
from .front_end import FrontEnd
from .playout import Lead, tick_deadline, until_done, until_due
from .receiver import Receiver
from .recording import Recording
from .time_scale import SubFrameSteps, sample_slack

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
                            frame_samples: int, front_end: FrontEnd | None = None) -> AsyncIterator[np.ndarray]:
    """Blocks of the microphone, for as long as the call lasts; cleaned by ``front_end`` when
    given, which then sets the capture block (its 10 ms chunk: no block waits in it)."""
    from .sound_card import Microphone  # PortAudio is loaded only when a device is opened

    block = front_end.chunk if front_end is not None else frame_samples
    microphone = Microphone(rate, channels, device, frame_samples=block)
    microphone.start()
    try:
        while True:
            captured = await microphone.read()
            cleaned = front_end.process(captured) if front_end is not None else captured
            if cleaned.shape[-1]:
                yield cleaned
    finally:
        microphone.close()


async def play(receiver: Receiver, rate: int, channels: int, device: int | str | None,
               arrived: asyncio.Event, front_end: FrontEnd | None = None) -> None:
    """Speaker sink, pulled by the sound card: after each callback, tick only when the card would
    run short before the next one, and let the tick wait for the frames due (``arrived`` wakes it)
    while they could still be decoded in time, and for its decode until the last moment the card can
    be given something else (``call.playout``), and play its frame a few ms shorter or longer when the
    frames come earlier or later than needed (``call.time_scale``); a frame still missing or decoding
    then gets until the next callback, the card fed a few pitch periods meanwhile. Every sample queued
    here is latency. ``front_end`` hears what is played: its echo canceller's reference."""
    from .sound_card import Speaker

    speaker = Speaker(rate, channels, device, clock=time.monotonic)
    alarm = Alarm(asyncio.get_running_loop(), time.monotonic)
    lead = Lead(margin=Lead.least if alarm.precise else Lead.margin)  # (until wake-ups are measured: the timer's own)
    steps = SubFrameSteps(rate)
    block = round(speaker.block_seconds * rate)

    def write(audio: np.ndarray) -> None:
        speaker.write(audio)
        if front_end is not None:
            front_end.played(audio)

    def expanded() -> bool:
        """Fill the card's next block with pitch periods of what it played last, if within the bound."""
        audio = steps.expand(block - speaker.block_offset)
        if audio is not None:
            write(audio)
        return audio is not None

    async def decoded_or_expanded(tick: asyncio.Future, deadline: float) -> tuple[np.ndarray | None, float]:
        """The tick's audio, with pitch periods in front of it for every deadline its decode runs past;
        and the deadline of the callback it then plays at."""
        while (late := await until_done(tick, deadline, time.monotonic, alarm)) is not None:
            lead.woke(late)
            if not expanded():  # (bound reached: the card plays silence until the frame is there)
                break
            deadline = speaker.runs_short_at() - lead.seconds
        return await tick, deadline

    speaker.start()
    try:
        while True:
            await speaker.consumed.wait()
            speaker.consumed.clear()
            while (deadline := tick_deadline(speaker.runs_short_at(), speaker.next_callback, lead)) is not None:
                # A frame not there yet is waited for as long as it could still be decoded in time: landing
                # later, it would need pitch periods in front of it all the same, and gets the next round.
                late = await until_due(receiver, arrived, deadline - lead.decoding, time.monotonic, alarm)
                if late is not None:  # (a deadline already past says nothing of the loop's wake-ups)
                    lead.woke(late)
                started = time.monotonic()
                if receiver.missing(started) and expanded():  # the frame gets until the next callback's deadline
                    continue
                tick = receiver.tick(started, deadline - lead.decoding)  # (due: the level's count)
                # With time to spare (and until ticks are timed) the decode is awaited in place: a task and a
                # wait for it would cost loop iterations for nothing, and move the echo reference's write
                # behind the microphone's next chunk (the front end's double-talk numbers were tuned with it before).
                if not lead.timed or deadline - started > 2 * lead.decoding:
                    audio = await tick
                else:
                    audio, deadline = await decoded_or_expanded(asyncio.ensure_future(tick), deadline)
                if audio is None:
                    break
                finished = time.monotonic()
                took = finished - started
                if receiver.decoded:  # comfort noise alone costs next to nothing: a pause must not shrink the lead
                    lead.note(took)
                spare = finished + lead.decoding <= deadline  # time for another tick if this one is cut short
                ready = None if receiver.arrival is None else receiver.arrival + took  # (decoded as it landed)
                write(steps.scale(audio, None if ready is None else sample_slack(
                    deadline, ready, speaker.block_offset, block, rate), receiver.moved,
                    0 if spare else block - speaker.block_offset))
    finally:
        alarm.close()
        speaker.close()


async def record(receiver: Receiver, arrived: asyncio.Event, frame_period: float, recording: Recording) -> bool:
    """File sink: decode frames in order as soon as the jitter buffer releases them and write
    them to ``recording`` at once, from the first stream heard (the others are decoded and
    dropped). Returns once that stream has ended and is wholly on disk: ``True`` when its ``END``
    came (the file has the sender's exact input length), ``False`` when it ended without one
    (its sender left and fell silent; the file holds what was heard)."""
    stream = None
    while True:
        # Woken by a message or once a frame period. Not ``asyncio.wait_for``: before Python 3.12 it
        # returns instead of raising when cancelled just as the event is set, so a Ctrl-C that came
        # with a frame was swallowed and the recording went on (the call's end awaits this task).
        wake = asyncio.get_running_loop().call_later(frame_period, arrived.set)
        try:
            await arrived.wait()
        finally:
            wake.cancel()
        arrived.clear()
        await receiver.drain(time.monotonic())
        if stream is None:
            stream = next((s for s in receiver.streams.values() if s.chunks or s.done and s.end is not None), None)
        for other in receiver.streams.values():
            if other is not stream:
                other.chunks.clear()  # only one stream is recorded: the others' audio is not kept
        if stream is None:
            continue
        recording.length = stream.output_length()
        for chunk in stream.chunks:  # taken from the stream: the recording keeps nothing in memory
            recording.write(chunk)
        stream.chunks.clear()
        if stream.done:
            recording.finish(stream.output_length())
            return stream.end is not None
