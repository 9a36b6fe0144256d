"""Settings: CLI flags over `SSE_RELAY_*` environment variables over a TOML config
file (`--config`, see `relay.config_file`) over defaults.

Spellings are stable (operators script them). A bad value raises `ConfigError`
naming the setting (and where it was given); the CLI turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import urlsplit

from relay.config_file import ConfigFile, ConfigFileError, RawValue, read_config_file


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
class RouteConfig:
    """Requests whose path starts with `prefix` get these settings (longest prefix wins)."""

    prefix: str
    keepalive_interval: float
    upstreams: tuple[UpstreamTarget, ...]


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
    send_timeout: float = 120.0
    tls_verify: bool = True
    upstream_ca: str | None = None
    upstream_protocol: str = "auto"
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 32 * 1024 * 1024
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    max_streams: int = 10_000
    retry_attempts: int = 3
    retry_budget: float = 10.0
    retry_statuses: frozenset[int] = field(default_factory=frozenset)
    deny_params: frozenset[str] = field(default_factory=frozenset)
    on_deny: str = "reject"
    drain_timeout: float = 30.0
    tls_listen_host: str = "127.0.0.1"
    tls_listen_port: int = 8443
    tls_cert: str | None = None
    tls_key: str | None = None
    http3: bool = False
    quic_idle_timeout: float = 60.0
    workers: int = 1
    #: The admin listener (/metrics, /healthz, /readyz); None when turned off.
    admin_listen: tuple[str, int] | None = ("127.0.0.1", 9901)
    routes: tuple[RouteConfig, ...] = ()


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
    #: May be given more than once (in the environment: comma-separated).
    repeat: bool = False
    #: A flag without a value that means "true" (the environment still takes true/false).
    switch: bool = False

    @property
    def env(self) -> str:
        return "SSE_RELAY_" + self.flag.upper().replace("-", "_")


SETTINGS: tuple[_Setting, ...] = (
    _Setting("listen", parse_listen, "address to accept clients on (127.0.0.1:8080)", "HOST:PORT"),
    _Setting(
        "upstream",
        parse_upstream,
        "upstream base URL (https://api.anthropic.com); repeat for fail-over on retries",
        "URL",
        repeat=True,
    ),
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
    _Setting(
        "client-send-timeout",
        _positive_seconds,
        "drop a client that takes no bytes for this long while some wait for it (120)",
        "SECONDS",
    ),
    _Setting("tls-verify", _boolean, "verify upstream TLS certificates (true)", "true|false"),
    _Setting("upstream-ca", str, "CA bundle to verify upstream with (system store)", "PATH"),
    _Setting(
        "upstream-protocol",
        _choice("auto", "h2", "http/1.1"),
        "upstream HTTP version: auto (h2 when TLS ALPN picks it), h2 (h2c for http://) "
        "or http/1.1 (auto)",
        "auto|h2|http/1.1",
    ),
    _Setting("max-header-bytes", _positive_int, "request head size limit, 431 past it (65536)"),
    _Setting("max-body-bytes", _positive_int, "request body limit, 413 past it (33554432)"),
    _Setting("header-timeout", _positive_seconds, "time to send a request head, 408 past it (30)"),
    _Setting(
        "body-timeout",
        _positive_seconds,
        "longest pause in a request body before the answer starts, 408 past it (60)",
        "SECONDS",
    ),
    _Setting("max-streams", _positive_int, "concurrent streams, 503 past it (10000)"),
    _Setting("retry-attempts", _positive_int, "upstream tries per request, first included (3)"),
    _Setting(
        "retry-budget", _positive_seconds, "time within which retries may start (10)", "SECONDS"
    ),
    _Setting(
        "retry-on-status",
        _retry_status,
        "also retry these upstream statuses, honouring retry-after (none)",
        "STATUS",
        repeat=True,
    ),
    _Setting(
        "deny-param", _param_name, "refuse or strip this body param (none)", "NAME", repeat=True
    ),
    _Setting("on-deny", _choice("reject", "strip"), "what a denied param gets (reject)"),
    _Setting(
        "tls-listen",
        parse_listen,
        "TLS listener, HTTP/2 or HTTP/1.1 by ALPN, with --tls-cert (127.0.0.1:8443)",
        "HOST:PORT",
    ),
    _Setting("tls-cert", str, "certificate chain (PEM) for the TLS listener", "PATH"),
    _Setting("tls-key", str, "private key (PEM) for the TLS listener", "PATH"),
    _Setting(
        "http3",
        _boolean,
        "also serve HTTP/3 (QUIC, UDP) on the TLS listener's port; needs --tls-cert",
        switch=True,
    ),
    _Setting(
        "quic-idle-timeout",
        _positive_seconds,
        "close an HTTP/3 connection silent this long; above --keepalive-interval (60)",
        "SECONDS",
    ),
    _Setting(
        "drain-timeout",
        _positive_seconds,
        "on SIGTERM, time streams get to finish (30)",
        "SECONDS",
    ),
    _Setting(
        "workers",
        _workers,
        "worker processes sharing the listeners (SO_REUSEPORT); auto: one per core (1)",
        "N|auto",
    ),
    _Setting(
        "admin-listen",
        _admin_listen,
        "admin listener for /metrics, /healthz, /readyz, or off (127.0.0.1:9901)",
        "HOST:PORT|off",
    ),
)

_FIELD_NAMES = frozenset(f.name for f in fields(RelayConfig))
# Settings whose RelayConfig field is not the flag's name in snake case.
_RENAMED_FIELDS = {"upstream-read-timeout": "read_timeout", "client-send-timeout": "send_timeout"}


def config_field(flag: str) -> str | None:
    """The RelayConfig field a setting fills as it is, if one does (others are built)."""
    name = _RENAMED_FIELDS.get(flag, flag.replace("-", "_"))
    return name if name in _FIELD_NAMES else None


#: What a `[[route]]` table may set; what it leaves out comes from the top level.
ROUTE_KEYS = ("prefix", "keepalive-interval", "upstream")

DEFAULT_UPSTREAM = "https://api.anthropic.com"
#: Names the config file, as --config does (not a setting: the file cannot name itself).
CONFIG_ENV = "SSE_RELAY_CONFIG"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare every setting as a flag; values stay raw strings until `load`."""
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"TOML config file; the environment and flags override it; env {CONFIG_ENV}",
    )
    for setting in SETTINGS:
        if setting.switch:
            parser.add_argument(
                "--" + setting.flag,
                action="store_const",
                const="true",
                help=f"{setting.help}; env {setting.env}=true|false",
            )
            continue
        parser.add_argument(
            "--" + setting.flag,
            metavar=setting.metavar,
            action="append" if setting.repeat else "store",
            help=f"{setting.help}; env {setting.env}",
        )


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    """A validated config and where each of its values came from (`check-config`)."""

    config: RelayConfig
    #: Setting name -> "default", "file PATH", "env NAME" or "flag --name"; a route's
    #: settings as "route[N].name" -> "file PATH" or "inherited" (from the top level).
    sources: Mapping[str, str]


def load(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> RelayConfig:
    """Resolve flag > environment > config file > default for every setting; validate."""
    return resolve(args, environ).config


def resolve(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> ResolvedConfig:
    """`load`, also telling where each value came from."""
    path: str | None = getattr(args, "config", None) or environ.get(CONFIG_ENV) or None
    file = _read_file(path) if path else None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for setting in SETTINGS:
        raw: RawValue | None = getattr(args, setting.flag.replace("-", "_"))
        label = f"--{setting.flag}"
        source = f"flag {label}"
        if raw is None and setting.env in environ:
            raw, label, source = environ[setting.env], setting.env, f"env {setting.env}"
            if setting.repeat:
                raw = [item.strip() for item in raw.split(",") if item.strip()]
        if raw is None and file is not None and setting.flag in file.settings:
            raw, label = file.settings[setting.flag], f"{file.path}: {setting.flag}"
            source = f"file {file.path}"
        if raw is None:
            sources[setting.flag] = "default"
            continue
        values[setting.flag] = _parse(setting, raw, label)
        sources[setting.flag] = source
    kwargs: dict[str, Any] = {
        name: value for flag, value in values.items() if (name := config_field(flag))
    }
    if "listen" in values:
        kwargs["listen_host"], kwargs["listen_port"] = values["listen"]
    if "tls-listen" in values:
        kwargs["tls_listen_host"], kwargs["tls_listen_port"] = values["tls-listen"]
    if ("tls-cert" in values) != ("tls-key" in values):
        raise ConfigError("--tls-cert and --tls-key: give both or neither")
    kwargs["upstreams"] = values.get("upstream") or (parse_upstream(DEFAULT_UPSTREAM),)
    kwargs["retry_statuses"] = frozenset(values.get("retry-on-status", ()))
    kwargs["deny_params"] = frozenset(values.get("deny-param", ()))
    config = RelayConfig(**kwargs)
    if file is not None and file.routes:
        config = replace(config, routes=_routes(file, config, sources))
    if config.http3 and config.tls_cert is None:
        raise ConfigError("--http3 needs --tls-cert and --tls-key (QUIC is always TLS)")
    if config.http3 and config.quic_idle_timeout <= config.keepalive_interval:
        raise ConfigError(
            "--quic-idle-timeout must be longer than --keepalive-interval, so that "
            "keepalives keep HTTP/3 connections open"
        )
    for index, route in enumerate(config.routes, 1):
        if config.http3 and config.quic_idle_timeout <= route.keepalive_interval:
            raise ConfigError(
                f"route[{index}].keepalive-interval: must be shorter than "
                "--quic-idle-timeout, so that keepalives keep HTTP/3 connections open"
            )
    for flag, path in (("--tls-cert", config.tls_cert), ("--tls-key", config.tls_key)):
        # Found now, not as a traceback when the listener starts (in every worker).
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag}: cannot read {path!r}")
    return ResolvedConfig(config, sources)


def _read_file(path: str) -> ConfigFile:
    try:
        return read_config_file(
            path, keys=[setting.flag for setting in SETTINGS] + ["route"], route_keys=ROUTE_KEYS
        )
    except ConfigFileError as exc:
        raise ConfigError(str(exc)) from None


def _parse(setting: _Setting, raw: RawValue, label: str) -> Any:
    """One setting's raw value(s) through its parser; a repeatable one gives a tuple."""
    try:
        if setting.repeat:
            return tuple(setting.parse(item) for item in ([raw] if isinstance(raw, str) else raw))
        if isinstance(raw, list):
            raise ValueError("expected one value, got a list")
        return setting.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None


def _routes(
    file: ConfigFile, config: RelayConfig, sources: dict[str, str]
) -> tuple[RouteConfig, ...]:
    """The file's `[[route]]` tables; what a route leaves out it takes from the top level."""
    parsers = {setting.flag: setting for setting in SETTINGS}
    routes: list[RouteConfig] = []
    first_with: dict[str, int] = {}
    for index, table in enumerate(file.routes, 1):
        name = f"route[{index}]"
        where = f"{file.path}: {name}"
        prefix = table.get("prefix")
        if prefix is None:
            raise ConfigError(f"{where}.prefix: missing (every [[route]] needs one)")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ConfigError(f"{where}.prefix: expected a path starting with /, got {prefix!r}")
        if prefix in first_with:
            raise ConfigError(f"{where}.prefix: {prefix!r} is route[{first_with[prefix]}]'s too")
        first_with[prefix] = index
        interval, upstreams = config.keepalive_interval, config.upstreams
        if "keepalive-interval" in table:
            interval = _parse(
                parsers["keepalive-interval"],
                table["keepalive-interval"],
                f"{where}.keepalive-interval",
            )
        if "upstream" in table:
            upstreams = _parse(parsers["upstream"], table["upstream"], f"{where}.upstream")
            if not upstreams:
                raise ConfigError(f"{where}.upstream: expected at least one URL")
        for key in ROUTE_KEYS:
            sources[f"{name}.{key}"] = f"file {file.path}" if key in table else "inherited"
        routes.append(RouteConfig(prefix, interval, upstreams))
    return tuple(routes)
