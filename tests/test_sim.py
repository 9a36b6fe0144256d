"""The simulated Messages API: real wire format, scripted timing and failures, recording."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import h11
import httpx2
import pytest

from relay_sim.black_hole import BlackHole
from relay_sim.script import SimScript
from relay_sim.state import CloseRecord
from tests.clients import STALLED_BYTES, raw_stream, unsent_bytes, wait_for
from tests.clients import script as sim_script
from tests.h2client import RawH2Client
from tests.simserver import SimServer

PARAMS: dict[str, Any] = {
    "model": "claude-sim-1",
    "max_tokens": 2048,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [{"role": "user", "content": "Think, then answer."}],
}
STREAM_BODY = json.dumps({**PARAMS, "stream": True}).encode()
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
ORDER = (
    ["message_start", "content_block_start"]
    + ["content_block_delta"] * 4  # 3 thinking deltas + the signature
    + ["content_block_stop", "content_block_start"]
    + ["content_block_delta"] * 3
    + ["content_block_stop", "message_delta", "message_stop"]
)
FRAME = re.compile(rb"event: (\w+)\ndata: ([^\n]*)\n\n")


def _sdk(sim: SimServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=sim.url, api_key="test", max_retries=0)


def _script(**fields: Any) -> dict[str, str]:
    return {"x-sim-script": json.dumps(fields)}


def _sdk_stream(sim: SimServer, **fields: Any) -> tuple[list[str], Any]:
    with (
        _sdk(sim) as client,
        client.messages.stream(**PARAMS, extra_headers=_script(**fields)) as s,
    ):
        return [event.type for event in s], s.get_final_message()


def _close_of(sim: SimServer, connection: int) -> CloseRecord:
    """The close record of the connection-th accepted connection, once it is there."""
    sim.wait_for(lambda: any(close.connection == connection for close in sim.closes))
    return next(close for close in sim.closes if close.connection == connection)


@dataclass
class Raw:
    """A response read off a socket with h11: body chunks exactly as sent, with arrival times."""

    status: int
    headers: dict[bytes, bytes]
    head_at: float
    chunks: list[tuple[float, bytes]]
    complete: bool  # the last chunk arrived

    @property
    def body(self) -> bytes:
        return b"".join(chunk for _, chunk in self.chunks)


def _raw(
    sim: SimServer,
    body: bytes = STREAM_BODY,
    headers: dict[str, str] | None = None,
    target: str = "/v1/messages",
) -> Raw:
    client = h11.Connection(h11.CLIENT)
    all_headers = {"host": "sim", "content-length": str(len(body)), **(headers or {})}
    request = h11.Request(method="POST", target=target, headers=list(all_headers.items()))
    sent = time.monotonic()
    raw = Raw(0, {}, 0.0, [], complete=False)
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
        sock.sendall(client.send(request) + client.send(h11.Data(data=body)))
        sock.sendall(client.send(h11.EndOfMessage()))
        pending, closed = b"", False
        while not (raw.complete or closed):
            try:
                data = sock.recv(1 << 20)
                client.receive_data(data)
                closed = not data
                while (event := client.next_event()) is not h11.NEED_DATA:
                    if isinstance(event, h11.Response):
                        raw.status, raw.headers = event.status_code, dict(event.headers)
                        raw.head_at = time.monotonic() - sent
                    elif isinstance(event, h11.Data):
                        pending += event.data
                        if event.chunk_end:
                            raw.chunks.append((time.monotonic(), pending))
                            pending = b""
                    else:  # EndOfMessage, or ConnectionClosed before any response
                        raw.complete = isinstance(event, h11.EndOfMessage)
                        break
            except (h11.RemoteProtocolError, ConnectionResetError):
                break
    if pending:
        raw.chunks.append((time.monotonic(), pending))
    return raw


def _frames(data: bytes) -> list[tuple[str, bytes]]:
    frames = [(m[1].decode(), m[2]) for m in FRAME.finditer(data)]
    assert b"".join(m[0] for m in FRAME.finditer(data)) == data
    return frames


def test_sdk_gets_the_thinking_text_and_exact_signature(sim: SimServer) -> None:
    types, final = _sdk_stream(sim)
    raw = _frames(_raw(sim).body)
    signature = json.loads(raw[5][1])["delta"]["signature"]
    assert final.content[0].type == "thinking"
    assert final.content[0].thinking == "Thinking step 1. Thinking step 2. Thinking step 3. "
    assert final.content[0].signature == signature and len(signature) > 300
    assert final.content[1].text == "Answer part 1. Answer part 2. Answer part 3. "
    assert final.model == "claude-sim-1" and final.stop_reason == "end_turn"
    assert final.id.startswith("msg_sim_") and final.usage.output_tokens == 6
    assert "thinking" in types and types[-1] == "message_stop"


def test_sdk_raw_events_come_in_the_api_order(sim: SimServer) -> None:
    with _sdk(sim) as client:
        stream = client.messages.create(**PARAMS, stream=True)
        assert [event.type for event in stream] == ORDER


def test_each_frame_is_one_chunk_in_the_wire_format(sim: SimServer) -> None:
    raw = _raw(sim)
    assert raw.status == 200 and raw.complete
    assert raw.headers[b"content-type"] == b"text/event-stream; charset=utf-8"
    assert raw.headers[b"cache-control"] == b"no-cache"
    assert re.fullmatch(rb"req_sim_\d+", raw.headers[b"request-id"])
    assert [_frames(chunk) for _, chunk in raw.chunks] == [[f] for f in _frames(raw.body)]
    frames = _frames(raw.body)
    assert [name for name, _ in frames] == ORDER
    for name, data in frames[:-1]:
        assert data == json.dumps(json.loads(data), separators=(",", ":")).encode()
        assert json.loads(data)["type"] == name
    assert re.fullmatch(rb'\{"type":"message_stop" +\}', frames[-1][1])
    assert json.loads(frames[0][1])["message"]["model"] == "claude-sim-1"
    assert json.loads(frames[1][1])["content_block"] == {
        "type": "thinking",
        "thinking": "",
        "signature": "",
    }


def test_non_streaming_reply_is_the_same_message(sim: SimServer) -> None:
    with _sdk(sim) as client:
        message = client.messages.create(**PARAMS)
    _, final = _sdk_stream(sim)
    streamed = [block.model_dump(exclude={"parsed_output"}) for block in final.content]
    assert message.model_dump()["content"] == streamed and message.usage == final.usage
    response = httpx2.post(sim.url + "/v1/messages", content=json.dumps(PARAMS))
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.json()["type"] == "message"


def test_gap_is_completely_silent(sim: SimServer) -> None:
    # A gap longer than the 1 s any frame may take on a loaded machine: the silence is
    # the gap's, at its place, and nowhere else.
    raw = _raw(sim, headers=_script(gaps=[[2, 1.5]]))
    times = [at for at, _ in raw.chunks]
    assert len(raw.chunks) == len(ORDER)  # not one extra byte during the gap
    assert times[3] - times[2] >= 1.45
    assert times[2] - times[0] < 1.0 and times[-1] - times[3] < 1.0


def test_pings_fill_a_gap_when_asked(sim: SimServer) -> None:
    plain = _raw(sim, headers=_script(gaps=[[2, 0.35]]))
    pinged = _raw(sim, headers=_script(gaps=[[2, 0.35]], ping_every=0.1))
    pings = [chunk for _, chunk in pinged.chunks[3 : -(len(ORDER) - 3)]]
    assert pings and set(pings) == {PING} and 2 <= len(pings) <= 3
    assert pinged.body.replace(PING, b"") == plain.body


def test_error_after_raises_in_the_sdk(sim: SimServer) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        _sdk_stream(sim, error_after=4)
    assert caught.value.type == "overloaded_error"
    raw = _raw(sim, headers=_script(error_after=4))
    assert raw.complete and [name for name, _ in _frames(raw.body)] == [*ORDER[:4], "error"]
    assert raw.chunks[-1][1] == (
        b'event: error\ndata: {"type": "error", "error": '
        b'{"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    )


def test_drop_after_is_a_transport_error(sim: SimServer) -> None:
    with pytest.raises((httpx2.TransportError, anthropic.APIConnectionError)):
        _sdk_stream(sim, drop_after=5)
    raw = _raw(sim, headers=_script(drop_after=5))
    assert not raw.complete and [name for name, _ in _frames(raw.body)] == ORDER[:5]
    assert not _close_of(sim, sim.connections).client_aborted_midstream


def test_truncate_after_cuts_a_frame_in_half(sim: SimServer) -> None:
    whole = _raw(sim).chunks[3][1]
    raw = _raw(sim, headers=_script(truncate_after=3))
    assert not raw.complete and len(raw.chunks) == 4
    assert raw.chunks[3][1] == whole[: len(whole) // 2]
    # On the wire the chunk promised the whole frame: a truncated chunk, not a short one.
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: sim\r\ncontent-length: %d\r\n"
            b"x-sim-script: %s\r\n\r\n%s"
            % (len(STREAM_BODY), json.dumps({"truncate_after": 3}).encode(), STREAM_BODY)
        )
        wire = b""
        while data := sock.recv(1 << 16):
            wire += data
    assert wire.endswith(b"%x\r\n" % len(whole) + whole[: len(whole) // 2])


def test_stall_mid_frame_splits_one_frame_around_the_silence(sim: SimServer) -> None:
    plain = _raw(sim)
    raw = _raw(sim, headers=_script(stall_mid_frame=[2, 0.3]))
    (first_at, first), (second_at, second) = raw.chunks[3:5]
    whole = plain.chunks[3][1]
    assert (first, second) == (whole[: len(whole) // 2], whole[len(whole) // 2 :])
    assert second_at - first_at >= 0.25
    assert raw.body == plain.body


def test_end_without_stop_ends_cleanly_short_of_message_stop(sim: SimServer) -> None:
    types, final = _sdk_stream(sim, end_without_stop=True)
    assert "message_stop" not in types and final.stop_reason == "end_turn"
    raw = _raw(sim, headers=_script(end_without_stop=True))
    assert raw.complete and [name for name, _ in _frames(raw.body)] == ORDER[:-1]


@pytest.mark.parametrize("ending", ["\r\n", "\r"])
def test_line_endings_parse_identically_in_the_sdk(sim: SimServer, ending: str) -> None:
    assert _sdk_stream(sim, line_ending=ending)[1] == _sdk_stream(sim)[1]
    raw = _raw(sim, headers=_script(line_ending=ending, gaps=[[2, 0.05]], ping_every=0.02))
    plain = _raw(sim, headers=_script(gaps=[[2, 0.05]], ping_every=0.02))
    assert raw.body == plain.body.replace(b"\n", ending.encode())


def test_bulk_bytes_arrive_in_full(sim: SimServer) -> None:
    total = 5 * 1024 * 1024
    with httpx2.stream(
        "POST", sim.url + "/v1/messages", content=STREAM_BODY, headers=_script(bulk_bytes=total)
    ) as response:
        body = b"".join(response.iter_raw())
    frames = _frames(body)
    texts = [
        json.loads(d)["delta"].get("text", "") for n, d in frames if n == "content_block_delta"
    ]
    assert total <= len("".join(texts)) < total + 20_000
    assert frames[-1][0] == "message_stop"


def test_request_is_recorded_byte_exact(sim: SimServer) -> None:
    body = b'{"model":"m",  "stream":true, "x":"caf\xc3\xa9"}'
    target = "/prefix/v1/messages?beta=true"
    before = len(sim.requests)
    raw = _raw(sim, body, {"X-Custom": "A b", "anthropic-beta": "b1,b2"}, target)
    assert raw.status == 200 and raw.complete
    recorded = sim.requests[before]
    assert (recorded.method, recorded.target, recorded.body) == ("POST", target, body)
    assert recorded.headers == [
        (b"host", b"sim"),
        (b"content-length", str(len(body)).encode()),
        (b"x-custom", b"A b"),
        (b"anthropic-beta", b"b1,b2"),
    ]


@pytest.mark.parametrize(
    ("status", "kind", "error"),
    [
        (529, "overloaded_error", anthropic.OverloadedError),
        (500, "api_error", anthropic.InternalServerError),
        (429, "rate_limit_error", anthropic.RateLimitError),
    ],
)
def test_status_replies_with_the_api_error_shape(
    sim: SimServer, status: int, kind: str, error: type[anthropic.APIStatusError]
) -> None:
    with pytest.raises(error) as caught:
        _sdk_stream(sim, status=status)
    assert caught.value.status_code == status and caught.value.type == kind
    assert (caught.value.request_id or "").startswith("req_sim_")


def test_other_paths_and_bad_scripts_get_api_errors(sim: SimServer) -> None:
    missing = httpx2.get(sim.url + "/v1/models")
    assert missing.status_code == 404 and missing.headers["request-id"].startswith("req_sim_")
    assert missing.json() == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "Not found"},
    }
    for script in ('{"gapz": []}', '{"line_ending": "\\n\\n"}', "[1]", "{"):
        bad = httpx2.post(
            sim.url + "/v1/messages", content=STREAM_BODY, headers={"x-sim-script": script}
        )
        assert bad.status_code == 400, script
        assert bad.json()["error"]["type"] == "invalid_request_error"


def test_headers_delay_holds_back_the_response_head(sim: SimServer) -> None:
    raw = _raw(sim, headers=_script(headers_delay=0.3))
    assert raw.head_at >= 0.28 and raw.complete


def test_gzip_body_is_one_stream_flushed_per_frame(sim: SimServer) -> None:
    plain = _raw(sim)
    raw = _raw(sim, headers=_script(content_encoding="gzip"))
    assert raw.headers[b"content-encoding"] == b"gzip"
    inflate = zlib.decompressobj(wbits=31)
    frames = [inflate.decompress(chunk) for _, chunk in raw.chunks]
    assert frames[: len(plain.chunks)] == [chunk for _, chunk in plain.chunks]
    assert b"".join(frames[len(plain.chunks) :]) == b"" and inflate.eof


def test_keep_alive_reuses_one_connection_and_records_its_close(sim: SimServer) -> None:
    connections = sim.connections
    with httpx2.Client() as client:
        for _ in range(3):
            client.post(sim.url + "/v1/messages", content=STREAM_BODY).raise_for_status()
    assert sim.connections == connections + 1
    assert not _close_of(sim, sim.connections).client_aborted_midstream


def test_client_leaving_midstream_is_recorded_at_once(sim: SimServer) -> None:
    head = f"POST /v1/messages HTTP/1.1\r\nhost: sim\r\ncontent-length: {len(STREAM_BODY)}\r\n"
    gap = json.dumps({"gaps": [[2, 30]]})
    with socket.create_connection(("127.0.0.1", sim.port)) as sock:
        sock.sendall(f"{head}x-sim-script: {gap}\r\n\r\n".encode() + STREAM_BODY)
        seen = b""
        while seen.count(b"\n\n") < 3:
            seen += sock.recv(65536)
        connection = sim.connections
    left_at = time.monotonic()
    closed = _close_of(sim, connection)
    # At once: far sooner than the 30 s gap would have ended the response.
    assert closed.client_aborted_midstream and closed.time - left_at < 1.0


def test_h2c_plays_the_same_scripts_and_records_a_reset_stream() -> None:
    # GOAWAY is tested through the relay: `h2` clients stop reading at a GOAWAY.
    with SimServer(h2_max_streams=7) as sim:
        client = RawH2Client(sim.port)
        try:
            plain = client.stream({"gaps": [[2, 0.05]]})
            cut = client.stream({"gaps": [[2, 30]]})
            dropped = client.stream({"drop_after": 3})
            client.pump_until(
                lambda: {plain, dropped} <= client.ended and client.data[cut].count(b"\n\n") > 2
            )
            left_at = time.monotonic()
            client.reset(cut)
            sim.wait_for(lambda: sim.closes)
        finally:
            client.close()
        direct = _raw(sim, headers=_script(gaps=[[2, 0.05]])).body
        reset = sim.closes[0]
    assert client.conn.remote_settings.max_concurrent_streams == 7
    assert bytes(client.data[plain]) == direct
    assert client.reset_codes[dropped] == 2 and client.data[dropped].count(b"\n\n") == 3
    assert reset.reset_code == 0 and reset.client_aborted_midstream  # what the client sent
    assert reset.time - left_at < 1.0  # not at the end of the 30 s gap
    first = sim.requests[0]
    assert first.http_version == "2" and first.body == STREAM_BODY
    assert first.headers[0] == (b"host", b"relay")  # from :authority


def test_pipelined_requests_are_answered_in_order(sim: SimServer) -> None:
    def request(text_deltas: int) -> bytes:
        script = json.dumps({"text_deltas": text_deltas, "thinking_deltas": 0})
        return (
            f"POST /v1/messages HTTP/1.1\r\nhost: sim\r\nx-sim-script: {script}\r\n"
            f"content-length: {len(STREAM_BODY)}\r\n\r\n"
        ).encode() + STREAM_BODY

    with socket.create_connection(("127.0.0.1", sim.port), timeout=5) as sock:
        sock.sendall(request(1) + request(2) + b"GET /x HTTP/1.1\r\nhost: sim\r\n\r\n")
        received = b""
        while b"not_found_error" not in received:
            received += sock.recv(65536)
    responses = received.split(b"HTTP/1.1 ")[1:]
    assert [response.count(b"text_delta") for response in responses] == [1, 2, 0]
    assert responses[0].endswith(b"0\r\n\r\n") and responses[2].startswith(b"404 ")


def test_default_script_applies_and_headers_override_it() -> None:
    with SimServer(script=SimScript(thinking_deltas=0, text_deltas=1)) as sim:
        names = [name for name, _ in _frames(_raw(sim).body)]
        assert names.count("content_block_start") == 1 and names.count("content_block_delta") == 1
        sim.script = SimScript(text_deltas=2)
        override = _frames(_raw(sim, headers=_script(thinking_deltas=1)).body)
        assert [name for name, _ in override].count("content_block_delta") == 1 + 1 + 2


def test_script_validation() -> None:
    assert SimScript(gaps=[[2, 1]]).gaps == ((2, 1.0),)  # type: ignore[arg-type]
    assert SimScript().override('{"stall_mid_frame": [1, 0.5]}').stall_mid_frame == (1, 0.5)
    for bad in ({"status": 99}, {"gaps": [[1]]}, {"drop_after": -1}, {"ping_every": 0}):
        with pytest.raises(ValueError):
            SimScript().override(json.dumps(bad))
    with pytest.raises(ValueError):
        SimScript(content_encoding="br")


@contextlib.contextmanager
def _sim_process(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`python -m relay_sim.sim` on a free port: (process, port); SIGTERM must exit it with 0."""
    command = [sys.executable, "-m", "relay_sim.sim", "--listen", "127.0.0.1:0", *args]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            match = re.fullmatch(r"sse-relay sim listening on http://127\.0\.0\.1:(\d+)\n", line)
            assert match, line
            yield proc, int(match[1])
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_cli_prints_the_ready_line_and_exits_0_on_sigterm() -> None:
    with _sim_process("--text-deltas", "5") as (_, port):
        url = f"http://127.0.0.1:{port}/v1/messages"
        assert httpx2.post(url, content=STREAM_BODY).text.count("text_delta") == 5


def test_bulk_waits_for_a_slow_reader_instead_of_buffering() -> None:
    total = 50 * 1024 * 1024
    with _sim_process() as (proc, port):
        status = f"/proc/{proc.pid}/status"

        def memory_mib(field: str) -> float:
            with open(status) as lines:
                kib = next(line for line in lines if line.startswith(f"{field}:")).split()[1]
            return int(kib) / 1024

        before = memory_mib("VmRSS")
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.connect(("127.0.0.1", port))
            script = json.dumps({"bulk_bytes": total})
            sock.sendall(
                f"POST /v1/messages HTTP/1.1\r\nhost: sim\r\nx-sim-script: {script}\r\n"
                f"content-length: {len(STREAM_BODY)}\r\n\r\n".encode()
                + STREAM_BODY
            )
            # Not reading: only flow control keeps the sim from buffering 50 MB. The
            # stall is real once the sim's send buffer towards us is full of bytes.
            wait_for(lambda: unsent_bytes(port, sock.getsockname()[1]) >= STALLED_BYTES)
            received, tail = 0, b""
            while not tail.endswith(b"\r\n0\r\n\r\n"):
                chunk = sock.recv(1 << 20)
                assert chunk
                received, tail = received + len(chunk), (tail + chunk)[-16:]
        # The peak, stall included, not a sample that could miss it.
        peak = memory_mib("VmHWM")
    assert peak - before < 16, (before, peak)
    assert received > total


def test_retry_after_headers_ride_on_an_error_answer_only(sim: SimServer) -> None:
    """`retry_after` / `retry_after_ms` put the API's own wait headers on a status
    answer (seconds as given, milliseconds), which the SDK reads; a 200 gets none."""
    before = time.monotonic()
    raw = _raw(sim, headers=_script(status=429, retry_after=2, retry_after_ms=1500))
    assert raw.status == 429 and raw.complete
    assert raw.headers[b"retry-after"] == b"2" and raw.headers[b"retry-after-ms"] == b"1500"
    assert json.loads(raw.body)["error"]["type"] == "rate_limit_error"
    assert before <= sim.requests[-1].received_at <= time.monotonic()
    half = _raw(sim, headers=_script(status=529, retry_after=0.5))
    assert half.headers[b"retry-after"] == b"0.5" and b"retry-after-ms" not in half.headers
    with pytest.raises(anthropic.RateLimitError) as caught:
        _sdk_stream(sim, status=429, retry_after_ms=250)
    assert caught.value.response.headers["retry-after-ms"] == "250"
    fine = _raw(sim, headers=_script(retry_after=2, retry_after_ms=1500))
    assert fine.status == 200 and b"retry-after" not in fine.headers
    assert b"retry-after-ms" not in fine.headers


def test_bom_leads_the_first_frames_chunk(sim: SimServer) -> None:
    """`bom` puts a UTF-8 BOM before the first frame, in the same chunk, and changes
    nothing else."""
    plain = _raw(sim)
    raw = _raw(sim, headers=_script(bom=True))
    assert raw.chunks[0][1] == b"\xef\xbb\xbf" + plain.chunks[0][1]
    assert raw.body == b"\xef\xbb\xbf" + plain.body and raw.complete


def test_body_delay_holds_the_first_byte_back_not_the_head(sim: SimServer) -> None:
    """`body_delay` is silence between the response head and the body's first byte."""
    with httpx2.stream(
        "POST", sim.url + "/v1/messages", content=STREAM_BODY, headers=_script(body_delay=0.8)
    ) as response:
        head_at = time.monotonic()
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic()
        rest = b"".join(chunks)
    assert first.startswith(b"event: message_start\n")
    assert first_at - head_at >= 0.4  # the head did not wait with the body
    assert [name for name, _ in _frames(first + rest)] == ORDER


def test_cut_json_after_ends_a_fixed_length_body_short(sim: SimServer) -> None:
    """`cut_json_after` sends that many bytes of a non-streaming reply whose
    Content-Length promises more, then drops the connection: a client sees a body
    cut short, not a complete one."""
    body = json.dumps(PARAMS).encode()
    whole = httpx2.post(sim.url + "/v1/messages", content=body).content
    script = json.dumps({"cut_json_after": 40}).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/messages HTTP/1.1\r\nhost: sim\r\nx-sim-script: %s\r\n"
            b"content-length: %d\r\n\r\n%s" % (script, len(body), body)
        )
        wire = b""
        with contextlib.suppress(ConnectionResetError):
            while data := sock.recv(1 << 16):
                wire += data
    head, _, received = wire.partition(b"\r\n\r\n")
    assert b"\r\ncontent-length: %d\r\n" % len(whole) in head
    assert received == whole[:40]
    with pytest.raises(httpx2.RemoteProtocolError):
        httpx2.post(sim.url + "/v1/messages", content=body, headers=_script(cut_json_after=40))


def test_new_script_fields_are_validated() -> None:
    for bad in (
        {"retry_after": -1},
        {"retry_after_ms": "soon"},
        {"bom": 1},
        {"body_delay": -0.5},
        {"cut_json_after": 1.5},
    ):
        with pytest.raises(ValueError):
            SimScript().override(json.dumps(bad))


def test_black_hole_connects_neither_succeed_nor_fail() -> None:
    """A connect to a black hole hangs until the caller's own timeout (no refusal, no
    answer), every time; once closed, the port refuses."""
    with BlackHole() as hole:
        for _ in range(2):
            with socket.socket() as sock:
                sock.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    sock.connect((hole.host, hole.port))
    with pytest.raises(ConnectionRefusedError), socket.socket() as sock:
        sock.connect((hole.host, hole.port))


def test_cli_black_hole_prints_its_port_then_hangs_every_connect() -> None:
    """`sse-relay sim --black-hole` says where it listens, then lets no connect finish,
    until SIGTERM (exit 0)."""
    command = [sys.executable, "-m", "relay_sim.sim", "--listen", "127.0.0.1:0", "--black-hole"]
    with subprocess.Popen(command, stdout=subprocess.PIPE) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()
            ready = r"sse-relay sim listening on http://127\.0\.0\.1:(\d+) \(black hole\)\n"
            match = re.fullmatch(ready, line)
            assert match, line
            with socket.socket() as sock, pytest.raises(TimeoutError):
                sock.settimeout(0.3)
                sock.connect(("127.0.0.1", int(match[1])))
        finally:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_comment_every_writes_comment_frames_inside_a_gap(sim: SimServer) -> None:
    """`comment_every` fills a gap with `: keepalive` comments (as `ping_every` does with
    pings, and both at once), so that a probe can check comments cross a path."""
    body = raw_stream(sim.url, headers=sim_script(gaps=[[2, 1.0]], comment_every=0.3))[2]
    assert body.count(b": keepalive\n\n") == 3
    both = raw_stream(
        sim.url, headers=sim_script(gaps=[[2, 1.0]], comment_every=0.3, ping_every=0.45)
    )[2]
    assert both.count(b": keepalive\n\n") == 3 and both.count(b"event: ping\n") == 2
    with pytest.raises(ValueError, match="comment_every must be positive"):
        SimScript(comment_every=0)
