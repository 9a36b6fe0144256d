"""The relay's access log, read back: one JSON line per finished stream on its stderr."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from tests.clients import wait_for

if TYPE_CHECKING:
    from tests.relayproc import RelayProcess


def _records(relay: RelayProcess) -> list[dict[str, Any]]:
    records = []
    for line in relay.stderr_text.splitlines():
        if line.startswith(b"{") and b'"sse_relay.access"' in line:
            records.append(json.loads(line))
    return records


def stream_record(relay: RelayProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access-log fields of the stream whose response carried `request_id` (the
    upstream's), waiting for the line: the relay writes it as the stream ends."""
    found: list[dict[str, Any]] = []

    def logged() -> bool:
        found[:] = [r for r in _records(relay) if r.get("request_id") == request_id]
        return bool(found)

    wait_for(logged, timeout)
    assert len(found) == 1, found
    return found[0]
