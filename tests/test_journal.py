"""The journal of a resumable stream and its client side, without sockets."""

from __future__ import annotations

from relay.core.exchange import Headers
from relay.core.journal import Ending, Journal
from relay.core.resumable import STREAM_ID_HEADER, ResumableClient


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


def test_since_serves_any_offset_from_the_chunks_as_they_came() -> None:
    journal = Journal(limit=100)
    for chunk in (b"abc", b"defg", b"h"):
        journal.append(chunk)
    assert journal.size == 8
    assert journal.since(0) == [b"abc", b"defg", b"h"]
    assert journal.since(5) == [b"fg", b"h"]
    assert journal.since(8) == []
    assert journal.since(9) is None and journal.since(-1) is None


def test_past_its_limit_a_journal_keeps_nothing_and_serves_nothing() -> None:
    journal = Journal(limit=5)
    journal.append(b"abc")
    journal.append(b"def")
    assert journal.overflowed and journal.size == 6 and journal.since(0) is None


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
