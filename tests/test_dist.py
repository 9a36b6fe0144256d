"""The single-file executable (`make dist`): built once, then used like the binary it is."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx2
import pytest

from tests import dist_build
from tests.clients import raw_stream, script
from tests.relayproc import RelayProcess
from tests.simserver import SimServer


@pytest.fixture(scope="module")
def executable() -> Path:
    """Built once, beside the session's earlier tests (tests/dist_build.py)."""
    return dist_build.started().executable()


def test_executable_reports_the_cython_scanner(executable: Path) -> None:
    version = subprocess.run(
        [str(executable), "--version"], capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.strip().endswith("(scanner: cython)")


def test_executable_relays_a_stream_with_keepalives(executable: Path, sim: SimServer) -> None:
    gap = script(gaps=[[3, 0.5]])
    with RelayProcess(sim.url, keepalive=0.1, command=[str(executable)]) as relay:
        assert b"scanner=cython body_pump=cython journal=cython" in relay.ready_line
        status, _, relayed = raw_stream(relay.url, headers=gap)
        # prometheus_client made it into the binary, and the admin listener serves it.
        metrics = httpx2.get(relay.admin_url + "/metrics", timeout=10).text
    assert 'sse_relay_streams_total{http_version="1.1",outcome="completed",status="200"} 1.0' in (
        metrics
    )
    direct = raw_stream(sim.url, headers=gap)[2]
    assert status == 200 and relayed.count(b": keepalive\n\n") >= 3
    assert relayed.replace(b": keepalive\n\n", b"") == direct
