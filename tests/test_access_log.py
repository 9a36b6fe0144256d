"""Logs: every stderr line is JSON, one line per finished stream, credentials never."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import httpx2

from relay.ops.access_log import JsonFormatter, redact_headers, redact_text
from tests.clients import MESSAGE_PARAMS, STREAM_BODY, raw_http, raw_stream, script
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

SECRET = "sk-secret-VALUE"  # every secret below starts with it
CREDENTIALS = {"x-api-key": SECRET, "authorization": f"Bearer {SECRET}2"}
STREAM_FIELDS = {
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "http_version",
    "status",
    "outcome",
    "provider",
    "ttfb_s",
    "duration_s",
    "longest_silence_s",
    "keepalives",
    "bytes_in",
    "bytes_out",
    "events",
    "pings",
    "retries",
    "upstream_error",
    "error_detail",
    "stream_id",
    "resumes",
    "detached_s",
}


def _lines(stderr: bytes) -> list[dict[str, Any]]:
    lines = stderr.decode().splitlines()
    assert lines
    parsed = []
    for line in lines:
        entry = json.loads(line)  # every line, not only the relay's own
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry)
        parsed.append(entry)
    return parsed


def test_stream_lines_have_every_field_and_credentials_never_show(sim: SimServer) -> None:
    body = STREAM_BODY
    big = json.dumps({**MESSAGE_PARAMS, "stream": True, "pad": "x" * 8192}).encode()
    with RelayProcess(sim.url, "--max-body-bytes", "4096", keepalive=0.1) as relay:
        _, headers, _ = raw_stream(relay.url, headers={**CREDENTIALS, **script(gaps=[[3, 0.3]])})
        with httpx2.Client(http1=False, http2=True, timeout=30) as h2:
            h2.post(relay.url + "/v1/messages", content=body, headers=CREDENTIALS)
        status, refused, _ = raw_stream(relay.url, body=big, headers=CREDENTIALS)
        raw_stream(relay.url, headers={**CREDENTIALS, **script(drop_after=3)})
        # h11 quotes a malformed header line, value and all, in the error it raises.
        answer = raw_http(
            relay.port,
            b"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key : %s3\r\n"
            b"authorization: Bearer %s4\r\n\r\n" % (SECRET.encode(), SECRET.encode()),
        )
        relay.stop()
        stderr = relay.stderr_text
    assert status == 413 and answer.startswith(b"HTTP/1.1 400 ") and SECRET.encode() not in answer
    assert SECRET.encode() not in stderr
    entries = _lines(stderr)
    streams = [entry for entry in entries if entry["logger"] == "sse_relay.access"]
    assert [(s["http_version"], s["status"], s["outcome"]) for s in streams] == [
        ("1.1", 200, "completed"),
        ("2", 200, "completed"),
        ("1.1", 413, "refused"),
        ("1.1", 200, "upstream_error"),
    ]
    for stream in streams:
        assert set(stream) == STREAM_FIELDS
        assert stream["method"] == "POST" and stream["path"] == "/v1/messages"
        assert stream["duration_s"] >= 0 and stream["time"].endswith("Z")
    completed, over_h2, refusal, lost = streams
    assert completed["request_id"] == headers["request-id"]
    assert completed["request_id"].startswith("req_sim_")
    assert refusal["request_id"] == refused["request-id"]
    assert refusal["request_id"].startswith("req_relay_")
    assert completed["keepalives"] >= 2 and completed["longest_silence_s"] >= 0.25
    assert completed["bytes_in"] == over_h2["bytes_in"] == len(body)
    assert completed["bytes_out"] > 0 and completed["events"] > 0 and completed["ttfb_s"] >= 0
    assert refusal["ttfb_s"] is None and refusal["longest_silence_s"] is None
    assert lost["upstream_error"] == "lost" and lost["events"] == 3
    messages = [entry["message"] for entry in entries]
    # The phrases other tests and operators grep for are in the message, redacted.
    assert any(m.startswith("refused POST /v1/messages: 413") for m in messages)
    assert any("illegal header line" in m and "[redacted]" in m for m in messages)
    assert any(m.startswith("ended POST /v1/messages with an error frame") for m in messages)


def test_redaction_covers_every_shape_a_header_is_quoted_in() -> None:
    quoted = [
        "x-api-key: sk-secret-1",
        "illegal header line: b'X-Api-Key : sk-secret-1'",
        "[(b'authorization', b'Bearer sk-secret-1'), (b'host', b'x')]",
        '{"x-api-key": "sk-secret-1"}',
        "/v1/messages?x-api-key=sk-secret-1&beta=true",
        "Illegal character '\\x00' in header value: b'sk-secret-1\\x00'",
        "Received header value surrounded by whitespace b' sk-secret-1 '",
        "key sk-ant-api03-AbC_d-9 leaked",
    ]
    for text in quoted:
        redacted = redact_text(text)
        assert "secret-1" not in redacted and "AbC_d" not in redacted, redacted
        assert "[redacted]" in redacted
    assert "(b'host', b'x')" in redact_text(quoted[2])
    assert redact_text("?x-api-key=sk-secret-1&beta=true").endswith("&beta=true")
    assert redact_text("refused POST /v1/messages: 413") == "refused POST /v1/messages: 413"
    assert redact_headers([(b"X-Api-Key", b"k"), (b"Authorization", b"b"), (b"host", b"h")]) == [
        ("X-Api-Key", "[redacted]"),
        ("Authorization", "[redacted]"),
        ("host", "h"),
    ]


def test_the_formatter_redacts_exceptions_too() -> None:
    try:
        raise ValueError("bad header x-api-key: sk-secret-2")
    except ValueError:
        record = logging.LogRecord(
            "sse_relay", logging.ERROR, __file__, 1, "failed: %s", ("x",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "\n" not in line and entry["message"] == "failed: x" and entry["level"] == "error"
    assert "ValueError" in entry["exc"] and "sk-secret-2" not in line
