"""Scenario 6: what resumable streams cost (issue #13), beside the plain relay.

Three sse-relays (Cython scanner) with the same flags: plain; resumable with the journal
in process memory (`relay-resumable: 1` on every request); and resumable with the
journal also mirrored into Redis (`--journal redis://...`, a redis-server started for
it). See `contenders.ResumableRelay`.

- CPU per event: the cost ladder's reference load (many streams, every event its own
  write), the three in turn within each round (who goes first rotates), the median of
  the rounds. Redis's own CPU is sampled at the same window edges and kept apart
  (`side_*`): that cost moved to another process, it did not vanish.
- Memory per stream: each fresh, warmed up, then N concurrent streams; RSS growth over
  the warmed-up baseline at the window's end, divided by N, beside the bytes each stream
  received and the bytes its journal held (the relay's own metrics).

Every run's metrics must show every stream resumable (none, for the plain relay): a
run that quietly relayed plain streams would report no cost at all, so it fails.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench.contenders import ResumableRelay, Running
from bench.plan import Plan
from bench.proc_stats import rss_kib
from bench.records import merge_rounds
from bench.scenarios import STREAMING_KEEPALIVE, Progress, Record, load

JOURNALS = ("off", "memory", "redis")
# CPU runs: journals freed 1 s after their stream ended, so rounds do not pile up.
CPU_RETAIN = 1.0
# Memory runs: still held when the metrics are read after the run.
MEMORY_RETAIN = 300.0
_SIDE_FIGURES = ("side_cpu_s_per_mevent", "side_cpu_util", "side_kernel_share")


def run(plan: Plan, upstream: str, workdir: Path, say: Progress) -> dict[str, Any]:
    """Both parts, and how long each took (the plans keep this scenario's time bounded)."""
    started = time.monotonic()
    found: dict[str, Any] = {"cpu": cpu(plan, upstream, workdir, say)}
    halfway = time.monotonic()
    found["memory"] = memory(plan, upstream, workdir, say)
    found["seconds"] = {
        "cpu": round(halfway - started, 1),
        "memory": round(time.monotonic() - halfway, 1),
    }
    return found


@contextmanager
def _started(
    retain: float, upstream: str, workdir: Path, keepalive: float
) -> Iterator[dict[str, Running]]:
    running: dict[str, Running] = {}
    try:
        for journal in JOURNALS:
            running[journal] = ResumableRelay(journal, retain).start(upstream, workdir, keepalive)
        yield running
    finally:
        for each in running.values():
            each.stop()


def cpu(plan: Plan, upstream: str, workdir: Path, say: Progress) -> list[Record]:
    streams, rate, rounds = plan.resume_cpu
    runs: dict[str, list[Record]] = {journal: [] for journal in JOURNALS}
    with _started(CPU_RETAIN, upstream, workdir, STREAMING_KEEPALIVE) as running:
        for target in running.values():
            # Imports, first allocations, the upstream pool and Redis connections: not
            # in the first round's figure.
            load(target, streams=100, rate=rate, plan=plan, measure=0.5)
        for round_index in range(rounds):
            order = JOURNALS[round_index % 3 :] + JOURNALS[: round_index % 3]
            for journal in order:
                target = running[journal]
                before = admin_metrics(target)
                record = load(
                    target, streams=streams, rate=rate, plan=plan, measure=plan.resume_measure
                )
                _check(journal, record, before, admin_metrics(target))
                say(_line("cpu", journal, record))
                runs[journal].append(record)
    return [_merged(journal, each) for journal, each in runs.items()]


def _merged(journal: str, runs: list[Record]) -> Record:
    """merge_rounds, plus the medians of Redis's figures, which it does not know."""
    merged = merge_rounds(runs)
    for key in _SIDE_FIGURES:
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            merged[key] = statistics.median(values)
    merged["journal"] = journal
    merged["retain_s"] = CPU_RETAIN
    return merged


def memory(plan: Plan, upstream: str, workdir: Path, say: Progress) -> list[Record]:
    streams, rate, measure = plan.resume_memory
    records = []
    for journal in JOURNALS:
        relay = ResumableRelay(journal, MEMORY_RETAIN)
        target = relay.start(upstream, workdir, STREAMING_KEEPALIVE)
        try:
            # As the idle scenario: warm up, settle, then the baseline.
            load(target, streams=100, rate=rate, plan=plan, measure=0.5)
            time.sleep(0.5)
            baseline = rss_kib(target.pids)
            side_baseline = rss_kib(target.side_pids) if target.side_pids else 0
            before = admin_metrics(target)
            redis_before = _redis_figures(target)
            record = load(target, streams=streams, rate=rate, plan=plan, measure=measure)
            # Streams are counted as they finish, just after their last byte went out.
            time.sleep(0.3)
            after = admin_metrics(target)
            _check(journal, record, before, after)
            redis_after = _redis_figures(target)
        finally:
            target.stop()
        record |= {
            "journal": journal,
            "retain_s": MEMORY_RETAIN,
            "rss_baseline_kib": baseline,
            "rss_kib_per_stream": round((record["rss_kib"] - baseline) / streams, 2),
            "received_kib_per_stream": round(
                _delta(before, after, "sse_relay_response_bytes_total") / 1024 / streams, 2
            ),
            "journal_kib_per_stream": round(
                _delta(before, after, "sse_relay_journal_bytes") / 1024 / streams, 2
            ),
        }
        if redis_before is not None and redis_after is not None:
            keys = redis_after[0] - redis_before[0]
            growth = record["side_rss_kib"] - side_baseline
            record |= {
                "side_rss_baseline_kib": side_baseline,
                "side_rss_kib_per_stream": round(growth / streams, 2),
                "redis_new_keys": keys,
                "redis_used_kib_per_stream": round(
                    (redis_after[1] - redis_before[1]) / 1024 / streams, 2
                ),
            }
            if keys < streams:
                raise RuntimeError(f"{relay.label}: {keys} new Redis keys for {streams} streams")
        say(_line("memory", journal, record))
        records.append(record)
    return records


def admin_metrics(target: Running) -> dict[str, float]:
    """The relay's /metrics, each metric summed over its labels."""
    assert target.admin_url is not None, "the resumable contenders have an admin listener"
    with urllib.request.urlopen(target.admin_url + "/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        name = name_labels.split("{", 1)[0]
        found[name] = found.get(name, 0.0) + float(value)
    return found


def _delta(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def _check(journal: str, record: Record, before: dict[str, float], after: dict[str, float]) -> None:
    """Fails the run unless every stream was resumable (none for the plain relay) and
    the Redis journal took every write: else the figures are not what they claim."""
    streams = record["streams"]
    resumable = int(_delta(before, after, "sse_relay_resumable_streams_total"))
    errors = int(_delta(before, after, "sse_relay_journal_errors_total"))
    record["resumable_streams"] = resumable
    record["journal_errors"] = errors
    wanted = 0 if journal == "off" else streams
    problems = []
    if resumable != wanted:
        problems.append(f"{resumable} of {streams} streams resumable, wanted {wanted}")
    if errors:
        problems.append(f"{errors} Redis journal operations failed")
    if record["error_count"]:
        problems.append(f"{record['error_count']} streams failed: {record['errors'][:2]}")
    if problems:
        raise RuntimeError(f"resume-{journal}: " + "; ".join(problems))


def _redis_figures(target: Running) -> tuple[int, int] | None:
    """(keys, used_memory bytes) of the contender's Redis, if it has one: every stream
    journaled there has a key, and used_memory is what Redis's allocator holds for data,
    without RSS's allocator slack."""
    relay_args = target.processes[0].args  # the relay's: its --journal names the Redis
    if "--journal" not in relay_args:
        return None
    url = relay_args[relay_args.index("--journal") + 1]
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return int(client.dbsize()), int(client.info("memory")["used_memory"])
    finally:
        client.close()


def _line(kind: str, journal: str, r: Record) -> str:
    side = ""
    if r.get("side_cpu_s_per_mevent") is not None:
        side = f", redis {r['side_cpu_s_per_mevent']:.1f} µs/ev"
    if kind == "memory":
        figures = (
            f"RSS {r['rss_kib_per_stream']:.1f} KiB/stream, journal "
            f"{r['journal_kib_per_stream']:.1f} of {r['received_kib_per_stream']:.1f} KiB received"
        )
        if "side_rss_kib_per_stream" in r:
            figures += f", redis RSS {r['side_rss_kib_per_stream']:.1f} KiB/stream"
    else:
        figures = f"cpu {r.get('cpu_s_per_mevent') or 0:.1f} µs/ev{side}"
    return (
        f"  resume   {journal:7} {r['streams']:>5} streams x {r['rate_per_stream']:g}/s "
        f"({kind}): {r['resumable_streams']} resumable, delivered {r['delivered_ratio']:.1%}, "
        f"p99 {r['latency_ms']['p99']:.2f} ms, {figures}"
    )
