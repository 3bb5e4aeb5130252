"""The deployment template declares exactly what the connector sends, within Azure's limits."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from connectors.sentinel.config import MAX_STREAMS_PER_DCR
from dataflow.config import load_config, parse_config
from dataflow.dcr import (
    METRICS_PUBLISHER_ROLE,
    dcr_template,
    plan_dcrs,
    stream_columns,
    targets_from_outputs,
    targets_toml,
)
from dataflow.tables import tables_for
from devstack.dcrdef import DcrDefinitionError
from devstack.deploy import deploy, table_schemas
from devstack.kusto import WORKSPACE_COLUMNS, Query, analyze
from devstack.samples import cloudtrail_event
from operators.schema import Mapper, load_tables

ROOT = Path(__file__).resolve().parents[2]
DCR = "Microsoft.Insights/dataCollectionRules"


def _rules(template: dict) -> list[dict]:
    return [r for r in template["resources"] if r["type"] == DCR]


def _all_tables() -> dict:
    demo = load_config(ROOT / "examples" / "demo.toml", environ={}, need_target=False)
    return load_tables() | tables_for(demo)


@pytest.mark.parametrize("which", ["every table", "demo config"])
def test_every_stream_is_on_one_dcr_within_the_limits(which: str) -> None:
    tables = _all_tables() if which == "every table" else tables_for(
        load_config(ROOT / "examples" / "demo.toml", environ={}, need_target=False))
    template = dcr_template(tables.values())
    rules = _rules(template)
    assert len(rules) >= 2  # more streams than one DCR may declare
    declared: list[str] = []
    for rule in rules:
        props = rule["properties"]
        assert len(props["streamDeclarations"]) <= MAX_STREAMS_PER_DCR
        assert len(props["dataFlows"]) <= MAX_STREAMS_PER_DCR
        assert rule["kind"] == "Direct"
        declared += props["streamDeclarations"]
        flows = {f["streams"][0]: f["outputStream"] for f in props["dataFlows"]}
        assert set(flows) == set(props["streamDeclarations"])
    assert sorted(declared) == sorted(t.stream for t in tables.values())  # each exactly once
    by_stream = {t.stream: t for t in tables.values()}
    for rule in rules:
        for stream, decl in rule["properties"]["streamDeclarations"].items():
            assert decl["columns"] == stream_columns(by_stream[stream])
    # The emulator deploys it as Azure would: it refuses a DCR over the limits.
    deploy(template, "https://127.0.0.1:1", tables)


def test_related_streams_stay_together_and_fanout_gets_its_own_dcrs() -> None:
    streams = [t.stream for t in load_tables().values()]
    plan = plan_dcrs(streams, fanout={"Custom-AWSCloudTrail": 3})
    own = [d for d in plan if d.streams == ("Custom-AWSCloudTrail",)]
    assert [d.name for d in own] == [f"s3sentinel-awscloudtrail-{i}" for i in (1, 2, 3)]
    assert all("Custom-AWSCloudTrail" not in d.streams for d in plan if d not in own)
    where = {s: d.name for d in plan for s in d.streams if d not in own}
    assert where["Custom-AWSGuardDuty"] == where["Custom-AWSWAF"]
    assert where["Custom-AWSALBAccessLogs"] == where["Custom-AWSNLBAccessLogs"]  # network logs
    assert all(len(d.streams) <= MAX_STREAMS_PER_DCR for d in plan)
    many = [f"Custom-T{i}_CL" for i in range(25)]
    assert [len(d.streams) for d in plan_dcrs(many)] == [10, 10, 5]


def test_a_dcr_over_the_limits_is_refused_by_the_emulator_as_by_azure() -> None:
    tables = load_tables()
    template = dcr_template(tables.values())
    rule = _rules(template)[0]
    extra = {f"Custom-X{i}_CL": {"columns": [{"name": "TimeGenerated", "type": "datetime"}]}
             for i in range(MAX_STREAMS_PER_DCR)}
    rule["properties"]["streamDeclarations"].update(extra)
    with pytest.raises(DcrDefinitionError, match="10"):
        deploy(template, "https://127.0.0.1:1", tables)


def test_every_dcr_gets_the_role_and_an_output() -> None:
    template = dcr_template(load_tables().values())
    names = [r["name"] for r in _rules(template)]
    roles = [r for r in template["resources"] if r["type"].endswith("/roleAssignments")]
    assert sorted(r["scope"].split("'")[3] for r in roles) == sorted(names)
    assert all(METRICS_PUBLISHER_ROLE in r["properties"]["roleDefinitionId"] for r in roles)
    assert all(r["properties"]["principalId"] == "[parameters('principalId')]" for r in roles)
    outputs = template["outputs"]["dcrs"]["value"]
    assert [o["name"] for o in outputs] == names
    assert all("immutableId" in o["immutableId"] and "logsIngestion" in o["endpoint"]
               for o in outputs)


def test_every_transform_passes_kusto_semantic_analysis() -> None:
    """Each data flow's transformKql, with `source` as its stream declaration, returns only
    columns the destination table has, with the table's types (Microsoft's own Kusto
    language service, run offline)."""
    tables = _all_tables()
    template = dcr_template(tables.values())
    schemas = table_schemas(tables)
    by_stream = {t.stream: t for t in tables.values()}
    queries, destination = [], {}
    for rule in _rules(template):
        props = rule["properties"]
        for flow in props["dataFlows"]:
            (stream,) = flow["streams"]
            source = [(c["name"], c["type"]) for c in props["streamDeclarations"][stream]["columns"]]
            qid = f"{rule['name']}/{stream}"
            queries.append(Query(qid, flow["transformKql"], source))
            destination[qid] = schemas[by_stream[stream].name] | dict(WORKSPACE_COLUMNS)
    results = analyze(queries, tables={})
    assert len(results) == len(queries) > 10
    for res in results:
        assert res.errors == [], (res.id, res.errors)
        assert res.columns is not None
        table = destination[res.id]
        for name, kind in res.columns:
            assert name in table, (res.id, name)
            assert kind == table[name], (res.id, name, kind, table[name])
    # The check can fail: a column the table lacks is reported.
    bad = analyze([Query("bad", "source | extend Extra = 1", [("A", "string")])], tables={})
    assert ("Extra", "long") in (bad[0].columns or [])


def test_emitted_cloudtrail_columns_are_all_declared() -> None:
    table = load_tables()["AWSCloudTrail"]
    rules = _rules(dcr_template([table]))
    declared = {c["name"] for c in rules[0]["properties"]["streamDeclarations"]
                ["Custom-AWSCloudTrail"]["columns"]}
    m, rng, emitted = Mapper(table), random.Random(9), set()
    for _ in range(3000):
        ev = cloudtrail_event(rng, account="111122223333", region="us-east-1",
                              when=datetime(2026, 1, 1, tzinfo=UTC))
        emitted |= orjson.loads(m.map_json(orjson.dumps(ev), "x-0")).keys()
    assert emitted <= declared
    assert "RecordId_CF" in emitted


def test_custom_tables_are_created_with_plan_and_standard_tables_get_their_cf_columns() -> None:
    cfg = parse_config({
        "sources": [{"name": "a", "bucket": "b", "format": "ndjson", "table": "Cheap_CL"}],
        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"},
        "tables": [{"name": "Cheap_CL", "plan": "Auxiliary", "retention_days": 30,
                    "total_retention_days": 365,
                    "columns": [{"name": "TimeGenerated", "type": "datetime"}]}]})
    tables = tables_for(cfg)
    resources = dcr_template(tables.values())["resources"]
    created = {r["properties"]["schema"]["name"]: r["properties"]
               for r in resources if r["type"].endswith("/tables")}
    for t in tables.values():
        if t.kind == "custom":
            assert [c["name"] for c in created[t.name]["schema"]["columns"]] == \
                [c["name"] for c in stream_columns(t)]
            assert created[t.name]["plan"] == t.plan
        else:
            assert all(c["name"].endswith("_CF") for c in created[t.name]["schema"]["columns"])
    assert created["Cheap_CL"]["plan"] == "Auxiliary"
    assert created["Cheap_CL"]["retentionInDays"] == 30
    assert created["Cheap_CL"]["totalRetentionInDays"] == 365


def test_outputs_become_a_targets_section_that_validates(tmp_path: Path) -> None:
    tables = load_tables()
    template = dcr_template(tables.values())
    outputs = deploy(template, "https://dcr.example.ingest.monitor.azure.com", tables).outputs
    target = targets_from_outputs(outputs)
    section = targets_toml(target)
    parsed = tomllib.loads(section)["targets"][0]
    cfg = parse_config({"sources": [{"name": "t", "bucket": "b", "format": "cloudtrail"}],
                        "targets": [parsed]})
    assert [d.id for d in cfg.targets[0].dcrs] == [d["immutableId"] for d in
                                                   outputs["dcrs"]["value"]]


def _cli(*args: str, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dataflow.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, check=False, **kw)


def test_deploy_then_targets_is_copy_free(tmp_path: Path) -> None:
    out = tmp_path / "template.json"
    proc = _cli("deploy", "-c", "examples/demo.toml", "--fanout", "Custom-AWSCloudTrail=2",
                "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    template = json.loads(out.read_text())
    names = [r["name"] for r in _rules(template)]
    assert names[:2] == ["s3sentinel-awscloudtrail-1", "s3sentinel-awscloudtrail-2"]
    old = _cli("dcr", "-c", "examples/demo.toml", "--fanout", "Custom-AWSCloudTrail=2")
    assert json.loads(old.stdout) == template  # the old spelling still works
    tables = tables_for(load_config(ROOT / "examples" / "demo.toml", environ={},
                                    need_target=False))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(deploy(template, "https://e.example", tables).outputs))
    section = _cli("targets", str(outputs), "--client-id", "1111")
    assert section.returncode == 0, section.stderr
    config = "\n".join(line for line in (ROOT / "examples" / "demo.toml").read_text().splitlines()
                       if not line.startswith(("endpoint =", "rule_id ="))) + "\n" + section.stdout
    (tmp_path / "c.toml").write_text(config.replace("examples/", str(ROOT / "examples") + "/"))
    check = _cli("validate-config", "-c", str(tmp_path / "c.toml"))
    assert check.returncode == 0, check.stderr
