# cython: language_level=3, auto_pickle=False, autotestdict=False
"""Cython twin of `relay.core.journal_pure.Journal`: the arena is one malloc'd buffer
that grows by doubling (up to the stream's limit), so a piece is kept with one
`memcpy`. The body pump's native path calls `append_c` directly
(relay/upstream/_bodypump.pyx); tests/test_journal.py runs both twins.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

from relay.core.journal_pure import Ending

cdef enum:
    # The arena's first size: most streams fit in a few doublings of it.
    FIRST_CAPACITY = 4096


cdef class JournalTotal:
    """The bytes a set of journals holds (a ResumeStore's), kept as they change."""

    def __init__(self):
        self.bytes = 0


cdef class Journal:
    """The body bytes one stream sent its client, up to `limit` bytes, counted in
    `total` (if given) until `release`."""

    def __init__(self, Py_ssize_t limit, JournalTotal total=None):
        self.limit = limit
        self._total = total
        self.size = 0
        self.overflowed = False
        self.ending = Ending.OPEN

    def __dealloc__(self):
        free(self._data)

    def append(self, data):
        """Keep a copy of `data` (bytes)."""
        cdef bytes piece = data
        self.append_c(<const unsigned char*>PyBytes_AS_STRING(piece), PyBytes_GET_SIZE(piece))

    def since(self, offset):
        """Everything after the first `offset` bytes (one copy, per resume), or None
        if that is not here (beyond what was written, or no longer kept). `offset` is
        any int a client sent: compared as such, not converted first."""
        if self.overflowed or not 0 <= offset <= self.size:
            return None
        cdef Py_ssize_t start = offset
        return PyBytes_FromStringAndSize(<const char*>self._data + start, self.size - start)

    def release(self):
        """Its store let it go: its bytes no longer count in the total."""
        if self._total is not None and not self.overflowed:
            self._total.bytes -= self.size
        self._total = None

    cdef int append_c(self, const unsigned char* p, Py_ssize_t n) except -1:
        cdef long long used = self.size
        self.size = used + n
        if self.overflowed:
            return 0
        if self.size > self.limit:
            self.overflowed = True
            free(self._data)  # the memory goes back at once; the count goes on
            self._data = NULL
            self._capacity = 0
            if self._total is not None:
                self._total.bytes -= used
            return 0
        if self.size > self._capacity:
            self._grow(self.size)
        memcpy(self._data + used, p, n)
        if self._total is not None:
            self._total.bytes += n
        return 0

    cdef int _grow(self, Py_ssize_t needed) except -1:
        cdef Py_ssize_t capacity = self._capacity or FIRST_CAPACITY
        while capacity < needed:
            capacity *= 2
        capacity = min(capacity, self.limit)
        cdef unsigned char* grown = <unsigned char*>realloc(self._data, capacity)
        if grown == NULL:
            raise MemoryError()
        self._data = grown
        self._capacity = capacity
        return 0
