"""A receiver among hostile or buggy peers: nothing another peer sends ends the call, takes over a
stream, or grows without bound, and the honest peer's stream still decodes exactly.

Messages are handed to the receiver as the relay delivers them (``ROUTED`` by source); time is
the test's (``now``), so every test is deterministic.
"""

from __future__ import annotations

import asyncio
import io
import logging
import resource
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from call import filecodec, wire
from call.jitter import JitterBuffer
from call.model_header import stream_header_for
from call.receiver import MAX_STREAMS, MAX_STREAMS_PER_SOURCE, Receiver
from client import Client, Options
from codec import load_default_model
from server import Relay
from tests.models import small_model, speech_like
from tests.test_call import offline

RATE, HOP = 24000, 320
HONEST, HOSTILE = 1, 2
FRAME = HOP / RATE
FIXTURE = Path(__file__).parent / "fixtures" / "heldout_speech_24k.flac"


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def honest(model):
    """The honest peer's stream: its messages (unrouted) and the offline decode they must give."""
    audio = speech_like(RATE // 2 + 77, RATE, seed=4)[0]
    with torch.no_grad():
        encoded = model.encode(audio[None], bandwidth=6.0)
        expected = model.decode(encoded.audio_codes, encoded.audio_scales)[0][0, :, : audio.shape[-1]].numpy()
    codes = encoded.audio_codes[0, 0].numpy()  # (n_q, frames)
    assert len(np.unique(codes)) > 20  # codes that vary: the comparison means something
    header = stream_header_for(model, stream_id=0x1234)
    packets = [wire.AudioPacket(i, (codes[:, i],)).encode(header.codebook_nbits) for i in range(codes.shape[1])]
    end = wire.EndOfStream(codes.shape[1], audio.shape[-1]).encode()
    return header, [header.encode(), *packets, end], expected


def routed(source: int, messages: list[bytes]) -> list[bytes]:
    return [wire.route(source, m) for m in messages]


async def play_file_mode(receiver: Receiver, messages: list[bytes], start: float = 0.0) -> None:
    """Hand over messages one frame period apart, draining after each, then let time run out."""
    now = start
    for message in messages:
        receiver.handle(message, now)
        await receiver.drain(now)
        now += FRAME
    for _ in range(400):
        now += FRAME
        await receiver.drain(now)


def honest_output(receiver: Receiver, header: wire.StreamHeader) -> np.ndarray:
    """The honest stream as a file sink records it: its decoded audio, cut to the sender's length."""
    stream = next(s for s in receiver.streams.values() if s.header.stream_id == header.stream_id)
    assert stream.done and stream.end is not None
    return np.concatenate(stream.chunks, -1)[:, : stream.output_length()]


def assert_heard_exactly(receiver: Receiver, honest) -> None:
    header, _, expected = honest
    heard = honest_output(receiver, header)
    assert heard.shape == expected.shape
    assert np.abs(heard - expected).max() < 1e-4


def interleave(honest_messages: list[bytes], hostile_messages: list[bytes]) -> list[bytes]:
    """The honest stream with the hostile messages spread through it (the header comes first)."""
    out = routed(HONEST, honest_messages[:1])
    rest = routed(HONEST, honest_messages[1:])
    step = max(1, len(rest) // max(1, len(hostile_messages)))
    for i, message in enumerate(rest):
        out.append(message)
        if i % step == 0 and hostile_messages:
            out.append(hostile_messages.pop(0))
    return out + hostile_messages


# ---------------------------------------------------------------- 1. crash the call


@pytest.mark.parametrize("field, value", [("codebook_nbits", 16), ("max_codebooks", 64), ("sample_rate", 48000),
                                          ("channels", 2), ("samples_per_frame", 640)])
async def test_a_header_that_does_not_fit_our_model_is_refused(model, honest, field, value, caplog):
    """Same fingerprint, one field off: refused as another model, and its packets go nowhere."""
    forged = wire.StreamHeader(**{**honest[0].__dict__, field: value, "stream_id": 99})
    nbits = forged.codebook_nbits
    bomb = wire.AudioPacket(0, (np.full(8, (1 << nbits) - 1, dtype=np.int64),)).encode(nbits)
    receiver = Receiver(model, executor=None)
    with caplog.at_level(logging.ERROR, logger="call"):
        await play_file_mode(receiver, interleave(honest[1], routed(HOSTILE, [forged.encode(), bomb, bomb])))
    assert receiver.problems.get("other_model") == 1
    assert [r.getMessage() for r in caplog.records if "does not fit our model" in r.getMessage()] != []
    assert_heard_exactly(receiver, honest)


async def test_an_error_in_one_stream_drops_that_stream_alone(model, honest, caplog):
    """A stream whose decoder fails (a bug, a case nothing foresaw) is dropped, counted and
    logged once; the other stream goes on and the receiver never raises."""
    receiver = Receiver(model, executor=None)
    other = stream_header_for(model, stream_id=77)
    receiver.handle(wire.route(HOSTILE, other.encode()), 0.0)

    class Broken:
        def push(self, codes):
            raise RuntimeError("decoder exploded")

    receiver.current[HOSTILE].decoder = Broken()
    hostile = [wire.AudioPacket(i, (np.zeros(8, np.int64),)).encode(10) for i in range(20)]
    with caplog.at_level(logging.ERROR, logger="call"):
        await play_file_mode(receiver, interleave(honest[1], routed(HOSTILE, hostile)))
    assert receiver.problems["stream_failed"] == 1
    assert len([r for r in caplog.records if "decoder exploded" in r.getMessage()]) == 1
    assert_heard_exactly(receiver, honest)


class HandsOverWhileDecoding(Executor):
    """Runs each job at once, but first files a message, as the event loop would between awaits."""

    def __init__(self, receiver_messages: list[tuple[Receiver, bytes]]) -> None:
        self.pending = receiver_messages

    def submit(self, fn, *args, **kwargs):
        if self.pending:
            receiver, message = self.pending.pop(0)
            receiver.handle(message, 0.0)
        future: Future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


async def test_a_new_stream_arriving_while_the_receiver_decodes_does_not_break_it(model, honest):
    """A second honest peer joining mid-call: its header is filed while another stream decodes."""
    receiver = Receiver(model, executor=None)
    newcomers = [wire.route(3 + i, stream_header_for(model, stream_id=500 + i).encode()) for i in range(5)]
    receiver.executor = HandsOverWhileDecoding([(receiver, m) for m in newcomers])
    await play_file_mode(receiver, routed(HONEST, honest[1]))
    assert_heard_exactly(receiver, honest)
    assert {s.header.stream_id for s in receiver.streams.values()} >= {500, 501, 502, 503, 504}


# ------------------------------------------------------------- 2. exhaust memory


async def test_header_floods_are_bounded_per_source_and_in_all(model, honest):
    receiver = Receiver(model, executor=None)
    flood = [stream_header_for(model, stream_id=1000 + i).encode() for i in range(200)]
    for message in routed(HOSTILE, flood):  # one source, many ids: its oldest streams retire
        receiver.handle(message, 0.0)
    assert sum(1 for s in receiver.streams.values() if not s.done) == MAX_STREAMS_PER_SOURCE
    sources = [wire.route(10 + i, stream_header_for(model, stream_id=5000 + i).encode()) for i in range(200)]
    for message in sources:  # many sources: the receiver stops opening streams
        receiver.handle(message, 0.0)
    live = [s for s in receiver.streams.values() if not s.done]
    assert len(live) == MAX_STREAMS and receiver.problems["too_many_streams"] == 200 - (MAX_STREAMS - MAX_STREAMS_PER_SOURCE)
    assert len(receiver.streams) <= MAX_STREAMS + 8  # ended streams kept for statistics are bounded too
    assert all(s.decoder is None for s in receiver.streams.values() if s.done)
    # Every decoder reads the model's codebook layouts; none holds a copy of its own.
    tables = {id(s.decoder.quantizer.transposed[0]) for s in live}
    assert len(tables) == 1


async def test_the_honest_stream_survives_a_flood(model, honest):
    receiver = Receiver(model, executor=None)
    hostile = [wire.route(10 + i, stream_header_for(model, stream_id=7000 + i).encode()) for i in range(100)]
    await play_file_mode(receiver, interleave(honest[1], hostile))
    assert_heard_exactly(receiver, honest)


# ------------------------------------------------------------- 3. END and jump bombs


async def test_an_end_bomb_is_refused(model, honest):
    """An END claiming 3,000,000 frames right after one packet: refused as implausible."""
    receiver = Receiver(model, executor=None)
    header = stream_header_for(model, stream_id=66)
    bomb = [header.encode(), wire.AudioPacket(0, (np.zeros(8, np.int64),)).encode(10),
            wire.EndOfStream(3_000_000, 3_000_000 * HOP).encode()]
    await play_file_mode(receiver, interleave(honest[1], routed(HOSTILE, bomb)))
    assert receiver.problems["malformed"] == 1
    hostile = next(s for s in receiver.streams.values() if s.header.stream_id == 66)
    assert hostile.pushed_frames <= 2  # the one frame sent (and its flush), not millions
    assert_heard_exactly(receiver, honest)


async def test_an_index_jump_gives_out_a_bounded_number_of_frames(model, honest):
    """A packet 8,191 frames ahead: the stream moves there instead of concealing every frame between,
    and its jitter target stays where the steady stream put it."""
    receiver = Receiver(model, executor=None)
    header = stream_header_for(model, stream_id=67)
    steady = [wire.AudioPacket(i, (np.zeros(8, np.int64),)).encode(10) for i in range(40)]
    jump = wire.AudioPacket(39 + 8191, (np.zeros(8, np.int64),)).encode(10)
    await play_file_mode(receiver, interleave(honest[1], routed(HOSTILE, [header.encode(), *steady, jump])))
    hostile = next(s for s in receiver.streams.values() if s.header.stream_id == 67)
    assert hostile.jitter.stats.resyncs == 1
    assert hostile.pushed_frames <= 41 + hostile.jitter.max_jump
    assert hostile.jitter.target_delay < hostile.jitter.max_delay
    assert_heard_exactly(receiver, honest)


def test_the_jitter_buffer_bounds_what_one_packet_or_end_gives_out():
    jb = JitterBuffer(75)
    for i in range(10):
        jb.put(i, (np.zeros(8),), i / 75)
    jb.put(8000, (np.zeros(8),), 10 / 75)  # forged jump: resynchronised, not 7,990 lost frames
    assert len(jb.pop(1.0)) == 1 and jb.stats.resyncs == 1
    jb.end(3_000_000)  # an END far beyond what was sent, past the wire check: bounded all the same
    assert len(jb.pop(2.0)) <= jb.max_jump


def crafted_file(model, messages: list[bytes]) -> bytes:
    out = io.BytesIO()
    wire.write_stream(out, messages)
    return out.getvalue()


def test_a_corrupt_stream_file_is_refused_naming_the_offset(model, honest, tmp_path):
    good = crafted_file(model, honest[1])
    path = tmp_path / "bad.ecs"
    offset = 4 + 1 + len(honest[1][0]) + 1 + len(honest[1][1])  # magic, header, first packet
    bad = bytearray(good)
    bad[offset + 1] = 0xFF  # the second packet's first byte: a server-only message type
    path.write_bytes(bytes(bad))
    with pytest.raises(wire.ProtocolError, match=f"corrupt at byte {offset}"):
        filecodec.decode_file(model, str(path), str(tmp_path / "out.wav"))
    path.write_bytes(good[:-3])
    with pytest.raises(wire.ProtocolError, match="truncated"):
        filecodec.decode_file(model, str(path), str(tmp_path / "out.wav"))
    header, messages = honest[0], honest[1]
    bomb = [*messages[:3], wire.EndOfStream(3_000_000, 3_000_000 * HOP).encode()]
    path.write_bytes(crafted_file(model, bomb))
    with pytest.raises(wire.ProtocolError, match="implausible"):
        filecodec.decode_file(model, str(path), str(tmp_path / "out.wav"))
    other = wire.StreamHeader(**{**header.__dict__, "codebook_nbits": 16}).encode()
    path.write_bytes(crafted_file(model, [other, *messages[1:]]))
    with pytest.raises(wire.ProtocolError, match="corrupt at byte 4: .*another model"):
        filecodec.decode_file(model, str(path), str(tmp_path / "out.wav"))


# ----------------------------------------------------- 4. departed peers, 5. hijacks


async def test_a_departed_peer_is_not_decoded_once_its_buffer_is_played_out(model):
    """Speaker mode: after LEFT, the stream plays what it holds, then costs nothing per tick."""
    receiver = Receiver(model, executor=None, start="immediate")
    header = stream_header_for(model, stream_id=88)
    now = 0.0
    receiver.handle(wire.route(HOSTILE, header.encode()), now)
    for i in range(30):
        receiver.handle(wire.route(HOSTILE, wire.AudioPacket(i, (np.zeros(8, np.int64),)).encode(10)), now)
        now += FRAME
    receiver.handle(wire.left(HOSTILE), now)
    stream = receiver.current.get(HOSTILE) or next(iter(receiver.streams.values()))
    ticks_with_audio = 0
    for _ in range(300):
        now += FRAME
        ticks_with_audio += await receiver.tick(now) is not None
    assert stream.pushed_frames <= 30 and ticks_with_audio <= 30
    for _ in range(int(receiver.silence_timeout / FRAME) + 10):  # then the silence closes it
        now += FRAME
        await receiver.tick(now)
    assert stream.done and stream.decoder is None


async def test_another_peer_cannot_cut_a_stream_short_with_its_header_and_end(model, honest):
    """A peer replays the honest header and an early END: refused, the honest stream arrives whole."""
    header, messages, _ = honest
    replay = routed(HOSTILE, [messages[0], wire.EndOfStream(3, 3 * HOP).encode()])
    receiver = Receiver(model, executor=None)
    await play_file_mode(receiver, interleave(messages, replay))
    assert receiver.problems["stream_id_taken"] == 1
    assert_heard_exactly(receiver, honest)


async def test_a_reconnected_sender_takes_its_stream_over(model, honest):
    """The sender's first connection leaves mid-stream; it comes back with a new peer id and the
    same stream id, and the stream goes on where it was (one decoder: the audio is exact)."""
    header, messages, _ = honest
    half = len(messages) // 2
    sequence = [*routed(HONEST, messages[:half]), wire.left(HONEST), *routed(5, [messages[0], *messages[half:]])]
    receiver = Receiver(model, executor=None)
    await play_file_mode(receiver, sequence)
    assert sum(1 for s in receiver.streams.values() if s.header.stream_id == header.stream_id) == 1
    assert_heard_exactly(receiver, honest)


async def test_random_and_mutated_messages_never_escape_the_receiver(model, honest):
    rng = np.random.default_rng(11)
    valid = [honest[1][0], *honest[1][1:6], wire.left(7), wire.joined(7)]
    garbage = []
    for _ in range(3000):
        if rng.random() < 0.3:
            garbage.append(rng.bytes(int(rng.integers(0, 40))))
        else:
            message = bytearray(valid[rng.integers(len(valid))])
            for _ in range(int(rng.integers(1, 4))):
                message[rng.integers(len(message))] = rng.integers(256)
            garbage.append(bytes(message))
    receiver = Receiver(model, executor=None)
    hostile = [wire.route(int(rng.integers(2, 40)), g) if rng.random() < 0.8 else g for g in garbage]
    await play_file_mode(receiver, interleave(honest[1], hostile))
    assert_heard_exactly(receiver, honest)
    assert sum(1 for s in receiver.streams.values() if not s.done) <= MAX_STREAMS


# ------------------------------------------------- the same through a real relay


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


async def hostile_peer(url: str, model) -> int:
    """Everything above, sent through the relay by a peer of the room; returns how many it sent."""
    sent = 0
    async with connect(url, compression=None) as ws:
        honest_header = None
        while honest_header is None:
            message = await asyncio.wait_for(ws.recv(), 30)
            if message[0] == wire.ROUTED and wire.unroute(message)[1][0] == wire.HEADER:
                honest_header = wire.unroute(message)[1]
        mine = stream_header_for(model, stream_id=4242)
        forged = wire.StreamHeader(**{**mine.__dict__, "codebook_nbits": 16, "stream_id": 4243})
        zero = (np.zeros(8, np.int64),)
        attack = [honest_header, wire.EndOfStream(2, 2 * HOP).encode(),  # hijack: cut the honest stream
                  forged.encode(), wire.AudioPacket(0, (np.full(8, 65535, np.int64),)).encode(16),
                  *[stream_header_for(model, stream_id=9000 + i).encode() for i in range(50)],  # header flood
                  mine.encode(), wire.AudioPacket(0, zero).encode(10),
                  wire.AudioPacket(8000, zero).encode(10),  # index jump
                  wire.EndOfStream(3_000_000, 3_000_000 * HOP).encode()]  # END bomb
        rng = np.random.default_rng(5)
        attack += [rng.bytes(int(rng.integers(1, 30))) for _ in range(40)]
        try:
            for message in attack:
                await ws.send(message)
                sent += 1
                await asyncio.sleep(0.005)
        except ConnectionClosed:
            pass  # the relay closes a peer that keeps sending garbage: the attack got through before
    return sent


async def honest_call(model, speech_path: Path, out_path: Path, attacked: bool) -> tuple[Client, Relay, int]:
    """One file call through a fresh relay, with or without the hostile peer in the room; the
    receiving client, the relay and the growth of this process's memory over the call."""
    relay = Relay()
    async with relay.start("127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        receiver = Client(Options(server=url, room="r", output=str(out_path), status=False,
                                  output_format="float"), model)
        receiving = asyncio.create_task(receiver.run())
        await asyncio.wait_for(receiver.connection.connected.wait(), 10)
        before = rss_bytes()
        attacking = asyncio.create_task(hostile_peer(url + "/r", model) if attacked else asyncio.sleep(0, 0))
        sender = Client(Options(server=url, room="r", input=str(speech_path), pace=True, status=False), model)
        assert await asyncio.wait_for(sender.run(), 60) == 0
        assert await asyncio.wait_for(receiving, 60) == 0
        assert await asyncio.wait_for(attacking, 30) >= (50 if attacked else 0)
    return receiver, relay, rss_bytes() - before


async def test_an_honest_call_through_the_relay_survives_a_hostile_peer(tmp_path, relay_transport):
    """A real relay, an honest file sender and receiver (the bundled model), and a hostile peer in
    the room: the honest call arrives whole and equal to its offline decode, and the receiving
    client's memory does not grow with the attack (its 50 forged headers alone cost 439 MB
    before streams were bounded and the codebooks shared).

    The bound: a first, peaceful call warms up what a call allocates once (the model's packed
    layouts, the thread pools, torch's allocator); the attacked call that follows may grow this
    process by at most 16 MiB (measured: 6.3 MiB), less than two forged headers cost before (each
    decoder copied the codebooks' layouts: 8.4 MB with this model).
    """
    model = load_default_model().eval()
    audio, rate = soundfile.read(FIXTURE, dtype="float32", frames=int(1.5 * RATE))
    speech_path = tmp_path / "speech.wav"
    soundfile.write(speech_path, audio, rate, subtype="FLOAT")
    await honest_call(model, speech_path, tmp_path / "warm.wav", attacked=False)
    receiver, relay, growth = await honest_call(model, speech_path, tmp_path / "heard.wav", attacked=True)
    heard, _ = soundfile.read(tmp_path / "heard.wav", dtype="float32", always_2d=True)
    _, expected = offline(model, torch.from_numpy(audio)[None])
    problems = receiver.receiver.problems
    print(f"\nreceiver RSS growth over the attacked call {growth / 2**20:.1f} MiB; dropped: {problems}; "
          f"relay: {dict(relay.counters)}")
    assert heard.shape == (len(audio), 1) and np.abs(heard.T - expected).max() < 1e-3
    assert problems["stream_id_taken"] >= 1 and problems["other_model"] >= 1
    assert growth < 16 * 2**20
