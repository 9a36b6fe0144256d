"""What the load generator samples at its measurement window's edges: the contender's
CPU and RSS, any side process's (its Redis), how busy the harness core was, and the
harness's own processes' CPU (the load generator itself and the emitter)."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.proc_stats import cores_busy_seconds, cpu_seconds, rss_kib, user_system_seconds


class Sampler:
    """Contender CPU and RSS at the window's edges (the sample times are kept: a busy
    loop may take them late, and rates use the real span), and how busy the load
    generator's own cores were: near 100% the run measures the harness, not the contender.

    The core's busy time counts whoever ran there (on a shared machine, neighbours too);
    the harness's own CPU per event (`loadgen_us_per_event`, `emitter_us_per_event`) is
    what this harness costs, whoever else was there."""

    def __init__(
        self, pids: tuple[int, ...], side: tuple[int, ...] = (), harness: tuple[int, ...] = ()
    ) -> None:
        self.pids = pids
        self.side = side
        self.harness = harness
        self.harness_cores = sorted(os.sched_getaffinity(0))
        # (time ns, harness busy s, contender CPU s, contender user s, contender kernel s)
        self.samples: list[tuple[int, float, float, float, float]] = []
        self.side_samples: list[tuple[float, float, float]] = []
        # (load generator CPU s, emitter CPU s)
        self.own_samples: list[tuple[float, float]] = []
        self.rss_kib = 0
        self.side_rss_kib = 0

    def sample(self) -> None:
        cpu, user, system = 0.0, 0.0, 0.0
        if self.pids:
            cpu = cpu_seconds(self.pids)
            user, system = user_system_seconds(self.pids)
            self.rss_kib = rss_kib(self.pids)
        if self.side:
            self.side_samples.append((cpu_seconds(self.side), *user_system_seconds(self.side)))
            self.side_rss_kib = rss_kib(self.side)
        emitter = cpu_seconds(self.harness) if self.harness else 0.0
        self.own_samples.append((cpu_seconds((os.getpid(),)), emitter))
        busy = cores_busy_seconds(self.harness_cores)
        self.samples.append((time.monotonic_ns(), busy, cpu, user, system))

    def figures(self, events_per_s: float) -> dict[str, Any]:
        if len(self.samples) != 2:
            return {}
        (t_a, busy_a, cpu_a, user_a, system_a), (t_b, busy_b, cpu_b, user_b, system_b) = (
            self.samples
        )
        span = (t_b - t_a) / 1e9
        found: dict[str, Any] = {
            "harness_cpu_util": round((busy_b - busy_a) / span / len(self.harness_cores), 4)
        }
        (loadgen_a, emitter_a), (loadgen_b, emitter_b) = self.own_samples
        found |= _per_event("loadgen", (loadgen_b - loadgen_a) / span, events_per_s)
        if self.harness:
            found |= _per_event("emitter", (emitter_b - emitter_a) / span, events_per_s)
        if self.pids:
            utilization = (cpu_b - cpu_a) / span
            ticked = (user_b - user_a) + (system_b - system_a)
            found |= {
                "cpu_util": round(utilization, 4),
                "cpu_s_per_mevent": (
                    round(utilization / events_per_s * 1e6, 3) if events_per_s else None
                ),
                # The precise total is split in the ticks' proportion.
                "kernel_share": round((system_b - system_a) / ticked, 4) if ticked else None,
                "rss_kib": self.rss_kib,
            }
        if len(self.side_samples) == 2:
            (cpu_a, user_a, system_a), (cpu_b, user_b, system_b) = self.side_samples
            utilization = (cpu_b - cpu_a) / span
            ticked = (user_b - user_a) + (system_b - system_a)
            found |= {
                "side_cpu_util": round(utilization, 4),
                "side_cpu_s_per_mevent": (
                    round(utilization / events_per_s * 1e6, 3) if events_per_s else None
                ),
                "side_kernel_share": round((system_b - system_a) / ticked, 4) if ticked else None,
                "side_rss_kib": self.side_rss_kib,
            }
        return found


def _per_event(name: str, utilization: float, events_per_s: float) -> dict[str, Any]:
    return {
        f"{name}_cpu_util": round(utilization, 4),
        f"{name}_us_per_event": round(utilization / events_per_s * 1e6, 3)
        if events_per_s
        else None,
    }
