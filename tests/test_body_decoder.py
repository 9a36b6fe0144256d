"""Response body decoders, both twins (Python and the Cython pump), against h11 as the
oracle and against each other; then inside the upstream connection.

The property tests frame generated bodies (chunk sizes in either hex case, extensions,
trailers, bytes after the end), cut them anywhere, and check that the decoder delivers
what h11 delivers, says "complete" exactly once at the right read, and keeps what
follows, whether it is fed bytes or read into as a `BufferedProtocol`. The pool tests
run an `UpstreamPool` against canned responses on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.errors import RelayError, UpstreamLost
from relay.core.exchange import Headers, RequestHead, UpstreamTarget
from relay.upstream import _bodypump, body_decoder
from relay.upstream._bodypump import BodyPump
from relay.upstream.body_decoder import (
    CHUNKED,
    CLOSE,
    LENGTH,
    MAX_LINE,
    BodyDecoder,
    BodyFramingError,
    ChunkedDecoder,
    CloseDelimitedDecoder,
    ContentLengthDecoder,
    Deliver,
)
from relay.upstream.pool import UpstreamPool

PROPERTIES = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@dataclass(frozen=True)
class Twin:
    """One implementation's decoders, by framing."""

    name: str
    chunked: Callable[[Deliver], BodyDecoder]
    length: Callable[[int, Deliver], BodyDecoder]
    close: Callable[[Deliver], BodyDecoder]

    def __str__(self) -> str:
        return self.name


PYTHON = Twin("python", ChunkedDecoder, ContentLengthDecoder, CloseDelimitedDecoder)
CYTHON = Twin(
    "cython",
    lambda deliver: BodyPump(CHUNKED, 0, deliver),
    lambda length, deliver: BodyPump(LENGTH, length, deliver),
    lambda deliver: BodyPump(CLOSE, 0, deliver),
)
TWINS = pytest.mark.parametrize("twin", [PYTHON, CYTHON], ids=str)


# -- the oracle ---------------------------------------------------------------------------


def h11_reads(head: bytes, body: bytes, *, eof: bool = False) -> tuple[bytes, bytes]:
    """What h11 makes of `head` + `body` as the response to a GET: (data, trailing)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(head + body)
    if eof:
        conn.receive_data(b"")
    data = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            data.append(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return b"".join(data), conn.trailing_data[0]
        elif event is h11.NEED_DATA:
            raise AssertionError("h11 found the message incomplete")


def h11_rejects(head: bytes, body: bytes) -> bool:
    try:
        h11_reads(head, body, eof=True)
    except h11.RemoteProtocolError:
        return True
    return False


# -- generated bodies ---------------------------------------------------------------------

TOKENS = st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=8).map(str.encode)
EXTENSIONS = st.lists(
    st.one_of(
        TOKENS.map(lambda name: b";" + name),
        st.tuples(TOKENS, TOKENS).map(lambda nv: b";%s=%s" % nv),
        st.tuples(TOKENS, TOKENS).map(lambda nv: b';%s="%s"' % nv),
    ),
    max_size=2,
).map(b"".join)
TRAILERS = st.lists(
    st.tuples(TOKENS, st.text("abc xyz/=0123456789", max_size=12).map(str.encode)).map(
        lambda nv: b"%s: %s\r\n" % nv
    ),
    max_size=3,
).map(b"".join)


@st.composite
def size_lines(draw: st.DrawFn, size: int) -> bytes:
    """A chunk-size line: either hex case, maybe leading zeros, extensions, whitespace."""
    digits = b"%x" % size
    if draw(st.booleans()):
        digits = digits.upper()
    zeros = b"0" * draw(st.integers(0, 2))
    spaces = draw(st.sampled_from([b"", b"", b" ", b"\t "]))
    return zeros + digits + draw(EXTENSIONS) + spaces + b"\r\n"


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes, list[int]]:
    """(payload, its chunked framing, the offset at which each chunk ends)."""
    pieces = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
    framed, ends = b"", []
    for piece in pieces:
        framed += draw(size_lines(len(piece))) + piece + b"\r\n"
        ends.append(len(framed))
    framed += draw(size_lines(0)) + draw(TRAILERS) + b"\r\n"
    return b"".join(pieces), framed, ends


@st.composite
def cuts(draw: st.DrawFn, data: bytes, boundaries: list[int]) -> list[bytes]:
    """`data` in reads: random cuts (empty reads too), single bytes, whole, or at
    chunk boundaries (one whole chunk per read: the decoder's fast path)."""
    how = draw(st.sampled_from(["random", "single bytes", "whole", "boundaries"]))
    if how == "single bytes":
        return [data[i : i + 1] for i in range(len(data))]
    if how == "whole":
        return [data]
    points = boundaries if how == "boundaries" else []
    points = [*points, *draw(st.lists(st.integers(0, len(data)), max_size=30))]
    bounds = [0, *sorted(points), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def feed_all(decoder: BodyDecoder, reads: list[bytes]) -> list[int]:
    """Feeds every read; returns the indexes of the reads that completed the message."""
    return [i for i, read in enumerate(reads) if decoder.feed(read)]


def completing_read(reads: list[bytes], length: int) -> int:
    """The index of the read that holds the message's last byte."""
    offset = 0
    for i, read in enumerate(reads):
        offset += len(read)
        if offset >= length:
            return i
    raise AssertionError("the reads end before the message")


# -- properties ---------------------------------------------------------------------------


@TWINS
@PROPERTIES
@given(body=chunked_bodies(), extra=st.binary(max_size=20), data=st.data())
def test_chunked_matches_h11_however_cut(
    body: tuple[bytes, bytes, list[int]], extra: bytes, data: st.DataObject, twin: Twin
) -> None:
    payload, framed, ends = body
    assert h11_reads(CHUNKED_HEAD, framed + extra) == (payload, extra)
    reads = data.draw(cuts(framed + extra, ends))
    delivered: list[bytes] = []
    decoder = twin.chunked(delivered.append)
    assert feed_all(decoder, reads) == [completing_read(reads, len(framed))]
    assert b"".join(delivered) == payload
    assert all(delivered)  # never an empty piece
    assert decoder.trailing == extra
    decoder.feed_eof()  # a complete body: EOF is no error


@TWINS
@PROPERTIES
@given(payload=st.binary(min_size=1, max_size=2000), extra=st.binary(max_size=20), data=st.data())
def test_content_length_matches_h11_however_cut(
    payload: bytes, extra: bytes, data: st.DataObject, twin: Twin
) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload)
    assert h11_reads(head, payload + extra) == (payload, extra)
    reads = data.draw(cuts(payload + extra, [len(payload)]))
    delivered: list[bytes] = []
    decoder = twin.length(len(payload), delivered.append)
    assert feed_all(decoder, reads) == [completing_read(reads, len(payload))]
    assert b"".join(delivered) == payload
    assert all(delivered)
    assert decoder.trailing == extra


@TWINS
@PROPERTIES
@given(payload=st.binary(max_size=2000), data=st.data())
def test_close_delimited_ends_only_at_eof(payload: bytes, data: st.DataObject, twin: Twin) -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    assert h11_reads(head, payload, eof=True) == (payload, b"")
    delivered: list[bytes] = []
    decoder = twin.close(delivered.append)
    assert feed_all(decoder, data.draw(cuts(payload, []))) == []
    decoder.feed_eof()
    assert b"".join(delivered) == payload


@TWINS
@PROPERTIES
@given(body=chunked_bodies(), cut=st.data())
def test_chunked_cut_short_is_an_error_at_eof(
    body: tuple[bytes, bytes, list[int]], cut: st.DataObject, twin: Twin
) -> None:
    _, framed, _ = body
    short = framed[: cut.draw(st.integers(0, len(framed) - 1))]
    decoder = twin.chunked(lambda _: None)
    assert not decoder.feed(short)
    with pytest.raises(BodyFramingError):
        decoder.feed_eof()


@TWINS
def test_one_whole_chunk_per_read_is_one_piece_per_read(twin: Twin) -> None:
    delivered: list[bytes] = []
    decoder = twin.chunked(delivered.append)
    events = [b"event: ping\ndata: {}\n\n", b"x" * 300, b"y"]
    for event in events:
        assert not decoder.feed(b"%x\r\n%s\r\n" % (len(event), event))
        assert delivered[-1] == event
    assert decoder.feed(b"0\r\n\r\n")
    assert delivered == events


@TWINS
def test_content_length_read_within_the_body_is_passed_on_uncopied(twin: Twin) -> None:
    delivered: list[bytes] = []
    decoder = twin.length(10, delivered.append)
    read = b"12345"
    assert not decoder.feed(read)
    assert delivered[0] is read


@TWINS
def test_content_length_cut_short_is_an_error_at_eof(twin: Twin) -> None:
    decoder = twin.length(10, lambda _: None)
    decoder.feed(b"12345")
    with pytest.raises(BodyFramingError, match="5 bytes"):
        decoder.feed_eof()


# -- malformed framing --------------------------------------------------------------------

MALFORMED = {
    "non-hex size": b"1g\r\nx\r\n0\r\n\r\n",
    "empty size": b"\r\nx\r\n0\r\n\r\n",
    "negative size": b"-1\r\nx\r\n0\r\n\r\n",
    "0x prefix": b"0x1\r\nx\r\n0\r\n\r\n",
    "plus sign": b"+1\r\nx\r\n0\r\n\r\n",
    "underscore": b"1_0\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n",
    "leading space": b" 1\r\nx\r\n0\r\n\r\n",
    "space before extension": b"1 ;a\r\nx\r\n0\r\n\r\n",
    "21 hex digits": b"0" * 20 + b"1\r\nx\r\n0\r\n\r\n",
    "data longer than its size": b"1\r\nxy\r\n0\r\n\r\n",
    "LF only after data": b"1\r\nx\n0\r\n\r\n",
    "no CRLF after data": b"1\r\nx0\r\n\r\n",
    "trailer without colon": b"0\r\nnot a field\r\n\r\n",
}


@TWINS
@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chunked_framing_is_an_error_however_cut(body: bytes, twin: Twin) -> None:
    assert h11_rejects(CHUNKED_HEAD, body)
    with pytest.raises(BodyFramingError):
        twin.chunked(lambda _: None).feed(body)
    bytewise = twin.chunked(lambda _: None)
    with pytest.raises(BodyFramingError):
        for i in range(len(body)):
            bytewise.feed(body[i : i + 1])
        bytewise.feed_eof()


@TWINS
@pytest.mark.parametrize("what", ["size line", "trailer line"])
def test_a_line_without_end_is_refused_at_the_bound_not_buffered(what: str, twin: Twin) -> None:
    start = b"1;" if what == "size line" else b"0\r\nx-long: "
    decoder = twin.chunked(lambda _: None)
    decoder.feed(start)
    with pytest.raises(BodyFramingError, match=f"longer than {MAX_LINE}"):
        for _ in range(MAX_LINE):
            decoder.feed(b"a")


@TWINS
def test_a_long_extension_within_the_bound_is_fine(twin: Twin) -> None:
    delivered: list[bytes] = []
    decoder = twin.chunked(delivered.append)
    line = b"1;" + b"e" * (MAX_LINE - 5) + b"\r\n"
    assert len(line) == MAX_LINE - 1
    assert decoder.feed(line + b"x\r\n0\r\n\r\n")
    assert delivered == [b"x"]


# -- the twins against each other, and read into as a BufferedProtocol -------------------


def test_the_pump_has_the_twins_limits() -> None:
    python_limits = {
        name: getattr(body_decoder, name)
        for name in ("READ_SIZE", "MAX_LINE", "MAX_TRAILER", "MAX_SIZE_DIGITS")
    }
    assert python_limits == _bodypump.LIMITS
    assert _bodypump.FRAMINGS == {"LENGTH": LENGTH, "CLOSE": CLOSE, "CHUNKED": CHUNKED}


def outcome(make: Callable[[Deliver], BodyDecoder], reads: list[bytes], eof: bool) -> list[object]:
    """All a decoder does with `reads` (and then EOF): each read's pieces delivered and
    whether it completed the message, then its error, if any, and what trailed."""
    record: list[object] = []
    pieces: list[bytes] = []
    decoder = make(pieces.append)
    try:
        for read in reads:
            complete = decoder.feed(read)
            record.append((pieces[:], complete))
            pieces.clear()
        if eof:
            decoder.feed_eof()
    except BodyFramingError as exc:
        record.append(("error", str(exc)))
    record.append(decoder.trailing)
    return record


# Mostly broken chunked bodies: framing bytes in every order, with some payload.
FRAMING_SOUP = st.lists(
    st.sampled_from(
        [
            b"0",
            b"1",
            b"a",
            b"F",
            b"g",
            b";",
            b"x=y",
            b" ",
            b"\t",
            b"\r",
            b"\n",
            b"\r\n",
            b":",
            b"k: v",
            b"-",
            b"10",
            b"00000000000000000000001",
        ]
    )
    | st.binary(max_size=40),
    max_size=40,
).map(b"".join)


@PROPERTIES
@given(body=FRAMING_SOUP | chunked_bodies().map(lambda b: b[1]), data=st.data())
def test_the_twins_agree_on_any_chunked_bytes_however_cut(body: bytes, data: st.DataObject) -> None:
    reads = data.draw(cuts(body, []))
    eof = data.draw(st.booleans())
    assert outcome(CYTHON.chunked, reads, eof) == outcome(PYTHON.chunked, reads, eof)


@PROPERTIES
@given(body=st.binary(max_size=300), length=st.integers(1, 300), data=st.data())
def test_the_twins_agree_on_sized_and_close_delimited_bodies(
    body: bytes, length: int, data: st.DataObject
) -> None:
    reads = data.draw(cuts(body, []))
    eof = data.draw(st.booleans())
    sized = outcome(lambda deliver: CYTHON.length(length, deliver), reads, eof)
    assert sized == outcome(lambda deliver: PYTHON.length(length, deliver), reads, eof)
    assert outcome(CYTHON.close, reads, eof) == outcome(PYTHON.close, reads, eof)


class Owner:
    """What the upstream connection hears from the decoder it handed its transport."""

    def __init__(self) -> None:
        self.ended = 0
        self.failed: list[str] = []

    def body_ended(self) -> None:
        self.ended += 1

    def body_failed(self, message: str) -> None:
        self.failed.append(message)


def read_into(decoder: BodyDecoder, reads: list[bytes]) -> Owner:
    """Hands `reads` over as uvloop does: get_buffer, bytes copied in, buffer_updated.
    Stops where the owner takes the transport back (the body ended or broke)."""
    owner = Owner()
    decoder.owner = owner  # type: ignore[assignment]
    for read in reads:
        if owner.ended or owner.failed:
            break
        view = memoryview(decoder.get_buffer(-1))
        assert len(view) >= len(read)
        view[: len(read)] = read
        decoder.buffer_updated(len(read))
    return owner


@TWINS
@PROPERTIES
@given(body=chunked_bodies(), extra=st.binary(max_size=20), data=st.data())
def test_read_into_as_a_buffered_protocol_it_matches_h11(
    body: tuple[bytes, bytes, list[int]], extra: bytes, data: st.DataObject, twin: Twin
) -> None:
    payload, framed, ends = body
    reads = [read for read in data.draw(cuts(framed + extra, ends)) if read]
    delivered: list[bytes] = []
    decoder = twin.chunked(delivered.append)
    owner = read_into(decoder, reads)
    assert (owner.ended, owner.failed) == (1, [])
    assert b"".join(delivered) == payload
    # What came in the read that ended it stays with the decoder; later reads are the
    # connection's (its next head), which the owner reads once it has the transport.
    last = completing_read(reads, len(framed))
    assert decoder.trailing == b"".join(reads[: last + 1])[len(framed) :]


@TWINS
@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_read_into_a_broken_body_tells_the_owner_once(body: bytes, twin: Twin) -> None:
    owner = read_into(twin.chunked(lambda _: None), [body[i : i + 1] for i in range(len(body))])
    assert owner.ended == 0
    assert len(owner.failed) == 1


# -- which decoder ------------------------------------------------------------------------


def parsed_head(method: bytes, head: bytes) -> h11.Response:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Response)
    return event


@pytest.mark.parametrize(
    ("method", "head", "kind"),
    [
        (b"GET", CHUNKED_HEAD, ChunkedDecoder),
        (b"GET", b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", ContentLengthDecoder),
        (b"GET", b"HTTP/1.1 200 OK\r\n\r\n", CloseDelimitedDecoder),
        (b"GET", b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", None),
        (b"HEAD", CHUNKED_HEAD, None),
        (b"GET", b"HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n", None),
        (b"GET", b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n", None),
    ],
)
def test_framing_follows_rfc_9112(method: bytes, head: bytes, kind: type | None) -> None:
    response = parsed_head(method, head)
    args = (method, response.status_code, response.headers, lambda _: None)
    decoder = body_decoder.body_decoder(*args)
    assert (None if decoder is None else type(decoder)) is kind
    # The pump decodes every framing, chosen by the same rules.
    assert (_bodypump.body_decoder(*args) is None) is (kind is None)


# -- inside the upstream connection -------------------------------------------------------


class CannedUpstream:
    """Answers each request on 127.0.0.1 with the next canned response, in one write."""

    def __init__(self, responses: list[bytes]) -> None:
        self._responses = iter(responses)
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> CannedUpstream:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def target(self) -> UpstreamTarget:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return UpstreamTarget(f"http://127.0.0.1:{port}", False, "127.0.0.1", port, "")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                response = next(self._responses)
                writer.write(response)
                if response.endswith(b"<close>"):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError, StopIteration):
            writer.close()


class Recorder:
    """A ResponseSink that keeps what it is given."""

    def __init__(self) -> None:
        self.status = 0
        self.body = b""
        self.error: RelayError | None = None
        self.done = asyncio.get_running_loop().create_future()

    def on_response_head(self, status: int, headers: Headers) -> None:
        self.status = status

    def on_response_body(self, data: bytes) -> None:
        self.body += data

    def on_response_end(self) -> None:
        self.done.set_result(None)

    def on_upstream_failed(self, error: RelayError) -> None:
        self.error = error
        self.done.set_result(None)

    def on_upstream_paused(self) -> None: ...
    def on_upstream_resumed(self) -> None: ...


def exchanges(responses: list[bytes], method: bytes = b"GET") -> tuple[list[Recorder], int]:
    """Each response fetched in turn through one pool; the recorders and the number of
    connections upstream saw."""
    return asyncio.run(_exchanges(responses, method))


async def _exchanges(responses: list[bytes], method: bytes) -> tuple[list[Recorder], int]:
    async with CannedUpstream(responses) as upstream:
        pool = UpstreamPool(upstream.target, connect_timeout=2.0, tls=None, protocol="http/1.1")
        recorders = []
        for _ in responses:
            recorder = Recorder()
            exchange = await pool.open(RequestHead(method, b"/", [], None), recorder)
            exchange.send_end()
            await asyncio.wait_for(recorder.done, 5.0)
            recorders.append(recorder)
        pool.close()
        return recorders, upstream.connections


def chunked_response(*chunks: bytes, extra: bytes = b"") -> bytes:
    framed = b"".join(b"%X;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    return CHUNKED_HEAD + framed + b"0\r\nx-trailer: yes\r\n\r\n" + extra


def bodies(recorders: list[Recorder]) -> Iterator[bytes]:
    for recorder in recorders:
        assert recorder.error is None and recorder.status == 200
        yield recorder.body


def test_chunked_and_sized_bodies_keep_the_connection_for_the_next_request() -> None:
    sized = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
    responses = [chunked_response(b"a", b"b" * 300), sized, chunked_response(b"c")]
    recorders, connections = exchanges(responses)
    assert list(bodies(recorders)) == [b"a" + b"b" * 300, b"hello", b"c"]
    assert connections == 1


@pytest.mark.parametrize(
    "first",
    [
        chunked_response(b"a").replace(b"chunked\r\n", b"chunked\r\nconnection: close\r\n"),
        b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\na",
        chunked_response(b"a", extra=b"HTTP/1.1 200 OK\r\n"),  # bytes nobody asked for
        b"HTTP/1.1 200 OK\r\n\r\na<close>",  # close-delimited
    ],
    ids=["connection close", "HTTP/1.0", "bytes after the end", "close-delimited"],
)
def test_a_connection_that_cannot_be_trusted_again_is_not_pooled(first: bytes) -> None:
    recorders, connections = exchanges([first, chunked_response(b"b")])
    assert [body[:1] for body in bodies(recorders)] == [b"a", b"b"]
    assert connections == 2


@pytest.mark.parametrize(("extra", "connections"), [(b"", 1), (b"stray", 2)])
def test_a_head_request_reuses_the_connection_without_reading_a_body(
    extra: bytes, connections: int
) -> None:
    head = CHUNKED_HEAD  # a HEAD answer describes the body it does not send
    recorders, opened = exchanges([head + extra, head], method=b"HEAD")
    assert list(bodies(recorders)) == [b"", b""]
    assert opened == connections


def test_broken_chunk_framing_fails_the_exchange_as_upstream_lost() -> None:
    recorders, _ = exchanges([CHUNKED_HEAD + b"5\r\nabcde\r\nzz\r\n"])
    error = recorders[0].error
    assert isinstance(error, UpstreamLost)
    assert "broke HTTP/1.1: malformed chunk-size line" in error.message
    assert recorders[0].body == b"abcde"
