"""latest.png: latency percentiles and throughput per contender, from the results JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

from bench.report import PCTS
from bench.tables import LABELS, max_sustained, per_core, reference_step

_COLOURS = {
    "direct": "#9e9e9e",
    "relay-cython": "#1f77b4",
    "relay-python": "#6baed6",
    "nginx": "#2ca02c",
    "naive": "#d62728",
}


def _bars(ax: Any, groups: list[str], series: dict[str, list[float]]) -> None:
    width = 0.8 / max(1, len(series))
    for i, (key, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ax.bar(xs, values, width, label=LABELS[key], color=_COLOURS.get(key))
    ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], groups)


def _scanner(ax: Any, records: list[dict[str, Any]]) -> None:
    labels = list(dict.fromkeys(r["chunks"] for r in records))
    for offset, (name, colour) in enumerate((("cython", "#1f77b4"), ("python", "#6baed6"))):
        values = [
            next(
                (r["mb_per_s"] or 0.0 for r in records if (r["chunks"], r["scanner"]) == (c, name)),
                0.0,
            )
            for c in labels
        ]
        ax.bar(
            [i + offset * 0.4 for i in range(len(labels))], values, 0.4, label=name, color=colour
        )
    ax.set_xticks([i + 0.2 for i in range(len(labels))], labels)
    ax.set_title("scanner alone (MB/s)")
    ax.legend(fontsize=8)


def save(results: dict[str, Any], path: Path) -> None:
    keys = list(results["meta"]["contenders"])
    latency = results.get("latency", [])
    stream_counts = sorted({r["streams"] for r in latency})
    cost = results.get("cost", [])
    climbed = sorted({r["streams"] for r in cost if r["streams"] > 1})
    columns = max(2, len(stream_counts))
    fig, axes = plt.subplots(2, columns, figsize=(5 * columns, 8.5), squeeze=False)
    for ax, streams in zip(axes[0], stream_counts, strict=False):
        series = {}
        for key in keys:
            found = next(
                (r for r in latency if r["contender"] == key and r["streams"] == streams), None
            )
            series[key] = [found["latency_ms"][p] if found else 0.0 for p in PCTS]
        _bars(ax, list(PCTS), series)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        rate = next(r["rate_per_stream"] for r in latency if r["streams"] == streams)
        ax.set_title(f"event latency, {streams} stream(s) x {rate:g} events/s")
        ax.set_ylabel("ms (log scale)")
    axes[0][0].legend(fontsize=8)
    rate_ax, core_ax = axes[1][0], axes[1][1]
    groups = [f"{s} streams" for s in climbed]
    rates: dict[str, list[float]] = {}
    cores: dict[str, list[float]] = {}
    for key in keys:
        best = [max_sustained(cost, key, s)[0] for s in climbed]
        rates[key] = [b["offered_rate"] / 1000 if b else 0.0 for b in best]
        if key != "direct":
            cores[key] = [(per_core(reference_step(cost, key, s)) or 0.0) / 1000 for s in climbed]
    _bars(rate_ax, groups, rates)
    rate_ax.set_title("highest paced rate sustained (k events/s)")
    _bars(core_ax, groups, cores)
    core_ax.set_title("per-core throughput at 10k ev/s (k ev/CPU-s)")
    if len(axes[1]) > 2:
        _scanner(axes[1][2], results.get("scanner", []))
    for ax in axes[1][3:]:
        ax.axis("off")
    for ax in axes[0][len(stream_counts) :]:
        ax.axis("off")
    meta = results["meta"]
    fig.suptitle(f"sse-relay benchmark ({meta['plan']}, {meta['date']}, git {meta['git']})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
