"""README flags beyond their validation: `--workers auto` at start-up, and an upstream URL
with a path prefix end to end. (`--connect-timeout` and `--retry-budget`:
test_promises_failures.py; `--quic-idle-timeout`: test_promises_h3.py.)"""

from __future__ import annotations

import os
import re
import sys

import pytest

from tests.clients import KEEPALIVE, STREAM_BODY, raw_http, raw_stream, script
from tests.h2client import RawH2Client
from tests.relayproc import RelayProcess
from tests.simserver import SimServer

_WORKER_READY = re.compile(rb"worker (\d+) ready \(pid \d+\)")
# Runs the relay's CLI with its CPU affinity narrowed to the first CPU it may use.
_ON_ONE_CPU = (
    "import os, sys; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
    "from relay.ops.cli import main; sys.exit(main())"
)


def test_workers_auto_starts_one_worker_per_cpu_the_process_may_use(sim: SimServer) -> None:
    """`--workers auto` starts as many workers as CPUs in the process's affinity mask
    (not the machine's count): each is ready and serves, under one ready line."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("one usable CPU: auto means a single process, as checked below")
    with RelayProcess(sim.url, "--workers", "auto") as relay:
        assert relay.ready_line.rstrip().endswith(b" workers=%d" % cpus)
        assert sorted(int(w) for w in _WORKER_READY.findall(relay.stderr_text)) == list(
            range(1, cpus + 1)
        )
        assert raw_stream(relay.url)[0] == 200


def test_workers_auto_on_one_cpu_is_a_single_process(sim: SimServer) -> None:
    """With one CPU in its affinity mask, `auto` is 1: a single relay process, no
    supervisor."""
    command = (sys.executable, "-c", _ON_ONE_CPU)
    with RelayProcess(sim.url, "--workers", "auto", command=command) as relay:
        assert b"workers=" not in relay.ready_line
        assert not _WORKER_READY.search(relay.stderr_text)
        assert os.sched_getaffinity(relay.proc.pid) == {min(os.sched_getaffinity(0))}
        assert raw_stream(relay.url)[0] == 200


def test_an_upstream_path_prefix_is_kept_end_to_end(sim: SimServer) -> None:
    """`--upstream http://host:port/prefix/` (a trailing slash too): upstream sees the
    prefix, then the client's path and query, over HTTP/1.1 and HTTP/2 alike; the
    stream comes back whole."""
    with RelayProcess(sim.url + "/gateway/anthropic/") as relay:
        before = len(sim.requests)
        head = b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: r\r\nconnection: close\r\n"
        answer = raw_http(
            relay.port, head + b"content-length: %d\r\n\r\n" % len(STREAM_BODY) + STREAM_BODY
        )
        _, _, relayed = raw_stream(relay.url, headers=script(gaps=[[2, 0.3]]))
        client = RawH2Client(relay.port)
        try:
            stream = client.stream()
            client.pump_until(lambda: stream in client.ended)
        finally:
            client.close()
        targets = [request.target for request in sim.requests[before:]]
    prefixed = "/gateway/anthropic/v1/messages"
    assert targets == [prefixed + "?beta=true", prefixed, prefixed]
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"0\r\n\r\n")
    # A gap changes when bytes come, never which: the gapless stream is the reference.
    assert relayed.replace(KEEPALIVE, b"") == raw_stream(sim.url)[2]
    assert client.status[stream] == 200 and b"event: message_stop" in client.data[stream]
