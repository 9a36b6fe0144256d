"""The relay's Prometheus metrics: the one place anything is counted.

prometheus_client takes a lock on every update, so nothing here runs per chunk: a
stream adds plain integers on itself and reports once, at its end
(`stream_finished`). Keepalives come once per idle stream per interval (10,000 a second
at 10,000 idle streams), so they are a plain int read at scrape (`PlainCounter`);
refusals and dropped datagrams are rare enough to count as they happen. The registry
is private (not the library's global one), so each relay process, and each test, has
its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import __version__
from relay.core.providers import PROVIDER_NAMES
from relay.core.stream_record import Outcome, StreamRecord
from relay.sse.scanner import IMPLEMENTATION

# `_created` series double every counter's output and nobody graphs them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: The media type `render` produces.
CONTENT_TYPE = CONTENT_TYPE_LATEST

HTTP_VERSIONS = ("1.0", "1.1", "2", "3")
#: Upstream failure kinds (`RelayError.kind`, plus the ones the stream detects itself).
UPSTREAM_ERROR_KINDS = (
    "unavailable",
    "certificate",
    "connect_timeout",
    "read_timeout",
    "lost",
    "truncated",
)
#: Why the relay closed a client connection it found hostile (HTTP/2).
HOSTILE_CLOSE_REASONS = ("rapid_reset", "control_flood", "header_timeout")
_CLIENT_ABORT_KINDS = {Outcome.CLIENT_ABORT: "disconnect", Outcome.CLIENT_STALL: "send_timeout"}

# Buckets in seconds. TTFB: model latency, seconds to a minute. Duration: thinking turns
# run for minutes. Silence: around the keepalive interval (15 s) and the load-balancer
# idle timeouts (60-120 s) that keepalives exist to beat.
_TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_DURATION_BUCKETS = (0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800)
_SILENCE_BUCKETS = (0.1, 0.5, 1, 5, 10, 15, 30, 60, 120, 300, 600)


class PlainCounter(Collector):
    """A counter that is a plain int, read when scraped: no lock per update (a locked
    `Counter.inc` per keepalive was 3% of the relay's CPU at 10,000 idle streams). The
    relay's loop is the only writer."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.value = 0
        self._name = name
        self._documentation = documentation
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.value)


class RelayMetrics:
    """Every metric the relay exports, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)  # CPU, memory, open files: read at scrape
        info = Gauge(
            "sse_relay_info", "Version and SSE scanner", ["version", "scanner"], registry=registry
        )
        info.labels(__version__, IMPLEMENTATION).set(1)
        self._active = Gauge(
            "sse_relay_streams_active", "Streams in progress", ["http_version"], registry=registry
        )
        self._streams = Counter(
            "sse_relay_streams",
            "Finished streams, by the status sent to the client ('none' if none was) and outcome",
            ["http_version", "status", "outcome"],
            registry=registry,
        )
        # Its own counter, so that the established series of sse_relay_streams_total keep
        # their labels; `provider` takes only the table's names and `unknown`.
        self._provider_streams = Counter(
            "sse_relay_provider_streams",
            "Finished streams by provider (relay/core/providers.py, or unknown) and outcome",
            ["provider", "outcome"],
            registry=registry,
        )
        self._bytes_in = Counter(
            "sse_relay_request_bytes", "Request body bytes received from clients", registry=registry
        )
        self._bytes_out = Counter(
            "sse_relay_response_bytes",
            "Upstream response body bytes relayed to clients (keepalives excluded)",
            registry=registry,
        )
        self._events = Counter(
            "sse_relay_events",
            "SSE frames relayed from upstream, pings included",
            registry=registry,
        )
        self._pings = Counter(
            "sse_relay_pings", "Upstream `event: ping` frames relayed", registry=registry
        )
        self._keepalives = PlainCounter(
            "sse_relay_keepalives", "Keepalive frames the relay inserted", registry
        )
        self._retries = Counter(
            "sse_relay_upstream_retries", "Upstream tries after the first", registry=registry
        )
        self._upstream_errors = Counter(
            "sse_relay_upstream_errors",
            "Streams upstream failed (after any retries), by kind",
            ["kind"],
            registry=registry,
        )
        self._client_aborts = Counter(
            "sse_relay_client_aborts",
            "Streams the client ended early: disconnect (close or reset) or send_timeout",
            ["kind"],
            registry=registry,
        )
        self._refused = Counter(
            "sse_relay_refused",
            "Requests and connections the relay answered itself (limits, policy, overload)",
            ["status"],
            registry=registry,
        )
        self._hostile = Counter(
            "sse_relay_connections_closed",
            "Client connections the relay closed as hostile: rapid_reset, control_flood "
            "(PING/SETTINGS), header_timeout (a stalled HTTP/2 header block)",
            ["reason"],
            registry=registry,
        )
        self._resumable = Counter(
            "sse_relay_resumable_streams",
            "Streams opened resumable (relay-resumable: 1)",
            registry=registry,
        )
        self._resumes = Counter(
            "sse_relay_resumes",
            "Resume and cancel requests, by outcome: resumed, cancelled, not_found_error "
            "(unknown, expired or another caller's), invalid_request_error (bad offset)",
            ["outcome"],
            registry=registry,
        )
        self._detached_gauge = Gauge(
            "sse_relay_streams_detached",
            "Resumable streams running with no client attached",
            registry=registry,
        )
        self._journal_gauge = Gauge(
            "sse_relay_journal_bytes",
            "Bytes the resumable streams' journals hold",
            registry=registry,
        )
        self._detached_seconds = Counter(
            "sse_relay_upstream_detached_seconds",
            "Upstream time spent on resumable streams with no client attached",
            registry=registry,
        )
        self._replayed = Counter(
            "sse_relay_resume_replayed_bytes",
            "Journal bytes sent again to resuming clients",
            registry=registry,
        )
        self._replayed_retries = Counter(
            "sse_relay_replayed_retries",
            "Identical retries of a dropped stream answered from its journal (--replay-retries)",
            registry=registry,
        )
        self._journal_errors = Counter(
            "sse_relay_journal_errors",
            "Shared journal (Redis) operations that failed, by op: write (a flush; the "
            "streams relay on, resumable on this instance only), read (a resume)",
            ["op"],
            registry=registry,
        )
        self._sse_compressed = Counter(
            "sse_relay_sse_compressed",
            "SSE responses that arrived content-encoded and so took no keepalives",
            registry=registry,
        )
        self._native = Counter(
            "sse_relay_native_path_streams",
            "Streams whose body the Cython body pump handed to the client itself past the "
            "first bytes: no Python per chunk to an HTTP/1.1 client, one call to an HTTP/2 "
            "or HTTP/3 one or a resumable stream's journal (HTTP/1.1 upstream; README "
            "Architecture)",
            registry=registry,
        )
        self._quic_dropped = Counter(
            "sse_relay_quic_dropped",
            "UDP datagrams on the HTTP/3 port that belonged to no QUIC connection",
            registry=registry,
        )
        self._ttfb = Histogram(
            "sse_relay_upstream_ttfb_seconds",
            "First upstream try started -> response head relayed",
            buckets=_TTFB_BUCKETS,
            registry=registry,
        )
        self._duration = Histogram(
            "sse_relay_stream_duration_seconds",
            "Stream opened -> finished, every stream",
            buckets=_DURATION_BUCKETS,
            registry=registry,
        )
        self._silence = Histogram(
            "sse_relay_upstream_longest_silence_seconds",
            "Per stream with a response head: the longest time upstream sent nothing",
            buckets=_SILENCE_BUCKETS,
            registry=registry,
        )
        # Series that exist from the start read 0 instead of being absent.
        for version in HTTP_VERSIONS:
            self._active.labels(version)
        for kind in UPSTREAM_ERROR_KINDS:
            self._upstream_errors.labels(kind)
        for provider in PROVIDER_NAMES:
            self._provider_streams.labels(provider, Outcome.COMPLETED.value)
        for kind in _CLIENT_ABORT_KINDS.values():
            self._client_aborts.labels(kind)
        for reason in HOSTILE_CLOSE_REASONS:
            self._hostile.labels(reason)

    def stream_started(self, http_version: str) -> None:
        self._active.labels(http_version).inc()

    def stream_finished(self, record: StreamRecord) -> None:
        """Everything a stream contributes, in one go at its end."""
        version = record.http_version
        self._active.labels(version).dec()
        status = "none" if record.status is None else str(record.status)
        self._streams.labels(version, status, record.outcome.value).inc()
        self._provider_streams.labels(record.provider, record.outcome.value).inc()
        self._bytes_in.inc(record.bytes_in)
        if record.detached_seconds:
            self._detached_seconds.inc(record.detached_seconds)
        if record.sse_compressed:
            self._sse_compressed.inc()
        self._bytes_out.inc(record.bytes_out)
        if record.events:
            self._events.inc(record.events)
            self._pings.inc(record.pings)
        if record.retries:
            self._retries.inc(record.retries)
        if record.upstream_error is not None:
            self._upstream_errors.labels(record.upstream_error).inc()
        abort = _CLIENT_ABORT_KINDS.get(record.outcome)
        if abort is not None:
            self._client_aborts.labels(abort).inc()
        self._duration.observe(record.duration)
        if record.ttfb is not None:
            self._ttfb.observe(record.ttfb)
        if record.longest_silence is not None:
            self._silence.observe(record.longest_silence)

    def keepalive(self) -> None:
        self._keepalives.value += 1

    def refused(self, status: int) -> None:
        self._refused.labels(str(status)).inc()

    def connection_closed(self, reason: str) -> None:
        """A client connection closed as hostile (`HOSTILE_CLOSE_REASONS`)."""
        self._hostile.labels(reason).inc()

    def watch_resume(self, detached: Callable[[], int], journal_bytes: Callable[[], int]) -> None:
        """The resume gauges, read at scrape time (nothing per event)."""
        self._detached_gauge.set_function(detached)
        self._journal_gauge.set_function(journal_bytes)

    def resumable_started(self) -> None:
        self._resumable.inc()

    def resumed(self, outcome: str, replayed: int = 0) -> None:
        """A resume request answered (`outcome`), with `replayed` journal bytes."""
        self._resumes.labels(outcome).inc()
        self._replayed.inc(replayed)

    def retry_replayed(self) -> None:
        """An identical retry was answered from a dropped stream's journal."""
        self._replayed_retries.inc()

    def journal_failed(self, op: str) -> None:
        self._journal_errors.labels(op).inc()

    def native_path(self) -> None:
        self._native.inc()

    def quic_dropped(self) -> None:
        self._quic_dropped.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 if absent), e.g. `value("sse_relay_keepalives_total")`."""
        return self.registry.get_sample_value(name, labels) or 0.0
