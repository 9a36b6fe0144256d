"""Fixtures shared by the test modules: a simulated upstream, test certificates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests import dist_build
from tests.relayproc import RelayProcess
from tests.simserver import SimServer


def pytest_collection_finish(session: pytest.Session) -> None:
    """The single-file build starts now, beside the tests, if test_dist.py will run."""
    if any(item.path.name == "test_dist.py" for item in session.items):
        dist_build.start()


def pytest_sessionfinish(session: pytest.Session) -> None:
    dist_build.stop()


@pytest.fixture(autouse=True)
def relay_log_stays_clean() -> Iterator[None]:
    """Fails the test during which a relay it did not start (a module fixture's) logged
    a traceback or an undeclared error: that relay is only stopped, and checked, after
    the module's last test, which would otherwise take the blame."""
    running = RelayProcess.running()
    yield
    for relay in running:
        relay.check_log()


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    """The simulated Messages API on 127.0.0.1, fresh for each test module."""
    with SimServer() as server:
        yield server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A throwaway certificate authority; its certificates name `localhost`."""
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CA certificate as a PEM file, for clients and `--upstream-ca`."""
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def relay_tls_args(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Relay flags for a TLS listener on a free port with a `localhost` certificate."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("localhost")
    cert.cert_chain_pems[0].write_to_path(str(folder / "cert.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    return [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(folder / "cert.pem"),
        "--tls-key",
        str(folder / "key.pem"),
    ]
