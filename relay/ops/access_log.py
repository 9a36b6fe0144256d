"""Log output: every line on stderr is one JSON object, one per finished stream among them.

Credentials never reach the log. Nothing logs request bodies or headers whole, but
library errors quote what a client sent (h11: "illegal header line: b'x-api-key : ...'";
h2: "header value surrounded by whitespace b' sk-...'"), so every message passes
`redact_text` on its way out, and `redact_headers` is the way to log headers at all.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from relay.core.stream_record import StreamRecord

REDACTED = "[redacted]"
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization"})

# A credential header's value after its name, as text, repr or query string shows it:
# `x-api-key: v`, `b'x-api-key : v'`, `(b'authorization', b'Bearer v')`, `"x-api-key": "v"`,
# `?x-api-key=v`. The value runs to a quote, line end, escape, or list separator.
_NAMED_SECRET = re.compile(
    r"(?i)((?:x-api-key|proxy-authorization|authorization)['\"]?\s*(?:[:=]|,\s*b?['\"])"
    r"\s*b?['\"]?)[^'\"\r\n\\,;&}]+"
)
# A quoted header value or line in a library's error message names no header we could
# check, so all of it goes.
_QUOTED_HEADER = re.compile(r"(?i)(header (?:value|line)[^'\"]*?b?)(['\"]).*?\2")
# Anthropic API keys, wherever they turn up.
_API_KEY = re.compile(r"sk-ant-[A-Za-z0-9_\-]+")

access = logging.getLogger("sse_relay.access")


def redact_text(text: str) -> str:
    """`text` with every credential value it may quote masked."""
    if not text:
        return text
    text = _NAMED_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    text = _QUOTED_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)
    return _API_KEY.sub(REDACTED, text)


def redact_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    """Headers fit for a log: credential headers keep their name, not their value."""
    shown = []
    for raw_name, raw_value in headers:
        name = raw_name.decode("latin-1")
        value = REDACTED if name.lower() in _SECRET_HEADERS else raw_value.decode("latin-1")
        shown.append((name, value))
    return shown


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def stream_fields(record: StreamRecord) -> dict[str, Any]:
    """A finished stream's log fields, in a stable order."""
    return {
        "request_id": record.request_id,
        "method": record.method,
        "path": record.path,
        "http_version": record.http_version,
        "status": record.status,
        "outcome": record.outcome.value,
        "provider": record.provider,
        "ttfb_s": _seconds(record.ttfb),
        "duration_s": _seconds(record.duration),
        "longest_silence_s": _seconds(record.longest_silence),
        "keepalives": record.keepalives,
        "bytes_in": record.bytes_in,
        "bytes_out": record.bytes_out,
        "events": record.events,
        "pings": record.pings,
        "retries": record.retries,
        "upstream_error": record.upstream_error,
        "error_detail": record.error_detail,
        "stream_id": record.stream_id,
        "resumes": record.resumes,
        "detached_s": _seconds(record.detached_seconds),
    }


def log_stream(record: StreamRecord) -> None:
    """The one log line of a finished stream."""
    if access.isEnabledFor(logging.INFO):
        status = "-" if record.status is None else record.status
        access.info(
            "%s %s %s %s",
            record.method,
            record.path,
            status,
            record.outcome.value,
            extra={"stream": stream_fields(record)},
        )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message (+ stream fields, exc).

    As one of several processes (--workers), each line leads with `"worker"`: its id, or
    "supervisor".
    """

    def __init__(self, worker: int | str | None = None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {} if self._worker is None else {"worker": self._worker}
        entry |= {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        fields = getattr(record, "stream", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry[key] = redact_text(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(entry)


def configure_logging(worker: int | str | None = None, level: int = logging.INFO) -> None:
    """Send every log record of the process, libraries' included, to stderr as JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # `warnings` would otherwise print plain text
