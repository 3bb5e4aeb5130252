"""CloudWatch Logs subscription data and Security Hub findings (EventBridge), as Firehose writes them.

Each document is expanded into one record per log event or finding
(:mod:`operators.formats.envelopes`), and each record maps onto its standard table; every golden
row is checked on both paths of the Mapper (``map_json`` on the bytes, ``map_dict`` on the parsed
record). The documents follow the AWS documentation's examples: the decompressed data of
"Subscription filters with Amazon Data Firehose" and its CONTROL_MESSAGE, the EventBridge event
format for Security Hub CSPM, and the ASFF attributes' documented examples.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.config import SourceConfig
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Row
from operators.formats import ParseError
from operators.formats.envelopes import cloudwatch_events, securityhub_findings
from operators.formats.registry import DEFAULT_TABLES, detect, expander_of, framing_of
from operators.parse import RecordMapper
from operators.schema import Mapper, MappingError, load_tables
from tests.operators.formats.strategies import json_values
from tests.operators.formats.strategies import mutations as _mutations

TABLES = load_tables()
CW = Mapper(TABLES["AWSCloudWatch"])
SH = Mapper(TABLES["AWSSecurityHubFindings"])
ACCT = "111111111111"
MESSAGE = '{"eventVersion":"1.03","userIdentity":{"type":"Root"}'  # as the example has it

# --------------------------------------------------------------------------- CloudWatch Logs

CW_DOC: dict[str, Any] = {
    "owner": ACCT,
    "logGroup": "CloudTrail/logs",
    "logStream": f"{ACCT}_CloudTrail/logs_us-east-1",
    "subscriptionFilters": ["Destination"],
    "messageType": "DATA_MESSAGE",
    "logEvents": [
        {"id": f"3195310660696698337880902507980421114328961542429822{n}",
         "timestamp": 1432826855000, "message": MESSAGE}
        for n in (1568, 1569, 1570)],
}
CW_CONTROL: dict[str, Any] = {
    "messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "",
    "logStream": "", "subscriptionFilters": [], "logEvents": [
        {"id": "", "timestamp": 1432826855000,
         "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}


def cw_row(n: int, rid: str) -> dict[str, Any]:
    return {
        "ExtractedTime": "2015-05-28T15:27:35Z", "Message": MESSAGE,
        "TimeGenerated": "2015-05-28T15:27:35Z", "AccountId_CF": ACCT,
        "LogEventId_CF": f"3195310660696698337880902507980421114328961542429822{n}",
        "LogGroup_CF": "CloudTrail/logs", "LogStream_CF": f"{ACCT}_CloudTrail/logs_us-east-1",
        "AdditionalFields_CF": {"messageType": "DATA_MESSAGE",
                                "subscriptionFilters": ["Destination"]},
        "RecordId_CF": rid}


def both(m: Mapper, rec: bytes, rid: str = "r") -> dict[str, Any]:
    """The row from both paths of the Mapper, which must agree (AdditionalFields_CF's keys may
    come in another order: the fast path gathers the known fields in their order)."""
    fast = orjson.loads(m.map_json(rec, rid))
    generic = orjson.loads(m.map_dict(orjson.loads(rec), rid))
    assert fast == generic
    assert list(fast) == list(generic)
    return fast


def test_a_document_gives_one_record_per_log_event_with_its_group_and_stream() -> None:
    records = cloudwatch_events(orjson.dumps(CW_DOC))
    assert [orjson.loads(r) for r in records] == [
        {"owner": ACCT, "logGroup": "CloudTrail/logs",
         "logStream": f"{ACCT}_CloudTrail/logs_us-east-1", "subscriptionFilters": ["Destination"],
         "messageType": "DATA_MESSAGE", "logEvent": event} for event in CW_DOC["logEvents"]]


def test_cloudwatch_golden_rows() -> None:
    records = cloudwatch_events(orjson.dumps(CW_DOC))
    rows = [both(CW, rec, f"obj-{i}") for i, rec in enumerate(records)]
    assert rows == [cw_row(n, f"obj-{i}") for i, n in enumerate((1568, 1569, 1570))]
    assert list(rows[0]) == list(cw_row(1568, ""))  # the table's order, the record id last


def test_a_control_message_holds_no_log_data() -> None:
    assert cloudwatch_events(orjson.dumps(CW_CONTROL)) == []


def test_an_empty_data_message_and_the_item_bytes_as_written() -> None:
    assert cloudwatch_events(b'{"messageType":"DATA_MESSAGE","logEvents":[]}') == []
    doc = b'{"logGroup":"g","logEvents":[ {"id" : "1", "timestamp":1,"message":"a\\u00e9"} ]}'
    assert cloudwatch_events(doc) == [
        b'{"logGroup":"g","logEvent":{"id" : "1", "timestamp":1,"message":"a\\u00e9"}}']


def test_the_expansion_is_deterministic() -> None:
    """Offsets and record ids depend on it: reading a document again gives the same records."""
    doc = orjson.dumps(CW_DOC)
    assert cloudwatch_events(doc) == cloudwatch_events(bytes(doc))


def test_cloudwatch_records_take_the_fast_path() -> None:
    rec = cloudwatch_events(orjson.dumps(CW_DOC))[0]
    expected = CW.map_dict(orjson.loads(rec), "r")

    def generic(*_: Any) -> bytes:
        raise AssertionError("took the generic path")

    m = Mapper(TABLES["AWSCloudWatch"])
    m.row_dict = generic  # type: ignore[method-assign]
    assert orjson.loads(m.map_json(rec, "r")) == orjson.loads(expected)


def test_fields_without_a_column_are_kept() -> None:
    doc = {**CW_DOC, "policyLevel": "ACCOUNT_LEVEL_POLICY",
           "logEvents": [{**CW_DOC["logEvents"][0], "extractedFields": {"a": "1"}}]}
    row = both(CW, cloudwatch_events(orjson.dumps(doc))[0])
    assert row["AdditionalFields_CF"] == {
        "messageType": "DATA_MESSAGE", "subscriptionFilters": ["Destination"],
        "policyLevel": "ACCOUNT_LEVEL_POLICY", "logEvent.extractedFields": {"a": "1"}}


@pytest.mark.parametrize("event", [
    {"id": "1", "message": "no timestamp"}, {"id": "1", "timestamp": None, "message": "m"},
    "not an object", 42, None])
def test_an_event_without_a_timestamp_is_a_mapping_error_on_both_paths(event: Any) -> None:
    (rec,) = cloudwatch_events(orjson.dumps({**CW_DOC, "logEvents": [event]}))
    for call in (lambda: CW.map_json(rec, "r"), lambda: CW.map_dict(orjson.loads(rec), "r")):
        with pytest.raises(MappingError) as ex:
            call()
        assert ex.value.code == "missing_required"


@pytest.mark.parametrize(("doc", "code"), [
    (b"", "invalid_json"), (b"{", "invalid_json"), (b"[]", "not_an_object"),
    (b'"text"', "not_an_object"), (b'{"owner": "1"}', "not_cloudwatch"),
    (b'{"logEvents": {"id": 1}}', "malformed"), (b'{"logEvents": "x"}', "malformed"),
    (b'{"a": 1}{"b": 2}', "invalid_json"), (b"\xff\xfe{}", "invalid_json"),
])
def test_documents_that_are_not_subscription_data_are_parse_errors(doc: bytes, code: str) -> None:
    with pytest.raises(ParseError) as ex:
        cloudwatch_events(doc)
    assert ex.value.code == code and ex.value.reason


# --------------------------------------------------------------------------- Security Hub

FINDING: dict[str, Any] = {
    "SchemaVersion": "2018-10-08",
    "Id": f"arn:aws:securityhub:us-west-2:{ACCT}:security-control/Config.1/finding/"
          "a1b2c3d4-5678-90ab-cdef-EXAMPLE11111",
    "ProductArn": "arn:aws:securityhub:us-west-2::product/aws/securityhub",
    "ProductName": "Security Hub",
    "CompanyName": "AWS",
    "Region": "us-west-2",
    "GeneratorId": "security-control/Config.1",
    "AwsAccountId": ACCT,
    "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
    "FirstObservedAt": "2017-03-22T13:22:13.933Z",
    "LastObservedAt": "2024-01-04T15:25:10.123456789+17:59",
    "CreatedAt": "2017-03-22T13:22:13.933Z",
    "UpdatedAt": "2024-01-04T15:25:10-1759",
    "Severity": {"Label": "HIGH", "Normalized": 70, "Original": "HIGH"},
    "Title": "AWS Config should be enabled",
    "Description": "This AWS control checks whether AWS Config is enabled in the current "
                   "account and Region.",
    "Remediation": {"Recommendation": {
        "Text": "For information on how to correct this issue, consult the AWS Security Hub "
                "controls documentation.",
        "Url": "https://docs.aws.amazon.com/console/securityhub/Config.1/remediation"}},
    "ProductFields": {"aws/securityhub/ProductName": "Security Hub",
                      "aws/securityhub/CompanyName": "AWS"},
    "Resources": [{"Type": "AwsAccount", "Id": f"AWS::::Account:{ACCT}", "Partition": "aws",
                   "Region": "us-west-2"}],
    "Compliance": {
        "Status": "FAILED", "SecurityControlId": "Config.1",
        "RelatedRequirements": ["CIS AWS Foundations Benchmark v1.2.0/2.5"],
        "AssociatedStandards": [{"StandardsId": "standards/aws-foundational-security-best-"
                                                "practices/v/1.0.0"}],
        "StatusReasons": [{"ReasonCode": "CONFIG_EVALUATIONS_EMPTY",
                           "Description": "AWS Config evaluated your resources against the "
                                          "rule. The rule did not apply to the AWS resources "
                                          "in its scope."}]},
    "WorkflowState": "NEW",
    "Workflow": {"Status": "NEW"},
    "RecordState": "ACTIVE",
    "FindingProviderFields": {
        "Severity": {"Label": "MEDIUM", "Original": "MEDIUM"},
        "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"]},
    "ProcessedAt": "2024-01-04T15:25:31.123Z",
}
EVENT: dict[str, Any] = {
    "version": "0",
    "id": "CWE-event-id",
    "detail-type": "Security Hub Findings - Imported",
    "source": "aws.securityhub",
    "account": ACCT,
    "time": "2019-04-11T21:52:17Z",
    "region": "us-west-2",
    "resources": [FINDING["Id"]],
    "detail": {"findings": [FINDING]},
}
SH_ROW: dict[str, Any] = {
    "AwsAccountId": ACCT, "AwsRegion": "us-west-2",
    "AwsSecurityFindingCreatedAt": "2017-03-22T13:22:13.933Z",
    "AwsSecurityFindingDescription": FINDING["Description"],
    "AwsSecurityFindingFirstObservedAt": "2017-03-22T13:22:13.933Z",
    "AwsSecurityFindingGeneratorId": "security-control/Config.1",
    "AwsSecurityFindingId": FINDING["Id"],
    "AwsSecurityFindingLastObservedAt": "2024-01-03T21:26:10.123456Z",  # +17:59, 9 digits
    "AwsSecurityFindingProcessedAt": "2024-01-04T15:25:31.123Z",
    "AwsSecurityFindingProductArn": "arn:aws:securityhub:us-west-2::product/aws/securityhub",
    "AwsSecurityFindingProductFields": FINDING["ProductFields"],
    "AwsSecurityFindingProductName": "Security Hub",
    "AwsSecurityFindingSeverity": {"Label": "MEDIUM", "Original": "MEDIUM"},  # the provider's
    "AwsSecurityFindingTitle": "AWS Config should be enabled",
    "AwsSecurityFindingTypes": FINDING["Types"],
    "AwsSecurityFindingUpdatedAt": "2024-01-05T09:24:10Z",  # -1759
    "ComplianceAssociatedStandards": FINDING["Compliance"]["AssociatedStandards"],
    "ComplianceRelatedRequirements": FINDING["Compliance"]["RelatedRequirements"],
    "ComplianceSecurityControlId": "Config.1",
    "ComplianceStatus": "FAILED",
    "ComplianceStatusReasons": FINDING["Compliance"]["StatusReasons"],
    "RawData": FINDING,
    "RecordState": "ACTIVE",
    "Remediation": FINDING["Remediation"],
    "Resources": FINDING["Resources"],
    "SchemaVersion": "2018-10-08",
    "TimeGenerated": "2019-04-11T21:52:17Z",
    "WorkflowState": "NEW",
    "AdditionalFields_CF": {"version": "0", "id": "CWE-event-id",
                            "detail-type": "Security Hub Findings - Imported",
                            "source": "aws.securityhub", "account": ACCT, "region": "us-west-2",
                            "resources": [FINDING["Id"]]},
    "RecordId_CF": "r",
}


def test_an_event_gives_one_record_per_finding() -> None:
    second = {**FINDING, "Id": FINDING["Id"] + "-2"}
    event = {**EVENT, "detail": {"findings": [FINDING, second]}}
    records = [orjson.loads(r) for r in securityhub_findings(orjson.dumps(event))]
    envelope = {k: v for k, v in EVENT.items() if k != "detail"}
    assert records == [{**envelope, "finding": FINDING}, {**envelope, "finding": second}]


def test_securityhub_golden_row() -> None:
    (rec,) = securityhub_findings(orjson.dumps(EVENT))
    row = both(SH, rec)
    assert row == SH_ROW
    assert list(row) == list(SH_ROW)  # the table's order, the record id last


def test_securityhub_records_take_the_fast_path() -> None:
    (rec,) = securityhub_findings(orjson.dumps(EVENT))
    m = Mapper(TABLES["AWSSecurityHubFindings"])
    expected = orjson.loads(m.map_dict(orjson.loads(rec), "r"))

    def generic(*_: Any) -> bytes:
        raise AssertionError("took the generic path")

    m.row_dict = generic  # type: ignore[method-assign]
    assert orjson.loads(m.map_json(rec, "r")) == expected


def test_a_custom_action_event_and_other_detail_members() -> None:
    event = {**EVENT, "detail-type": "Security Hub Findings - Custom Action",
             "detail": {"actionName": "SendToSIEM", "actionDescription": "d",
                        "findings": [FINDING]}}
    (rec,) = securityhub_findings(orjson.dumps(event))
    row = both(SH, rec)
    assert row["AdditionalFields_CF"]["detail"] == {"actionName": "SendToSIEM",
                                                    "actionDescription": "d"}
    assert row["AwsSecurityFindingId"] == FINDING["Id"]


def test_no_finding_no_record() -> None:
    assert securityhub_findings(orjson.dumps({**EVENT, "detail": {"findings": []}})) == []


@pytest.mark.parametrize(("field", "column"), [("Id", "AwsSecurityFindingId")])
def test_a_finding_without_an_id_is_a_mapping_error(field: str, column: str) -> None:
    finding = {k: v for k, v in FINDING.items() if k != field}
    (rec,) = securityhub_findings(orjson.dumps({**EVENT, "detail": {"findings": [finding]}}))
    for call in (lambda: SH.map_json(rec, "r"), lambda: SH.map_dict(orjson.loads(rec), "r")):
        with pytest.raises(MappingError, match=rf"\(column {column}\)") as ex:
            call()
        assert ex.value.code == "missing_required"


@pytest.mark.parametrize(("doc", "code", "says"), [
    ({**EVENT, "detail-type": "Findings Imported V2"}, "not_securityhub", "OCSF"),
    ({**EVENT, "detail-type": "Security Hub Insight Results"}, "not_securityhub", "detail-type"),
    ({k: v for k, v in EVENT.items() if k != "detail"}, "not_securityhub", "no detail"),
    ({**EVENT, "detail": {"insightName": "x"}}, "not_securityhub", "no findings"),
    ({**EVENT, "detail": {"findings": {"Id": "x"}}}, "malformed", "array"),
    ({**EVENT, "detail": "findings"}, "not_an_object", "detail"),
])
def test_events_that_are_not_asff_findings_are_parse_errors(doc: dict, code: str,
                                                             says: str) -> None:
    with pytest.raises(ParseError, match=says) as ex:
        securityhub_findings(orjson.dumps(doc))
    assert ex.value.code == code


# --------------------------------------------------------------------------- registry and detection


def test_both_formats_are_documents_with_their_expanders_and_tables() -> None:
    assert framing_of("cloudwatchlogs") == framing_of("securityhub") == "documents"
    assert expander_of("cloudwatchlogs") is cloudwatch_events
    assert expander_of("securityhub") is securityhub_findings
    assert DEFAULT_TABLES["cloudwatchlogs"] == "AWSCloudWatch"
    assert DEFAULT_TABLES["securityhub"] == "AWSSecurityHubFindings"
    with pytest.raises(ValueError, match="not made of JSON documents"):
        expander_of("ndjson")


def test_firehose_objects_are_recognised_by_their_first_bytes() -> None:
    key = "firehose/2026/11/01/10/stream-1-2026-11-01-10-05-00-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert detect(key) is None  # Firehose keys say nothing
    assert detect(key, orjson.dumps(CW_DOC)) == "cloudwatchlogs"  # owner comes first here
    assert detect(key, orjson.dumps(CW_CONTROL) + orjson.dumps(CW_DOC)) == "cloudwatchlogs"
    assert detect(key, b"\n " + orjson.dumps(EVENT)[:4096]) == "securityhub"
    v2 = {**EVENT, "detail-type": "Findings Imported V2"}
    assert detect(key, orjson.dumps(v2)) == "ndjson"  # not ASFF: not this format
    assert detect(key, b'{"messageType": "x", "logEvents": []}') == "ndjson"
    assert detect(key, b'{"source": "aws.guardduty", "detail-type": "GuardDuty Finding"}') == \
        "ndjson"


def test_each_record_maps_with_its_own_record_id() -> None:
    """Through the flow's mapper: each log event or finding is a record of its own offset."""
    mapper = RecordMapper([SourceConfig(name="all", bucket="logs", format="auto")], TABLES,
                          max_row_bytes=1_000_000)
    for fmt, records in (("cloudwatchlogs", cloudwatch_events(orjson.dumps(CW_DOC))),
                         ("securityhub", securityhub_findings(orjson.dumps(EVENT)))):
        obj = ObjectRef("all", "all:0/1", "logs", "firehose/x", "etag", 10, fmt)
        rows = [mapper(RawRecord(obj, 40 + i, rec)) for i, rec in enumerate(records)]
        assert all(type(r) is Row and r.stream == f"Custom-{DEFAULT_TABLES[fmt]}" for r in rows)
        ids = [orjson.loads(r.data)["RecordId_CF"] for r in rows]  # type: ignore[union-attr]
        assert ids == [f"{obj.id}-{40 + i}" for i in range(len(records))]
        bad = mapper(RawRecord(obj, 99, b'{"logEvent": {}, "finding": {}}'))
        assert type(bad) is ErrorRecord and bad.stage == "map" and bad.offset == 99


# --------------------------------------------------------------------------- hostile input

EXPANDERS = [cloudwatch_events, securityhub_findings]


@settings(max_examples=400, deadline=None)
@given(expand=st.sampled_from(EXPANDERS), data=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_parse_errors(expand: Any, data: bytes) -> None:
    with contextlib.suppress(ParseError):
        for rec in expand(data):
            assert orjson.loads(rec)  # what comes out is a JSON object




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_shape_gives_records_or_parse_errors_and_both_paths_agree(data: st.DataObject) -> None:
    """Whatever the types of the envelope's and the items' fields: records (JSON objects) or a
    ParseError; each record maps the same on both paths, or fails the same way."""
    cases = [(cloudwatch_events, CW, CW_DOC, "logEvents", CW_DOC["logEvents"][0]),
             (securityhub_findings, SH, EVENT, "detail", FINDING)]
    expand, mapper, doc, key, item = data.draw(st.sampled_from(cases))
    mutated_item = data.draw(_mutations(item))
    if key == "detail":
        doc = {**doc, "detail": {"findings": [mutated_item, data.draw(json_values)]}}
    else:
        doc = {**doc, "logEvents": [mutated_item, data.draw(json_values)]}
    doc = data.draw(_mutations(doc))
    try:
        records = expand(orjson.dumps(doc))
    except ParseError:
        return
    for rec in records:
        outcomes = []
        for call in (lambda r=rec: mapper.map_json(r, "r"),
                     lambda r=rec: mapper.map_dict(copy.deepcopy(orjson.loads(r)), "r")):
            try:
                outcomes.append(orjson.loads(call()))
            except MappingError as ex:
                outcomes.append(ex.code)
        assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("expand", EXPANDERS)
def test_deep_nesting_is_a_parse_error_not_a_crash(expand: Any) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for doc in (deep, b'{"logEvents": [' + deep + b"]}",
                b'{"detail": {"findings": [' + deep + b"]}}", b'{"x":' + deep + b"}"):
        with pytest.raises(ParseError) as ex:
            expand(doc)
        assert ex.value.code in ("too_deep", "not_an_object")


def test_deep_nesting_inside_a_record_fails_that_record_only() -> None:
    """A finding nested beyond the decoder's limit: the record is an error, never a crash."""
    deep = b"[" * 5000 + b"]" * 5000
    mapper = RecordMapper([SourceConfig(name="sh", bucket="b", format="securityhub")], TABLES,
                          max_row_bytes=1_000_000)
    obj = ObjectRef("sh", "sh:0/1", "b", "k", "e", 1, "securityhub")
    rec = b'{"time": "2019-04-11T21:52:17Z", "finding": {"Id": "x", "Resources": ' + deep + b"}}"
    err = mapper(RawRecord(obj, 0, rec))
    assert type(err) is ErrorRecord and err.code == "too_deep"


def test_a_large_document_expands_in_linear_time() -> None:
    """200,000 events (about 20 MB): one decode of the envelope, the items never rebuilt."""
    def doc(n: int) -> bytes:
        return orjson.dumps({**CW_DOC, "logEvents": [
            {"id": str(i), "timestamp": 1432826855000 + i, "message": "m" * 40}
            for i in range(n)]})

    small, large = doc(20_000), doc(200_000)
    t0 = time.perf_counter()
    assert len(cloudwatch_events(small)) == 20_000
    t1 = time.perf_counter()
    records = cloudwatch_events(large)
    t2 = time.perf_counter()
    assert len(records) == 200_000 and orjson.loads(records[-1])["logEvent"]["id"] == "199999"
    assert t2 - t1 < max(20 * (t1 - t0), 2.0)  # 10x the events, not 100x the time


def test_a_huge_message_is_cut_in_the_row_not_lost() -> None:
    """A 5 MB message (more than CloudWatch Logs allows): the record keeps it whole; the row's
    Message is cut to the 64 KB Log Analytics keeps, visibly."""
    (rec,) = cloudwatch_events(orjson.dumps({**CW_DOC, "logEvents": [
        {"id": "1", "timestamp": 1432826855000, "message": "x" * 5_000_000}]}))
    assert len(rec) > 5_000_000
    row = both(CW, rec)
    assert row["Message"].endswith("[truncated by s3sentinel]")
    assert len(row["Message"].encode()) <= 65_536
