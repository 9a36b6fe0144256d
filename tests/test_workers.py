"""`--workers N`: workers share the port, a dead one is replaced, SIGTERM drains them all.

Which worker holds a connection is read from /proc (socket inodes in the process's file
descriptors), so the tests never guess how the kernel spread connections.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import threading
from datetime import datetime
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.ops.supervisor import _Slot
from tests.clients import (
    KEEPALIVE,
    MESSAGE_PARAMS,
    raw_http,
    raw_stream,
    script,
    sigterm_during_streams,
    wait_for,
)
from tests.h3client import h3_connect
from tests.relayproc import RelayProcess, run_cli
from tests.simserver import SimServer

_READY = re.compile(rb"worker (\d+) ready \(pid (\d+)\)")
_RESTART = re.compile(
    r"worker 1 \(pid \d+\) was killed by SIGKILL; starting a new one in ([\d.]+) s$"
)
# A worker's id, in a JSON log line ({"worker": 1, ...}) or a text one (worker=1 ...).
_WORKER = re.compile(rb'^\{?"?worker"?[=:] ?(\d+)')


def _workers(relay: RelayProcess) -> dict[int, int]:
    """Worker id -> pid of its latest process, from the supervisor's log."""
    return {int(wid): int(pid) for wid, pid in _READY.findall(relay.stderr_text)}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _connection_owner(pids: list[int], server_port: int, client_port: int | None) -> int | None:
    """The pid holding an accepted connection to `server_port` (from `client_port`)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state != "01" or int(local.rsplit(":", 1)[1], 16) != server_port:
                continue
            if client_port is None or int(remote.rsplit(":", 1)[1], 16) == client_port:
                inodes.add(inode)
    for pid in pids:
        if inodes & _socket_inodes(pid):
            return pid
    return None


def _request() -> bytes:
    body = json.dumps({**MESSAGE_PARAMS, "stream": True}).encode()
    return (
        b"POST /v1/messages HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    )


def test_both_workers_serve_on_one_port_and_name_themselves_in_logs(sim: SimServer) -> None:
    # A body over the limit is refused by the relay itself, which logs it.
    with RelayProcess(sim.url, "--workers", "2", "--max-body-bytes", "10") as relay:
        assert b" workers=2" in relay.ready_line
        assert sorted(_workers(relay)) == [1, 2]
        # Resumes land on any worker: without a shared journal, the operator is told.
        assert relay.stderr_text.count(b"with the journal in memory: a resume") == 1
        refusal = b"POST /v1/messages HTTP/1.1\r\nhost: r\r\ncontent-length: 11\r\n\r\n"

        def logged_by() -> set[int]:
            return {
                int(match.group(1))
                for line in relay.stderr_text.splitlines()
                if b"413" in line and (match := _WORKER.match(line))
            }

        # Every new connection is hashed to one of the two listening sockets.
        for _ in range(200):
            assert b" 413 " in raw_http(relay.port, refusal)[:20]
            if logged_by() == {1, 2}:
                break
        assert logged_by() == {1, 2}
        lines = [line for line in relay.stderr_text.splitlines() if line.strip()]
        assert all(_WORKER.match(line) or b'"worker": "supervisor"' in line for line in lines)


def test_a_killed_worker_spares_the_others_streams_and_is_replaced(sim: SimServer) -> None:
    long_stream = script(gaps=[[2, 1.5]])
    direct = raw_stream(sim.url, headers=long_stream)[2]
    with RelayProcess(sim.url, "--workers", "2") as relay:
        first = _workers(relay)
        results: list[bytes] = []
        before = len(sim.requests)
        stream = threading.Thread(
            target=lambda: results.append(raw_stream(relay.url, headers=long_stream)[2])
        )
        stream.start()
        sim.wait_for(lambda: len(sim.requests) > before)
        pids = list(first.values())
        wait_for(lambda: _connection_owner(pids, relay.port, None), timeout=10.0)
        holder = _connection_owner(pids, relay.port, None)
        (victim_id,) = [wid for wid, pid in first.items() if pid != holder]
        os.kill(first[victim_id], signal.SIGKILL)

        wait_for(lambda: _workers(relay)[victim_id] != first[victim_id], timeout=10.0)
        replacement = _workers(relay)[victim_id]
        stream.join(10)
        assert results and results[0].replace(KEEPALIVE, b"") == direct
        assert b"was killed by SIGKILL; starting a new one" in relay.stderr_text

        # The replacement accepts connections and relays on them.
        assert holder is not None
        assert _relay_through(replacement, [holder, replacement], relay.port).startswith(
            b"HTTP/1.1 200 "
        )


def _supervisor_lines(relay: RelayProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in relay.stderr_text.splitlines() if line.startswith(b"{")]
    return [line for line in lines if line.get("worker") == "supervisor"]


def _seconds(stamp: object) -> float:
    return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()


def test_a_worker_dying_again_and_again_is_restarted_ever_later(sim: SimServer) -> None:
    """Restart backoff: a worker killed three times in a row is replaced after 0.2, then
    0.4, then 0.8 s (logged, and waited out: each replacement starts no sooner), while
    the other worker runs on untouched."""
    with RelayProcess(sim.url, "--workers", "2") as relay:
        first = _workers(relay)
        for _ in range(3):
            victim = _workers(relay)[1]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: _workers(relay)[1] != victim, timeout=15.0)  # noqa: B023
        assert _workers(relay)[2] == first[2]
        lines = _supervisor_lines(relay)
    deaths = [
        (line, float(match[1])) for line in lines if (match := _RESTART.match(str(line["message"])))
    ]
    assert [delay for _, delay in deaths] == [0.2, 0.4, 0.8]
    starts = [line for line in lines if str(line["message"]).startswith("started worker 1 ")]
    assert len(starts) == 4  # the first start and three replacements
    for (death, delay), start in zip(deaths, starts[1:], strict=True):
        # Log stamps are truncated to milliseconds.
        assert _seconds(start["time"]) - _seconds(death["time"]) >= delay - 0.005


def test_restart_backoff_doubles_to_its_cap_and_starts_over_after_30_s() -> None:
    """The schedule itself (sans-IO): 0.2 s doubling per death in a row, capped at 10 s;
    a worker that ran 30 s before dying counts as a first death again."""
    slot = _Slot(1)
    delays = [slot.backoff(now=0.0) for _ in range(8)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    slot.started = 100.0
    assert slot.backoff(now=129.9) == 10.0  # ran 29.9 s: still in a row
    slot.started = 200.0
    assert slot.backoff(now=230.0) == 0.2  # ran 30 s: starts over
    slot.started = 230.2  # its replacement, dying at once: in a row again
    assert slot.backoff(now=230.5) == 0.4


def _relay_through(pid: int, pids: list[int], port: int) -> bytes:
    """Connects until process `pid` accepts the connection; its response to a stream."""
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client_port = client.getsockname()[1]
            wait_for(lambda: _connection_owner(pids, port, client_port), timeout=10.0)  # noqa: B023
            if _connection_owner(pids, port, client_port) != pid:
                continue
            client.sendall(_request())
            response = b"".join(iter(lambda: client.recv(65536), b""))
            assert b"event: message_stop" in response
            return response
    raise AssertionError(f"pid {pid} accepted none of 200 connections")


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_drains_live_streams_and_exits_0(sim: SimServer, workers: str) -> None:
    short, long = script(gaps=[[2, 0.5]]), script(gaps=[[2, 8.0]])
    direct = raw_stream(sim.url, headers=short)[2]
    with RelayProcess(sim.url, "--workers", workers, "--drain-timeout", "5") as relay:
        code, results = sigterm_during_streams(relay, sim, [short] * 15 + [long] * 5)
    assert code == 0
    for index in range(15):
        assert results[index].replace(KEEPALIVE, b"") == direct
    for index in range(15, 20):  # past the drain: ended cleanly, told to retry
        assert results[index].endswith(b"\n\n") and b"sse-relay is restarting" in results[index]


def test_workers_drain_and_exit_when_the_supervisor_is_killed(sim: SimServer) -> None:
    """A SIGKILLed supervisor cannot forward SIGTERM; its workers drain by themselves:
    the stream in flight runs to its end, then every worker exits."""
    fields = script(gaps=[[2, 1.0]])
    direct = raw_stream(sim.url, headers=fields)[2]
    args = ("--workers", "2", "--drain-timeout", "5")
    # expect_exit=None: the supervisor's exit is the SIGKILL's; the log is still checked.
    with RelayProcess(sim.url, *args, expect_exit=None) as relay:
        pids = list(_workers(relay).values())
        results: list[bytes] = []
        before = len(sim.requests)
        stream = threading.Thread(
            target=lambda: results.append(raw_stream(relay.url, headers=fields)[2])
        )
        stream.start()
        sim.wait_for(lambda: len(sim.requests) > before)  # in flight, upstream has it
        relay.proc.kill()
        relay.proc.wait()
        stream.join(15)
        wait_for(lambda: not any(_running(pid) for pid in pids), timeout=10.0)
        assert b"draining 1 streams" in relay.stderr_text  # the stream's worker drained it
    assert results and results[0].replace(KEEPALIVE, b"") == direct


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by whoever adopted it, maybe late)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_a_worker_that_cannot_start_fails_the_supervisor(tmp_path: Path) -> None:
    # Files that exist (so the configuration passes) but hold no certificate: only a
    # worker starting its TLS listener finds out.
    garbage = tmp_path / "not-a-cert.pem"
    garbage.write_text("not a certificate\n")
    bad = run_cli(
        [
            "--workers=2",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--tls-listen=127.0.0.1:0",
            f"--tls-cert={garbage}",
            f"--tls-key={garbage}",
        ],
        # The supervisor's account of the failure is the test's point.
        expect_errors=[
            r"^worker \d \(pid \d+\) did not get ready$",
            r"^a worker did not start; stopping the others$",
            r"^worker \d \(pid \d+\) exited with code 2$",
        ],
    )
    assert bad.returncode == 1
    assert "did not get ready" in bad.stderr and "listening on" not in bad.stdout
    # The worker said why, as any configuration error is said: no traceback.
    assert "sse-relay: error: --tls-cert/--tls-key:" in bad.stderr


def _streams_served(admin_port: int, http_version: str) -> float:
    """Streams one worker finished over `http_version`, from its own /metrics."""
    text = httpx2.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sse_relay_streams_total"
        and sample.labels.get("http_version") == http_version
    )


def test_tls_and_http3_listeners_are_shared_too(
    sim: SimServer, relay_tls_args: list[str], ca_file: Path
) -> None:
    fields: dict[str, object] = {"gaps": [[2, 0.3]]}
    direct = raw_stream(sim.url, headers={"x-sim-script": json.dumps(fields)})[2]
    port = _two_free_ports()  # worker k's admin listener is on port + k - 1
    args = (*relay_tls_args, "--http3", "--workers", "2")
    with RelayProcess(sim.url, *args, admin=f"127.0.0.1:{port}") as relay:
        admins = (port, port + 1)
        assert relay.tls_url and relay.h3_port
        trust = ssl.create_default_context(cafile=str(ca_file))
        with httpx2.Client(verify=trust, http2=True) as client:
            response = client.post(
                relay.tls_url + "/v1/messages",
                content=json.dumps({**MESSAGE_PARAMS, "stream": True}).encode(),
                headers={"x-sim-script": json.dumps(fields)},
            )
        assert response.http_version == "HTTP/2"
        assert response.content.replace(KEEPALIVE, b"") == direct

        async def h3_streams() -> list[bytes]:
            relayed = []
            # New client ports, until the kernel has given each worker a connection.
            for _ in range(40):
                async with h3_connect(relay.h3_port, str(ca_file)) as h3:
                    stream = h3.request(fields)
                    await h3.wait_until(lambda: stream in h3.ended)  # noqa: B023
                    assert h3.status[stream] == 200
                    relayed.append(bytes(h3.data[stream]))
                served = [await asyncio.to_thread(_streams_served, a, "3") for a in admins]
                if len(relayed) >= 4 and all(served):
                    break
            return relayed

        streams = asyncio.run(h3_streams())
        for relayed in streams:
            assert relayed.replace(KEEPALIVE, b"") == direct
        # Both workers served HTTP/3, and between them every stream we sent.
        wait_for(lambda: sum(_streams_served(a, "3") for a in admins) == len(streams))
        assert all(_streams_served(a, "3") > 0 for a in admins), len(streams)


def _two_free_ports() -> int:
    """A port P such that P and P + 1 were both free a moment ago."""
    for _ in range(50):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two adjacent free ports")


def test_each_worker_has_its_own_admin_port(sim: SimServer) -> None:
    port = _two_free_ports()
    with RelayProcess(sim.url, "--workers", "2", admin=f"127.0.0.1:{port}") as relay:
        pids = set()
        for admin in (port, port + 1):
            health = httpx2.get(f"http://127.0.0.1:{admin}/healthz", timeout=5)
            assert health.status_code == 200
            pids.add(_admin_owner(list(_workers(relay).values()), admin))
    assert len(pids) == 2 and None not in pids


def _admin_owner(pids: list[int], port: int) -> int | None:
    """The worker pid listening on `port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
            for pid in pids:
                if fields[9] in _socket_inodes(pid):
                    return pid
    return None
