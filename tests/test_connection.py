"""The client's link to the relay: bounded patience with a reason, stale audio dropped after a gap,
a sender told it is alone, and a bitrate both ends agree on. Time is the test's: each connection
attempt reads a clock the test steps, and the waits between attempts are zero."""

import asyncio
import itertools
import logging
import socket
import ssl

import pytest

from call import wire
from call.connection import FOREVER, CallError, Connection, Patience, backoff, describe_failure
from call.meter import Meter
from call.outbox import Outbox
from call.status import CallStatus
from client import Client, Options
from server import Relay
from tests.models import small_model
from tests.test_call import free_port

HEADER = bytes([wire.HEADER, 1])
END = bytes([wire.END, 0, 0])


def audio(i: int) -> bytes:
    return bytes([wire.AUDIO_FLAG, i])


class SteppingClock:
    """A clock that moves one second each time it is read."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def connection(url: str, patience: Patience, outbox: Outbox | None = None, header: bytes | None = None) -> Connection:
    return Connection(url, None, outbox or Outbox(64, lossy=True), Meter(), header, None, wait_for_listener=False,
                      patience=patience, clock=SteppingClock(), delays=lambda: itertools.repeat(0.0))


async def start_relay(port: int = 0):
    relay = Relay()
    server = await relay.start("127.0.0.1", port).__aenter__()
    return server, f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


# ------------------------------------------------------------------------------- giving up


async def test_the_first_connection_is_given_up_after_its_patience_with_the_reason(caplog):
    port = free_port()
    link = connection(f"ws://127.0.0.1:{port}/r", Patience(first=5, again=60))
    with pytest.raises(CallError) as raised:
        await asyncio.wait_for(link.run(), 30)
    assert str(raised.value) == (f"Cannot reach the relay at ws://127.0.0.1:{port}/r: connection refused by "
                                 f"127.0.0.1:{port} (is the relay running there?); gave up after 5 s "
                                 "(--connect-timeout, --retry-forever)")
    assert link.attempts == 5  # one per second of the test's clock
    said = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert said == [f"cannot reach ws://127.0.0.1:{port}/r: connection refused by 127.0.0.1:{port} "
                    "(is the relay running there?); trying for 5 s"]  # once, not once per attempt


async def test_retry_forever_keeps_trying(caplog):
    link = connection(f"ws://127.0.0.1:{free_port()}/r", FOREVER)
    running = asyncio.create_task(link.run())
    while link.attempts < 50 and not running.done():
        await asyncio.sleep(0.01)
    assert not running.done() and link.problem.startswith("connection refused")
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert len([r for r in caplog.records if "cannot reach" in r.getMessage()]) == 1


async def test_a_lost_relay_is_given_up_after_the_reconnect_patience():
    server, url = await start_relay()
    link = connection(f"{url}/r", Patience(first=None, again=3))
    running = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 10)
    attempts = link.attempts
    server.close()
    await server.wait_closed()
    with pytest.raises(CallError, match=rf"Lost the relay at {url}/r and could not reconnect within 3 s: "
                                        r"connection refused .*\(--reconnect-timeout, --retry-forever\)"):
        await asyncio.wait_for(running, 30)
    assert link.reconnects == 1 and link.attempts - attempts == 3


@pytest.mark.parametrize("dead_nodes", [1, 2], ids=["one", "listed-twice"])
async def test_an_unreachable_node_is_passed_over_for_the_next_at_once(dead_nodes):
    server, url = await start_relay()
    dead = f"ws://127.0.0.1:{free_port()}/r"
    link = Connection([dead] * dead_nodes + [url + "/r"], None, Outbox(64, lossy=True), Meter(), None, None, wait_for_listener=False,
                      patience=Patience(first=5, again=60), clock=SteppingClock(),
                      delays=lambda: itertools.repeat(3600.0))  # a wait between rounds would stall the test
    running = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 30)
        assert link.url == url + "/r" and link.attempts == dead_nodes + 1
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        server.close()


async def test_a_refusal_is_not_retried_even_when_told_to_retry_forever():
    server, url = await start_relay()
    link = connection(f"{url}/no%20such%20room", FOREVER)
    with pytest.raises(CallError, match="the server refused us: HTTP 404"):
        await asyncio.wait_for(link.run(), 30)
    assert link.attempts == 1
    server.close()


async def test_wss_to_a_plain_relay_says_so():
    server, url = await start_relay()
    link = connection(url.replace("ws://", "wss://") + "/r", Patience(first=0))
    with pytest.raises(CallError, match="during the TLS handshake: is it a wss:// server"):
        await asyncio.wait_for(link.run(), 30)
    server.close()


@pytest.mark.parametrize("error, reason, retry", [
    (socket.gaierror(-2, "Name or service not known"),
     "cannot resolve the host name 'relay.example.org' (DNS: Name or service not known)", True),
    (ConnectionRefusedError(111, "Connection refused"),
     "connection refused by relay.example.org:8765 (is the relay running there?)", True),
    (TimeoutError("timed out during opening handshake"), "no answer from relay.example.org:8765 (timed out)", True),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), "TLS: the certificate of relay.example.org", False),
    (OSError(101, "Network is unreachable"), "cannot connect to relay.example.org:8765: Network is unreachable", True),
], ids=["dns", "refused", "timeout", "tls-certificate", "network"])
def test_each_failure_is_named(error, reason, retry):
    said, retryable = describe_failure(error, "ws://relay.example.org:8765/r")
    assert said.startswith(reason) and retryable == retry


async def test_the_status_line_says_why_it_is_disconnected():
    link = connection(f"ws://127.0.0.1:{free_port()}/r", Patience(first=0))
    with pytest.raises(CallError):
        await link.run()
    line = CallStatus(link, None, None, 1 / 75, 6.0).line()
    assert line.endswith("disconnected: connection refused by 127.0.0.1:"
                         f"{link.url.rsplit(':', 1)[1].split('/')[0]} (is the relay running there?)")


# ------------------------------------------------------------------------- stale audio


def test_reconnects_are_tried_every_100_ms_for_a_second_then_back_off():
    delays = list(itertools.islice(backoff(), 40))
    assert all(0.08 <= d <= 0.12 for d in delays[:10])  # a short cut costs at most ~0.1 s more than it lasts
    assert 0.16 <= delays[10] <= 0.24 and 0.32 <= delays[11] <= 0.48  # then 0.2, 0.4, ...
    assert all(4.0 <= d <= 6.0 for d in delays[-10:])  # ... up to 5 s


def test_drop_stale_keeps_the_newest_audio_and_every_control_message():
    outbox = Outbox(capacity=64, lossy=True, keep_after_gap=8)
    outbox.queue.extend([audio(i) for i in range(60)] + [END])
    assert outbox.drop_stale() == 52 and outbox.dropped == 52
    assert list(outbox.queue) == [audio(i) for i in range(52, 60)] + [END]
    patient = Outbox(capacity=64, lossy=False, keep_after_gap=8)  # a file: nothing is stale
    patient.queue.extend([audio(i) for i in range(60)])
    assert patient.drop_stale() == 0 and len(patient.queue) == 60


async def test_a_live_sender_sends_no_stale_backlog_when_it_connects():
    from websockets.asyncio.server import serve

    heard = []
    got_end = asyncio.Event()

    async def relay(ws):
        async for message in ws:
            heard.append(message)
            if message == END:
                got_end.set()

    outbox = Outbox(capacity=64, lossy=True, keep_after_gap=8)
    for i in range(60):  # audio captured while the connection was down
        await outbox.put(audio(i))
    await outbox.put(END)
    async with serve(relay, "127.0.0.1", 0, compression=None) as server:
        link = connection(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/r", Patience(), outbox, HEADER)
        running = asyncio.create_task(link.run())
        await asyncio.wait_for(got_end.wait(), 10)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert heard == [HEADER] + [audio(i) for i in range(52, 60)] + [END]


def test_a_client_keeps_about_100_ms_after_a_gap():
    model = small_model()
    for frames, kept in ((1, 7), (2, 3), (4, 1), (16, 1)):
        live = Client(Options(server="ws://127.0.0.1:1", room="r", frames_per_packet=frames, status=False), model)
        assert live.connection.outbox.keep_after_gap == kept  # 93, 80, 53 ms, one packet
    file_sender = Client(Options(server="ws://127.0.0.1:1", room="r", input="x.wav", status=False), model)
    assert file_sender.connection.outbox.keep_after_gap is None


# ------------------------------------------------------------------------ alone in a room


async def test_a_sender_alone_says_it_waits_for_a_listener(caplog, tmp_path):
    import numpy as np
    import soundfile

    soundfile.write(tmp_path / "speech.wav", np.zeros(24000, np.float32), 24000)
    server, url = await start_relay()
    sender = Client(Options(server=url, room="r", input=str(tmp_path / "speech.wav"), status=False), small_model())
    sender.connection.alone_grace = 0.0
    sending = asyncio.create_task(sender.run())
    await asyncio.wait_for(sender.connection.connected.wait(), 10)
    while not any("waiting for a listener" in r.getMessage() for r in caplog.records):
        await asyncio.sleep(0.01)
    assert "waiting for a listener" in sender.status.line()
    sending.cancel()
    await asyncio.gather(sending, return_exceptions=True)
    server.close()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "listener" in r.getMessage()]
    assert said == ["nobody else is in the room yet: waiting for a listener (the file is sent once one joins)"]


# -------------------------------------------------------------------------------- bitrate


def test_the_rate_runs_from_the_first_message_to_the_last():
    meter = Meter()
    for t in range(100, 111):  # a receiver that waited 100 s for the stream, then 10 s of messages
        meter.add(bytes(90), now=float(t))
    assert meter.kbps() == pytest.approx(8 * 11 * 90 / 10 / 1000)
    assert Meter().kbps() == 0.0
