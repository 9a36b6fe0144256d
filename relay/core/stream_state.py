"""The state of one relayed exchange, and the record built from it at its end.

`StreamMachine` (relay/core/stream_machine.py) is this plus its transitions; the fields live
here so that each module reads in one sitting.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from enum import Enum

from relay.core.errors import RelayError, UpstreamLost, error_response, new_request_id
from relay.core.exchange import Headers, RequestHead, StreamSettings
from relay.core.headers import header_value
from relay.core.keepalive import KeepaliveClock
from relay.core.providers import provider_for
from relay.core.request_body import RequestBody
from relay.core.stream_actions import (
    ABORT_UPSTREAM,
    END_RESPONSE,
    RESET_CLIENT,
    Action,
    ArmTimer,
    Finish,
    OpenUpstream,
    SendBody,
    SendHead,
)
from relay.core.stream_record import Outcome, StreamRecord
from relay.core.upstream_resume import UpstreamResume
from relay.sse.scanner import FrameScanner

log = logging.getLogger("sse_relay")
_BOM = b"\xef\xbb\xbf"


class Upstream(Enum):
    """Where the current upstream try stands."""

    NONE = "none"  # no try yet, or the last one completed, failed or was aborted
    OPENING = "opening"  # OpenUpstream was asked for (maybe for later); not open yet
    OPEN = "open"  # its head went out: body, end and abort go to it


class StreamState:
    """What one exchange knows as it runs, and the record it leaves; `StreamMachine`
    (relay/core/stream_machine.py) holds the transitions."""

    __slots__ = (
        "_at_start",
        "_body",
        "_body_deadline",
        "_client_paused",
        "_client_paused_at",
        "_clock",
        "_error_detail",
        "_finish_pending",
        "_finished",
        "_first_try_at",
        "_grace_deadline",
        "_head_at",
        "_head_sent",
        "_held",
        "_hold_body",
        "_jitter",
        "_last_byte",
        "_longest_silence",
        "_out",
        "_provider",
        "_refused",
        "_request_id",
        "_resume",
        "_retries",
        "_scanner",
        "_settings",
        "_skipped",
        "_sse_compressed",
        "_started",
        "_status",
        "_timer_at",
        "_tries",
        "_upstream_error",
        "bytes_out",
        "head",
        "keepalives",
        "outcome",
        "upstream",
    )

    def __init__(
        self,
        head: RequestHead,
        settings: StreamSettings,
        now: float,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.head = head
        self._settings = settings
        #: Whose stream this is: its ending, error shapes and keepalive.
        self._provider = provider_for(head.target, settings.provider)
        #: Uniform in [0, 1): spreads the retries of many streams failing at once.
        self._jitter = jitter
        self._out: list[Action] = []
        self.upstream = Upstream.NONE
        self._body = RequestBody(settings.max_body_bytes)
        # While a request body is incomplete and unanswered: when it times out.
        self._body_deadline = math.inf
        # A resumable stream whose client left: when it ends unless a client comes back.
        self._grace_deadline = math.inf
        # With a body policy the whole body is needed before anything goes upstream.
        self._hold_body = settings.body_policy.active and head.method == b"POST"
        self._head_sent = False
        self._finished = False
        self._finish_pending = False
        self._refused: int | None = None
        self._client_paused = False
        self._client_paused_at = 0.0
        self._scanner: FrameScanner | None = None
        # The local relay mode: how to resume from the remote relay; None when off.
        self._resume = UpstreamResume() if settings.resume_upstream else None
        # Until upstream's first body bytes are settled (a BOM after a keepalive), and
        # the start of a BOM that came in a read of its own.
        self._at_start = True
        self._held = b""
        self._skipped = 0  # upstream bytes never relayed: a BOM dropped after a keepalive
        self._sse_compressed = False
        self._clock: KeepaliveClock | None = None
        self._timer_at = math.inf
        self._started = self._last_byte = self._first_try_at = now
        self._tries = 0
        self._retries = 0
        self._head_at: float | None = None
        self._longest_silence = 0.0
        self._status: int | None = None
        self._request_id: str | None = None
        self._upstream_error: str | None = None
        self._error_detail: str | None = None
        #: How the stream ended, once it has.
        self.outcome: Outcome | None = None
        #: Upstream response body bytes relayed (keepalives and relay-made bytes excluded).
        self.bytes_out = 0
        self.keepalives = 0

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def last_byte(self) -> float:
        """When upstream last sent body bytes (or a pause ended: its silence is ours)."""
        return self._last_byte

    @property
    def settling(self) -> bool:
        """An event stream's first bytes are not settled yet (`_start_of_body`)."""
        return self._scanner is not None and self._at_start

    def express_scanner(self) -> FrameScanner | None:
        """The scanner, when `response_body` has nothing left to do but scan, count and
        time (an event stream past `settling`, upstream open): its work may then move to
        the body pump's express path, which reports with `express_progress`."""
        if self._at_start or self._finished or self.upstream is not Upstream.OPEN:
            return None
        return self._scanner

    def express_progress(self, sent: int, last_byte: float, longest_silence: float) -> None:
        """What the express path did since it last said: `response_body`'s bookkeeping."""
        if sent:
            self.bytes_out += sent
            self._last_byte = last_byte
        if longest_silence > self._longest_silence:
            self._longest_silence = longest_silence

    def record(self, now: float) -> StreamRecord:
        """What the stream did, as metrics and the log take it (final once finished)."""
        silence = None
        if self._head_at is not None:
            # The silence still running counts too (a read timeout is all silence), but
            # not while the client was paused: that silence was our own doing.
            silence = self._longest_silence
            if not self._client_paused:
                silence = max(silence, now - self._last_byte)
        scanner = self._scanner
        assert self.outcome is not None
        return StreamRecord(
            http_version=self.head.http_version,
            method=self.head.method.decode(errors="replace"),
            path=self.head.target.decode(errors="replace"),
            status=self._status,
            request_id=self._request_id,
            outcome=self.outcome,
            ttfb=None if self._head_at is None else self._head_at - self._first_try_at,
            duration=now - self._started,
            longest_silence=silence,
            keepalives=self.keepalives,
            bytes_in=self._body.size,
            bytes_out=self.bytes_out,
            events=0 if scanner is None else scanner.frames,
            pings=0 if scanner is None else scanner.pings,
            retries=self._retries,
            upstream_error=self._upstream_error,
            error_detail=self._error_detail,
            sse_compressed=self._sse_compressed,
            provider=self._provider.name,
        )

    def _frames(self) -> int:
        return self._scanner.frames if self._scanner is not None else 0

    def describe(self) -> tuple[str, str]:
        """Method and target, for log lines."""
        return self.head.method.decode(errors="replace"), self.head.target.decode(errors="replace")

    # -- what the machine's inputs share: the actions they return ----------------

    def _take(self, now: float) -> list[Action]:
        """This input's actions; a stream that finished in it ends with `Finish`."""
        out, self._out = self._out, []
        if self._finish_pending:
            self._finish_pending = False
            out.append(Finish(self.record(now), self._refused))
        return out

    def _abort_upstream(self) -> None:
        if self.upstream is not Upstream.NONE:
            self.upstream = Upstream.NONE
            self._out.append(ABORT_UPSTREAM)

    def _arm(self, when: float) -> None:
        when = min(when, self._body_deadline, self._grace_deadline)
        if when != self._timer_at:
            self._timer_at = when
            self._out.append(ArmTimer(when))

    def _lost(self, reason: str, detail: str | None = None) -> UpstreamLost:
        """The error a started stream ends with; the message says how far it got."""
        return UpstreamLost(
            f"upstream connection lost after {self.bytes_out} bytes / "
            f"{self._frames()} events: {reason}",
            detail,
        )

    def _send_error_response(self, error: RelayError) -> None:
        self._request_id = new_request_id()
        body = self._provider.render_body(error.error_type, error.message, error.status)
        headers, body = error_response(error, self._request_id, body)
        self._head_sent = True
        self._status = error.status
        self._out.append(SendHead(error.status, headers))
        self._out.append(SendBody(body))
        self._out.append(END_RESPONSE)

    def _start_sse(self, headers: Headers, now: float) -> Headers:
        """An SSE response head: scan its body and keep it alive, unless it is
        content-encoded (then no frame can be inserted); the head to relay."""
        encoding = header_value(headers, b"content-encoding")
        if encoding is not None and encoding.lower() != b"identity":
            self._sse_compressed = True
            log.warning(
                "SSE response for %s is content-encoded (%s): relayed without keepalives",
                self.head.target.decode(errors="replace"),
                encoding.decode(errors="replace"),
            )
            return headers
        self._scanner = FrameScanner(self._provider.watch)
        self._clock = KeepaliveClock(now)
        self._arm(now + self._settings.keepalive_interval)
        # Keepalives add bytes, so the client's framing cannot be a fixed length.
        return [(k, v) for k, v in headers if k != b"content-length"]

    def _start_of_body(self, data: bytes) -> bytes:
        """Upstream's first bytes. After a keepalive a leading BOM is dropped (it only
        means something at the very start), also one split across reads, whose first
        bytes wait here until it is whole or is no BOM."""
        if not data:
            return data
        if not self.keepalives:
            self._at_start = False  # nothing went first: a BOM is where it belongs
            return data
        data = self._held + data
        if len(data) < len(_BOM) and _BOM.startswith(data):
            self._held = data
            return b""
        self._held = b""
        self._at_start = False
        if data.startswith(_BOM):
            self._skipped = len(_BOM)
            return data[len(_BOM) :]
        return data

    @property
    def _upstream_offset(self) -> int:
        """Upstream body bytes received, where a resume from the remote relay starts: it
        counts its own bytes, so those dropped or held here count too."""
        return self.bytes_out + self._skipped + len(self._held)

    def _resume_upstream(self, now: float) -> bool:
        """The remote relay's connection dropped mid-stream: ask it for the rest, from
        the byte we are at (the local relay mode). False if that cannot be done."""
        resume = self._resume
        head = None if resume is None else resume.next_head(self.head, self._upstream_offset)
        if resume is None or head is None:
            return False
        self.upstream = Upstream.OPENING
        self._out.append(OpenUpstream(self._tries, now + 0.1 * resume.resumes, head))
        self._tries += 1
        return True

    def _finish(self, outcome: Outcome, answer: RelayError | None = None) -> None:
        """The one place a stream ends (once); `Finish` closes this input's actions."""
        if self._finished:
            return
        self._abort_upstream()
        self._finished = self._finish_pending = True
        self._body_deadline = math.inf
        self.outcome = outcome
        if answer is not None:
            self._status = answer.status

    def _drop_stalled_client(self) -> None:
        """Like nginx's send_timeout: a client that takes nothing holds a stream slot and
        an upstream connection for nobody, so both go."""
        log.warning(
            "dropped %s %s: the client took no bytes for %g s",
            *self.describe(),
            self._settings.send_timeout,
        )
        self._out.append(RESET_CLIENT)
        self._finish(Outcome.CLIENT_STALL)
