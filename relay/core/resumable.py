"""A resumable stream's side towards its clients: whichever connection holds it now.

`ResumableClient` is the `ClientSide` a resumable `RelayStream` writes to. Every body
byte also goes into the stream's `Journal`; the connection that opened the stream may
drop, and a later resume request (relay/core/resume_request.py) attaches another one,
which gets the journal from its offset and then the live tail. A client that asked for
`id:` lines gets them here, before the journal: replays carry the same ids.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from relay.core.event_ids import EventIdWriter, takes_event_ids
from relay.core.exchange import BodyWriter, ClientSide, DirectClient, Headers
from relay.core.journal import Ending, Journal
from relay.core.stream_record import StreamRecord

#: The response header that names a resumable stream (its id, at least 128 random bits).
STREAM_ID_HEADER = b"relay-stream-id"
#: The request header that asks for a resumable stream.
RESUMABLE_HEADER = b"relay-resumable"
#: Where resume (GET) and cancel (DELETE) requests go: PREFIX + stream id.
RESUME_PREFIX = b"/relay/v1/streams/"


def short_id(stream_id: str) -> str:
    """What logs show of an id: enough to correlate, too little to resume with."""
    return stream_id[:8]


class JournalMirror(Protocol):
    """A copy of the journal kept where other relay instances can resume from it
    (relay/journal/redis_writer.py). It batches: nothing here may block or do IO."""

    def head(self, status: int, headers: Headers) -> None: ...
    def body(self, data: bytes) -> None: ...
    def end(self, ending: Ending) -> None: ...
    def attached(self, client: ClientSide) -> None: ...


class ResumableClient:
    """Journals what the stream writes and forwards it to the attached client, if any."""

    __slots__ = (
        "_detached_at",
        "_event_ids",
        "_head",
        "_named",
        "_wants_event_ids",
        "client",
        "detached",
        "journal",
        "mirror",
        "resumes",
        "stream_id",
    )

    def __init__(
        self,
        client: ClientSide,
        journal: Journal,
        stream_id: str,
        event_ids: bool = False,
        named: bool = True,
    ) -> None:
        #: The connection that takes the stream now; None while detached.
        self.client: ClientSide | None = client
        self.journal = journal
        #: The shared journal's copy, when there is one (--journal redis://...).
        self.mirror: JournalMirror | None = None
        self.stream_id = stream_id
        self._head: tuple[int, Headers] | None = None
        #: Resumes served, and seconds spent with no client attached (for the record).
        self.resumes = 0
        self.detached = 0.0
        self._detached_at: float | None = None
        #: The request asked for `id:` lines (`relay-event-ids: 1`); they go in once the
        #: head shows an event stream, and only then is there a writer.
        self._wants_event_ids = event_ids
        self._event_ids: EventIdWriter | None = None
        #: The client is told the id (`relay-stream-id`). Not so for a stream journaled
        #: only for identical retries: an unmodified client gets the head it would
        #: without the relay, and no id reaches a client that did not ask for one.
        self._named = named

    # -- ClientSide -------------------------------------------------------------------

    def send_head(self, status: int, headers: Headers) -> None:
        if self._named and 200 <= status < 300:
            headers = [*headers, (STREAM_ID_HEADER, self.stream_id.encode())]
        if self._wants_event_ids and takes_event_ids(status, headers):
            self._event_ids = EventIdWriter()
        self._head = (status, headers)
        if self.mirror is not None:
            self.mirror.head(status, headers)
        if self.client is not None:
            self.client.send_head(status, headers)

    def send_body(self, data: bytes) -> None:
        event_ids = self._event_ids
        if event_ids is not None:
            data = event_ids.add_ids(data, self.journal.size)
        self.journal.append(data)
        if self.mirror is not None:
            self.mirror.body(data)
        if self.client is not None:
            self.client.send_body(data)

    def body_writer(self) -> BodyWriter:
        """Where the native path puts each piece (relay.core.exchange.DirectClient):
        into the journal's arena and to the attached client's own writer (or nowhere
        while none is), as `send_body` would, when no piece needs Python: no shared
        journal's copy, no `id:` lines, a client that takes pieces directly. Otherwise
        to `send_body`. The stream asks again whenever its client changes."""
        if self.mirror is None and self._event_ids is None:
            client = self.client
            if client is None:
                return BodyWriter(None, chunked=False, journal=self.journal)
            direct = client.body_writer() if isinstance(client, DirectClient) else None
            if direct is not None:
                return BodyWriter(direct.write, direct.chunked, self.journal)
        return BodyWriter(self.send_body, chunked=False)

    def send_end(self) -> None:
        self._ended(Ending.END)
        if self.client is not None:
            self.client.send_end()

    def abort(self) -> None:
        self._ended(Ending.RESET)
        client, self.client = self.client, None
        if client is not None:
            client.abort()

    def pause_request_body(self) -> None:
        if self.client is not None:
            self.client.pause_request_body()

    def resume_request_body(self) -> None:
        if self.client is not None:
            self.client.resume_request_body()

    def _ended(self, ending: Ending) -> None:
        self.journal.ending = ending
        if self.mirror is not None:
            self.mirror.end(ending)

    # -- taking the stream over -------------------------------------------------------

    @property
    def resumable(self) -> bool:
        """A response whose every byte is still in the journal, started with a 2xx."""
        head = self._head
        return head is not None and 200 <= head[0] < 300 and not self.journal.overflowed

    def in_record(self, record: StreamRecord, now: float) -> StreamRecord:
        """`record` with this stream's id (as logs show it), resumes and detached time."""
        return replace(
            record,
            stream_id=short_id(self.stream_id),
            resumes=self.resumes,
            detached_seconds=self.detached_seconds(now),
        )

    def detach(self, now: float) -> None:
        self.client = None
        self._detached_at = now

    def detached_seconds(self, now: float) -> float:
        """Time with no client attached, the current stretch included."""
        since = self._detached_at
        return self.detached + (0.0 if since is None else now - since)

    def attach(self, client: ClientSide, offset: int, now: float) -> int | None:
        """Give the stream to `client` from body byte `offset`: the head, the journal
        from there, and its end if it has one. The bytes replayed, or None if `offset`
        cannot be served (nothing is written to `client` then)."""
        replay = self.journal.since(offset)
        if replay is None or self._head is None:
            return None
        self.resumes += 1
        if self._detached_at is not None:
            self.detached += now - self._detached_at
            self._detached_at = None
        previous, self.client = self.client, None
        if previous is not None:
            previous.abort()  # taken over: the newest resumer has the stream
        if self.mirror is not None:
            self.mirror.attached(client)
        client.send_head(*self._head)
        if replay:
            client.send_body(replay)
        ending = self.journal.ending
        if ending is Ending.END:
            client.send_end()
        elif ending is Ending.RESET:
            client.abort()
        else:
            self.client = client
        return len(replay)
