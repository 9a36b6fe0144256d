"""Resumable streams: a client that opted in drops its connection mid-stream, and another
connection (any HTTP version) takes the stream over from the byte it had, while
upstream saw exactly one request.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import h11
import httpx2
import pytest

from tests.clients import KEEPALIVE, STREAM_BODY, script, wait_for
from tests.h3client import h3_connect
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

RESUMABLE = {"relay-resumable": "1", "x-api-key": "sk-owner"}
# A gap after the third frame: the client leaves in it, the stream goes on without it.
GAP = script(gaps=[[3, 1.0]])


@pytest.fixture(scope="module")
def relay(sim: SimServer) -> Iterator[RelayProcess]:
    flags = ("--resume-grace", "3", "--resume-retain", "2")
    with RelayProcess(sim.url, *flags) as process:
        yield process


class PartialStream:
    """An HTTP/1.1 streaming POST read by hand, so that it can be cut at any byte."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.conn = h11.Connection(h11.CLIENT)
        fields = [("host", "relay"), ("content-type", "application/json"), *headers.items()]
        fields.append(("content-length", str(len(STREAM_BODY))))
        self.sock.sendall(
            self.conn.send(h11.Request(method="POST", target="/v1/messages", headers=fields))
            + (self.conn.send(h11.Data(data=STREAM_BODY)) or b"")
            + (self.conn.send(h11.EndOfMessage()) or b"")
        )
        self.body = bytearray()
        self.headers: dict[bytes, bytes] = {}
        self.status = 0

    def read_until(self, size: int) -> None:
        """Reads the head and at least `size` body bytes (fewer if the body ends)."""
        while len(self.body) < size:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                self.status = event.status_code
                self.headers = dict(event.headers)
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return

    def cut(self) -> None:
        """The connection drops (an RST, as a load balancer's kill looks)."""
        self.sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
        )
        self.sock.close()


def direct(sim: SimServer, headers: dict[str, str]) -> bytes:
    with httpx2.Client(timeout=30) as client:
        response = client.post(sim.url + "/v1/messages", content=STREAM_BODY, headers=headers)
        return response.content


def resume(
    url: str, stream_id: str, offset: int, key: str = "sk-owner", **kwargs: object
) -> httpx2.Response:
    client = httpx2.Client(timeout=30, **kwargs)  # type: ignore[arg-type]
    with client:
        return client.get(
            f"{url}/relay/v1/streams/{stream_id}",
            params={"offset": offset},
            headers={"x-api-key": key},
        )


def test_a_dropped_client_resumes_from_its_byte_and_upstream_saw_one_request(
    sim: SimServer, relay: RelayProcess
) -> None:
    expected = direct(sim, GAP)
    before = len(sim.requests)
    first = PartialStream(relay.port, {**RESUMABLE, **GAP})
    first.read_until(300)
    stream_id = first.headers[b"relay-stream-id"].decode()
    assert len(stream_id) >= 22  # 128+ random bits, url-safe
    have = bytes(first.body)
    first.cut()
    answer = resume(relay.url, stream_id, len(have))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    assert (have + answer.content).replace(KEEPALIVE, b"") == expected
    assert len(sim.requests) - before == 1
    # Upstream was never cut: the stream ran to its end for the resumer.
    assert b"event: message_stop" in answer.content


def test_a_stream_cut_on_http1_resumes_over_http2(sim: SimServer, relay: RelayProcess) -> None:
    expected = direct(sim, GAP)
    first = PartialStream(relay.port, {**RESUMABLE, **GAP})
    first.read_until(100)
    have = bytes(first.body)
    first.cut()
    stream_id = first.headers[b"relay-stream-id"].decode()
    # h2c with prior knowledge: HTTP/2 on the relay's plain port.
    answer = resume(relay.url, stream_id, len(have), http1=False, http2=True)
    assert answer.http_version == "HTTP/2"
    assert (have + answer.content).replace(KEEPALIVE, b"") == expected


def test_a_stream_cut_on_http1_resumes_over_http3(
    sim: SimServer, relay_tls_args: list[str], ca_file: Path
) -> None:
    expected = direct(sim, GAP)
    with RelayProcess(sim.url, *relay_tls_args, "--http3", "--resume-grace", "5") as relay:
        first = PartialStream(relay.port, {**RESUMABLE, **GAP})
        first.read_until(100)
        have = bytes(first.body)
        first.cut()
        path = b"/relay/v1/streams/" + first.headers[b"relay-stream-id"] + b"?offset=%d" % len(have)

        async def run() -> tuple[int, bytes]:
            async with h3_connect(relay.h3_port, str(ca_file)) as client:
                key = [(b"x-api-key", b"sk-owner")]
                stream = client.request(extra_headers=key, method=b"GET", path=path)
                await client.wait_until(lambda: stream in client.ended)
                return client.status[stream], bytes(client.data[stream])

        status, rest = asyncio.run(run())
    assert status == 200
    assert (have + rest).replace(KEEPALIVE, b"") == expected


def test_a_stream_nobody_resumes_is_aborted_upstream_after_the_grace(
    sim: SimServer, relay: RelayProcess
) -> None:
    closes = len(sim.closes)
    first = PartialStream(relay.port, {**RESUMABLE, **script(gaps=[[3, 30]])})
    first.read_until(100)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    wait_for(lambda: any(c.client_aborted_midstream for c in sim.closes[closes:]), timeout=10)
    assert resume(relay.url, stream_id, 0).status_code == 404


def test_delete_cancels_upstream_at_once(sim: SimServer, relay: RelayProcess) -> None:
    closes = len(sim.closes)
    first = PartialStream(relay.port, {**RESUMABLE, **script(gaps=[[3, 30]])})
    first.read_until(100)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    with httpx2.Client(timeout=10) as client:
        gone = client.delete(
            f"{relay.url}/relay/v1/streams/{stream_id}", headers={"x-api-key": "sk-owner"}
        )
    assert gone.status_code == 204
    wait_for(lambda: any(c.client_aborted_midstream for c in sim.closes[closes:]), timeout=2)
    assert resume(relay.url, stream_id, 0).status_code == 404


def test_wrong_credential_unknown_and_guessed_ids_all_get_the_same_404(
    sim: SimServer, relay: RelayProcess
) -> None:
    first = PartialStream(relay.port, {**RESUMABLE, **GAP})
    first.read_until(100)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    answers = [
        resume(relay.url, stream_id, 0, key="sk-someone-else"),
        resume(relay.url, "A" * len(stream_id), 0),
        resume(relay.url, stream_id[:-1] + ("B" if stream_id[-1] != "B" else "C"), 0),
    ]
    bodies = [json.loads(a.content) for a in answers]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert all(b["error"]["type"] == "not_found_error" for b in bodies)
    assert len({b["error"]["message"] for b in bodies}) == 1
    assert stream_id not in relay.stderr_text.decode()  # ids are never logged whole


def test_an_offset_past_what_was_sent_is_a_clear_error(sim: SimServer, relay: RelayProcess) -> None:
    first = PartialStream(relay.port, {**RESUMABLE, **GAP})
    first.read_until(100)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    answer = resume(relay.url, stream_id, 10**9)
    assert answer.status_code == 400
    assert "offset" in json.loads(answer.content)["error"]["message"]


def test_a_finished_stream_is_kept_for_the_retain_window(
    sim: SimServer, relay: RelayProcess
) -> None:
    """The stream ends while nobody is attached: a resume within --resume-retain gets
    the rest and a clean end; after it, 404."""
    fields = script(gaps=[[3, 0.5]])
    expected = direct(sim, fields)
    completed = relay.stderr_text.count(b'"outcome": "completed"')
    first = PartialStream(relay.port, {**RESUMABLE, **fields})
    first.read_until(50)
    have = bytes(first.body)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    wait_for(lambda: relay.stderr_text.count(b'"outcome": "completed"') > completed, timeout=10)
    late = resume(relay.url, stream_id, len(have))
    assert late.status_code == 200
    assert (have + late.content).replace(KEEPALIVE, b"") == expected
    wait_for(lambda: resume(relay.url, stream_id, 0).status_code == 404, timeout=10)


def test_without_opting_in_a_disconnect_still_aborts_at_once(
    sim: SimServer, relay: RelayProcess
) -> None:
    closes = len(sim.closes)
    first = PartialStream(relay.port, {**script(gaps=[[3, 30]])})
    first.read_until(100)
    assert b"relay-stream-id" not in first.headers
    first.cut()
    wait_for(lambda: any(c.client_aborted_midstream for c in sim.closes[closes:]), timeout=2)
    # The relay's own header is not forwarded upstream.
    assert all(r.header(b"relay-resumable") is None for r in sim.requests)


def test_upstream_dying_while_detached_ends_the_journal_with_the_error_frame(
    sim: SimServer, relay: RelayProcess
) -> None:
    fields = script(gaps=[[3, 0.5]], drop_after=6)
    first = PartialStream(relay.port, {**RESUMABLE, **fields})
    first.read_until(100)
    have = bytes(first.body)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    errors = relay.stderr_text.count(b"with an error frame")
    wait_for(lambda: relay.stderr_text.count(b"with an error frame") > errors, timeout=10)
    rest = resume(relay.url, stream_id, len(have)).content
    assert b"event: error" in rest and b"upstream connection lost" in rest


def test_past_its_journal_cap_a_stream_is_no_longer_resumable(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--resume-max-bytes", "200") as relay:
        first = PartialStream(relay.port, {**RESUMABLE, **GAP})
        first.read_until(400)
        stream_id = first.headers[b"relay-stream-id"].decode()
        first.cut()
        assert resume(relay.url, stream_id, 0).status_code == 404


def _metric(relay: RelayProcess, name: str) -> float:
    text = httpx2.get(relay.admin_url + "/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.split(" ")[0] == name]
    assert values, name
    return values[0]


def test_detached_streams_and_journal_bytes_are_gauged_and_the_log_line_tells_the_resume(
    sim: SimServer, relay: RelayProcess
) -> None:
    """While nobody is attached the gauges show it; the stream's log line carries the
    id's prefix (never the id), its resume count and its time without a client."""
    first = PartialStream(relay.port, {**RESUMABLE, **script(gaps=[[3, 1.5]])})
    first.read_until(100)
    have = bytes(first.body)
    stream_id = first.headers[b"relay-stream-id"].decode()
    first.cut()
    wait_for(lambda: _metric(relay, "sse_relay_streams_detached") == 1, timeout=5)
    assert _metric(relay, "sse_relay_journal_bytes") >= len(have)
    seconds_before = _metric(relay, "sse_relay_upstream_detached_seconds_total")
    answer = resume(relay.url, stream_id, len(have))
    assert answer.status_code == 200
    assert _metric(relay, "sse_relay_streams_detached") == 0
    assert _metric(relay, "sse_relay_upstream_detached_seconds_total") > seconds_before
    lines = [
        json.loads(line)
        for line in relay.stderr_text.decode().splitlines()
        if f'"stream_id": "{stream_id[:8]}"' in line
    ]
    assert [line["resumes"] for line in lines] == [1] and lines[0]["detached_s"] > 0


def test_a_route_with_resumable_makes_every_stream_resumable(
    sim: SimServer, tmp_path: Path
) -> None:
    """`resumable = true` in a [[route]]: a client that asked nothing gets an id and a
    stream that survives its connection; other paths stay plain."""
    config = tmp_path / "relay.toml"
    config.write_text('[[route]]\nprefix = "/v1/messages"\nresumable = true\n')
    expected = direct(sim, GAP)
    with RelayProcess(sim.url, "--config", str(config)) as relay:
        first = PartialStream(relay.port, {"x-api-key": "sk-owner", **GAP})
        first.read_until(300)
        have = bytes(first.body)
        first.cut()
        answer = resume(relay.url, first.headers[b"relay-stream-id"].decode(), len(have))
        assert (have + answer.content).replace(KEEPALIVE, b"") == expected
        with httpx2.Client(timeout=10) as client:
            other = client.post(relay.url + "/v1/complete", content=STREAM_BODY)
        assert "relay-stream-id" not in other.headers
