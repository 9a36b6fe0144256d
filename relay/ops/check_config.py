"""`sse-relay check-config`: validate, then print the effective config as TOML.

Each line says where its value came from (default, file, env, flag), so an operator can
see why a setting is what it is. The output is itself a valid config file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from relay.core.exchange import UpstreamTarget
from relay.ops.config import (
    ConfigError,
    RelayConfig,
    ResolvedConfig,
    add_arguments,
    config_field,
    resolve,
)
from relay.ops.setting_table import SETTINGS, format_listen

# Settings built from their values rather than stored as they are (see config_field).
_SPECIAL: dict[str, Callable[[RelayConfig], object]] = {
    "upstream": lambda config: config.upstreams,
    "retry-on-status": lambda config: sorted(config.retry_statuses),
    "deny-param": lambda config: sorted(config.deny_params),
    "admin-listen": lambda c: format_listen(*c.admin_listen) if c.admin_listen else "off",
}


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="sse-relay check-config",
        description="Validate the configuration (file, environment, flags) and print the "
        "effective settings with where each came from. Exit 2 on a bad value.",
    )
    add_arguments(parser)
    try:
        resolved = resolve(parser.parse_args(argv))
    except ConfigError as exc:
        print(f"sse-relay: error: {exc}", file=sys.stderr)
        return 2
    print(render(resolved), end="")
    return 0


def render(resolved: ResolvedConfig) -> str:
    """The effective config as TOML, one `key = value  # source` line per setting."""
    config, sources = resolved.config, resolved.sources
    rows = [(s.flag, _effective(s.flag, config), sources.get(s.flag, "default")) for s in SETTINGS]
    lines = ["# sse-relay effective configuration; after each value: where it came from", ""]
    lines += _aligned(rows)
    for index, route in enumerate(config.routes, 1):
        lines += ["", "[[route]]"]
        lines += _aligned(
            [
                ("prefix", route.prefix, sources[f"route[{index}].prefix"]),
                (
                    "keepalive-interval",
                    route.keepalive_interval,
                    sources[f"route[{index}].keepalive-interval"],
                ),
                ("upstream", route.upstreams, sources[f"route[{index}].upstream"]),
                ("resumable", route.resumable, sources[f"route[{index}].resumable"]),
                ("provider", route.provider, sources[f"route[{index}].provider"]),
            ]
        )
    return "\n".join(lines) + "\n"


def _effective(flag: str, config: RelayConfig) -> object:
    if flag in _SPECIAL:
        return _SPECIAL[flag](config)
    name = config_field(flag)
    if name is not None:
        return getattr(config, name)
    # HOST:PORT settings are kept as two fields.
    prefix = flag.replace("-", "_")
    return format_listen(getattr(config, prefix + "_host"), getattr(config, prefix + "_port"))


def _aligned(rows: list[tuple[str, object, str]]) -> list[str]:
    """`key = value  # source`, in columns; a setting without a value is a comment."""
    shown = [(key, "(not set)" if v is None else _toml(v), source) for key, v, source in rows]
    key_width = max(len(key) for key, _, _ in shown)
    value_width = min(max(len(value) for _, value, _ in shown), 40)
    return [
        f"# {key.ljust(key_width - 2)} = {value.ljust(value_width)}  # {source}"
        if original is None
        else f"{key.ljust(key_width)} = {value.ljust(value_width)}  # {source}"
        for (key, value, source), (_, original, _) in zip(shown, rows, strict=True)
    ]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, UpstreamTarget):
        return json.dumps(value.url)
    if isinstance(value, tuple | list | frozenset):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return json.dumps(str(value))
