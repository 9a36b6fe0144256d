"""deploy/compose/resumable.yaml: two relay instances sharing their journals in Redis,
behind a round-robin HAProxy.

Checked without Docker: each relay's command through the relay's own `check-config`,
every host and port across the compose file and haproxy-resumable.cfg, and that file
through `haproxy -c`. Then that HAProxy configuration runs for real on loopback in
front of two relays and a redis-server: a stream cut on one instance is resumed
through the balancer on the other, and upstream saw one request.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.clients import KEEPALIVE, script, wait_for
from tests.effective_config import effective_config, listen_address
from tests.redisproc import RedisServer, free_port
from tests.relayproc import REPO, RelayProcess
from tests.simserver import SimServer
from tests.test_deploy_compose import HAPROXY, _accepts, haproxy_sections, loopback_config
from tests.test_resume import RESUMABLE, PartialStream, direct, resume

COMPOSE_DIR = REPO / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "resumable.yaml"
HAPROXY_CFG = COMPOSE_DIR / "haproxy-resumable.cfg"
RELAYS = ("relay-a", "relay-b")


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE.read_text())["services"]
    return found


def relay_config(name: str) -> dict[str, Any]:
    return effective_config([str(arg) for arg in services()[name]["command"]])


def redis_port() -> int:
    command = [str(arg) for arg in services()["redis"]["command"]]
    assert command[0] == "redis-server"
    return int(command[command.index("--port") + 1])


def sim_port() -> int:
    command = [str(arg) for arg in services()["upstream"]["command"]]
    return int(command[command.index("--listen") + 1].rsplit(":", 1)[1])


def test_both_relays_share_the_redis_service_and_reach_the_upstream() -> None:
    for name in RELAYS:
        config = relay_config(name)
        assert listen_address(config, "listen")[0] == "0.0.0.0"
        journal = urlsplit(config["journal"])
        assert journal.scheme == "redis" and journal.hostname == "redis"
        assert journal.port == redis_port()
        (upstream,) = config["upstream"]
        assert urlsplit(upstream).hostname == "upstream"
        assert urlsplit(upstream).port == sim_port()
        assert services()[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    # Redis keeps nothing on disk: the journals never touch one.
    redis_command = services()["redis"]["command"]
    assert redis_command[redis_command.index("--save") + 1] == ""
    assert redis_command[redis_command.index("--appendonly") + 1] == "no"


def test_haproxy_balances_round_robin_over_both_relays() -> None:
    sections = haproxy_sections(HAPROXY_CFG.read_text())
    backend = sections["backend relays"]
    assert ["balance", "roundrobin"] in backend
    servers = {
        d[2].rsplit(":", 1)[0]: int(d[2].rsplit(":", 1)[1]) for d in backend if d[0] == "server"
    }
    assert set(servers) == set(RELAYS)
    for name, port in servers.items():
        assert port == listen_address(relay_config(name), "listen")[1]
    bind = int(sections["frontend relays"][0][1].rsplit(":", 1)[1])
    assert f"{bind}:{bind}" in services()["haproxy"]["ports"]
    mount = f"./{HAPROXY_CFG.name}:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert mount in services()["haproxy"]["volumes"]


def test_haproxy_accepts_the_configuration() -> None:
    assert HAPROXY, "haproxy: `make test` installs it"
    done = subprocess.run(
        [HAPROXY, "-c", "-f", str(HAPROXY_CFG)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def balanced(
    sim: SimServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[RelayProcess]]]:
    """The compose topology on loopback: two relays, a redis-server, HAProxy."""
    assert HAPROXY, "haproxy: `make test` installs it"
    with (
        RedisServer() as redis_server,
        RelayProcess(sim.url, "--journal", redis_server.url) as first,
        RelayProcess(sim.url, "--journal", redis_server.url) as second,
    ):
        port = free_port()
        config = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
        ports = {"relay-a": first.port, "relay-b": second.port}
        config.write_text(loopback_config(ports, {"8080": port}, HAPROXY_CFG))
        proxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.DEVNULL)
        try:
            wait_for(lambda: _accepts(port), timeout=10)
            yield f"http://127.0.0.1:{port}", [first, second]
        finally:
            proxy.terminate()
            proxy.wait(10)


def test_a_stream_cut_behind_the_balancer_resumes_on_the_other_instance(
    sim: SimServer, balanced: tuple[str, list[RelayProcess]]
) -> None:
    url, relays = balanced
    gap = script(gaps=[[3, 1.0]])
    expected = direct(sim, gap)
    before = len(sim.requests)
    served = [relay.stderr_text.count(b"from the shared journal") for relay in relays]
    first = PartialStream(int(url.rsplit(":", 1)[1]), {**RESUMABLE, **gap})
    first.read_until(300)
    have = bytes(first.body)
    first.cut()
    answer = resume(url, first.headers[b"relay-stream-id"].decode(), len(have))
    assert answer.status_code == 200
    assert (have + answer.content).replace(KEEPALIVE, b"") == expected
    assert len(sim.requests) - before == 1
    # Round robin sent the resume to the instance that did not run the stream.
    now = [relay.stderr_text.count(b"from the shared journal") for relay in relays]
    assert sum(now) - sum(served) == 1
