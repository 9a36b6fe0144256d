# Declarations of the Cython body pump (relay/upstream/_bodypump.pyx): its state as
# typed C fields, so that a Cython module can `cimport` it and drive it without Python.

from relay.core._journal cimport Journal
from relay.sse._fastsse cimport FrameScanner


cdef inline int chunk_head(char* out, size_t n) noexcept nogil:
    # An HTTP/1.1 chunk's size line ("%zx\r\n") into `out` (20 bytes), without printf's
    # machinery (a twentieth of the relay's user time per event); its length.
    cdef const char* digits = b"0123456789abcdef"
    cdef int width = 1
    cdef size_t rest = n >> 4
    while rest:
        width += 1
        rest >>= 4
    cdef int i = width
    while i:
        i -= 1
        out[i] = digits[n & 15]
        n >>= 4
    out[width] = 13
    out[width + 1] = 10
    return width + 2


cdef class PieceSink:
    # A client side's writer that the pump calls in C, the piece still in its read
    # buffer (relay/edge/_h2data.pyx, relay/edge/_h1data.pyx); every sink is also
    # callable with bytes.
    cdef int write_c(self, const unsigned char* p, Py_ssize_t n) except -1
    # Pieces may wait, where they lie, for this: called before the buffer is reused.
    cdef int flush_c(self) except -1


cdef class BodyPump:
    cdef object _deliver
    # Told when a read ends the body or breaks its framing (relay/upstream/http1.py).
    cdef public object owner
    # Bytes received after the end of the message.
    cdef public bytes trailing
    cdef int _framing
    cdef int _state
    cdef long long _remaining
    cdef Py_ssize_t _trailer_left
    cdef bytes _tail  # an unfinished size or trailer line (or CR) from the last read
    cdef Py_ssize_t _tail_in_buffer  # of `_tail`, copied to the read buffer's start
    # The express path (`express`, on while `_scanner` is set): the client transport's
    # write (None while a resumable stream has no client), the stream's scanner, its
    # journal if it is resumable, and what the stream machine is told at its next event.
    cdef object _write
    cdef PieceSink _sink  # `_write` itself when it is one: called in C, no bytes made
    cdef Journal _journal
    cdef bint _chunked  # `_write` takes HTTP/1.1 chunks, not bare pieces
    cdef FrameScanner _scanner
    cdef long long _sent
    cdef double _last_byte
    cdef double _longest_silence

    cdef unsigned char* read_at(self, Py_ssize_t* room) except NULL
    cdef int read_done(self, Py_ssize_t nbytes) except -1

    cdef int _flush(self) except -1
    cdef int _express(self, const unsigned char* p, Py_ssize_t n) except -1

    cdef int _give(self, const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n, object whole) except -1
    cdef int _run(self, const unsigned char* p, Py_ssize_t n, object whole) except -1
    cdef int _run_chunked(self, const unsigned char* p, Py_ssize_t n, object whole) except -1
    cdef int _keep_line(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n, str what) except -1
