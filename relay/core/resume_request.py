"""A request for a resumable stream: `GET PREFIX/{id}` takes it over from an offset,
`DELETE PREFIX/{id}` cancels it. Any HTTP version: adapters drive it like a stream.

The offset is the number of response body bytes the client already has, keepalives
included, as `?offset=N` or the `relay-resume-offset` header, or as `Last-Event-ID: N`
with N the `id:` of the last event the client parsed (relay/core/event_ids.py: the same
offset). The answer is the original response head, the journal from that offset, then
the live tail.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs

from relay.core.errors import (
    BadRequest,
    MethodNotAllowed,
    RelayError,
    StreamNotFound,
    error_response,
    new_request_id,
)
from relay.core.exchange import ClientSide, RequestHead
from relay.core.headers import header_value
from relay.core.resumable import RESUME_PREFIX, short_id
from relay.core.resume_store import ResumableEntry, ResumeStore
from relay.core.shared_journal import RemoteResume, credential_of
from relay.ops.metrics import RelayMetrics

log = logging.getLogger("sse_relay")
_OFFSET_HEADER = b"relay-resume-offset"
_LAST_EVENT_ID = b"last-event-id"
_SERVED = (b"GET", b"DELETE")


class ResumeRequest:
    """One resume or cancel request, as an adapter's stream."""

    def __init__(
        self, client: ClientSide, head: RequestHead, store: ResumeStore, metrics: RelayMetrics
    ) -> None:
        self._client = client
        self.head = head
        self._store = store
        self._metrics = metrics
        self._entry: ResumableEntry | None = None
        # Serving a stream another instance runs, from the shared journal.
        self._remote: RemoteResume | None = None
        self._answered = False

    def start(self) -> None:
        try:
            self._serve()
        except RelayError as error:
            self.refuse(error)

    def refuse(self, error: RelayError) -> None:
        if self._answered:
            return
        self._answered = True
        self._metrics.resumed(error.error_type)
        headers, body = error_response(error, new_request_id())
        self._client.send_head(error.status, headers)
        self._client.send_body(body)
        self._client.send_end()

    def _serve(self) -> None:
        path, _, query = self.head.target.partition(b"?")
        stream_id = path[len(RESUME_PREFIX) :].decode("ascii", "replace")
        entry = self._store.find(stream_id, self._store.owner_of(self.head.headers))
        if entry is None and self._store.shared is not None and self.head.method in _SERVED:
            offset = None if self.head.method == b"DELETE" else self._offset(query)
            credential = credential_of(self.head.headers)
            self._answered = True  # from here on, the shared journal's reader answers
            self._remote = self._store.shared.remote_resume(
                self._client, stream_id, credential, offset
            )
            self._remote.start()
            return
        if entry is None:
            raise StreamNotFound("no resumable stream by that id")
        if self.head.method == b"DELETE":
            log.info("cancelled stream %s at its client's request", short_id(stream_id))
            entry.stream.cancel()
            self._answered = True
            self._metrics.resumed("cancelled")
            self._client.send_head(204, [(b"content-length", b"0")])
            self._client.send_end()
            return
        if self.head.method != b"GET":
            raise MethodNotAllowed("a resumable stream takes GET (resume) or DELETE (cancel)")
        offset = self._offset(query)
        replayed = entry.stream.attach(self._client, offset)
        if replayed is None:
            raise BadRequest(
                f"offset {offset} is not in the stream's journal "
                f"({entry.client.journal.size} bytes written)"
            )
        self._answered = True
        self._entry = entry
        self._metrics.resumed("resumed", replayed)
        log.info(
            "resumed stream %s at byte %d (%d replayed)", short_id(stream_id), offset, replayed
        )

    def _offset(self, query: bytes) -> int:
        """The header offset, else the query's, else Last-Event-ID, else 0.

        An explicit offset wins over Last-Event-ID without a check that they agree: an
        SSE library may send Last-Event-ID on its own, and it names the end of the last
        whole event, which may well lie before the bytes the application holds and
        says it holds. Both are offsets into the one journal; either is served right.
        """
        raw = header_value(self.head.headers, _OFFSET_HEADER)
        if raw is None:
            values = parse_qs(query.decode("ascii", "replace")).get("offset")
            raw = values[0].encode() if values else None
        if raw is not None:
            if not raw.isdigit():
                raise BadRequest("the offset must be a whole number of bytes")
            return int(raw)
        last_event_id = header_value(self.head.headers, _LAST_EVENT_ID)
        if not last_event_id:  # none, or empty: no event seen yet (as SSE has it)
            return 0
        if not last_event_id.isdigit():
            raise BadRequest("Last-Event-ID must be an id this relay sent (a byte offset)")
        return int(last_event_id)

    # -- as an adapter drives a stream -------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        pass  # a resume request has no body worth anything

    def on_request_end(self) -> None:
        pass

    def on_client_gone(self) -> None:
        if self._remote is not None:
            self._remote.stop()
        entry = self._entry
        if entry is not None and entry.stream.is_attached(self._client):
            entry.stream.on_client_gone()  # detached again, the grace period anew

    def on_client_paused(self) -> None:
        if self._remote is not None:
            self._remote.pause()
        entry = self._entry
        if entry is not None and entry.stream.is_attached(self._client):
            entry.stream.on_client_paused()

    def on_client_resumed(self) -> None:
        if self._remote is not None:
            self._remote.resume()
        entry = self._entry
        if entry is not None and entry.stream.is_attached(self._client):
            entry.stream.on_client_resumed()
