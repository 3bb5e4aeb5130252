"""The DCR template declares exactly what the connector sends."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import orjson

from dataflow.dcr import dcr_template, stream_columns
from devstack.samples import cloudtrail_event
from operators.schema import Mapper, load_tables


def _rule(template: dict) -> dict:
    return next(r for r in template["resources"]
                if r["type"] == "Microsoft.Insights/dataCollectionRules")


def test_every_table_has_a_stream_and_a_flow() -> None:
    tables = load_tables()
    template = dcr_template(tables.values())
    props = _rule(template)["properties"]
    assert set(props["streamDeclarations"]) == {t.stream for t in tables.values()}
    flows = {f["streams"][0]: f["outputStream"] for f in props["dataFlows"]}
    assert flows == {t.stream: t.output_stream for t in tables.values()}
    for t in tables.values():
        types = {c["type"] for c in stream_columns(t)}
        assert types <= {"string", "int", "long", "real", "boolean", "datetime", "dynamic"}


def test_emitted_cloudtrail_columns_are_all_declared() -> None:
    table = load_tables()["AWSCloudTrail"]
    declared = {c["name"] for c in _rule(dcr_template([table]))["properties"]
                ["streamDeclarations"]["Custom-AWSCloudTrail"]["columns"]}
    m, rng, emitted = Mapper(table), random.Random(9), set()
    for _ in range(3000):
        ev = cloudtrail_event(rng, account="111122223333", region="us-east-1",
                              when=datetime(2026, 1, 1, tzinfo=UTC))
        emitted |= orjson.loads(m.map_json(orjson.dumps(ev), "x-0")).keys()
    assert emitted <= declared
    assert "RecordId_CF" in emitted


def test_custom_tables_are_created_and_standard_tables_get_their_cf_columns() -> None:
    tables = load_tables()
    resources = dcr_template(tables.values())["resources"]
    created = {r["properties"]["schema"]["name"]: r["properties"]["schema"]["columns"]
               for r in resources if r["type"].endswith("/tables")}
    for t in tables.values():
        if t.kind == "custom":
            assert [c["name"] for c in created[t.name]] == [c["name"] for c in stream_columns(t)]
        else:
            assert all(c["name"].endswith("_CF") for c in created[t.name])
