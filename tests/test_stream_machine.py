"""The relay core without sockets: `StreamMachine` fed events and times.

Deterministic cases pin each decision (keepalives, retries, timeouts, endings); a
hypothesis state machine drives random interleavings of split recorded streams,
upstream failures, client pauses and aborts, ticks and drain, and checks the
invariants every relayed stream must keep.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from relay.core.body_policy import BodyPolicy
from relay.core.errors import UpstreamLost, UpstreamUnavailable
from relay.core.exchange import RequestHead, StreamSettings
from relay.core.keepalive import COMMENT_FRAME
from relay.core.retry import RetryPolicy
from relay.core.stream_actions import (
    AbortUpstream,
    Action,
    ArmTimer,
    EndResponse,
    Finish,
    OpenUpstream,
    PauseUpstream,
    ResetClient,
    ResumeUpstream,
    SendBody,
    SendHead,
    SendKeepalive,
    UpstreamBody,
    UpstreamEnd,
)
from relay.core.stream_machine import StreamMachine
from relay.core.stream_record import Outcome

INTERVAL = 1.0
SETTINGS = StreamSettings(
    keepalive_interval=INTERVAL,
    keepalive_frame=COMMENT_FRAME,
    read_timeout=30.0,
    send_timeout=10.0,
    body_timeout=5.0,
    max_body_bytes=1000,
    retry=RetryPolicy(attempts=3, budget=10.0),
    body_policy=BodyPolicy(),
)
SSE_HEAD = [(b"content-type", b"text/event-stream"), (b"request-id", b"req_1")]


def frame(name: str, data: dict[str, object], eol: str = "\n") -> bytes:
    return f"event: {name}{eol}data: {json.dumps(data)}{eol}{eol}".encode()


def messages_stream(eol: str = "\n", *, ending: str = "stop") -> bytes:
    frames = [
        frame("message_start", {"type": "message_start", "message": {"id": "m"}}, eol),
        frame("content_block_start", {"type": "content_block_start", "index": 0}, eol),
        frame("ping", {"type": "ping"}, eol),
        frame("content_block_delta", {"type": "content_block_delta", "delta": "hi"}, eol),
        frame("content_block_stop", {"type": "content_block_stop", "index": 0}, eol),
    ]
    if ending == "stop":
        frames.append(frame("message_stop", {"type": "message_stop"}, eol))
    elif ending == "error":
        frames.append(frame("error", {"type": "error", "error": {"type": "overloaded_error"}}))
    return b"".join(frames)


def machine(
    has_body: bool = False, headers: list[tuple[bytes, bytes]] | None = None
) -> StreamMachine:
    head = RequestHead(b"POST", b"/v1/messages", headers or [], None, has_body=has_body)
    return StreamMachine(head, SETTINGS, now=0.0, jitter=lambda: 0.5)


def kinds(actions: list[Action]) -> list[type]:
    return [type(action) for action in actions]


def finish(actions: list[Action]) -> Finish:
    assert isinstance(actions[-1], Finish), actions
    return actions[-1]


def opened(stream: StreamMachine, now: float = 0.0) -> None:
    assert kinds(stream.start(now)) == [OpenUpstream]
    assert kinds(stream.upstream_opened(now)) == [ArmTimer]


def test_a_stream_relays_bytes_untouched_and_keepalives_only_at_boundaries() -> None:
    stream = machine()
    opened(stream)
    actions = stream.response_head(200, SSE_HEAD, 0.1)
    assert kinds(actions) == [ArmTimer, SendHead]
    assert actions[0] == ArmTimer(0.1 + INTERVAL)
    body = messages_stream()
    assert stream.response_body(body[:10], 0.2) == body[:10]  # mid-frame
    assert stream.tick(1.2) == [ArmTimer(2.2)]  # due, but no keepalive inside a frame
    assert stream.response_body(body[10:], 1.5) == body[10:]
    assert stream.tick(2.5) == [SendKeepalive(COMMENT_FRAME), ArmTimer(3.5)]
    end = stream.response_end(2.6)
    assert kinds(end) == [EndResponse, Finish]
    record = finish(end).record
    assert record.outcome is Outcome.COMPLETED and record.keepalives == 1
    assert record.bytes_out == len(body) and record.request_id == "req_1"


def test_failures_before_the_head_are_retried_with_backoff_then_answered() -> None:
    stream = machine()
    opened(stream)
    actions = stream.upstream_failed(UpstreamUnavailable("refused", "http://u"), 0.5)
    # No read timeout while the backoff runs: the timer is disarmed.
    assert actions[:2] == [AbortUpstream(), ArmTimer(math.inf)]
    retry = actions[2]
    assert isinstance(retry, OpenUpstream) and retry.attempt == 1 and retry.at > 0.5
    stream.upstream_opened(retry.at)
    assert kinds(stream.upstream_failed(UpstreamUnavailable("refused"), 0.7)) == [
        AbortUpstream,
        ArmTimer,
        OpenUpstream,
    ]
    stream.upstream_opened(0.8)
    final = stream.upstream_failed(UpstreamUnavailable("refused", "http://u"), 0.9)
    assert kinds(final) == [AbortUpstream, SendHead, SendBody, EndResponse, Finish]
    head = final[1]
    assert isinstance(head, SendHead) and head.status == 502
    body = final[2]
    assert isinstance(body, SendBody) and b"http://u" not in body.data
    record = finish(final).record
    assert record.retries == 2 and record.error_detail == "refused (http://u)"


def test_a_retried_status_waits_at_least_what_retry_after_asks() -> None:
    """With --retry-on-status 529, upstream's `retry-after-ms: 2500` sets the next try's
    time, beyond the backoff (50-100 ms here); `retry-after: 3` likewise in seconds."""
    settings = replace(
        SETTINGS, retry=RetryPolicy(attempts=3, budget=10.0, statuses=frozenset({529}))
    )
    for header, wait in ((b"retry-after-ms", b"2500"), (b"retry-after", b"3")):
        stream = StreamMachine(RequestHead(b"POST", b"/v1/messages", [], None), settings, 0.0)
        opened(stream)
        actions = stream.response_head(529, [(header, wait)], 1.0)
        retry = actions[-1]
        assert isinstance(retry, OpenUpstream) and retry.attempt == 1
        assert retry.at == pytest.approx(
            1.0 + float(wait) / (1000 if header.endswith(b"ms") else 1)
        )
        assert SendHead not in kinds(actions)  # nothing reached the client


def test_the_native_path_reports_in_batches_and_decides_as_the_python_path() -> None:
    """The body pump scans, counts and times pieces itself (relay/core/stream.py
    `_catch_up`): the machine learns it before its next event and decides the same."""
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    assert stream.settling and stream.express_scanner() is None
    body = messages_stream()
    assert stream.response_body(body[:10], 0.2) == body[:10]  # the first bytes settle
    scanner = stream.express_scanner()
    assert scanner is not None and not stream.settling
    # What the pump did: the rest of the body, scanned, its last byte at 0.9 after a
    # 0.7 s silence.
    scanner.feed(body[10:])
    stream.express_progress(len(body) - 10, 0.9, 0.7)
    assert stream.last_byte == 0.9
    assert stream.tick(1.2) == [ArmTimer(1.9)]  # not quiet for an interval since 0.9
    assert stream.tick(1.95) == [SendKeepalive(COMMENT_FRAME), ArmTimer(2.95)]
    record = finish(stream.response_end(2.0)).record
    assert record.bytes_out == len(body) and record.events == body.count(b"\n\n")
    assert record.longest_silence == pytest.approx(1.1)  # 0.9 -> 2.0, the end
    assert record.outcome is Outcome.COMPLETED


def test_a_mid_stream_death_ends_with_one_error_frame() -> None:
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    body = messages_stream(ending="none")
    stream.response_body(body[:-5], 0.2)
    actions = stream.upstream_failed(UpstreamLost("upstream closed the connection"), 0.3)
    assert kinds(actions) == [AbortUpstream, SendBody, EndResponse, Finish]
    ending = actions[1]
    assert isinstance(ending, SendBody)
    assert ending.data.startswith(b"\nevent: ping\n\n")  # the partial frame is closed
    assert b"event: error" in ending.data and b"upstream connection lost" in ending.data
    assert finish(actions).record.outcome is Outcome.UPSTREAM_ERROR


def test_a_clean_end_without_message_stop_gets_an_error_frame() -> None:
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    stream.response_body(messages_stream(ending="none"), 0.2)
    actions = stream.response_end(0.3)
    assert kinds(actions) == [SendBody, EndResponse, Finish]
    assert finish(actions).record.outcome is Outcome.TRUNCATED


def test_upstreams_own_error_frame_ends_the_stream_without_another() -> None:
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    stream.response_body(messages_stream(ending="error"), 0.2)
    actions = stream.upstream_failed(UpstreamLost("closed"), 0.3)
    assert kinds(actions) == [AbortUpstream, EndResponse, Finish]
    assert finish(actions).record.outcome is Outcome.COMPLETED


def test_client_gone_aborts_upstream_once() -> None:
    stream = machine()
    opened(stream)
    actions = stream.client_gone(0.2)
    assert kinds(actions) == [AbortUpstream, Finish]
    assert finish(actions).record.outcome is Outcome.CLIENT_ABORT
    assert stream.client_gone(0.3) == [] and stream.tick(5.0) == []


def test_a_stalled_request_body_gets_408() -> None:
    stream = machine(has_body=True)
    actions = stream.start(0.0)
    assert kinds(actions) == [ArmTimer, OpenUpstream]
    assert actions[0] == ArmTimer(SETTINGS.body_timeout)
    stream.upstream_opened(0.1)
    assert kinds(stream.request_body(b"{", 1.0)) == [UpstreamBody]
    assert kinds(stream.tick(5.0)) == [ArmTimer]  # the body's deadline moved on
    timed_out = stream.tick(6.0)
    assert kinds(timed_out) == [AbortUpstream, SendHead, SendBody, EndResponse, Finish]
    head = timed_out[1]
    assert isinstance(head, SendHead) and head.status == 408
    assert finish(timed_out).refused == 408


def test_a_body_longer_or_shorter_than_declared_never_ends_upstream() -> None:
    longer = machine(has_body=True, headers=[(b"content-length", b"3")])
    longer.start(0.0)
    longer.upstream_opened(0.0)
    actions = longer.request_body(b"abcd", 0.1)
    assert UpstreamBody not in kinds(actions) and finish(actions).refused == 400
    shorter = machine(has_body=True, headers=[(b"content-length", b"3")])
    shorter.start(0.0)
    shorter.upstream_opened(0.0)
    shorter.request_body(b"ab", 0.1)
    actions = shorter.request_end(0.2)
    assert UpstreamEnd not in kinds(actions) and finish(actions).refused == 400


def test_a_client_that_takes_nothing_is_dropped_after_the_send_timeout() -> None:
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    assert kinds(stream.client_paused(0.2)) == [PauseUpstream]
    assert SendKeepalive not in kinds(stream.tick(5.0))  # paused: no keepalives
    actions = stream.tick(10.2)
    assert kinds(actions) == [ResetClient, AbortUpstream, Finish]
    assert finish(actions).record.outcome is Outcome.CLIENT_STALL


def test_a_silent_upstream_before_its_head_gets_504_not_a_retry() -> None:
    stream = machine()
    opened(stream)
    actions = stream.tick(30.0)
    assert OpenUpstream not in kinds(actions)
    head = actions[1]
    assert isinstance(head, SendHead) and head.status == 504


def test_drain_ends_a_live_stream_with_an_overloaded_error_frame() -> None:
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    stream.response_body(messages_stream(ending="none")[:40], 0.2)
    actions = stream.drain(0.3)
    ending = actions[1]
    assert isinstance(ending, SendBody) and b"overloaded_error" in ending.data
    assert finish(actions).record.outcome is Outcome.DRAINED


def test_pause_and_resume_reach_an_open_upstream_only() -> None:
    stream = machine()
    assert stream.client_paused(0.0) == []
    stream.start(0.0)
    assert stream.upstream_opened(0.1)[-2:] == [PauseUpstream(), ArmTimer(30.1)]
    assert stream.client_resumed(0.2) == [ResumeUpstream()]


# -- the stateful test ----------------------------------------------------------------

RECORDED = [
    messages_stream(),
    messages_stream("\r\n"),
    messages_stream(ending="none"),
    messages_stream(ending="error"),
]


# Failures, drain and the client leaving end a stream: they act on one draw in RARE+1,
# so that most examples get deep into a stream before something ends it.
RARE = 5


def at_boundary(data: bytes) -> bool:
    """The SSE spec's frame boundary, written independently of relay/sse_scanner: the
    bytes so far end with a blank line (CRLF, CR and LF each end a line)."""
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return not data or lines.endswith(b"\n\n")


@dataclass
class Upstream:
    """The scripted upstream of one try, as the model sees it."""

    chunks: list[bytes]
    opens_at: float
    open: bool = False
    head: bool = False
    sent: bytearray = field(default_factory=bytearray)


class StreamModel(RuleBasedStateMachine):
    """Random interleavings against the invariants of a relayed stream."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.machine = machine()
        self.timer = math.inf
        self.recorded = b""
        self.splits: list[int] = []
        self.upstream: Upstream | None = None
        self.output: list[tuple[str, bytes]] = []  # ("up" | "ka" | "relay", bytes)
        self.finishes = 0
        self.ended = False
        self.paused = False
        self.sse_head = False
        self.quiet_since = 0.0

    @rule(
        index=st.integers(0, len(RECORDED) - 1),
        cuts=st.lists(st.integers(1, 400), max_size=12),
    )
    @precondition(lambda self: not self.recorded)
    def pick_stream(self, index: int, cuts: list[int]) -> None:
        self.recorded = RECORDED[index]
        self.splits = sorted({c for c in cuts if c < len(self.recorded)})
        self.apply(self.machine.start(self.now))

    def chunks(self) -> list[bytes]:
        edges = [0, *self.splits, len(self.recorded)]
        return [self.recorded[a:b] for a, b in itertools.pairwise(edges)]

    # -- what the shell does with actions ----------------------------------------

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            assert self.finishes == 0, f"{action} after Finish"
            match action:
                case OpenUpstream(_, at):
                    assert self.upstream is None, "a second try while one is live"
                    assert at >= self.now
                    self.upstream = Upstream(self.chunks(), at)
                case AbortUpstream():
                    assert self.upstream is not None, "abort without a live try"
                    self.upstream = None
                case ArmTimer(at):
                    self.timer = at
                case SendHead(status, headers):
                    self.sse_head = (
                        status == 200 and (b"content-type", b"text/event-stream") in headers
                    )
                    self.quiet_since = self.now
                case SendKeepalive(data):
                    assert self.sse_head and not self.paused
                    assert at_boundary(self.upstream_bytes()), "keepalive inside a frame"
                    self.output.append(("ka", data))
                    self.quiet_since = self.now
                case SendBody(data):
                    self.output.append(("relay", data))
                case EndResponse() | ResetClient():
                    assert not self.ended, f"{action} after the response ended"
                    self.ended = True
                case Finish(record, _):
                    self.finishes += 1
                    self.timer = math.inf  # the shell cancels it
                    assert self.upstream is None, "finished with an upstream try live"
                    assert record.bytes_out == len(self.upstream_bytes())
                case UpstreamBody() | UpstreamEnd() | PauseUpstream() | ResumeUpstream():
                    pass
                case _:
                    raise AssertionError(f"unknown action {action}")

    def upstream_bytes(self) -> bytes:
        return b"".join(data for kind, data in self.output if kind == "up")

    # -- time ------------------------------------------------------------------------

    @rule(dt=st.floats(0.0, 3.0))
    @precondition(lambda self: self.recorded)
    def advance(self, dt: float) -> None:
        """Time passes; the timer fires at its armed times, as the event loop's would."""
        until = self.now + dt
        while self.timer <= until and not self.finishes:
            self.now = max(self.now, self.timer)
            self.check_keepalive_due()  # the silence up to this wake-up counts too
            self.timer = math.inf
            self.apply(self.machine.tick(self.now))
            self.check_keepalive_due()
        self.now = max(self.now, until)
        self.check_keepalive_due()

    def check_keepalive_due(self) -> None:
        """While open, at a boundary and unpaused, silence never passes one interval."""
        if self.finishes or not self.sse_head or self.paused or self.ended:
            return
        if at_boundary(self.upstream_bytes()):
            assert self.now - self.quiet_since <= INTERVAL + 0.002, "keepalive late"

    # -- upstream ------------------------------------------------------------------

    @rule()
    @precondition(lambda self: self.upstream is not None and not self.upstream.open)
    def upstream_opens(self) -> None:
        assert self.upstream is not None
        if self.now < self.upstream.opens_at:
            self.now = self.upstream.opens_at
        self.upstream.open = True
        self.apply(self.machine.upstream_opened(self.now))

    @rule()
    @precondition(
        lambda self: self.upstream is not None and self.upstream.open and not self.upstream.head
    )
    def upstream_head(self) -> None:
        assert self.upstream is not None
        self.upstream.head = True
        self.apply(self.machine.response_head(200, SSE_HEAD, self.now))

    @rule()
    @precondition(
        lambda self: self.upstream is not None and self.upstream.head and bool(self.upstream.chunks)
    )
    def upstream_chunk(self) -> None:
        assert self.upstream is not None
        data = self.upstream.chunks.pop(0)
        self.upstream.sent += data
        out = self.machine.response_body(data, self.now)
        assert out == data, "upstream bytes changed on the way"
        self.output.append(("up", out))
        self.quiet_since = self.now

    @rule()
    @precondition(
        lambda self: self.upstream is not None and self.upstream.head and not self.upstream.chunks
    )
    def upstream_end(self) -> None:
        self.upstream = None  # completed: no abort owed
        self.apply(self.machine.response_end(self.now))

    @rule(roll=st.integers(0, RARE))
    @precondition(lambda self: self.upstream is not None and self.upstream.opens_at <= self.now)
    def upstream_fails(self, roll: int) -> None:
        assert self.upstream is not None
        if roll:
            return
        error = UpstreamLost("reset") if self.upstream.head else UpstreamUnavailable("refused")
        self.upstream = None  # failed: no abort owed, but the machine may still send one
        self.apply_failure(self.machine.upstream_failed(error, self.now))

    def apply_failure(self, actions: list[Action]) -> None:
        # The shell aborts a failed try again (idempotent); the model has let it go.
        self.apply([a for a in actions if not isinstance(a, AbortUpstream)])

    # -- the client ------------------------------------------------------------------

    @rule()
    @precondition(lambda self: self.recorded and not self.finishes)
    def client_pauses(self) -> None:
        self.paused = True
        self.apply(self.machine.client_paused(self.now))

    @rule()
    @precondition(lambda self: self.paused and not self.finishes)
    def client_resumes(self) -> None:
        self.paused = False
        self.quiet_since = self.now
        self.apply(self.machine.client_resumed(self.now))

    @rule(roll=st.integers(0, RARE))
    @precondition(lambda self: self.recorded and not self.finishes)
    def client_leaves(self, roll: int) -> None:
        if roll:
            return
        self.ended = True  # nothing more can reach a client that left
        self.apply(self.machine.client_gone(self.now))
        assert self.finishes == 1

    @rule(roll=st.integers(0, RARE))
    @precondition(lambda self: self.recorded and not self.finishes)
    def relay_drains(self, roll: int) -> None:
        if roll:
            return
        self.apply(self.machine.drain(self.now))
        assert self.finishes == 1

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def at_most_one_finish(self) -> None:
        assert self.finishes <= 1

    @invariant()
    def client_bytes_are_upstream_bytes_plus_keepalives_plus_one_ending(self) -> None:
        kinds_seen = [kind for kind, _ in self.output]
        if "relay" in kinds_seen:
            # Relay-made bytes come once, last (an error body or the ending frames).
            assert kinds_seen.count("relay") == 1 and kinds_seen[-1] == "relay"
        if self.upstream is not None and self.upstream.head:
            assert self.upstream_bytes() == bytes(self.upstream.sent)

    def teardown(self) -> None:
        if self.finishes:
            assert self.ended, "finished without ending the response"


StreamModel.TestCase.settings = settings(max_examples=250, stateful_step_count=40, deadline=None)
test_stream_machine_invariants = StreamModel.TestCase


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
def test_the_recorded_streams_end_at_a_boundary(eol: str) -> None:
    assert at_boundary(messages_stream(eol))


def test_a_held_bom_start_that_is_all_upstream_sent_still_reaches_the_client() -> None:
    """After a keepalive, a lone b"\\xef" waits to see whether a BOM follows; when the
    response ends there instead, those bytes are upstream's and go out before the end."""
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.0)
    assert kinds(stream.tick(1.0)) == [SendKeepalive, ArmTimer]
    assert stream.response_body(b"\xef", 1.5) == b""
    end = stream.response_end(1.6)
    assert end[0] == SendBody(b"\xef") and EndResponse() in end


def test_a_detached_resumable_stream_goes_on_for_the_grace_then_aborts() -> None:
    """A resumable stream's client left: no keepalives into the journal, upstream kept
    until the grace period ends (then aborted); a resume before that cancels it."""
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    stream.response_body(frame("ping", {"type": "ping"}), 0.2)  # a whole frame
    assert stream.client_detached(0.3)[-1] == ArmTimer(0.3 + SETTINGS.resume_grace)
    assert SendKeepalive not in kinds(stream.tick(5.0))  # nobody to keep alive
    assert stream.client_attached(6.0) == [ArmTimer(6.0)]
    assert kinds(stream.tick(6.0)) == [SendKeepalive, ArmTimer]  # due again: 5.9 s quiet
    stream.client_detached(7.0)
    ended = stream.tick(7.0 + SETTINGS.resume_grace)
    assert kinds(ended) == [AbortUpstream, Finish]
    assert finish(ended).record.outcome is Outcome.CLIENT_ABORT


def test_cancel_resets_the_client_and_aborts_upstream() -> None:
    stream = machine()
    opened(stream)
    stream.response_head(200, SSE_HEAD, 0.1)
    actions = stream.cancel(0.2)
    assert kinds(actions) == [ResetClient, AbortUpstream, Finish]
    assert stream.cancel(0.3) == []


def test_the_local_relay_resumes_a_dropped_remote_stream_from_its_byte() -> None:
    """--resume-upstream: the remote relay's stream id is kept (not relayed), a drop
    mid-stream opens `GET /relay/v1/streams/ID?offset=N` with the caller's key, and the
    resume's 200 continues the body without a second head; a refused resume fails
    the stream as a drop would."""
    settings = replace(SETTINGS, resume_upstream=True)
    head = RequestHead(b"POST", b"/v1/messages", [(b"x-api-key", b"sk-1")], None)
    for resume_status, ends_with in ((200, None), (404, SendBody)):
        stream = StreamMachine(head, settings, 0.0)
        opened(stream)
        sent = stream.response_head(200, [*SSE_HEAD, (b"relay-stream-id", b"ID")], 0.1)
        relayed = next(a for a in sent if isinstance(a, SendHead))
        assert (b"relay-stream-id", b"ID") not in relayed.headers
        stream.response_body(messages_stream()[:100], 0.2)
        actions = stream.upstream_failed(UpstreamLost("reset"), 0.3)
        retry = actions[-1]
        assert isinstance(retry, OpenUpstream) and retry.head is not None
        assert retry.head.method == b"GET"
        assert retry.head.target == b"/relay/v1/streams/ID?offset=100"
        assert retry.head.headers == [(b"x-api-key", b"sk-1")]
        stream.upstream_opened(0.5)
        answer = stream.response_head(resume_status, SSE_HEAD, 0.6)
        assert SendHead not in kinds(answer)
        if ends_with is None:
            assert answer == [] and stream.response_body(b"more", 0.7) == b"more"
        else:
            assert ends_with in kinds(answer) and kinds(answer)[-1] is Finish
