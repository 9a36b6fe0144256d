"""HTTP/1.1 response bodies, decoded without h11 (RFC 9112 sections 6 and 7.1).

A decoder is fed bytes as they arrive and hands each piece of body to a `deliver`
callable; `feed` returns True on the call that completes the message. h11 parses the
response head; once it has, the body bypasses it, because h11's per-chunk event
machinery was close to half of the relay's CPU. The common case, one whole chunk per
read, costs one `find`, one `int`, and the payload slice.

A decoder is also the connection's asyncio `BufferedProtocol` while its body is read
(`Pumped`): relay/upstream/http1.py hands it the transport after the head. This is
the pure-Python twin of relay/upstream/_bodypump.pyx, which does the same in C;
relay/upstream/body_pump.py picks one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

#: What one read may bring (uvloop's own read buffer is as large).
READ_SIZE = 256 * 1024
#: A chunk-size line (size, extensions, CRLF) or trailer line longer than this is
#: broken framing, not something to buffer.
MAX_LINE = 4096
#: The whole trailer section, which the relay reads and discards.
MAX_TRAILER = 64 * 1024
#: As h11: a chunk size of more hex digits than this is an attack, not a body.
MAX_SIZE_DIGITS = 20

_HEX = b"0123456789abcdefABCDEF"
_OWS = b" \t"
NO_BODY_STATUS = frozenset({204, 304})

Deliver = Callable[[bytes], None]


# How a response body is framed (RFC 9112 section 6.3).
LENGTH, CLOSE, CHUNKED = range(3)


class BodyFramingError(Exception):
    """Upstream framed a response body wrongly; the connection cannot be trusted."""


class PumpOwner(Protocol):
    """The upstream connection whose body a decoder reads (relay/upstream/http1.py):
    told when a read ends the body or breaks it, and of the transport's other events."""

    def body_ended(self) -> None: ...
    def body_failed(self, message: str) -> None: ...
    def eof_received(self) -> bool: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class BodyDecoder(Protocol):
    """One response body being decoded, and its connection's protocol meanwhile."""

    #: Bytes received after the end of the message (complete decoders only).
    trailing: bytes
    #: Set before the decoder is made the connection's protocol.
    owner: PumpOwner | None

    def feed(self, data: bytes) -> bool:
        """Deliver the body bytes in `data`; True on the call that ends the message."""
        ...

    def feed_eof(self) -> None:
        """Upstream closed: ends a close-delimited body, else raises BodyFramingError."""
        ...

    def stop(self) -> None: ...
    def get_buffer(self, sizehint: int) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> None: ...


@runtime_checkable
class ExpressBody(Protocol):
    """A decoder that can also do the stream's per-piece work itself (the Cython pump's
    express path): scan, count and time each piece, copy it into `journal` if there is
    one, then `write` it (if there is a writer), framed as an HTTP/1.1 chunk if
    `chunked`."""

    def express(
        self,
        write: Callable[[bytes], object] | None,
        chunked: bool,
        scanner: object,
        last_byte: float,
        journal: object = None,
    ) -> None: ...

    def redirect(
        self, write: Callable[[bytes], object] | None, chunked: bool, journal: object = None
    ) -> None: ...

    def take_progress(self) -> tuple[int, float, float]: ...
    def rebase(self, last_byte: float) -> None: ...


def body_framing(
    method: bytes, status: int, headers: Iterable[tuple[bytes, bytes]]
) -> tuple[int, int] | None:
    """How a response's body is framed, as (LENGTH, CLOSE or CHUNKED; its length), or
    None when no body follows the head.

    RFC 9112 section 6.3 as h11 applies it; `headers` are the ones h11 parsed (names
    lower-case, Transfer-Encoding only ever `chunked`, Content-Length validated).
    """
    if method == b"HEAD" or status in NO_BODY_STATUS:
        return None
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return CHUNKED, 0
        if name == b"content-length":
            length = int(value)
    if length is None:
        return CLOSE, 0
    return (LENGTH, length) if length else None


def body_decoder(
    method: bytes, status: int, headers: Iterable[tuple[bytes, bytes]], deliver: Deliver
) -> BodyDecoder | None:
    """The decoder for a response's body, or None when no body follows the head."""
    framing = body_framing(method, status, headers)
    if framing is None:
        return None
    kind, length = framing
    if kind == CHUNKED:
        return ChunkedDecoder(deliver)
    if kind == LENGTH:
        return ContentLengthDecoder(length, deliver)
    return CloseDelimitedDecoder(deliver)


# One read buffer for every connection: the loop is single-threaded and each read is
# decoded before the next one starts, so nothing a decoder keeps ever lives in it.
_READ = bytearray(READ_SIZE)
_READ_VIEW = memoryview(_READ)


def _nowhere(data: bytes) -> None:
    return


class Pumped(asyncio.BufferedProtocol):
    """The asyncio `BufferedProtocol` face of a decoder (`feed` and `trailing` are the
    subclass's): reads go into the shared buffer, and then to `feed`."""

    __slots__ = ()
    owner: PumpOwner | None
    trailing: bytes
    _deliver: Deliver

    def feed(self, data: bytes) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        """The exchange is abandoned: nothing more is delivered, this read included."""
        self._deliver = _nowhere

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        owner = self.owner
        assert owner is not None
        try:
            complete = self.feed(bytes(_READ_VIEW[:nbytes]))
        except BodyFramingError as exc:
            owner.body_failed(str(exc))
            return
        if complete:
            owner.body_ended()

    def eof_received(self) -> bool:
        assert self.owner is not None
        return self.owner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.owner is not None
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        assert self.owner is not None
        self.owner.pause_writing()

    def resume_writing(self) -> None:
        assert self.owner is not None
        self.owner.resume_writing()


class ContentLengthDecoder(Pumped):
    """A body of `content-length` bytes."""

    __slots__ = ("_deliver", "_remaining", "owner", "trailing")

    def __init__(self, length: int, deliver: Deliver) -> None:
        assert length > 0
        self.owner = None
        self._deliver = deliver
        self._remaining = length
        self.trailing = b""

    def feed(self, data: bytes) -> bool:
        remaining = self._remaining
        if not remaining:
            self.trailing += data
            return False
        size = len(data)
        if size < remaining:
            self._remaining = remaining - size
            if size:
                self._deliver(data)
            return False
        self._remaining = 0
        self._deliver(data if size == remaining else data[:remaining])
        self.trailing = data[remaining:]
        return True

    def feed_eof(self) -> None:
        if self._remaining:
            raise BodyFramingError(
                f"upstream closed with {self._remaining} bytes of the body still to come"
            )


class CloseDelimitedDecoder(Pumped):
    """A body without framing headers: it ends when upstream closes the connection."""

    __slots__ = ("_deliver", "owner", "trailing")

    def __init__(self, deliver: Deliver) -> None:
        self.owner = None
        self._deliver = deliver
        self.trailing = b""

    def feed(self, data: bytes) -> bool:
        if data:
            self._deliver(data)
        return False

    def feed_eof(self) -> None:
        """EOF is this body's end: nothing is missing."""


# ChunkedDecoder states: what the next bytes are.
_SIZE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedDecoder(Pumped):
    """A `transfer-encoding: chunked` body (RFC 9112 section 7.1).

    Chunk data is delivered as it arrives, never buffered; only an incomplete size
    line, trailer line or data CRLF is kept for the next read (at most MAX_LINE).
    Chunk extensions and trailer fields are read and discarded.
    """

    __slots__ = (
        "_deliver",
        "_remaining",
        "_state",
        "_tail",
        "_trailer_left",
        "owner",
        "trailing",
    )

    def __init__(self, deliver: Deliver) -> None:
        self.owner = None
        self._deliver = deliver
        self._state = _SIZE
        self._remaining = 0  # of the current chunk's data
        self._tail = b""  # an incomplete line (or CR) from the previous read
        self._trailer_left = MAX_TRAILER
        self.trailing = b""

    def feed(self, data: bytes) -> bool:
        if self._state == _SIZE and not self._tail:
            # The common case, one whole chunk per read (one SSE event per upstream
            # write): one find, one int, one slice, no loop.
            eol = data.find(b"\r\n", 0, MAX_SIZE_DIGITS + 2)
            if eol > 0:
                line = data[:eol]
                if not line.lstrip(_HEX):
                    start = eol + 2
                    stop = start + int(line, 16)
                    if stop > start and len(data) == stop + 2 and data.startswith(b"\r\n", stop):
                        self._deliver(data[start:stop])
                        return False
        return self._feed_any(data)

    def _feed_any(self, data: bytes) -> bool:
        """Any bytes in any state: split chunks, several per read, the last chunk."""
        state = self._state
        if state == _DONE:
            self.trailing += data
            return False
        if self._tail:
            # Rare (a read split a size line): joining copies this read once.
            data = self._tail + data
            self._tail = b""
        pos = 0
        end = len(data)
        while pos < end:
            if state == _SIZE:
                eol = data.find(b"\r\n", pos, pos + MAX_LINE)
                if eol < 0:
                    self._keep_line(data, pos, "chunk-size line")
                    break
                size = _chunk_size(data[pos:eol])
                pos = eol + 2
                if size:
                    self._remaining = size
                    state = _DATA
                else:
                    state = _TRAILER
            elif state == _DATA:
                stop = pos + self._remaining
                if stop <= end:
                    self._deliver(data[pos:stop])
                    pos = stop
                    state = _DATA_END
                else:
                    # Part of a chunk: deliver it now (no copy for a mid-chunk read).
                    self._deliver(data[pos:] if pos else data)
                    self._remaining = stop - end
                    pos = end
            elif state == _DATA_END:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                    state = _SIZE
                elif data[pos:] == b"\r":
                    self._tail = b"\r"
                    pos = end
                else:
                    raise BodyFramingError(
                        f"chunk data not followed by CRLF: {data[pos : pos + 2]!r}"
                    )
            elif state == _TRAILER:
                eol = data.find(b"\r\n", pos, pos + MAX_LINE)
                if eol < 0:
                    self._keep_line(data, pos, "trailer line")
                    break
                self._trailer_left -= eol + 2 - pos
                if self._trailer_left < 0:
                    raise BodyFramingError(f"trailer section longer than {MAX_TRAILER} bytes")
                if eol == pos:
                    pos += 2
                    state = _DONE
                    break
                if data.find(b":", pos, eol) < 0:
                    raise BodyFramingError(f"malformed trailer field: {data[pos:eol]!r}")
                pos = eol + 2
        self._state = state
        if state == _DONE:
            self.trailing = data[pos:]
            return True
        return False

    def feed_eof(self) -> None:
        if self._state != _DONE:
            raise BodyFramingError("upstream closed in the middle of a chunked body")

    def _keep_line(self, data: bytes, pos: int, what: str) -> None:
        if len(data) - pos >= MAX_LINE:
            raise BodyFramingError(f"{what} longer than {MAX_LINE} bytes")
        self._tail = data[pos:]


def _chunk_size(line: bytes) -> int:
    """The size on a chunk-size line (CRLF removed): hex digits, then optional
    `;extensions` or trailing whitespace (which h11 tolerates too)."""
    rest = line.lstrip(_HEX)
    digits = len(line) - len(rest)
    if not 0 < digits <= MAX_SIZE_DIGITS or (
        rest and rest[0] != 0x3B and rest.strip(_OWS)  # 0x3B: ";"
    ):
        raise BodyFramingError(f"malformed chunk-size line: {line[:64]!r}")
    # int() alone would also take "0x1f", "+1f", "1_f" and spaces: hence the checks.
    return int(line[:digits] if rest else line, 16)
