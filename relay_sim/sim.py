"""`sse-relay sim`: a fake Messages API upstream speaking the real SSE wire format.

Platform teams point load balancers at it to see idle timeouts bite; the tests and
benchmarks use it as the upstream. This module is the HTTP/1.1 transport (an h11
`asyncio.Protocol`), the choice of HTTP version per connection, and the command line;
HTTP/2 lives in `relay_sim.h2`, the shared recording state in `relay_sim.state`, and
what is sent, and when, in `relay_sim.script`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import signal
import ssl
import time
from collections.abc import Coroutine
from typing import Any, cast

import h11

from relay_sim.black_hole import BlackHole
from relay_sim.h2 import H2_PREFACE, Http2Connection
from relay_sim.script import RecordedRequest, SimScript, play
from relay_sim.state import SimState


def _reason(status: int) -> bytes:
    if status == 529:
        return b"Overloaded"
    with contextlib.suppress(ValueError):
        return http.HTTPStatus(status).phrase.encode()
    return b""


class Http1Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: keep-alive and pipelining via h11; also the `Sink`."""

    def __init__(self, state: SimState, number: int) -> None:
        self._state = state
        self._number = number
        self._h11 = h11.Connection(h11.SERVER)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._responder: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._peer_left_at: float | None = None
        self._closed_by_us = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._state.live.add(self)

    def data_received(self, data: bytes) -> None:
        self._h11.receive_data(data)
        self._next_requests()

    def eof_received(self) -> bool:
        # A half-close counts as leaving: clients and balancers that stop sending mean it.
        self._peer_left_at = time.monotonic()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        # The response may be complete while its task's done-callback is still queued:
        # h11's state, not the task, says whether the peer left mid-response.
        midstream = (
            self._responder is not None
            and not self._closed_by_us
            and self._h11.our_state is not h11.DONE
        )
        noticed = self._peer_left_at or time.monotonic()
        self._state.record_close(noticed, midstream, self._number)
        self._state.live.discard(self)
        if self._responder is not None:
            self._responder.cancel()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # Sink

    def send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        response = h11.Response(status_code=status, headers=headers, reason=_reason(status))
        self._write(self._h11.send(response))

    def write(self, data: bytes) -> None:
        if data:
            self._write(self._h11.send(h11.Data(data=data)))

    def write_truncated(self, data: bytes) -> None:
        # By hand: h11 would (rightly) never frame a chunk it is not given in full.
        self._write(b"%x\r\n" % len(data) + data[: len(data) // 2])
        self.abort()

    async def drain(self) -> None:
        await self._writable.wait()

    def end(self) -> None:
        self._write(self._h11.send(h11.EndOfMessage()))

    def abort(self) -> None:
        self._closed_by_us = True
        if self._transport is not None:
            self._transport.abort()

    # Request handling

    def _write(self, data: bytes | None) -> None:
        assert self._transport is not None and data is not None
        self._transport.write(data)

    def _next_requests(self) -> None:
        """Consumes parsed events until a request is complete (then answers it) or data runs out."""
        while self._responder is None:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._body = event, bytearray()
                if self._h11.client_is_waiting_for_100_continue:
                    self._write(
                        self._h11.send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
            elif isinstance(event, h11.Data):
                self._body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    def _answer(self) -> None:
        assert self._request is not None
        recorded = RecordedRequest(
            method=self._request.method.decode(),
            target=self._request.target.decode(),
            headers=list(self._request.headers),
            body=bytes(self._body),
            http_version=self._request.http_version.decode(),
        )
        self._state.requests.append(recorded)
        request_id = self._state.next_request_id()
        coroutine = play(recorded, self._state.script, request_id, self)
        self._responder = asyncio.get_running_loop().create_task(coroutine)
        self._responder.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._transport is None or self._transport.is_closing():
            return
        self._responder = None
        if (exc := task.exception()) is not None:
            message = "sse-relay sim: response failed"
            task.get_loop().call_exception_handler({"message": message, "exception": exc})
            self.abort()
        elif self._h11.our_state is h11.DONE:
            self._h11.start_next_cycle()
            self._next_requests()
        else:
            self._close()  # `connection: close` or HTTP/1.0: h11 says this connection is done

    def _reject(self, exc: h11.RemoteProtocolError) -> None:
        if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                self.send_head(exc.error_status_hint, [("content-length", "0")])
                self.end()
        self._close()

    def _close(self) -> None:
        self._closed_by_us = True
        if self._transport is not None:
            self._transport.close()


class FirstBytes(asyncio.Protocol):
    """Hands a new connection to HTTP/2 (ALPN h2, or the h2c preface) or HTTP/1.1."""

    def __init__(self, state: SimState) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._state.connections += 1
        self._number = self._state.connections
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self._hand_over(tls.selected_alpn_protocol() == "h2")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < len(H2_PREFACE) and H2_PREFACE.startswith(self._buffer):
            return  # could still become the HTTP/2 preface
        self._hand_over(self._buffer.startswith(H2_PREFACE))

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.record_close(time.monotonic(), False, self._number)

    def _hand_over(self, http2: bool) -> None:
        assert self._transport is not None
        protocol: Http1Connection | Http2Connection
        if http2:
            protocol = Http2Connection(self._state, self._number)
        else:
            protocol = Http1Connection(self._state, self._number)
        self._transport.set_protocol(protocol)
        protocol.connection_made(self._transport)
        if self._buffer:
            protocol.data_received(self._buffer)


async def start(
    state: SimState, host: str, port: int, tls: ssl.SSLContext | None = None
) -> asyncio.Server:
    """Listens on host:port (0: any free port), over TLS when `tls` is given (then
    offering h2 and http/1.1 by ALPN, set on `tls`); the caller owns the server."""
    if tls is not None:
        tls.set_alpn_protocols(["h2", "http/1.1"])
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: FirstBytes(state), host, port, ssl=tls)


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sse-relay sim",
        description="A simulated Anthropic Messages API (POST /v1/messages) streaming real "
        "SSE frames, with configurable silent gaps and failures. Flags set defaults; a "
        "request header `x-sim-script: {JSON}` overrides any SimScript field per request.",
    )
    add = parser.add_argument
    add("--listen", type=_listen_address, default=("127.0.0.1", 8787), metavar="HOST:PORT")
    add("--thinking-deltas", type=int, default=3, metavar="N")
    add("--text-deltas", type=int, default=3, metavar="N")
    add("--gap", type=float, metavar="SECONDS", help="silence after the first thinking delta")
    add("--ping-every", type=float, metavar="SECONDS", help="send pings during gaps")
    add("--event-delay", type=float, default=0.0, metavar="SECONDS")
    add("--error-after", type=int, metavar="N", help="overloaded error event after N events")
    add("--drop-after", type=int, metavar="N", help="drop the connection after N events")
    add("--script", metavar="JSON", help="any other SimScript fields, as for x-sim-script")
    add(
        "--black-hole",
        action="store_true",
        help="answer nothing: every connect hangs until the client's own timeout "
        "(for testing connect timeouts)",
    )
    return parser


def _script(args: argparse.Namespace) -> SimScript:
    script = SimScript(
        thinking_deltas=args.thinking_deltas,
        text_deltas=args.text_deltas,
        gaps=((2, args.gap),) if args.gap is not None else (),
        ping_every=args.ping_every,
        event_delay=args.event_delay,
        error_after=args.error_after,
        drop_after=args.drop_after,
    )
    return script.override(args.script) if args.script else script


async def _serve(script: SimScript, host: str, port: int) -> None:
    state = SimState(script=script)
    server = await start(state, host, port)
    await _until_signalled(host, server.sockets[0].getsockname()[1])
    server.close()
    state.abort_all()


async def _black_hole(host: str, port: int) -> None:
    with BlackHole(host, port) as hole:
        await _until_signalled(host, hole.port, " (black hole)")


async def _until_signalled(host: str, port: int, note: str = "") -> None:
    """Prints the ready line, then waits for SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    shown = f"[{host}]" if ":" in host else host
    # Printed only once signals are handled: a caller may stop us right after reading it.
    print(f"sse-relay sim listening on http://{shown}:{port}{note}", flush=True)
    await stop.wait()


def run(main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` to completion on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        script = _script(args)
    except ValueError as exc:
        parser.error(str(exc))
    run(_black_hole(*args.listen) if args.black_hole else _serve(script, *args.listen))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
