"""deploy/grafana/sse-relay.json: every query asks for what a running relay exports.

A relay is started against the simulator, given one stream and one refusal (so that
labelled series exist), and scraped. Each PromQL expression of the dashboard (panel
targets and template variables) may name only series in that exposition, filter and
group only by labels those series carry (or the `instance`/`job` Prometheus adds), and
pick only histogram buckets (`le`) the relay has.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.clients import raw_http, raw_stream, wait_for
from tests.relayproc import REPO, RelayProcess
from tests.simserver import SimServer

DASHBOARD = REPO / "deploy" / "grafana" / "sse-relay.json"
#: Labels Prometheus attaches when it scrapes (not in the exposition).
TARGET_LABELS = frozenset({"instance", "job"})
#: What the dashboard must show (README "Deploy"), from README "Metrics".
REQUIRED = (
    "sse_relay_streams_active",
    "sse_relay_streams_total",
    "sse_relay_keepalives_total",
    "sse_relay_upstream_longest_silence_seconds_bucket",
    "sse_relay_upstream_ttfb_seconds_bucket",
    "sse_relay_upstream_errors_total",
    "sse_relay_client_aborts_total",
    "sse_relay_refused_total",
    "sse_relay_connections_closed_total",
)


# PromQL, enough of it to find the series an expression selects.

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_SELECTOR = re.compile(r"(?<![\w:$.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_RANGE = re.compile(r"\[[^\]]*\]")
_NUMBER = re.compile(r"(?<![\w:$])\d[\w.]*")
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "Inf", "NaN", "by", "without"}
    | {"on", "ignoring", "group_left", "group_right"}
)


@dataclass
class Query:
    """The series an expression selects: {metric: [(label, op, value), ...]}, and the
    labels it groups by (or, for `label_values`, asks the values of)."""

    selectors: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def parse_promql(expr: str) -> Query:
    """Metric names (every identifier that is not a function, an aggregation, a keyword,
    a number or inside a string, range or grouping clause), their label matchers, and
    the labels grouped by."""
    assert "__name__" not in expr, "selecting by __name__ is not checked here"
    strings: list[str] = []

    def set_aside(match: re.Match[str]) -> str:
        strings.append(match.group(0)[1:-1])
        return f'"{len(strings) - 1}"'

    # Strings first: a label value may hold any character, braces and brackets included.
    expr = _STRING.sub(set_aside, expr)
    query = Query()
    for labels in _GROUPING.findall(expr):
        query.grouping.update(name.strip() for name in labels.split(",") if name.strip())
    expr = _GROUPING.sub(" ", _RANGE.sub(" ", expr))
    for match in _SELECTOR.finditer(expr):
        name, matchers = match.group(1), match.group(2) or ""
        after = expr[match.end() :].lstrip()
        if name in _KEYWORDS or (not matchers and after.startswith("(")):
            continue  # a function or an aggregation (`sum (`, `rate(`), or a keyword
        query.selectors.setdefault(name, []).extend(
            (label, op, strings[int(index)]) for label, op, index in _MATCHER.findall(matchers)
        )
    leftover = _NUMBER.sub(" ", _SELECTOR.sub(" ", expr))
    assert not re.search(r"[a-zA-Z_]", leftover), f"unread PromQL: {leftover!r}"
    return query


def parse_variable_query(query: str) -> Query:
    """A Grafana query variable: `label_values(SELECTOR, LABEL)` or plain PromQL."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
    if match is None:
        return parse_promql(query)
    selected = parse_promql(match.group(1))
    selected.grouping.add(match.group(2))
    return selected


def test_the_promql_reader_finds_series_and_labels() -> None:
    """The reader the checks below rely on: functions, aggregations, keywords, ranges,
    offsets, numbers, Grafana variables and strings are not taken for metric names."""
    query = parse_promql(
        '1 - sum by (le, kind) (rate(a_bucket{instance=~"$i", le="60.0"}[$__rate_interval]'
        " offset 5m)) / on (job) group_left sum(b_count) > bool 1e3 "
        'or histogram_quantile(0.9, c_total{x!~"}y("})'
    )
    assert set(query.selectors) == {"a_bucket", "b_count", "c_total"}
    assert query.selectors["a_bucket"] == [("instance", "=~", "$i"), ("le", "=", "60.0")]
    assert query.selectors["c_total"] == [("x", "!~", "}y(")]
    assert query.grouping == {"le", "kind", "job"}
    variable = parse_variable_query("label_values(sse_relay_info, instance)")
    assert variable.selectors == {"sse_relay_info": []} and variable.grouping == {"instance"}
    with pytest.raises(AssertionError, match="unread"):
        parse_promql("topk($k, x)")  # a variable outside a string: not read, so refused


# The exposition: which series exist, with which labels.


@dataclass
class Exposition:
    #: Every series name the relay can export (from each family's TYPE), with the label
    #: names and values seen on its samples.
    labels: dict[str, dict[str, set[str]]]


def series_names(family: str, kind: str) -> set[str]:
    """The sample names a family exports, by the text format's suffix rules (0.0.4, as
    prometheus_client writes it: a counter's TYPE name already ends in `_total`)."""
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    if kind == "summary":
        return {family, f"{family}_sum", f"{family}_count"}
    return {family}


def read_exposition(text: str) -> Exposition:
    types = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)
    labels: dict[str, dict[str, set[str]]] = {
        name: {} for family, kind in types for name in series_names(family, kind)
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            assert sample.name in labels, f"{sample.name}: not what its TYPE line implies"
            for label, label_value in sample.labels.items():
                labels[sample.name].setdefault(label, set()).add(label_value)
    return Exposition(labels)


@pytest.fixture(scope="module")
def exposition(sim: SimServer) -> Iterator[Exposition]:
    """A relay's /metrics after one completed stream and one refused request."""
    with RelayProcess(sim.url) as relay:
        assert raw_stream(relay.url)[0] == 200
        assert b" 405 " in raw_http(relay.port, b"CONNECT x:443 HTTP/1.1\r\nhost: x\r\n\r\n")

        def scrape() -> str:
            return httpx2.get(relay.admin_url + "/metrics", timeout=10).text

        def counted(text: str) -> bool:
            # The stream's series appear when it finishes, after its last byte was sent.
            return 'sse_relay_refused_total{status="405"}' in text and (
                "sse_relay_streams_total{" in text
            )

        wait_for(lambda: counted(scrape()))
        yield read_exposition(scrape())


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def expressions() -> list[tuple[str, Query, str]]:
    """(where, what it selects, legend format) for every panel target and query variable."""
    found = [
        (
            f"panel {panel['title']!r} {target['refId']}",
            parse_promql(target["expr"]),
            target["legendFormat"],
        )
        for panel in panels()
        for target in panel["targets"]
    ]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = parse_variable_query(variable["query"]["query"])
            found.append((f"variable {variable['name']}", query, ""))
    return found


@pytest.mark.parametrize(
    ("where", "query", "legend"), expressions(), ids=[where for where, _, _ in expressions()]
)
def test_each_query_names_only_what_the_relay_exports(
    exposition: Exposition, where: str, query: Query, legend: str
) -> None:
    """The expression's metric names are series in the exposition (suffixes included:
    `_bucket`/`_count` of histograms, `_total` of counters); its matchers, grouping
    labels and legend use labels those series carry; an `le` it names is a real bucket."""
    assert query.selectors, f"{where}: no metric"
    seen_labels = set(TARGET_LABELS)
    for name, matchers in query.selectors.items():
        assert name in exposition.labels, f"{where}: the relay exports no {name}"
        labels = exposition.labels[name]
        seen_labels.update(labels)
        for label, op, wanted in matchers:
            assert label in labels or label in TARGET_LABELS, f"{where}: {name} has no {label}"
            if label == "le":
                assert op == "=" and wanted in labels["le"], f"{where}: no bucket le={wanted}"
    assert query.grouping <= seen_labels, f"{where}: grouped by {query.grouping - seen_labels}"
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))
    assert legend_labels <= seen_labels, f"{where}: legend uses {legend_labels - seen_labels}"


def test_the_exposition_has_every_required_series(exposition: Exposition) -> None:
    """The series names derived from the TYPE lines (`read_exposition` also asserts that
    every sample's name is one of them) include all the dashboard must show: the checks
    above compare against real names, not a list of our own."""
    for name in REQUIRED:
        assert name in exposition.labels, name


def test_the_dashboard_shows_what_operators_need() -> None:
    """Each required metric (active streams, outcomes, keepalives, longest silence,
    TTFB, upstream errors, client aborts, refusals, hostile closes) is on a panel; the
    longest silence has a heatmap of its buckets."""
    named = {name for _, query, _ in expressions() for name in query.selectors}
    assert set(REQUIRED) <= named, set(REQUIRED) - named
    heatmaps = [p for p in panels() if p["type"] == "heatmap"]
    assert any(
        "sse_relay_upstream_longest_silence_seconds_bucket" in t["expr"]
        and t.get("format") == "heatmap"
        for p in heatmaps
        for t in p["targets"]
    )


def test_the_dashboard_is_well_formed() -> None:
    """Unique panel ids and per-panel refIds, a layout position for each panel, every
    query on the `datasource` variable, which the dashboard defines (as Prometheus)."""
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels():
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
