"""Issue 16: Microsoft's standard tables for every log that has one.

Each standard table file follows the Azure Monitor Logs table reference exactly (names and
types; the reference's columns are written out below), adds only ``_CF`` columns, posts to
``Custom-<Table>`` with the output stream ``Microsoft-<Table>``, and names its reference; the
formats that have such a table map onto it by default, and their ``_CL`` tables stay defined.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import operators
from dataflow.dcr import dcr_template
from operators.formats import JSON_FORMATS
from operators.formats.registry import DEFAULT_TABLES, framing_of
from operators.schema import TableDef, load_tables

TABLES = load_tables()
TABLES_DIR = Path(operators.__file__).parent / "tables"

# The Azure Monitor table reference's columns (system columns left out) with their types.
REFERENCE: dict[str, dict[str, str]] = {
    "AWSALBAccessLogs": {
        "ActionsExecuted": "string", "Alb": "string", "ALBType": "string",
        "ChosenCertArn": "string", "Classification": "string", "ClassificationReason": "string",
        "ClientIp": "string", "ClientPort": "int", "ConnTraceId": "string",
        "DomainName": "string", "ElbStatusCode": "int", "LambdaErrorReason": "string",
        "MatchedRulePriority": "string", "ReceivedBytes": "long", "RedirectUrl": "string",
        "RequestCreationTime": "string", "RequestProcessingTime": "string",
        "RequestRaw": "string", "ResponseProcessingTime": "string", "SentBytes": "long",
        "SslCipher": "string", "SslProtocol": "string", "TargetGroupArn": "string",
        "TargetIp": "string", "TargetPort": "int", "TargetPortList": "string",
        "TargetProcessingTime": "string", "TargetStatusCode": "string",
        "TargetStatusCodeList": "string", "TimeGenerated": "datetime", "TraceId": "string",
        "UserAgent": "string"},
    "AWSNLBAccessLogs": {
        "ALPNBEProtocol": "string", "ALPNClientPrefList": "string", "ALPNFEProtocol": "string",
        "ChosenCertArn": "string", "ChosenCertSerial": "string", "ClientIPPort": "string",
        "ConnectionTime": "string", "DomainName": "string", "IncomingTLSAlert": "string",
        "Listener": "string", "Nlb": "string", "NLBType": "string", "ReceivedBytes": "string",
        "SentBytes": "string", "TargetIPPort": "string", "TimeGenerated": "datetime",
        "TLSCipher": "string", "TLSConnectionCreationTime": "string",
        "TlsHandshakeTime": "string", "TLSNamedGroup": "string", "TLSProtocolVersion": "string",
        "Version": "string"},
    "AWSCloudWatch": {
        "ExtractedTime": "datetime", "Message": "string", "TimeGenerated": "datetime"},
    "AWSSecurityHubFindings": {
        "AwsAccountId": "string", "AwsRegion": "string",
        "AwsSecurityFindingCreatedAt": "datetime", "AwsSecurityFindingDescription": "string",
        "AwsSecurityFindingFirstObservedAt": "datetime",
        "AwsSecurityFindingGeneratorId": "string", "AwsSecurityFindingId": "string",
        "AwsSecurityFindingLastObservedAt": "datetime",
        "AwsSecurityFindingProcessedAt": "datetime", "AwsSecurityFindingProductArn": "string",
        "AwsSecurityFindingProductFields": "dynamic", "AwsSecurityFindingProductName": "string",
        "AwsSecurityFindingSeverity": "dynamic", "AwsSecurityFindingTitle": "string",
        "AwsSecurityFindingTypes": "dynamic", "AwsSecurityFindingUpdatedAt": "datetime",
        "ComplianceAssociatedStandards": "dynamic", "ComplianceRelatedRequirements": "dynamic",
        "ComplianceSecurityControlId": "string", "ComplianceSecurityControlParameters": "dynamic",
        "ComplianceStatus": "string", "ComplianceStatusReasons": "dynamic", "RawData": "dynamic",
        "RecordState": "string", "Remediation": "dynamic", "Resources": "dynamic",
        "SchemaVersion": "string", "TimeGenerated": "datetime", "WorkflowState": "string"},
    "AWSNetworkFirewallFlow": {
        "Ack": "bool", "AppProto": "string", "AvailabilityZone": "string", "DestIp": "string",
        "DestPort": "string", "Ecn": "bool", "EventTimestamp": "string", "EventType": "string",
        "Fin": "bool", "FirewallName": "string", "FlowId": "string", "NetFlowAge": "string",
        "NetFlowBytes": "string", "NetFlowEnd": "datetime", "NetFlowMaxttl": "string",
        "NetFlowMinttl": "string", "NetFlowPkts": "string", "NetFlowStart": "datetime",
        "Proto": "string", "Psh": "bool", "Rst": "bool", "SrcIp": "string", "SrcPort": "string",
        "Syn": "bool", "TCPFlags": "string", "TimeGenerated": "datetime",
        "Timestamp": "datetime"},
    "AWSNetworkFirewallAlert": {
        "AlertAction": "string", "AppProto": "string", "AvailabilityZone": "string",
        "Category": "string", "DestIp": "string", "DestPort": "string", "Direction": "string",
        "EventTimestamp": "datetime", "EventType": "string", "FirewallName": "string",
        "FlowId": "string", "PktSrc": "string", "Proto": "string", "Rev": "string",
        "Severity": "string", "Signature": "string", "SignatureId": "string", "Sni": "string",
        "SrcIp": "string", "SrcPort": "string", "TimeGenerated": "datetime",
        "Timestamp": "datetime", "TxId": "string", "VerdictAction": "string",
        "Version": "string"},
}
# The connector's own columns on each (the only custom columns a standard table takes).
ADDED = {
    "AWSALBAccessLogs": {"AdditionalFields_CF"},
    "AWSNLBAccessLogs": set(),
    "AWSCloudWatch": {"AccountId_CF", "LogEventId_CF", "LogGroup_CF", "LogStream_CF",
                      "AdditionalFields_CF"},
    "AWSSecurityHubFindings": {"AdditionalFields_CF"},
    "AWSNetworkFirewallFlow": {"AdditionalFields_CF"},
    "AWSNetworkFirewallAlert": {"AdditionalFields_CF"},
}
# Which format maps onto which table when the source names none.
DEFAULTS = {
    "alb": "AWSALBAccessLogs", "nlb": "AWSNLBAccessLogs", "cloudwatchlogs": "AWSCloudWatch",
    "securityhub": "AWSSecurityHubFindings", "nfwflow": "AWSNetworkFirewallFlow",
    "nfwalert": "AWSNetworkFirewallAlert",
    # no standard table: Classic ELB, CloudFront, ALB connection logs; AWSS3ServerAccess
    # exists but its schema could not be confirmed; AWSEKSLogs takes no Logs Ingestion API.
    "elb": "AWSELBAccessLogs_CL", "cloudfront": "AWSCloudFront_CL",
    "albconn": "AWSALBConnectionLogs_CL", "s3access": "AWSS3ServerAccess_CL",
    "eksaudit": "AWSEKSLogs_CL",
}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_tables_follow_the_reference(name: str) -> None:
    table: TableDef = TABLES[name]
    assert (table.kind, table.stream, table.output_stream, table.record_id_column) == (
        "standard", f"Custom-{name}", f"Microsoft-{name}", "RecordId_CF")
    cols = {c.name: c.type for c in table.columns}
    added = {n for n in cols if n.endswith("_CF")}
    assert added == ADDED[name]
    assert {n: t for n, t in cols.items() if n not in added} == REFERENCE[name]
    names = [c.name for c in table.columns if c.name not in added]
    assert names == sorted(names, key=str.lower)  # the reference's order
    assert [c.name for c in table.columns][len(names):] == [
        c.name for c in table.columns if c.name in added]  # the _CF columns last
    assert next(c for c in table.columns if c.name == "TimeGenerated").required


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_file_names_its_reference_and_what_it_leaves_out(name: str) -> None:
    text = (TABLES_DIR / f"{name}.toml").read_text()
    assert f"learn.microsoft.com/azure/azure-monitor/reference/tables/{name.lower()}" in text
    assert "tables-features.md" in text  # the Logs Ingestion API accepts the table
    assert "NOT written here" in text


@pytest.mark.parametrize(("fmt", "table"), sorted(DEFAULTS.items()))
def test_formats_default_to_the_standard_table_where_there_is_one(fmt: str, table: str) -> None:
    assert DEFAULT_TABLES[fmt] == table
    assert table in TABLES


@pytest.mark.parametrize("name", ["AWSALBAccessLogs_CL", "AWSNLBAccessLogs_CL"])
def test_the_custom_tables_stay_defined_for_table_equals(name: str) -> None:
    assert TABLES[name].kind == "custom" and TABLES[name].stream == f"Custom-{name}"


def test_the_new_formats_frame_as_their_objects_are_written() -> None:
    assert {f: framing_of(f) for f in ("cloudwatchlogs", "securityhub", "nfwflow", "nfwalert",
                                       "eksaudit")} == {
        "cloudwatchlogs": "documents", "securityhub": "documents", "nfwflow": "lines",
        "nfwalert": "lines", "eksaudit": "lines"}
    assert {"cloudwatchlogs", "securityhub", "nfwflow", "eksaudit"} <= JSON_FORMATS
    assert "nfwalert" not in JSON_FORMATS  # parsed: event_timestamp (see networkfirewall.py)


def test_the_dcr_declares_every_column_and_adds_only_the_cf_columns() -> None:
    tables = [TABLES[n] for n in REFERENCE]
    template = dcr_template(tables)
    rules = [r for r in template["resources"]
             if r["type"] == "Microsoft.Insights/dataCollectionRules"]
    decls = {s: d for r in rules for s, d in r["properties"]["streamDeclarations"].items()}
    flows = {f["streams"][0]: f["outputStream"] for r in rules for f in r["properties"]["dataFlows"]}
    for t in tables:
        assert {c["name"] for c in decls[t.stream]["columns"]} == (
            {c.name for c in t.columns} | {"RecordId_CF"})
        assert flows[t.stream] == f"Microsoft-{t.name}"
        added = next(r for r in template["resources"] if r["type"].endswith("/tables")
                     and r["properties"]["schema"]["name"] == t.name)
        assert {c["name"] for c in added["properties"]["schema"]["columns"]} == (
            ADDED[t.name] | {"RecordId_CF"})
