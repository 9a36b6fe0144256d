"""The benchmark's upstream: a fast emitter of paced, stamped Messages-API SSE frames.

`python -m bench.emitter` answers every POST with an SSE stream whose pace the request's
query string sets (see `bench.pacing.StreamPlan`). Each event is its own `write` (its
own chunk), as the real API sends them, and carries its send time. Cleartext HTTP/1.1
with keep-alive, parsed by hand: the load is in the frames, and the request side stays
off the profile. With `--tls-cert` it also serves TLS, HTTP/2 or HTTP/1.1 by ALPN
(bench/emitter_h2.py), as the real API does.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import ssl
from typing import cast

import uvloop

from bench.emitter_h2 import H2EmitterConnection
from bench.pacing import PacedStream, StreamPlan

_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nrequest-id: req_bench\r\ntransfer-encoding: chunked\r\n\r\n"
)
_NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class Http1Sink:
    """One HTTP/1.1 response: each frame its own chunk, its own `transport.write`."""

    __slots__ = ("_write",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._write = transport.write
        self._write(_HEAD)

    def send(self, frame: bytes) -> None:
        self._write(b"%x\r\n%b\r\n" % (len(frame), frame))

    def flush(self) -> None:
        pass  # every `send` was already a write

    def end(self) -> None:
        self._write(_LAST_CHUNK)


class EmitterConnection(asyncio.Protocol):
    """One keep-alive connection: reads a request, streams the answer, repeats."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._stream: PacedStream | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self._next_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._stream is not None:
            self._stream.cancel()
            self._stream = None

    def _stream_finished(self) -> None:
        self._stream = None
        self._next_request()

    def _next_request(self) -> None:
        """Starts answering the buffered request once its head and body are complete."""
        if self._stream is not None or self._transport is None:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        fields = dict(line.lower().split(":", 1) for line in head[1:] if ":" in line)
        body_start = end + 4
        if "chunked" in fields.get("transfer-encoding", ""):
            body_end = self._buffer.find(b"0\r\n\r\n", body_start)
            if body_end < 0:
                return
            body_end += 5
        else:
            body_end = body_start + int(fields.get("content-length", "0"))
            if len(self._buffer) < body_end:
                return
        self._buffer = self._buffer[body_end:]
        if method != "POST":
            self._transport.write(_NOT_FOUND)
            self._next_request()
            return
        plan = StreamPlan.from_target(target.encode("latin-1"))
        sink = Http1Sink(self._transport)
        self._stream = PacedStream(sink, plan, self._rng, self._stream_finished)
        self._stream.start()


class ByAlpn(asyncio.Protocol):
    """The TLS listener's first protocol: hands the connection to HTTP/2 or HTTP/1.1,
    whichever the client picked by ALPN, once the handshake is done."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        alpn = tls.selected_alpn_protocol() if tls is not None else None
        chosen: asyncio.Protocol = (
            H2EmitterConnection(self._rng) if alpn == "h2" else EmitterConnection(self._rng)
        )
        transport.set_protocol(chosen)
        chosen.connection_made(transport)


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context


async def serve(host: str, port: int, tls_port: int, cert: str, key: str) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(1)
    server = await loop.create_server(
        lambda: EmitterConnection(rng), host, port, backlog=4096, reuse_address=True
    )
    servers = [server]
    tls_url = ""
    if cert:
        tls_server = await loop.create_server(
            lambda: ByAlpn(rng),
            host,
            tls_port,
            backlog=4096,
            reuse_address=True,
            ssl=tls_context(cert, key),
        )
        servers.append(tls_server)
        tls_url = f"tls=https://{host}:{tls_server.sockets[0].getsockname()[1]} "
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    # The cleartext URL comes last: readers take the line's last word.
    print(f"bench emitter {tls_url}listening on http://{host}:{bound}", flush=True)
    await stop.wait()
    for each in servers:
        each.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.emitter", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--tls-cert", default="", help="PEM chain: also serve TLS")
    parser.add_argument("--tls-key", default="")
    args = parser.parse_args()
    uvloop.run(serve(args.host, args.port, args.tls_port, args.tls_cert, args.tls_key))


if __name__ == "__main__":
    main()
