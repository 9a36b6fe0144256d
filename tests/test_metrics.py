"""The admin listener: exact metrics after known streams, health and readiness probes."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import RelayMetrics
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    PING,
    STREAM_BODY,
    closed_port,
    raw_http,
    raw_stream,
    script,
    wait_for,
)
from tests.h2client import RawH2Client
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1
BIG_BODY = json.dumps({**MESSAGE_PARAMS, "stream": True, "pad": "x" * 8192}).encode()
ERROR_EVENT = b"event: error\n"

Samples = list[tuple[str, dict[str, str], float]]


def scrape(relay: RelayProcess) -> Samples:
    response = httpx2.get(relay.admin_url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry all of `labels`."""
    return sum(
        v
        for n, sample_labels, v in samples
        if n == name and all(sample_labels.get(k) == want for k, want in labels.items())
    )


def settled(relay: RelayProcess, streams: int, timeout: float = 10.0) -> Samples:
    """The metrics once `streams` streams have finished (client aborts land late)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(relay)
        if value(samples, "sse_relay_streams_total") >= streams:
            return samples
        if time.monotonic() > deadline:
            raise TimeoutError(f"{streams} streams never finished: {samples}")
        time.sleep(0.05)


def _post(client: httpx2.Client, url: str, body: bytes, fields: dict[str, str]) -> bytes:
    with client.stream(
        "POST",
        url + "/v1/messages",
        content=body,
        headers={"content-type": "application/json", **fields},
    ) as response:
        data = b"".join(response.iter_raw())
        return b"%d " % response.status_code + data


def _abort_before_head(sim: SimServer, relay: RelayProcess, version: str) -> None:
    """A client that leaves while upstream is still thinking about its answer."""
    before = len(sim.requests)
    slow = script(headers_delay=5.0)
    if version == "2":
        client = RawH2Client(relay.port)
        stream_id = client.stream(json.loads(slow["x-sim-script"]))
        sim.wait_for(lambda: len(sim.requests) > before)
        client.reset(stream_id)
        client.close()
        return
    head = (
        b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        b"x-sim-script: %s\r\ncontent-length: %d\r\n\r\n"
        % (slow["x-sim-script"].encode(), len(STREAM_BODY))
    )
    with socket.create_connection(("127.0.0.1", relay.port)) as sock:
        sock.sendall(head + STREAM_BODY)
        sim.wait_for(lambda: len(sim.requests) > before)


@pytest.mark.parametrize("version", ["1.1", "2"])
def test_metrics_count_exactly_what_was_relayed(sim: SimServer, version: str) -> None:
    with RelayProcess(sim.url, "--max-body-bytes", "4096", keepalive=KA) as relay:
        client = httpx2.Client(http1=version == "1.1", http2=version == "2", timeout=30)
        with client:
            completed = [
                _post(client, relay.url, STREAM_BODY, script(gaps=[[3, 0.35]])),
                _post(client, relay.url, STREAM_BODY, script(gaps=[[2, 0.5]], ping_every=0.2)),
                _post(client, relay.url, STREAM_BODY, script()),
            ]
            dropped = _post(client, relay.url, STREAM_BODY, script(drop_after=5))
            refused = _post(client, relay.url, BIG_BODY, {})
        _abort_before_head(sim, relay, version)
        samples = settled(relay, 6)

    assert all(data.startswith(b"200 ") for data in completed) and dropped.startswith(b"200 ")
    assert refused.startswith(b"413 ")
    relayed = [*completed, dropped]
    # What upstream sent, as the clients saw it: keepalives and the relay's error frame out.
    upstream = [data[4:].replace(KEEPALIVE, b"") for data in completed]
    upstream.append(dropped[4 : dropped.rindex(ERROR_EVENT)].replace(KEEPALIVE, b""))
    assert ERROR_EVENT not in b"".join(upstream)

    def total(name: str, **labels: str) -> float:
        return value(samples, name, **labels)

    assert total("sse_relay_streams_total") == 6
    assert total("sse_relay_streams_total", http_version=version) == 6
    assert total("sse_relay_streams_total", status="200", outcome="completed") == 3
    assert total("sse_relay_streams_total", status="200", outcome="upstream_error") == 1
    assert total("sse_relay_streams_total", status="413", outcome="refused") == 1
    assert total("sse_relay_streams_total", status="none", outcome="client_abort") == 1
    assert total("sse_relay_streams_active") == 0
    assert total("sse_relay_keepalives_total") == sum(d.count(KEEPALIVE) for d in relayed)
    assert total("sse_relay_keepalives_total") >= 5  # the gaps did make some
    assert total("sse_relay_pings_total") == sum(d.count(PING) for d in upstream) == 2
    assert total("sse_relay_events_total") == sum(d.count(b"event: ") for d in upstream)
    assert total("sse_relay_response_bytes_total") == sum(len(d) for d in upstream)
    # The refused body never counts: it was refused on its content-length.
    assert total("sse_relay_request_bytes_total") == 5 * len(STREAM_BODY)
    assert total("sse_relay_upstream_errors_total") == 1
    assert total("sse_relay_upstream_errors_total", kind="lost") == 1
    assert total("sse_relay_client_aborts_total") == 1
    assert total("sse_relay_client_aborts_total", kind="disconnect") == 1
    assert total("sse_relay_refused_total", status="413") == total("sse_relay_refused_total") == 1
    assert total("sse_relay_upstream_retries_total") == 0
    # Every stream is timed; only the four with an upstream head have TTFB and silence.
    assert total("sse_relay_stream_duration_seconds_count") == 6
    assert total("sse_relay_upstream_ttfb_seconds_count") == 4
    assert total("sse_relay_upstream_longest_silence_seconds_count") == 4
    silence_at_most = {
        float(labels["le"]): v
        for name, labels, v in samples
        if name == "sse_relay_upstream_longest_silence_seconds_bucket"
    }
    assert silence_at_most[0.1] <= 3  # the 0.35 s gap was not missed
    assert silence_at_most[5.0] == 4
    assert total("sse_relay_upstream_longest_silence_seconds_sum") >= 0.3


def test_retries_timeouts_and_truncations_are_counted_by_kind(sim: SimServer) -> None:
    # Every first try hits a closed port and is retried on the sim.
    args = ["--upstream", sim.url, "--upstream-read-timeout", "0.5"]
    with RelayProcess(f"http://127.0.0.1:{closed_port()}", *args, keepalive=KA) as relay:
        assert raw_stream(relay.url)[0] == 200
        silent = raw_stream(relay.url, headers=script(gaps=[[3, 5.0]]))[2]
        truncated = raw_stream(relay.url, headers=script(end_without_stop=True))[2]
        samples = settled(relay, 3)
    assert b"upstream sent nothing for 0.5 s" in silent
    assert b"without message_stop" in truncated

    def total(name: str, **labels: str) -> float:
        return value(samples, name, **labels)

    assert total("sse_relay_upstream_retries_total") == 3
    assert total("sse_relay_streams_total", outcome="completed") == 1
    assert total("sse_relay_streams_total", outcome="read_timeout", status="200") == 1
    assert total("sse_relay_streams_total", outcome="truncated", status="200") == 1
    assert total("sse_relay_upstream_errors_total", kind="read_timeout") == 1
    assert total("sse_relay_upstream_errors_total", kind="truncated") == 1
    assert total("sse_relay_upstream_errors_total") == 2
    # The silence that ended in the read timeout counts, though no byte ever ended it.
    assert total("sse_relay_upstream_longest_silence_seconds_count") == 3
    assert total("sse_relay_upstream_longest_silence_seconds_sum") >= 0.5


def _get(relay: RelayProcess, path: str, method: str = "GET") -> httpx2.Response:
    return httpx2.request(method, relay.admin_url + path, timeout=10)


def test_health_and_readiness(sim: SimServer) -> None:
    with RelayProcess(sim.url, keepalive=KA) as relay:
        assert _get(relay, "/healthz").json() == {"status": "ok"}
        ready = _get(relay, "/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}
        assert _get(relay, "/nothing").status_code == 404
        assert _get(relay, "/metrics", "POST").status_code == 405
        # One connection serves request after request, pipelined ones in order.
        port = int(relay.admin_url.rsplit(":", 1)[1])
        get = b"GET %s HTTP/1.1\r\nhost: admin\r\n%s\r\n"
        answers = raw_http(
            port,
            get % (b"/readyz", b"")
            + get % (b"/metrics", b"")
            + get % (b"/healthz", b"connection: close\r\n"),
        )
    assert answers.count(b"HTTP/1.1 200 ") == 3
    ready_at, metrics_at = answers.index(b'"ready"'), answers.index(b"sse_relay_streams_active")
    assert ready_at < metrics_at < answers.index(b'{"status": "ok"}')


def test_readyz_fails_while_upstream_is_unreachable() -> None:
    with RelayProcess(f"http://127.0.0.1:{closed_port()}", keepalive=KA) as relay:
        ready = _get(relay, "/readyz")
        assert _get(relay, "/healthz").status_code == 200
    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert "unreachable" in ready.json()["reason"]


def test_readyz_says_draining_while_streams_finish(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--drain-timeout", "5", keepalive=KA) as relay:
        before = len(sim.requests)
        result: dict[str, bytes] = {}
        worker = threading.Thread(
            target=lambda: result.update(
                data=raw_stream(relay.url, headers=script(gaps=[[2, 1.5]]))[2]
            )
        )
        worker.start()
        sim.wait_for(lambda: len(sim.requests) > before)
        relay.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: _get(relay, "/readyz").status_code == 503, timeout=10.0)
        draining = _get(relay, "/readyz").json()
        assert value(scrape(relay), "sse_relay_streams_active") == 1
        worker.join(10)
        assert relay.proc.wait(10) == 0
    assert draining == {"status": "not ready", "reason": "draining"}
    assert b"event: message_stop" in result["data"]


def test_admin_listener_can_be_turned_off(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--admin-listen", "off", admin=None) as relay:
        assert raw_stream(relay.url)[0] == 200
    assert relay.admin_url == "" and b"admin=" not in relay.ready_line


def test_keepalives_are_a_lock_free_counter_read_at_scrape() -> None:
    """`sse_relay_keepalives_total` is a plain int (relay/ops/metrics.py PlainCounter),
    exported as a counter like the others."""
    metrics = RelayMetrics()
    for _ in range(3):
        metrics.keepalive()
    families = {
        family.name: family for family in text_string_to_metric_families(metrics.render().decode())
    }
    keepalives = families["sse_relay_keepalives"]
    assert keepalives.type == "counter"
    assert [(s.name, s.value) for s in keepalives.samples] == [("sse_relay_keepalives_total", 3)]
