"""deploy/: the Prometheus rules and the Grafana dashboard refer only to metrics that
dataflow.core.metrics registers, under the names Prometheus exposes them by, and every rule
carries what an on-call person needs (for, severity, summary, description, runbook).

promtool is not on PyPI (nor in the package lists here), so the rules are checked
structurally; run `promtool check rules deploy/prometheus/s3sentinel-rules.yml` where it
is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml  # pinned in the test extras
from prometheus_client import REGISTRY

import dataflow.core.metrics  # noqa: F401 (registers the metrics on the default registry)

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "s3sentinel-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "s3sentinel-dashboard.json"

NEW_METRICS = ("s3sentinel_lag_seconds", "s3sentinel_oldest_undelivered_seconds",
               "s3sentinel_deadletter_records_total", "s3sentinel_sqs_messages_total")
"""Added to dataflow/metrics.py alongside deploy/; checked on their own for a clear message."""

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
}


def exposed_names() -> set[str]:
    """Every sample name the default registry exposes, whether or not a child exists yet.

    prometheus_client names a counter family without ``_total`` and exposes
    ``<name>_total``; histograms expose ``_bucket``, ``_sum`` and ``_count``. Deriving the
    names from the family type (rather than stripping suffixes from the references) also
    catches ``s3sentinel_lag_seconds_total`` or ``s3sentinel_requests_bucket``.
    """
    out: set[str] = set()
    for family in REGISTRY.collect():
        out.update(family.name + s for s in _SUFFIXES.get(family.type, ("",)))
    return out


_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_METRIC = re.compile(r"\bs3sentinel_[a-zA-Z0-9_:]*")


def metric_refs(expr: str) -> set[str]:
    """s3sentinel metric names in a PromQL expression (label values left out)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def balanced(expr: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in _STRING.sub('""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["name"]
        out.extend(group["rules"])
    return out


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_exprs() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard()["panels"] if p["type"] != "row"
            for t in p["targets"]]


def all_refs() -> dict[str, set[str]]:
    """Metric name -> where it is referenced (rule or panel)."""
    where: dict[str, set[str]] = {}
    for r in rules():
        for m in metric_refs(r["expr"]):
            where.setdefault(m, set()).add(f"rule {r['alert']}")
    for title, expr in panel_exprs():
        for m in metric_refs(expr):
            where.setdefault(m, set()).add(f"panel {title!r}")
    for var in dashboard()["templating"]["list"]:
        for m in metric_refs(var["definition"]):
            where.setdefault(m, set()).add(f"variable ${var['name']}")
    return where


_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def test_every_rule_is_complete() -> None:
    names = [r["alert"] for r in rules()]
    assert len(names) == len(set(names)) and len(names) >= 8
    for r in rules():
        what = f"rule {r.get('alert')}"
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, what
        assert re.fullmatch(r"S3Sentinel[A-Z][A-Za-z0-9]+", r["alert"]), what
        assert _DURATION.match(str(r["for"])), f"{what}: for {r['for']!r}"
        assert r["labels"]["severity"] in ("critical", "warning", "info"), what
        ann = r["annotations"]
        for key in ("summary", "description", "runbook"):
            assert isinstance(ann.get(key), str) and len(ann[key]) > 20, f"{what}: {key}"
        assert balanced(r["expr"]), f"{what}: unbalanced brackets in {r['expr']!r}"
        assert metric_refs(r["expr"]), f"{what}: refers to no s3sentinel metric"
        for label in re.findall(r"\$labels\.(\w+)", " ".join(ann.values())):
            assert re.search(rf"\bby \([^)]*\b{label}\b", r["expr"]), (
                f"{what}: the annotations use $labels.{label}, which the expr aggregates away")


def test_rules_cover_the_conditions() -> None:
    used = {m for r in rules() for m in metric_refs(r["expr"])}
    assert {"s3sentinel_lag_seconds", "s3sentinel_oldest_undelivered_seconds",
            "s3sentinel_requests_total", "s3sentinel_deadletter_records_total",
            "s3sentinel_request_retries_total", "s3sentinel_records_delivered_total",
            "s3sentinel_objects_total", "s3sentinel_sqs_messages_total"} <= used
    exprs = " ".join(r["expr"] for r in rules())
    assert 'reason="throttled"' in exprs and 'outcome="failed"' in exprs


def test_new_metrics_are_registered() -> None:
    """The four metrics deploy/ needs that dataflow/metrics.py gained with it."""
    missing = sorted(set(NEW_METRICS) - exposed_names())
    assert not missing, (f"dataflow.core.metrics does not register {', '.join(missing)} yet; the "
                         "rules and the dashboard refer to them: add them to dataflow/metrics.py")


def test_every_referenced_metric_exists() -> None:
    exposed = exposed_names()
    missing = {m: sorted(w) for m, w in all_refs().items() if m not in exposed}
    assert not missing, "metrics referenced in deploy/ but not registered by dataflow.core.metrics: " \
        + "; ".join(f"{m} (in {', '.join(w)})" for m, w in sorted(missing.items()))


def test_dashboard_is_importable() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    assert [i["name"] for i in d["__inputs"]] == ["DS_PROMETHEUS"]
    assert d["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and p.get("description"), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}" and t["refId"], p["title"]
            assert balanced(t["expr"]) and metric_refs(t["expr"]), p["title"]
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, f"{p['title']}: ${var}"
    for v in d["templating"]["list"]:
        assert v["datasource"]["uid"] == "${DS_PROMETHEUS}"


def test_dashboard_covers_the_panels() -> None:
    exprs = " ".join(e for _, e in panel_exprs())
    for needed in ("s3sentinel_records_delivered_total", "s3sentinel_component_errors_total",
                   "s3sentinel_requests_total", "s3sentinel_request_seconds_bucket",
                   "s3sentinel_batch_bytes_bucket", "s3sentinel_lag_seconds",
                   "s3sentinel_oldest_undelivered_seconds", "s3sentinel_deadletter_records_total",
                   "s3sentinel_sqs_messages_total"):
        assert needed in exprs, needed
    assert "histogram_quantile(0.5," in exprs and "histogram_quantile(0.99," in exprs
    assert "sum by (stage, error_code)" in exprs


def test_reference_check_catches_wrong_names() -> None:
    exposed = exposed_names()
    assert {"s3sentinel_requests_total", "s3sentinel_request_seconds_bucket",
            "s3sentinel_lag_seconds"} <= exposed
    bad = metric_refs('rate(s3sentinel_requests{x="s3sentinel_nope"}[5m]) '
                      "+ s3sentinel_lag_seconds_total + s3sentinel_request_seconds_total")
    assert bad == {"s3sentinel_requests", "s3sentinel_lag_seconds_total",
                   "s3sentinel_request_seconds_total"}
    assert not bad & exposed


def test_dashboard_shows_what_the_transforms_save() -> None:
    """A row of panels for [[transforms]]: rows per table by outcome, bytes in vs out per
    table, and the share of bytes saved (1 - out/in)."""
    d = dashboard()
    titles = [p["title"] for p in d["panels"]]
    row = titles.index("Cost control (transforms)")
    assert d["panels"][row]["type"] == "row"
    below = {p["title"]: p for p in d["panels"][row + 1:row + 4]}
    exprs = {title: [t["expr"] for t in p["targets"]] for title, p in below.items()}
    rows = exprs["Transform rows / s by table and outcome"]
    assert any("sum by (table, outcome)" in e and "s3sentinel_transform_rows_total" in e
               for e in rows)
    assert any("sum by (table, direction)" in e and "s3sentinel_transform_bytes_total" in e
               for e in exprs["Transform bytes / s in vs out by table"])
    saved = below["Bytes saved by transforms"]
    assert saved["fieldConfig"]["defaults"]["unit"] == "percentunit"
    by_table = next(e for e in exprs["Bytes saved by transforms"] if "by (table)" in e)
    assert re.fullmatch(r'1 - \(.*direction="out".*\) / \(.*direction="in".*\)', by_table)
    for p in below.values():  # below the row, side by side
        assert p["gridPos"]["y"] == d["panels"][row]["gridPos"]["y"] + 1
