"""Whole calls on real loopback connections: sender client → relay → receiver client."""

import asyncio
import types

import numpy as np
import pytest
import soundfile
import torch
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from client import Client, Options
from server import Relay
from call import connection as call_connection, media as call_media, wire
from call.model_header import stream_header_for
from call.ports import free_loopback_port as free_port
from call.receiver import Receiver
from call.search_width import default_search_width
from tests.models import small_model, speech_wav

RATE = 24000
LENGTH = RATE + 123  # not a whole number of frames


@pytest.fixture(scope="module")
def model():
    return small_model()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return speech_wav(tmp_path_factory.mktemp("audio"), LENGTH, RATE, seed=3)


async def start_relay(port: int):
    relay = Relay()
    return relay, await relay.start("127.0.0.1", port).__aenter__()


async def call(model, url, speech_path, out_path, sender_url=None, **sender_options):
    """Start the receiver, then the sender (through ``sender_url``, if another relay node);
    return both clients once both are done."""
    receiver = Client(Options(server=url, room="r", output=str(out_path), status=False), model)
    receiving = asyncio.create_task(receiver.run())
    await asyncio.wait_for(receiver.connection.connected.wait(), 5)
    await asyncio.sleep(0.05)
    options = dict(pace=False, status=False, **sender_options)
    sender = Client(Options(server=sender_url or url, room="r", input=str(speech_path), **options), model)
    assert await asyncio.wait_for(sender.run(), 60) == 0
    assert await asyncio.wait_for(receiving, 60) == 0
    return sender, receiver


def offline(model, audio):
    with torch.no_grad():
        encoded = model.encode(audio[None], bandwidth=6.0, search_width=default_search_width(6.0))
        decoded = model.decode(encoded.audio_codes, encoded.audio_scales)[0]
    return encoded.audio_codes[0, 0], decoded[0, :, : audio.shape[-1]].numpy()


async def test_received_wav_equals_offline_decode(model, speech, tmp_path):
    relay, server = await start_relay(0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    sender, receiver = await call(model, url, speech[0], tmp_path / "heard.wav")
    server.close()
    heard, rate = soundfile.read(tmp_path / "heard.wav", dtype="float32", always_2d=True)
    codes, expected = offline(model, speech[1])
    assert codes.unique().numel() > 50  # a model whose codes vary: the comparison means something
    assert rate == RATE and heard.shape == (LENGTH, 1)
    assert np.abs(heard.T - expected).max() < 1e-3
    # Wire bitrate at 6 kbps, one frame per packet, counted at the application layer.
    seconds = sender.sender.next_index / 75
    kbps = 8 * sender.up.bytes / seconds / 1000
    print(f"\n{sender.status.summary()}")
    assert sender.up.messages == sender.sender.next_index + 2  # header + one packet per frame + end
    assert kbps <= 1.3 * 6.0


async def test_ten_percent_loss_and_reordering_keep_length_and_continuity(model, speech, tmp_path, monkeypatch):
    # The receiver's clock stands still: every frame is in time, however long this busy machine takes
    # between two packets, so a frame is lost only when the proxy dropped it (not when a reordered
    # packet came a few ms too late for the jitter buffer's real-time deadline).
    for module in (call_connection, call_media):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: 1000.0))
    relay, server = await start_relay(0)
    upstream = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    rng = np.random.default_rng(7)
    dropped = []

    async def lossy_proxy(ws):
        """Forwards a sender's messages, dropping 10 % of audio packets and swapping neighbours."""
        async with connect(upstream + ws.request.path, compression=None) as up:
            downstream = asyncio.create_task(forward(up, ws))
            held = None
            async for message in ws:
                if message[0] & wire.AUDIO_FLAG and rng.random() < 0.1:
                    dropped.append(message)
                    continue
                if message[0] & wire.AUDIO_FLAG and held is None and rng.random() < 0.1:
                    held = message  # sent after the next one: reordered
                    continue
                await up.send(message)
                if held is not None:
                    await up.send(held)
                    held = None
            downstream.cancel()

    async def forward(source, destination):
        async for message in source:
            await destination.send(message)

    async with serve(lossy_proxy, "127.0.0.1", 0, compression=None) as proxy:
        proxy_url = f"ws://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
        receiver = Client(Options(server=upstream, room="r", output=str(tmp_path / "heard.wav"),
                                  status=False), model)
        receiving = asyncio.create_task(receiver.run())
        await asyncio.wait_for(receiver.connection.connected.wait(), 5)
        await asyncio.sleep(0.05)
        sender = Client(Options(server=proxy_url, room="r", input=str(speech[0]), pace=False,
                                status=False), model)
        assert await asyncio.wait_for(sender.run(), 60) == 0
        assert await asyncio.wait_for(receiving, 60) == 0
    server.close()
    heard, _ = soundfile.read(tmp_path / "heard.wav", dtype="float32", always_2d=True)
    stats = next(iter(receiver.receiver.streams.values())).jitter.stats
    print(f"\nproxy dropped {len(dropped)} packets; receiver: {stats}")
    assert heard.shape == (LENGTH, 1)
    assert stats.lost == len(dropped) and 0.05 < stats.loss_rate < 0.15
    assert stats.late == 0  # every reordered packet was put back in its place
    frames = heard[: LENGTH // 320 * 320, 0].reshape(-1, 320)
    _, expected = offline(model, speech[1])
    expected_frames = expected[0, : LENGTH // 320 * 320].reshape(-1, 320)
    audible = np.abs(expected_frames).max(axis=1) > 0.01
    assert (np.abs(frames).max(axis=1)[audible] > 0).all(), "a concealed frame went silent"


async def test_server_restart_mid_call_clients_reconnect(model, speech, tmp_path):
    port = free_port()
    relay, server = await start_relay(port)
    url = f"ws://127.0.0.1:{port}"
    receiver = Client(Options(server=url, room="r", output=str(tmp_path / "heard.wav"), status=False), model)
    receiving = asyncio.create_task(receiver.run())
    await asyncio.wait_for(receiver.connection.connected.wait(), 5)
    await asyncio.sleep(0.05)
    sender = Client(Options(server=url, room="r", input=str(speech[0]), pace=True, status=False), model)
    sending = asyncio.create_task(sender.run())
    # Mid-call: the receiver has heard the first frames (the sender speaks in real time, for 1 s).
    async with asyncio.timeout(30):
        while not any(s.jitter.stats.received >= 10 for s in receiver.receiver.streams.values()):
            await asyncio.sleep(0.01)
    assert not sending.done()
    server.close()
    await server.wait_closed()
    await asyncio.sleep(0.3)
    relay, server = await start_relay(port)
    try:
        assert await asyncio.wait_for(sending, 30) == 0
        assert await asyncio.wait_for(receiving, 30) == 0
    finally:
        server.close()
    heard, _ = soundfile.read(tmp_path / "heard.wav", dtype="float32", always_2d=True)
    assert sender.connection.reconnects >= 1 and receiver.connection.reconnects >= 1
    assert heard.shape == (LENGTH, 1)
    stats = next(iter(receiver.receiver.streams.values())).jitter.stats
    print(f"\nafter a server restart: {stats}")
    assert stats.received > 0.5 * LENGTH / 320


def test_demo_speaks_and_records_exact_length(model, tmp_path, capsys):
    import demo

    model.save_pretrained(tmp_path / "model")
    demo.main(["--model", str(tmp_path / "model"), "--output", str(tmp_path / "heard.wav"), "--no-pace"])
    assert soundfile.info(tmp_path / "heard.wav").frames == 3 * RATE
    assert "kbps at the application layer" in capsys.readouterr().out


def test_receiver_refuses_a_peer_with_other_weights_and_says_so_once(model, caplog):
    other = small_model()
    with torch.no_grad():  # the same architecture, another model: its codes would decode to noise
        other.quantizer.layers[0].codebook.embed.mul_(2)
    assert other.config == model.config
    receiver = Receiver(model, executor=None)
    header = stream_header_for(other, stream_id=5).encode()
    for _ in range(3):
        receiver.handle(header, now=0.0)
    assert receiver.problems == {"other_model": 3} and not receiver.streams
    assert len([r for r in caplog.records if "uses another model" in r.getMessage()]) == 1
    receiver.handle(stream_header_for(model, stream_id=6).encode(), now=0.0)
    assert list(receiver.streams) == [(None, 6)]
