# Declarations of the Cython SSE scanner (relay/sse/_fastsse.pyx): its state as typed
# C fields, so that a Cython module can `cimport` it and call it without Python.

cdef enum:
    HEAD_MAX = 39  # `event: ` plus a 32-byte name: longer is no name we could recognise
    TAIL = 13  # bytes of a long watched data line kept: `"finishReason"` less one

cdef enum:
    # relay/sse/marks.py, again (the twins' tests check they agree).
    MESSAGE_START_MARK = 1
    MESSAGE_STOP_MARK = 2
    ERROR_EVENT_MARK = 4
    RESPONSE_END_MARK = 8
    DONE_MARK = 16
    DATA_ERROR_MARK = 32
    FINISH_REASON_MARK = 64


cdef class FrameScanner:
    cdef readonly Py_ssize_t frames
    cdef readonly Py_ssize_t pings
    cdef readonly int marks
    cdef int _watch
    cdef int _frame_marks  # data-line marks of the frame being read
    cdef int _state
    cdef int _bom  # BOM bytes matched so far at the stream start
    cdef bint _after_cr  # last byte was a `\r`: a `\n` now is part of its ending
    cdef bint _has_field
    cdef int _event
    cdef Py_ssize_t _head_len
    cdef unsigned char _head[HEAD_MAX]
    cdef Py_ssize_t _tail_len
    cdef unsigned char _tail[TAIL]  # a long watched data line's last bytes so far

    cdef void feed_c(self, const unsigned char* p, Py_ssize_t n) noexcept
    cdef Py_ssize_t _skip_bom(self, const unsigned char* p, Py_ssize_t n) noexcept
    cdef void _dispatch(self, int event, int frame_marks) noexcept
    cdef bint _found_finish(self, const unsigned char* p, Py_ssize_t n) noexcept
