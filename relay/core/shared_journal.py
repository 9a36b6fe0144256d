"""What the core asks of a shared journal: a copy of every resumable stream's journal
that other relay instances can resume from (relay/journal/, `--journal redis://...`).

The instance that runs a stream mirrors its journal there; a resume for an id this
instance does not run is served from there, the live tail included, and a cancel is
passed on to the instance that runs it.
"""

from __future__ import annotations

from typing import Protocol

from relay.core.exchange import ClientSide, Headers
from relay.core.resumable import JournalMirror, ResumableClient
from relay.core.stream import RelayStream

_CREDENTIAL_HEADERS = (b"x-api-key", b"authorization")


def credential_of(headers: Headers) -> bytes:
    """The caller's credential (empty if it sent none): what a stream is bound to."""
    for name, value in headers:
        if name in _CREDENTIAL_HEADERS:
            return value
    return b""


class RemoteResume(Protocol):
    """One resume or cancel request served from the shared journal, as its adapter
    drives it."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...


class SharedJournal(Protocol):
    def mirror(
        self, stream_id: str, credential: bytes, stream: RelayStream, side: ResumableClient
    ) -> JournalMirror:
        """The copy of a new resumable stream's journal."""
        ...

    def remote_resume(
        self, client: ClientSide, stream_id: str, credential: bytes, offset: int | None
    ) -> RemoteResume:
        """Serve a stream this instance does not know: from byte `offset`, or cancel
        it when `offset` is None (a DELETE)."""
        ...
