"""Real clients the tests drive the relay with: the official SDK, httpx2, raw sockets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import httpx2

if TYPE_CHECKING:
    from tests.relayproc import RelayProcess
    from tests.simserver import SimServer

KEEPALIVE = b": keepalive\n\n"
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
ERROR_FRAME = re.compile(rb"event: error\ndata: (\{[^\n]*\})\n\n")

MESSAGE_PARAMS: dict[str, Any] = {
    "model": "claude-sim-1",
    "max_tokens": 2048,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [{"role": "user", "content": "Think, then answer."}],
}
# The request body of a streaming Messages call, as the SDK would send it.
STREAM_BODY = json.dumps({**MESSAGE_PARAMS, "stream": True}).encode()
#: Unsent bytes that prove a writer is stalled: far past what a reader that keeps up
#: leaves queued on loopback, well under the kernel's 4 MiB send buffer.
STALLED_BYTES = 1 << 20


def script(**fields: Any) -> dict[str, str]:
    """Request headers telling the simulated upstream what to do for this request."""
    return {"x-sim-script": json.dumps(fields)}


def sdk_stream(base_url: str, headers: dict[str, str] | None = None) -> tuple[list[Any], Any]:
    """Streams one turn with the official SDK: (events as dicts, final message)."""
    client = anthropic.Anthropic(base_url=base_url, api_key="sk-test", max_retries=0)
    with client.messages.stream(**MESSAGE_PARAMS, extra_headers=headers or {}) as stream:
        events = [event.model_dump() for event in stream]
        final = stream.get_final_message()
    client.close()
    return events, final


def raw_stream(
    base_url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POSTs a streaming request with httpx2 and returns the undecoded response bytes."""
    body = body if body is not None else STREAM_BODY
    with (
        httpx2.Client(timeout=30) as client,
        client.stream(
            "POST",
            base_url + "/v1/messages",
            content=body,
            headers={"content-type": "application/json", **(headers or {})},
        ) as response,
    ):
        data = b"".join(response.iter_raw())
        return response.status_code, dict(response.headers), data


def raw_http(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Sends bytes on a fresh TCP connection and reads until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def without_keepalives(data: bytes, frame: bytes = KEEPALIVE) -> bytes:
    return data.replace(frame, b"")


def single_error_frame(data: bytes) -> dict[str, Any]:
    """The one error frame `data` ends with; the bytes after it must be nothing."""
    frames = ERROR_FRAME.findall(data)
    assert len(frames) == 1, data[-400:]
    assert data.endswith(b"\n\n") and ERROR_FRAME.search(data[data.rfind(b"event: error") :])
    error: dict[str, Any] = json.loads(frames[0])
    return error


def closed_port() -> int:
    """A local port nothing listens on (it was free a moment ago)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port: int = probe.getsockname()[1]
    probe.close()
    return port


def sigterm_during_streams(
    relay: RelayProcess, sim: SimServer, scripts: list[dict[str, str]]
) -> tuple[int, list[bytes]]:
    """Streams one request per script header set, sends SIGTERM once upstream has them
    all, and returns the relay's exit code and each response's raw bytes."""
    results: list[bytes] = [b""] * len(scripts)

    def run(index: int) -> None:
        results[index] = raw_stream(relay.url, headers=scripts[index])[2]

    before = len(sim.requests)
    clients = [threading.Thread(target=run, args=(i,)) for i in range(len(scripts))]
    for client in clients:
        client.start()
    sim.wait_for(lambda: len(sim.requests) - before >= len(scripts), timeout=10)
    relay.proc.send_signal(signal.SIGTERM)
    code = relay.proc.wait(15)
    for client in clients:
        client.join(10)
    return code, results


def unsent_bytes(local_port: int, remote_port: int | None = None) -> int:
    """Bytes written on established TCP connections from `local_port` (to
    `remote_port`) that the peer's kernel has not taken yet, from /proc/net/tcp: they
    pile up only behind a reader that stopped reading, whichever process writes."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, queues = fields[1], fields[2], fields[3], fields[4]
            if state != "01" or int(local.rsplit(":", 1)[1], 16) != local_port:
                continue
            if remote_port is None or int(remote.rsplit(":", 1)[1], 16) == remote_port:
                total += int(queues.split(":")[0], 16)  # tx_queue: written, not acked
    return total


def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """Polls `predicate` until it is true; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(0.005)


async def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    """`wait_for` without blocking the loop (an in-process client keeps answering)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)
