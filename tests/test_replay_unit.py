"""Identical-retry replay without sockets: the registry, its POSTs reading their body
(`ReplayCandidate`) and the store's index of dropped streams, against a scripted upstream
that the test answers by hand, on a real event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import cast

from relay.core.body_policy import BodyPolicy
from relay.core.errors import BadRequest
from relay.core.exchange import EdgeStream, Headers, RequestHead, ResponseSink, StreamSettings
from relay.core.keepalive import COMMENT_FRAME
from relay.core.registry import StreamRegistry
from relay.core.replay import ReplayCandidate, ReplayContext
from relay.core.resumable import STREAM_ID_HEADER
from relay.core.resume_store import ResumeLimits, ResumeStore
from relay.core.retry import RetryPolicy
from relay.core.stream import RelayStream
from relay.ops.metrics import RelayMetrics
from relay.upstream.routes import UpstreamRoutes
from tests.clients import wait_until
from tests.test_journal import Recorder

SETTINGS = StreamSettings(
    keepalive_interval=60.0,  # no keepalives: every byte below is upstream's
    keepalive_frame=COMMENT_FRAME,
    read_timeout=30.0,
    send_timeout=10.0,
    body_timeout=0.2,
    max_body_bytes=100,
    retry=RetryPolicy(attempts=1, budget=10.0),
    body_policy=BodyPolicy(),
    resume_grace=5.0,
)
SSE_HEAD: Headers = [(b"content-type", b"text/event-stream"), (b"request-id", b"req_1")]
START = b'event: message_start\ndata: {"type": "message_start"}\n\n'
DELTA = b'event: content_block_delta\ndata: {"type": "content_block_delta"}\n\n'
STOP = b'event: message_stop\ndata: {"type": "message_stop"}\n\n'
BODY = b'{"model": "m", "stream": true}'
REPLAYED = "sse_relay_replayed_retries_total"


def post(*fields: tuple[bytes, bytes], body: bytes = BODY, key: bytes = b"sk-owner") -> RequestHead:
    headers = [
        (b"x-api-key", key),
        (b"anthropic-version", b"2023-06-01"),
        (b"content-length", str(len(body)).encode()),
        *fields,
    ]
    return RequestHead(b"POST", b"/v1/messages", headers, "127.0.0.1", has_body=True)


class Upstream:
    """One scripted upstream exchange: what the relay sent it, and its `sink` to answer."""

    def __init__(self, head: RequestHead, sink: ResponseSink) -> None:
        self.head = head
        self.sink = sink
        self.body = bytearray()
        self.ended = self.aborted = self.paused = False

    def send_body(self, data: bytes) -> None:
        self.body += data

    def send_end(self) -> None:
        self.ended = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def answer(self, *chunks: bytes, end: bool = False) -> None:
        self.sink.on_response_head(200, SSE_HEAD)
        self.more(*chunks, end=end)

    def more(self, *chunks: bytes, end: bool = False) -> None:
        for chunk in chunks:
            self.sink.on_response_body(chunk)
        if end:
            self.sink.on_response_end()


class Routes:
    """The one route the registry sees: the test's settings, the scripted upstream."""

    def __init__(self, settings: StreamSettings) -> None:
        self.settings = settings
        self.opened: list[Upstream] = []

    def match(self, target: bytes) -> Routes:
        return self

    async def open_upstream(self, head: RequestHead, sink: ResponseSink, attempt: int) -> Upstream:
        upstream = Upstream(head, sink)
        self.opened.append(upstream)
        return upstream


class Relay:
    """A registry with --replay-retries on, as relay/ops/server.py builds it."""

    def __init__(
        self, settings: StreamSettings = SETTINGS, retain: float = 60.0, max_streams: int = 100
    ) -> None:
        self.routes = Routes(settings)
        self.metrics = RelayMetrics()
        self.store = ResumeStore(ResumeLimits(grace=settings.resume_grace, retain=retain))
        routes = cast(UpstreamRoutes, self.routes)
        self.registry = StreamRegistry(routes, self.metrics, max_streams, self.store, True)

    def open(self, client: Recorder, head: RequestHead | None = None) -> EdgeStream:
        stream = self.registry.open(client, head or post())
        self.registry.start(stream)
        return stream

    async def send(
        self, client: Recorder, head: RequestHead | None = None, body: bytes = BODY
    ) -> EdgeStream:
        """A whole request; returns once whatever it opened upstream is open."""
        stream = self.open(client, head)
        stream.on_request_body(body)
        stream.on_request_end()
        await settle()
        return stream

    @property
    def replayed(self) -> float:
        return self.metrics.value(REPLAYED)


async def settle() -> None:
    """Lets tasks the relay started (an upstream connect) run."""
    for _ in range(3):
        await asyncio.sleep(0)


def run(scenario: Callable[[], Coroutine[object, object, None]]) -> None:
    asyncio.run(scenario())


async def dropped_midstream(relay: Relay) -> tuple[Recorder, Upstream, EdgeStream]:
    """A stream whose client got its head and first event, then left."""
    first = Recorder()
    stream = await relay.send(first)
    (upstream,) = relay.routes.opened
    upstream.answer(START)
    stream.on_client_gone()
    return first, upstream, stream


# -- the key ------------------------------------------------------------------------


def test_the_key_is_a_keyed_digest_of_credential_method_target_versions_and_body() -> None:
    async def scenario() -> None:
        store = ResumeStore(ResumeLimits())
        context = ReplayContext(store, RelayMetrics(), set(), set())
        digest = b"d" * 32
        key = context.request_key(post(), digest)
        beta = (b"anthropic-beta", b"a,b")
        assert context.request_key(post(), digest) == key
        assert context.request_key(post(key=b"sk-other"), digest) != key
        assert context.request_key(post(), b"e" * 32) != key
        assert context.request_key(post(beta), digest) != key
        assert context.request_key(post((b"anthropic-beta", b"a")), digest) != context.request_key(
            post(beta), digest
        )
        other_version = post()
        other_version.headers[1] = (b"anthropic-version", b"2026-10-21")
        assert context.request_key(other_version, digest) != key
        moved = RequestHead(b"POST", b"/v1/messages?x=1", post().headers, None, has_body=True)
        assert context.request_key(moved, digest) != key
        # Other headers (x-stainless-*, user-agent) and the order of names do not matter.
        reordered = post(beta, (b"x-stainless-retry-count", b"1"))
        reordered.headers.reverse()
        assert context.request_key(reordered, digest) == context.request_key(post(beta), digest)
        # Keyed: another process (another secret) makes another digest of the same request.
        again = ReplayContext(store, RelayMetrics(), set(), set())
        assert again.request_key(post(), digest) != key

    run(scenario)


# -- who is replayed ----------------------------------------------------------------


def test_an_identical_retry_takes_a_dropped_stream_over_from_byte_0() -> None:
    async def scenario() -> None:
        relay = Relay()
        first, upstream, _ = await dropped_midstream(relay)
        upstream.more(DELTA)  # journaled while nobody is attached
        assert bytes(upstream.body) == BODY and upstream.ended
        retry = Recorder()
        await relay.send(retry)
        assert len(relay.routes.opened) == 1 and relay.replayed == 1
        assert retry.head == first.head == (200, SSE_HEAD)  # no relay-stream-id
        assert bytes(retry.body) == START + DELTA
        upstream.more(STOP, end=True)  # the live tail
        assert bytes(retry.body) == START + DELTA + STOP and retry.ended
        assert relay.store.journal_bytes() == 0  # its whole answer went out: let go

    run(scenario)


def test_a_retry_while_the_first_client_is_attached_goes_upstream() -> None:
    async def scenario() -> None:
        relay = Relay()
        first = Recorder()
        await relay.send(first)
        relay.routes.opened[0].answer(START)
        second = Recorder()
        await relay.send(second)
        assert len(relay.routes.opened) == 2 and relay.replayed == 0
        relay.routes.opened[0].more(STOP, end=True)
        assert first.ended and not first.aborted and bytes(first.body) == START + STOP

    run(scenario)


def test_different_bodies_versions_and_credentials_go_upstream() -> None:
    async def scenario() -> None:
        relay = Relay()
        await dropped_midstream(relay)
        other = b'{"model": "n", "stream": true}'
        version = post()
        version.headers[1] = (b"anthropic-version", b"2026-10-21")
        await relay.send(Recorder(), post(body=other), other)
        await relay.send(Recorder(), post((b"anthropic-beta", b"x")))
        await relay.send(Recorder(), post(key=b"sk-someone-else"))
        await relay.send(Recorder(), version)
        assert len(relay.routes.opened) == 5 and relay.replayed == 0
        assert [bytes(u.body) for u in relay.routes.opened[1:]] == [other, BODY, BODY, BODY]

    run(scenario)


def test_requests_without_a_credential_are_never_replayed() -> None:
    """Callers with no x-api-key or authorization cannot be told apart: one could get
    another's answer (behind a gateway with its own auth), so each goes upstream."""

    async def scenario() -> None:
        relay = Relay()
        anonymous = post(key=b"")
        anonymous.headers.pop(0)
        first = Recorder()
        stream = await relay.send(first, anonymous)
        relay.routes.opened[0].answer(START)
        stream.on_client_gone()
        await relay.send(Recorder(), anonymous)
        assert len(relay.routes.opened) == 2 and relay.replayed == 0

    run(scenario)


def test_a_stream_that_finished_with_its_client_attached_is_let_go_at_once() -> None:
    async def scenario() -> None:
        relay = Relay()
        first = Recorder()
        await relay.send(first)
        relay.routes.opened[0].answer(START, STOP, end=True)
        assert first.ended and relay.store.journal_bytes() == 0
        first_gone = Recorder()
        await relay.send(first_gone)
        assert len(relay.routes.opened) == 2 and relay.replayed == 0

    run(scenario)


def test_a_stream_that_finished_while_detached_is_replayed_whole_once() -> None:
    async def scenario() -> None:
        relay = Relay()
        _, upstream, _ = await dropped_midstream(relay)
        upstream.more(STOP, end=True)
        retry = Recorder()
        await relay.send(retry)
        assert bytes(retry.body) == START + STOP and retry.ended and relay.replayed == 1
        # That retry got the whole answer: one more re-send is a new question.
        await relay.send(Recorder())
        assert len(relay.routes.opened) == 2 and relay.replayed == 1

    run(scenario)


def test_a_stream_that_failed_while_detached_is_not_replayed() -> None:
    async def scenario() -> None:
        relay = Relay()
        _, upstream, _ = await dropped_midstream(relay)
        upstream.more(DELTA, end=True)  # no message_stop: the relay adds an error frame
        assert relay.store.journal_bytes() == 0
        await relay.send(Recorder())
        assert len(relay.routes.opened) == 2 and relay.replayed == 0

    run(scenario)


def test_after_the_retain_window_a_retry_goes_upstream() -> None:
    async def scenario() -> None:
        relay = Relay(retain=0.05)
        _, upstream, _ = await dropped_midstream(relay)
        upstream.more(STOP, end=True)
        await wait_until(lambda: not relay.store.journal_bytes())
        await relay.send(Recorder())
        assert len(relay.routes.opened) == 2 and relay.replayed == 0

    run(scenario)


def test_two_retries_at_once_the_first_takes_it_and_a_retry_that_drops_can_be_retried() -> None:
    async def scenario() -> None:
        relay = Relay()
        _, upstream, _ = await dropped_midstream(relay)
        a, b, c = Recorder(), Recorder(), Recorder()
        stream_a = relay.open(a)
        stream_b = relay.open(b)
        for stream in (stream_a, stream_b):
            stream.on_request_body(BODY)
        stream_a.on_request_end()
        stream_b.on_request_end()
        await settle()
        # The first whole retry took the stream; the second found it attached.
        assert relay.replayed == 1 and len(relay.routes.opened) == 2
        upstream.more(DELTA)
        assert bytes(a.body) == START + DELTA and not a.aborted and b.head is None
        stream_a.on_client_gone()  # the retry drops too: detached again, for another
        await relay.send(c)
        upstream.more(STOP, end=True)
        assert relay.replayed == 2 and bytes(c.body) == START + DELTA + STOP and c.ended

    run(scenario)


def test_a_stream_nobody_retries_is_aborted_after_the_grace() -> None:
    async def scenario() -> None:
        relay = Relay(settings=replace(SETTINGS, resume_grace=0.05))
        _, upstream, _ = await dropped_midstream(relay)
        assert not upstream.aborted
        await wait_until(lambda: upstream.aborted)
        assert relay.store.journal_bytes() == 0

    run(scenario)


# -- a POST reading its body behaves as any stream -----------------------------------


def finished(relay: Relay, status: str, outcome: str) -> float:
    return relay.metrics.value(
        "sse_relay_streams_total", http_version="1.1", status=status, outcome=outcome
    )


def test_the_body_reaches_upstream_as_it_came_only_once_it_is_whole() -> None:
    async def scenario() -> None:
        relay = Relay()
        head = post((b"anthropic-beta", b"b1"), (b"x-stainless-lang", b"python"))
        stream = relay.open(Recorder(), head)
        assert isinstance(stream, ReplayCandidate)
        for chunk in (BODY[:5], BODY[5:6], BODY[6:]):
            stream.on_request_body(chunk)
            await settle()
            assert not relay.routes.opened  # upstream sees nothing of a possible retry
        stream.on_request_end()
        await settle()
        (upstream,) = relay.routes.opened
        assert bytes(upstream.body) == BODY and upstream.ended and upstream.head == head

    run(scenario)


def test_a_body_breaking_a_rule_is_refused_as_ever_and_never_reaches_upstream() -> None:
    async def scenario() -> None:
        relay = Relay()
        over = Recorder()
        relay.open(over, post(body=b"x" * 101))  # declared over --max-body-bytes
        longer = Recorder()
        stream = relay.open(longer)
        stream.on_request_body(BODY + b"!")
        shorter = Recorder()
        stream = relay.open(shorter)
        stream.on_request_body(BODY[:-1])
        stream.on_request_end()
        await settle()
        assert [r.head[0] if r.head else None for r in (over, longer, shorter)] == [413, 400, 400]
        assert not relay.routes.opened and not relay.registry.waiting
        assert finished(relay, "400", "refused") == 2 and finished(relay, "413", "refused") == 1

    run(scenario)


def test_a_stalled_body_gets_408_and_a_client_gone_mid_body_is_a_client_abort() -> None:
    async def scenario() -> None:
        relay = Relay()
        stalled = Recorder()
        relay.open(stalled).on_request_body(BODY[:3])
        gone = relay.open(Recorder())
        gone.on_request_body(BODY[:3])
        gone.on_client_gone()
        assert finished(relay, "none", "client_abort") == 1
        await wait_until(lambda: stalled.head is not None)
        assert stalled.head is not None
        assert stalled.head[0] == 408 and b"sent nothing for 0.2 s" in stalled.body
        assert not relay.routes.opened and not relay.registry.waiting
        assert relay.metrics.value("sse_relay_request_bytes_total") == 6

    run(scenario)


def test_bodies_being_read_count_towards_the_limit_and_are_drained() -> None:
    async def scenario() -> None:
        relay = Relay(max_streams=1)
        reading = Recorder()
        relay.open(reading).on_request_body(BODY[:3])
        over = Recorder()
        relay.open(over)
        assert over.head is not None and over.head[0] == 503 and b"limit of 1" in over.body
        await relay.registry.drain(0.05)
        assert reading.head is not None and reading.head[0] == 503
        assert b"sse-relay is restarting" in reading.body
        assert not relay.routes.opened and not relay.registry.waiting
        assert finished(relay, "503", "drained") == 1

    run(scenario)


def test_an_adapters_refusal_before_the_start_is_answered_as_ever() -> None:
    async def scenario() -> None:
        relay = Relay()
        client = Recorder()
        relay.registry.open(client, post()).refuse(BadRequest("malformed HTTP/2 request"))
        assert client.head is not None and client.head[0] == 400 and client.ended
        assert not relay.registry.waiting and not relay.registry.active

    run(scenario)


def test_a_client_paused_while_its_body_came_pauses_upstream_once_open() -> None:
    async def scenario() -> None:
        relay = Relay()
        stream = relay.open(Recorder())
        stream.on_client_paused()  # an HTTP/2 connection whose socket is full
        stream.on_request_body(BODY)
        stream.on_request_end()
        await settle()
        (upstream,) = relay.routes.opened
        assert upstream.paused
        stream.on_client_resumed()
        assert not upstream.paused

    run(scenario)


def test_opted_in_and_other_requests_are_streams_as_without_the_flag() -> None:
    """A `relay-resumable: 1` POST resumes by id: upstream opens at once, as ever, and
    its head names the stream; a plain POST's never does."""

    async def scenario() -> None:
        relay = Relay()
        named = Recorder()
        assert isinstance(relay.open(named, post((b"relay-resumable", b"1"))), RelayStream)
        await settle()
        relay.routes.opened[0].answer(START)
        assert named.head is not None and STREAM_ID_HEADER in dict(named.head[1])
        get = RequestHead(b"GET", b"/v1/models", [], None)
        assert isinstance(relay.registry.open(Recorder(), get), RelayStream)
        unnamed = Recorder()
        await relay.send(unnamed)
        relay.routes.opened[1].answer(START)
        assert unnamed.head == (200, SSE_HEAD)

    run(scenario)


def test_past_the_journals_budget_a_post_is_a_plain_stream_aborted_when_its_client_goes() -> None:
    async def scenario() -> None:
        relay = Relay()
        relay.store.limits = ResumeLimits(max_total=1)
        journaled = await relay.send(Recorder())
        relay.routes.opened[0].answer(START)
        plain = await relay.send(Recorder())
        relay.routes.opened[1].answer(START)
        plain.on_client_gone()
        journaled.on_client_gone()
        assert relay.routes.opened[1].aborted and not relay.routes.opened[0].aborted

    run(scenario)
