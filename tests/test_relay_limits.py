"""The relay's limits on real loopback connections: connections, rooms and peers per room, message
size, failed-token throttling, per-room tokens, tokens kept out of URLs and logs, and a full send
queue that drops audio, never a control message.

Every wait is on a condition with a generous timeout (a busy 2-core machine); the auth throttle
runs on an injected clock, so its expiry needs no sleeping.
"""

import asyncio
import contextlib
import logging
import socket

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from call import wire as p
from server import Limits, Relay, build_parser, client_key, relay_from_args
from tests.test_server import HEADER, audio, receive, start

pytestmark = pytest.mark.usefixtures("relay_transport")

PATIENCE = 30.0
"""Seconds any awaited condition may take before the test fails."""


async def until(condition, timeout=PATIENCE):
    """Return once ``condition()`` holds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(relay):
    """The relay serving on loopback, its URL in ``relay.url``."""
    server, relay.url = await start(relay)
    try:
        yield relay
    finally:
        server.close()
        await server.wait_closed()


async def refused(url, **kwargs):
    """The HTTP response that refused the handshake."""
    with pytest.raises(InvalidStatus) as error:
        async with connect(url, **kwargs):
            pass
    return error.value.response


async def close_frame(ws):
    """Read (and drop) whatever arrives until the connection closes; the close frame received."""
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(ws.recv(), PATIENCE)
    return closed.value.rcvd


def bearer(token):
    return {"additional_headers": {"Authorization": f"Bearer {token}"}}


def body(response):
    return response.body.decode()


# ---------------------------------------------------------------- capacity


async def test_connection_limit_refuses_the_next_one_until_one_leaves():
    async with running(Relay(limits=Limits(max_connections=2))) as relay:
        first, second = await connect(relay.url + "/a"), await connect(relay.url + "/b")
        await until(lambda: relay.connections == 2)
        for room in ("c", "a"):  # a new room or one that has space: the relay is full either way
            response = await refused(relay.url + "/" + room)
            assert response.status_code == 503 and "Relay full: 2 connections" in body(response)
        await second.close()
        await until(lambda: relay.connections == 1)
        async with connect(relay.url + "/c"):
            await until(lambda: relay.connections == 2)
        await first.close()
        assert relay.counters["refused_full"] == 2


async def test_handshakes_racing_for_the_last_places_are_held_to_the_limit(relay_transport):
    """Handshakes in flight together may all pass the check at the upgrade: the late ones are
    closed with 1013 (try again later) and the reason, never let in beyond the limit.

    websockets checks a request in a coroutine of its own, so six can pass the check before any is
    let in: the test holds them there. picows checks and lets in within one call, so no two can
    race: there the check is made to pass all six, which leaves the relay's last line of defence."""
    relay = Relay(limits=Limits(max_connections=2))
    checked, gate, check = [], asyncio.Event(), relay.check_request

    async def check_then_wait(ws, request):  # all six pass the check before any is let in
        response = check(ws, request)
        checked.append(response)
        await gate.wait()
        return response

    def check_passing_all(ws, request):
        checked.append(None)

    relay.check_request = check_then_wait if relay_transport == "websockets" else check_passing_all
    async with running(relay):
        attempts = asyncio.gather(*(connect(relay.url + "/a") for _ in range(6)))
        await until(lambda: len(checked) == 6)
        assert checked == [None] * 6
        gate.set()
        opened = await attempts
        await until(lambda: relay.connections + relay.counters["refused_full"] == 6)
        assert relay.connections == 2
        inside = {peer.link.remote_address[1] for peer in relay.rooms["a"].values()}
        late = [ws for ws in opened if ws.local_address[1] not in inside]
        assert len(late) == 4
        for ws in late:
            frame = await close_frame(ws)
            assert frame.code == 1013 and "Relay full: 2 connections" in frame.reason
        await asyncio.gather(*(ws.close() for ws in opened))


async def test_room_limit_refuses_a_new_room_until_one_empties():
    async with running(Relay(limits=Limits(max_rooms=2))) as relay:
        in_a, in_b = await connect(relay.url + "/a"), await connect(relay.url + "/b")
        await until(lambda: len(relay.rooms) == 2)
        response = await refused(relay.url + "/c")
        assert response.status_code == 503 and "Relay full: 2 rooms" in body(response)
        async with connect(relay.url + "/a"):  # a room that exists takes more peers
            await until(lambda: relay.connections == 3)
        await in_b.close()
        await until(lambda: "b" not in relay.rooms)
        async with connect(relay.url + "/c"):
            await until(lambda: "c" in relay.rooms)
        await in_a.close()


async def test_peers_per_room_limit_refuses_the_next_peer_until_one_leaves():
    async with running(Relay(limits=Limits(max_peers_per_room=2))) as relay:
        first, second = await connect(relay.url + "/a"), await connect(relay.url + "/a")
        await until(lambda: len(relay.rooms.get("a", ())) == 2)
        response = await refused(relay.url + "/a")
        assert response.status_code == 503 and "Room full: 2 peers" in body(response)
        async with connect(relay.url + "/b"):  # other rooms are not affected
            await until(lambda: "b" in relay.rooms)
        await first.close()
        await until(lambda: len(relay.rooms["a"]) == 1)
        async with connect(relay.url + "/a"):
            await until(lambda: len(relay.rooms["a"]) == 2)
        await second.close()


# -------------------------------------------------------------- message size


async def test_message_size_limits_match_the_largest_packet():
    """Up to ``max_message`` a packet is forwarded, a little over it is counted and dropped, and
    beyond ``hard_max_message`` (the websocket layer's max_size) the connection is closed with
    1009 before the message is buffered: at most 64 KiB of incoming messages per peer."""
    relay = Relay()
    limits = relay.limits
    assert limits.max_message <= limits.hard_max_message
    assert limits.receive_queue * limits.hard_max_message <= 1 << 16
    largest = p.AudioPacket(0, (np.arange(32, dtype=np.int64),) * 37).encode(10)  # 37 frames at 24 kbps
    assert len(largest) <= limits.max_message
    async with running(relay), connect(relay.url + "/a") as alice, connect(relay.url + "/a") as bob:
        await until(lambda: relay.connections == 2)
        await alice.send(HEADER.encode())
        await alice.send(largest)
        await alice.send(b"\x80\x40" + bytes(limits.max_message - 1))  # one byte too many: dropped
        await alice.send(audio(100))
        received = await receive(bob, 3, timeout=PATIENCE)
        assert received[1:] == [largest, audio(100)] and relay.counters["oversized"] == 1
        await alice.send(b"\x80\x41" + bytes(limits.hard_max_message - 1))
        assert (await close_frame(alice)).code == 1009
        await until(lambda: relay.connections == 1)


# ------------------------------------------------------------------- tokens


async def test_failed_tokens_throttle_that_address_alone_and_the_block_expires():
    now = [1000.0]
    limits = Limits(auth_failures=3, auth_window=60, auth_block=120, auth_table=4)
    relay = Relay(token="good", limits=limits, clock=lambda: now[0])
    other = {"local_addr": ("127.0.0.2", 0)}  # loopback is all of 127/8: a second address
    async with running(relay):
        url = relay.url + "/a"
        for _ in range(3):
            assert (await refused(url, **bearer("bad"))).status_code == 401
        blocked = await refused(url, **bearer("bad"))
        assert blocked.status_code == 429 and "Too many failed token attempts" in body(blocked)
        assert blocked.headers["Retry-After"] == "120"
        assert (await refused(url, **bearer("good"))).status_code == 429  # no more guessing, even right
        async with connect(url, **bearer("good"), **other):  # another address is not affected
            pass
        assert (await refused(url, **bearer("bad"), **other)).status_code == 401
        now[0] += 119
        assert (await refused(url, **bearer("good"))).headers["Retry-After"] == "1"
        now[0] += 1.5
        async with connect(url, **bearer("good")):
            pass
        for _ in range(4):  # failures further apart than the window never add up
            assert (await refused(url, **bearer("bad"))).status_code == 401
            now[0] += 61
        for last in range(3, 13):  # many addresses: the table keeps the most recent few
            assert (await refused(url, local_addr=(f"127.0.0.{last}", 0))).status_code == 401
        assert len(relay.throttle.table) == limits.auth_table
        assert relay.counters["refused_throttled"] == 3
    # IPv6 is counted per /64, what one subscriber holds
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") != client_key("2001:db8:0:1::1")
    assert client_key("127.0.0.1") != client_key("127.0.0.2")


async def test_room_tokens_open_their_room_only_and_the_global_token_every_room():
    relay = Relay(token="everyone", room_tokens={"a": "alpha", "b": "beta"})
    async with running(relay):
        for room, token in [("a", "alpha"), ("b", "beta"), ("a", "everyone"), ("b", "everyone"), ("c", "everyone")]:
            async with connect(f"{relay.url}/{room}", **bearer(token)):
                pass
        for room, token in [("b", "alpha"), ("a", "beta"), ("c", "alpha"), ("c", "")]:
            assert (await refused(f"{relay.url}/{room}", **bearer(token))).status_code == 401
    relay = Relay(room_tokens={"a": "alpha"})  # without --token, a room without its own is open
    async with running(relay):
        async with connect(relay.url + "/c"), connect(relay.url + "/a", **bearer("alpha")):
            pass
        assert (await refused(relay.url + "/a")).status_code == 401


def test_command_line_sets_tokens_and_limits(tmp_path, capsys):
    tokens = tmp_path / "room-tokens"
    tokens.write_text("# room=secret\n\nb=beta\n  c=gamma=with-equals  \n")
    relay = relay_from_args(build_parser().parse_args(
        ["--token", "everyone", "--room-token", "a=alpha", "--room-token-file", str(tokens),
         "--max-connections", "7", "--max-rooms", "3", "--max-peers-per-room", "50", "--auth-failures", "4",
         "--auth-window", "30", "--auth-block", "90"]))
    assert relay.token == "everyone" and relay.room_tokens == {"a": "alpha", "b": "beta", "c": "gamma=with-equals"}
    limits = relay.limits
    assert (limits.max_connections, limits.max_rooms, limits.max_peers_per_room) == (7, 3, 50)
    assert (limits.auth_failures, limits.auth_window, limits.auth_block) == (4, 30, 90)
    assert limits.queue_control >= 2 * limits.max_peers_per_room  # a joiner's notices always fit
    defaults = relay_from_args(build_parser().parse_args([])).limits
    assert defaults == Limits() and defaults.queue_control >= 2 * defaults.max_peers_per_room
    for bad in (["--room-token", "../x=topsecret"], ["--room-token", "topsecret"], ["--room-token", "a="],
                ["--token", ""], ["--max-rooms", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(bad)
        assert "topsecret" not in capsys.readouterr().err
    tokens.write_text("a=alpha\nno-equals-topsecret\n")
    with pytest.raises(SystemExit) as error:
        relay_from_args(build_parser().parse_args(["--room-token-file", str(tokens)]))
    assert ":2:" in str(error.value) and "topsecret" not in str(error.value)
    with pytest.raises(SystemExit, match="room-token-file"):
        relay_from_args(build_parser().parse_args(["--room-token-file", str(tmp_path / "missing")]))
    with pytest.raises(ValueError):
        Relay(room_tokens={"a": ""})


async def test_tokens_in_the_url_are_refused_and_no_log_line_holds_a_token(caplog, relay_transport):
    caplog.set_level(logging.DEBUG, logger="relay")  # the websockets layer logs requests and headers at DEBUG
    caplog.set_level(logging.DEBUG, logger="websockets.server")
    secret = "s3cret-4f9a"
    relay = Relay(token=secret)
    async with running(relay):
        url = relay.url + "/a"
        for kwargs in ({}, bearer(secret)):  # refused even with the header: the URL's copy is in a log
            response = await refused(f"{url}?token={secret}", **kwargs)
            assert response.status_code == 401 and "Authorization: Bearer" in body(response)
        async with connect(url, **bearer(secret)):
            pass
        assert (await refused(url + "?room=qz7k", **bearer("wrong-" + secret))).status_code == 401
    assert relay.counters["refused_query_token"] == 2
    logged = caplog.text
    assert "refused_auth" in logged  # the relay did log, and so did websockets (picows never logs requests)
    assert "GET /a" in logged or relay_transport == "picows"
    for leak in (secret, "token=", "qz7k"):
        assert leak not in logged


# --------------------------------------------------------------- send queue


async def stalled_peer(relay, room):
    """A peer of ``room`` that reads nothing (a small receive buffer, a client that stops reading
    after one message), with its relay-side ``Peer``."""
    sock = socket.create_connection(("127.0.0.1", int(relay.url.rsplit(":", 1)[1])))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = await connect(f"{relay.url}/{room}", sock=sock, max_queue=1)
    port = sock.getsockname()[1]
    await until(lambda: any(peer.link.remote_address[1] == port for peer in relay.rooms.get(room, {}).values()))
    return ws, next(peer for peer in relay.rooms[room].values() if peer.link.remote_address[1] == port)


async def fill_with_audio(relay, sender, peer):
    """Send audio until ``peer``'s send queue is full of it (its socket is stalled); the number of
    messages sent."""
    await sender.send(HEADER.encode())
    big = (np.arange(32, dtype=np.int64),) * 30  # 1204 bytes: the socket buffers fill fast
    for n in range(1, 3000):
        await sender.send(p.AudioPacket(30 * n, big).encode(10))
        await asyncio.sleep(0)
        if len(peer.queue) >= relay.limits.queue_packets:
            return 1 + n
    raise AssertionError("the stalled peer's queue never filled")


def header(stream_id):
    return p.StreamHeader(fingerprint=b"fprint01", sample_rate=24000, channels=1, samples_per_frame=320,
                          codebook_nbits=10, max_codebooks=32, stream_id=stream_id).encode()


async def test_full_queue_drops_audio_and_delivers_every_control_message():
    relay = Relay()
    async with running(relay):
        stalled, peer = await stalled_peer(relay, "room")
        async with connect(relay.url + "/room") as sender:
            filled = await fill_with_audio(relay, sender, peer)
            headers = [header(100 + k) for k in range(relay.limits.queue_packets + 4)]
            end = p.EndOfStream(5, 5 * 320).encode()
            for message in [*headers, *(audio(i) for i in range(5)), end]:
                await sender.send(message)
            await until(lambda: relay.counters["forwarded"] == filled + len(headers) + 6)
            # Every audio packet gave way to the control messages; the audio that came after
            # them was dropped, as the queue held nothing else to drop.
            assert [message for _, message, _ in peer.queue] == [*headers, end]
            assert peer.dropped >= relay.limits.queue_packets + 5
            received = []
            while not received or received[-1] != end:  # the stalled peer reads at last
                message = await asyncio.wait_for(stalled.recv(), PATIENCE)
                received.append(p.unroute(message)[1] if message[0] == p.ROUTED else message)
            assert [m for m in received if m[0] == p.HEADER] == [HEADER.encode(), *headers]
            assert received[-len(headers) - 1:] == [*headers, end]
        await stalled.close()


async def test_a_queue_full_of_control_messages_closes_the_slow_peer():
    relay = Relay(limits=Limits(queue_packets=4, queue_control=8))
    async with running(relay):
        stalled, peer = await stalled_peer(relay, "room")
        async with connect(relay.url + "/room") as sender:
            await fill_with_audio(relay, sender, peer)
            for k in range(12):
                await sender.send(header(200 + k))
            await until(lambda: peer.closing)
            assert len(peer.queue) == 0  # nothing more is kept for it
            frame = await close_frame(stalled)  # what was written before still arrives, then the reason
            assert frame.code == 1008 and "too slow" in frame.reason
            await until(lambda: relay.connections == 1)
            async with connect(relay.url + "/room") as newcomer:  # the room goes on
                assert p.unroute((await receive(newcomer, 1, timeout=PATIENCE))[0])[1] == header(211)
