"""The journal of a resumable stream (both twins) and its client side, without sockets."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import relay.core.journal
from relay.core import _journal, journal_pure
from relay.core.exchange import BodyWriter, Headers
from relay.core.journal import Ending, Journal
from relay.core.resumable import STREAM_ID_HEADER, ResumableClient

TWINS = pytest.mark.parametrize(
    "journal_class", [journal_pure.Journal, _journal.Journal], ids=["python", "cython"]
)
TOTALS: dict[Any, Any] = {
    journal_pure.Journal: journal_pure.JournalTotal,
    _journal.Journal: _journal.JournalTotal,
}


class Recorder:
    """A `ClientSide` that writes down what it is sent."""

    def __init__(self) -> None:
        self.head: tuple[int, Headers] | None = None
        self.body = bytearray()
        self.ended = self.aborted = False

    def send_head(self, status: int, headers: Headers) -> None:
        self.head = (status, headers)

    def send_body(self, data: bytes) -> None:
        self.body += data

    def send_end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    def pause_request_body(self) -> None:
        pass

    def resume_request_body(self) -> None:
        pass


@TWINS
def test_since_serves_any_offset_from_the_arena(journal_class: Any) -> None:
    journal = journal_class(limit=100)
    for chunk in (b"abc", b"defg", b"h"):
        journal.append(chunk)
    assert journal.size == 8
    assert journal.since(0) == b"abcdefgh"
    assert journal.since(5) == b"fgh"
    assert journal.since(8) == b""
    assert journal.since(9) is None and journal.since(-1) is None
    assert journal.since(10**30) is None  # as a client may send it
    assert journal.ending is Ending.OPEN


@TWINS
def test_past_its_limit_a_journal_keeps_nothing_and_serves_nothing(journal_class: Any) -> None:
    journal = journal_class(limit=5)
    journal.append(b"abc")
    journal.append(b"def")
    assert journal.overflowed and journal.size == 6 and journal.since(0) is None
    journal.append(b"gh")  # the count goes on, for the error a resumer gets
    assert journal.size == 8 and journal.since(8) is None


@TWINS
@given(
    limit=st.integers(0, 20_000),
    pieces=st.lists(st.binary(max_size=3000), max_size=30),
    offset=st.integers(-1, 40_000),
)
def test_both_twins_keep_exactly_what_was_appended(
    journal_class: Any, limit: int, pieces: list[bytes], offset: int
) -> None:
    """Across the arena's doublings and up to its limit, the bytes come back as written."""
    total = TOTALS[journal_class]()
    journal = journal_class(limit, total)
    for piece in pieces:
        journal.append(piece)
    whole = b"".join(pieces)
    assert journal.size == len(whole)
    assert journal.overflowed == (len(whole) > limit)
    expected = None if len(whole) > limit or not 0 <= offset <= len(whole) else whole[offset:]
    assert journal.since(offset) == expected
    # The total holds what is kept: nothing once past the limit, nothing once released.
    assert total.bytes == (0 if journal.overflowed else len(whole))
    journal.release()
    journal.append(b"more")
    assert total.bytes == 0


@TWINS
def test_journals_count_in_their_stores_total_until_released(journal_class: Any) -> None:
    total = TOTALS[journal_class]()
    first, second = journal_class(10, total), journal_class(10, total)
    first.append(b"abcd")
    second.append(b"xyz")
    assert total.bytes == 7
    second.append(b"12345678")  # past its limit: its 3 kept bytes go, the rest never came
    assert second.overflowed and total.bytes == 4
    second.release()  # already counted out
    assert total.bytes == 4
    first.release()
    first.release()  # once only
    assert total.bytes == 0


def test_the_cython_arena_is_used_unless_disabled() -> None:
    disabled = os.environ.get("SSE_RELAY_NO_EXTENSIONS") == "1"
    assert ("python" if disabled else "cython") == relay.core.journal.IMPLEMENTATION
    assert Journal is (journal_pure.Journal if disabled else _journal.Journal)


def test_a_resumer_gets_head_journal_and_live_tail_and_takes_over() -> None:
    first, second, third = Recorder(), Recorder(), Recorder()
    side = ResumableClient(first, Journal(limit=100), "id123")
    side.send_head(200, [(b"content-type", b"text/event-stream")])
    assert first.head == (
        200,
        [(b"content-type", b"text/event-stream"), (STREAM_ID_HEADER, b"id123")],
    )
    side.send_body(b"event: a\n\n")
    side.detach(10.0)
    side.send_body(b"event: b\n\n")  # journaled while nobody is attached
    assert side.attach(second, 5, 12.5) == 15
    assert bytes(second.body) == b": a\n\nevent: b\n\n"
    side.send_body(b"event: c\n\n")
    assert bytes(second.body).endswith(b"event: c\n\n")
    # A newer resumer takes the stream; the older one is reset.
    assert side.attach(third, 0, 13.0) == 30
    assert side.resumes == 2 and side.detached_seconds(20.0) == 2.5
    assert second.aborted and bytes(third.body) == bytes(first.body) + b"event: b\n\nevent: c\n\n"
    side.send_end()
    assert third.ended and side.journal.ending is Ending.END


def test_a_resume_of_an_ended_stream_ends_and_of_a_reset_one_resets() -> None:
    side = ResumableClient(Recorder(), Journal(limit=100), "id")
    side.send_head(200, [])
    side.send_body(b"x")
    side.send_end()
    late = Recorder()
    assert side.attach(late, 0, 0.0) == 1 and late.ended
    broken = ResumableClient(Recorder(), Journal(limit=100), "id")
    broken.send_head(200, [])
    broken.abort()
    late = Recorder()
    assert broken.attach(late, 0, 0.0) == 0 and late.aborted


def test_only_a_successful_response_is_resumable() -> None:
    side = ResumableClient(Recorder(), Journal(limit=100), "id")
    side.send_head(502, [])
    assert not side.resumable


class DirectRecorder(Recorder):
    """A client side that also takes pieces from the native path (HTTP/1.1-like)."""

    def body_writer(self) -> BodyWriter:
        return BodyWriter(self.send_body, chunked=True)


class NoMirror:
    """A shared journal's copy that keeps nothing."""

    def head(self, status: int, headers: Headers) -> None:
        pass

    def body(self, data: bytes) -> None:
        pass

    def end(self, ending: Ending) -> None:
        pass

    def attached(self, client: object) -> None:
        pass


EVENT_STREAM = [(b"content-type", b"text/event-stream")]


def test_the_native_path_journals_itself_unless_a_piece_needs_python() -> None:
    client = DirectRecorder()
    side = ResumableClient(client, Journal(limit=100), "id")
    side.send_head(200, EVENT_STREAM)
    # Into the arena, then the attached client's own writer; nowhere while detached.
    assert side.body_writer() == BodyWriter(client.send_body, True, side.journal)
    side.detach(1.0)
    assert side.body_writer() == BodyWriter(None, False, side.journal)
    newer = DirectRecorder()
    assert side.attach(newer, 0, 2.0) == 0
    assert side.body_writer() == BodyWriter(newer.send_body, True, side.journal)
    # Per piece in Python: a client that takes no direct pieces, `id:` lines, a shared
    # journal's copy. Then `send_body` journals (and the arena is not handed out).
    plain = ResumableClient(Recorder(), Journal(limit=100), "id")
    numbered = ResumableClient(DirectRecorder(), Journal(limit=100), "id", event_ids=True)
    mirrored = ResumableClient(DirectRecorder(), Journal(limit=100), "id")
    mirrored.mirror = NoMirror()
    for other in (plain, numbered, mirrored):
        other.send_head(200, EVENT_STREAM)
        assert other.body_writer() == BodyWriter(other.send_body, chunked=False)
