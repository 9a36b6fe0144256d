"""An https:// upstream: certificate verified (system store or --upstream-ca), SNI sent."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.clients import raw_stream, script, sdk_stream
from tests.relayproc import RelayProcess
from tests.simserver import SimServer


@pytest.fixture(scope="module")
def server_names() -> list[str | None]:
    return []


@pytest.fixture(scope="module")
def tls_sim(ca: trustme.CA, server_names: list[str | None]) -> Iterator[SimServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    context.sni_callback = lambda _sock, name, _ctx: server_names.append(name)
    with SimServer(ssl=context) as server:
        yield server


def test_https_upstream_is_verified_and_gets_sni(
    tls_sim: SimServer, ca_file: Path, server_names: list[str | None]
) -> None:
    upstream = f"https://localhost:{tls_sim.port}"
    with RelayProcess(upstream, "--upstream-ca", str(ca_file)) as relay:
        events, final = sdk_stream(relay.url, script(gaps=[[3, 0.4]]))
    assert events[-1]["type"] == "message_stop" and final.content[0].signature
    assert "localhost" in server_names
    assert tls_sim.requests[-1].header(b"host") == f"localhost:{tls_sim.port}".encode()


def test_untrusted_certificate_is_a_non_retryable_502(tls_sim: SimServer) -> None:
    with RelayProcess(f"https://localhost:{tls_sim.port}") as relay:
        status, headers, body = raw_stream(relay.url)
    error = json.loads(body)["error"]
    assert status == 502 and "failed verification" in error["message"]
    assert headers["x-should-retry"] == "false"


def test_verification_can_be_turned_off(tls_sim: SimServer) -> None:
    upstream = f"https://localhost:{tls_sim.port}"
    with RelayProcess(upstream, "--tls-verify", "false") as relay:
        status, _, body = raw_stream(relay.url)
    assert status == 200 and body.rstrip().endswith(b"}")
