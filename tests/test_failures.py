"""Failure semantics: every failure reaches the client loud, typed, in the API's format."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import pytest

from relay_sim.script import SimScript
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    STALLED_BYTES,
    closed_port,
    raw_http,
    raw_stream,
    script,
    sdk_stream,
    sigterm_during_streams,
    single_error_frame,
    unsent_bytes,
    wait_for,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1
_FRAME = re.compile(rb"event: [^\n]*\ndata: [^\n]*\n\n")


@pytest.fixture(scope="module")
def relay(sim: SimServer) -> Iterator[RelayProcess]:
    with RelayProcess(sim.url, "--upstream-read-timeout", "0.6", keepalive=KA) as proc:
        yield proc


class AcceptAndClose:
    """An upstream that accepts connections, reads the request, and closes: no head."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            conn.recv(65536)
            conn.close()

    def close(self) -> None:
        self._server.close()


def test_dead_upstream_gets_api_error_and_sdk_retries_by_itself() -> None:
    with RelayProcess(f"http://127.0.0.1:{closed_port()}", keepalive=KA) as relay:
        client = anthropic.Anthropic(base_url=relay.url, api_key="sk-test", max_retries=2)
        with pytest.raises(anthropic.APIStatusError) as caught:
            client.messages.create(**MESSAGE_PARAMS, stream=True)
        relay.stop()
        answered = relay.stderr_text.count(b"answered POST /v1/messages with 502")
    assert caught.value.status_code == 502
    assert not isinstance(caught.value, anthropic.APIConnectionError)
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    assert answered == 3  # the SDK's first try and its two retries


@pytest.mark.parametrize("first", ["refused", "closed-before-head"])
def test_transparent_retry_hides_a_failure_before_any_byte(sim: SimServer, first: str) -> None:
    broken = AcceptAndClose() if first == "closed-before-head" else None
    port = broken.port if broken else closed_port()
    try:
        with RelayProcess(f"http://127.0.0.1:{port}", "--upstream", sim.url) as relay:
            _, direct_final = sdk_stream(sim.url)
            events, final = sdk_stream(relay.url)
            relay.stop()
            assert b"retrying POST /v1/messages" in relay.stderr_text
    finally:
        if broken:
            broken.close()
    assert final.model_dump() == direct_final.model_dump()
    assert events[-1]["type"] == "message_stop"
    if broken:
        assert broken.accepted == 1


@pytest.mark.parametrize("failure", ["drop_after", "truncate_after"])
def test_upstream_dying_mid_stream_ends_with_one_error_frame(
    sim: SimServer, relay: RelayProcess, failure: str
) -> None:
    dying = script(**{failure: 5})
    status, _, data = raw_stream(relay.url, headers=dying)  # a clean end: no exception
    assert status == 200
    error = single_error_frame(data)
    assert error["error"]["type"] == "api_error"
    assert re.match(
        r"upstream connection lost after \d+ bytes / 5 events", error["error"]["message"]
    )
    if failure == "truncate_after":
        # The half-sent frame was closed as a ping, never glued to the error frame.
        before = data[: data.rfind(b"event: error")]
        assert before.endswith(b"\nevent: ping\n\n")
    with pytest.raises(anthropic.APIStatusError) as caught:
        sdk_stream(relay.url, dying)
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]


def test_upstream_silence_past_read_timeout_ends_with_error_after_keepalives(
    relay: RelayProcess,
) -> None:
    _, _, data = raw_stream(relay.url, headers=script(gaps=[[3, 5.0]]))
    assert data.count(KEEPALIVE) >= 3
    error = single_error_frame(data)
    assert "upstream sent nothing for 0.6 s" in error["error"]["message"]


def test_read_timeout_before_the_head_is_a_504(sim: SimServer, relay: RelayProcess) -> None:
    before = len(sim.requests)
    status, headers, body = raw_stream(relay.url, headers=script(headers_delay=3.0))
    assert status == 504 and json.loads(body)["error"]["type"] == "timeout_error"
    assert headers["request-id"].startswith("req_relay_")
    # Not retried: upstream may still be working on it (a retry would run it twice).
    # Retries come before the answer, so the count is final once we have the 504.
    assert len(sim.requests) - before == 1


def test_upstream_error_frames_pass_verbatim_without_a_second_one(
    sim: SimServer, relay: RelayProcess
) -> None:
    overloaded = script(error_after=4)
    _, _, direct = raw_stream(sim.url, headers=overloaded)
    _, _, relayed = raw_stream(relay.url, headers=overloaded)
    assert relayed.replace(KEEPALIVE, b"") == direct
    assert relayed.count(b"event: error") == 1 and b"overloaded_error" in relayed


class CutsOffAfterLastEvent:
    """An upstream whose SSE body ends without the last chunk, right after `frames`."""

    def __init__(self, frames: list[bytes]) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._frames = frames
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                        b"transfer-encoding: chunked\r\n\r\n"
                    )
                    for frame in self._frames:
                        conn.sendall(b"%x\r\n%s\r\n" % (len(frame), frame))
                    # FIN, then read until the relay hangs up: closing with unread
                    # request bytes would be a reset, which may destroy the last frame.
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass

    def close(self) -> None:
        self._server.close()


@pytest.mark.parametrize("last", ["message_stop", "error"])
def test_a_stream_upstream_finished_gets_nothing_added_when_the_connection_drops(
    sim: SimServer, last: str
) -> None:
    """Cut off after its last event: an added error would fail a finished, paid turn."""
    frames = _FRAME.findall(raw_stream(sim.url, headers=script(error_after=4))[2])
    if last == "message_stop":
        frames = _FRAME.findall(raw_stream(sim.url)[2])
    assert frames[-1].startswith(b"event: " + last.encode())
    upstream = CutsOffAfterLastEvent(frames)
    try:
        with RelayProcess(upstream.url, keepalive=KA) as relay:
            _, _, relayed = raw_stream(relay.url)
            if last == "message_stop":
                _, final = sdk_stream(relay.url)
                assert final.stop_reason == "end_turn"
            else:
                with pytest.raises(anthropic.APIStatusError) as caught:
                    sdk_stream(relay.url)
                assert caught.value.type == "overloaded_error"
    finally:
        upstream.close()
    assert relayed.replace(KEEPALIVE, b"") == b"".join(frames)


def test_clean_end_without_message_stop_gets_the_truncation_error(relay: RelayProcess) -> None:
    cut = script(end_without_stop=True)
    _, _, data = raw_stream(relay.url, headers=cut)
    assert "without message_stop" in single_error_frame(data)["error"]["message"]
    with pytest.raises(anthropic.APIStatusError):
        sdk_stream(relay.url, cut)


def test_retry_on_status_is_opt_in_and_moves_to_the_next_upstream(sim: SimServer) -> None:
    with SimServer(script=SimScript(status=529)) as overloaded:
        with RelayProcess(overloaded.url, "--upstream", sim.url) as plain:
            status, _, body = raw_stream(plain.url)
        assert status == 529 and json.loads(body)["error"]["type"] == "overloaded_error"
        with RelayProcess(
            overloaded.url, "--upstream", sim.url, "--retry-on-status", "529"
        ) as retrying:
            events, _ = sdk_stream(retrying.url)
        assert events[-1]["type"] == "message_stop"


def test_deny_param_reject_answers_400_and_forwards_nothing(sim: SimServer) -> None:
    body = json.dumps({**MESSAGE_PARAMS, "stream": True, "fallbacks": [{"model": "m"}]})
    with RelayProcess(sim.url, "--deny-param", "fallbacks", "--on-deny", "reject") as relay:
        before = len(sim.requests)
        status, headers, data = raw_stream(relay.url, body=body.encode())
        # The access-log line of the refusal is written as its stream ends: by then
        # anything sent upstream for it would have been.
        request_id = headers["request-id"].encode()
        wait_for(lambda: request_id in relay.stderr_text)
        assert len(sim.requests) == before
    error = json.loads(data)
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    assert "fallbacks" in error["error"]["message"] and headers["x-should-retry"] == "false"


def test_deny_param_strip_keeps_what_a_remaining_param_needs(sim: SimServer) -> None:
    managed = {
        **MESSAGE_PARAMS,
        "stream": True,
        "fallbacks": [{"model": "m"}],
        "context_management": {"edits": [{"type": "clear_thinking_20251015"}]},
    }
    unmanaged = {k: v for k, v in managed.items() if k != "context_management"}
    args = ["--deny-param", "fallbacks", "--deny-param", "thinking", "--on-deny", "strip"]
    with RelayProcess(sim.url, *args) as relay:
        _, headers, _ = raw_stream(relay.url, body=json.dumps(managed).encode())
        forwarded = json.loads(sim.requests[-1].body)
        assert headers["x-sse-relay-dropped-params"] == "fallbacks"
        assert "fallbacks" not in forwarded and forwarded["thinking"] == managed["thinking"]
        assert forwarded["context_management"] == managed["context_management"]

        _, headers, _ = raw_stream(relay.url, body=json.dumps(unmanaged).encode())
        forwarded = json.loads(sim.requests[-1].body)
        assert headers["x-sse-relay-dropped-params"] == "fallbacks,thinking"
        assert "thinking" not in forwarded and "fallbacks" not in forwarded


def _json_status(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def test_bad_input_gets_its_answer_while_a_healthy_stream_goes_on(sim: SimServer) -> None:
    args = ["--header-timeout", "1", "--max-body-bytes", "4096"]
    with RelayProcess(sim.url, *args, keepalive=KA) as relay:
        healthy: dict[str, Any] = {}

        def stream() -> None:
            healthy["result"] = sdk_stream(relay.url, script(gaps=[[3, 2.5]]))

        worker = threading.Thread(target=stream)
        worker.start()

        # Slowloris: a header byte every 0.3 s never completes within the 1 s limit.
        with socket.create_connection(("127.0.0.1", relay.port)) as slow:
            slow.settimeout(5)
            answer = b""
            for byte in b"POST /v1/messages HTTP/1.1\r\nhost: x\r\n":
                try:
                    slow.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.3)
                if answer := slow.recv(65536, socket.MSG_DONTWAIT) if _readable(slow) else b"":
                    break
            answer += _read_all(slow)
        status, error = _json_status(answer)
        assert status == 408 and error["error"]["type"] == "timeout_error"

        huge = b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (1 << 20) + b"\r\n\r\n"
        status, error = _json_status(raw_http(relay.port, huge))
        assert status == 431 and error["type"] == "error"

        big_body = json.dumps({**MESSAGE_PARAMS, "pad": "x" * 8192}).encode()
        post = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(
            big_body
        )
        status, error = _json_status(raw_http(relay.port, post + big_body))
        assert status == 413 and error["error"]["type"] == "request_too_large"

        status, error = _json_status(raw_http(relay.port, b"\x16\x03\x01garbage\r\n\r\n"))
        assert status == 400 and error["error"]["type"] == "invalid_request_error"

        worker.join(30)
        events, final = healthy["result"]
        assert events[-1]["type"] == "message_stop" and final.stop_reason == "end_turn"


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except OSError:
        pass
    return b"".join(chunks)


def test_stream_limit_answers_503_with_retry_after(sim: SimServer) -> None:
    with RelayProcess(sim.url, "--max-streams", "1", keepalive=KA) as relay:
        holder = threading.Thread(
            target=lambda: raw_stream(relay.url, headers=script(gaps=[[2, 1.5]]))
        )
        before = len(sim.requests)
        holder.start()
        sim.wait_for(lambda: len(sim.requests) > before)
        status, headers, body = raw_stream(relay.url)
        holder.join(10)
    assert status == 503 and json.loads(body)["error"]["type"] == "overloaded_error"
    assert headers["retry-after"] == "1"


def test_sigterm_drains_short_streams_and_ends_long_ones(sim: SimServer) -> None:
    short, long = script(gaps=[[2, 0.5]]), script(gaps=[[2, 8.0]])
    with RelayProcess(sim.url, "--drain-timeout", "2", keepalive=KA) as relay:
        code, results = sigterm_during_streams(relay, sim, [short] * 10 + [long] * 10)
    assert code == 0
    for index in range(10):
        assert b"event: message_stop" in results[index]
        assert b"event: error" not in results[index]
    for index in range(10, 20):
        error = single_error_frame(results[index])
        assert error["error"]["type"] == "overloaded_error"
        assert "restarting" in error["error"]["message"]


def test_httpx2_sees_a_clean_end_not_a_transport_error(relay: RelayProcess) -> None:
    with (
        httpx2.Client() as client,
        client.stream(
            "POST",
            relay.url + "/v1/messages",
            json={**MESSAGE_PARAMS, "stream": True},
            headers=script(drop_after=3),
        ) as response,
    ):
        data = b"".join(response.iter_raw())
    assert data.endswith(b"\n\n") and b"event: error" in data


class AnswersBeforeTheBody:
    """An upstream that reads only the request head, waits until the relay is stalled
    sending it the body, then answers 413 and stops."""

    def __init__(self) -> None:
        self._closed = threading.Event()
        self._server = socket.socket()
        # A small receive window (accepted sockets inherit it), so the relay's send
        # buffer fills and it pauses reading the client, as a busy upstream makes it do.
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(1)
            if head.startswith(b"POST "):
                # Meanwhile the relay's buffer towards us fills, and it pauses reading
                # the client: once its socket holds this much, its own buffer is next.
                relay_port, port = conn.getpeername()[1], conn.getsockname()[1]
                wait_for(lambda: unsent_bytes(relay_port, port) >= STALLED_BYTES, timeout=15)
            conn.sendall(
                b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\n"
                b"connection: close\r\n\r\nno"
            )
            conn.shutdown(socket.SHUT_WR)
            self._closed.wait(30)  # never reading the rest of the body

    def close(self) -> None:
        self._closed.set()
        self._server.close()


def test_an_answer_before_the_body_leaves_the_client_connection_usable() -> None:
    upstream = AnswersBeforeTheBody()
    size = 30 * 1024 * 1024
    try:
        with (
            RelayProcess(upstream.url, keepalive=KA) as relay,
            socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock,
        ):
            sock.sendall(b"POST /v1/x HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % size)
            chunk = b"a" * 65536
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)  # times out if the relay stops reading
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answers = b""
            while data := sock.recv(65536):
                answers += data
    finally:
        upstream.close()
    assert answers.startswith(b"HTTP/1.1 413 ")
    assert answers.count(b"HTTP/1.1 ") == 2
