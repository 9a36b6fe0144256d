"""Settings: flags over environment over defaults; bad values exit 2 naming the setting."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from relay.core.route_table import RouteTable
from relay.ops.config import ConfigError, add_arguments, load
from tests.clients import KEEPALIVE, closed_port, raw_stream, script
from tests.relayproc import RelayProcess, run_cli
from tests.simserver import SimServer


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
    assert config.tls_verify and config.upstream_protocol == "http/1.1"


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


def test_credentials_in_an_upstream_url_are_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="--upstream") as caught:
        _load(["--upstream", "https://user:s3cret@api.example"], {})
    assert "s3cret" not in str(caught.value)


def test_cli_exits_2_on_bad_value_and_reports_scanner_in_version() -> None:
    bad = run_cli(["--keepalive-interval", "soon"])
    assert bad.returncode == 2 and "--keepalive-interval" in bad.stderr
    bad_env = run_cli([], env={"SSE_RELAY_UPSTREAM": "not a url"})
    assert bad_env.returncode == 2 and "SSE_RELAY_UPSTREAM" in bad_env.stderr
    version = run_cli(["--version"])
    assert version.returncode == 0 and "scanner:" in version.stdout


# -- the config file (--config): file < environment < flags; [[route]] tables ---------

_FILE = """
keepalive-interval = 7
upstream = ["http://file-a:81", "http://file-b:82"]
listen = "127.0.0.1:9000"
retry-on-status = [429, 529]
http3 = false

[[route]]
prefix = "/v1/messages"
keepalive-interval = 2

[[route]]
prefix = "/v1/messages/batches"
upstream = "http://batches:83"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(_FILE)
    return path


def test_file_beats_defaults_and_routes_take_the_rest_from_the_top_level(
    config_file: Path,
) -> None:
    config = _load(["--config", str(config_file)])
    assert config.keepalive_interval == 7.0
    assert [t.url for t in config.upstreams] == ["http://file-a:81", "http://file-b:82"]
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 9000)
    assert config.retry_statuses == {429, 529} and config.connect_timeout == 10.0
    messages, batches = config.routes
    assert (messages.prefix, messages.keepalive_interval) == ("/v1/messages", 2.0)
    assert messages.upstreams == config.upstreams
    assert (batches.keepalive_interval, batches.upstreams[0].authority) == (7.0, b"batches:83")
    # SSE_RELAY_CONFIG names the file as well as --config.
    assert _load([], {"SSE_RELAY_CONFIG": str(config_file)}) == config


def test_environment_beats_file_and_flag_beats_environment(config_file: Path) -> None:
    env = {"SSE_RELAY_KEEPALIVE_INTERVAL": "5", "SSE_RELAY_UPSTREAM": "http://env:84"}
    from_env = _load(["--config", str(config_file)], env)
    assert from_env.keepalive_interval == 5.0 and from_env.upstreams[0].url == "http://env:84"
    # A route's own value stays; what it inherits follows the winning top-level value.
    assert [r.keepalive_interval for r in from_env.routes] == [2.0, 5.0]
    assert from_env.routes[0].upstreams[0].url == "http://env:84"
    from_flag = _load(["--config", str(config_file), "--keepalive-interval", "3"], env)
    assert from_flag.keepalive_interval == 3.0
    assert [r.keepalive_interval for r in from_flag.routes] == [2.0, 3.0]


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (
            "keepalive-intervall = 5",
            'keepalive-intervall: unknown key "keepalive-intervall" '
            '(did you mean "keepalive-interval"?)',
        ),
        ("keepalive-interval = -1", "keepalive-interval: expected a positive number"),
        ("keepalive-interval = true", "keepalive-interval:"),
        ('listen = ["127.0.0.1:1", "127.0.0.1:2"]', "listen: expected one value"),
        ('upstream = ["http://a", "ftp://b"]', "upstream: expected an http:// or https://"),
        ("drain-timeout = 2024-01-01", "drain-timeout: expected a string, number or boolean"),
        ("[limits]\nmax-streams = 3", 'limits: unknown key "limits"'),
        ("config = 'other.toml'", 'config: unknown key "config"'),
        ("route = 'x'", "route: expected [[route]] tables"),
        (
            '[[route]]\nprefix = "/a"\n[[route]]\nprefix = "/b"\nkeepalive-interval = 0',
            "route[2].keepalive-interval: expected a positive number",
        ),
        ('[[route]]\nprefix = "/a"\nmax-streams = 4', "route[1].max-streams: unknown key"),
        ("[[route]]\nkeepalive-interval = 4", "route[1].prefix: missing"),
        ('[[route]]\nprefix = "v1"', "route[1].prefix: expected a path starting with /"),
        ('[[route]]\nprefix = "/a"\n[[route]]\nprefix = "/a"', "route[2].prefix: '/a' is"),
        ('[[route]]\nprefix = "/a"\nupstream = []', "route[1].upstream: expected at least"),
        ('[[route]]\nprefix = "/a"\nresumable = 2', "route[1].resumable: expected true or false"),
        ("keepalive-interval = ", "not valid TOML"),
    ],
)
def test_bad_file_names_the_field_and_where(tmp_path: Path, content: str, named: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        _load(["--config", str(path)])
    assert str(caught.value).startswith(f"{path}: ")
    assert named in str(caught.value)


def test_route_keepalive_must_stay_under_the_quic_idle_timeout(tmp_path: Path) -> None:
    path = tmp_path / "h3.toml"
    path.write_text('quic-idle-timeout = 20\n[[route]]\nprefix = "/a"\nkeepalive-interval = 25')
    tls = ["--http3", "--tls-cert", "c.pem", "--tls-key", "k.pem"]
    with pytest.raises(ConfigError, match=r"route\[1\]\.keepalive-interval"):
        _load(["--config", str(path), *tls])


def test_an_unreadable_certificate_is_a_configuration_error(tmp_path: Path) -> None:
    """Found when the configuration loads (exit 2, naming the flag), not as a traceback
    from a listener that cannot start."""
    with pytest.raises(ConfigError, match=r"^--tls-cert: cannot read"):
        _load(["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(tmp_path)])
    done = run_cli(["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", "k.pem"])
    assert done.returncode == 2 and "sse-relay: error: --tls-cert: cannot read" in done.stderr


def test_bad_file_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[route]]\nprefix = "/a"\n[[route]]\nprefix = "/b"\nkeepalive-interval = -2')
    for command in ([], ["check-config"]):
        bad = run_cli([*command, "--config", str(path)])
        assert bad.returncode == 2
        assert "route[2].keepalive-interval" in bad.stderr and str(path) in bad.stderr
    missing = run_cli(["--config", str(tmp_path / "absent.toml")])
    assert missing.returncode == 2 and "absent.toml" in missing.stderr


def test_check_config_prints_each_value_with_its_source_as_loadable_toml(
    config_file: Path, tmp_path: Path
) -> None:
    shown = run_cli(
        ["check-config", "--config", str(config_file), "--keepalive-interval", "3"],
        env={"SSE_RELAY_MAX_STREAMS": "7"},
    )
    assert shown.returncode == 0, shown.stderr
    lines = {" ".join(line.split()) for line in shown.stdout.splitlines()}
    assert "keepalive-interval = 3.0 # flag --keepalive-interval" in lines
    assert "max-streams = 7 # env SSE_RELAY_MAX_STREAMS" in lines
    assert f'listen = "127.0.0.1:9000" # file {config_file}' in lines
    assert "connect-timeout = 10.0 # default" in lines
    assert "# tls-cert = (not set) # default" in lines
    assert "workers = 1 # default" in lines
    assert f"keepalive-interval = 2.0 # file {config_file}" in lines
    assert "keepalive-interval = 3.0 # inherited" in lines
    assert shown.stdout.count("[[route]]") == 2
    # The output is itself a config file for the same configuration.
    again = tmp_path / "effective.toml"
    again.write_text(shown.stdout)
    expected = _load(
        ["--config", str(config_file), "--keepalive-interval", "3"], {"SSE_RELAY_MAX_STREAMS": "7"}
    )
    assert _load(["--config", str(again)]) == expected


def test_workers_is_a_number_or_auto() -> None:
    assert _load([]).workers == 1
    assert _load(["--workers", "3"]).workers == 3
    assert _load([], {"SSE_RELAY_WORKERS": "auto"}).workers == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="--workers: expected a positive whole number or auto"):
        _load(["--workers", "0"])


def test_route_table_longest_prefix_wins() -> None:
    table = RouteTable("top", [(b"/v1", "v1"), (b"/v1/messages", "messages")])
    assert table.match(b"/v1/messages?beta=true") == "messages"
    assert table.match(b"/v1/messages/batches") == "messages"
    assert table.match(b"/v1/models") == "v1"
    assert table.match(b"/healthz") == "top"


def test_routes_pick_keepalive_and_upstream_per_request(sim: SimServer, tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text(
        f'retry-attempts = 1\n[[route]]\nprefix = "/v1/messages"\nupstream = "{sim.url}"\n'
        "keepalive-interval = 0.1\n"
    )
    gap = script(gaps=[[2, 0.5]])
    # Top level (flags): an upstream nothing listens on, a keepalive too long to show.
    dead = f"http://127.0.0.1:{closed_port()}"
    with RelayProcess(dead, "--config", str(path), keepalive=5) as relay:
        status, _, routed = raw_stream(relay.url, headers=gap)
        unrouted = raw_stream(relay.url + "/other", headers=gap)[0]
    assert status == 200 and routed.count(KEEPALIVE) >= 3
    assert routed.replace(KEEPALIVE, b"") == raw_stream(sim.url, headers=gap)[2]
    assert unrouted == 502  # top-level upstream: nothing listens there
