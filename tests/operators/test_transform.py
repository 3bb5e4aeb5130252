"""[[transforms]]: where, sample, route and drop on real table rows, and every expression
checked against the table's columns and types with its key path."""

from __future__ import annotations

import zlib

import orjson
import pytest

from dataflow.config import ConfigError, parse_config
from dataflow.core.messages import Rows
from dataflow.tables import tables_for
from operators.transform import RouteConfig, TransformConfig, Transformer, check

AUX = {"name": "AWSVPCFlowAux_CL", "plan": "Auxiliary", "columns": []}  # columns filled below


def _cfg(transforms: list[dict]) -> object:
    tables = tables_for(parse_config({
        "sources": [{"name": "vpc", "bucket": "b", "format": "vpcflow"}],
        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"}}))
    flow = tables["AWSVPCFlow"]
    aux = dict(AUX, columns=[{"name": c.name, "type": c.type} for c in flow.columns])
    clash = {"name": "Clash_CL", "columns": [{"name": "TimeGenerated", "type": "datetime"},
                                             {"name": "DstPort", "type": "string"}]}
    return parse_config({
        "sources": [{"name": "vpc", "bucket": "b", "format": "vpcflow"},
                    {"name": "other", "bucket": "o", "format": "vpcflow"}],
        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"},
        "tables": [aux, clash], "transforms": transforms})


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
    for bundle in Transformer(cfg.transforms, tables).apply(rows):
        out.setdefault(bundle.stream, []).extend(orjson.loads(r) for r in bundle.rows)
        assert len(bundle.rows) == len(bundle.record_ids)
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
