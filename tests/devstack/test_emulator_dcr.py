"""DCR definitions in the Sentinel emulator: what a deployment would refuse, stream column
types, transformations and destination table schemas, and rules read from an ARM template.
Ingestion goes through the real Azure SDK client."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from azure.identity import ManagedIdentityCredential
from azure.monitor.ingestion import LogsIngestionClient

from devstack.dcrdef import (
    MAX_TRANSFORM_CHARS,
    DcrDef,
    DcrDefinitionError,
    Transform,
    rules_from_template,
)
from devstack.sentinel import SentinelEmulator

LEGACY = "dcr-00000000000000000000000000000001"
TYPED = "dcr-" + "a" * 32
FROM_TEMPLATE = "dcr-" + "b" * 32
GUID = "0F8FAD5B-D9CB-469F-A165-70867728950E"

RAW = "Custom-Raw_CL"
RAW_COLUMNS = {"TimeGenerated": "datetime", "Count": "int", "Total": "long", "Ratio": "real",
               "Ok": "boolean", "EventId": "string", "When": "string", "Extra": "dynamic"}
TYPED_RULE = {
    "name": "typed-dcr",
    "streams": {RAW: RAW_COLUMNS},
    "flows": [
        # no conversion: EventId (string) cannot go into Plain_CL's guid column, nor When
        # (string) into its datetime column
        {"streams": [RAW], "transformKql": "source", "outputStream": "Custom-Plain_CL"},
        {"streams": [RAW], "outputStream": "Custom-Converted_CL",
         "transformKql": "source\n| extend EventId = toguid(EventId), When = todatetime(When),"
                         " Label = tostring(Count)"},
    ],
    "tables": {
        "Plain_CL": {"TimeGenerated": "datetime", "Count": "long", "Total": "long",
                     "Ratio": "real", "Ok": "bool", "EventId": "guid", "When": "datetime",
                     "Extra": "dynamic"},
        "Converted_CL": {"TimeGenerated": "datetime", "Count": "int", "EventId": "guid",
                         "When": "datetime", "Label": "string"},
    },
}


def base_rule(**overrides: Any) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "name": "bad-dcr", "streams": {"Custom-A_CL": {"TimeGenerated": "datetime"}},
        "flows": [{"streams": ["Custom-A_CL"], "transformKql": "source",
                   "outputStream": "Custom-A_CL"}]}
    rule.update(overrides)
    return rule


pytestmark = pytest.mark.usefixtures("emulator_env")

@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    rules = {LEGACY: {RAW: ["TimeGenerated", "Count"]}, TYPED: TYPED_RULE,
             **rules_from_template(TEMPLATE, IDS, STANDARD_TABLES)}
    with SentinelEmulator(rules=rules, workdir=tmp_path_factory.mktemp("dcr")) as em:
        yield em




def upload(em: SentinelEmulator, rule: str, stream: str, rows: list[dict[str, Any]]) -> None:
    LogsIngestionClient(em.endpoint, credential=ManagedIdentityCredential(),
                        connection_verify=em.ca_file, retry_total=0).upload(rule, stream, rows)


# -- definitions a deployment refuses ----------------------------------------------------------
def _many_streams() -> dict[str, Any]:
    streams = {f"Custom-S{i}_CL": {"TimeGenerated": "datetime"} for i in range(11)}
    return base_rule(streams=streams, flows=[{"streams": list(streams), "outputStream":
                                              "Custom-A_CL"}])


def _many_flows() -> dict[str, Any]:
    rule = base_rule()
    rule["flows"] = rule["flows"] * 11
    return rule


REFUSED = {
    "11 streams": (_many_streams(), "11 stream declarations; the maximum is 10"),
    "11 flows": (_many_flows(), "11 dataFlows; the maximum is 10"),
    "stream name": (base_rule(streams={"A_CL": {"TimeGenerated": "datetime"}}),
                    "stream name 'A_CL' must start with 'Custom-'"),
    "unknown flow stream": (
        base_rule(flows=[{"streams": ["Custom-A_CL", "Custom-B_CL"],
                          "outputStream": "Custom-A_CL"}]),
        "dataFlows[0]: stream 'Custom-B_CL' is not declared"),
    "long transform": (
        base_rule(flows=[{"streams": ["Custom-A_CL"], "outputStream": "Custom-A_CL",
                          "transformKql": "source" + " " * MAX_TRANSFORM_CHARS}]),
        f"transformKql is {MAX_TRANSFORM_CHARS + 6} characters long; the maximum is 15360"),
    "unsupported transform": (
        base_rule(flows=[{"streams": ["Custom-A_CL"], "outputStream": "Custom-A_CL",
                          "transformKql": "source | where TimeGenerated > ago(1d)"}]),
        "emulator cannot evaluate transform 'source | where TimeGenerated > ago(1d)'"),
    "transform not from source": (
        base_rule(flows=[{"streams": ["Custom-A_CL"], "outputStream": "Custom-A_CL",
                          "transformKql": "print TimeGenerated = now()"}]),
        "emulator cannot evaluate transform 'print TimeGenerated = now()'"),
    "unknown function": (
        base_rule(flows=[{"streams": ["Custom-A_CL"], "outputStream": "Custom-A_CL",
                          "transformKql": "source | extend X = strlen(TimeGenerated)"}]),
        "emulator cannot evaluate transform"),
    "transform reads an undeclared column": (
        base_rule(flows=[{"streams": ["Custom-A_CL"], "outputStream": "Custom-A_CL",
                          "transformKql": "source | extend X = toguid(Missing)"}]),
        "reads column 'Missing'"),
    "output stream": (
        base_rule(flows=[{"streams": ["Custom-A_CL"], "outputStream": "Custom-A"}]),
        "outputStream 'Custom-A' must be 'Custom-<Table>_CL' or 'Microsoft-<Table>'"),
    "column type": (base_rule(streams={"Custom-A_CL": {"TimeGenerated": "guid"}}),
                    "column 'TimeGenerated' has type 'guid'"),
    "column name": (base_rule(streams={"Custom-A_CL": {"1st": "string"}}),
                    "column name '1st' is invalid"),
    "too many columns": (base_rule(streams={"Custom-A_CL": {f"C{i}": "string"
                                                             for i in range(501)}}),
                         "has 501 columns; the maximum is 500"),
    "table column type": (base_rule(tables={"A_CL": {"TimeGenerated": "timestamp"}}),
                          "table 'A_CL' column 'TimeGenerated' has type 'timestamp'"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_definitions_a_deployment_refuses(case: str) -> None:
    spec, message = REFUSED[case]
    with pytest.raises(DcrDefinitionError) as info:
        SentinelEmulator(rules={TYPED: spec})
    assert "DCR 'bad-dcr' (dcr-aaaa" in str(info.value)
    assert message in str(info.value)


def test_limits_of_a_definition_are_accepted_at_the_boundary() -> None:
    streams = {f"Custom-S{i}_CL": {f"C{j}": "string" for j in range(500)} for i in range(10)}
    flows = [{"streams": [s], "transformKql": "source" + " " * (MAX_TRANSFORM_CHARS - 6)}
             for s in streams]
    dcr = DcrDef.from_spec(TYPED, {"streams": streams, "flows": flows})
    assert len(dcr.flows) == 10 and dcr.flows[0].table == "S0_CL"  # default output stream


def test_legacy_rules_keep_their_form() -> None:
    assert SentinelEmulator(rules={"dcr-anything": {"Custom-X": None, "streams": ["a"]}})


# -- column types, transformations, destination tables ----------------------------------------
def test_values_that_do_not_fit_their_stream_type_become_null(emulator: SentinelEmulator) -> None:
    good = {"TimeGenerated": "2024-05-01T12:00:00.1234567+02:00", "Count": 5, "Total": 2**40,
            "Ratio": 3, "Ok": False, "Extra": {"a": [1]}}
    bad = {"TimeGenerated": "yesterday", "Count": "5", "Total": 1.5, "Ratio": "0.5",
           "Ok": 1, "Extra": None}
    edge = {"TimeGenerated": "2024-05-01 12:00", "Count": 2**31, "Total": True, "Ratio": 0.5}
    edge2 = {"Count": True, "Total": 2**63 - 1}  # a bool is no int; long's top fits
    upload(emulator, TYPED, RAW, [good, bad, edge, edge2])
    plain = emulator.records(table="Plain_CL")
    assert plain[0] == good
    assert plain[1] == {k: None for k in bad}
    assert plain[2] == {"TimeGenerated": "2024-05-01 12:00", "Count": None, "Total": None,
                        "Ratio": 0.5}
    assert plain[3] == {"Count": None, "Total": 2**63 - 1}
    assert emulator.dropped_values(RAW) == {"TimeGenerated": 1, "Count": 3, "Total": 2,
                                            "Ratio": 1, "Ok": 1}
    assert emulator.summary()["streams"][RAW]["dropped_values"] == emulator.dropped_values(RAW)
    assert emulator.dropped_columns(RAW) == {}


def test_a_string_into_a_guid_column_needs_toguid(emulator: SentinelEmulator) -> None:
    rows = [{"TimeGenerated": "2024-05-01T12:00:00Z", "Count": 7, "EventId": GUID,
             "When": "2024-05-01T14:00:00+02:00", "Undeclared": 1},
            {"TimeGenerated": "2024-05-01T12:00:01Z", "EventId": "not-a-guid", "When": "soon"}]
    upload(emulator, TYPED, RAW, rows)
    # Without a conversion the service drops the value: no EventId, no When in Plain_CL.
    assert emulator.records(table="Plain_CL") == [
        {"TimeGenerated": "2024-05-01T12:00:00Z", "Count": 7},
        {"TimeGenerated": "2024-05-01T12:00:01Z"}]
    assert emulator.dropped_table_columns("Plain_CL") == {"EventId": 2, "When": 2}
    # With toguid/todatetime it lands (a non-GUID string becomes null); the int Count goes
    # into Converted_CL's int column as it is, and as text into Label.
    assert emulator.records(table="Converted_CL") == [
        {"TimeGenerated": "2024-05-01T12:00:00Z", "Count": 7, "EventId": GUID.lower(),
         "When": "2024-05-01T12:00:00Z", "Label": "7"},
        {"TimeGenerated": "2024-05-01T12:00:01Z", "EventId": None, "When": None, "Label": ""}]
    assert emulator.dropped_table_columns("Converted_CL") == {}
    assert emulator.dropped_columns(RAW) == {"Undeclared": 1}
    assert len(emulator.records(RAW)) == 4  # one record per row and data flow
    tables = emulator.summary()["tables"]
    assert tables["Plain_CL"] == {"records": 2, "dropped_columns": {"EventId": 2, "When": 2}}


def test_a_column_the_table_does_not_have_is_dropped(emulator: SentinelEmulator) -> None:
    upload(emulator, TYPED, RAW, [{"TimeGenerated": "2024-05-01T12:00:00Z", "Total": 5,
                                   "Ratio": 0.5, "Ok": True, "Extra": [1]}])
    assert emulator.records(table="Converted_CL") == [  # extend sets what it converts
        {"TimeGenerated": "2024-05-01T12:00:00Z", "EventId": None, "When": None, "Label": ""}]
    assert emulator.dropped_table_columns("Converted_CL") == {
        "Total": 1, "Ratio": 1, "Ok": 1, "Extra": 1}
    assert emulator.records(table="Plain_CL") == [  # long/real/bool/dynamic fit Plain_CL
        {"TimeGenerated": "2024-05-01T12:00:00Z", "Total": 5, "Ratio": 0.5, "Ok": True,
         "Extra": [1]}]


def test_legacy_rules_do_no_type_checks(emulator: SentinelEmulator) -> None:
    upload(emulator, LEGACY, RAW, [{"TimeGenerated": "yesterday", "Count": "5", "X": 1}])
    assert emulator.records(RAW) == [{"TimeGenerated": "yesterday", "Count": "5"}]
    assert emulator.dropped_values(RAW) == {} and emulator.dropped_columns(RAW) == {"X": 1}


@pytest.mark.parametrize(("function", "value", "expected"), [
    ("toguid", GUID, GUID.lower()), ("toguid", "x", None), ("toguid", 5, None),
    ("todatetime", "2024-05-01T12:00:00.50Z", "2024-05-01T12:00:00.5Z"),
    ("todatetime", "2024-05-01", "2024-05-01T00:00:00Z"), ("todatetime", "2024-02-30", None),
    ("tostring", 1.0, "1"), ("tostring", 1.5, "1.5"), ("tostring", True, "true"),
    ("tostring", {"a": 1}, '{"a":1}'), ("tostring", None, ""),
    ("toint", "42", 42), ("toint", 2.9, 2), ("toint", 2**31, None), ("toint", "x", None),
    ("tolong", 2**31, 2**31), ("toreal", "0.25", 0.25), ("toreal", 3, 3.0),
    ("tobool", "TRUE", True), ("tobool", 0, False), ("tobool", "yes", None),
    ("toint", None, None),
])
def test_conversions(function: str, value: Any, expected: Any) -> None:
    transform = Transform.parse(f"source | extend Out = {function}(In)", "test")
    assert transform.apply({"In": value})["Out"] == expected


# -- ARM templates -----------------------------------------------------------------------------
IDS = {"demo-dcr": FROM_TEMPLATE}
STANDARD_TABLES = {"AWSCloudTrail": {"TimeGenerated": "datetime", "EventName": "string",
                                     "AwsEventId": "string"}}
TEMPLATE: dict[str, Any] = {
    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
    "resources": [
        {"type": "Microsoft.OperationalInsights/workspaces/tables", "apiVersion": "2022-10-01",
         "name": "[concat(parameters('workspace'), '/Demo_CL')]",
         "properties": {"schema": {"name": "Demo_CL", "columns": [
             {"name": "TimeGenerated", "type": "dateTime"}, {"name": "Message", "type": "string"},
             {"name": "RequestId", "type": "guid"}]}}},
        {"type": "Microsoft.OperationalInsights/workspaces/tables", "apiVersion": "2022-10-01",
         "name": "[concat(parameters('workspace'), '/AWSCloudTrail')]",
         "properties": {"schema": {"name": "AWSCloudTrail", "columns": [
             {"name": "RecordId_CF", "type": "string"}]}}},
        {"type": "Microsoft.Insights/dataCollectionRules", "apiVersion": "2023-03-11",
         "name": "demo-dcr", "location": "westeurope",
         "properties": {
             "streamDeclarations": {
                 "Custom-Demo_CL": {"columns": [
                     {"name": "TimeGenerated", "type": "datetime"},
                     {"name": "Message", "type": "string"},
                     {"name": "RequestId", "type": "string"}]},
                 "Custom-AWSCloudTrail": {"columns": [
                     {"name": "TimeGenerated", "type": "datetime"},
                     {"name": "EventName", "type": "string"},
                     {"name": "RecordId_CF", "type": "string"},
                     {"name": "Debug", "type": "string"}]}},
             "destinations": {"logAnalytics": [{"name": "ws", "workspaceResourceId": "x"}]},
             "dataFlows": [
                 {"streams": ["Custom-Demo_CL"], "destinations": ["ws"],
                  "transformKql": "source | extend RequestId = toguid(RequestId)",
                  "outputStream": "Custom-Demo_CL"},
                 {"streams": ["Custom-AWSCloudTrail"], "destinations": ["ws"],
                  "transformKql": "source", "outputStream": "Microsoft-AWSCloudTrail"}]}},
    ],
}


def test_rules_from_template_reads_streams_flows_and_tables() -> None:
    rules = rules_from_template(TEMPLATE, IDS, STANDARD_TABLES)
    assert rules == {FROM_TEMPLATE: {
        "name": "demo-dcr",
        "streams": {
            "Custom-Demo_CL": {"TimeGenerated": "datetime", "Message": "string",
                               "RequestId": "string"},
            "Custom-AWSCloudTrail": {"TimeGenerated": "datetime", "EventName": "string",
                                     "RecordId_CF": "string", "Debug": "string"}},
        "flows": [
            {"streams": ["Custom-Demo_CL"],
             "transformKql": "source | extend RequestId = toguid(RequestId)",
             "outputStream": "Custom-Demo_CL"},
            {"streams": ["Custom-AWSCloudTrail"], "transformKql": "source",
             "outputStream": "Microsoft-AWSCloudTrail"}],
        "tables": {
            "Demo_CL": {"TimeGenerated": "datetime", "Message": "string", "RequestId": "guid"},
            # the standard table's schema with the template's added column merged in
            "AWSCloudTrail": {"TimeGenerated": "datetime", "EventName": "string",
                              "AwsEventId": "string", "RecordId_CF": "string"}},
    }}
    # Without the standard table's schema its flow is not type-checked.
    assert set(rules_from_template(TEMPLATE, IDS, {})[FROM_TEMPLATE]["tables"]) == {"Demo_CL"}
    # A custom table the template does not create takes its schema from `tables`.
    template = copy.deepcopy(TEMPLATE)
    del template["resources"][0]
    demo = {"TimeGenerated": "datetime", "Message": "string", "RequestId": "guid"}
    tables = rules_from_template(template, IDS, {"Demo_CL": demo})[FROM_TEMPLATE]["tables"]
    assert tables == {"Demo_CL": demo}


def test_rules_from_template_needs_every_immutable_id() -> None:
    with pytest.raises(KeyError, match="demo-dcr"):
        rules_from_template(TEMPLATE, {"other-dcr": FROM_TEMPLATE}, STANDARD_TABLES)


def test_rules_from_template_validates_the_definition() -> None:
    template = copy.deepcopy(TEMPLATE)
    flows = template["resources"][2]["properties"]["dataFlows"]
    flows[0]["transformKql"] = "source | project Message"
    with pytest.raises(DcrDefinitionError, match="DCR 'demo-dcr'.*cannot evaluate"):
        rules_from_template(template, IDS, STANDARD_TABLES)


def test_a_template_rule_ingests_like_the_service(emulator: SentinelEmulator) -> None:
    upload(emulator, FROM_TEMPLATE, "Custom-Demo_CL", [
        {"TimeGenerated": "2024-05-01T12:00:00Z", "Message": "hi", "RequestId": GUID}])
    upload(emulator, FROM_TEMPLATE, "Custom-AWSCloudTrail", [
        {"TimeGenerated": "2024-05-01T12:00:00Z", "EventName": "GetObject",
         "RecordId_CF": "r1", "Debug": "dropped: AWSCloudTrail has no Debug column"}])
    assert emulator.records(table="Demo_CL") == [
        {"TimeGenerated": "2024-05-01T12:00:00Z", "Message": "hi", "RequestId": GUID.lower()}]
    assert emulator.records(table="AWSCloudTrail") == [
        {"TimeGenerated": "2024-05-01T12:00:00Z", "EventName": "GetObject", "RecordId_CF": "r1"}]
    assert emulator.dropped_table_columns("AWSCloudTrail") == {"Debug": 1}
    stats = emulator.rule_stats()[FROM_TEMPLATE]
    assert stats["name"] == "demo-dcr" and stats["tables"] == ["AWSCloudTrail", "Demo_CL"]
