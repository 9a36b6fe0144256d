"""The body pump's native path (relay/upstream/_bodypump.pyx, `express`): past the first
bytes, an HTTP/1.1 upstream's body goes to a chunked HTTP/1.1 client with no Python per
chunk, or to an HTTP/2 stream as DATA frames written in C; a resumable stream's journal
takes each chunk with a `memcpy`. It must be indistinguishable from the Python path:
the same bytes, keepalives where they belong, the same access-log record; and taken
only where it applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx2
import pytest

from tests.accesslog import stream_record
from tests.clients import KEEPALIVE, STREAM_BODY, raw_stream, script
from tests.relayproc import RelayProcess
from tests.simserver import SimServer
from tests.test_metrics import scrape, value
from tests.test_resume import PartialStream, resume

KA = 0.1
NATIVE = "sse_relay_native_path_streams_total"
SCRIPTS = {
    "gaps mid-stream": script(gaps=[[2, 6 * KA], [5, 3 * KA]], text_deltas=6),
    "thinking": script(thinking_deltas=20, text_deltas=3),
    "bulk": script(bulk_bytes=600 * 1024),
}


@pytest.fixture(scope="module", params=["cython", "python"])
def relay(sim: SimServer, request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    env = {"SSE_RELAY_NO_EXTENSIONS": "1"} if request.param == "python" else {}
    with RelayProcess(sim.url, keepalive=KA, env=env) as proc:
        yield proc


@contextmanager
def one_stream_on_its_path(relay: RelayProcess) -> Iterator[None]:
    """The block's one stream took the native path on the Cython relay, the Python
    path on the twin."""
    native = b"body_pump=cython" in relay.ready_line
    before = value(scrape(relay), NATIVE)
    yield
    assert value(scrape(relay), NATIVE) == before + (1 if native else 0)


@pytest.mark.parametrize("headers", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_both_paths_relay_the_same_bytes_and_records(
    sim: SimServer, relay: RelayProcess, headers: dict[str, str]
) -> None:
    with one_stream_on_its_path(relay):
        status, response_headers, relayed = raw_stream(relay.url, headers=headers)
    _, _, direct = raw_stream(sim.url, headers=headers)
    assert status == 200
    assert relayed.replace(KEEPALIVE, b"") == direct
    record = stream_record(relay, response_headers["request-id"])
    assert record["bytes_out"] == len(direct)
    assert record["events"] == direct.count(b"\n\n")
    assert record["outcome"] == "completed"
    if "gaps" in headers["x-sim-script"]:
        # Keepalives during the gaps (on the native path: after it took over), and the
        # longest silence seen, as the machine saw it on the Python path.
        assert record["keepalives"] == relayed.count(KEEPALIVE) >= 5
        assert 6 * KA * 0.8 <= record["longest_silence_s"] < 6 * KA * 3


@pytest.mark.parametrize("headers", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_http2_clients_get_the_same_bytes_on_either_path(
    sim: SimServer, relay: RelayProcess, headers: dict[str, str]
) -> None:
    with (
        one_stream_on_its_path(relay),
        httpx2.Client(http1=False, http2=True, timeout=30) as client,
        client.stream(
            "POST",
            relay.url + "/v1/messages",
            content=STREAM_BODY,
            headers={"content-type": "application/json", **headers},
        ) as response,
    ):
        relayed = b"".join(response.iter_raw())
    _, _, direct = raw_stream(sim.url, headers=headers)
    assert response.http_version == "HTTP/2"
    assert relayed.replace(KEEPALIVE, b"") == direct
    record = stream_record(relay, response.headers["request-id"])
    assert (record["bytes_out"], record["events"]) == (len(direct), direct.count(b"\n\n"))


def test_a_resumable_stream_takes_it_through_its_journal(
    sim: SimServer, relay: RelayProcess
) -> None:
    headers = {**SCRIPTS["gaps mid-stream"], "relay-resumable": "1"}
    with one_stream_on_its_path(relay):
        status, response_headers, relayed = raw_stream(relay.url, headers=headers)
    _, _, direct = raw_stream(sim.url, headers=SCRIPTS["gaps mid-stream"])
    assert status == 200 and "relay-stream-id" in response_headers
    assert relayed.replace(KEEPALIVE, b"") == direct
    # The journal holds what the client got, keepalives included: a resume from the
    # start replays it all.
    stream_id = response_headers["relay-stream-id"]
    with httpx2.Client(timeout=30) as client:
        resumed = client.get(f"{relay.url}/relay/v1/streams/{stream_id}?offset=0")
    assert resumed.status_code == 200 and resumed.content == relayed


@pytest.mark.parametrize("http2", [False, True], ids=["resumed-http1.1", "resumed-http2"])
def test_a_resumable_stream_cut_mid_stream_resumes_from_its_byte(
    sim: SimServer, relay: RelayProcess, http2: bool
) -> None:
    """Cut while the native path writes to the first connection; journaled while
    detached (in a gap); the resumer gets the journal from its byte, then the live tail
    through the pump, which now writes to it."""
    gap = script(gaps=[[3, 1.0]], text_deltas=8)
    _, _, direct = raw_stream(sim.url, headers=gap)
    with one_stream_on_its_path(relay):
        first = PartialStream(relay.port, {**gap, "relay-resumable": "1", "x-api-key": "k"})
        first.read_until(300)
        have = bytes(first.body)
        first.cut()
        stream_id = first.headers[b"relay-stream-id"].decode()
        answer = resume(relay.url, stream_id, len(have), key="k", http1=not http2, http2=http2)
    assert answer.status_code == 200
    assert (have + answer.content).replace(KEEPALIVE, b"") == direct
