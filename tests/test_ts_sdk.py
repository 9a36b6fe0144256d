"""The official TypeScript SDK through the relay, over HTTP/1.1 and over HTTP/2 (TLS, ALPN).

Each test runs `@anthropic-ai/sdk` on node (tests/node/stream.mjs, undici as its fetch)
and checks what the SDK itself produced: deltas, the signature, the final message, or
the error it threw. A control without the relay shows what the relay changes.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.accesslog import stream_record
from tests.clients import KEEPALIVE, raw_stream, sdk_stream
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.tsclient import TsRun, missing_node, ts_stream

KA = 0.1
GAP = 2.0  # seconds of upstream silence
IDLE = 1.0  # the client's byte watchdog: trips inside GAP unless keepalives come
_FRAME = re.compile(rb"event: (\w+)\ndata: ([^\n]*)\n\n")
TRANSPORTS = ["http/1.1", "h2"]


@pytest.fixture(scope="module", autouse=True)
def _node() -> None:
    if (reason := missing_node()) is not None:
        pytest.fail(reason)


@pytest.fixture(scope="module")
def relay(sim: SimServer, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, *relay_tls_args, keepalive=KA) as proc:
        yield proc


def _through(relay: RelayProcess, transport: str, ca_file: Path, **kwargs: Any) -> TsRun:
    """The TS SDK through `relay`: plain HTTP/1.1, or HTTP/2 on the TLS listener."""
    if transport == "h2":
        return ts_stream(relay.tls_url, http2=True, ca_file=ca_file, **kwargs)
    return ts_stream(relay.url, **kwargs)


def _http_version(transport: str) -> str:
    """How the relay's access log names the version `transport` must have used."""
    return "2" if transport == "h2" else "1.1"


def _frames(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    return [(name.decode(), json.loads(body)) for name, body in _FRAME.findall(data)]


def _signature(data: bytes) -> str:
    """The signature the one signature_delta frame of `data` carries, as sent."""
    found = [
        body["delta"]["signature"]
        for name, body in _frames(data)
        if name == "content_block_delta" and body["delta"]["type"] == "signature_delta"
    ]
    assert len(found) == 1
    signature: str = found[0]
    return signature


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ts_sdk_reads_text_thinking_and_the_signature_intact(
    sim: SimServer, relay: RelayProcess, ca_file: Path, transport: str
) -> None:
    """End to end, the TS SDK sees every event in order, the same deltas, and the
    thinking block's signature character for character, on the HTTP version asked for."""
    direct = raw_stream(sim.url)[2]
    _, direct_final = sdk_stream(sim.url)
    run = _through(relay, transport, ca_file)
    assert run.error is None, run.error
    assert run.events == [name for name, _ in _frames(direct) if name != "ping"]
    assert "".join(run.thinking) == direct_final.content[0].thinking
    assert "".join(run.text) == direct_final.content[1].text
    signature = _signature(direct)
    assert run.signatures == [signature] and len(signature) > 100
    assert run.final is not None
    assert run.final["content"] == direct_final.model_dump(exclude_none=True)["content"]
    assert run.final["content"][0]["signature"] == signature
    assert run.final["stop_reason"] == "end_turn"
    assert stream_record(relay, run.request_id)["http_version"] == _http_version(transport)


class CannedUpstream:
    """An HTTP/1.1 upstream answering every request with one fixed SSE body."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self.answered = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                with conn:
                    self._read_request(conn)
                    self.answered += 1
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                        b"request-id: req_canned_%d\r\nconnection: close\r\n"
                        b"content-length: %d\r\n\r\n%s"
                        % (self.answered, len(self._body), self._body)
                    )

    @staticmethod
    def _read_request(conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        assert length, head
        while len(body) < int(length.group(1)):
            body += conn.recv(65536)

    def close(self) -> None:
        self._server.close()


@pytest.fixture(scope="module")
def empty_signature(sim: SimServer) -> bytes:
    """A real sim stream whose thinking block is signed with an empty string."""
    direct = raw_stream(sim.url)[2]
    signed = b'"signature":"%s"' % _signature(direct).encode()
    assert direct.count(signed) == 1
    return direct.replace(signed, b'"signature":""')


@pytest.fixture(scope="module")
def canned_relay(empty_signature: bytes, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    upstream = CannedUpstream(empty_signature)
    try:
        with RelayProcess(upstream.url, *relay_tls_args, keepalive=KA) as proc:
            yield proc
    finally:
        upstream.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ts_sdk_keeps_an_empty_signature(
    canned_relay: RelayProcess, empty_signature: bytes, ca_file: Path, transport: str
) -> None:
    """An empty signature_delta is relayed, not dropped as "no content": the TS SDK
    gets its signature event with "" and a final thinking block signed with ""."""
    assert raw_stream(canned_relay.url)[2].replace(KEEPALIVE, b"") == empty_signature
    run = _through(canned_relay, transport, ca_file)
    assert run.error is None, run.error
    assert run.signatures == [""]
    assert run.final is not None
    thinking = run.final["content"][0]
    assert thinking["type"] == "thinking" and thinking["signature"] == ""
    assert thinking["thinking"] == "".join(run.thinking) != ""
    assert run.events == [name for name, _ in _frames(empty_signature)]
    record = stream_record(canned_relay, run.request_id)
    assert record["http_version"] == _http_version(transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_keepalives_carry_the_ts_sdk_through_a_silent_gap(
    sim: SimServer, relay: RelayProcess, ca_file: Path, transport: str
) -> None:
    """With a byte watchdog shorter than the gap (as Claude Code has), the TS SDK gets
    the whole turn through the relay: its keepalive comments restart the watchdog and
    the SDK parses past them."""
    fields: dict[str, object] = {"gaps": [[3, GAP]]}
    run = _through(relay, transport, ca_file, fields=fields, idle_timeout=IDLE)
    assert run.error is None, run.error
    # The gap changes timing only, not content.
    direct = raw_stream(sim.url)[2]
    _, direct_final = sdk_stream(sim.url)
    assert run.events == [name for name, _ in _frames(direct)]
    assert run.final is not None
    assert run.final["content"] == direct_final.model_dump(exclude_none=True)["content"]
    record = stream_record(relay, run.request_id)
    assert record["http_version"] == _http_version(transport)
    assert record["keepalives"] >= 3 and record["longest_silence_s"] >= GAP * 0.9


def test_without_the_relay_the_gap_trips_the_ts_watchdog(sim: SimServer) -> None:
    """The control for the test above: the same gap straight from upstream kills the
    stream, so it is the relay's bytes that saved it."""
    run = ts_stream(sim.url, fields={"gaps": [[3, GAP]]}, idle_timeout=IDLE)
    assert run.error is not None and run.final is None
    assert run.error["cause"] == "IdleTimeout", run.error


@pytest.mark.parametrize("failure", ["drop_after", "truncate_after"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ts_sdk_throws_a_typed_api_error_when_upstream_dies_mid_stream(
    sim: SimServer, relay: RelayProcess, ca_file: Path, transport: str, failure: str
) -> None:
    """Upstream gone after 5 events: the TS SDK has those 5 events, then throws an
    APIError whose type is the relay's `api_error`, not a bare connection failure."""
    run = _through(relay, transport, ca_file, fields={failure: 5})
    direct = raw_stream(sim.url)[2]
    assert run.events == [name for name, _ in _frames(direct)][:5]
    assert run.final is None and run.error is not None
    error = run.error
    assert error["class"] == "APIError" and error["isAPIError"], error
    assert not error["isConnectionError"]
    assert error["type"] == "api_error" and error["status"] is None
    assert error["body"]["error"]["type"] == "api_error"
    assert error["body"]["error"]["message"].startswith("upstream connection lost after")
    record = stream_record(relay, run.request_id)
    assert record["http_version"] == _http_version(transport)
    assert record["outcome"] == "upstream_error"


@pytest.mark.parametrize("failure", ["drop_after", "truncate_after"])
def test_without_the_relay_the_ts_sdk_sees_only_terminated(sim: SimServer, failure: str) -> None:
    """The control: the same death straight from upstream is an untyped AnthropicError
    ("terminated"), which callers cannot tell from their own network failing."""
    run = ts_stream(sim.url, fields={failure: 5})
    assert run.error is not None
    assert run.error["class"] == "AnthropicError" and not run.error["isAPIError"]
    assert run.error["message"] == "terminated"
