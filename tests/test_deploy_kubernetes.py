"""deploy/kubernetes/sse-relay.yaml: valid for Kubernetes, and true to the relay.

Schemas: kubernetes-validate's strict ones (unknown fields are errors) for Kubernetes
1.30, the first release with the preStop `sleep` action on by default, and 1.37, the
newest it ships. Everything the manifest says about the relay (flags, config file,
ports, probe paths, shutdown timing) is checked against the relay itself.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx2
import kubernetes_validate
import pytest
import yaml

from tests.effective_config import effective_config, listen_address
from tests.relayproc import REPO, RelayProcess
from tests.simserver import SimServer

MANIFEST = REPO / "deploy" / "kubernetes" / "sse-relay.yaml"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
RELAY_CONTAINER = "sse-relay"
Resource = dict[str, Any]


def resources() -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def resource(kind: str) -> Resource:
    (found,) = [doc for doc in resources() if doc["kind"] == kind]
    return found


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("Deployment")["spec"]["template"]["spec"]
    return spec


def relay_container() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == RELAY_CONTAINER]
    found: dict[str, Any] = container
    return found


def container_port(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's `port` (a number or a port name) as the container's number."""
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in container["ports"]], port
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return int(number)


def relay_args(config_dir: Path) -> list[str]:
    """The relay container's args, its --config pointing at the ConfigMap's file as
    written under `config_dir` (checked to be where the pod mounts it)."""
    container = relay_container()
    args = list(container["args"])
    config_path = Path(args[args.index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (volume,) = [v for v in pod_spec()["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == resource("ConfigMap")["metadata"]["name"]
    assert config_path.parent == Path(mounts[volume["name"]]), "--config is not the mount"
    data = resource("ConfigMap")["data"]
    assert config_path.name in data, f"the ConfigMap has no key {config_path.name}"
    local = config_dir / config_path.name
    local.write_text(data[config_path.name])
    args[args.index("--config") + 1] = str(local)
    return args


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configmap")


@pytest.fixture(scope="module")
def relay_config(config_dir: Path) -> dict[str, Any]:
    """The relay's effective settings in the pod: ConfigMap file plus container args."""
    return effective_config(relay_args(config_dir))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_is_valid_for_kubernetes(version: str) -> None:
    """Each resource passes the strict schema of that Kubernetes version (field names,
    types, required fields, unknown fields refused)."""
    kinds = set()
    for doc in resources():
        kubernetes_validate.validate(doc, version, strict=True)
        kinds.add(doc["kind"])
    assert {"ConfigMap", "Deployment", "Service"} <= kinds


def test_the_schema_check_rejects_a_misspelled_field() -> None:
    """The validation above is not vacuous: a one-letter typo in the pod spec fails it."""
    deployment = copy.deepcopy(resource("Deployment"))
    spec = deployment["spec"]["template"]["spec"]
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_container_args_and_config_file_are_accepted_by_the_relay(
    relay_config: dict[str, Any],
) -> None:
    """`check-config` accepts the ConfigMap's TOML (mounted where --config says) with the
    container's args, and both listeners face the pod's network, not loopback: the
    Service sends traffic to the pod IP and the kubelet probes it there."""
    listen_host, _ = listen_address(relay_config, "listen")
    admin_host, _ = listen_address(relay_config, "admin-listen")
    assert listen_host not in ("127.0.0.1", "localhost", "::1")
    assert admin_host not in ("127.0.0.1", "localhost", "::1")
    # One process: with more, worker k's admin port is PORT+k-1, unseen by the probes.
    assert relay_config["workers"] == 1


def test_ports_are_the_ones_the_relay_listens_on(relay_config: dict[str, Any]) -> None:
    """The container ports equal the ports the effective `listen` and `admin-listen`
    set; the probes and the Prometheus annotation use the admin port; the Service's
    streaming port reaches the relay's client port, and no Service port reaches admin."""
    container = relay_container()
    _, client_port = listen_address(relay_config, "listen")
    _, admin_port = listen_address(relay_config, "admin-listen")
    assert container_port(container, "stream") == client_port
    assert container_port(container, "admin") == admin_port
    for probe in ("readinessProbe", "livenessProbe"):
        assert container_port(container, container[probe]["httpGet"]["port"]) == admin_port
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port

    containers = {c["name"]: c for c in pod_spec()["containers"]}
    reached = {}
    for port in resource("Service")["spec"]["ports"]:
        target = port["targetPort"]
        owners = [c for c in containers.values() if target in [p["name"] for p in c["ports"]]]
        assert len(owners) == 1, f"targetPort {target!r} names no single container port"
        reached[port["name"]] = (owners[0]["name"], container_port(owners[0], target))
    assert reached["stream"] == (RELAY_CONTAINER, client_port)
    assert (RELAY_CONTAINER, admin_port) not in reached.values()


def test_the_grace_period_outlasts_the_prestop_sleep_and_the_drain(
    relay_config: dict[str, Any],
) -> None:
    """SIGTERM comes after the preStop sleep, and the relay then drains for up to
    drain-timeout: the pod's grace period must cover both, or the kubelet kills the
    relay before it can end its streams with a typed error."""
    sleep = relay_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = pod_spec()["terminationGracePeriodSeconds"]
    assert sleep > 0
    assert grace > sleep + relay_config["drain-timeout"]


def test_probe_and_metrics_paths_answer_on_a_relay_with_this_config(
    sim: SimServer, config_dir: Path
) -> None:
    """A relay started from the ConfigMap's file (listeners moved to free loopback
    ports, upstream to the simulator) answers the readiness and liveness probe paths
    and the scrape path with 200: the paths exist on the admin listener."""
    args = relay_args(config_dir)
    config = args[args.index("--config") + 1]
    container = relay_container()
    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    paths = [
        container["readinessProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
        annotations["prometheus.io/path"],
    ]
    assert paths[:2] == ["/readyz", "/healthz"]
    with RelayProcess(sim.url, "--config", config) as relay:
        for path in paths:
            response = httpx2.get(relay.admin_url + path, timeout=10)
            assert response.status_code == 200, (path, response.text)
