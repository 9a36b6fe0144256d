"""How big and how long each scenario runs: `full` (make bench) or `quick`."""

from __future__ import annotations

from dataclasses import dataclass, field

# A run "collapses" past either limit; the ladder stops there.
COLLAPSE_P99_MS = 50.0
COLLAPSE_DELIVERED = 0.95


@dataclass(frozen=True)
class Plan:
    name: str
    #: Scenario 2: (concurrent streams, events/s per stream, rounds); contenders take
    #: turns within each round and the median of the rounds counts.
    latency_loads: tuple[tuple[int, float, int], ...]
    latency_measure: float
    latency_min_samples: int  # one stream gets a longer window, for a p99 worth the name
    #: Scenario 1: streams -> aggregate paced rates to climb, lowest first.
    ladder: dict[int, tuple[int, ...]]
    ladder_measure: float
    #: Rounds of each stream count's lowest step (the CPU-per-event reference).
    reference_rounds: int
    #: Scenario 3: silent 95% of the time, keepalive interval 1 s.
    idle_streams: int
    idle_measure: float
    idle_contenders: tuple[str, ...]
    #: Scenario 4: seconds of feeding per timing.
    scanner_seconds: float
    #: Scenario 5: (streams, events/s each, rounds) over h2c; streams over HTTP/3 at
    #: `latency_rate` events/s each.
    h2_loads: tuple[tuple[int, float, int], ...]
    h3_streams: tuple[int, ...]
    #: Scenario 7, a TLS upstream: (streams, events/s per stream, rounds), `tls_measure` s.
    tls_loads: tuple[tuple[int, float, int], ...]
    tls_measure: float
    latency_rate: float = 50.0  # scenario 5's, and scenario 2's below 1000 streams
    idle_rate: float = 10.0  # events/s while a stream is active
    idle_cycle: float = 20.0  # active 1 s, silent 19 s, at a random phase per stream
    idle_duty: float = 0.05
    grace: float = 1.0
    contenders: tuple[str, ...] = field(
        default=("direct", "relay-cython", "relay-python", "nginx", "naive")
    )
    #: Scenario 6, the cost of resumable streams. CPU: (streams, events/s per stream,
    #: rounds) at the cost ladder's reference load, `resume_measure` s each; memory:
    #: (concurrent streams, events/s per stream, seconds), one run per contender. Both
    #: stay at 10k events/s: at 20k the relay journaling to Redis (~60 µs/event) falls
    #: behind on its core, and its streams would hold fewer bytes than the others'.
    #: Events are ~320 B, so 10/s for 15 s is ~50 KiB a stream (a long answer's worth).
    resume_cpu: tuple[int, float, int] = (1000, 10.0, 5)
    resume_measure: float = 3.0
    resume_memory: tuple[int, float, float] = (1000, 10.0, 15.0)

    def latency_window(self, streams: int, rate: float) -> float:
        return max(self.latency_measure, self.latency_min_samples / (streams * rate))

    def ramp(self, streams: int) -> float:
        """Seconds to open `streams` before the window starts (relays connect upstream too)."""
        return 0.5 + streams / 1000


FULL = Plan(
    name="full",
    # 1000 streams x 50/s is 50k events/s: the harness core (emitter and load generator)
    # saturates there, and the direct floor's own p99 swings 2x between runs, so 1000
    # streams run at 20/s (the ladder still climbs to 50/s each, its table shows it).
    # There p99s differ by fractions of a millisecond and move as much between rounds,
    # hence five.
    latency_loads=((1, 50.0, 1), (100, 50.0, 3), (1000, 20.0, 5)),
    latency_measure=4.0,
    latency_min_samples=400,
    ladder={
        1: (1000,),  # one stream: 1 ms timers cap the pace at 1000 events/s
        100: (10_000, 20_000, 30_000, 40_000, 50_000),
        1000: (10_000, 20_000, 30_000, 40_000, 50_000),
    },
    ladder_measure=3.0,
    reference_rounds=3,
    idle_streams=10_000,
    idle_measure=10.0,
    idle_contenders=("direct", "relay-cython", "relay-python", "nginx"),
    scanner_seconds=1.0,
    # 1000 h2c streams run at 20/s, as HTTP/1.1's: at 50/s the harness core saturates.
    # Rounds from 100 streams up: their CPU per event is a target's.
    h2_loads=((1, 50.0, 1), (100, 50.0, 3), (1000, 20.0, 3)),
    h3_streams=(1, 100),
    # The cost ladder's reference loads, where each event is its own read and write.
    tls_loads=((100, 100.0, 3), (1000, 10.0, 3)),
    tls_measure=3.0,
)

QUICK = Plan(
    name="quick",
    latency_loads=((1, 50.0, 1), (100, 50.0, 1)),
    latency_measure=2.0,
    latency_min_samples=100,
    ladder={100: (10_000, 30_000)},
    ladder_measure=2.0,
    reference_rounds=1,
    idle_streams=2_000,
    idle_measure=4.0,
    idle_contenders=("relay-cython",),
    scanner_seconds=0.2,
    h2_loads=((100, 50.0, 1), (1000, 20.0, 1)),
    h3_streams=(100,),
    tls_loads=((1000, 10.0, 1),),
    tls_measure=2.0,
    resume_cpu=(1000, 10.0, 2),
    resume_measure=2.0,
    resume_memory=(500, 20.0, 4.0),
)

PLANS = {"full": FULL, "quick": QUICK}
