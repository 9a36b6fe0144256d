"""Settings: CLI flags over `SSE_RELAY_*` environment variables over defaults.

Spellings are stable (operators script them). A bad value raises `ConfigError`
naming the setting; the CLI turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


@dataclass(frozen=True, slots=True)
class UpstreamTarget:
    """One upstream base URL, split into what the connection pool needs."""

    url: str
    tls: bool
    host: str
    port: int
    base_path: str

    @property
    def authority(self) -> bytes:
        default = 443 if self.tls else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (host if self.port == default else f"{host}:{self.port}").encode()


@dataclass(frozen=True, slots=True)
class RelayConfig:
    """Everything the relay process needs to know, validated."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstreams: tuple[UpstreamTarget, ...] = field(default_factory=tuple)
    keepalive_interval: float = 15.0
    keepalive_frame: str = "comment"
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    tls_verify: bool = True
    upstream_ca: str | None = None


def parse_upstream(value: str) -> UpstreamTarget:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"a base URL takes no query or fragment, got {value!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    return UpstreamTarget(value, tls, parts.hostname, port, parts.path.rstrip("/"))


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _positive_seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def _boolean(value: str) -> bool:
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
class _Setting:
    flag: str
    parse: Callable[[str], Any]
    help: str
    metavar: str = "VALUE"

    @property
    def env(self) -> str:
        return "SSE_RELAY_" + self.flag.upper().replace("-", "_")


SETTINGS: tuple[_Setting, ...] = (
    _Setting("listen", parse_listen, "address to accept clients on (127.0.0.1:8080)", "HOST:PORT"),
    _Setting("upstream", parse_upstream, "upstream base URL (https://api.anthropic.com)", "URL"),
    _Setting(
        "keepalive-interval",
        _positive_seconds,
        "write a keepalive after this much upstream silence (15)",
        "SECONDS",
    ),
    _Setting(
        "keepalive-frame",
        _choice("comment", "ping"),
        "keepalive as an SSE comment or the API's ping event (comment)",
        "comment|ping",
    ),
    _Setting("connect-timeout", _positive_seconds, "upstream connect timeout (10)", "SECONDS"),
    _Setting(
        "upstream-read-timeout",
        _positive_seconds,
        "fail a response after this much upstream silence (600)",
        "SECONDS",
    ),
    _Setting("tls-verify", _boolean, "verify upstream TLS certificates (true)", "true|false"),
    _Setting("upstream-ca", str, "CA bundle to verify upstream with (system store)", "PATH"),
)

_FIELDS = {
    "keepalive-interval": "keepalive_interval",
    "keepalive-frame": "keepalive_frame",
    "connect-timeout": "connect_timeout",
    "upstream-read-timeout": "read_timeout",
    "tls-verify": "tls_verify",
    "upstream-ca": "upstream_ca",
}

DEFAULT_UPSTREAM = "https://api.anthropic.com"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every setting as a flag; values stay raw strings until `load`."""
    for setting in SETTINGS:
        parser.add_argument(
            "--" + setting.flag,
            metavar=setting.metavar,
            help=f"{setting.help}; env {setting.env}",
        )


def load(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> RelayConfig:
    """Resolve flag > environment > default for every setting and validate it."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw: str | None = getattr(args, setting.flag.replace("-", "_"))
        source = f"--{setting.flag}"
        if raw is None and setting.env in environ:
            raw, source = environ[setting.env], setting.env
        if raw is None:
            continue
        try:
            values[setting.flag] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    kwargs: dict[str, Any] = {_FIELDS[k]: v for k, v in values.items() if k in _FIELDS}
    if "listen" in values:
        kwargs["listen_host"], kwargs["listen_port"] = values["listen"]
    kwargs["upstreams"] = (values.get("upstream") or parse_upstream(DEFAULT_UPSTREAM),)
    return RelayConfig(**kwargs)
