# cython: language_level=3, auto_pickle=False, autotestdict=False
"""HTTP/1.1 chunks towards a client, sent on its socket from the body pump's buffer.

Through uvloop's `transport.write`, each piece costs a bytes object (an allocation and
a copy of the payload with its chunk framing), a Python call, a list append and clear
and then the `write(2)`: a fifth of the relay's user time per event on the HTTP/1.1
path. A `ChunkOut` sends the size line, the piece where it lies and the CRLF with one
`sendmsg`, as nginx's `writev` does, when nothing can overtake or be overtaken:

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


cdef class ChunkOut(PieceSink):
    """One response's body chunks: `write_c` from the body pump, or a call with bytes."""

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

    cdef int write_c(self, const unsigned char* p, Py_ssize_t n) except -1:
        if n == 0:
            return 0  # an empty chunk would end the body; Http1Protocol.send_body skips it too
        cdef char head[20]
        cdef iovec iov[3]
        iov[0].iov_base = head
        iov[0].iov_len = chunk_head(head, n)
        iov[1].iov_base = <void*>p
        iov[1].iov_len = n
        iov[2].iov_base = <void*>CRLF
        iov[2].iov_len = 2
        cdef Py_ssize_t total = iov[0].iov_len + n + 2
        cdef Py_ssize_t sent = 0
        cdef Py_ssize_t buffered
        cdef msghdr msg
        if not self._closing():
            buffered = self._buffered()
            if buffered == 0:
                memset(&msg, 0, sizeof(msg))
                msg.msg_iov = iov
                msg.msg_iovlen = 3
                sent = sendmsg(self._fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT)
                if sent == total:
                    return 0
                if sent < 0:
                    sent = 0  # EAGAIN or EINTR, or an error the transport meets and reports
        self._write(_rest(iov, total - sent, sent))
        return 0


cdef bytes _rest(iovec* iov, Py_ssize_t size, Py_ssize_t skip):
    """The three pieces' bytes after the first `skip`, as one bytes object."""
    cdef bytes rest = PyBytes_FromStringAndSize(NULL, size)
    cdef char* out = PyBytes_AS_STRING(rest)
    cdef Py_ssize_t take
    cdef int i
    for i in range(3):
        if skip >= <Py_ssize_t>iov[i].iov_len:
            skip -= iov[i].iov_len
            continue
        take = iov[i].iov_len - skip
        memcpy(out, <char*>iov[i].iov_base + skip, take)
        out += take
        skip = 0
    return rest
