"""SIGTERM while a resumable stream is detached (its client left, upstream goes on into
the journal): what the drain (relay/core/registry.py `drain`) makes of it.

On SIGTERM the relay closes its listeners, so no new connection can reach a detached
stream, and without a shared journal its journal ends with the process: the drain ends
it at once with its error frame (`end_for_drain`), while attached streams get up to
--drain-timeout. Only a connection opened before the drain can still ask for it, so
`KeptConnection` is opened first. (With a shared journal, detached streams run on
through the drain: tests/test_shared_journal.py.)
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Iterator

import h11
import httpx2
import pytest

from tests.accesslog import stream_record
from tests.clients import STREAM_BODY, script, single_error_frame, wait_for
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_metrics import scrape, value
from tests.test_resume import RESUMABLE, PartialStream

GAP = 1.0  # the drain ends a detached stream within this; a live one is silent twice as long
DRAIN = 10.0  # a drain timeout the stream ends well within


class KeptConnection:
    """An HTTP/1.1 keep-alive connection the relay has taken (one request answered on
    it) before the drain: the relay stops accepting new ones on SIGTERM."""

    def __init__(self, port: int) -> None:
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._h11 = h11.Connection(h11.CLIENT)
        status, _, _ = self.get("/relay/v1/streams/none-such")
        assert status == 404  # answered: the relay holds this connection now

    def get(self, target: str) -> tuple[int, dict[bytes, bytes], bytes]:
        """GETs `target` with the owner's key: status, headers and the whole body, which
        must end as its framing says (not with a reset or a close mid-body)."""
        if self._h11.our_state is h11.DONE:
            self._h11.start_next_cycle()
        headers = [("host", "relay"), ("x-api-key", RESUMABLE["x-api-key"])]
        request = h11.Request(method="GET", target=target, headers=headers)
        self._sock.sendall(
            (self._h11.send(request) or b"") + (self._h11.send(h11.EndOfMessage()) or b"")
        )
        status, fields, body = 0, {}, bytearray()
        while not isinstance(event := self._h11.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                self._h11.receive_data(self._sock.recv(65536))
            elif isinstance(event, h11.Response):
                status, fields = event.status_code, dict(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
        return status, fields, bytes(body)

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def kept() -> Iterator[list[KeptConnection]]:
    opened: list[KeptConnection] = []
    yield opened
    for connection in opened:
        connection.close()


def _direct(sim: SimServer, fields: dict[str, str]) -> bytes:
    with httpx2.Client(timeout=30) as client:
        return client.post(sim.url + "/v1/messages", content=STREAM_BODY, headers=fields).content


def _detach(relay: RelayProcess, fields: dict[str, str]) -> tuple[str, bytes]:
    """A resumable stream whose client read its first frames and left: its id and the
    body bytes that client had, once the relay counts it detached."""
    first = PartialStream(relay.port, {**RESUMABLE, **fields})
    first.read_until(100)
    have = bytes(first.body)
    first.cut()
    wait_for(lambda: value(scrape(relay), "sse_relay_streams_detached") == 1)
    return first.headers[b"relay-stream-id"].decode(), have


def test_without_a_shared_journal_a_detached_stream_ends_as_the_drain_starts(
    sim: SimServer, kept: list[KeptConnection]
) -> None:
    """No new connection can reach a detached stream once the listeners close, and its
    journal ends with the process: the drain ends it at once (upstream aborted, the
    journal closed by the relay's "restarting" error frame), while an attached stream
    runs on to its end. A resume over a connection opened before gets that journal."""
    fields = script(gaps=[[3, 30]])
    expected = _direct(sim, script())  # the same turn; the gap changes only timing
    live_fields = script(gaps=[[3, 2 * GAP]])
    live_expected = _direct(sim, live_fields)
    flags = ("--resume-grace", "30", "--drain-timeout", str(DRAIN))
    with RelayProcess(sim.url, *flags, keepalive=30.0) as relay:
        kept.append(KeptConnection(relay.port))
        closes = len(sim.closes)
        stream_id, have = _detach(relay, fields)
        live: list[bytes] = []
        reader = threading.Thread(target=lambda: live.append(_direct_via(relay, live_fields)))
        reader.start()
        wait_for(lambda: value(scrape(relay), "sse_relay_streams_active") == 2)
        sent = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        # Ended at once: long before the live stream, let alone the drain timeout.
        wait_for(lambda: value(scrape(relay), "sse_relay_streams_total") == 1, timeout=GAP)
        wait_for(lambda: any(close.client_aborted_midstream for close in sim.closes[closes:]))
        status, headers, rest = kept[0].get(f"/relay/v1/streams/{stream_id}?offset={len(have)}")
        reader.join(DRAIN)
        assert relay.proc.wait(DRAIN) == 0 and time.monotonic() - sent < DRAIN / 2
        record = stream_record(relay, headers[b"request-id"].decode())
    assert live == [live_expected]  # the attached stream was not cut
    assert status == 200
    body = have + rest
    error = single_error_frame(body)  # the last frame, and the only error frame
    journal = body[: body.rindex(b"event: error")]
    assert len(journal) >= len(have) and expected.startswith(journal)
    assert error["error"]["type"] == "overloaded_error"
    ended = f"sse-relay is restarting: stream ended after {len(journal)} bytes"
    assert error["error"]["message"].startswith(ended), error
    assert record["outcome"] == "drained"


def _direct_via(relay: RelayProcess, fields: dict[str, str]) -> bytes:
    """A plain stream through the relay, read whole (keepalives are 30 s apart)."""
    with httpx2.Client(timeout=30) as client:
        response = client.post(relay.url + "/v1/messages", content=STREAM_BODY, headers=fields)
        return response.content
