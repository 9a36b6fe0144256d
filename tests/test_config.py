"""Settings: flags over environment over defaults; bad values exit 2 naming the setting."""

from __future__ import annotations

import argparse

import pytest

from relay.config import ConfigError, add_arguments, load
from tests.relayproc import run_cli


def _load(argv: list[str], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load(parser.parse_args(argv), env or {})


def test_defaults() -> None:
    config = _load([])
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 8080)
    assert config.upstreams[0].url == "https://api.anthropic.com"
    assert config.upstreams[0].authority == b"api.anthropic.com"
    assert config.keepalive_interval == 15.0 and config.keepalive_frame == "comment"
    assert config.tls_verify and config.upstream_protocol == "auto"


def test_flag_beats_environment_beats_default() -> None:
    env = {"SSE_RELAY_KEEPALIVE_INTERVAL": "7", "SSE_RELAY_UPSTREAM": "http://up:81/base/"}
    config = _load(["--keepalive-interval", "3"], env)
    assert config.keepalive_interval == 3.0
    target = config.upstreams[0]
    assert (target.host, target.port, target.base_path, target.tls) == ("up", 81, "/base", False)
    assert target.authority == b"up:81"


def test_upstream_protocol_from_flag_or_environment() -> None:
    assert _load(["--upstream-protocol", "http/1.1"]).upstream_protocol == "http/1.1"
    env = {"SSE_RELAY_UPSTREAM_PROTOCOL": "h2"}
    assert _load([], env).upstream_protocol == "h2"
    assert _load(["--upstream-protocol", "auto"], env).upstream_protocol == "auto"


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--keepalive-interval", "abc"], {}, "--keepalive-interval"),
        (["--keepalive-interval", "-1"], {}, "--keepalive-interval"),
        ([], {"SSE_RELAY_KEEPALIVE_INTERVAL": "0"}, "SSE_RELAY_KEEPALIVE_INTERVAL"),
        (["--upstream", "ftp://x"], {}, "--upstream"),
        (["--listen", "nohost"], {}, "--listen"),
        (["--keepalive-frame", "emoji"], {}, "--keepalive-frame"),
        ([], {"SSE_RELAY_TLS_VERIFY": "maybe"}, "SSE_RELAY_TLS_VERIFY"),
        (["--upstream-protocol", "h3"], {}, "--upstream-protocol"),
        ([], {"SSE_RELAY_UPSTREAM_PROTOCOL": "HTTP/2"}, "SSE_RELAY_UPSTREAM_PROTOCOL"),
    ],
)
def test_bad_values_name_the_setting(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _load(argv, env)


def test_cli_exits_2_on_bad_value_and_reports_scanner_in_version() -> None:
    bad = run_cli(["--keepalive-interval", "soon"])
    assert bad.returncode == 2 and "--keepalive-interval" in bad.stderr
    bad_env = run_cli([], env={"SSE_RELAY_UPSTREAM": "not a url"})
    assert bad_env.returncode == 2 and "SSE_RELAY_UPSTREAM" in bad_env.stderr
    version = run_cli(["--version"])
    assert version.returncode == 0 and "scanner:" in version.stdout
