"""deploy/compose/: the relay, the simulated upstream and an idle-killing HAProxy.

Checked without Docker: the compose file's relay command through the relay's own
`check-config`, the simulator's through its own argument parser, every port and
host name across compose.yaml, haproxy.cfg and the image's health check, and
haproxy.cfg through `haproxy -c`. Then the same HAProxy configuration runs for real in
front of a relay and a simulator on loopback, its timeouts scaled down, to show what
the example is for: the direct path is cut in a silence, the relayed one is not.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
import yaml

from relay_sim import sim as sim_cli
from tests.clients import KEEPALIVE, STREAM_BODY, script, wait_for
from tests.effective_config import effective_config, listen_address
from tests.relayproc import REPO, RelayProcess
from tests.simserver import SimServer

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
HAPROXY_CFG = COMPOSE_DIR / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
Section = list[list[str]]


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def relay_command() -> list[str]:
    return [str(arg) for arg in services()["relay"]["command"]]


def sim_command() -> list[str]:
    command = [str(arg) for arg in services()["upstream"]["command"]]
    assert command[0] == "sim", "the upstream service runs `sse-relay sim`"
    return command[1:]


def haproxy_sections(text: str) -> dict[str, Section]:
    """haproxy.cfg as {"frontend via_relay": [["bind", ":8080"], ...], ...}."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            assert current is not None, f"a directive outside any section: {raw!r}"
            current.append(line.split())
    return sections


def directive(section: Section, *words: str) -> list[str]:
    """The arguments of the one directive that starts with `words`."""
    (found,) = [d[len(words) :] for d in section if d[: len(words)] == list(words)]
    return found


def seconds(value: str) -> float:
    """An HAProxy time (`10s`, `500ms`, `2m`; a bare number is milliseconds)."""
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", value)
    assert match, f"not an HAProxy time: {value!r}"
    scale = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(match.group(1)) * scale[match.group(2)]


def published_ports(service: dict[str, Any]) -> dict[int, int]:
    """A service's `ports` as {container port: host port}."""
    ports = {}
    for entry in service.get("ports", []):
        host, container = str(entry).rsplit(":", 1)
        ports[int(container)] = int(host.rsplit(":", 1)[-1])
    return ports


def listening_ports() -> dict[str, int]:
    """The port each compose service listens on, from its own command line."""
    relay = effective_config(relay_command())
    sim_args = sim_cli._parser().parse_args(sim_command())
    return {"relay": listen_address(relay, "listen")[1], "upstream": sim_args.listen[1]}


def test_the_relay_command_is_accepted_and_reaches_the_upstream_service() -> None:
    """`check-config` accepts the relay's command; it listens on every interface (other
    containers connect to it), and its --upstream names the sim service at the port
    the sim listens on. Keepalives come well inside HAProxy's idle timeouts."""
    relay = effective_config(relay_command())
    assert listen_address(relay, "listen")[0] == "0.0.0.0"
    (upstream,) = relay["upstream"]
    target = urlsplit(upstream)
    assert target.scheme == "http" and target.hostname == "upstream"
    assert target.port == listening_ports()["upstream"]
    defaults = haproxy_sections(HAPROXY_CFG.read_text())["defaults"]
    for side in ("client", "server"):
        assert relay["keepalive-interval"] * 2 <= seconds(directive(defaults, "timeout", side)[0])


def test_the_sim_command_is_accepted_and_outlasts_the_idle_timeouts() -> None:
    """The simulator's own argument parser accepts its command (`sse-relay sim` takes
    what `python -m relay_sim.sim` does), each flag spelled as its --help lists it; it
    listens on every interface, and its silence is longer than HAProxy's idle timeouts:
    the failure shows on the direct path."""
    usage = subprocess.run(
        [sys.executable, "-m", "relay_sim.sim", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        timeout=30,
    ).stdout
    listed = set(re.findall(r"--[a-z][\w-]*", usage))
    for flag in [arg for arg in sim_command() if arg.startswith("--")]:
        assert flag in listed, f"sse-relay sim --help lists no {flag}"
    args = sim_cli._parser().parse_args(sim_command())
    assert args.listen[0] == "0.0.0.0"
    defaults = haproxy_sections(HAPROXY_CFG.read_text())["defaults"]
    for side in ("client", "server"):
        assert args.gap > seconds(directive(defaults, "timeout", side)[0])


def test_haproxy_ports_match_the_services() -> None:
    """Each HAProxy backend server is a compose service at the port that service listens
    on; each frontend's port is published by the haproxy service, and the via-relay and
    direct frontends reach the relay and the sim."""
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    ports = listening_ports()
    backends = {}
    for name, section in sections.items():
        if name.startswith("backend "):
            (server,) = [d for d in section if d[0] == "server"]
            host, port = server[2].rsplit(":", 1)
            assert host in services(), f"{name}: no compose service {host!r}"
            assert int(port) == ports[host], f"{name}: {host} listens on {ports[host]}"
            backends[name.split()[1]] = host
    published = published_ports(services()["haproxy"])
    reached = {}
    for name, section in sections.items():
        if name.startswith("frontend "):
            bind_port = int(directive(section, "bind")[0].rsplit(":", 1)[1])
            assert bind_port in published, f"{name}: port {bind_port} is not published"
            reached[name.split()[1]] = backends[directive(section, "default_backend")[0]]
    assert reached == {"via_relay": "relay", "direct": "upstream"}
    config_mount = f"./{HAPROXY_CFG.name}:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert config_mount in services()["haproxy"]["volumes"]


def test_health_checks_ask_the_ports_that_listen() -> None:
    """The relay service relies on the image's HEALTHCHECK, which asks 127.0.0.1:9901,
    so its admin listener must be there; the sim's own check asks the sim's port. Both
    services build the repository's Dockerfile."""
    dockerfile = (REPO / "Dockerfile").read_text()
    (health_port,) = re.findall(r"/dev/tcp/127\.0\.0\.1/(\d+)", dockerfile)
    relay = effective_config(relay_command())
    assert listen_address(relay, "admin-listen")[1] == int(health_port)
    sim_check = " ".join(services()["upstream"]["healthcheck"]["test"])
    assert f"/dev/tcp/127.0.0.1/{listening_ports()['upstream']}" in sim_check
    for name in ("relay", "upstream"):
        build = services()[name]["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == (
            REPO / "Dockerfile"
        )


def test_haproxy_accepts_its_configuration() -> None:
    """`haproxy -c` (Debian's HAProxy, which `make test` installs) finds the file valid;
    the compose names it cannot resolve here only disable servers (init-addr none)."""
    assert HAPROXY, "haproxy: `make test` installs it"
    done = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Configuration file is valid" in done.stdout


# The demo on loopback: the same haproxy.cfg with its idle timeouts and ports scaled.

IDLE = 1.0  # HAProxy's idle timeouts here, for the compose file's 10 s
SILENCE = 3.0  # the sim's gap here, for the compose file's 30 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def loopback_config(
    ports: dict[str, int], binds: dict[str, int], source: Path = HAPROXY_CFG
) -> str:
    """An HAProxy configuration of deploy/compose/ as is, but servers and binds on
    loopback ports, no Docker DNS, no log target, and idle timeouts of IDLE seconds."""
    lines = []
    skip = False
    for raw in source.read_text().splitlines():
        words = raw.split("#", 1)[0].split()
        if raw and not raw[0].isspace():
            skip = words[:1] == ["resolvers"]
        if skip or words[:1] == ["log"] or words[:1] == ["default-server"]:
            continue
        if words[:2] in (["timeout", "client"], ["timeout", "server"]):
            raw = f"    timeout {words[1]} {int(IDLE * 1000)}ms"
        elif words[:1] == ["server"]:
            raw = f"    server {words[1]} 127.0.0.1:{ports[words[2].rsplit(':', 1)[0]]}"
        elif words[:1] == ["bind"]:
            raw = f"    bind 127.0.0.1:{binds[words[1].rsplit(':', 1)[1]]}"
        lines.append(raw)
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The compose topology on 127.0.0.1: sim, relay (keepalive IDLE / 2), HAProxy."""
    assert HAPROXY, "haproxy: `make test` installs it"
    with (
        SimServer() as upstream,
        RelayProcess(upstream.url, keepalive=IDLE / 2) as relay,
    ):
        binds = {port: free_port() for port in ("8080", "8081")}
        folder = tmp_path_factory.mktemp("haproxy")
        config = folder / "haproxy.cfg"
        config.write_text(loopback_config({"relay": relay.port, "upstream": upstream.port}, binds))
        log = folder / "haproxy.log"
        with log.open("wb") as stderr:
            proxy = subprocess.Popen(
                [HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            try:
                wait_for(lambda: all(_accepts(port) for port in binds.values()), timeout=10)
            except TimeoutError:
                raise AssertionError(f"haproxy is not listening:\n{log.read_text()}") from None
            yield {name: f"http://127.0.0.1:{port}" for name, port in binds.items()}
        finally:
            proxy.terminate()
            proxy.wait(10)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _stream(base_url: str) -> tuple[bytes, str | None]:
    """One streaming turn with a silence of SILENCE s: (bytes received, why it broke)."""
    received = bytearray()
    try:
        with (
            httpx2.Client(timeout=30) as client,
            client.stream(
                "POST",
                base_url + "/v1/messages",
                content=STREAM_BODY,
                headers={"content-type": "application/json", **script(gaps=[[2, SILENCE]])},
            ) as response,
        ):
            assert response.status_code == 200
            for chunk in response.iter_raw():
                received += chunk
    except httpx2.HTTPError as exc:
        return bytes(received), type(exc).__name__
    return bytes(received), None


def test_the_idle_timeout_cuts_the_direct_stream_and_not_the_relayed_one(
    demo: dict[str, str],
) -> None:
    """Through HAProxy straight to the sim, a stream silent longer than the idle timeout
    is cut mid-turn (no message_stop); through HAProxy and the relay, keepalives cross
    the silence and the whole turn arrives."""
    started = time.monotonic()
    direct, broke = _stream(demo["8081"])
    assert broke is not None and b"message_stop" not in direct
    assert b"message_start" in direct  # it was cut mid-stream, not refused
    assert time.monotonic() - started < SILENCE

    relayed, broke = _stream(demo["8080"])
    assert broke is None, broke
    assert relayed.count(KEEPALIVE) >= 2
    assert b"event: message_stop" in relayed
