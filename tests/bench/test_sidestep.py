"""``bench/sidestep.py``: its warm pass sees the same events days earlier, and a short run
reports every figure."""

from __future__ import annotations

from datetime import timedelta

from bench.sidestep import _shifted, measure
from dataflow.core.timeutil import event_time
from operators.enrich.operator import Observed


def test_shifted_moves_every_row_back_and_keeps_the_rest() -> None:
    row = {"TimeGenerated": "2024-06-03T08:00:01.250Z", "EventName": "GetObject"}
    obs = Observed("3", (("r1", "p0", row),), (("T", "Col", "r2", "p0", row),), ("alice",))
    moved = _shifted(obs, timedelta(days=4))
    for got in (moved.rows[0][2], moved.grouped[0][4]):
        assert event_time(got["TimeGenerated"]) == event_time(row["TimeGenerated"]) - 4 * 86_400
        assert got["EventName"] == "GetObject"
    assert row["TimeGenerated"] == "2024-06-03T08:00:01.250Z"  # the original is not changed
    assert (moved.shard, moved.principals, moved.rows[0][:2]) == ("3", ("alice",), ("r1", "p0"))


def test_a_short_run_reports_every_figure() -> None:
    r = measure(20, (100, 150), 1)
    assert r["events"] == r["side_rows"] > 20 * 100
    for k in ("map_us", "enrich_batch_us", "side_cold_us", "side_warm_us"):
        assert r[k] > 0, k
    warm, entities = r["entities_warm_cold"]
    assert warm == 0 and entities > 0  # hours of events: every entity is still learning
    warm, entities = r["entities_warm_warm"]
    assert warm > entities // 10  # days of the same events before: the busy ones are warm
