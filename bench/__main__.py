"""`python -m bench [--quick]`: run every scenario, print the tables, save the results.

Full runs write bench/results/latest.{json,md,png} (latest.json and latest.png are
committed) plus a dated JSON; quick runs write quick.{json,md,png} beside them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    machine,
    plot,
    report,
    resume_cost,
    resume_report,
    scanner_speed,
    scenarios,
    tls_cost,
    tls_report,
)
from bench.plan import PLANS, Plan
from bench.procs import CONTENDER_CPUS, HARNESS_CPUS, pinning_enabled

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("scanner", "latency", "cost", "h2-h3", "tls", "idle", "resume")


def say(line: str) -> None:
    print(line, flush=True)


def _pinning() -> str:
    if not pinning_enabled():
        return "none (fewer than 2 cores available): figures include harness contention."
    return (
        f"contender on core {min(CONTENDER_CPUS)}, emitter and load generator on core "
        f"{min(HARNESS_CPUS)} (os.sched_setaffinity)."
    )


def run(plan: Plan, only: tuple[str, ...]) -> dict[str, Any]:
    started_at = time.monotonic()
    meta: dict[str, Any] = {
        "plan": plan.name,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "contenders": list(plan.contenders),
        "pinning": _pinning(),
        "settings": {k: v for k, v in vars(plan).items() if k != "ladder"}
        | {"ladder": {str(k): v for k, v in plan.ladder.items()}},
        **machine.describe(),
    }
    results: dict[str, Any] = {"meta": meta}
    say(f"sse-relay benchmark, {plan.name} plan. {meta['pinning']}")
    if "scanner" in only:
        say("scenario 4: scanner alone")
        results["scanner"] = scanner_speed.run(plan.scanner_seconds)
    with tempfile.TemporaryDirectory(prefix="sse-relay-bench-") as tmp:
        workdir = Path(tmp)
        emitter, upstream = scenarios.start_emitter(workdir)
        try:
            if {"latency", "cost", "h2-h3"} & set(only):
                with scenarios.started(
                    plan.contenders, upstream, workdir, scenarios.STREAMING_KEEPALIVE
                ) as running:
                    steps = (
                        ("latency", "scenario 2: added latency", scenarios.latency),
                        ("cost", "scenario 1: cost per event, rate ladder", scenarios.cost_ladder),
                        ("h2-h3", "scenario 5: HTTP/2 and HTTP/3", scenarios.other_protocols),
                    )
                    for name, title, scenario in steps:
                        if name in only:
                            say(title)
                            results[name] = scenario(plan, running, say)
            if "tls" in only:
                say("scenario 7: a TLS upstream (HTTP/2 or HTTP/1.1 by ALPN)")
                tls = scenarios.tls_upstream(emitter)
                results["tls"] = tls_cost.run(plan, upstream, tls, workdir, say)
            if "idle" in only:
                say(f"scenario 3: {plan.idle_streams} idle streams")
                results["idle"] = scenarios.idle(plan, upstream, workdir, say)
            if "resume" in only:
                say("scenario 6: the cost of resumable streams")
                results["resume"] = resume_cost.run(plan, upstream, workdir, say)
        finally:
            emitter.stop()
    results["targets"] = (
        report.targets(results) + tls_report.targets(results) + resume_report.targets(results)
    )
    meta["duration_s"] = round(time.monotonic() - started_at, 1)
    return results


def save(results: dict[str, Any], text: str) -> list[Path]:
    RESULTS.mkdir(exist_ok=True)
    stem = "latest" if results["meta"]["plan"] == "full" else results["meta"]["plan"]
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    paths = [RESULTS / f"{stem}.json", RESULTS / f"{stem}.md", RESULTS / f"{stem}.png"]
    if stem == "latest":
        paths.append(RESULTS / f"run-{stamp}.json")
    body = json.dumps(results, indent=1, sort_keys=True)
    paths[0].write_text(body + "\n")
    paths[1].write_text(text + "\n")
    plot.save(results, paths[2])
    if len(paths) > 3:
        paths[3].write_text(body + "\n")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the < 2 minute development run")
    parser.add_argument(
        "--only", nargs="+", choices=SCENARIOS, default=SCENARIOS, help="run just these"
    )
    args = parser.parse_args()
    results = run(PLANS["quick" if args.quick else "full"], tuple(args.only))
    text = report.markdown(results, tls_report.section(results) + resume_report.section(results))
    say("")
    say(text)
    for path in save(results, text):
        say(f"wrote {path.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
