"""Wire and file format: round trips, exact sizes, and refusal of malformed input."""

import io

import numpy as np
import pytest

from call import wire as p

HEADER = p.StreamHeader(fingerprint=b"12345678", sample_rate=24000, channels=1,
                        samples_per_frame=320, codebook_nbits=10, max_codebooks=32,
                        stream_id=77, start_time_us=1_700_000_000_000_000)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16383, 16384, 2**35])
def test_varint_round_trip(value):
    data = p.write_varint(value)
    assert p.read_varint(data, 0) == (value, len(data))


@pytest.mark.parametrize("nbits", [8, 10, 13, 16])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 80])
def test_pack_round_trip(nbits, count):
    codes = np.random.default_rng(count).integers(0, 1 << nbits, count)
    data = p.pack_codes(codes, nbits)
    assert len(data) == p.packed_size(count, nbits)
    np.testing.assert_array_equal(p.unpack_codes(data, count, nbits), codes)


def test_pack_refuses_out_of_range_codes():
    with pytest.raises(ValueError):
        p.pack_codes(np.array([1024]), 10)


def test_header_round_trip_and_frame_rate():
    assert p.StreamHeader.decode(HEADER.encode()) == HEADER
    assert HEADER.frame_rate == 75


def test_header_refuses_other_versions():
    data = bytearray(HEADER.encode())
    data[1] = 99
    with pytest.raises(p.ProtocolError, match="version 99"):
        p.StreamHeader.decode(bytes(data))


@pytest.mark.parametrize("n_q", [1, 2, 4, 8, 16, 32])
def test_one_frame_packet_costs_two_bytes_of_header(n_q):
    frame = np.arange(n_q) * 31 % 1024
    data = p.AudioPacket(16384 + 5, (frame,)).encode(10)
    assert len(data) == 2 + p.packed_size(n_q, 10)
    back = p.AudioPacket.decode(data, 10, 32)
    assert back.index == 5
    np.testing.assert_array_equal(back.frames[0], frame)


@pytest.mark.parametrize("counts", [[8, 8, 8, 8], [8, 4, 4, 32, 2]])
def test_multi_frame_packet_round_trip(counts):
    rng = np.random.default_rng(0)
    frames = tuple(rng.integers(0, 1024, c) for c in counts)
    back = p.AudioPacket.decode(p.AudioPacket(3, frames).encode(10), 10, 32)
    assert [f.tolist() for f in back.frames] == [f.tolist() for f in frames]


def test_end_round_trip():
    end = p.EndOfStream(n_frames=751, n_samples=240_001)
    assert p.EndOfStream.decode(end.encode()) == end


def test_route_envelope():
    inner = p.EndOfStream(1, 2).encode()
    assert p.unroute(p.route(300, inner)) == (300, inner)
    with pytest.raises(p.ProtocolError):
        p.unroute(p.route(1, p.route(2, inner)))
    assert p.parse_presence(p.left(9)) == (9, False)
    assert p.parse_presence(p.joined(300)) == (300, True)


@pytest.mark.parametrize("reference,wire,expected", [
    (0, 5, 5), (16380, 3, 16387), (16387, 16382, 16382), (100_000, 100_000 % 16384, 100_000),
])
def test_unwrap_index(reference, wire, expected):
    assert p.unwrap_index(wire, reference) == expected


def audio(index, n_q=8):
    return p.AudioPacket(index, (np.zeros(n_q, dtype=np.int64),)).encode(10)


def test_stream_state_orders_and_unwraps():
    state = p.StreamValidator()
    with pytest.raises(p.OutOfOrderError):
        state.accept(audio(0))
    assert state.accept(HEADER.encode()) == HEADER
    indices = [0, 1, 5000, 10000, 16383, 16384, 16385]
    assert [state.accept(audio(i)).index for i in indices] == indices
    with pytest.raises(p.OutOfOrderError, match="stale"):
        state.accept(audio(16385 - p.REORDER_WINDOW - 1))
    assert state.accept(p.EndOfStream(16386, 16386 * 320).encode()) == p.EndOfStream(16386, 16386 * 320)
    with pytest.raises(p.OutOfOrderError):
        state.accept(audio(16386))


def test_stream_state_refuses_contradictory_end():
    state = p.StreamValidator()
    state.accept(HEADER.encode())
    state.accept(audio(9))
    with pytest.raises(p.ProtocolError):
        state.accept(p.EndOfStream(5, 1600).encode())


@pytest.mark.parametrize("data", [
    b"", b"\x00", b"\x05", b"\x80", b"\x80\x00", b"\x80\x00\x01\x02\x03\x04\x05\x06",
    b"\xc0\x00\x81", b"\xc0\x00\x03\x08\x08", b"\xc0\x00\x80\x00\x00",
    b"\x02\xff\xff\xff\xff\xff\xff\xff", b"\x01\x01abc",
])
def test_malformed_messages_raise_protocol_error(data):
    state = p.StreamValidator()
    state.accept(HEADER.encode())
    with pytest.raises(p.ProtocolError):
        state.accept(data)


def outcome(check, data):
    try:
        check(data)
    except p.ProtocolError as error:
        return type(error)
    return None


def test_random_bytes_never_raise_anything_but_protocol_error():
    """Also: the relay's `check` (no unpacking) refuses exactly what `accept` refuses."""
    rng = np.random.default_rng(1)
    valid = [HEADER.encode(), audio(1), p.AudioPacket(2, (np.ones(4, np.int64),) * 3).encode(10),
             p.AudioPacket(3, (np.ones(3, np.int64), np.ones(5, np.int64))).encode(10)]
    outcomes = set()
    for i in range(4000):
        if i % 2:
            data = rng.integers(0, 256, rng.integers(0, 40), dtype=np.uint8).tobytes()
        else:
            data = bytearray(valid[i % 4])
            data[rng.integers(len(data))] ^= 1 << rng.integers(8)
            data = bytes(data[: rng.integers(1, len(data) + 1)])
        receiver, relay = p.StreamValidator(), p.StreamValidator()
        receiver.accept(HEADER.encode())
        relay.check(HEADER.encode())
        result = outcome(receiver.accept, data)
        assert outcome(relay.check, data) == result, data
        assert relay.newest == receiver.newest
        outcomes.add(result)
    assert {None, p.ProtocolError} <= outcomes  # both valid and refused messages were exercised


@pytest.mark.parametrize("nbits", [8, 10, 13, 16])
def test_check_shortcut_follows_accept_through_a_stream(nbits):
    """`check`'s shortcut for one-frame audio leaves the verdicts, their messages and the stream's
    state exactly as `accept` would: in order, late, stale and wrapped indices, every size, stray
    padding bits, multi-frame packets, ENDs and new headers, in one long stream."""
    header = p.StreamHeader(fingerprint=b"12345678", sample_rate=24000, channels=1, samples_per_frame=320,
                            codebook_nbits=nbits, max_codebooks=12)
    rng = np.random.default_rng(nbits)
    relay, receiver = p.StreamValidator(), p.StreamValidator()
    outcomes, newest = set(), 0
    for i in range(6000):
        roll = rng.random()
        if roll < 0.01:
            data = header.encode() if rng.random() < 0.5 else p.EndOfStream(newest + 1, 0).encode()
        else:
            newest += int(rng.integers(-200, 3)) if roll < 0.2 else int(rng.integers(0, 3))
            newest = max(newest, 0) if rng.random() > 0.003 else newest + p.INDEX_MODULUS // 2
            wire_index = newest % p.INDEX_MODULUS
            data = bytearray([0x80 | wire_index >> 8, wire_index & 0xFF])
            data += rng.integers(0, 256, int(rng.integers(0, 26)), dtype=np.uint8).tobytes()
            if roll > 0.3:  # mostly valid: whole codes and zero padding
                data = data[:2] + p.pack_codes(rng.integers(0, 1 << nbits, int(rng.integers(1, 13))), nbits)
            if roll > 0.97:
                data[0] |= p.MULTI_FLAG
            data = bytes(data)

        def verdict(check):
            try:
                check(data)
            except p.ProtocolError as error:
                return type(error), str(error)
            return None

        result = verdict(receiver.accept)
        assert verdict(relay.check) == result, (i, data)
        assert (relay.newest, relay.ended, relay.header) == (receiver.newest, receiver.ended, receiver.header)
        outcomes.add(result[0] if result else None)
    assert {None, p.ProtocolError, p.OutOfOrderError} <= outcomes


def test_file_round_trip_and_truncation():
    messages = [HEADER.encode(), audio(0), audio(1), p.EndOfStream(2, 500).encode()]
    buffer = io.BytesIO()
    size = p.write_stream(buffer, messages)
    assert size == len(buffer.getvalue()) == 4 + sum(1 + len(m) for m in messages)
    assert list(p.read_stream(io.BytesIO(buffer.getvalue()))) == messages
    with pytest.raises(p.ProtocolError, match="truncated"):
        list(p.read_stream(io.BytesIO(buffer.getvalue()[:-1])))
    with pytest.raises(p.ProtocolError, match="magic"):
        list(p.read_stream(io.BytesIO(b"RIFF....")))


def test_wav_file_round_trip_equals_offline(tmp_path):
    import soundfile
    import torch

    from call.search_width import default_search_width
    from call.filecodec import decode_file, encode_file
    from tests.models import small_model, speech_like

    model = small_model()
    audio = speech_like(12_345, 24000, seed=5)[0]
    soundfile.write(tmp_path / "in.wav", audio.T.numpy(), 24000, subtype="FLOAT")
    size = encode_file(model, str(tmp_path / "in.wav"), str(tmp_path / "in.ecs"))
    frames = -(-12_345 // 320)
    assert size == (tmp_path / "in.ecs").stat().st_size <= 4 + 33 + frames * 13 + 6  # magic, header, 1+12 bytes a frame, end
    decoded = decode_file(model, str(tmp_path / "in.ecs"), str(tmp_path / "out.wav"))
    with torch.no_grad():
        encoded = model.encode(audio[None], bandwidth=6.0, search_width=default_search_width(6.0))
        expected = model.decode(encoded.audio_codes, encoded.audio_scales)[0][0, :, :12_345]
    assert decoded.shape == (1, 12_345)
    assert np.abs(decoded - expected.numpy()).max() < 1e-4
