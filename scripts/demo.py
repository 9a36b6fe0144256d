"""`make demo`: the failure sse-relay prevents, side by side, in about 20 seconds.

One simulated thinking turn (`sse-relay sim`, silent for a while after its first
thinking delta) goes twice through a load balancer that kills idle connections (an
idle-killing TCP proxy, `idle_proxy.py`), read each time by the official `anthropic`
Python SDK:

1. client -> proxy -> upstream: the proxy resets the stream mid-response and the SDK
   raises its own transport error;
2. client -> proxy -> sse-relay -> upstream (the proxy in front of the relay, where a
   load balancer sits): `: keepalive` comments cross the silence and the turn completes.

Raw bytes are read alongside the SDK (a tee on its HTTP transport) to show when each
keepalive arrived. The relay's JSON log goes to a file; its path is printed.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import anthropic
import httpx2
from idle_proxy import IdleKillingProxy

# Production scaled down 15x so the demo takes seconds: a 60 s AWS ALB idle timeout,
# a 90 s extended-thinking pause, and the relay's default 15 s keepalive interval.
SCALE = 15
IDLE = 4.0
GAP = 6.0
KEEPALIVE = 1.0
KEEPALIVE_BYTES = b": keepalive"


def _start(args: list[str], log: IO[bytes]) -> tuple[subprocess.Popen[bytes], int]:
    """Runs `python -m relay ARGS`; returns it and the port its ready line names."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", *args], stdout=subprocess.PIPE, stderr=log
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"demo: {args[0]} did not start (see {log.name})")
    address = line.split("http://", 1)[1].split()[0]
    return proc, int(address.rsplit(":", 1)[1])


class _Tee(httpx2.SyncByteStream):
    """The response body as the SDK reads it, each chunk shown to `seen` first."""

    def __init__(self, inner: httpx2.SyncByteStream, seen: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._seen = seen

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._seen(chunk)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _TeeTransport(httpx2.HTTPTransport):
    """httpx2's own transport, with every response body teed to `seen`."""

    def __init__(self, seen: Callable[[bytes], None]) -> None:
        super().__init__()
        self._seen = seen

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, self._seen),
            extensions=response.extensions,
        )


def _turn(port: int) -> tuple[bool, int]:
    """Streams one turn through 127.0.0.1:`port`, printing what arrives and when.

    Returns whether it completed, and how many keepalives arrived."""
    start = time.monotonic()
    keepalives = 0

    def stamp() -> str:
        return f"    {time.monotonic() - start:5.2f} s  "

    def seen(chunk: bytes) -> None:
        nonlocal keepalives
        for _ in range(chunk.count(KEEPALIVE_BYTES)):
            keepalives += 1
            print(f"{stamp()}: keepalive   (raw bytes; the SDK skips comments)")

    http_client = httpx2.Client(transport=_TeeTransport(seen), timeout=30)
    client = anthropic.Anthropic(
        base_url=f"http://127.0.0.1:{port}",
        api_key="sk-demo",
        max_retries=0,
        http_client=http_client,
    )
    script = f'{{"gaps": [[2, {GAP}]]}}'  # silence after the first thinking delta
    try:
        stream = client.messages.create(
            model="claude-sim-1",
            max_tokens=1024,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[{"role": "user", "content": "Think hard, then answer."}],
            stream=True,
            extra_headers={"x-sim-script": script},
        )
        for event in stream:
            detail = f" ({event.delta.type})" if event.type == "content_block_delta" else ""
            print(f"{stamp()}{event.type}{detail}")
    except Exception as exc:  # the point of the demo: show whatever the SDK raises
        name = f"{type(exc).__module__.split('.')[0]}.{type(exc).__qualname__}"
        print(f"{stamp()}the SDK raised {name}: {exc}")
        print("             (the body had started, so the SDK does not retry: the turn is lost)")
        return False, keepalives
    finally:
        client.close()
    print(f"{stamp()}the turn completed")
    return True, keepalives


def main() -> int:
    began = time.monotonic()
    logs = Path(tempfile.mkdtemp(prefix="sse-relay-demo-"))
    print("sse-relay demo: a thinking pause longer than a load balancer's idle timeout.")
    print(f"  Production's timings divided by {SCALE}:")
    print(f"    proxy idle timeout {IDLE:g} s  = a {IDLE * SCALE:g} s AWS ALB idle timeout")
    print(f"    sim silence        {GAP:g} s  = a {GAP * SCALE:g} s extended-thinking pause")
    print(f"    relay keepalive    {KEEPALIVE:g} s  = the relay's default {KEEPALIVE * SCALE:g} s")
    with (logs / "sim.log").open("wb") as sim_log, (logs / "relay.log").open("wb") as relay_log:
        sim, sim_port = _start(["sim", "--listen", "127.0.0.1:0"], sim_log)
        relay, relay_port = _start(
            [
                "--listen",
                "127.0.0.1:0",
                "--upstream",
                f"http://127.0.0.1:{sim_port}",
                "--keepalive-interval",
                str(KEEPALIVE),
                "--admin-listen",
                "off",  # a demo must not collide with a relay already on the admin port
            ],
            relay_log,
        )
        print(f"  The relay's JSON log: {relay_log.name}")
        bare = IdleKillingProxy(sim_port, IDLE).start()
        fronted = IdleKillingProxy(relay_port, IDLE).start()
        try:
            print(f"\n1. client -> idle-killing proxy ({IDLE:g} s) -> upstream, no relay")
            died = not _turn(bare.port)[0]
            print(f"\n2. client -> idle-killing proxy ({IDLE:g} s) -> sse-relay -> upstream")
            completed, keepalives = _turn(fronted.port)
        finally:
            bare.close()
            fronted.close()
            for proc in (relay, sim):
                proc.terminate()
                proc.wait(10)
    print(
        f"\nWithout the relay: {'killed mid-response' if died else 'not killed (unexpected)'}"
        f" ({bare.kills} idle kill). With it: "
        f"{'completed' if completed else 'FAILED'}, {keepalives} keepalives, "
        f"{fronted.kills} idle kills. {time.monotonic() - began:.1f} s in all."
    )
    return 0 if died and completed else 1


if __name__ == "__main__":
    raise SystemExit(main())
