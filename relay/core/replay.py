"""Identical-retry replay (`--replay-retries`): a client that lost its stream mid-way and
sends the very same request again gets that stream again, from byte 0 of its journal
and then its live tail, and upstream never sees the repeat.

With the flag every POST that did not ask for a resumable stream is journaled as one is
(relay/core/resumable.py), under no id the client is told. Whether a request repeats a
dropped stream is only known once its whole body is in, and upstream must not see a
repeat at all, so such a POST first reads its body here (`ReplayCandidate`). At its end
the client either takes the dropped stream over, as a resume does, or the request
becomes a relayed stream like any other. A stream whose whole answer reached a client
is nobody's retry: a re-send then is a new question. (A client that sent
`relay-resumable: 1` resumes by id instead, and is left to that.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from operator import itemgetter

from relay.core.errors import BodyTimeout, RelayError
from relay.core.exchange import ClientSide, OpenUpstream, RequestHead, StreamSettings
from relay.core.journal import Ending
from relay.core.request_body import RequestBody
from relay.core.resumable import ResumableClient, short_id
from relay.core.resume_store import ResumableEntry, ResumeStore
from relay.core.shared_journal import credential_of
from relay.core.stream import RelayStream
from relay.core.stream_record import Outcome
from relay.ops.metrics import RelayMetrics

log = logging.getLogger("sse_relay")

#: Request headers that change the answer, so a retry must repeat them too (with the
#: credential, method, target and body).
_KEY_HEADERS = frozenset({b"anthropic-version", b"anthropic-beta"})


class ReplayContext:
    """What the POSTs of one process share under --replay-retries: the store that finds
    dropped streams, the key that makes request digests unguessable, the live sets."""

    def __init__(
        self,
        store: ResumeStore,
        metrics: RelayMetrics,
        active: set[RelayStream],
        waiting: set[ReplayCandidate],
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._active = active
        #: POSTs still reading their body (the registry counts and drains them).
        self.waiting = waiting
        self._secret = secrets.token_bytes(32)

    def request_key(self, head: RequestHead, body_digest: bytes) -> bytes:
        """What a retry must repeat, as a keyed digest: the credential (as the store's
        keyed hash of it), method, target, the `_KEY_HEADERS` and the body."""
        mac = hmac.new(self._secret, self.store.owner_of(head.headers), hashlib.sha256)
        # By name only: repeated headers keep their order, which may carry meaning.
        fields = sorted((f for f in head.headers if f[0] in _KEY_HEADERS), key=itemgetter(0))
        for part in (head.method, head.target, *(n + b":" + v for n, v in fields), body_digest):
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return mac.digest()

    def open_stream(
        self,
        client: ClientSide,
        head: RequestHead,
        settings: StreamSettings,
        open_upstream: OpenUpstream,
        request_key: bytes | None,
    ) -> RelayStream:
        """The relayed stream a POST becomes. With `request_key` it is journaled (while
        the journals have room), for an identical retry to take over once its client
        left; without, it is one about to be ended, and plain."""
        store = self.store
        made = None if request_key is None else store.new_journal()
        if made is None:
            return RelayStream(client, head, settings, open_upstream, self.metrics, self._active)
        stream_id, journal = made
        side = ResumableClient(client, journal, stream_id, named=False)
        stream = RelayStream(
            side,
            head,
            settings,
            open_upstream,
            self.metrics,
            self._active,
            on_finish=lambda outcome: self._finished(side, outcome),
        )
        owner = store.owner_of(head.headers)
        store.add(stream_id, ResumableEntry(stream, side, owner, request_key=request_key))
        return stream

    def _finished(self, side: ResumableClient, outcome: Outcome) -> None:
        if outcome is Outcome.COMPLETED and side.client is None:
            # A whole answer no client got yet: a retry may take it, for --resume-retain.
            self.store.finished(side.stream_id, outcome)
        else:
            # Its client got it all, or it failed (not worth repeating: a retry goes
            # upstream anew); with no id known, nobody can resume it either.
            self.store.forget(side.stream_id)


class ReplayCandidate:
    """A POST under --replay-retries, as an adapter drives a stream.

    It reads the whole request body (within --max-body-bytes and --body-timeout,
    digested as it comes) before anything goes upstream, then replays the dropped
    stream it repeats or becomes a relayed stream. Until then it counts and drains as a
    stream does; whatever ends a request early (a refusal, a body breaking a rule, the
    client leaving, the drain) hands it to the stream it would have been, which ends it
    exactly as it ends any other.
    """

    def __init__(
        self,
        client: ClientSide,
        head: RequestHead,
        settings: StreamSettings,
        open_upstream: OpenUpstream,
        context: ReplayContext,
    ) -> None:
        self._client = client
        self.head = head
        self._settings = settings
        self._open_upstream = open_upstream
        self._context = context
        self._loop = asyncio.get_running_loop()
        self._body = RequestBody(settings.max_body_bytes)
        self._digest = hashlib.sha256()
        self._last_byte = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        # What the request became: a relayed stream, or the dropped one it repeats.
        self._stream: RelayStream | None = None
        self._replayed: ResumableEntry | None = None
        context.waiting.add(self)

    def start(self) -> None:
        if self._body.declare(self.head) is not None:
            self._relay(None)  # the stream refuses a declared length over the limit
        elif self.head.has_body:
            self._last_byte = self._loop.time()
            self._arm(self._last_byte + self._settings.body_timeout)

    def refuse(self, error: RelayError) -> None:
        if self._replayed is None:
            self._as_stream().refuse(error)

    def end_for_drain(self) -> None:
        if self._replayed is None:
            self._as_stream().end_for_drain()

    # -- as an adapter drives a stream -------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self._stream is not None:
            self._stream.on_request_body(data)
        elif self._replayed is None:
            if self._body.add(data) is not None:
                # It breaks a body rule, so it repeats nothing: the stream refuses it.
                self._relay(None).on_request_body(data)
                return
            self._digest.update(data)
            self._last_byte = self._loop.time()

    def on_request_end(self) -> None:
        if self._stream is not None:
            self._stream.on_request_end()
        elif self._replayed is None:
            key = None
            # Without a credential, callers cannot be told apart: one could get another's
            # answer, so such a request is neither replayed nor replayable.
            if self._body.end() is None and credential_of(self.head.headers):
                key = self._context.request_key(self.head, self._digest.digest())
                entry = self._context.store.retryable(key)
                if entry is not None and self._replay(entry):
                    return
            self._relay(key).on_request_end()

    def on_client_gone(self) -> None:
        stream = self._attached()
        if stream is not None:
            stream.on_client_gone()  # a replayed stream is detached again, for a retry
        elif self._replayed is None:
            self._as_stream().on_client_gone()

    def on_client_paused(self) -> None:
        self._paused = True
        stream = self._attached()
        if stream is not None:
            stream.on_client_paused()

    def on_client_resumed(self) -> None:
        self._paused = False
        stream = self._attached()
        if stream is not None:
            stream.on_client_resumed()

    # -- internals ---------------------------------------------------------------------

    def _replay(self, entry: ResumableEntry) -> bool:
        """The client takes the dropped stream over from byte 0, as a resume does."""
        replayed = entry.stream.attach(self._client, 0)
        if replayed is None:
            return False
        self._leave()
        self._body.release()
        self._replayed = entry
        self._context.metrics.retry_replayed()
        log.info(
            "answered an identical retry from stream %s (%d bytes from its journal)",
            short_id(entry.client.stream_id),
            replayed,
        )
        if entry.client.journal.ending is not Ending.OPEN:
            self._context.store.forget(entry.client.stream_id)  # its answer went out whole
        elif self._paused:
            entry.stream.on_client_paused()
        return True

    def _relay(self, key: bytes | None) -> RelayStream:
        """Relay the request as any stream, with what came of its body."""
        stream = self._hand_over(key)
        stream.start()
        self._feed(stream)
        return stream

    def _as_stream(self) -> RelayStream:
        """The stream this request is, made now if it is not one yet (to be ended: it
        repeats no stream, and goes nowhere upstream)."""
        stream = self._stream
        if stream is None:
            stream = self._hand_over(None)
            self._feed(stream)
        return stream

    def _hand_over(self, key: bytes | None) -> RelayStream:
        self._leave()
        stream = self._stream = self._context.open_stream(
            self._client, self.head, self._settings, self._open_upstream, key
        )
        if self._paused:
            stream.on_client_paused()
        return stream

    def _feed(self, stream: RelayStream) -> None:
        for chunk in self._body.kept or ():
            stream.on_request_body(chunk)
        self._body.release()  # the stream keeps the body now, for as long as it needs it

    def _attached(self) -> RelayStream | None:
        """The stream this client is attached to now, if any."""
        if self._stream is not None:
            return self._stream
        entry = self._replayed
        if entry is not None and entry.stream.is_attached(self._client):
            return entry.stream
        return None

    def _leave(self) -> None:
        """No longer a candidate: no body deadline of its own, not counted as waiting."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._context.waiting.discard(self)

    def _arm(self, at: float) -> None:
        self._timer = self._loop.call_at(at, self._check_body)

    def _check_body(self) -> None:
        timeout = self._settings.body_timeout
        due = self._last_byte + timeout
        if self._loop.time() < due:
            self._arm(due)
            return
        self._timer = None
        # The words the stream machine uses for a body that stalls before its answer.
        self._as_stream().refuse(BodyTimeout(f"the request body sent nothing for {timeout:g} s"))
