"""Settings: CLI flags over `SSE_RELAY_*` environment variables over a TOML config
file (`--config`, see `relay.ops.config_file`) over defaults.

Spellings are stable (operators script them). A bad value raises `ConfigError`
naming the setting (and where it was given); the CLI turns that into exit code 2.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from relay.core.exchange import UpstreamTarget
from relay.core.providers import parse_provider
from relay.ops.config_file import ConfigFile, ConfigFileError, RawValue, read_config_file
from relay.ops.setting_table import SETTINGS, Setting, parse_boolean, parse_upstream


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """Requests whose path starts with `prefix` get these settings (longest prefix wins)."""

    prefix: str
    keepalive_interval: float
    upstreams: tuple[UpstreamTarget, ...]
    #: Every stream of the route is resumable, as if it sent `relay-resumable: 1`.
    resumable: bool = False
    #: The provider its streams speak (relay/core/providers.py), where the path is
    #: ambiguous; None: told by each request's path.
    provider: str | None = None


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
    # HTTP/1.1 even where TLS could pick h2: cheaper per event (README "Upstream protocol").
    upstream_protocol: str = "http/1.1"
    max_header_bytes: int = 64 * 1024
    max_body_bytes: int = 32 * 1024 * 1024
    header_timeout: float = 30.0
    body_timeout: float = 60.0
    resume_grace: float = 60.0
    resume_retain: float = 300.0
    resume_max_bytes: int = 16 * 1024 * 1024
    resume_max_total: int = 1024 * 1024 * 1024
    resume_upstream: bool = False
    replay_retries: bool = False
    journal: str = "memory"
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


_FIELD_NAMES = frozenset(f.name for f in fields(RelayConfig))
# Settings whose RelayConfig field is not the flag's name in snake case.
_RENAMED_FIELDS = {"upstream-read-timeout": "read_timeout", "client-send-timeout": "send_timeout"}


def config_field(flag: str) -> str | None:
    """The RelayConfig field a setting fills as it is, if one does (others are built)."""
    name = _RENAMED_FIELDS.get(flag, flag.replace("-", "_"))
    return name if name in _FIELD_NAMES else None


#: What a `[[route]]` table may set; what it leaves out comes from the top level.
ROUTE_KEYS = ("prefix", "keepalive-interval", "upstream", "resumable", "provider")

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


def _parse(setting: Setting, raw: RawValue, label: str) -> Any:
    """One setting's raw value(s) through its parser; a repeatable one gives a tuple."""
    return _parse_with(setting.parse, raw, label, repeat=setting.repeat)


def _parse_with(
    parse: Callable[[str], Any], raw: RawValue, label: str, *, repeat: bool = False
) -> Any:
    try:
        if repeat:
            return tuple(parse(item) for item in ([raw] if isinstance(raw, str) else raw))
        if isinstance(raw, list):
            raise ValueError("expected one value, got a list")
        return parse(raw)
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
        resumable = "resumable" in table and _parse_with(
            parse_boolean, table["resumable"], f"{where}.resumable"
        )
        provider = None
        if "provider" in table:
            provider = _parse_with(parse_provider, table["provider"], f"{where}.provider").name
        for key in ROUTE_KEYS:
            sources[f"{name}.{key}"] = f"file {file.path}" if key in table else "inherited"
        routes.append(RouteConfig(prefix, interval, upstreams, resumable, provider))
    return tuple(routes)
