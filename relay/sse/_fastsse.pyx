# cython: language_level=3, auto_pickle=False, autotestdict=False
"""Cython twin of `relay.sse.scanner_pure.FrameScanner`: same state machine, C loop.

Keep the two in step; tests/test_scanner.py, test_scanner_dispatch.py and
test_scanner_marks.py check they agree. `feed` and `feed_to_dispatch` allocate nothing
for `bytes` or `bytearray` input: they walk the object's buffer in place, in one C loop
(`scan`).
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

cdef enum:
    # Line states.
    START = 0  # at a line start: nothing of the current line seen yet
    OTHER = 1  # inside a line that can teach nothing more (comment, data, long value, ...)
    HEAD = 2  # inside a field line starting with `e` (or a watched `d`), head being kept
    PARTIAL_BOM = 3  # inside what may still become the stream's BOM
    DATA = 4  # inside a long data line searched for `"finishReason"` (watched)

cdef enum:
    # Event names of the current frame that the relay cares about.
    NO_EVENT = 0
    PING = 1
    MESSAGE_START = 2
    MESSAGE_STOP = 3
    ERROR = 4
    RESPONSE_END = 5

cdef enum:
    BOM_DONE = 3  # `_bom` value once the stream start (where a BOM may sit) is behind us

cdef const unsigned char* BOM = b"\xef\xbb\xbf"
cdef const unsigned char* FINISH = b'"finishReason"'
# The mark each event sets when its frame is dispatched, by event number.
cdef int EVENT_MARKS[6]
EVENT_MARKS[:] = [0, 0, MESSAGE_START_MARK, MESSAGE_STOP_MARK, ERROR_EVENT_MARK, RESPONSE_END_MARK]


cdef inline int event_of(const unsigned char* head, Py_ssize_t n, int current) noexcept:
    """The frame's event after field line `head` (current if it is no `event` field)."""
    if n < 5 or memcmp(head, b"event", 5) != 0:
        return current
    if n == 5:
        return NO_EVENT
    if head[5] != b":":
        return current
    cdef Py_ssize_t start = 7 if n > 6 and head[6] == b" " else 6
    cdef const unsigned char* value = head + start
    n -= start
    if n == 4 and memcmp(value, b"ping", 4) == 0:
        return PING
    if n == 13 and memcmp(value, b"message_start", 13) == 0:
        return MESSAGE_START
    if n == 12 and memcmp(value, b"message_stop", 12) == 0:
        return MESSAGE_STOP
    if n == 5 and memcmp(value, b"error", 5) == 0:
        return ERROR
    if n == 18 and memcmp(value, b"response.completed", 18) == 0:
        return RESPONSE_END
    if n == 15 and memcmp(value, b"response.failed", 15) == 0:
        return RESPONSE_END
    if n == 19 and memcmp(value, b"response.incomplete", 19) == 0:
        return RESPONSE_END
    return NO_EVENT


cdef inline bint has_finish(const unsigned char* p, Py_ssize_t n) noexcept:
    """`"finishReason"` is somewhere in `p[:n]` (memchr to each quote, then compare)."""
    cdef const unsigned char* q = p
    cdef const unsigned char* end = p + n
    while end - q > TAIL:
        q = <const unsigned char*>memchr(q, b'"', (end - q) - TAIL)
        if q == NULL:
            return False
        if memcmp(q, FINISH, TAIL + 1) == 0:
            return True
        q += 1
    return False


cdef inline int data_marks(const unsigned char* head, Py_ssize_t n, int watch) noexcept:
    """The watched marks that field line `head` (maybe cut at its first bytes) sets."""
    if n < 5 or memcmp(head, b"data:", 5) != 0:
        return 0
    cdef Py_ssize_t start = 6 if n > 5 and head[5] == b" " else 5
    cdef const unsigned char* value = head + start
    n -= start
    cdef int marks = 0
    if watch & DONE_MARK and n >= 6 and memcmp(value, b"[DONE]", 6) == 0:
        marks |= DONE_MARK
    if watch & DATA_ERROR_MARK and n >= 8 and memcmp(value, b'{"error"', 8) == 0:
        marks |= DATA_ERROR_MARK
    if watch & FINISH_REASON_MARK and has_finish(value, n):
        marks |= FINISH_REASON_MARK
    return marks


cdef inline object readable(object data):
    """`data` itself when it can be read in place (bytes, or the bytearrays h11 hands
    over), else a bytes copy of its buffer."""
    if type(data) is bytes or type(data) is bytearray:
        return data
    return bytes(memoryview(data))


cdef inline const unsigned char* contents(object buf, Py_ssize_t* size) noexcept:
    """The bytes of `buf`, a bytes or bytearray object, and their number in `size`."""
    if type(buf) is bytes:
        size[0] = PyBytes_GET_SIZE(buf)
        return <const unsigned char*>PyBytes_AS_STRING(buf)
    size[0] = PyByteArray_GET_SIZE(buf)
    return <const unsigned char*>PyByteArray_AS_STRING(buf)


cdef inline Py_ssize_t scan(
    FrameScanner s, const unsigned char* p, Py_ssize_t n, Py_ssize_t i, bint stop
) noexcept:
    """Feed `p[i:n]` to `s`; with `stop`, only as far as the next frame dispatch, whose
    line ending's index is returned (n when none). Inlined into both callers: in `feed`
    `stop` is a constant False, and the C compiler drops its test."""
    cdef unsigned char c
    if s._bom != BOM_DONE:
        i += s._skip_bom(p + i, n - i)
    cdef int state = s._state
    cdef bint after_cr = s._after_cr
    cdef bint has_field = s._has_field
    cdef int event = s._event
    cdef int frame_marks = s._frame_marks
    cdef int watch = s._watch
    cdef Py_ssize_t head_len = s._head_len
    cdef Py_ssize_t dispatched = n
    cdef Py_ssize_t start
    while i < n:
        c = p[i]
        if c == b"\n" or c == b"\r":
            i += 1
            if c == b"\n" and after_cr:
                after_cr = False
                continue
            after_cr = c == b"\r"
            if state == START:
                if has_field:
                    s._dispatch(event, frame_marks)
                    has_field = False
                    frame_marks = 0
                    if stop:  # as if the chunk ended right after this byte
                        event = NO_EVENT
                        dispatched = i - 1
                        break
                event = NO_EVENT
            elif state == HEAD:
                if s._head[0] == b"e":
                    event = event_of(s._head, head_len, event)
                else:
                    frame_marks |= data_marks(s._head, head_len, watch)
            elif state == DATA:
                s._tail_len = 0
            state = START
            continue
        after_cr = False
        if state == START:
            if c == b":":
                state = OTHER
            else:
                has_field = True
                # `e`: maybe `event`; `d`: maybe a watched `data` line.
                state = HEAD if c == b"e" or (c == b"d" and watch) else OTHER
                head_len = 0
        if state == HEAD:
            if head_len < HEAD_MAX:
                s._head[head_len] = c
                head_len += 1
                i += 1
                continue
            state = OTHER
            if s._head[0] == b"e":
                # Too long to name a recognised event, yet it replaces the name.
                if memcmp(s._head, b"event:", 6) == 0:
                    event = NO_EVENT
            else:
                frame_marks |= data_marks(s._head, head_len, watch)
                if (
                    watch & FINISH_REASON_MARK
                    and not frame_marks & FINISH_REASON_MARK
                    and memcmp(s._head, b"data:", 5) == 0
                ):
                    state = DATA
                    memcpy(s._tail, s._head + HEAD_MAX - TAIL, TAIL)
                    s._tail_len = TAIL
        # OTHER: nothing to learn until the line ends; DATA: its content is searched.
        start = i
        i += 1
        while i < n and p[i] != b"\n" and p[i] != b"\r":
            i += 1
        if state == DATA and s._found_finish(p + start, i - start):
            frame_marks |= FINISH_REASON_MARK
            state = OTHER
    s._state = state
    s._after_cr = after_cr
    s._has_field = has_field
    s._event = event
    s._frame_marks = frame_marks
    s._head_len = head_len
    return dispatched


cdef class FrameScanner:
    """Follows an SSE byte stream chunk by chunk and tells where a frame may be inserted.

    Implements WHATWG event-stream line and frame rules: `\\n`, `\\r\\n` or `\\r` line
    endings (a `\\r\\n` may be split across chunks), a leading BOM, comments, and frames
    dispatched by an empty line when they hold at least one field line.
    """

    # Its fields and C methods are declared in _fastsse.pxd.

    def __cinit__(self, int watch=0):
        """`watch`: the data-line marks (relay.sse.marks.DATA_MARKS) to look for."""
        self._watch = watch
        self._state = START
        self._bom = 0
        self._event = NO_EVENT

    @property
    def saw_message_start(self):
        """A dispatched frame was a `message_start` event."""
        return bool(self.marks & MESSAGE_START_MARK)

    @property
    def saw_message_stop(self):
        """A dispatched frame was a `message_stop` event."""
        return bool(self.marks & MESSAGE_STOP_MARK)

    @property
    def saw_error(self):
        """A dispatched frame was an `error` event."""
        return bool(self.marks & ERROR_EVENT_MARK)

    @property
    def at_boundary(self):
        """A whole frame inserted here changes nothing any SSE parser sees."""
        return self._state == START and not self._has_field

    @property
    def at_line_start(self):
        """No partial line is pending."""
        return self._state == START

    def feed(self, data):
        """Account for the next chunk of the stream."""
        cdef object buf = readable(data)
        cdef Py_ssize_t n
        cdef const unsigned char* p = contents(buf, &n)
        scan(self, p, n, 0, False)

    cdef void feed_c(self, const unsigned char* p, Py_ssize_t n) noexcept:
        """`feed` for C callers (relay/upstream/_bodypump.pyx): bytes where they lie."""
        scan(self, p, n, 0, False)

    def feed_to_dispatch(self, data, Py_ssize_t start):
        """Account for `data[start:]` as far as the next line ending that dispatches a
        frame, and return that ending's index: exactly as `feed(data[start : k + 1])`
        for the `k` returned (a `\\r\\n` ending is fed up to its `\\r`, the `\\n` is left
        to the next call). `len(data)` when no frame is dispatched (all of it fed)."""
        cdef object buf = readable(data)
        cdef Py_ssize_t n
        cdef const unsigned char* p = contents(buf, &n)
        if not 0 <= start <= n:
            raise ValueError(f"start {start} is outside the chunk's {n} bytes")
        return scan(self, p, n, start, True)

    cdef Py_ssize_t _skip_bom(self, const unsigned char* p, Py_ssize_t n) noexcept:
        """Consume what belongs to a leading BOM; return where line content starts."""
        cdef Py_ssize_t i = 0
        while self._bom < 3 and i < n:
            if p[i] != BOM[self._bom]:
                if self._bom:  # a partial BOM is just the start of a (field) line
                    self._state = OTHER
                    self._has_field = True
                self._bom = BOM_DONE
                return i
            self._bom += 1
            i += 1
        if self._bom:
            self._state = START if self._bom == 3 else PARTIAL_BOM
        return i

    cdef bint _found_finish(self, const unsigned char* p, Py_ssize_t n) noexcept:
        """`"finishReason"` is in the long data line's content `p[:n]`, or straddles what
        came of it before; else keep the bytes it could start in."""
        cdef unsigned char joined[2 * TAIL]
        cdef Py_ssize_t k = n if n < TAIL else TAIL
        cdef Py_ssize_t kept = self._tail_len
        memcpy(joined, self._tail, kept)
        memcpy(joined + kept, p, k)
        if has_finish(joined, kept + k) or has_finish(p, n):
            self._tail_len = 0
            return True
        if n >= TAIL:
            memcpy(self._tail, p + n - TAIL, TAIL)
            self._tail_len = TAIL
        else:  # `joined` is the old tail and all of `p`: keep its last bytes
            k = kept + n if kept + n < TAIL else TAIL
            memcpy(self._tail, joined + kept + n - k, k)
            self._tail_len = k
        return False

    cdef void _dispatch(self, int event, int frame_marks) noexcept:
        self.frames += 1
        if event == PING:
            self.pings += 1
        self.marks |= EVENT_MARKS[event] | frame_marks
