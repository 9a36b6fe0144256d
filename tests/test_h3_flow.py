"""HTTP/3 towards clients: the SETTINGS the relay advertises, and backpressure from a
client that stops reading, seen from the upstream's side (a counting proxy)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from aioquic.h3.connection import Setting

from tests.clients import KEEPALIVE, raw_stream, script
from tests.countingproxy import CountingProxy
from tests.h3_settings import DeafH3Client, deaf_h3_connect
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

KA = 0.1
MAX_HEADER_BYTES = 12_345  # not a default anywhere, so an echo cannot be a coincidence
BULK = 24 * 1024 * 1024  # response body bytes: several times what buffers can hide
QUIET = 1.0  # seconds without an upstream byte that count as "upstream paused"


@pytest.fixture(scope="module")
def proxy(sim: SimServer) -> Iterator[CountingProxy]:
    with CountingProxy(sim.port) as counting:
        yield counting


@pytest.fixture(scope="module")
def relay(proxy: CountingProxy, relay_tls_args: list[str]) -> Iterator[RelayProcess]:
    args = [*relay_tls_args, "--http3", "--max-header-bytes", str(MAX_HEADER_BYTES)]
    with RelayProcess(proxy.url, *args, keepalive=KA) as proc:
        assert proc.h3_port, proc.ready_line
        yield proc


def test_settings_advertise_max_field_section_size(relay: RelayProcess, ca_file: Path) -> None:
    """The relay's SETTINGS frame tells HTTP/3 clients its header limit
    (SETTINGS_MAX_FIELD_SECTION_SIZE = --max-header-bytes), so they can refuse an
    oversize request before sending it (RFC 9114 4.2.2)."""

    async def run() -> dict[int, int]:
        async with deaf_h3_connect(relay.h3_port, str(ca_file)) as client:
            await client.wait_until(lambda: client.peer_settings is not None, timeout=5)
            assert client.peer_settings is not None
            return client.peer_settings

    settings = asyncio.run(run())
    assert settings[Setting.MAX_FIELD_SECTION_SIZE] == MAX_HEADER_BYTES


async def _settled(read: Callable[[], int], quiet: float, timeout: float = 15.0) -> int:
    """`read()` once it has not changed for `quiet` seconds."""
    async with asyncio.timeout(timeout):
        value, since = read(), time.monotonic()
        while time.monotonic() - since < quiet:
            await asyncio.sleep(0.01)
            if (now := read()) != value:
                value, since = now, time.monotonic()
        return value


def test_a_client_that_stops_reading_pauses_upstream_then_resumes_byte_exact(
    sim: SimServer, proxy: CountingProxy, relay: RelayProcess, ca_file: Path
) -> None:
    """A client that stops acknowledging (no ACKs, no flow-control credit) makes the
    relay stop reading upstream: the bytes upstream managed to write stop growing far
    short of the body, and the relay's memory stays bounded instead of buffering the
    rest. Once the client reads again the stream resumes and ends byte for byte."""

    async def run() -> tuple[DeafH3Client, int, int, int, int]:
        async with deaf_h3_connect(relay.h3_port, str(ca_file)) as client:
            baseline = relay.rss_kib()
            before = proxy.from_target
            stream = client.request({"bulk_bytes": BULK})
            await client.wait_until(lambda: len(client.data[stream]) >= 512 * 1024)
            client.go_deaf()
            stalled = await _settled(lambda: proxy.from_target - before, QUIET)
            grown = relay.rss_kib() - baseline
            # Still nothing new: the pause held while memory was read. And the relay kept
            # sending (probes) into the silence: the client really held them unread.
            assert proxy.from_target - before == stalled
            assert client.held > 0
            client.listen()
            await client.wait_until(lambda: stream in client.ended, timeout=60)
            return client, stream, stalled, grown, proxy.from_target - before

    client, stream, stalled, grown, total = asyncio.run(run())
    direct = raw_stream(sim.url, headers=script(bulk_bytes=BULK))[2]
    assert client.status[stream] == 200
    # Socket buffers on the way (autotuned, some MiB) hold what upstream got to write.
    assert stalled < len(direct) // 2, (stalled, len(direct))
    assert grown < 8 * 1024, grown  # KiB; unpaused, the relay would hold ~20 MiB more
    assert total > len(direct)  # all of it came through in the end (plus HTTP framing)
    assert bytes(client.data[stream]).replace(KEEPALIVE, b"") == direct
