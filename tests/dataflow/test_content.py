"""The Sentinel content set (operators/content/, dataflow/content.py).

- Every KQL shipped (analytics rules, hunting queries, function bodies, workbook tiles), taken
  from the emitted ARM resources, passes parsing and semantic analysis with Microsoft's Kusto
  language service against the exact schemas of the tables the connector writes, in one
  analyze() call; each rule's entity mappings, custom details and alert formats name columns
  its query returns.
- Every shipped critical/high enrichment rule, sequence and burst has a rule turning its
  findings into incidents, and one for deployments without enrichment.
- Severities, frequencies, lookbacks, suppression, grouping and sizes are within Sentinel's
  limits, and the loader refuses content that is not.
- End to end: the real enrichment runs over a generated CloudTrail workload with one incident
  per shipped critical rule and sequence (and a GuardDuty finding); the findings rows satisfy
  the findings rule of their priority, and the rules for deployments without enrichment match
  exactly the source rows the enrichment flagged, judged by :class:`Kql`, a small interpreter
  of the filter subset the rules use (see its docstring for what it covers).
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.workload import generate
from dataflow.config import EnrichConfig
from dataflow.content import (
    ALERT_RULES_API,
    ContentError,
    content_resources,
    content_template,
    detections,
    load_content,
    parse_duration,
    referenced_tables,
    with_content,
)
from dataflow.core.messages import Rows
from dataflow.dcr import dcr_template
from devstack.deploy import table_schemas
from devstack.formatsamples import _guardduty
from devstack.kusto import WORKSPACE_COLUMNS, Analysis, Query, analyze
from devstack.kusto.subset import Kql, Unsupported
from operators.enrich.operator import Enricher, Observed, score_shard
from operators.enrich.rules import RuleSet
from operators.enrich.sequences import load_sequences
from operators.schema import Mapper, load_tables
from tests.operators.enrich.test_rules import HITS, MISSES

TABLES = load_tables()
SCHEMAS = {name: cols | {c: t for c, t in WORKSPACE_COLUMNS if c not in cols}
           for name, cols in table_schemas(TABLES).items()}
"""Each table's columns, added columns and record id, with the workspace's standard columns."""


def test_the_interpreter_follows_kql_and_refuses_what_it_does_not_know() -> None:
    schema = {"A": "string", "N": "int", "J": "string"}
    rows = [{"A": "Foo-bar", "N": 5, "J": '{"x": {"y": false}, "l": [1, 2]}'}, {"A": "foobar"}, {}]

    def hits(q: str) -> list[int]:
        return Kql(q, {"T": schema}).matches(rows)

    assert hits('T | where A has "bar"') == [0]  # a term; foobar does not have it
    assert hits('T | where A contains "BAR"') == [0, 1]
    assert hits('T | where A == "foobar" or N >= 5') == [0, 1]
    assert hits('T | where N != 4') == [0]  # null compares false
    assert hits('T | where isempty(A)') == [2]  # a missing string column is ""
    assert hits('T | where tostring(parse_json(J).x.y) == "false"') == [0]
    assert hits('T | where parse_json(J).l[-1] == 2') == [0]
    assert hits('let n = 4; T | where ingestion_time() > ago(5m) | where N > n') == [0]
    assert hits('T | where A in~ ("FOOBAR") | summarize count() by A | project A') == [1]
    assert hits('T | extend B = iff(N > 1, "big", "small") | where B == "big"') == [0]
    for unsupported in ('T | where A == "x" | summarize c = count() by A | where c > 1',
                        'T | join kind=inner (U) on A', 'T | where strlen(A) > 3',
                        'T | extend B = strlen(A) | where B > 3', 'T | where N == "5"'):
        with pytest.raises(Unsupported):
            hits(unsupported)


# --------------------------------------------------------------------------- the content

CONTENT = load_content()
ALL, _ = content_resources(TABLES, detectors=())  # every item: no detector runs
RULES = {r["properties"]["displayName"]: r for r in ALL
         if r["type"] == "Microsoft.SecurityInsights/alertRules"}
BY_ID = {i.id: i for i in CONTENT.of("analytic")}
_ARM_LITERAL = re.compile(r"^\[\[")


def _text(value: str) -> str:
    """An ARM literal string's text (``[[`` escapes a leading ``[``)."""
    return _ARM_LITERAL.sub("[", value)


def emitted_queries() -> Iterator[tuple[str, str]]:
    """(label, KQL) of every query in the emitted resources: rules, saved searches (function
    parameters as lets, so a body stands alone) and workbook tiles."""
    for r in ALL:
        props = r["properties"]
        if r["type"].endswith("alertRules"):
            yield f"rule {props['displayName']}", _text(props["query"])
        elif r["type"].endswith("savedSearches"):
            lets = "".join(f"let {p.split(':')[0].strip()} = {p.split('=')[1].strip()};\n"
                           for p in props.get("functionParameters", "").split(",") if p)
            yield f"search {props['displayName']}", lets + _text(props["query"])
        else:
            for n, tile in enumerate(json.loads(props["serializedData"])["items"]):
                if tile["type"] == 3:
                    yield f"workbook {props['displayName']} #{n}", tile["content"]["query"]


def functions() -> dict[str, str]:
    out = {}
    for r in ALL:
        props = r["properties"]
        if "functionAlias" in props:
            params = props.get("functionParameters")
            body = _text(props["query"])
            out[props["functionAlias"]] = f"({params}) {{ {body} }}" if params else body
    return out


@pytest.fixture(scope="module")
def analysed() -> dict[str, Analysis]:
    """One run of the Kusto language service over every query shipped, each function called
    as users call it, and one broken query (the check must be able to fail)."""
    queries = [Query(label, q) for label, q in emitted_queries()]
    queries += [Query("call S3SentinelFindingSource", "S3SentinelFindingSource(7d) | take 1"),
                Query("call S3SentinelAttack", "S3SentinelAttack | where DetectionId != ''"),
                Query("control", "S3SentinelFindings_CL | where Principle == 'x'")]
    tables = {name: list(cols.items()) for name, cols in SCHEMAS.items()}
    return {r.id: r for r in analyze(queries, tables, functions())}


def test_every_query_passes_kusto_semantic_analysis(analysed: dict[str, Analysis]) -> None:
    shipped = len(list(CONTENT.queries()))
    assert len(analysed) == shipped + 3 and shipped >= 50
    assert [d.code for d in analysed["control"].errors] == ["KS142"]  # unknown column
    for label, result in analysed.items():
        if label == "control":
            continue
        assert result.errors == [] and result.warnings == [], (label, result.errors,
                                                                result.warnings)
        assert result.columns, label


def test_entities_details_and_alert_formats_name_columns_the_query_returns(
        analysed: dict[str, Analysis]) -> None:
    for name, rule in RULES.items():
        columns = dict(analysed[f"rule {name}"].columns or [])
        props = rule["properties"]
        used = {f["columnName"] for e in props["entityMappings"] for f in e["fieldMappings"]}
        used |= set(props.get("customDetails", {}).values())
        over = props.get("alertDetailsOverride", {})
        for key in ("alertDisplayNameFormat", "alertDescriptionFormat"):
            used |= set(re.findall(r"\{\{(\w+)\}\}", over.get(key, "")))
        used |= {over[k] for k in ("alertTacticsColumnName", "alertSeverityColumnName")
                 if k in over}
        assert used - set(columns) == set(), (name, sorted(used - set(columns)))
        for e in props["entityMappings"]:  # identifiers are scalars, not bags or arrays
            assert all(columns[f["columnName"]] == "string" for f in e["fieldMappings"]), e
        assert props["entityMappings"], name
        assert "TimeGenerated" in columns, name


def test_every_critical_and_high_detection_raises_incidents() -> None:
    """Each shipped critical/high rule, sequence and burst: its findings row passes the
    findings rule of its priority and no other, and a rule mirrors it for deployments without
    enrichment (only there), with the severity its priority calls for."""
    enricher = Enricher(EnrichConfig(enabled=True), TABLES)
    findings = {i.data["findings"]: Kql(i.query, SCHEMAS)
                for i in CONTENT.of("analytic") if "findings" in i.data}
    wanted = {d: p for d, (_, p) in detections().items() if p in ("critical", "high")}
    assert len(wanted) >= 25
    with_enrichment = {r["properties"]["displayName"] for r in content_resources(TABLES)[0]
                       if r["type"].endswith("alertRules")}
    known = detections()
    table_of = {r.id: r.table for r in RuleSet.load().rules} | {
        q.id: q.table for q in load_sequences()}
    for det, priority in wanted.items():
        kind = known[det][0]
        row = {"TimeGenerated": "2026-11-28T10:00:00Z", "UserIdentityArn": "arn:aws:iam::1:user/a"}
        raw, _ = enricher.finding("AWSCloudTrail", row, "0123456789abcdef-7", priority,
                                  ["why"], rule_ids=[det] if kind == "rule" else None,
                                  sequence="" if kind == "rule" else det,
                                  detector="rules" if kind == "rule" else "sequence")
        fired = [p for p, rule in findings.items() if rule.matches([orjson.loads(raw)])]
        assert fired == [priority], (det, fired)
        (mirror,) = [i for i in CONTENT.of("analytic") if i.data.get("detection") == det]
        assert referenced_tables(mirror.query, TABLES) == {table_of[det]}, (det, table_of[det])
        assert mirror.data["severity"] == {"critical": "High", "high": "Medium"}[priority]
        rule = RULES[mirror.name]["properties"]
        assert rule["incidentConfiguration"]["createIncident"] is True
        assert mirror.name not in with_enrichment  # its findings raise instead
    assert {f"findings-{p}" for p in ("critical", "high", "intel", "anomalous")} <= set(BY_ID)


def test_emitted_rules_are_within_sentinel_limits() -> None:
    """Checked on the ARM the deployment gets (scheduled-rules-overview: query interval and
    lookback 5 minutes to 14 days, interval <= lookback, suppression up to 24 hours, grouping
    5 minutes to 7 days, queries up to 10,000 characters; map-data-fields-to-entities: up to 5
    entities of up to 3 identifiers; 20 custom details; 3 parameters per alert format)."""
    tactics = {"Reconnaissance", "ResourceDevelopment", "InitialAccess", "Execution",
               "Persistence", "PrivilegeEscalation", "DefenseEvasion", "CredentialAccess",
               "Discovery", "LateralMovement", "Collection", "Exfiltration",
               "CommandAndControl", "Impact", "PreAttack", "ImpairProcessControl",
               "InhibitResponseFunction"}
    five, fortnight = timedelta(minutes=5), timedelta(days=14)
    assert len(RULES) == len(CONTENT.of("analytic")) >= 34
    for name, rule in RULES.items():
        p = rule["properties"]
        assert rule["apiVersion"] == ALERT_RULES_API and rule["kind"] == "Scheduled"
        assert p["severity"] in ("High", "Medium", "Low", "Informational"), name
        freq, period = parse_duration(p["queryFrequency"]), parse_duration(p["queryPeriod"])
        assert five <= freq <= period <= fortnight, name
        assert five <= parse_duration(p["suppressionDuration"]) <= timedelta(hours=24), name
        group = p["incidentConfiguration"]["groupingConfiguration"]
        assert five <= parse_duration(group["lookbackDuration"]) <= timedelta(days=7), name
        assert group["enabled"] and group["matchingMethod"] == "Selected", name
        assert set(group["groupByEntities"]) <= {e["entityType"] for e in p["entityMappings"]}
        assert set(group["groupByCustomDetails"]) <= set(p.get("customDetails", {}))
        assert p["triggerOperator"] in ("GreaterThan", "LessThan", "Equal", "NotEqual")
        assert isinstance(p["triggerThreshold"], int) and 1 <= len(p["query"]) <= 10_000
        assert not re.search(r"\b(search|union)\s+\*", p["query"])
        assert set(p["tactics"]) <= tactics
        assert all(re.fullmatch(r"T\d{4}", t) for t in p["techniques"]), p["techniques"]
        assert len(p["entityMappings"]) <= 5
        assert all(1 <= len(e["fieldMappings"]) <= 3 for e in p["entityMappings"])
        assert len(p.get("customDetails", {})) <= 20
        for fmt in p.get("alertDetailsOverride", {}).values():
            assert fmt.count("{{") <= 3, (name, fmt)
        assert len(p["displayName"]) <= 256
        ingested = re.findall(r"ingestion_time\(\) > ago\((\d+)m\)", p["query"])
        assert all(timedelta(minutes=int(m)) == freq for m in ingested), name
    severities = {r["properties"]["severity"] for r in RULES.values()}
    assert severities == {"High", "Medium", "Low"}


def test_the_loader_refuses_content_sentinel_would_refuse(tmp_path: Path) -> None:
    good = (Path(__file__).resolve().parents[2] / "operators" / "content" / "analytic" /
            "ct-root-console-login.toml").read_text()

    def write(name: str, text: str) -> None:
        (tmp_path / "analytic").mkdir(exist_ok=True)
        (tmp_path / "analytic" / f"{name}.toml").write_text(
            text.replace('id = "ct-root-console-login"', f'id = "{name}"'))

    write("fast", good.replace('frequency = "PT5M"', 'frequency = "PT1M"')
          .replace('detection = "ct-root-console-login"\n', "").replace("AWS root", "A"))
    write("long", good.replace('period = "PT2H"', 'period = "P15D"')
          .replace('detection = "ct-root-console-login"\n', "").replace("AWS root", "B"))
    write("gap", good.replace('period = "PT2H"', 'period = "PT4M"')
          .replace('detection = "ct-root-console-login"\n', "").replace("AWS root", "C"))
    write("loud", good.replace('severity = "High"', 'severity = "Critical"')
          .replace('detection = "ct-root-console-login"\n', "").replace("AWS root", "D")
          .replace('tactics = [', 'tactics = ["Hacking", ')
          .replace('techniques = ["T1078.004"]', 'techniques = ["1078"]'))
    write("wide", good.replace('{ type = "IP", Address = "SourceIpAddress" }',
                               '{ type = "IP", Ip = "SourceIpAddress" }')
          .replace('name = "AWS root console sign-in from {{SourceIpAddress}}"',
                   'name = "{{A}} {{B}} {{C}} {{D}}"').replace("ago(5m)", "ago(15m)")
          .replace('by_entities = ["Account"]', 'by_entities = ["Host"]')
          .replace('kind = "analytic"', 'colour = "red"\nkind = "analytic"'))
    (tmp_path / "analytic" / "dup.toml").write_text(good)  # an id that is not its file's
    write("twin", good)
    write("stray", good.replace('detection = "ct-root-console-login"', 'detection = "ct-nope"')
          .replace("AWS root", "E"))
    write("ct-root-console-login", good)
    with pytest.raises(ContentError) as ex:
        load_content(tmp_path)
    text = "\n".join(ex.value.problems)
    for expected in ("fast.toml: frequency PT1M is outside 5 minutes..14 days",
                     "long.toml: period P15D is outside 5 minutes..14 days",
                     "gap.toml: period PT4M is shorter than frequency PT5M",
                     "loud.toml: severity 'Critical' is not one of",
                     "loud.toml: tactics ['Hacking'] are not ATT&CK tactics",
                     "loud.toml: techniques ['1078'] must be ATT&CK ids",
                     "wide.toml: unknown key 'colour'",
                     "wide.toml: entity {'type': 'IP', 'Ip': 'SourceIpAddress'}",
                     "wide.toml: alert.name has more than 3 {{columns}}",
                     "wide.toml: the query takes rows ingested in the last 15m but runs every PT5M",
                     "wide.toml: grouping names entities or custom details the rule lacks",
                     "dup.toml: id 'ct-root-console-login' must be the file name ('dup')",
                     "name ('analytic', 'AWS root account console sign-in') is also",
                     "detection 'ct-root-console-login' is mirrored by more than one rule",
                     "stray.toml: detection 'ct-nope' is not a shipped critical or high"):
        assert expected in text, (expected, text)
    assert len(ex.value.problems) >= 13
    for name in ("dup", "twin", "stray", "fast", "long", "gap", "loud", "wide"):
        (tmp_path / "analytic" / f"{name}.toml").unlink()
    assert [i.id for i in load_content(tmp_path).items] == ["ct-root-console-login"]


def test_the_template_deploys_what_the_tables_need() -> None:
    """Standalone and merged into the DCR template: rules wait for the functions they call
    and the tables the template creates; without the findings table no findings content
    ships; with enrichment on, the rules mirroring its detections are left out."""
    template = content_template(TABLES)
    assert set(template["parameters"]) == {"workspaceName", "location"}
    kinds = [r["type"] for r in template["resources"]]
    assert kinds.count("Microsoft.SecurityInsights/alertRules") == 8  # findings + health
    assert kinds.count("Microsoft.OperationalInsights/workspaces/savedSearches") == 7
    assert kinds.count("Microsoft.Insights/workbooks") == 1
    names = [r["name"] for r in template["resources"]]
    assert len(set(names)) == len(names)
    critical = next(r for r in template["resources"]
                    if r["properties"].get("displayName") == "s3sentinel critical finding")
    assert critical["dependsOn"] == ["[resourceId('Microsoft.OperationalInsights/workspaces/"
                                     "savedSearches', parameters('workspaceName'), "
                                     "'s3sentinel-attack')]"]
    assert critical["scope"].startswith("[concat('Microsoft.OperationalInsights/workspaces/'")
    assert critical["properties"]["tactics"] == [
        "InitialAccess", "Persistence", "PrivilegeEscalation", "DefenseEvasion", "Impact"]
    book = next(r for r in template["resources"] if r["type"].endswith("workbooks"))
    data = json.loads(book["properties"]["serializedData"])
    assert data["version"] == "Notebook/1.0" and book["kind"] == "shared"
    assert all(t["content"].get("timeContextFromParameter") == "TimeRange"
               for t in data["items"] if t["type"] == 3)
    # Without enrichment: rules on the standard tables directly, no findings content.
    plain = {n: t for n, t in TABLES.items() if n != "S3SentinelFindings_CL"}
    bare = content_template(plain)["resources"]
    assert sum(r["type"].endswith("alertRules") for r in bare) == 31  # 27 mirrors + 4 health
    assert not any(r["type"].endswith("savedSearches") for r in bare)
    only_trail = content_template({"AWSCloudTrail": TABLES["AWSCloudTrail"]})["resources"]
    assert {r["properties"]["query"].split("\n")[0] for r in only_trail
            if r["type"].endswith("alertRules")} == {"AWSCloudTrail", "let window = 30m;",
                                                     "let window = 10m;", "let window = 1h;"}
    # The source-row function and the rows-per-table tile name every table written.
    source = next(r for r in template["resources"]
                  if r["properties"].get("functionAlias") == "S3SentinelFindingSource")
    data_tables = {n for n in TABLES if not n.startswith("S3Sentinel")}
    assert referenced_tables(source["properties"]["query"], TABLES) == data_tables | {
        "S3SentinelFindings_CL"}
    tile = data["items"][2]["content"]
    assert tile["title"] == "Rows per table"
    assert referenced_tables(tile["query"], TABLES) == data_tables | {"S3SentinelFindings_CL"}
    # Merged into `s3sentinel deploy`'s template: the workspace comes from its resource id.
    dcrs = dcr_template([TABLES[n] for n in ("AWSCloudTrail", "AWSALBAccessLogs_CL",
                                             "S3SentinelHealth_CL")])
    merged = with_content(dcrs, TABLES, detectors=())
    assert merged["parameters"]["workspaceResourceId"] == dcrs["parameters"]["workspaceResourceId"]
    added = merged["resources"][len(dcrs["resources"]):]
    alb = next(r for r in added if r["properties"].get("displayName", "").startswith(
        "AWS load balancer (ALB)"))
    assert alb["dependsOn"] == ["[resourceId('Microsoft.OperationalInsights/workspaces/tables', "
                                "split(parameters('workspaceResourceId'), '/')[8], "
                                "'AWSALBAccessLogs_CL')]"]
    assert alb["name"].startswith("[guid(parameters('workspaceResourceId')")
    # 17 CloudTrail rules, 3 sequences, the sign-in and ALB bursts, 4 health rules.
    assert sum(r["type"].endswith("alertRules") for r in added) == 17 + 3 + 2 + 4
    book = json.loads(next(r for r in added if r["type"].endswith("workbooks"))["properties"][
        "serializedData"])
    assert referenced_tables(book["items"][2]["content"]["query"], TABLES) == {
        "AWSCloudTrail", "AWSALBAccessLogs_CL"}
    json.dumps(merged)  # what `deploy -o` writes


# --------------------------------------------------------------------------- rules on data

MIRRORS = {i.data["detection"]: i for i in CONTENT.of("analytic") if "detection" in i.data}


def evaluable() -> dict[str, Kql]:
    """The rules mirroring enrichment detections that the interpreter evaluates."""
    out = {}
    for det, item in MIRRORS.items():
        try:
            out[det] = Kql(item.query, SCHEMAS)
        except Unsupported:
            continue
    return out


def test_the_interpreter_evaluates_every_critical_rule_and_says_which_it_cannot() -> None:
    kinds = detections()
    rules = evaluable()
    critical = {d for d, (k, p) in kinds.items() if k == "rule" and p == "critical"}
    assert critical <= set(rules)
    # Not evaluated: mv-apply, and the joins and aggregations of sequences and bursts
    # (docs-content.md lists them).
    assert set(MIRRORS) - set(rules) == {"ct-s3-bucket-policy-public"} | {
        d for d, (k, _) in kinds.items() if k != "rule" and d in MIRRORS}


def test_rules_without_enrichment_match_what_the_enrichment_rules_match() -> None:
    """On the enrichment rules' own test rows: each evaluable mirror fires on every row its
    rule must match and on none of the near misses."""
    rules = evaluable()
    checked = 0
    for rule_id, _table, row, _priority in HITS:
        if rule_id in rules:
            assert rules[rule_id].matches([dict(row)]) == [0], (rule_id, row)
            checked += 1
    for rule_id, _table, row in MISSES:
        if rule_id in rules:
            assert rules[rule_id].matches([dict(row)]) == [], (rule_id, row)
            checked += 1
    assert checked >= 50


def _trail(when: str, source: str, name: str, params: Any = None, *, user: str = "mallory",
           response: Any = None, identity: str = "IAMUser") -> dict[str, Any]:
    """A CloudTrail record as AWS writes it (mapped by the real AWSCloudTrail mapper)."""
    arn = ("arn:aws:iam::111122223333:root" if identity == "Root"
           else f"arn:aws:iam::111122223333:user/{user}")
    return {"eventVersion": "1.09", "eventTime": when, "eventSource": source, "eventName": name,
            "awsRegion": "eu-west-1", "sourceIPAddress": "203.0.113.66",
            "userAgent": "aws-cli/1.16.312 Python/2.7.18 Linux/5.10.0-kali7-amd64",
            "userIdentity": {"type": identity, "principalId": "AIDAEXAMPLE" + user.upper(),
                             "arn": arn, "accountId": "111122223333",
                             **({} if identity == "Root" else {"userName": user}),
                             "accessKeyId": "AKIAIOSFODNN7EXAMPLE"},
            "requestParameters": params, "responseElements": response,
            "requestID": "c0ffee00-0000-4000-8000-000000000001",
            "eventID": f"c0ffee00-0000-4000-8000-{zlib.crc32(f'{when}{name}'.encode()):012d}",
            "eventType": "AwsConsoleSignIn" if name == "ConsoleLogin" else "AwsApiCall",
            "readOnly": False, "managementEvent": True, "recipientAccountId": "111122223333",
            "eventCategory": "Management"}


# One incident per shipped critical rule, as AWS records them (the workload brings the
# critical sequences: a console sign-in then StopLogging, and privilege escalation).
INCIDENTS = [
    _trail("2026-11-22T21:00:00Z", "signin.amazonaws.com", "ConsoleLogin", identity="Root",
           response={"ConsoleLogin": "Success"}),
    _trail("2026-11-22T21:01:00Z", "cloudtrail.amazonaws.com", "StopLogging", {"name": "main"}),
    _trail("2026-11-22T21:02:00Z", "ec2.amazonaws.com", "DeleteFlowLogs",
           {"DeleteFlowLogsRequest": {"FlowLogId": {"tag": 1, "content": "fl-0123"}}}),
    _trail("2026-11-22T21:03:00Z", "guardduty.amazonaws.com", "DeleteDetector",
           {"detectorId": "12abc"}),
    _trail("2026-11-22T21:04:00Z", "guardduty.amazonaws.com", "UpdateDetector",
           {"detectorId": "12abc", "enable": False}),
    _trail("2026-11-22T21:05:00Z", "ec2.amazonaws.com", "AuthorizeSecurityGroupIngress",
           {"groupId": "sg-0123", "ipPermissions": {"items": [
               {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
                "ipRanges": {"items": [{"cidrIp": "0.0.0.0/0"}]}}]}}),
    _trail("2026-11-22T21:06:00Z", "kms.amazonaws.com", "ScheduleKeyDeletion",
           {"keyId": "1234abcd-12ab-34cd-56ef-1234567890ab", "pendingWindowInDays": 7}),
    # near misses: a detector enabled, an ingress from a private network, a key enabled
    _trail("2026-11-22T21:07:00Z", "guardduty.amazonaws.com", "UpdateDetector",
           {"detectorId": "12abc", "enable": True}),
    _trail("2026-11-22T21:08:00Z", "ec2.amazonaws.com", "AuthorizeSecurityGroupIngress",
           {"groupId": "sg-0123", "ipPermissions": {"items": [
               {"ipProtocol": "tcp", "fromPort": 443, "toPort": 443,
                "ipRanges": {"items": [{"cidrIp": "10.0.0.0/8"}]}}]}}),
    _trail("2026-11-22T21:09:00Z", "kms.amazonaws.com", "EnableKey", {"keyId": "1234abcd"}),
]


def _enrich(batches: list[tuple[str, list[bytes]]]) -> tuple[list[dict[str, Any]],
                                                            dict[str, dict[str, Any]]]:
    """Findings of the real enrichment (rules, anomaly scores, sequences) over ``batches`` of
    (stream, mapped rows), and the source rows by record id."""
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True, shards=4)
    enricher = Enricher(cfg, TABLES)
    states: dict[str, Any] = {}
    findings, sources = [], {}
    for n, (stream, rows) in enumerate(batches):
        rids = tuple(f"{n:016x}-{i}" for i in range(len(rows)))
        sources |= {rid: orjson.loads(raw) for rid, raw in zip(rids, rows, strict=True)}
        for out in enricher.enrich_batch([Rows(stream, "src:0/1", tuple(rows), rids)]):
            produced = [out]
            if isinstance(out, Observed):
                states[out.shard], produced = score_shard(enricher, cfg, states.get(out.shard),
                                                          out)
            findings += [orjson.loads(r) for b in produced
                         if b.stream == enricher.findings_stream for r in b.rows]
    return findings, sources


def test_end_to_end_findings_and_source_rows_satisfy_the_rules_that_should_fire() -> None:
    trail, duty = TABLES["AWSCloudTrail"], TABLES["AWSGuardDuty"]
    workload = generate(events=1500, seed=3, principals=12, instances=1)
    mapper = Mapper(trail)
    rows = [orjson.dumps(r) for r in workload.rows]
    rows += [mapper.map_dict(rec, f"injected-{i}") for i, rec in enumerate(INCIDENTS)]
    rows.sort(key=lambda raw: orjson.loads(raw)["TimeGenerated"])
    finding = _guardduty()[0] | {"severity": 8.0, "type": "Backdoor:EC2/C&CActivity.B"}
    batches = [(trail.stream, rows[i:i + 400]) for i in range(0, len(rows), 400)]
    batches.append((duty.stream, [Mapper(duty).map_dict(finding, "gd-0")]))
    findings, sources = _enrich(batches)

    by_priority = {i.data["findings"]: Kql(i.query, SCHEMAS)
                   for i in CONTENT.of("analytic") if "findings" in i.data}
    critical = {d for d, (_, p) in detections().items() if p == "critical"}
    for det in sorted(critical):
        mine = [f for f in findings if det in f.get("RuleIds", ()) or f.get("SequenceId") == det]
        assert mine, f"no finding for the critical detection {det}"
        assert by_priority["critical"].matches(mine) == list(range(len(mine))), det
        assert by_priority["high"].matches(mine) == [], det
    # Every finding raises through exactly the findings rule of its priority.
    for f in findings:
        fired = [p for p, rule in by_priority.items() if rule.matches([f])]
        assert fired == [f["Priority"]], f
    assert {f["Priority"] for f in findings} >= {"critical", "high", "anomalous"}
    # Without enrichment, each evaluable rule fires on exactly the rows its detection flagged.
    table_of = {rid: (duty if rid.startswith(f"{len(batches) - 1:016x}") else trail).name
                for rid in sources}
    for det, rule in evaluable().items():
        flagged = {f["SourceRecordId"] for f in findings if det in f.get("RuleIds", ())}
        ids = [rid for rid in sources if table_of[rid] == rule.table[0]]
        fired = {ids[i] for i in rule.matches([sources[rid] for rid in ids])}
        assert fired == flagged, (det, sorted(fired ^ flagged)[:3])
        if det in critical:
            assert fired, det
