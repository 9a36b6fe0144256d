# cython: language_level=3, auto_pickle=False, autotestdict=False
"""HTTP/1.1 chunks towards a client, sent on its socket from the body pump's buffer.

Through uvloop's `transport.write`, each piece costs a bytes object (an allocation and
a copy of the payload with its chunk framing), a Python call, a list append and clear
and then the `write(2)`: a fifth of the relay's user time per event on the HTTP/1.1
path. A `ChunkOut` sends each piece's size line, the piece where it lies and its CRLF,
for all the pieces one read of the body pump brought, with one `sendmsg`, as nginx's
`writev` does, when nothing can overtake or be overtaken:

- the transport is not closing, so its descriptor is still this connection's (uvloop
  closes it only after `is_closing()` turned true);
- the transport holds nothing unsent (`get_write_buffer_size() == 0`): every byte
  written before through it (the head, keepalives) is in the kernel already.

Whatever the socket does not take (part of it, EAGAIN, an error) goes to
`transport.write` as one bytes object, which queues it, pauses the stream at its
high-water mark or fails the connection as it always did. Only uvloop's public API is
used; tests/test_h1_data.py checks these assumptions on the installed uvloop and
compares the bytes with `transport.write`'s. Plain TCP only: a TLS transport's socket
carries records (relay/edge/native_out.py decides).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memcpy, memset
from posix.uio cimport iovec

from relay.upstream._bodypump cimport PieceSink, chunk_head


cdef extern from "<sys/socket.h>" nogil:
    cdef struct msghdr:
        void* msg_name
        unsigned int msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr* msg, int flags)
    enum:
        MSG_NOSIGNAL
        MSG_DONTWAIT


cdef const char* CRLF = b"\r\n"

cdef enum:
    BATCH = 64  # pieces per sendmsg: 3 iovecs each, far under IOV_MAX

# The pieces of one read of the body pump, sent together when it is done (`flush_c`):
# one sendmsg however many events the read brought, as nginx's one writev. One batch for
# the process: the loop is single-threaded and each read is flushed before it returns.
cdef iovec _IOV[BATCH * 3]
cdef char _HEADS[BATCH][20]
cdef int _count = 0
cdef Py_ssize_t _size = 0


cdef class ChunkOut(PieceSink):
    """One response's body chunks: `write_c` from the body pump (sent at its
    `flush_c`), or a call with bytes (sent at once)."""

    cdef object _write
    cdef object _buffered
    cdef object _closing
    cdef int _fd

    def __init__(self, transport):
        """`transport` is a uvloop TCP transport, its response head already written."""
        self._write = transport.write
        self._buffered = transport.get_write_buffer_size
        self._closing = transport.is_closing
        self._fd = transport.get_extra_info("socket").fileno()

    def __call__(self, bytes data not None):
        self.write_c(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        self.flush_c()

    cdef int write_c(self, const unsigned char* p, Py_ssize_t n) except -1:
        """Queue `p[:n]` as one chunk, where it lies: valid until `flush_c`."""
        global _owner, _count, _size
        if n == 0:
            return 0  # an empty chunk would end the body; Http1Protocol.send_body skips it too
        if _owner is not self:
            if _owner is not None:
                _owner.flush_c()  # another response's batch: the pump flushes before that
            _owner = self
        elif _count == BATCH:
            self.flush_c()
            _owner = self
        cdef int i = _count * 3
        _IOV[i].iov_base = _HEADS[_count]
        _IOV[i].iov_len = chunk_head(_HEADS[_count], n)
        _IOV[i + 1].iov_base = <void*>p
        _IOV[i + 1].iov_len = n
        _IOV[i + 2].iov_base = <void*>CRLF
        _IOV[i + 2].iov_len = 2
        _size += _IOV[i].iov_len + n + 2
        _count += 1
        return 0

    cdef int flush_c(self) except -1:
        global _owner, _count, _size
        if _owner is not self:
            return 0
        cdef int iovs = _count * 3
        cdef Py_ssize_t total = _size
        _owner = None
        _count = 0
        _size = 0
        cdef Py_ssize_t sent = 0
        cdef msghdr msg
        if not self._closing() and self._buffered() == 0:
            memset(&msg, 0, sizeof(msg))
            msg.msg_iov = _IOV
            msg.msg_iovlen = iovs
            sent = sendmsg(self._fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
            if sent == total:
                return 0
            if sent < 0:
                sent = 0  # EAGAIN or EINTR, or an error the transport meets and reports
        self._write(_rest(iovs, total - sent, sent))
        return 0


cdef ChunkOut _owner = None  # whose pieces `_IOV` holds


cdef bytes _rest(int iovs, Py_ssize_t size, Py_ssize_t skip):
    """The batch's bytes after the first `skip`, as one bytes object."""
    cdef bytes rest = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(rest)
    cdef Py_ssize_t take
    cdef int i
    for i in range(iovs):
        if skip >= <Py_ssize_t>_IOV[i].iov_len:
            skip -= _IOV[i].iov_len
            continue
        take = _IOV[i].iov_len - skip
        memcpy(out, <char*>_IOV[i].iov_base + skip, take)
        out += take
        skip = 0
    return rest
