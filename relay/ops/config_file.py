"""The TOML config file (`--config`): read into the raw strings a flag would carry.

Keys are the flag names (`keepalive-interval = 15`). Values become strings here and are
validated by the very parsers the flags and the environment use (`relay.ops.config`), so
there is one validation path. `[[route]]` tables hold per-route settings.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

#: What a setting carries before validation: one value, or a list for repeatable ones.
RawValue = str | list[str]


class ConfigFileError(ValueError):
    """The file cannot be read, is not TOML, or has a key or value of the wrong kind."""


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A config file's settings and routes, as raw strings keyed by flag name."""

    path: str
    settings: Mapping[str, RawValue]
    #: One mapping per `[[route]]` table, in file order.
    routes: tuple[Mapping[str, RawValue], ...]


def read_config_file(path: str, keys: Collection[str], route_keys: Collection[str]) -> ConfigFile:
    """Read `path`; `keys` are the known top-level keys, `route_keys` those of a route."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigFileError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"{path}: not valid TOML: {exc}") from None
    routes = document.pop("route", [])
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise ConfigFileError(f"{path}: route: expected [[route]] tables")
    return ConfigFile(
        path,
        _raw_table(path, "", document, keys),
        tuple(
            _raw_table(path, f"route[{index}].", table, route_keys)
            for index, table in enumerate(routes, 1)
        ),
    )


def _raw_table(
    path: str, where: str, table: Mapping[str, Any], keys: Collection[str]
) -> dict[str, RawValue]:
    raw: dict[str, RawValue] = {}
    for key, value in table.items():
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise ConfigFileError(f'{path}: {where}{key}: unknown key "{key}"{hint}')
        try:
            raw[key] = [_scalar(v) for v in value] if isinstance(value, list) else _scalar(value)
        except TypeError as exc:
            raise ConfigFileError(f"{path}: {where}{key}: {exc}") from None
    return raw


def _scalar(value: object) -> str:
    """A TOML value as the string a flag would carry (true, 15, 0.5, "text")."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"expected a string, number or boolean, got {type(value).__name__}")
