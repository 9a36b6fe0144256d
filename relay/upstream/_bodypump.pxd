# Declarations of the Cython body pump (relay/upstream/_bodypump.pyx): its state as
# typed C fields, so that a Cython module can `cimport` it and drive it without Python.

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

    cdef int _give(self, const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n, object whole) except -1
    cdef int _run(self, const unsigned char* p, Py_ssize_t n, object whole) except -1
    cdef int _run_chunked(self, const unsigned char* p, Py_ssize_t n, object whole) except -1
    cdef int _keep_line(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n, str what) except -1
