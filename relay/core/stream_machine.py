"""The relay core: one request/response exchange as a state machine, sans-IO.

In the style of h11's `Connection`: the machine is fed what happened (request head and
body, upstream head, bytes, end, failure, the client pausing or leaving) with the time
it happened, and returns what to do as `relay.core.stream_actions` values. It owns every
decision: retries and backoff, keepalives only at frame boundaries, the read, send and
body timeouts, the truncation guard, drain, and how each failure reaches the client.
It never touches a socket, a task or a timer; `RelayStream` (relay/core/stream.py) does.

The per-chunk path, `response_body`, is a plain method that returns the bytes to write:
no action objects, no timer, no allocation beyond what the scanner needs.
"""

from __future__ import annotations

import logging
import math

from relay.core.endings import ended_by_upstream, ending_frames, needs_truncation_error
from relay.core.errors import (
    BodyTimeout,
    Overloaded,
    RelayError,
    UpstreamTimeout,
)
from relay.core.exchange import Headers
from relay.core.headers import header_value, relayed_response_headers
from relay.core.retry import retry_after
from relay.core.stream_actions import (
    END_RESPONSE,
    PAUSE_UPSTREAM,
    RESET_CLIENT,
    RESUME_UPSTREAM,
    UPSTREAM_END,
    Action,
    OpenUpstream,
    SendBody,
    SendHead,
    SendKeepalive,
    UpstreamBody,
)
from relay.core.stream_record import Outcome
from relay.core.stream_state import StreamState, Upstream

log = logging.getLogger("sse_relay")


class StreamMachine(StreamState):
    """One exchange: request to upstream, response back, keepalives in between."""

    __slots__ = ()

    # -- the stream's life ------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Relay a request that passed `relay.core.request_rules.check_request`."""
        error = self._body.declare(self.head)
        if error is not None:
            self._refuse(error, now)
        else:
            if self.head.has_body and not self._body.ended:
                self._body_deadline = now + self._settings.body_timeout
                self._arm(self._body_deadline)
            if not self._hold_body:
                self._open(now, now)
        return self._take(now)

    def refuse(self, error: RelayError, now: float) -> list[Action]:
        """Answer the client without asking upstream (limits, policy, overload)."""
        self._refuse(error, now)
        return self._take(now)

    def drain(self, now: float) -> list[Action]:
        """The relay is shutting down: end this stream so the client retries elsewhere."""
        message = (
            f"sse-relay is restarting: stream ended after {self.bytes_out} bytes / "
            f"{self._frames()} events; retry the request"
        )
        self._terminate(Overloaded(message), Outcome.DRAINED)
        return self._take(now)

    def tick(self, now: float) -> list[Action]:
        """The timer fired: body, read and send timeouts, and keepalives."""
        self._timer_at = math.inf
        if not self._finished:
            self._on_tick(now)
        return self._take(now)

    # -- from the client --------------------------------------------------------------

    def request_body(self, data: bytes, now: float) -> list[Action]:
        if self._finished:
            return []  # the answer is out and upstream gone: nothing waits for these
        error = self._body.add(data)
        if error is not None:
            self._refuse_body(error, now)
        else:
            if not self._head_sent:
                self._body_deadline = now + self._settings.body_timeout
            if self.upstream is Upstream.OPEN:
                self._out.append(UpstreamBody(data))
        return self._take(now)

    def request_end(self, now: float) -> list[Action]:
        error = self._body.end()
        self._body_deadline = math.inf
        if self._finished:
            return []
        if error is not None:
            self._refuse_body(error, now)
        elif self._hold_body:
            self._apply_body_policy(now)
        elif self.upstream is Upstream.OPEN:
            self._out.append(UPSTREAM_END)
        return self._take(now)

    def client_gone(self, now: float) -> list[Action]:
        """The client closed or reset: stop upstream at once so no tokens are wasted."""
        if not self._finished:
            self._finish(Outcome.CLIENT_ABORT)
        return self._take(now)

    def client_detached(self, now: float) -> list[Action]:
        """A resumable stream's client left: upstream goes on for the grace period, into
        the journal only (no keepalives: nobody is there); a resume attaches again."""
        if self._finished:
            return []
        self._grace_deadline = now + self._settings.resume_grace
        out = self.client_resumed(now) if self._client_paused else []
        self._arm(self._grace_deadline)
        return out + self._take(now)

    def client_attached(self, now: float) -> list[Action]:
        """A resume took the stream over: no more grace deadline."""
        self._grace_deadline = math.inf
        self._arm(now)  # the next keepalive decision is due from here on
        return self._take(now)

    def cancel(self, now: float) -> list[Action]:
        """The client asked to stop paying (DELETE on the stream): end it now."""
        if not self._finished:
            self._out.append(RESET_CLIENT)
            self._finish(Outcome.CLIENT_ABORT)
        return self._take(now)

    def client_paused(self, now: float) -> list[Action]:
        """The client's send buffer is over its high-water mark: stop reading upstream."""
        if not self._client_paused:
            self._client_paused_at = now
        self._client_paused = True
        return [PAUSE_UPSTREAM] if self.upstream is Upstream.OPEN else []

    def client_resumed(self, now: float) -> list[Action]:
        self._client_paused = False
        # Silence while paused was our own doing; it must not count as upstream idling.
        self._last_byte = now
        return [RESUME_UPSTREAM] if self.upstream is Upstream.OPEN else []

    # -- from upstream ----------------------------------------------------------------

    def upstream_opened(self, now: float) -> list[Action]:
        """The try asked for is open and its request head is out."""
        if self._finished or self.upstream is not Upstream.OPENING:
            return []
        self.upstream = Upstream.OPEN
        for chunk in self._body.kept or ():
            self._out.append(UpstreamBody(chunk))
        if self._body.ended:
            self._out.append(UPSTREAM_END)
        if self._client_paused:
            self._out.append(PAUSE_UPSTREAM)
        self._last_byte = now
        self._arm(now + self._settings.read_timeout)
        return self._take(now)

    def response_head(self, status: int, headers: Headers, now: float) -> list[Action]:
        if self._finished:
            return []
        if self._head_sent:  # a resume's answer: its body continues the one sent
            if status != 200:
                self._terminate(
                    self._lost(f"the resume was refused ({status})"), Outcome.UPSTREAM_ERROR
                )
            return self._take(now)
        if status in self._settings.retry.statuses and self._retry_later(
            f"upstream answered {status}", now, retry_after(headers)
        ):
            return self._take(now)
        self._head_sent = True
        self._body.release()
        self._body_deadline = math.inf
        # Upstream's silence is measured from its head; waiting for the head is TTFB.
        self._head_at = self._last_byte = now
        self._status = status
        request_id = header_value(headers, b"request-id")
        self._request_id = None if request_id is None else request_id.decode(errors="replace")
        content_type = header_value(headers, b"content-type") or b""
        if self._resume is not None:
            headers = self._resume.learn(status, headers)
        headers = relayed_response_headers(headers)
        if content_type.lower().startswith(b"text/event-stream"):
            headers = self._start_sse(headers, now)
        if self._body.dropped_params:
            dropped = ",".join(self._body.dropped_params).encode()
            headers.append((b"x-sse-relay-dropped-params", dropped))
        self._out.append(SendHead(status, headers))
        return self._take(now)

    def response_body(self, data: bytes, now: float) -> bytes:
        """Upstream bytes in, the bytes to write to the client out (the hot path).

        One subtraction and compare (the longest upstream silence, for the record), one
        scanner pass, one counter; never called once the try is aborted or failed.
        """
        silence = now - self._last_byte
        if silence > self._longest_silence:
            self._longest_silence = silence
        self._last_byte = now
        scanner = self._scanner
        if scanner is not None:
            # Fed as upstream sent it: a BOM the relay drops still marks the start.
            scanner.feed(data)
            if self._at_start:  # until upstream's first bytes are settled
                data = self._start_of_body(data)
        self.bytes_out += len(data)
        return data

    def response_end(self, now: float) -> list[Action]:
        if self._finished:
            return []
        if self._held:  # a BOM's start and then the end: not a BOM, upstream's bytes
            self._out.append(SendBody(self._held))
        self.upstream = Upstream.NONE
        scanner, provider = self._scanner, self._provider
        if scanner is not None and needs_truncation_error(scanner, provider):
            self._upstream_error = "truncated"
            self._terminate(self._lost(provider.truncation_reason), Outcome.TRUNCATED)
        else:
            self._out.append(END_RESPONSE)
            self._finish(Outcome.COMPLETED)
        return self._take(now)

    def upstream_failed(self, error: RelayError, now: float) -> list[Action]:
        """Upstream could not be reached or died: retry if free, else end loudly."""
        if self._finished:
            return []
        self._abort_upstream()
        if self._head_sent and self._resume_upstream(now):
            log.info(
                "resuming %s %s from byte %d: %s",
                *self.describe(),
                self._upstream_offset,
                error.logged,
            )
        elif not (error.transparent_retry and self._retry_later(error.message, now)):
            self._upstream_error = error.kind
            self._error_detail = error.logged
            failure = self._lost(error.message, error.detail) if self._head_sent else error
            self._terminate(failure, Outcome.UPSTREAM_ERROR)
        return self._take(now)

    # -- internals --------------------------------------------------------------------

    def _open(self, at: float, now: float) -> None:
        if not self._tries:
            self._first_try_at = at
        self._out.append(OpenUpstream(self._tries, at))
        self._tries += 1
        self.upstream = Upstream.OPENING

    def _retry_later(self, reason: str, now: float, wait: float | None = None) -> bool:
        """Schedule another try if nothing reached the client and the budget allows."""
        if self._head_sent or self._body.kept is None:
            return False
        delay = self._settings.retry.delay(self._tries, now - self._started, self._jitter(), wait)
        if delay is None:
            return False
        self._abort_upstream()
        self._arm(math.inf)  # no read timeout while waiting: only the body's, if any
        self._retries += 1
        log.info("retrying %s %s in %.2f s: %s", *self.describe(), delay, reason)
        self._open(now + delay, now)
        return True

    def _apply_body_policy(self, now: float) -> None:
        try:
            self.head = self._body.apply_policy(self._settings.body_policy, self.head)
        except RelayError as error:
            self._refuse(error, now)
            return
        self._open(now, now)

    def _refuse(self, error: RelayError, now: float) -> None:
        if self._finished:
            return
        log.warning("refused %s %s: %d %s", *self.describe(), error.status, error.message)
        self._refused = error.status
        self._send_error_response(error)
        self._finish(Outcome.REFUSED, error)

    def _refuse_body(self, error: RelayError, now: float) -> None:
        """The request body broke a rule: nothing more of it goes upstream."""
        self._abort_upstream()
        if not self._head_sent:
            self._refuse(error, now)
            return
        # Upstream answered before the body was complete; the answer is already under
        # way, so only a reset can still say no.
        log.warning("reset %s %s: %s", *self.describe(), error.message)
        self._refused = error.status
        self._out.append(RESET_CLIENT)
        self._finish(Outcome.REFUSED)

    def _terminate(self, error: RelayError, outcome: Outcome) -> None:
        """End the exchange with `error`, in the best form the client can still take."""
        if self._finished:
            return
        scanner, provider = self._scanner, self._provider
        complete = self._head_sent and scanner is not None and ended_by_upstream(scanner, provider)
        self._abort_upstream()
        if not self._head_sent:
            log.warning("answered %s %s with %d: %s", *self.describe(), error.status, error.logged)
            self._send_error_response(error)
        elif complete:
            # The stream is complete (its terminal marker) or upstream reported its own
            # error: an added error would make a finished, paid-for turn look failed.
            log.info("ended %s %s after its last event: %s", *self.describe(), error.logged)
            self._out.append(END_RESPONSE)
        elif scanner is not None:
            log.warning("ended %s %s with an error frame: %s", *self.describe(), error.logged)
            frames = ending_frames(scanner, error.error_type, error.message, provider, error.status)
            self._out.append(SendBody(frames))
            self._out.append(END_RESPONSE)
        else:
            # A fixed-length or compressed body cannot carry an error in-band; a reset is
            # the only way the client learns it is incomplete.
            log.warning("reset %s %s: %s", *self.describe(), error.logged)
            self._out.append(RESET_CLIENT)
        self._finish(Outcome.COMPLETED if complete else outcome, None if self._head_sent else error)

    def _on_tick(self, now: float) -> None:
        if now >= self._grace_deadline:
            log.info("ended %s %s: no client resumed it in time", *self.describe())
            self._finish(Outcome.CLIENT_ABORT)
            return
        if now >= self._body_deadline:
            timeout = self._settings.body_timeout
            self._abort_upstream()
            self._refuse(BodyTimeout(f"the request body sent nothing for {timeout:g} s"), now)
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
            self._terminate(
                self._lost(silent) if self._head_sent else UpstreamTimeout(silent),
                Outcome.READ_TIMEOUT,
            )
            return
        next_check = deadline
        clock, scanner = self._clock, self._scanner
        if clock is not None and scanner is not None and self._grace_deadline == math.inf:
            decision = clock.decide(now, self._last_byte, scanner.at_boundary, interval)
            if decision.write:
                self.keepalives += 1
                frame = self._provider.keepalive_frame(self._settings.keepalive_frame)
                self._out.append(SendKeepalive(frame))
            next_check = min(next_check, decision.next_check)
        self._arm(next_check)
