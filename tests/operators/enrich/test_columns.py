"""Enrichment columns: which tables carry them, the DCR declaring them, and the row they
are spliced into."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from dataflow.config import EnrichConfig, TableColumnConfig, TableConfig
from dataflow.dcr import dcr_template
from operators.enrich.columns import splice, with_enrichment_columns
from operators.tabledef import TableError, load_tables

APP = TableConfig(name="AppEvents_CL", columns=[
    TableColumnConfig(name="TimeGenerated", type="datetime", source="ts"),
    TableColumnConfig(name="Message", type="string", source="msg")])
NAMES = ["EnrichmentPriority", "EnrichmentReasons", "EnrichmentRuleIds", "EnrichmentIntel"]


def added(tables: dict, name: str) -> list[str]:
    return [c.name for c in tables[name].added]


def test_custom_tables_get_columns_and_standard_ones_only_when_asked() -> None:
    tables = load_tables(declared=[APP])
    findings = with_enrichment_columns(tables, EnrichConfig(enabled=True))
    assert added(findings, "AppEvents_CL") == NAMES
    assert added(findings, "AWSCloudTrail") == []
    assert added(findings, "S3SentinelFindings_CL") == []
    assert added(findings, "S3SentinelHealth_CL") == []
    columns = with_enrichment_columns(tables, EnrichConfig(enabled=True,
                                                           standard_tables="columns"))
    assert added(columns, "AWSCloudTrail") == [n + "_CF" for n in NAMES]
    assert added(columns, "AppEvents_CL") == NAMES
    assert with_enrichment_columns(tables, EnrichConfig(enabled=False)) == tables
    # The mapper never reads them: the mapped columns are unchanged.
    assert columns["AWSCloudTrail"].columns == tables["AWSCloudTrail"].columns


def test_a_table_with_a_column_of_that_name_is_refused() -> None:
    clash = dataclasses.replace(APP, columns=[*APP.columns, TableColumnConfig(
        name="EnrichmentPriority", type="string", source="prio")])
    with pytest.raises(TableError, match="AppEvents_CL has column.*EnrichmentPriority"):
        with_enrichment_columns(load_tables(declared=[clash]), EnrichConfig(enabled=True))


def test_the_dcr_declares_them() -> None:
    tables = with_enrichment_columns(load_tables(declared=[APP]),
                                     EnrichConfig(enabled=True, standard_tables="columns"))
    arm = dcr_template([tables["AWSCloudTrail"], tables["AppEvents_CL"]])
    (rule,) = [r for r in arm["resources"] if r["type"].endswith("dataCollectionRules")]
    decl = rule["properties"]["streamDeclarations"]
    app = {c["name"]: c["type"] for c in decl["Custom-AppEvents_CL"]["columns"]}
    assert {n: app[n] for n in NAMES} == {"EnrichmentPriority": "string",
                                          "EnrichmentReasons": "dynamic",
                                          "EnrichmentRuleIds": "dynamic",
                                          "EnrichmentIntel": "dynamic"}
    trail = [c["name"] for c in decl["Custom-AWSCloudTrail"]["columns"]]
    assert [n + "_CF" for n in NAMES] == [n for n in trail if n.startswith("Enrichment")]
    # The standard table gets its _CF columns added (and only those); the custom one is
    # created with every column.
    schemas = {r["properties"]["schema"]["name"]: [c["name"] for c in
                                                   r["properties"]["schema"]["columns"]]
               for r in arm["resources"] if r["type"].endswith("/tables")}
    assert all(n.endswith("_CF") for n in schemas["AWSCloudTrail"])
    assert [n + "_CF" for n in NAMES] == [n for n in schemas["AWSCloudTrail"]
                                          if n.startswith("Enrichment")]
    assert set(NAMES) <= set(schemas["AppEvents_CL"])


def test_splice_adds_the_values_to_the_object() -> None:
    raw = orjson.dumps({"TimeGenerated": "2026-11-28T10:00:00Z", "Message": "a \"}\" b"})
    out = splice(raw, {"EnrichmentPriority": "high", "EnrichmentRuleIds": ["x"]})
    assert orjson.loads(out) == {**orjson.loads(raw), "EnrichmentPriority": "high",
                                 "EnrichmentRuleIds": ["x"]}
    assert splice(raw, {}) is raw
