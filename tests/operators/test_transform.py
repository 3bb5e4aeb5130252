"""[[transforms]]: where, sample, route and drop on real table rows, and every expression
checked against the table's columns and types with its key path."""

from __future__ import annotations

import zlib

import orjson
import pytest

from dataflow.config import ConfigError, parse_config
from dataflow.core.messages import Partial, Rows, Settled
from dataflow.tables import tables_for
from operators import transform
from operators.transform import (
    AGGREGATE_OFFSET,
    AggregateLogic,
    RouteConfig,
    TransformConfig,
    Transformer,
    check,
)

AUX = {"name": "AWSVPCFlowAux_CL", "plan": "Auxiliary", "columns": []}  # columns filled below


def _cfg(transforms: list[dict]) -> object:
    tables = tables_for(parse_config({
        "sources": [{"name": "vpc", "bucket": "b", "format": "vpcflow"}],
        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"}}))
    flow = tables["AWSVPCFlow"]
    aux = dict(AUX, columns=[{"name": c.name, "type": c.type} for c in flow.columns])
    clash = {"name": "Clash_CL", "columns": [{"name": "TimeGenerated", "type": "datetime"},
                                             {"name": "DstPort", "type": "string"}]}
    summary = {"name": "FlowSummary_CL", "columns": [
        {"name": "TimeGenerated", "type": "datetime"}, {"name": "SrcAddr", "type": "string"},
        {"name": "DstPort", "type": "int"}, {"name": "Action", "type": "string"},
        {"name": "Bytes", "type": "long"}, {"name": "Flows", "type": "long"},
        {"name": "Largest", "type": "long"}, {"name": "Packets", "type": "long"}]}
    return parse_config({
        "sources": [{"name": "vpc", "bucket": "b", "format": "vpcflow"},
                    {"name": "other", "bucket": "o", "format": "vpcflow"}],
        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"},
        "tables": [aux, clash, summary], "transforms": transforms})


def _rows(n: int, source: str = "vpc") -> Rows:
    rows = [{"TimeGenerated": f"2026-01-01T00:00:{i % 60:02d}Z", "SrcAddr": f"10.0.0.{i % 7}",
             "DstAddr": "10.0.1.1", "DstPort": 443 if i % 2 else 22, "Action": "ACCEPT" if i % 3
             else "REJECT", "Bytes": i * 10, "AccountId": "111122223333",
             "RecordId_CF": f"obj-{i}"} for i in range(n)]
    return Rows("Custom-AWSVPCFlow", f"{source}:0/1", tuple(orjson.dumps(r) for r in rows),
                tuple(f"obj-{i}" for i in range(n)))


def _run(transforms: list[dict], rows: Rows) -> dict[str, list[dict]]:
    cfg = _cfg(transforms)
    tables = tables_for(cfg)
    assert check(cfg.transforms, tables, [s.name for s in cfg.sources]) == []
    out: dict[str, list[dict]] = {}
    settled: list[str] = []
    sent: list[str] = []
    for bundle in Transformer(cfg.transforms, tables).apply(rows):
        if isinstance(bundle, Settled):
            settled += bundle.record_ids
            continue
        if isinstance(bundle, Partial):
            continue
        assert isinstance(bundle, Rows)
        out.setdefault(bundle.stream, []).extend(orjson.loads(r) for r in bundle.rows)
        assert len(bundle.rows) == len(bundle.record_ids)
        sent += bundle.record_ids
    # Every row is either sent (kept or routed) or settled, never both, never neither.
    assert sorted(sent + settled) == sorted(rows.record_ids)
    return out


def test_where_keeps_only_matching_rows() -> None:
    out = _run([{"table": "AWSVPCFlow", "where": "NOT (DstPort = 22 AND Action = 'REJECT')"}],
               _rows(30))
    kept = out["Custom-AWSVPCFlow"]
    assert len(kept) == 30 - sum(1 for i in range(30) if i % 2 == 0 and i % 3 == 0)
    assert not any(r["DstPort"] == 22 and r["Action"] == "REJECT" for r in kept)


def test_sample_is_deterministic_on_the_record_id() -> None:
    out = _run([{"table": "AWSVPCFlow", "sample": 4}], _rows(400))["Custom-AWSVPCFlow"]
    want = [f"obj-{i}" for i in range(400) if zlib.crc32(f"obj-{i}".encode()) % 4 == 0]
    assert [r["RecordId_CF"] for r in out] == want
    assert 60 < len(want) < 140


def test_route_moves_rows_to_another_table_and_drop_trims_columns() -> None:
    out = _run([{"table": "AWSVPCFlow", "route": [{"table": "AWSVPCFlowAux_CL",
                                                   "where": "Action = 'ACCEPT' AND DstPort = 443"}],
                 "drop": ["AccountId"]}], _rows(30))
    main, aux = out["Custom-AWSVPCFlow"], out["Custom-AWSVPCFlowAux_CL"]
    assert len(main) + len(aux) == 30
    assert all(r["Action"] == "ACCEPT" and r["DstPort"] == 443 for r in aux)
    assert not any(r["Action"] == "ACCEPT" and r["DstPort"] == 443 for r in main)
    assert all("AccountId" not in r for r in main + aux)
    # The custom table's record id column is RecordId (the standard table's is RecordId_CF).
    assert all("RecordId" in r and "RecordId_CF" not in r for r in aux)


def test_a_transform_applies_only_to_its_sources() -> None:
    t = [{"table": "AWSVPCFlow", "sources": ["vpc"], "where": "DstPort = 443"}]
    assert len(_run(t, _rows(10, "other"))["Custom-AWSVPCFlow"]) == 10
    assert len(_run(t, _rows(10, "vpc"))["Custom-AWSVPCFlow"]) == 5


def test_every_row_dropped_leaves_no_bundle() -> None:
    assert _run([{"table": "AWSVPCFlow", "where": "DstPort = 1"}], _rows(10)) == {}


@pytest.mark.parametrize(("transform", "problem"), [
    ({"where": "Colour = 'red'"}, "transforms[0].where: ColumnNotFoundError"),
    ({"where": "DstPort > 'x'"}, "transforms[0].where: "),
    ({"where": "DstPort ="}, "transforms[0].where: "),
    ({"route": [{"table": "Nowhere_CL", "where": "true"}]},
     "transforms[0].route[0].table: no table 'Nowhere_CL'"),
    ({"route": [{"table": "Clash_CL", "where": "true"}]},
     "transforms[0].route[0].table: Clash_CL types columns otherwise: DstPort"),
    ({"drop": ["TimeGenerated"]}, "transforms[0].drop: 'TimeGenerated' is required"),
    ({"drop": ["Nope"]}, "transforms[0].drop: no column 'Nope'"),
    ({"sources": ["ghost"], "where": "true"}, "transforms[0].sources: no source 'ghost'"),
    ({"aggregate": [{"table": "Ghost_CL", "by": ["SrcAddr"], "values": ["count(*) AS Flows"]}]},
     "transforms[0].aggregate[0].table: no table 'Ghost_CL'"),
    ({"aggregate": [{"table": "FlowSummary_CL", "by": ["Colour"],
                     "values": ["count(*) AS Flows"]}]},
     "transforms[0].aggregate[0].by: no column 'Colour' in AWSVPCFlow"),
    ({"aggregate": [{"table": "FlowSummary_CL", "by": ["DstAddr"],
                     "values": ["count(*) AS Flows"]}]},
     "transforms[0].aggregate[0].by: FlowSummary_CL must declare DstAddr as string"),
    ({"aggregate": [{"table": "FlowSummary_CL", "by": ["SrcAddr"],
                     "values": ["sum(Action) AS Bytes"]}]},
     "transforms[0].aggregate[0].values[0]: sum(Action) needs a number column"),
    ({"aggregate": [{"table": "FlowSummary_CL", "by": ["SrcAddr"],
                     "values": ["median(Bytes) AS Bytes"]}]},
     "transforms[0].aggregate[0].values[0]: 'median(Bytes) AS Bytes' is not FUNCTION"),
    ({"aggregate": [{"table": "FlowSummary_CL", "by": ["SrcAddr"],
                     "values": ["sum(Bytes) AS Nowhere"]}]},
     "transforms[0].aggregate[0].values[0]: FlowSummary_CL must declare Nowhere as int or long"),
    ({"aggregate": [{"table": "FlowSummary_CL", "by": ["SrcAddr"], "where": "Colour = 1",
                     "values": ["count(*) AS Flows"]}]},
     "transforms[0].aggregate[0].where: ColumnNotFoundError"),
])
def test_bad_transforms_are_refused_with_their_key_path(transform: dict, problem: str) -> None:
    cfg = _cfg([{"table": "AWSVPCFlow", **transform}])
    problems = check(cfg.transforms, tables_for(cfg), [s.name for s in cfg.sources])
    assert any(p.startswith(problem) for p in problems), problems


def test_sample_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError) as info:
        _cfg([{"table": "AWSVPCFlow", "sample": 0}])
    assert "transforms[0].sample: must be a positive integer (keep 1 row in N)" in \
        info.value.problems
    with pytest.raises(ConfigError) as info:
        _cfg([{"table": "AWSVPCFlow", "sample": 2.5}])
    assert any(p.startswith("transforms[0].sample: expected int") for p in info.value.problems)


def test_unknown_table_is_refused() -> None:
    problems = check([TransformConfig("Ghost_CL", where="true")], tables_for(_cfg([])), [])
    assert problems == ["transforms[0].table: no table 'Ghost_CL'"]
    assert RouteConfig("X_CL", "true").table == "X_CL"


SUMMARY = {"table": "FlowSummary_CL", "where": "Action = 'ACCEPT'",
           "by": ["SrcAddr", "DstPort"],
           "values": ["sum(Bytes) AS Bytes", "count(*) AS Flows", "max(Bytes) AS Largest",
                      "sum(Packets) AS Packets"]}


def _summaries(logic: AggregateLogic, items: list, end: bool = True) -> list[dict]:
    out = logic.on_batch(items)[0]
    if end:
        out = [*out, *logic.on_batch([Rows("", "vpc:0/1", (), (), end="obj")])[0]]
    return [orjson.loads(r) | {"_id": i} for b in out for r, i in zip(b.rows, b.record_ids,
                                                                       strict=True)]


def test_aggregate_summarises_an_object_by_key_and_minute() -> None:
    cfg = _cfg([{"table": "AWSVPCFlow", "aggregate": [SUMMARY]}])
    tables = tables_for(cfg)
    assert check(cfg.transforms, tables, ["vpc", "other"]) == []
    t = Transformer(cfg.transforms, tables)
    rows = _rows(120)
    # Two bundles of one object, as the map step would hand them on.
    items = [*t.apply(Rows(rows.stream, rows.partition, rows.rows[:70], rows.record_ids[:70])),
             *t.apply(Rows(rows.stream, rows.partition, rows.rows[70:], rows.record_ids[70:]))]
    sent = [i for i in items if isinstance(i, Rows)]
    settled = [r for i in items if isinstance(i, Settled) for r in i.record_ids]
    rest = [orjson.loads(r) for b in sent for r in b.rows]
    assert all(r["Action"] == "REJECT" for r in rest)  # the accepted ones are summarised
    assert sorted(settled + [r["RecordId_CF"] for r in rest]) == sorted(rows.record_ids)
    logic = AggregateLogic(t._all_specs, None, None)
    got = _summaries(logic, [i for i in items if isinstance(i, Partial)])
    # What a summary must be, computed from the rows themselves.
    want: dict[tuple, list] = {}
    for r in map(orjson.loads, rows.rows):
        if r["Action"] != "ACCEPT":
            continue
        acc = want.setdefault(("2026-01-01T00:00:00Z", r["SrcAddr"], r["DstPort"]), [0, 0, 0])
        acc[0] += r["Bytes"]
        acc[1] += 1
        acc[2] = max(acc[2], r["Bytes"])
    assert {(g["TimeGenerated"], g["SrcAddr"], g["DstPort"]): [g["Bytes"], g["Flows"],
                                                              g["Largest"]]
            for g in got} == want
    assert len(got) == len(want)
    assert all("Packets" not in g for g in got)  # the sum of no values is null, not 0
    assert [g["_id"] for g in got] == [f"obj-{AGGREGATE_OFFSET + n}" for n in range(len(got))]
    assert all(g["RecordId"] == g["_id"] for g in got)


def test_summaries_survive_a_snapshot_mid_object() -> None:
    cfg = _cfg([{"table": "AWSVPCFlow", "aggregate": [SUMMARY]}])
    t = Transformer(cfg.transforms, tables_for(cfg))
    rows = _rows(120)
    parts = [[i for i in t.apply(Rows(rows.stream, rows.partition, rows.rows[a:b],
                                      rows.record_ids[a:b])) if isinstance(i, Partial)]
             for a, b in ((0, 50), (50, 120))]
    whole = AggregateLogic(t._all_specs, None, None)
    want = _summaries(whole, parts[0] + parts[1])
    first = AggregateLogic(t._all_specs, None, None)
    first.on_batch(parts[0])
    resumed = AggregateLogic(t._all_specs, first.snapshot(), None)
    assert _summaries(resumed, parts[1]) == want


def test_an_object_of_endless_keys_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transform, "MAX_GROUPS", 4)
    cfg = _cfg([{"table": "AWSVPCFlow", "aggregate": [dict(SUMMARY, where="true")]}])
    t = Transformer(cfg.transforms, tables_for(cfg))
    rows = _rows(60)  # 7 source addresses x 2 ports
    logic = AggregateLogic(t._all_specs, None, None)
    got = _summaries(logic, [i for i in t.apply(rows) if isinstance(i, Partial)])
    assert sum(g["Flows"] for g in got) == 60
    assert len({g["_id"] for g in got}) == len(got) > 4


def test_apply_whole_merges_summaries_for_preview_and_estimate() -> None:
    cfg = _cfg([{"table": "AWSVPCFlow", "aggregate": [SUMMARY]}])
    t = Transformer(cfg.transforms, tables_for(cfg))
    rows = _rows(120)
    out = t.apply_whole([Rows(rows.stream, rows.partition, rows.rows[:70], rows.record_ids[:70]),
                         Rows(rows.stream, rows.partition, rows.rows[70:], rows.record_ids[70:])])
    summary = [orjson.loads(r) for b in out if b.stream == "Custom-FlowSummary_CL"
               for r in b.rows]
    assert sum(g["Flows"] for g in summary) == sum(
        1 for r in map(orjson.loads, rows.rows) if r["Action"] == "ACCEPT")


def test_rows_are_counted_once_whatever_the_number_of_transforms() -> None:
    from dataflow.core import metrics

    def value(outcome: str) -> float:
        return metrics.TRANSFORM_ROWS.labels("AWSVPCFlow", outcome)._value.get()

    before = {o: value(o) for o in ("in", "kept", "dropped", "sampled_out")}
    out = _run([{"table": "AWSVPCFlow", "where": "DstPort = 443"},
                {"table": "AWSVPCFlow", "sample": 2}], _rows(40))
    kept = len(out["Custom-AWSVPCFlow"])
    delta = {o: value(o) - v for o, v in before.items()}
    assert delta == {"in": 40, "kept": kept, "dropped": 20, "sampled_out": 20 - kept}


def test_an_object_read_again_from_its_start_is_summed_once() -> None:
    """SQS reads a taken-back object again from its first record: the start marker drops
    what the earlier read merged (restored from the snapshot), so nothing counts twice."""
    cfg = _cfg([{"table": "AWSVPCFlow", "aggregate": [SUMMARY]}])
    t = Transformer(cfg.transforms, tables_for(cfg))
    rows = _rows(120)
    parts = [i for i in t.apply(rows) if isinstance(i, Partial)]
    want = _summaries(AggregateLogic(t._all_specs, None, None), parts)
    first = AggregateLogic(t._all_specs, None, None)
    first.on_batch(parts[:1])
    again = AggregateLogic(t._all_specs, first.snapshot(), None)
    start = Rows("", "vpc:0/1", (), (), begin="obj")
    assert _summaries(again, [start, *parts]) == want
