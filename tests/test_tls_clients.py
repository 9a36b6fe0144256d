"""Real clients on the relay's TLS listener: the sync Python SDK by ALPN h2 and
http/1.1, and curl over HTTP/1.1 with TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx2
import pytest

from tests.accesslog import stream_record
from tests.clients import KEEPALIVE, MESSAGE_PARAMS, STREAM_BODY, raw_stream, script, sdk_stream
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1


@pytest.fixture(scope="module")
def relay(sim: SimServer, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, *relay_tls_args, keepalive=KA) as proc:
        yield proc


@pytest.mark.parametrize(
    ("alpn", "version"), [("h2", "HTTP/2"), ("http/1.1", "HTTP/1.1")], ids=["h2", "http1.1"]
)
def test_sync_sdk_streams_over_the_tls_listener(
    sim: SimServer, relay: RelayProcess, ca_file: Path, alpn: str, version: str
) -> None:
    """The sync SDK on https, trusting only the test CA, streams a turn with a gap end
    to end: ALPN picked `alpn` (h2 when offered alongside http/1.1; http/1.1 when it is
    all the client offers), and the events and final message equal upstream's."""
    gap = script(gaps=[[3, 6 * KA]])
    direct_events, direct_final = sdk_stream(sim.url)  # a gap changes timing, not content
    trust = ssl.create_default_context(cafile=str(ca_file))
    # httpx2 sets the offer on the context: h2 and http/1.1, or http/1.1 alone.
    http_client = httpx2.Client(http2=alpn == "h2", verify=trust, timeout=30)
    with (
        anthropic.Anthropic(
            base_url=relay.tls_url, api_key="sk-test", max_retries=0, http_client=http_client
        ) as client,
        client.messages.stream(**MESSAGE_PARAMS, extra_headers=gap) as stream,
    ):
        events = [event.model_dump() for event in stream]
        final = stream.get_final_message()
        response = stream.response
        tls = response.extensions["network_stream"].get_extra_info("ssl_object")
        assert tls.selected_alpn_protocol() == alpn
        assert response.http_version == version
        request_id = response.headers["request-id"]
    assert events == direct_events and final.model_dump() == direct_final.model_dump()
    record = stream_record(relay, request_id)
    assert record["http_version"] == version.removeprefix("HTTP/")
    assert record["keepalives"] >= 3


def test_curl_http11_over_tls_gets_the_upstream_bytes(
    sim: SimServer, relay: RelayProcess, ca_file: Path, tmp_path: Path
) -> None:
    """curl --http1.1 on the TLS listener (-N: no buffering) receives upstream's body
    byte for byte, with keepalive comments only where upstream was silent."""
    assert shutil.which("curl"), "curl: `make test` installs it"
    fields = script(gaps=[[3, 6 * KA]])
    direct = raw_stream(sim.url, headers=fields)[2]
    request = tmp_path / "body.json"
    request.write_bytes(STREAM_BODY)
    received = tmp_path / "received"
    curl = subprocess.run(
        [
            "curl",
            "--http1.1",
            "--cacert",
            str(ca_file),
            "-N",
            "-sS",
            "--fail-with-body",
            "-H",
            "content-type: application/json",
            "-H",
            f"x-sim-script: {fields['x-sim-script']}",
            "--data-binary",
            f"@{request}",
            "-o",
            str(received),
            "-w",
            "%{http_version} %{response_code}",
            relay.tls_url + "/v1/messages",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout == "1.1 200"
    relayed = received.read_bytes()
    assert relayed.count(KEEPALIVE) >= 3
    assert relayed.replace(KEEPALIVE, b"") == direct
