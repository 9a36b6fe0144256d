# cython: language_level=3, auto_pickle=False, autotestdict=False
"""Cython twin of `relay.upstream.body_decoder`: HTTP/1.1 response bodies decoded in C.

A `BodyPump` is also the asyncio `BufferedProtocol` of the upstream connection while
a body is read (relay/upstream/http1.py hands it the transport after the head): uvloop
reads straight into this module's buffer, one for the whole process, and
`buffer_updated` decodes the framing there in one C loop. The loop is single-threaded
and every read is handed over at once, so one buffer serves every connection; all a
pump keeps between reads is an unfinished size or trailer line (`_tail`, rare).

The express path (`express`, Cython only): once the stream's first bytes are settled,
each piece is scanned, counted, timed and handed to the client from here: by a
`PieceSink` from this module's buffer, no bytes object at all (sent as an HTTP/1.1 chunk
on the client's socket, relay/edge/_h1data.pyx, or written as HTTP/2 DATA frames,
relay/edge/_h2data.pyx); written as a chunk to an HTTP/1.1 client's transport where no
sink applies (TLS: one bytes object, the one the transport keeps); or passed to an
HTTP/3 stream's `send_body` in one call.
A resumable stream's piece is first copied into its journal's arena
(relay/core/_journal.pyx, a `memcpy`), and goes to no client while none is attached.
The stream machine reads the counts at its next event.

Keep the two twins in step; tests/test_body_decoder.py runs both against h11.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from relay.core._journal cimport Journal
from relay.sse._fastsse cimport FrameScanner

from relay.upstream.body_decoder import BodyFramingError, body_framing

cdef enum:
    # relay/upstream/body_decoder.py, again (its tests check they agree).
    READ_SIZE = 262144
    MAX_LINE = 4096
    MAX_TRAILER = 65536
    MAX_SIZE_DIGITS = 20

# A chunk size past this is never reached (exabytes); larger ones are held at it.
cdef long long SIZE_CEILING = (<long long>1) << 62

cdef enum:
    # Framings.
    LENGTH = 0
    CLOSE = 1
    CHUNKED = 2

cdef enum:
    # Chunked states: what the next bytes are.
    SIZE = 0
    DATA = 1
    DATA_END = 2
    TRAILER = 3
    DONE = 4

cdef bytearray _READ = bytearray(READ_SIZE)
cdef object _READ_VIEW = memoryview(_READ)
cdef unsigned char* _READ_AT = <unsigned char*>PyByteArray_AS_STRING(_READ)


cdef inline Py_ssize_t find_crlf(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end) noexcept:
    """Where `\\r\\n` starts in `p[pos:end]` (whole inside it), or -1: `bytes.find`."""
    cdef const unsigned char* q
    while end - pos >= 2:
        q = <const unsigned char*>memchr(p + pos, b"\r", end - pos - 1)
        if q == NULL:
            return -1
        pos = q - p
        if p[pos + 1] == b"\n":
            return pos
        pos += 1
    return -1


cdef inline int hex_value(unsigned char c) noexcept:
    """The value of hex digit `c`, or -1."""
    if c'0' <= c <= c'9':
        return c - c'0'
    if c'a' <= c <= c'f':
        return c - c'a' + 10
    if c'A' <= c <= c'F':
        return c - c'A' + 10
    return -1


cdef long long chunk_size(const unsigned char* line, Py_ssize_t n) except -1:
    """The size on a chunk-size line (CRLF removed): as `body_decoder._chunk_size`."""
    cdef Py_ssize_t digits = 0, i
    cdef long long size = 0
    cdef int v
    while digits < n:
        v = hex_value(line[digits])
        if v < 0:
            break
        if size < SIZE_CEILING:
            size = size * 16 + v
        digits += 1
    cdef bint bad = not 0 < digits <= MAX_SIZE_DIGITS
    if not bad and digits < n and line[digits] != b";":
        for i in range(digits, n):
            if line[i] != b" " and line[i] != b"\t":
                bad = True
                break
    if bad:
        shown = PyBytes_FromStringAndSize(<const char*>line, min(n, 64))
        raise BodyFramingError(f"malformed chunk-size line: {shown!r}")
    return min(size, SIZE_CEILING)


cdef class PieceSink:
    """A client side's writer that the pump calls in C (`write_c`) with the piece still
    in the read buffer: relay/edge/_h1data.pyx sends HTTP/1.1 chunks from there,
    relay/edge/_h2data.pyx writes HTTP/2 DATA frames."""

    cdef int write_c(self, const unsigned char* p, Py_ssize_t n) except -1:
        raise NotImplementedError

    cdef int flush_c(self) except -1:
        return 0


cdef class BodyPump:
    """One response body: fed bytes (`feed`) or read into by uvloop (`buffer_updated`),
    it hands each piece of body to `deliver`; see `body_decoder.BodyDecoder`."""

    def __init__(self, int framing, long long length, deliver):
        self._deliver = deliver
        self.owner = None
        self.trailing = b""
        self._framing = framing
        self._state = SIZE
        self._remaining = length
        self._trailer_left = MAX_TRAILER
        self._tail = b""
        self._tail_in_buffer = 0
        self._write = None
        self._sink = None
        self._journal = None
        self._scanner = None

    # -- the decoder ------------------------------------------------------------------

    def feed(self, data):
        """Deliver the body bytes in `data`; True on the call that ends the message."""
        cdef bytes whole = data if type(data) is bytes else bytes(data)
        if self._tail:
            whole = self._tail + whole  # rare: a read split a line
            self._tail = b""
        try:
            return self._run(
                <const unsigned char*>PyBytes_AS_STRING(whole), PyBytes_GET_SIZE(whole), whole
            ) == 1
        finally:
            self._flush()

    def feed_eof(self):
        """Upstream closed: ends a close-delimited body, else raises BodyFramingError."""
        if self._framing == LENGTH and self._remaining:
            raise BodyFramingError(
                f"upstream closed with {self._remaining} bytes of the body still to come"
            )
        if self._framing == CHUNKED and self._state != DONE:
            raise BodyFramingError("upstream closed in the middle of a chunked body")

    # -- the express path -------------------------------------------------------------

    def express(
        self, write, bint chunked, FrameScanner scanner not None, double last_byte,
        Journal journal=None,
    ):
        """From now on pieces are fed to `scanner`, timed from `last_byte` (the loop's
        clock), copied into `journal` if given, and go to `write` (as HTTP/1.1 chunks
        if `chunked`; nowhere if None) instead of to `deliver`."""
        self.redirect(write, chunked, journal)
        self._scanner = scanner
        self._sent = 0
        self._last_byte = last_byte
        self._longest_silence = 0.0

    def redirect(self, write, bint chunked, Journal journal=None):
        """Pieces go to `write` and `journal` from now on (a resumable stream's client
        left, or a resume took the stream over)."""
        self._flush()
        self._write = write
        self._sink = write if isinstance(write, PieceSink) else None
        self._chunked = chunked
        self._journal = journal

    def take_progress(self):
        """(body bytes written since the last call, the last one's time, the longest
        silence before one of them)."""
        sent, self._sent = self._sent, 0
        longest, self._longest_silence = self._longest_silence, 0.0
        return sent, self._last_byte, longest

    def rebase(self, double last_byte):
        """The machine moved its last-byte time (silence while the client was paused
        is not upstream's): silences count from there."""
        self._last_byte = last_byte

    def stop(self):
        """The exchange is abandoned: nothing more goes anywhere, this read included."""
        self._flush()  # what this read gave before, as if each piece went at once
        self._scanner = None
        self._write = None
        self._sink = None
        self._journal = None
        self._deliver = None

    # -- asyncio.BufferedProtocol -----------------------------------------------------

    def get_buffer(self, Py_ssize_t sizehint):
        cdef Py_ssize_t room
        self.read_at(&room)
        return _READ_VIEW if room == READ_SIZE else _READ_VIEW[READ_SIZE - room:]

    def buffer_updated(self, Py_ssize_t nbytes):
        self.read_done(nbytes)

    cdef unsigned char* read_at(self, Py_ssize_t* room) except NULL:
        """Where the next read goes, after an unfinished line kept from the last one,
        and how much fits there (`get_buffer`, for relay/upstream/_tlsread.pyx too)."""
        cdef Py_ssize_t kept = PyBytes_GET_SIZE(self._tail)
        self._tail_in_buffer = kept
        if kept:
            memcpy(_READ_AT, PyBytes_AS_STRING(self._tail), kept)
        room[0] = READ_SIZE - kept
        return _READ_AT + kept

    cdef int read_done(self, Py_ssize_t nbytes) except -1:
        """`nbytes` were read where `read_at` said (`buffer_updated`)."""
        cdef Py_ssize_t kept = self._tail_in_buffer
        self._tail_in_buffer = 0
        self._tail = b""
        try:
            try:
                complete = self._run(_READ_AT, kept + nbytes, None)
            finally:
                self._flush()  # before anything is told: it may write to the client
        except BodyFramingError as exc:
            self.owner.body_failed(str(exc))
            return 0
        if complete:
            self.owner.body_ended()
        return 0

    def eof_received(self):
        return self.owner.eof_received()

    def connection_lost(self, exc):
        self.owner.connection_lost(exc)

    def pause_writing(self):
        self.owner.pause_writing()

    def resume_writing(self):
        self.owner.resume_writing()

    # -- internals --------------------------------------------------------------------

    cdef int _flush(self) except -1:
        """The sink sends what this read gave it, before the buffer is read into again."""
        if self._sink is not None:
            self._sink.flush_c()
        return 0

    cdef int _give(self, const unsigned char* p, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t n, object whole) except -1:
        """Deliver `p[start:stop]`: `whole` itself when that is all of it (no copy)."""
        if self._scanner is not None:
            return self._express(p + start, stop - start)
        if self._deliver is None:  # stopped
            return 0
        if whole is not None and start == 0 and stop == n:
            self._deliver(whole)
        else:
            self._deliver(PyBytes_FromStringAndSize(<const char*>p + start, stop - start))
        return 0

    cdef int _express(self, const unsigned char* p, Py_ssize_t n) except -1:
        """One piece to the client: what `StreamMachine.response_body` does for it, the
        journal's copy (`ResumableClient.send_body`'s), then one C call to a `PieceSink`
        (HTTP/1.1 on a plain socket, HTTP/2), one HTTP/1.1 chunk on the transport (as
        `Http1Protocol.send_body` writes it), or one call to the HTTP/3 stream's
        `send_body`. Everything is counted before the write, which may call back into
        the stream (a pause)."""
        self._scanner.feed_c(p, n)
        cdef timespec ts
        clock_gettime(CLOCK_MONOTONIC, &ts)
        cdef double now = ts.tv_sec + ts.tv_nsec * 1e-9
        if now - self._last_byte > self._longest_silence:
            self._longest_silence = now - self._last_byte
        self._last_byte = now
        self._sent += n
        if self._journal is not None:
            self._journal.append_c(p, n)
        if self._write is None:
            return 0  # a resumable stream with no client attached
        if self._sink is not None:
            return self._sink.write_c(p, n)
        cdef char head[20]
        cdef int head_len = 0
        if self._chunked:
            head_len = chunk_head(head, n)
        cdef object piece = PyBytes_FromStringAndSize(NULL, head_len + n + 2 * self._chunked)
        cdef char* out = PyBytes_AS_STRING(piece)
        memcpy(out, head, head_len)
        memcpy(out + head_len, p, n)
        if self._chunked:
            out[head_len + n] = b"\r"
            out[head_len + n + 1] = b"\n"
        self._write(piece)
        return 0

    cdef int _run(self, const unsigned char* p, Py_ssize_t n, object whole) except -1:
        """Decode `p[:n]`; 1 if it ends the message."""
        cdef long long remaining = self._remaining
        if self._framing == CLOSE:
            if n:
                self._give(p, 0, n, n, whole)
            return 0
        if self._framing == LENGTH:
            if not remaining:
                self.trailing += PyBytes_FromStringAndSize(<const char*>p, n)
                return 0
            if n < remaining:
                self._remaining = remaining - n
                if n:
                    self._give(p, 0, n, n, whole)
                return 0
            self._remaining = 0
            self._give(p, 0, remaining, n, whole)
            self.trailing = PyBytes_FromStringAndSize(<const char*>p + remaining, n - remaining)
            return 1
        return self._run_chunked(p, n, whole)

    cdef int _run_chunked(self, const unsigned char* p, Py_ssize_t n, object whole) except -1:
        cdef int state = self._state
        cdef Py_ssize_t pos = 0, eol
        cdef long long stop, size
        if state == DONE:
            self.trailing += PyBytes_FromStringAndSize(<const char*>p, n)
            return 0
        while pos < n:
            if state == SIZE:
                eol = find_crlf(p, pos, min(n, pos + MAX_LINE))
                if eol < 0:
                    self._keep_line(p, pos, n, "chunk-size line")
                    break
                size = chunk_size(p + pos, eol - pos)
                pos = eol + 2
                if size:
                    self._remaining = size
                    state = DATA
                else:
                    state = TRAILER
            elif state == DATA:
                stop = pos + self._remaining
                if stop <= n:
                    self._give(p, pos, stop, n, whole)
                    pos = stop
                    state = DATA_END
                else:
                    # Part of a chunk: deliver it now.
                    self._give(p, pos, n, n, whole)
                    self._remaining = stop - n
                    pos = n
            elif state == DATA_END:
                if n - pos >= 2 and p[pos] == b"\r" and p[pos + 1] == b"\n":
                    pos += 2
                    state = SIZE
                elif n - pos == 1 and p[pos] == b"\r":
                    self._tail = b"\r"
                    pos = n
                else:
                    self._state = state
                    shown = PyBytes_FromStringAndSize(<const char*>p + pos, min(n - pos, 2))
                    raise BodyFramingError(f"chunk data not followed by CRLF: {shown!r}")
            else:  # TRAILER
                eol = find_crlf(p, pos, min(n, pos + MAX_LINE))
                if eol < 0:
                    self._keep_line(p, pos, n, "trailer line")
                    break
                self._trailer_left -= eol + 2 - pos
                if self._trailer_left < 0:
                    raise BodyFramingError(f"trailer section longer than {MAX_TRAILER} bytes")
                if eol == pos:
                    pos += 2
                    state = DONE
                    break
                if memchr(p + pos, b":", eol - pos) == NULL:
                    shown = PyBytes_FromStringAndSize(<const char*>p + pos, eol - pos)
                    raise BodyFramingError(f"malformed trailer field: {shown!r}")
                pos = eol + 2
        self._state = state
        if state == DONE:
            self.trailing = PyBytes_FromStringAndSize(<const char*>p + pos, n - pos)
            return 1
        return 0

    cdef int _keep_line(self, const unsigned char* p, Py_ssize_t pos, Py_ssize_t n, str what) except -1:
        if n - pos >= MAX_LINE:
            raise BodyFramingError(f"{what} longer than {MAX_LINE} bytes")
        self._tail = PyBytes_FromStringAndSize(<const char*>p + pos, n - pos)
        return 0


#: The constants above, for tests/test_body_decoder.py to hold against the twin's.
LIMITS = {"READ_SIZE": READ_SIZE, "MAX_LINE": MAX_LINE, "MAX_TRAILER": MAX_TRAILER,
          "MAX_SIZE_DIGITS": MAX_SIZE_DIGITS}
FRAMINGS = {"LENGTH": LENGTH, "CLOSE": CLOSE, "CHUNKED": CHUNKED}


def body_decoder(method, status, headers, deliver):
    """`body_decoder.body_decoder`, with a `BodyPump` for every framing."""
    framing = body_framing(method, status, headers)
    if framing is None:
        return None
    return BodyPump(framing[0], framing[1], deliver)
