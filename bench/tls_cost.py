"""Scenario 7: the path users run, a TLS upstream, beside nginx's TLS proxy (issue #14).

The emitter's TLS listener (a trustme CA made for the run) serves HTTP/2 or HTTP/1.1 by
ALPN, as the real API does. Contenders: sse-relay with `--upstream-protocol auto` (it
picks h2 there), sse-relay with `--upstream-protocol http/1.1` (the default, chosen by
this scenario's numbers), and nginx with `proxy_pass https://`, verification on,
session reuse and a keepalive pool. Clients
reach all three over cleartext HTTP/1.1, as in scenarios 1 and 2.

`direct` (the load generator straight to the cleartext emitter) runs in the same rounds
and is the floor for added latency: what the contenders add includes the emitter's TLS.
Each run also counts the contender's TLS connections to the emitter, which shows what
it negotiated (a few multiplexed HTTP/2 connections, or one per stream).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bench.contenders import Direct, Running
from bench.plan import Plan
from bench.proc_stats import established_to
from bench.records import merge_rounds
from bench.scenarios import STREAMING_KEEPALIVE, Progress, Record, load, started

TLS_CONTENDERS = ("relay-tls-auto", "relay-tls-h1", "nginx-tls")
#: More ramp per 1000 streams than the plan's: over HTTP/1.1 each stream beyond the
#: 256 pooled connections (the relay's and nginx's idle cap) is a new TLS handshake, on
#: the contender's core and the emitter's; they must be done before the window opens.
HANDSHAKE_RAMP = 2.0
ORDER = ("direct", *TLS_CONTENDERS)


@contextmanager
def _started(upstream: str, tls_upstream: str, workdir: Path) -> Iterator[dict[str, Running]]:
    with started(TLS_CONTENDERS, tls_upstream, workdir, STREAMING_KEEPALIVE) as running:
        yield {"direct": Direct().start(upstream, workdir, STREAMING_KEEPALIVE), **running}


def run(plan: Plan, upstream: str, tls_upstream: str, workdir: Path, say: Progress) -> list[Record]:
    """Each of `plan.tls_loads` in rounds, the four in turn (who goes first rotates);
    one merged record (medians) per contender and load."""
    tls_port = urlsplit(tls_upstream).port or 443
    records = []
    with _started(upstream, tls_upstream, workdir) as running:
        for key in TLS_CONTENDERS:
            # TLS handshakes, imports, first allocations: not in the first round.
            load(running[key], streams=100, rate=10, plan=plan, measure=0.5)
        for streams, rate, rounds in plan.tls_loads:
            runs: dict[str, list[Record]] = {key: [] for key in ORDER}
            for round_index in range(rounds):
                shift = round_index % len(ORDER)
                for key in ORDER[shift:] + ORDER[:shift]:
                    target = running[key]
                    record = load(
                        target,
                        streams=streams,
                        rate=rate,
                        plan=plan,
                        measure=plan.tls_measure,
                        ramp=plan.ramp(streams) + HANDSHAKE_RAMP * streams / 1000,
                    )
                    record["upstream_tls_connections"] = established_to(target.pids, tls_port)
                    say(_line(record))
                    runs[key].append(record)
            records += [merge_rounds(each) for each in runs.values()]
    return records


def _line(r: Record) -> str:
    cpu = f" cpu {r['cpu_s_per_mevent']:.1f} µs/ev" if r.get("cpu_s_per_mevent") else ""
    errors = f" errors {r['error_count']}: {r['errors'][:1]}" if r["error_count"] else ""
    return (
        f"  tls      {r['contender']:14} {r['streams']:>5} streams x {r['rate_per_stream']:g}/s: "
        f"delivered {r['delivered_ratio']:.1%}, p50 {r['latency_ms']['p50']:.2f} "
        f"p99 {r['latency_ms']['p99']:.2f} ms{cpu}, harness {r.get('harness_cpu_util', 0):.0%}, "
        f"{r['upstream_tls_connections']} TLS connections upstream{errors}"
    )
