# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The relay's per-packet path in C, for ``server.py --transport picows`` (``call/relay_picows.py``).

Nearly every message of a call is one frame of audio, in order, forwarded unchanged to the one or
few other peers of its room. Done in Python (``PeerListener.on_ws_frame`` → ``Relay.receive`` →
``StreamValidator.check`` → ``Peer.enqueue`` → ``PicowsLink.write``) it cost about a third of the
relay's CPU a packet, the rest being the two system calls and the libraries' C. Here picows hands
the frame to C (``FastFrames`` overrides its listener's ``cpdef on_ws_frame``) and the packet is
checked in place, counted and written to each receiver's socket (picows' ``WSTransport``, framed
in a buffer of our own) without running a line of Python or making a ``bytes`` object. What remains of
Python is reading and writing the attributes below (≈ 1 µs a packet: ``benchmarks/results/relay_compiled.md``).

It is the same relay, not a second one: it reads and writes the Python objects' own state (the
sender's ``StreamValidator``, ``TokenBucket``, the relay's counters, each receiver's queue and last
source), and it only takes a packet when it can decide every step exactly as the Python path
would. Anything else (a control message, a packet to refuse, a sender over its rate, a receiver
with a backlog or a queue, a change of source that needs a ``ROUTED`` envelope) goes to the Python
path (``python_path``) untouched, before any state changed, or, for one receiver, to its
``Peer.enqueue``. ``tests/test_relay_fast.py`` holds both paths to the same verdicts and the same
bytes on every receiver's wire over thousands of mixed messages.
"""

from libc.stdint cimport uint8_t
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from picows.picows cimport WSFrame, WSListener, WSMsgType, WSTransport

from call import wire
from call.relay_link import binary_frame

cdef long INDEX_MODULUS = wire.INDEX_MODULUS
cdef long REORDER_WINDOW = wire.REORDER_WINDOW
cdef uint8_t AUDIO_FLAG = wire.AUDIO_FLAG
cdef uint8_t KIND_MASK = wire.AUDIO_FLAG | wire.MULTI_FLAG
cdef enum:
    HEADROOM = 16  # bytes before the payload in ``FastFrames.out``, where picows writes the frame's header
    LARGEST = 512  # bytes: the largest one-frame packet the format allows (2 + 255 codebooks × 16 bits / 8)


cdef inline double monotonic() noexcept:
    """``time.monotonic()`` (CLOCK_MONOTONIC too), without a Python call: the senders' token buckets use it."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return <double>now.tv_sec + <double>now.tv_nsec * 1e-9


cdef class Receiver:
    """What the compiled path needs of one receiver, fetched once per change of its room (``Peer.others``)."""

    cdef object peer, queue, backlog
    cdef WSTransport ws

    def __cinit__(self, peer):
        self.peer, self.queue = peer, peer.queue
        self.ws = <WSTransport?>peer.link.ws
        self.backlog = peer.link.backlog


cdef class FastFrames(WSListener):
    """The compiled ``on_ws_frame`` of ``relay_picows.PeerListener`` (the class that mixes this in
    sets ``python_path`` to its own Python ``on_ws_frame``, which takes whatever this one does not).

    What never changes in a peer's life (its stream's and token bucket's objects, its id, the relay's
    counters and limits) is fetched at its first packet, the receivers at each change of its room:
    a Python attribute read from C costs as much as the bytecode it replaces."""

    cdef public object relay
    """``server.Relay`` (its ``limits``, ``counters``, ``cluster``)."""
    cdef public object peer
    """``server.Peer`` of this connection, ``None`` until admitted (and when refused)."""
    cdef object stream, bucket, counters, source, others
    cdef tuple receivers
    cdef double rate, capacity
    cdef Py_ssize_t max_message
    cdef unsigned char out[HEADROOM + LARGEST]

    cpdef on_ws_frame(self, WSTransport transport, WSFrame frame):
        if (frame.msg_type == WSMsgType.BINARY and frame.fin and frame.payload_size <= LARGEST
                and self.peer is not None and self.forward(<uint8_t*>frame.payload_ptr, frame.payload_size)):
            return
        self.python_path(transport, frame)

    cdef bind(self):
        peer, relay = self.peer, self.relay
        self.stream, self.bucket, self.counters, self.source = peer.stream, peer.rate, relay.counters, peer.id
        self.rate, self.capacity, self.max_message = self.bucket.rate, self.bucket.capacity, relay.limits.max_message

    cdef bint forward(self, uint8_t* data, Py_ssize_t size) except -1:
        """Check, count and forward a one-frame audio packet as ``Relay.receive`` would; ``False``
        (nothing done) for anything ``Relay.receive`` must decide itself."""
        if self.stream is None:
            self.bind()
        peer = self.peer
        if size < 3 or size > self.max_message or peer.closing:
            return False
        # StreamValidator.check's shortcut, on the frame in picows' buffer.
        stream = self.stream
        padding = (<dict>stream.single_frame_padding).get(size)
        if padding is None or data[0] & KIND_MASK != AUDIO_FLAG or data[size - 1] & <long>padding or stream.ended:
            return False
        cdef long wire_index = (data[0] & 0x3F) << 8 | data[1]
        cdef long newest = stream.newest
        cdef long placed = wire_index
        cdef long delta
        if newest >= 0:
            delta = (wire_index - newest) & (INDEX_MODULUS - 1)
            if delta < INDEX_MODULUS // 2:
                placed = newest + delta
            elif delta - INDEX_MODULUS >= -REORDER_WINDOW and newest + delta - INDEX_MODULUS >= 0:
                placed = newest  # late, within the reorder window: the newest frame stays
            else:
                return False  # stale: Python counts it
        # TokenBucket.take, only when it lets the packet through at once.
        bucket = self.bucket
        cdef double now = monotonic()
        cdef double tokens = bucket.tokens + (now - <double>bucket.stamp) * self.rate
        if tokens > self.capacity:
            tokens = self.capacity
        if tokens < 1.0:
            return False  # over its rate: Python counts it and pauses the reading
        bucket.tokens, bucket.stamp = tokens - 1.0, now
        if placed != newest:
            stream.newest = placed
        counters = self.counters
        counters["forwarded"] += 1
        counters["bytes_in"] += size
        memcpy(&self.out[HEADROOM], data, size)
        source = self.source
        message = None
        others = peer.others
        if others is not self.others:
            self.others, self.receivers = others, tuple([Receiver(other) for other in <tuple>others])
        cdef Receiver receiver
        for receiver in self.receivers:
            other = receiver.peer
            if not other.closing and not receiver.queue and other.last_source == source and receiver.backlog() == 0:
                # Peer.enqueue's direct write, the frame's header put before the payload by picows
                receiver.ws.send_reuse_external_buffer(WSMsgType.BINARY, <char*>&self.out[HEADROOM], size)
                continue
            if message is None:
                message = bytes(data[:size])
                frame = binary_frame(message)
            other.enqueue(source, message, frame)
        receivers = len(self.receivers)
        counters["messages_out"] += receivers
        counters["bytes_out"] += receivers * size
        cluster = self.relay.cluster
        if cluster is not None:
            cluster.forward(peer.room, source, bytes(data[:size]) if message is None else message)
        return True
