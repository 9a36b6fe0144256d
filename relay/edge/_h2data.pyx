# cython: language_level=3, auto_pickle=False, autotestdict=False
"""HTTP/2 DATA frames towards a client, written in C beside `h2`'s own bookkeeping.

`h2`'s `send_data` spends a state machine step on the connection and the stream, a
hyperframe object with its flags and padding, a serialization and a join on every frame:
about two thirds of the relay's time with 1000 streams on HTTP/2 clients. An
`H2DataOut` writes the frame itself when nothing can differ from what `h2` would do:

- no earlier piece of the stream waits for its window (`pending` is empty);
- the connection is open, and the stream is open or half-closed (remote), the states
  in which `h2`'s state machines take SEND_DATA without changing anything;
- the flow-control windows allow it.

Then it appends the frames, split by the peer's maximum frame size exactly as
`relay.edge.h2_endpoint.send_queued` splits them, to the bytes `h2` holds for the
socket, and lowers the stream's and the connection's windows as `h2` would. Whatever
the windows cannot take, and everything in any other state, goes to `queue` (the
stream's Python path, through `h2` itself), so errors and waits stay `h2`'s.

The `h2` internals read here (`H2Connection._data_to_send`, the windows, the state
machines' `state`) are pinned in pyproject.toml and checked by
tests/test_library_internals.py; tests/test_h2_data.py compares the bytes with
`h2`'s own.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy

from relay.upstream._bodypump cimport PieceSink

from h2.connection import ConnectionState
from h2.stream import StreamState

cdef object SERVER_OPEN = ConnectionState.SERVER_OPEN
cdef object OPEN = StreamState.OPEN
cdef object HALF_CLOSED_REMOTE = StreamState.HALF_CLOSED_REMOTE

cdef enum:
    FRAME_HEAD = 9  # length (3), type (1), flags (1), stream id (4)


cdef class H2DataOut(PieceSink):
    """One server stream's DATA: `write_c` from the body pump, or a call with bytes."""

    cdef object _conn
    cdef object _conn_states
    cdef object _stream
    cdef object _stream_states
    cdef object _pending
    cdef object _queue
    cdef object _flushed
    cdef unsigned int _id

    def __init__(self, conn, unsigned int stream_id, pending, queue, flushed):
        """`conn` is the `h2` connection and `stream_id` an open stream of it; `pending`
        the stream's queue of DATA waiting for its window (only read here); `queue(data)`
        the stream's way through `h2`; `flushed(n)` is told of `n` bytes of DATA handed
        to the connection (`H2Endpoint.schedule_flush`)."""
        self._conn = conn
        self._conn_states = conn.state_machine
        self._stream = conn.streams[stream_id]
        self._stream_states = self._stream.state_machine
        self._pending = pending
        self._queue = queue
        self._flushed = flushed
        self._id = stream_id

    def __call__(self, bytes data not None):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        cdef Py_ssize_t sent = self._send(<const unsigned char*>PyBytes_AS_STRING(data), n)
        if n == 0 or sent < n:  # an empty piece too, as h2 frames (or holds) it
            self._queue(data if sent == 0 else data[sent:])

    cdef int write_c(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef Py_ssize_t sent = self._send(p, n)
        if n == 0 or sent < n:
            self._queue(PyBytes_FromStringAndSize(<const char*>p + sent, n - sent))
        return 0

    cdef Py_ssize_t _send(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Frames for as much of `p[:n]` as `h2` would send now; how much that was."""
        if n == 0 or self._pending:
            return 0  # an empty piece (rare: h2 frames it), or a queue to keep in order
        state = self._stream_states.state
        if state is not OPEN and state is not HALF_CLOSED_REMOTE:
            return 0
        if self._conn_states.state is not SERVER_OPEN:
            return 0
        cdef object buffer = self._conn._data_to_send
        if not PyByteArray_CheckExact(buffer):
            return 0
        cdef long long conn_window = self._conn.outbound_flow_control_window
        cdef long long stream_window = self._stream.outbound_flow_control_window
        cdef long long max_frame = self._conn.max_outbound_frame_size
        cdef long long room = min(conn_window, stream_window)
        if room <= 0 or max_frame <= 0:
            return 0
        cdef Py_ssize_t sent = min(<long long>n, room)
        cdef Py_ssize_t frames = (sent + max_frame - 1) // max_frame
        cdef Py_ssize_t at = PyByteArray_GET_SIZE(buffer)
        PyByteArray_Resize(buffer, at + frames * FRAME_HEAD + sent)
        cdef unsigned char* out = <unsigned char*>PyByteArray_AS_STRING(buffer) + at
        cdef Py_ssize_t done = 0, size
        while done < sent:
            size = min(<long long>(sent - done), max_frame)
            out[0] = (size >> 16) & 0xFF
            out[1] = (size >> 8) & 0xFF
            out[2] = size & 0xFF
            out[3] = 0  # DATA
            out[4] = 0  # no flags: the end of the stream is h2's (`end_stream`)
            out[5] = (self._id >> 24) & 0x7F
            out[6] = (self._id >> 16) & 0xFF
            out[7] = (self._id >> 8) & 0xFF
            out[8] = self._id & 0xFF
            memcpy(out + FRAME_HEAD, p + done, size)
            out += FRAME_HEAD + size
            done += size
        self._stream.outbound_flow_control_window = stream_window - sent
        self._conn.outbound_flow_control_window = conn_window - sent
        self._flushed(sent)
        return sent
