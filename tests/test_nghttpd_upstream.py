"""The relay's HTTP/2 upstream client against nghttpd, nghttp2's server.

The sim and the relay both speak HTTP/2 through the Python `h2` library, so a flaw they
share (in `h2` or in how both use it) would pass every sim test. nghttpd is another
implementation: its framing, flow control, HPACK and TLS/ALPN are nghttp2's and
OpenSSL's. It only serves files, so it plays a Messages stream recorded from the sim.

What nghttpd cannot do, and how these tests live with it:
- It sets content-type only from a file name's extension (`--mime-types-file`): the
  stream is served as `/v1/messages.sse`, which a mime file maps to text/event-stream.
  Without that the relay would see no SSE and relay it as opaque bytes.
- It answers POST with the file as it does GET: a request body is read (and
  flow-controlled) but thrown away, and the response starts only once it has ended.
- It sends a file as fast as windows allow: no silent gaps, so keepalives are not
  provoked here (the sim's tests do that).
- It has no graceful GOAWAY to send on demand (SIGTERM drops its connections without
  one): the GOAWAY tests stay with the sim.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest
import trustme

from tests.clients import (
    STREAM_BODY,
    closed_port,
    raw_stream,
    script,
    wait_for,
    wait_until,
    without_keepalives,
)
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

# /usr/sbin is not on every user's PATH, and Debian installs nghttpd there.
NGHTTPD = shutil.which("nghttpd") or shutil.which("nghttpd", path="/usr/sbin")
#: Where the recorded stream is served: the extension gives it its content-type.
STREAM_PATH = "/v1/messages.sse"
STREAMS = 6  # per test, all on one upstream connection
# nghttpd -v: "[id=3] [  0.108] recv (stream_id=13) :path: /v1/messages.sse"
_REQUEST_LINE = re.compile(rb"^\[id=(\d+)\] \[[ .\d]+\] recv \(stream_id=(\d+)\) :path: ", re.M)

Result = tuple[int, str, bytes]  # status, content-type, raw body


@dataclass
class Nghttpd:
    """A running nghttpd and its verbose log (every frame it sent and received)."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def requests(self) -> dict[int, list[int]]:
        """The stream ids that carried a request, by nghttpd's connection (session) id."""
        sessions: dict[int, list[int]] = {}
        for session, stream in _REQUEST_LINE.findall(self.log.read_bytes()):
            sessions.setdefault(int(session), []).append(int(stream))
        return sessions

    def request_count(self) -> int:
        return sum(len(streams) for streams in self.requests().values())


def _up_or_gone(proc: subprocess.Popen[bytes], port: int) -> bool:
    """nghttpd accepts on `port`, or has exited (it could not bind it)."""
    if proc.poll() is not None:
        return True
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def run_nghttpd(folder: Path, *args: str) -> Iterator[Nghttpd]:
    """nghttpd on a free 127.0.0.1 port serving `folder / "htdocs"`, with `args`
    after the port (a key and a certificate for TLS); ready once the port accepts."""
    assert NGHTTPD, "nghttpd (nghttp2-server): `make test` installs it"
    mime = folder / "mime.types"
    mime.write_text("text/event-stream\tsse\n")
    options = ["-v", "-a", "127.0.0.1", "-d", str(folder / "htdocs"), f"--mime-types-file={mime}"]
    for _ in range(3):  # another process may take the free port before nghttpd binds it
        port = closed_port()
        log = folder / f"nghttpd-{port}.log"
        with log.open("wb") as out:  # a file, not a pipe: -v is chatty
            command = [NGHTTPD, *options, str(port), *args]
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for(functools.partial(_up_or_gone, proc, port), timeout=10)
            if proc.poll() is None:
                yield Nghttpd(proc, port, log)
                return
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=10)
    raise RuntimeError(f"nghttpd did not start: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A folder whose htdocs hold one Messages stream recorded from the sim (thinking,
    text, and bulk text past HTTP/2's 64 KiB initial windows), and the stream."""
    folder = tmp_path_factory.mktemp("nghttpd")
    with SimServer() as sim:
        status, _, body = raw_stream(sim.url, headers=script(bulk_bytes=200_000))
    assert status == 200 and b"event: message_stop" in body[-200:]
    target = folder / "htdocs" / STREAM_PATH.lstrip("/")
    target.parent.mkdir(parents=True)
    target.write_bytes(body)
    return folder, body


@pytest.fixture(params=["h2c", "tls"])
def upstream(
    request: pytest.FixtureRequest, recorded: tuple[Path, bytes], ca: trustme.CA, ca_file: Path
) -> Iterator[tuple[Nghttpd, list[str]]]:
    """nghttpd over h2c (prior knowledge: the relay must be told h2) or TLS (h2 by
    ALPN, the relay left on auto), and the relay flags that reach it."""
    folder, _ = recorded
    if request.param == "h2c":
        with run_nghttpd(folder, "--no-tls") as server:
            yield server, [f"http://127.0.0.1:{server.port}", "--upstream-protocol", "h2"]
        return
    cert = ca.issue_cert("localhost")
    key_file, cert_file = folder / "key.pem", folder / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    with run_nghttpd(folder, str(key_file), str(cert_file)) as server:
        flags = ["--upstream-ca", str(ca_file), "--upstream-protocol", "auto"]
        yield server, [f"https://localhost:{server.port}", *flags]


async def _held(gate: asyncio.Event) -> AsyncIterator[bytes]:
    """A request body that stops halfway until `gate` opens: its upstream stream stays
    open (nghttpd answers only a whole request) while the others run."""
    half = len(STREAM_BODY) // 2
    yield STREAM_BODY[:half]
    await gate.wait()
    yield STREAM_BODY[half:]


async def _one(client: httpx2.AsyncClient, url: str, body: bytes | AsyncIterator[bytes]) -> Result:
    headers = {"content-type": "application/json"}
    async with client.stream("POST", url + STREAM_PATH, content=body, headers=headers) as response:
        data = b"".join([chunk async for chunk in response.aiter_raw()])
        return response.status_code, response.headers.get("content-type", ""), data


async def _streams(url: str, http2: bool, server: Nghttpd) -> list[Result]:
    """`STREAMS` requests through the relay: one alone, then one held open upstream
    while all the others run concurrently beside it."""
    async with httpx2.AsyncClient(http1=not http2, http2=http2, timeout=30) as client:
        # httpx2 allows one HTTP/2 stream until it has read the relay's SETTINGS, and
        # reads only while awaiting a response: a held body first would block the rest.
        alone = await _one(client, url, STREAM_BODY)
        gate = asyncio.Event()
        held = asyncio.create_task(_one(client, url, _held(gate)))
        await wait_until(lambda: server.request_count() == 2, timeout=10)
        others = await asyncio.gather(*(_one(client, url, STREAM_BODY) for _ in range(STREAMS - 2)))
        assert not held.done()
        gate.set()
        return [alone, await held, *others]


@pytest.mark.parametrize("client", ["http/1.1", "h2"])
def test_nghttpd_streams_are_relayed_byte_exact_on_one_connection(
    upstream: tuple[Nghttpd, list[str]], recorded: tuple[Path, bytes], client: str
) -> None:
    server, (url, *flags) = upstream
    with RelayProcess(url, *flags) as relay:
        results = asyncio.run(_streams(relay.url, client == "h2", server))
    _, stream = recorded
    for status, content_type, body in results:
        assert status == 200 and content_type == "text/event-stream"
        assert without_keepalives(body) == stream
    # One upstream connection carried them all, the held stream alongside the others.
    sessions = server.requests()
    assert len(sessions) == 1, sessions
    assert sorted(next(iter(sessions.values()))) == list(range(1, 2 * STREAMS, 2))


def test_a_large_request_body_goes_up_as_nghttpds_small_windows_allow(
    recorded: tuple[Path, bytes],
) -> None:
    """nghttpd's windows of 4 KiB (stream) and 16 KiB (connection) against a 1 MiB body:
    the relay sends only as nghttp2's WINDOW_UPDATEs allow, never past them (nghttp2
    would end the connection with FLOW_CONTROL_ERROR)."""
    folder, stream = recorded
    body = STREAM_BODY + b" " * (1 << 20)  # JSON may end in whitespace
    with (
        run_nghttpd(
            folder, "--no-tls", "--window-bits=12", "--connection-window-bits=14"
        ) as server,
        RelayProcess(f"http://127.0.0.1:{server.port}", "--upstream-protocol", "h2") as relay,
        httpx2.Client(timeout=30) as client,
    ):
        response = client.post(relay.url + STREAM_PATH, content=body)
    assert response.status_code == 200
    assert without_keepalives(response.content) == stream
    log = server.log.read_text()
    received = sum(int(n) for n in re.findall(r"recv DATA frame <length=(\d+)", log))
    assert received == len(body)
    assert "FLOW_CONTROL_ERROR" not in log and "send GOAWAY" not in log
