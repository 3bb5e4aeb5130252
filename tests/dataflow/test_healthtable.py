"""S3SentinelHealth_CL rows carry what the [[transforms]] did in the interval, per table,
from the metric deltas, whatever outcomes the metric has (offline: no row is sent)."""

from __future__ import annotations

import orjson

from dataflow.config import parse_config
from dataflow.core import metrics
from dataflow.healthtable import HealthReporter
from operators.schema import Mapper, load_tables


def _cfg():
    return parse_config({
        "sentinel": {"endpoint": "https://dce.example", "rule_id": "dcr-1"},
        "sources": [{"name": "trail", "bucket": "b1", "format": "cloudtrail"},
                    {"name": "vpc", "bucket": "b2", "format": "vpcflow"}],
        "ops": {"port": 0, "health_table": "S3SentinelHealth_CL"},
    })


def test_health_rows_carry_the_transforms_of_the_interval_per_table() -> None:
    reporter = HealthReporter(_cfg())
    reporter.rows(now=1000.0)  # baseline: earlier tests' counts are not this interval's
    rows, out = metrics.TRANSFORM_ROWS, metrics.TRANSFORM_BYTES
    rows.labels("HealthT1", "in").inc(100)
    rows.labels("HealthT1", "kept").inc(40)
    rows.labels("HealthT1", "dropped").inc(30)
    rows.labels("HealthT1", "sampled_out").inc(20)
    rows.labels("HealthT1", "routed").inc(10)
    rows.labels("HealthT1", "some_new_outcome").inc(3)  # outcomes are read generically
    out.labels("HealthT1", "in").inc(50_000)
    out.labels("HealthT1", "out").inc(20_000)
    rows.labels("HealthT2", "in").inc(0)  # nothing in the interval: left out
    first, second = reporter.rows(now=1060.0)
    expected = {"HealthT1": {"in": 100, "kept": 40, "dropped": 30, "sampled_out": 20,
                             "routed": 10, "some_new_outcome": 3,
                             "bytes_in": 50_000, "bytes_out": 20_000}}
    got = {k: v for k, v in first["Transforms"].items() if k.startswith("Health")}
    assert got == expected
    # Per table, not per source: the process's figures on each of its sources' rows.
    assert second["Transforms"] == first["Transforms"]
    assert {first["Source"], second["Source"]} == {"trail", "vpc"}
    # Deltas: the next interval starts from zero.
    rows.labels("HealthT1", "in").inc(5)
    rows.labels("HealthT1", "kept").inc(5)
    (row, _) = reporter.rows(now=1120.0)
    assert row["Transforms"]["HealthT1"] == {
        "in": 5, "kept": 5, "dropped": 0, "sampled_out": 0, "routed": 0,
        "some_new_outcome": 0, "bytes_in": 0, "bytes_out": 0}
    assert "HealthT2" not in row["Transforms"]


def test_the_transforms_column_is_declared_and_mapped() -> None:
    table = load_tables()["S3SentinelHealth_CL"]
    col = next(c for c in table.columns if c.name == "Transforms")
    assert col.type == "dynamic" and "per table" in col.description
    reporter = HealthReporter(_cfg())
    reporter.rows(now=1000.0)
    metrics.TRANSFORM_ROWS.labels("HealthT3", "in").inc(2)
    row = reporter.rows(now=1060.0)[0]
    sent = orjson.loads(Mapper(table).map_dict(row, "health-test-1"))
    assert sent["Transforms"]["HealthT3"] == {"in": 2}
    assert sent["RecordsRead"] == 0 and sent["Source"] == "trail"
