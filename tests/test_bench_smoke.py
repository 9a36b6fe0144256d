"""The benchmark's own parts, fast: percentile math, stamp timing, the emitter's SSE,
and the met/missed verdicts of the report's targets.

No timings are asserted; `make bench` measures, this only checks the measuring tools.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h11
import pytest
from anthropic._streaming import SSEDecoder

from bench import frames
from bench.certs import Certificates, run_certificates
from bench.client_h2c import LeanH2cConnection
from bench.collector import RunTally, StreamTally
from bench.perf_samples import parse_perf_script
from bench.proc_stats import cores_busy_seconds, user_system_seconds
from bench.records import floor_spread_ms, merge_rounds, user_kernel_us
from bench.report import RELAY, Record, targets
from bench.stats import percentile, summarize_ns
from bench.tls_report import targets as tls_targets
from tests.relayproc import REPO


def test_nearest_rank_percentiles() -> None:
    ordered = list(range(1, 1001))
    assert percentile(ordered, 50) == 500
    assert percentile(ordered, 99) == 990
    assert percentile(ordered, 99.9) == 999
    assert percentile(ordered, 100) == 1000
    assert percentile([7], 99.9) == 7
    assert percentile([], 50) == 0
    summary = summarize_ns([3_000_000, 1_000_000, 2_000_000])
    assert summary == {"count": 3, "p50": 2.0, "p99": 3.0, "p99.9": 3.0, "max": 3.0}


def test_stamps_and_keepalives_are_found_across_any_chunking() -> None:
    delta = frames.thinking_deltas(count=1)[0]
    body = delta.render(1_000) + b": keepalive\n\n" + delta.render(2_000) + b": keepalive\n\n"
    for size in (1, 3, 7, 50, len(body)):
        run = RunTally(start_ns=0, end_ns=10**12, keepalive_interval_ns=100)
        stream = StreamTally(run, opened_ns=0)
        for i in range(0, len(body), size):
            stream.feed(body[i : i + size], now_ns=5_000)
        assert sorted(run.latencies) == [3_000, 4_000]
        # Each keepalive is timed from the event before it; both arrive at 5000.
        assert sorted(run.keepalive_lateness) == [2_900, 3_900]


def test_a_first_keepalive_is_timed_from_the_response_head_not_the_request() -> None:
    """A relay's keepalive clock starts with the response head: a head that came late
    (connections opening at the ramp) is not the keepalive's lateness."""
    run = RunTally(start_ns=0, end_ns=10**12, keepalive_interval_ns=1_000)
    stream = StreamTally(run, opened_ns=0)
    stream.head(5_000)
    stream.feed(b": keepalive\n\n", now_ns=6_020)
    assert list(run.keepalive_lateness) == [20]


@pytest.fixture(scope="module")
def emitter_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.emitter"], stdout=subprocess.PIPE, cwd=REPO
    )
    assert proc.stdout is not None
    match = re.search(rb":(\d+)$", proc.stdout.readline().strip())
    assert match, "emitter printed no ready line"
    yield int(match.group(1))
    proc.terminate()
    proc.wait(10)


def _fetch(port: int, query: str) -> bytes:
    conn = h11.Connection(h11.CLIENT)
    body = b'{"stream": true}'
    request = h11.Request(
        method="POST",
        target=f"/v1/messages?{query}",
        headers=[("host", "bench"), ("content-length", str(len(body)))],
    )
    data = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            conn.send(request) + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        )
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(data)


def test_emitter_speaks_the_messages_stream(emitter_port: int) -> None:
    until = time.monotonic_ns() + 300_000_000
    body = _fetch(emitter_port, f"rate=100&until={until}")
    events = list(SSEDecoder().iter_bytes(iter([body])))
    names = [e.event for e in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    deltas = events[2:-3]
    assert deltas and {e.event for e in deltas} == {"content_block_delta"}
    for event in events:
        assert json.loads(event.data)["type"] == event.event
    stamps = [json.loads(e.data)["t"] for e in deltas]
    assert stamps == sorted(stamps) and stamps[-1] < until


@pytest.fixture(scope="module")
def tls_emitter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Certificates]]:
    """The emitter with its TLS listener (HTTP/2 or HTTP/1.1 by ALPN): its TLS port."""
    certs = run_certificates(tmp_path_factory.mktemp("certs"))
    args = ["--tls-cert", str(certs.cert), "--tls-key", str(certs.key)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.emitter", *args], stdout=subprocess.PIPE, cwd=REPO
    )
    assert proc.stdout is not None
    match = re.search(rb"tls=https://[^:]+:(\d+)", proc.stdout.readline())
    assert match, "emitter printed no TLS URL"
    yield int(match.group(1)), certs
    proc.terminate()
    proc.wait(10)


def _tls(ca: Path, alpn: str, port: int) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols([alpn])
    sock = context.wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost"
    )
    assert sock.selected_alpn_protocol() == alpn
    return sock


def _fetch_h2(ca: Path, port: int, query: str) -> bytes:
    """One POST over TLS and HTTP/2, read with the `h2` package (a strict peer)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding=None))
    conn.initiate_connection()
    path = f"/v1/messages?{query}".encode()
    head = [(b":method", b"POST"), (b":path", path), (b":scheme", b"https")]
    conn.send_headers(1, [*head, (b":authority", b"localhost")])
    conn.send_data(1, b'{"stream": true}', end_stream=True)
    data = bytearray()
    with _tls(ca, "h2", port) as sock:
        sock.sendall(conn.data_to_send())
        while True:
            for event in conn.receive_data(sock.recv(65536)):
                if isinstance(event, h2.events.DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.ResponseReceived):
                    assert dict(event.headers)[b":status"] == b"200"
                elif isinstance(event, h2.events.StreamEnded):
                    return bytes(data)
            sock.sendall(conn.data_to_send())


def _assert_messages_stream(body: bytes, until: int) -> None:
    events = list(SSEDecoder().iter_bytes(iter([body])))
    names = [e.event for e in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert len(names) > 5
    stamps = [json.loads(e.data)["t"] for e in events[2:-3]]
    assert stamps == sorted(stamps) and stamps[-1] < until


def test_tls_emitter_speaks_http2_by_alpn(tls_emitter: tuple[int, Certificates]) -> None:
    port, certs = tls_emitter
    until = time.monotonic_ns() + 300_000_000
    _assert_messages_stream(_fetch_h2(certs.ca, port, f"rate=100&until={until}"), until)


def test_lean_h2_client_reads_every_stream_of_the_h2_emitter(
    tls_emitter: tuple[int, Certificates],
) -> None:
    port, certs = tls_emitter
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.set_alpn_protocols(["h2"])

    async def streams() -> tuple[RunTally, list[str | None], int]:
        loop = asyncio.get_running_loop()
        now = time.monotonic_ns()
        tally = RunTally(0, now + 10**10, 10**9)
        outcomes: list[str | None] = []
        _, client = await loop.create_connection(
            LeanH2cConnection, "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        assert isinstance(client, LeanH2cConnection)
        await asyncio.wait_for(client.ready, 5)
        path = f"/v1/messages?rate=200&until={now + 300_000_000}".encode()
        heads: list[int] = []

        class Told(StreamTally):
            __slots__ = ()

            def head(self, now_ns: int) -> None:
                heads.append(now_ns)
                super().head(now_ns)

        for _ in range(5):
            client.open(path, b"localhost", b"{}", Told(tally, now), outcomes.append)
        client.flush()
        while len(outcomes) < 5:
            await asyncio.sleep(0.02)
        client.close()
        assert sorted(heads) == sorted(client.first_byte_ns.values())  # each head told
        return tally, outcomes, len(client.first_byte_ns)

    tally, outcomes, responses = asyncio.run(asyncio.wait_for(streams(), 10))
    assert outcomes == [None] * 5 and responses == 5
    # About 60 events per stream in 0.3 s at 200/s, every one timed.
    assert 5 * 40 <= len(tally.latencies) <= 5 * 70


def _run(p99: float, cpu: float = 20.0) -> dict[str, Any]:
    return {
        "latency_ms": {"count": 10, "p50": 1.0, "p99": p99, "p99.9": p99 + 1, "max": 9.0},
        "cpu_s_per_mevent": cpu,
        "delivered_ratio": 1.0,
        "error_count": 0,
        "errors": [],
    }


def test_rounds_merge_into_medians_and_direct_spread_is_the_noise() -> None:
    merged = merge_rounds([_run(3.0, 10.0), _run(1.0, 30.0), _run(2.0, 20.0)])
    assert merged["latency_ms"]["p99"] == 2.0
    assert merged["latency_ms"]["count"] == 30
    assert merged["cpu_s_per_mevent"] == 20.0
    assert floor_spread_ms(merged, "p99") == 2.0
    assert merge_rounds([_run(3.0)]) == _run(3.0)  # one round is left as it is


def test_cpu_split_per_event() -> None:
    assert user_kernel_us({"cpu_s_per_mevent": 20.0, "kernel_share": 0.75}) == (5.0, 15.0)
    assert user_kernel_us({"cpu_s_per_mevent": 20.0}) is None


# `perf script -F ip,sym,dso` with call chains: a writev, a read, Python, the scanner,
# the body pump.
_PERF_SCRIPT = """
\tffffffff81a0 tcp_sendmsg+0x1 ([kernel.kallsyms])
\tffffffff8100 entry_SYSCALL_64_after_hwframe+0x4b ([kernel.kallsyms])
\t7f00 __GI___writev+0x10 (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t7f10 uv__try_write+0x20 (/venv/uvloop/loop.cpython-311-x86_64-linux-gnu.so)

\tffffffff81b0 ksys_read+0x1 ([kernel.kallsyms])
\t7f20 read+0x10 (/usr/lib/x86_64-linux-gnu/libc.so.6)

\t7f30 _PyEval_EvalFrameDefault+0x99 (/usr/lib/libpython3.11.so.1.0)

\t7f40 __pyx_f_feed+0x5 (/work/relay/_fastsse.cpython-311-x86_64-linux-gnu.so)
\t7f30 _PyEval_EvalFrameDefault+0x99 (/usr/lib/libpython3.11.so.1.0)

\t7f50 __pyx_f_BodyPump__run+0x5 (/work/relay/upstream/_bodypump.cpython-311-x86_64-linux-gnu.so)
\t7f10 uv__read+0x20 (/venv/uvloop/loop.cpython-311-x86_64-linux-gnu.so)
"""


def test_perf_samples_are_sorted_by_syscall_and_code() -> None:
    counts = parse_perf_script(_PERF_SCRIPT)
    assert {name.split(" (")[0]: n for name, n in counts.items()} == {
        "kernel: write to sockets": 1,
        "kernel: read from sockets": 1,
        "Python interpreter": 1,
        "SSE scanner": 1,
        "body pump and native path": 1,
    }


def test_process_and_core_cpu_accounting_sees_a_busy_loop() -> None:
    me = (os.getpid(),)
    core = os.sched_getaffinity(0)
    user_before, system_before = user_system_seconds(me)
    busy_before = cores_busy_seconds(core)
    spin_until = time.process_time() + 0.3
    while time.process_time() < spin_until:
        pass
    user_after, system_after = user_system_seconds(me)
    # Ticks are 10 ms: a 0.3 s spin shows as at least 0.2 s, wherever it ran.
    assert (user_after - user_before) + (system_after - system_before) >= 0.2
    assert cores_busy_seconds(core) - busy_before >= 0.2


def _latency(contender: str, p99: float, streams: int = 100, rate: float = 10.0) -> Record:
    """A latency record as the load generator writes one (only what `targets` reads)."""
    return {
        "contender": contender,
        "streams": streams,
        "rate_per_stream": rate,
        "latency_ms": {"count": 1000, "p50": p99 / 2, "p99": p99, "p99.9": p99 + 1},
    }


def _with_rounds(record: Record, p99s: list[float]) -> Record:
    """`record` as merged from rounds whose p99s were `p99s`."""
    return record | {"rounds": [{"latency_ms": {"p99": p99}} for p99 in p99s]}


def _verdicts(results: dict[str, Any]) -> dict[str, tuple[bool | None, str]]:
    """Each target of the run, by name: (met, what was measured)."""
    return {t["target"]: (t["met"], t["measured"]) for t in targets(results)}


def _added_p99(results: dict[str, Any]) -> bool | None:
    verdicts: list[bool | None] = [
        t["met"] for t in targets(results) if t["target"].startswith("added p99")
    ]
    (met,) = verdicts
    return met


def test_latency_target_is_half_again_nginx_added_p99_at_the_heaviest_load() -> None:
    direct, nginx = _latency("direct", 5.0), _latency("nginx", 7.0)  # nginx adds 2 ms
    # A lighter load, where the relay looks awful, is not the one judged.
    light = [_latency(k, p99, streams=10) for k, p99 in [("direct", 1), ("nginx", 1), (RELAY, 9)]]
    met = {"latency": [*light, direct, nginx, _latency(RELAY, 7.9)]}  # adds 2.9 <= 3
    missed = {"latency": [*light, direct, nginx, _latency(RELAY, 8.2)]}  # adds 3.2 > 3
    assert _added_p99(met) is True
    assert _added_p99(missed) is False
    # Without nginx (or direct) at that load there is nothing to judge by.
    assert targets({"latency": [direct, _latency(RELAY, 7.0)]}) == []


def test_an_added_p99_within_directs_own_spread_meets_the_latency_target() -> None:
    # nginx adds nothing measurable; the relay adds 1 ms.
    nginx, relay = _latency("nginx", 5.05), _latency(RELAY, 6.0)
    # Direct's p99 moved 1 ms between rounds: 1 ms added cannot be told from zero.
    noisy = _with_rounds(_latency("direct", 5.0), [4.5, 5.5, 5.0])
    assert _added_p99({"latency": [noisy, nginx, relay]}) is True
    # Steady direct (0.1 ms between rounds, or one round): the floor is 0.1 ms, 1.5x
    # that is 0.15 ms, and 1 ms added is a miss.
    steady = _with_rounds(_latency("direct", 5.0), [4.95, 5.05])
    assert _added_p99({"latency": [steady, nginx, relay]}) is False
    assert _added_p99({"latency": [_latency("direct", 5.0), nginx, relay]}) is False
    measured = next(t["measured"] for t in targets({"latency": [noisy, nginx, relay]}))
    assert "direct's own p99 moved 1.00 ms between rounds" in measured


def _cost(contender: str, cpu: float, rate: float = 1000.0, **fields: float) -> Record:
    """A paced cost record: `cpu` CPU-seconds per million events at `rate` events/s."""
    record: Record = {"contender": contender, "streams": 100, "offered_rate": rate}
    return record | {"cpu_s_per_mevent": cpu, **fields}


NGINX_TARGET = "throughput per core ≥ 0.7x nginx (1 worker)"
CPU_TARGET = "CPU per event at 100 streams ≤ 1.05x nginx's"
USER_TARGET = "user CPU per event at 100 streams ≤ nginx's + 1 µs"


def test_throughput_targets_compare_events_per_cpu_second_at_the_lowest_rate() -> None:
    nginx = _cost("nginx", 14.0)
    # The lowest rate is the reference; the relay's costlier step above it is not judged.
    steps = [_cost(RELAY, 40.0, rate=8000.0)]
    # 19.9 s per million events: 50.3k events/CPU-s; nginx's 71.4k (x0.70). Just over
    # the bar; 20.5 s (48.8k) is just under it.
    met = _verdicts({"cost": [*steps, _cost(RELAY, 19.9), nginx]})
    assert met[NGINX_TARGET][0] is True
    assert "(x0.70)" in met[NGINX_TARGET][1]
    missed = _verdicts({"cost": [*steps, _cost(RELAY, 20.5), nginx]})
    assert missed[NGINX_TARGET][0] is False
    # The retired "5x the naive relay" is judged no more (issue #14), naive run or not.
    naive = _cost("naive", 100.0)
    assert not any("naive" in name for name in _verdicts({"cost": [*steps, nginx, naive]}))


def test_cpu_targets_are_nginxs_cpu_per_event_times_1_05_and_its_user_cpu_plus_1_us() -> None:
    # nginx: 10 µs/event, 4 of them user.
    nginx = _cost("nginx", 10.0, kernel_share=0.6)
    # 10.5 µs/event, 5 of them user: just within both bars.
    met = _verdicts({"cost": [_cost(RELAY, 10.5, kernel_share=5.5 / 10.5), nginx]})
    assert met[CPU_TARGET] == (True, "10.5 vs 10.0 µs/event (x1.05) at 1k/s")
    assert met[USER_TARGET] == (True, "5.0 vs 4.0 µs/event (+1.0) at 1k/s")
    # 10.6 µs/event, 5.1 of them user: just past both.
    missed = _verdicts({"cost": [_cost(RELAY, 10.6, kernel_share=5.5 / 10.6), nginx]})
    assert missed[CPU_TARGET][0] is False and missed[USER_TARGET][0] is False
    # Without nginx, or without the user/kernel split, nothing is judged.
    alone = _verdicts({"cost": [_cost(RELAY, 10.0, kernel_share=0.5)]})
    assert alone[CPU_TARGET] == alone[USER_TARGET] == (None, "not measured")
    unsplit = _verdicts({"cost": [_cost(RELAY, 10.0), nginx]})
    assert unsplit[CPU_TARGET] == (None, "not measured")


def test_a_missed_throughput_target_says_when_kernel_time_alone_puts_it_out_of_reach() -> None:
    nginx = _cost("nginx", 10.0)  # 100k events/CPU-s
    # 16 µs/event in the kernel: even with no user time the relay would do 62.5k (x0.62).
    capped = _verdicts({"cost": [_cost(RELAY, 20.0, kernel_share=0.8), nginx]})[NGINX_TARGET]
    assert capped[0] is False and "out of reach" in capped[1] and "x0.62" in capped[1]
    # 6 µs/event in the kernel leaves room: a plain miss.
    plain = _verdicts({"cost": [_cost(RELAY, 20.0, kernel_share=0.3), nginx]})[NGINX_TARGET]
    assert plain[0] is False and "out of reach" not in plain[1]


def _idle(late_p99: float, rss_per_stream: float) -> Record:
    return {
        "contender": RELAY,
        "streams": 10_000,
        "keepalive_lateness_ms": {"count": 100, "p50": 1.0, "p99": late_p99},
        "rss_kib_per_stream": rss_per_stream,
    }


def test_idle_targets_keepalive_lateness_and_memory_per_stream() -> None:
    late, rss = (
        "10000 idle streams: keepalives ≤ 10% late at p99",
        "10000 idle streams: RSS ≤ 25 KiB per stream",
    )
    assert _verdicts({"idle": [_idle(100.0, 25.0)]}) == {
        late: (True, "100.0 ms late"),
        rss: (True, "25.0 KiB"),
    }
    assert _verdicts({"idle": [_idle(100.5, 25.1)]}) == {
        late: (False, "100.5 ms late"),
        rss: (False, "25.1 KiB"),
    }


def _scanner(scanner: str, mb_per_s: float | None, chunk_bytes: int = 100) -> Record:
    return {"scanner": scanner, "chunk_bytes": chunk_bytes, "mb_per_s": mb_per_s}


def test_scanner_target_is_ten_times_pure_python_at_100_byte_chunks() -> None:
    def verdict(*records: Record) -> list[tuple[bool | None, str]]:
        return [(t["met"], t["measured"]) for t in targets({"scanner": list(records)})]

    # Other chunk sizes do not count.
    others = [_scanner("cython", 1.0, chunk_bytes=4096), _scanner("python", 100.0, 4096)]
    assert verdict(*others, _scanner("cython", 1000.0), _scanner("python", 100.0)) == [
        (True, "x10.0")
    ]
    assert verdict(*others, _scanner("cython", 990.0), _scanner("python", 100.0)) == [
        (False, "x9.9")
    ]
    assert verdict(_scanner("python", 100.0)) == [(False, "extension missing")]
    assert verdict(_scanner("cython", 1000.0)) == []  # no pure-Python figure: no target


def _tls_cost(contender: str, cpu: float, streams: int = 1000) -> Record:
    return {"contender": contender, "streams": streams, "rate_per_stream": 10.0} | {
        "offered_rate": streams * 10.0,
        "cpu_s_per_mevent": cpu,
    }


def _tls_verdicts(results: dict[str, Any]) -> dict[str, tuple[bool | None, str]]:
    return {t["target"]: (t["met"], t["measured"]) for t in tls_targets(results)}


def test_tls_target_is_the_default_within_a_fifth_of_nginx_at_the_most_streams() -> None:
    name = "TLS upstream, the default path (HTTP/1.1): CPU per event ≤ 1.2x nginx's TLS proxy"
    light = [_tls_cost("relay-tls-h1", 90.0, streams=100), _tls_cost("nginx-tls", 10.0, 100)]
    auto = _tls_cost("relay-tls-auto", 30.0)
    met = _tls_verdicts(
        {"tls": [*light, auto, _tls_cost("relay-tls-h1", 24.0), _tls_cost("nginx-tls", 20.0)]}
    )
    assert met[name][0] is True and "(x1.20)" in met[name][1]
    assert "auto (h2 upstream) x1.50" in met[name][1]
    missed = _tls_verdicts({"tls": [_tls_cost("relay-tls-h1", 24.2), _tls_cost("nginx-tls", 20.0)]})
    assert missed[name][0] is False
    assert _tls_verdicts({"tls": [_tls_cost("nginx-tls", 20.0)]})[name] == (None, "not measured")


def test_h2_targets_are_judged_from_100_streams_up() -> None:
    def h2c(contender: str, streams: int, cpu: float) -> Record:
        return _tls_cost(contender, cpu, streams) | {"proto": "h2c", "harness_cpu_util": 0.5}

    records = [h2c(RELAY, 1, 90.0), h2c("nginx", 1, 10.0)]
    records += [h2c(RELAY, 100, 15.0), h2c("nginx", 100, 10.0)]
    records += [h2c(RELAY, 1000, 15.1), h2c("nginx", 1000, 10.0)]
    verdicts = {k: v[0] for k, v in _verdicts({"h2-h3": records}).items()}
    assert verdicts == {
        "HTTP/2 towards clients, 100 streams: CPU per event ≤ 1.5x nginx's": True,
        "HTTP/2 towards clients, 1000 streams: CPU per event ≤ 1.5x nginx's": False,
    }
