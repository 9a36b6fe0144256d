"""Slow clients over HTTP/3: a request stream holding half a HEADERS frame, and a request
body that stalls, each ended by the relay's timers (`--header-timeout 1`,
`--body-timeout 1`) within a generous 6 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, cast

import pytest
from aioquic.asyncio.client import connect
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, FrameType
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StopSendingReceived

from tests.clients import KEEPALIVE
from tests.h3client import H3Client, h3_connect
from tests.hostile.h2_attack import NORMAL_SCRIPT, assert_relay_healthy, direct, settle_fds
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

BOUND = 6.0


@pytest.fixture(scope="module")
def h3_relay(sim: SimServer, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    args = [*relay_tls_args, "--http3", "--header-timeout", "1", "--body-timeout", "1"]
    with RelayProcess(sim.url, *args) as proc:
        assert proc.h3_port, proc.ready_line
        yield proc


class StopAwareClient(H3Client):
    """`H3Client` that also records the relay's STOP_SENDING, by stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_sending: dict[int, int] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StopSendingReceived):
            self.stop_sending[event.stream_id] = event.error_code
        super().quic_event_received(event)


async def normal_h3_stream(port: int, ca_file: Path) -> tuple[int, bytes]:
    """One ordinary streaming request on a fresh HTTP/3 connection: (status, body)."""
    async with h3_connect(port, str(ca_file)) as client:
        stream = client.request(NORMAL_SCRIPT)
        await client.wait_until(lambda: stream in client.ended, timeout=15)
        return client.status.get(stream, 0), bytes(client.data[stream])


def assert_h3_serves(sim: SimServer, relay: RelayProcess, ca_file: Path) -> None:
    """A normal HTTP/3 stream is relayed byte-exact."""
    status, body = asyncio.run(normal_h3_stream(relay.h3_port, ca_file))
    assert status == 200, body[:300]
    assert body.replace(KEEPALIVE, b"") == direct(sim, NORMAL_SCRIPT)


@asynccontextmanager
async def stop_aware_connect(port: int, cafile: Path) -> AsyncIterator[StopAwareClient]:
    """`h3_connect`, with a client that also records STOP_SENDING."""
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=H3_ALPN, server_name="localhost"
    )
    configuration.load_verify_locations(str(cafile))
    async with connect(
        "127.0.0.1", port, configuration=configuration, create_protocol=StopAwareClient
    ) as client:
        yield cast(StopAwareClient, client)


def test_h3_half_a_headers_frame_is_reset_within_bound(
    sim: SimServer, h3_relay: RelayProcess, ca_file: Path
) -> None:
    """A request stream carrying a HEADERS frame that announces 200 bytes, of which 3
    come, then silence: the relay resets or closes the stream (RESET_STREAM,
    STOP_SENDING, an answer ending it, or closing the connection) within 6 s; then a
    normal stream is relayed byte-exact over HTTP/3 and HTTP/2, fds flat."""
    fds = settle_fds(h3_relay, sim)

    async def run() -> tuple[float, str]:
        async with stop_aware_connect(h3_relay.h3_port, ca_file) as client:
            stream = client._quic.get_next_available_stream_id()
            partial = encode_uint_var(FrameType.HEADERS) + encode_uint_var(200) + b"\x00\x00\xd1"
            client._quic.send_stream_data(stream, partial)
            client.transmit()
            stalled_at = time.monotonic()

            def ended() -> bool:
                return (
                    stream in client.reset_codes
                    or stream in client.stop_sending
                    or stream in client.ended
                    or client.terminated is not None
                )

            try:
                await client.wait_until(ended, timeout=BOUND + 2)
            except TimeoutError:
                return time.monotonic() - stalled_at, "nothing"
            how = (
                f"reset {client.reset_codes.get(stream)}, "
                f"stop_sending {client.stop_sending.get(stream)}, "
                f"status {client.status.get(stream)}, terminated {client.terminated}"
            )
            return time.monotonic() - stalled_at, how

    elapsed, how = asyncio.run(run())
    assert how != "nothing", f"the stream was still open {elapsed:.1f} s after the stall"
    assert elapsed < BOUND, how
    assert_h3_serves(sim, h3_relay, ca_file)
    assert_relay_healthy(h3_relay, sim, fds)


def test_h3_request_body_that_stalls_gets_408(
    sim: SimServer, h3_relay: RelayProcess, ca_file: Path
) -> None:
    """An HTTP/3 POST whose body sends 10 of its 100 bytes and stalls without FIN,
    upstream waiting for the rest: `:status 408`, timeout_error, within 6 s; then a
    normal stream is relayed byte-exact over HTTP/3 and HTTP/2, fds flat."""
    fds = settle_fds(h3_relay, sim)

    async def run() -> tuple[float, int | None, bytes]:
        async with h3_connect(h3_relay.h3_port, str(ca_file)) as client:
            stream = client._quic.get_next_available_stream_id()
            client.h3.send_headers(
                stream,
                [
                    (b":method", b"POST"),
                    (b":scheme", b"https"),
                    (b":authority", b"localhost"),
                    (b":path", b"/v1/messages"),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"100"),
                ],
            )
            client.h3.send_data(stream, b'{"model": ', end_stream=False)
            client.data[stream] = bytearray()
            client.transmit()
            stalled_at = time.monotonic()
            with suppress(TimeoutError):
                await client.wait_until(
                    lambda: stream in client.ended or client.terminated is not None,
                    timeout=BOUND + 2,
                )
            elapsed = time.monotonic() - stalled_at
            return elapsed, client.status.get(stream), bytes(client.data[stream])

    elapsed, status, body = asyncio.run(run())
    assert status is not None, f"no answer {elapsed:.1f} s after the body stalled"
    assert status == 408, (status, body[:300])
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "timeout_error", error
    assert elapsed < BOUND
    assert_h3_serves(sim, h3_relay, ca_file)
    assert_relay_healthy(h3_relay, sim, fds)
