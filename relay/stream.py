"""The relay core: one request/response exchange, whatever HTTP version carries it.

A protocol adapter turns its library's events into `on_request_*` / `on_client_*`
calls and implements `ClientSide`; an upstream exchange calls `on_response_*`. The SSE
rules live here once: bytes pass untouched, the scanner tracks frame boundaries,
keepalives go in only at boundaries, retries happen only while the client has seen
nothing, and every failure ends the response in the API's own format.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import replace

from relay.access_log import log_stream
from relay.errors import (
    BadRequest,
    BodyTimeout,
    BodyTooLarge,
    Overloaded,
    RelayError,
    UpstreamLost,
    UpstreamTimeout,
    error_response,
    new_request_id,
)
from relay.exchange import (
    ClientSide,
    Headers,
    OpenUpstream,
    RequestHead,
    StreamSettings,
    UpstreamExchange,
)
from relay.headers import header_value, relayed_response_headers
from relay.keepalive import KeepaliveClock
from relay.metrics import RelayMetrics
from relay.request_rules import declared_length
from relay.retry import retry_after
from relay.sse_endings import ended_by_upstream, ending_frames, needs_truncation_error
from relay.sse_scanner import FrameScanner
from relay.stream_record import Outcome, StreamRecord

log = logging.getLogger("sse_relay")

_BOM = b"\xef\xbb\xbf"


class RelayStream:
    """Relays one exchange: request to upstream, response back, keepalives in between."""

    __slots__ = (
        "_active",
        "_body",
        "_body_deadline",
        "_body_size",
        "_client",
        "_client_paused",
        "_client_paused_at",
        "_clock",
        "_connecting",
        "_declared_length",
        "_dropped_params",
        "_error_detail",
        "_finished",
        "_first_try_at",
        "_head",
        "_head_at",
        "_head_sent",
        "_hold_body",
        "_last_byte",
        "_longest_silence",
        "_loop",
        "_metrics",
        "_open_upstream",
        "_request_ended",
        "_request_id",
        "_retries",
        "_scanner",
        "_settings",
        "_started",
        "_status",
        "_timer",
        "_tries",
        "_upstream",
        "_upstream_error",
        "bytes_out",
        "keepalives",
        "outcome",
    )

    def __init__(
        self,
        client: ClientSide,
        head: RequestHead,
        settings: StreamSettings,
        metrics: RelayMetrics,
        active: set[RelayStream],
    ) -> None:
        self._client = client
        self._head = head
        self._settings = settings
        self._metrics = metrics
        self._active = active
        self._loop = asyncio.get_running_loop()
        self._open_upstream: OpenUpstream | None = None
        self._upstream: UpstreamExchange | None = None
        # The try being opened: cancelled when the stream ends first, so that a stream
        # the client reset at once (HTTP/2 rapid reset) never reaches upstream.
        self._connecting: asyncio.Task[None] | None = None
        # Set by start(); the body must match it before anything of it goes upstream.
        self._declared_length: int | None = None
        # While a request body is incomplete and unanswered: when it times out.
        self._body_deadline = math.inf
        # Every request body chunk, kept for a transparent retry until the response
        # head reaches the client (bounded by max_body_bytes); None after that.
        self._body: list[bytes] | None = []
        self._body_size = 0
        # With a body policy the whole body is needed before anything goes upstream.
        self._hold_body = settings.body_policy.active and head.method == b"POST"
        self._dropped_params: tuple[str, ...] = ()
        self._request_ended = False
        self._head_sent = False
        self._finished = False
        self._client_paused = False
        self._client_paused_at = 0.0
        self._scanner: FrameScanner | None = None
        self._clock: KeepaliveClock | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._started = self._last_byte = self._loop.time()
        self._tries = 0
        self._retries = 0
        # For the stream's record (relay/stream_record.py), filled in as it goes.
        self._first_try_at = self._started
        self._head_at: float | None = None
        self._longest_silence = 0.0
        self._status: int | None = None
        self._request_id: str | None = None
        self._upstream_error: str | None = None
        self._error_detail: str | None = None
        #: How the stream ended (relay/stream_record.py), once it has.
        self.outcome: Outcome | None = None
        self.bytes_out = 0
        self.keepalives = 0
        metrics.stream_started(head.http_version)
        active.add(self)

    @property
    def head(self) -> RequestHead:
        return self._head

    def start(self, open_upstream: OpenUpstream) -> None:
        """Relay a request that passed `relay.request_rules.check_request`."""
        self._open_upstream = open_upstream
        length = self._declared_length = declared_length(self._head)
        if length is not None and length > self._settings.max_body_bytes:
            self.refuse(BodyTooLarge(self._too_large_message()))
            return
        if self._head.has_body and not self._request_ended:
            self._body_deadline = self._loop.time() + self._settings.body_timeout
            self._arm(self._body_deadline)
        if not self._hold_body:
            self._try_upstream()

    def refuse(self, error: RelayError) -> None:
        """Answer the client without asking upstream (limits, policy, overload)."""
        if self._finished:
            return
        self._metrics.refused(error.status)
        log.warning("refused %s %s: %d %s", *self._describe(), error.status, error.message)
        self._finish(Outcome.REFUSED, error)
        self._send_error_response(error)

    def end_for_drain(self) -> None:
        """The relay is shutting down: end this stream so the client retries elsewhere."""
        self._terminate(
            Overloaded(
                "sse-relay is restarting: stream ended after "
                f"{self.bytes_out} bytes / {self._frames()} events; retry the request"
            ),
            Outcome.DRAINED,
        )

    # -- from the client adapter ------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self._finished:
            return  # the answer is out and upstream gone: nothing is waiting for these
        self._body_size += len(data)
        if self._body_size > self._settings.max_body_bytes:
            self._refuse_body(BodyTooLarge(self._too_large_message()))
            return
        declared = self._declared_length
        if declared is not None and self._body_size > declared:
            self._refuse_body(BadRequest("the request body is longer than its content-length"))
            return
        if not self._head_sent:
            self._body_deadline = self._loop.time() + self._settings.body_timeout
        if self._body is not None:
            self._body.append(data)
        if self._upstream is not None:
            self._upstream.send_body(data)

    def on_request_end(self) -> None:
        self._request_ended = True
        self._body_deadline = math.inf
        if self._finished:
            return
        declared = self._declared_length
        if declared is not None and self._body_size != declared:
            self._refuse_body(BadRequest("the request body is shorter than its content-length"))
            return
        if self._hold_body:
            self._apply_body_policy()
        elif self._upstream is not None:
            self._upstream.send_end()

    def on_client_gone(self) -> None:
        """The client closed or reset: stop upstream at once so no tokens are wasted."""
        if self._finished:
            return
        self._finish(Outcome.CLIENT_ABORT)
        self._abort_upstream()

    def on_client_paused(self) -> None:
        """The client's send buffer is over its high-water mark: stop reading upstream."""
        if not self._client_paused:
            self._client_paused_at = self._loop.time()
        self._client_paused = True
        if self._upstream is not None:
            self._upstream.pause_reading()

    def on_client_resumed(self) -> None:
        self._client_paused = False
        # Silence while paused was our own doing; it must not count as upstream idling.
        self._last_byte = self._loop.time()
        if self._upstream is not None:
            self._upstream.resume_reading()

    # -- from upstream ----------------------------------------------------------------

    def on_upstream_paused(self) -> None:
        self._client.pause_request_body()

    def on_upstream_resumed(self) -> None:
        self._client.resume_request_body()

    def on_response_head(self, status: int, headers: Headers) -> None:
        if self._finished:
            return
        if status in self._settings.retry.statuses and self._retry_later(
            f"upstream answered {status}", retry_after(headers)
        ):
            return
        self._head_sent = True
        self._body = None
        self._body_deadline = math.inf
        # Upstream's silence is measured from its head; waiting for the head is TTFB.
        self._head_at = self._last_byte = self._loop.time()
        self._status = status
        request_id = header_value(headers, b"request-id")
        self._request_id = None if request_id is None else request_id.decode(errors="replace")
        content_type = header_value(headers, b"content-type") or b""
        headers = relayed_response_headers(headers)
        if content_type.lower().startswith(b"text/event-stream"):
            encoding = header_value(headers, b"content-encoding")
            if encoding is None or encoding.lower() == b"identity":
                self._scanner = FrameScanner()
                self._clock = KeepaliveClock(self._settings.keepalive_interval, self._loop.time())
                # Keepalives add bytes, so the client's framing cannot be a fixed length.
                headers = [(k, v) for k, v in headers if k != b"content-length"]
                self._arm(self._loop.time() + self._settings.keepalive_interval)
            else:
                self._metrics.sse_compressed()
                log.warning(
                    "SSE response for %s is content-encoded (%s): relayed without keepalives",
                    self._head.target.decode(errors="replace"),
                    encoding.decode(errors="replace"),
                )
        if self._dropped_params:
            headers.append((b"x-sse-relay-dropped-params", ",".join(self._dropped_params).encode()))
        self._client.send_head(status, headers)

    def on_response_body(self, data: bytes) -> None:
        # The hot path: one clock read, one subtraction and compare (the longest upstream
        # silence, for the stream's record), one scanner pass, one write.
        now = self._loop.time()
        silence = now - self._last_byte
        if silence > self._longest_silence:
            self._longest_silence = silence
        self._last_byte = now
        scanner = self._scanner
        if scanner is not None:
            if self.keepalives and not self.bytes_out and data.startswith(_BOM):
                # A BOM only means something at the very start; a keepalive went first.
                data = data[3:]
            scanner.feed(data)
        self.bytes_out += len(data)
        self._client.send_body(data)

    def on_response_end(self) -> None:
        if self._finished:
            return
        self._upstream = None
        scanner = self._scanner
        if scanner is not None and needs_truncation_error(scanner):
            self._upstream_error = "truncated"
            self._terminate(self._lost("the stream ended without message_stop"), Outcome.TRUNCATED)
            return
        self._finish(Outcome.COMPLETED)
        self._client.send_end()

    def on_upstream_failed(self, error: RelayError) -> None:
        """Upstream could not be reached or died: retry if free, else end loudly."""
        if self._finished:
            return
        self._abort_upstream()
        if error.transparent_retry and self._retry_later(error.message):
            return
        self._upstream_error = error.kind
        self._error_detail = error.logged
        failure = self._lost(error.message, error.detail) if self._head_sent else error
        self._terminate(failure, Outcome.UPSTREAM_ERROR)

    # -- internals --------------------------------------------------------------------

    def _try_upstream(self) -> None:
        if self._finished or self._open_upstream is None:
            return
        if not self._tries:
            self._first_try_at = self._loop.time()
        self._tries += 1
        self._connecting = self._loop.create_task(
            self._connect(self._open_upstream, self._tries - 1)
        )

    async def _connect(self, open_upstream: OpenUpstream, attempt: int) -> None:
        try:
            try:
                upstream = await open_upstream(self._head, self, attempt)
            finally:
                self._connecting = None
            self._upstream = upstream
            for chunk in self._body or ():
                upstream.send_body(chunk)
            if self._request_ended:
                upstream.send_end()
        except RelayError as error:
            self.on_upstream_failed(error)
            return
        except Exception as exc:
            # A bug must not leave the client hanging: answer, and say what broke.
            log.exception("relaying %s %s failed", *self._describe())
            self.on_upstream_failed(UpstreamLost("sse-relay internal error", repr(exc)))
            return
        self._last_byte = self._loop.time()
        self._arm(self._last_byte + self._settings.read_timeout)

    def _retry_later(self, reason: str, retry_after: float | None = None) -> bool:
        """Schedule another try if nothing reached the client and the budget allows."""
        if self._head_sent or self._body is None:
            return False
        elapsed = self._loop.time() - self._started
        delay = self._settings.retry.delay(self._tries, elapsed, random.random(), retry_after)
        if delay is None:
            return False
        self._abort_upstream()
        self._cancel_timer()
        self._retries += 1
        log.info("retrying %s %s in %.2f s: %s", *self._describe(), delay, reason)
        self._loop.call_later(delay, self._try_upstream)
        return True

    def _refuse_body(self, error: RelayError) -> None:
        """The request body broke a rule: nothing more of it goes upstream."""
        self._abort_upstream()
        if not self._head_sent:
            self.refuse(error)
            return
        # Upstream answered before the body was complete; the answer is already under
        # way, so only a reset can still say no.
        log.warning("reset %s %s: %s", *self._describe(), error.message)
        self._metrics.refused(error.status)
        self._finish(Outcome.REFUSED)
        self._client.abort()

    def _apply_body_policy(self) -> None:
        body = b"".join(self._body or ())
        try:
            result = self._settings.body_policy.apply(body)
        except RelayError as error:
            self.refuse(error)
            return
        if result.kept:
            log.warning("kept denied params %s: params in the body depend on them", result.kept)
        if result.body is not body:
            headers = [(k, v) for k, v in self._head.headers if k != b"content-length"]
            headers.append((b"content-length", str(len(result.body)).encode()))
            self._head = replace(self._head, headers=headers)
            self._body = [result.body]
            self._dropped_params = result.dropped
        self._try_upstream()

    def _terminate(self, error: RelayError, outcome: Outcome) -> None:
        """End the exchange with `error`, in the best form the client can still take."""
        if self._finished:
            return
        complete = (
            self._head_sent and self._scanner is not None and ended_by_upstream(self._scanner)
        )
        self._finish(Outcome.COMPLETED if complete else outcome, None if self._head_sent else error)
        self._abort_upstream()
        if not self._head_sent:
            log.warning("answered %s %s with %d: %s", *self._describe(), error.status, error.logged)
            self._send_error_response(error)
        elif complete:
            # The Messages stream is complete (message_stop) or upstream reported its own
            # error: an added error would make a finished, paid-for turn look failed.
            log.info("ended %s %s after its last event: %s", *self._describe(), error.logged)
            self._client.send_end()
        elif self._scanner is not None:
            log.warning("ended %s %s with an error frame: %s", *self._describe(), error.logged)
            self._client.send_body(ending_frames(self._scanner, error.error_type, error.message))
            self._client.send_end()
        else:
            # A fixed-length or compressed body cannot carry an error in-band; a reset is
            # the only way the client learns it is incomplete.
            log.warning("reset %s %s: %s", *self._describe(), error.logged)
            self._client.abort()

    def _send_error_response(self, error: RelayError) -> None:
        headers, body = error_response(error, self._request_id or new_request_id())
        self._head_sent = True
        self._client.send_head(error.status, headers)
        self._client.send_body(body)
        self._client.send_end()

    def _abort_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abort()
            # A congested upstream may have paused the client's body; a retry needs it.
            self._client.resume_request_body()

    def _finish(self, outcome: Outcome, answer: RelayError | None = None) -> None:
        """The one place a stream ends (once): its record goes to metrics and the log.

        `answer` is the relay-made response about to be sent, which sets the status.
        """
        if self._finished:
            return
        self._finished = True
        self._active.discard(self)
        self._cancel_timer()
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        self.outcome = outcome
        if answer is not None:
            self._status = answer.status
            self._request_id = new_request_id()
        record = self._record(outcome)
        self._metrics.stream_finished(record)
        log_stream(record)

    def _record(self, outcome: Outcome) -> StreamRecord:
        now = self._loop.time()
        silence = None
        if self._head_at is not None:
            # The silence still running counts too (a read timeout is all silence), but
            # not while the client was paused: that silence was our own doing.
            silence = self._longest_silence
            if not self._client_paused:
                silence = max(silence, now - self._last_byte)
        scanner = self._scanner
        return StreamRecord(
            http_version=self._head.http_version,
            method=self._head.method.decode(errors="replace"),
            path=self._head.target.decode(errors="replace"),
            status=self._status,
            request_id=self._request_id,
            outcome=outcome,
            ttfb=None if self._head_at is None else self._head_at - self._first_try_at,
            duration=now - self._started,
            longest_silence=silence,
            keepalives=self.keepalives,
            bytes_in=self._body_size,
            bytes_out=self.bytes_out,
            events=0 if scanner is None else scanner.frames,
            pings=0 if scanner is None else scanner.pings,
            retries=self._retries,
            upstream_error=self._upstream_error,
            error_detail=self._error_detail,
        )

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_at(min(when, self._body_deadline), self._on_timer)

    def _on_timer(self) -> None:
        """Wakes at most once per interval: body, read and send timeouts, keepalives."""
        self._timer = None
        if self._finished:
            return
        now = self._loop.time()
        if now >= self._body_deadline:
            self._abort_upstream()
            timeout = self._settings.body_timeout
            self.refuse(BodyTimeout(f"the request body sent nothing for {timeout:g} s"))
            return
        interval = self._settings.keepalive_interval
        if self._client_paused:
            stalled_until = self._client_paused_at + self._settings.send_timeout
            if now >= stalled_until:
                self._drop_stalled_client()
            else:
                self._arm(min(now + interval, stalled_until))
            return
        deadline = self._last_byte + self._settings.read_timeout
        if now >= deadline:
            self._upstream_error = "read_timeout"
            silent = f"upstream sent nothing for {self._settings.read_timeout:g} s"
            error = self._lost(silent) if self._head_sent else UpstreamTimeout(silent)
            self._terminate(error, Outcome.READ_TIMEOUT)
            return
        next_check = deadline
        clock, scanner = self._clock, self._scanner
        if clock is not None and scanner is not None:
            decision = clock.decide(now, self._last_byte, scanner.at_boundary)
            if decision.write:
                self.keepalives += 1
                self._metrics.keepalive()
                self._client.send_body(self._settings.keepalive_frame)
            next_check = min(next_check, decision.next_check)
        self._arm(next_check)

    def _drop_stalled_client(self) -> None:
        """Like nginx's send_timeout: a client that takes nothing holds a stream slot and
        an upstream connection for nobody, so both go."""
        log.warning(
            "dropped %s %s: the client took no bytes for %g s",
            *self._describe(),
            self._settings.send_timeout,
        )
        self._finish(Outcome.CLIENT_STALL)
        self._abort_upstream()
        self._client.abort()

    def _lost(self, reason: str, detail: str | None = None) -> UpstreamLost:
        """The error a started stream ends with; the message says how far it got."""
        return UpstreamLost(
            f"upstream connection lost after {self.bytes_out} bytes / "
            f"{self._frames()} events: {reason}",
            detail,
        )

    def _frames(self) -> int:
        return self._scanner.frames if self._scanner is not None else 0

    def _too_large_message(self) -> str:
        return f"request body exceeds the relay's limit of {self._settings.max_body_bytes} bytes"

    def _describe(self) -> tuple[str, str]:
        return self._head.method.decode(), self._head.target.decode(errors="replace")
