"""`id:` lines for a resumable stream that asks for them (`relay-event-ids: 1`), and
`Last-Event-ID` resumes: the writer against a whole-stream parser (the ids are the true
offsets, whatever the line endings and splits), the official SDK's decoder, and the
relay end to end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from anthropic._streaming import ServerSentEvent, SSEDecoder
from hypothesis import given, settings

from relay.core.errors import error_frame
from relay.core.event_ids import EventIdWriter, takes_event_ids, wants_event_ids
from relay.core.exchange import Headers
from relay.core.journal import Journal
from relay.core.keepalive import COMMENT_FRAME, PING_FRAME
from relay.core.resumable import ResumableClient
from tests.clients import raw_stream, script, sdk_stream
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_resume import PartialStream, direct
from tests.test_scanner import BOM, PROPERTIES, streams_and_chunks

SSE_HEAD: Headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
IDS = {"relay-resumable": "1", "relay-event-ids": "1", "x-api-key": "sk-owner"}
_LINE = re.compile(rb"\r\n|\r|\n")

Frame = tuple[bytes, ...]  # a dispatched frame's field lines


def frames_of(stream: bytes) -> list[tuple[Frame, int]]:
    """Each dispatched frame of a whole stream (WHATWG line rules, a leading BOM skipped)
    and the offset right after the line ending that dispatched it."""
    found: list[tuple[Frame, int]] = []
    fields: list[bytes] = []
    position = 3 if stream.startswith(BOM) else 0
    for ending in _LINE.finditer(stream, position):
        line = stream[position : ending.start()]
        position = ending.end()
        if not line and fields:
            found.append((tuple(fields), position))
            fields = []
        elif line and not line.startswith(b":"):
            fields.append(line)
    return found


def with_ids(chunks: list[bytes]) -> list[bytes]:
    """The chunks as the writer turns them out, one write each."""
    writer, out, offset = EventIdWriter(), [], 0
    for chunk in chunks:
        out.append(writer.add_ids(chunk, offset))
        offset += len(out[-1])
    return out


def check_ids(chunks: list[bytes]) -> bytes:
    """The writer's stream for `chunks`, after checking what every id must be."""
    written = with_ids(chunks)
    stream = b"".join(written)
    boundaries = {sum(len(w) for w in written[:k]) for k in range(len(written) + 1)}
    frames = frames_of(stream)
    # Every frame got one id line, last, and otherwise is the frame upstream sent.
    assert [fields[:-1] for fields, _ in frames] == [f for f, _ in frames_of(b"".join(chunks))]
    for index, (fields, end) in enumerate(frames):
        event_id = int(fields[-1].removeprefix(b"id: "))
        assert fields[-1] == b"id: %d" % event_id
        # Right after the dispatching ending; a `\r\n` the writes split at its `\r` is
        # counted as a lone `\r` (the `\n` is an empty line with nothing to dispatch).
        split_crlf = stream[event_id - 1 : event_id + 1] == b"\r\n" and event_id in boundaries
        assert event_id == end or (event_id == end - 1 and split_crlf), (index, end)
        # A resume from the id gets exactly the frames after it, ids and all.
        assert [f for f, _ in frames_of(stream[event_id:])] == [f for f, _ in frames[index + 1 :]]
        assert [f for f, _ in frames_of(stream[:event_id])] == [f for f, _ in frames[: index + 1]]
    return stream


# -- the writer ----------------------------------------------------------------------

EVENT = b'event: content_block_delta\ndata: {"type":"content_block_delta"}\n\n'


def test_an_id_is_the_offset_after_its_event_and_counts_its_own_digits() -> None:
    stream = b"".join(with_ids([EVENT]))
    assert stream == EVENT[:-1] + b"id: %d\n\n" % len(stream)
    # Across the sizes where the id's own digits take it to 3 and to 4 digits.
    for size in [*range(75, 95), *range(970, 990)]:
        check_ids([b"data: " + b"x" * size + b"\n\n", EVENT])


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_the_id_line_ends_as_the_dispatching_line_does(eol: bytes) -> None:
    event = b"event: a" + eol + b"data: {}" + eol + eol
    stream = check_ids([event])
    assert stream == event[: -len(eol)] + b"id: %d" % len(stream) + eol + eol
    check_ids([event, event + event])


def test_split_endings_bom_comments_keepalives_and_relay_frames() -> None:
    check_ids([b"data: x\r", b"\n\r", b"\ndata: y\r\n\r", b"\n"])
    check_ids([b"data: x\r\r", b"\n: c\n\ndata: y\r\r"])
    check_ids([BOM[:1], BOM[1:] + b"event: message_start\n", b"data: {}\n\n", COMMENT_FRAME])
    check_ids([b"event: a\ndata: 1\n\n", COMMENT_FRAME, PING_FRAME, COMMENT_FRAME, EVENT])
    # Upstream died mid-frame: the relay closes the frame as a ping, then its error frame.
    check_ids(
        [
            b'event: content_block_delta\ndata: {"ty',
            b"\nevent: ping\n\n",
            error_frame("api_error", "lost"),
        ]
    )


def test_comment_only_chunks_are_passed_on_as_they_are() -> None:
    writer, offset = EventIdWriter(), 0
    for chunk in (COMMENT_FRAME, b"data: x\n", b": inside the frame\n"):
        assert writer.add_ids(chunk, offset) is chunk
        offset += len(chunk)
    assert writer.add_ids(b"\n", offset) == b"id: %d\n\n" % (offset + 8)


def test_a_resume_from_an_id_that_split_a_crlf_reads_right_in_the_sdk() -> None:
    stream = check_ids([b"event: a\r\ndata: 1\r\n\r", b"\nevent: b\r\ndata: 2\r\n\r\n"])
    first_id = int(sdk_events(stream)[0].id or 0)
    assert stream[first_id : first_id + 1] == b"\n"  # an empty line, nothing to dispatch
    assert content(sdk_events(stream[first_id:])) == [("b", "2")]


# Each example parses the stream again at every id: fewer of them than the scanner's.
@settings(PROPERTIES, max_examples=60)
@given(case=streams_and_chunks([b"", BOM, b"\xef\xbb", b"\n"]))
def test_ids_are_the_true_offsets_however_split(case: tuple[bytes, list[bytes]]) -> None:
    check_ids(case[1])


def sdk_arrivals(chunks: list[bytes]) -> list[tuple[int, str | None, str]]:
    """The SDK decoder's named events (the SDK skips the rest), each with the number of
    chunks read when it came out."""
    read = 0

    def source() -> Iterator[bytes]:
        nonlocal read
        for chunk in chunks:
            read += 1
            yield chunk

    return [
        (read, sse.event, sse.data)
        for sse in SSEDecoder().iter_bytes(source())
        if sse.event is not None
    ]


@PROPERTIES
@given(case=streams_and_chunks([b""]))
def test_the_sdk_reads_the_same_events_and_none_later(case: tuple[bytes, list[bytes]]) -> None:
    """Its decoder finds an event's end only as `\\n\\n`, `\\r\\r` or `\\r\\n\\r\\n`: an
    id line ending otherwise than its frame would hold events back."""
    _, chunks = case
    plain, ided = sdk_arrivals(chunks), sdk_arrivals(with_ids(chunks))
    assert [event[1:] for event in ided] == [event[1:] for event in plain]
    assert all(a[0] <= b[0] for a, b in zip(ided, plain, strict=True))


# -- in the resumable client -------------------------------------------------------


class Recorder:
    """A `ClientSide` that keeps what it was sent."""

    def __init__(self) -> None:
        self.head: tuple[int, Headers] | None = None
        self.body = bytearray()

    def send_head(self, status: int, headers: Headers) -> None:
        self.head = (status, headers)

    def send_body(self, data: bytes) -> None:
        self.body += data

    def send_end(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


def test_the_opt_in_header() -> None:
    assert wants_event_ids([(b"relay-event-ids", b"1")])
    assert not wants_event_ids([(b"relay-event-ids", b"0")])
    assert not wants_event_ids([(b"relay-resumable", b"1")])


@pytest.mark.parametrize(
    ("status", "headers", "takes"),
    [
        (200, SSE_HEAD, True),
        (200, [(b"content-type", b"Text/Event-Stream")], True),
        (200, [*SSE_HEAD, (b"content-encoding", b"identity")], True),
        (200, [*SSE_HEAD, (b"content-encoding", b"gzip")], False),
        (200, [(b"content-type", b"application/json")], False),
        (429, SSE_HEAD, False),
    ],
)
def test_only_an_uncompressed_2xx_event_stream_gets_ids(
    status: int, headers: Headers, takes: bool
) -> None:
    assert takes_event_ids(status, headers) is takes


@pytest.mark.parametrize(
    ("asked", "status", "ids"), [(True, 200, True), (False, 200, False), (True, 529, False)]
)
def test_the_journal_keeps_what_the_client_got_and_replays_the_same_ids(
    asked: bool, status: int, ids: bool
) -> None:
    first, later = Recorder(), Recorder()
    side = ResumableClient(first, Journal(1 << 20), "s" * 32, event_ids=asked)
    side.send_head(status, SSE_HEAD)
    chunks = [EVENT, COMMENT_FRAME, EVENT[:10], EVENT[10:] + EVENT]
    for chunk in chunks:
        side.send_body(chunk)
    assert (b"id: " in first.body) is ids
    assert bytes(first.body) == (b"".join(with_ids(chunks)) if ids else b"".join(chunks))
    assert side.journal.size == len(first.body)
    assert side.attach(later, 100, now=0.0) == len(first.body) - 100
    assert later.body == first.body[100:]


# -- end to end ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def relay(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, "--resume-grace", "3", "--resume-retain", "2") as process:
        yield process


def sdk_events(data: bytes) -> list[ServerSentEvent]:
    """The events of a whole body the SDK would act on (named ones)."""
    return [sse for sse in SSEDecoder().iter_bytes(iter([data])) if sse.event is not None]


def content(events: list[ServerSentEvent]) -> list[tuple[str | None, str]]:
    return [(sse.event, sse.data) for sse in events]


def get_stream(relay: RelayProcess, stream_id: str, **kwargs: Any) -> httpx2.Response:
    with httpx2.Client(timeout=30) as client:
        return client.get(f"{relay.url}/relay/v1/streams/{stream_id}", **kwargs)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"])
def test_a_cut_stream_resumes_from_its_last_event_id_with_every_event_once(
    sim: SimServer, relay: RelayProcess, ending: str
) -> None:
    fields = script(gaps=[[3, 1.0]], line_ending=ending)
    expected = content(sdk_events(direct(sim, fields)))
    first = PartialStream(relay.port, {**IDS, **fields})
    first.read_until(500)  # a few events: the first alone is over 300 bytes
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    have = bytes(first.body[:-3])  # the connection dropped inside an event
    parsed = sdk_events(have)
    assert parsed and parsed[-1].id is not None
    last_event_id = int(parsed[-1].id)
    assert last_event_id < len(have)
    answer = get_stream(
        relay, stream_id, headers={"x-api-key": "sk-owner", "last-event-id": str(last_event_id)}
    )
    assert answer.status_code == 200
    resumed = sdk_events(answer.content)
    assert content(parsed + resumed) == expected
    ids = [int(sse.id or 0) for sse in parsed + resumed]
    assert ids == sorted(set(ids)) and ids[-1] == last_event_id + len(answer.content)


def test_an_explicit_offset_wins_over_last_event_id_and_a_bad_one_is_refused(
    sim: SimServer, relay: RelayProcess
) -> None:
    fields = script(gaps=[[3, 1.0]])
    expected = direct(sim, fields)
    first = PartialStream(relay.port, {**IDS, **fields})
    first.read_until(100)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    have = bytes(first.body)
    bad = get_stream(relay, stream_id, headers={"x-api-key": "sk-owner", "last-event-id": "x1"})
    assert bad.status_code == 400
    assert "Last-Event-ID" in bad.json()["error"]["message"]
    answer = get_stream(
        relay,
        stream_id,
        params={"offset": len(have)},
        headers={"x-api-key": "sk-owner", "last-event-id": "0"},
    )
    assert content(sdk_events(have + answer.content)) == content(sdk_events(expected))


def test_the_sdk_streams_the_same_message_with_ids_and_keepalives(
    sim: SimServer, relay: RelayProcess
) -> None:
    """Keepalive comments between events (a gap, the relay's at 0.1 s) make the SDK's
    decoder dispatch unnamed events once it has seen an id; the SDK skips them."""
    fields = script(gaps=[[2, 0.5], [5, 0.3]])
    events, final = sdk_stream(sim.url, fields)
    assert sdk_stream(relay.url, {**IDS, **fields}) == (events, final)
    status, headers, body = raw_stream(relay.url, headers={**IDS, **fields})
    assert status == 200 and "relay-stream-id" in headers
    named = sdk_events(body)
    assert len(named) == len(sdk_events(direct(sim, fields))) and b": keepalive\n\n" in body
    ids = [int(sse.id or 0) for sse in named]
    assert all(body[:n].endswith(b"id: %d\n\n" % n) for n in ids)
    assert all(r.header(b"relay-event-ids") is None for r in sim.requests)


def test_without_the_opt_in_not_a_byte_changes(sim: SimServer) -> None:
    with RelayProcess(sim.url, keepalive=30) as relay:
        for ending, bom in (("\n", False), ("\r\n", True)):
            fields = script(line_ending=ending, bom=bom)
            upstream = direct(sim, fields)
            for asked in (
                {"relay-resumable": "1"},
                {"relay-event-ids": "1"},  # ids only in resumable streams
                {"relay-resumable": "1", "relay-event-ids": "0"},
            ):
                assert raw_stream(relay.url, headers={**asked, **fields})[2] == upstream
        # An error answer (JSON) is passed on as it is, ids asked for or not.
        refused = script(status=429)
        assert raw_stream(relay.url, headers={**IDS, **refused})[2] == direct(sim, refused)
