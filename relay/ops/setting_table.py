"""Every setting of the relay: its flag, environment variable, parser and help.

One table (`SETTINGS`) that the CLI, the environment, the config file and
`check-config` all read (relay/ops/config.py resolves them); the parsers raise ValueError
with a message that names what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from relay.core.exchange import UpstreamTarget


def parse_upstream(value: str) -> UpstreamTarget:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL takes no query or fragment, got {value!r}")
    if parts.username is not None or parts.password is not None:
        # The URL shows up in logs, error bodies and the ready line; a secret must not.
        raise ValueError("a base URL takes no user:password@ (send credentials as headers)")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return UpstreamTarget(value, tls, parts.hostname, port, parts.path.rstrip("/"))


def _journal(value: str) -> str:
    parts = urlsplit(value)
    if value != "memory" and (parts.scheme not in ("redis", "rediss") or not parts.hostname):
        raise ValueError(f"expected memory or a redis:// or rediss:// URL, got {value!r}")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def format_listen(host: str, port: int) -> str:
    """HOST:PORT as `parse_listen` reads it back (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return number


def _admin_listen(value: str) -> tuple[str, int] | None:
    return None if value == "off" else parse_listen(value)


def _workers(value: str) -> int:
    if value == "auto":
        # The CPUs this process may run on (taskset, cgroup cpusets), not the host's.
        return len(os.sched_getaffinity(0))
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError(f"expected a positive whole number or auto, got {value!r}") from None


def _retry_status(value: str) -> int:
    status = int(value)
    if status not in (429, 500, 502, 503, 504, 529):
        raise ValueError(f"expected a retryable status (429, 5xx, 529), got {value!r}")
    return status


def _param_name(value: str) -> str:
    if not value or not value.replace("_", "").isalnum():
        raise ValueError(f"expected a top-level request param name, got {value!r}")
    return value


def parse_boolean(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


@dataclass(frozen=True, slots=True)
class Setting:
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"
    #: May be given more than once (in the environment: comma-separated).
    repeat: bool = False
    #: A flag without a value that means "true" (the environment still takes true/false).
    switch: bool = False

    @property
    def env(self) -> str:
        return "SSE_RELAY_" + self.flag.upper().replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", parse_listen, "address to accept clients on (127.0.0.1:8080)", "HOST:PORT"),
    Setting(
        "upstream",
        parse_upstream,
        "upstream base URL (https://api.anthropic.com); repeat for fail-over on retries",
        "URL",
        repeat=True,
    ),
    Setting(
        "keepalive-interval",
        _positive_seconds,
        "write a keepalive after this much upstream silence (15)",
        "SECONDS",
    ),
    Setting(
        "keepalive-frame",
        _choice("comment", "ping"),
        "keepalive as an SSE comment or the API's ping event (comment)",
        "comment|ping",
    ),
    Setting("connect-timeout", _positive_seconds, "upstream connect timeout (10)", "SECONDS"),
    Setting(
        "upstream-read-timeout",
        _positive_seconds,
        "fail a response after this much upstream silence (600)",
        "SECONDS",
    ),
    Setting(
        "client-send-timeout",
        _positive_seconds,
        "drop a client that takes no bytes for this long while some wait for it (120)",
        "SECONDS",
    ),
    Setting("tls-verify", parse_boolean, "verify upstream TLS certificates (true)", "true|false"),
    Setting("upstream-ca", str, "CA bundle to verify upstream with (system store)", "PATH"),
    Setting(
        "upstream-protocol",
        _choice("auto", "h2", "http/1.1"),
        "upstream HTTP version: auto (h2 when TLS ALPN picks it), h2 (h2c for http://) "
        "or http/1.1 (http/1.1)",
        "auto|h2|http/1.1",
    ),
    Setting("max-header-bytes", _positive_int, "request head size limit, 431 past it (65536)"),
    Setting("max-body-bytes", _positive_int, "request body limit, 413 past it (33554432)"),
    Setting("header-timeout", _positive_seconds, "time to send a request head, 408 past it (30)"),
    Setting(
        "body-timeout",
        _positive_seconds,
        "longest pause in a request body before the answer starts, 408 past it (60)",
        "SECONDS",
    ),
    Setting(
        "resume-grace",
        _positive_seconds,
        "a resumable stream whose client left reads upstream this long for a resume (60)",
        "SECONDS",
    ),
    Setting(
        "resume-retain",
        _positive_seconds,
        "a resumable stream that ended can be resumed this long after (300)",
        "SECONDS",
    ),
    Setting(
        "resume-max-bytes",
        _positive_int,
        "journal per resumable stream; past it the stream is no longer resumable (16777216)",
    ),
    Setting(
        "resume-max-total",
        _positive_int,
        "journals in all; past it new streams are not made resumable (1073741824)",
    ),
    Setting(
        "journal",
        _journal,
        "where resumable streams are journaled: memory, or a Redis shared by the "
        "instances behind one load balancer, redis://HOST:PORT/DB (memory)",
        "URL",
    ),
    Setting("max-streams", _positive_int, "concurrent streams, 503 past it (10000)"),
    Setting("retry-attempts", _positive_int, "upstream tries per request, first included (3)"),
    Setting(
        "retry-budget", _positive_seconds, "time within which retries may start (10)", "SECONDS"
    ),
    Setting(
        "retry-on-status",
        _retry_status,
        "also retry these upstream statuses, honouring retry-after (none)",
        "STATUS",
        repeat=True,
    ),
    Setting(
        "deny-param", _param_name, "refuse or strip this body param (none)", "NAME", repeat=True
    ),
    Setting("on-deny", _choice("reject", "strip"), "what a denied param gets (reject)"),
    Setting(
        "tls-listen",
        parse_listen,
        "TLS listener, HTTP/2 or HTTP/1.1 by ALPN, with --tls-cert (127.0.0.1:8443)",
        "HOST:PORT",
    ),
    Setting("tls-cert", str, "certificate chain (PEM) for the TLS listener", "PATH"),
    Setting("tls-key", str, "private key (PEM) for the TLS listener", "PATH"),
    Setting(
        "resume-upstream",
        parse_boolean,
        "upstream is a remote sse-relay: ask it for resumable streams and resume them "
        "when the connection to it drops (the local relay mode)",
        switch=True,
    ),
    Setting(
        "replay-retries",
        parse_boolean,
        "answer an identical re-send of a POST whose client dropped mid-stream from that "
        "stream's journal, with no new upstream request; every POST is then journaled, so "
        "a client that drops leaves upstream running for --resume-grace instead of "
        "aborting it at once",
        switch=True,
    ),
    Setting(
        "http3",
        parse_boolean,
        "also serve HTTP/3 (QUIC, UDP) on the TLS listener's port; needs --tls-cert",
        switch=True,
    ),
    Setting(
        "quic-idle-timeout",
        _positive_seconds,
        "close an HTTP/3 connection silent this long; above --keepalive-interval (60)",
        "SECONDS",
    ),
    Setting(
        "drain-timeout",
        _positive_seconds,
        "on SIGTERM, time streams get to finish (30)",
        "SECONDS",
    ),
    Setting(
        "workers",
        _workers,
        "worker processes sharing the listeners (SO_REUSEPORT); auto: one per core (1)",
        "N|auto",
    ),
    Setting(
        "admin-listen",
        _admin_listen,
        "admin listener for /metrics, /healthz, /readyz, or off (127.0.0.1:9901)",
        "HOST:PORT|off",
    ),
)
