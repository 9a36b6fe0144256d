# Declarations of the Cython journal (relay/core/_journal.pyx), so that the body pump
# can `cimport` it and copy each piece into its arena without a Python call.

cdef class JournalTotal:
    cdef public long long bytes


cdef class Journal:
    cdef readonly Py_ssize_t limit
    cdef JournalTotal _total  # counts this journal's kept bytes until `release`
    # Bytes written so far (kept counting past `limit`).
    cdef readonly long long size
    cdef readonly bint overflowed
    cdef public object ending
    cdef unsigned char* _data  # the arena: `size` bytes used of `_capacity`
    cdef Py_ssize_t _capacity

    cdef int append_c(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef int _grow(self, Py_ssize_t needed) except -1
