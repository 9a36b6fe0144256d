# Declarations of the Cython SSE scanner (relay/sse/_fastsse.pyx): its state as typed
# C fields, so that a Cython module can `cimport` it and call it without Python.

cdef enum:
    HEAD_MAX = 39  # `event: ` plus a 32-byte name: longer is no name we could recognise


cdef class FrameScanner:
    cdef readonly Py_ssize_t frames
    cdef readonly Py_ssize_t pings
    cdef readonly bint saw_message_start
    cdef readonly bint saw_message_stop
    cdef readonly bint saw_error
    cdef int _state
    cdef int _bom  # BOM bytes matched so far at the stream start
    cdef bint _after_cr  # last byte was a `\r`: a `\n` now is part of its ending
    cdef bint _has_field
    cdef int _event
    cdef Py_ssize_t _head_len
    cdef unsigned char _head[HEAD_MAX]

    cdef Py_ssize_t _skip_bom(self, const unsigned char* p, Py_ssize_t n) noexcept
    cdef void _dispatch(self, int event) noexcept
