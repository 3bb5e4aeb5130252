"""EKS control-plane audit events (Kubernetes audit.k8s.io/v1 Event, JSON lines) onto AWSEKSLogs_CL.

The events follow the Kubernetes audit Event type (the documentation's example: a deployment
created by kubectl) and what EKS adds (the caller's IAM identity in ``user.extra``, the
authorization annotations of the EKS Best Practices Guide). JSON lines: there is no parser, the
table's Mapper is the whole mapping, and every golden row is checked on both of its paths.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.config import SourceConfig
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Row
from operators.formats import JSON_FORMATS
from operators.formats.registry import DEFAULT_TABLES, detect, framing_of, text_format
from operators.parse import RecordMapper
from operators.schema import Mapper, MappingError, load_tables
from tests.operators.formats.strategies import mutations as _mutations

TABLES = load_tables()
EKS = Mapper(TABLES["AWSEKSLogs_CL"])
ACCT = "111122223333"

IDENTITY = {"accessKeyId": ["AKIAIOSFODNN7EXAMPLE"], "arn": [f"arn:aws:iam::{ACCT}:user/admin"],
            "canonicalArn": [f"arn:aws:iam::{ACCT}:user/admin"], "principalId": ["AIDAEXAMPLE"],
            "sessionName": [""]}

# kubectl creates a deployment (the Kubernetes documentation's example, RequestResponse level),
# as an IAM user mapped to kubernetes-admin.
CREATE: dict[str, Any] = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "RequestResponse",
    "auditID": "0a4376d5-307a-4e16-a049-24e017123456", "stage": "ResponseComplete",
    "requestURI": "/apis/apps/v1/namespaces/default/deployments", "verb": "create",
    "user": {"username": "kubernetes-admin", "uid": f"aws-iam-authenticator:{ACCT}:AIDAEXAMPLE",
             "groups": ["system:masters", "system:authenticated"], "extra": IDENTITY},
    "sourceIPs": ["10.0.6.68"], "userAgent": "kubectl/v1.16.3 (linux/amd64) kubernetes/ald64d8",
    "objectRef": {"resource": "deployments", "namespace": "default", "name": "nginx-deployment",
                  "apiGroup": "apps", "apiVersion": "v1"},
    "responseStatus": {"metadata": {}, "code": 201},
    "requestObject": {"kind": "Deployment", "apiVersion": "apps/v1",
                      "metadata": {"name": "nginx-deployment"}},
    "responseObject": {"kind": "Deployment", "apiVersion": "apps/v1",
                       "metadata": {"name": "nginx-deployment", "namespace": "default"}},
    "requestReceivedTimestamp": "2020-04-10T10:47:34.315746Z",
    "stageTimestamp": "2020-04-10T10:47:34.322031Z",
    "annotations": {"authorization.k8s.io/decision": "allow",
                    "authorization.k8s.io/reason": ""}}
CREATE_ROW: dict[str, Any] = {
    "TimeGenerated": "2020-04-10T10:47:34.322031Z", "AuditId": CREATE["auditID"],
    "Level": "RequestResponse", "Stage": "ResponseComplete", "Verb": "create",
    "RequestURI": "/apis/apps/v1/namespaces/default/deployments", "User": "kubernetes-admin",
    "UserGroups": ["system:masters", "system:authenticated"], "UserExtra": IDENTITY,
    "SourceIPs": ["10.0.6.68"], "UserAgent": "kubectl/v1.16.3 (linux/amd64) kubernetes/ald64d8",
    "ObjectRef": CREATE["objectRef"], "ResponseCode": 201,
    "ResponseStatus": {"metadata": {}, "code": 201}, "RequestObject": CREATE["requestObject"],
    "ResponseObject": CREATE["responseObject"],
    "RequestReceivedTime": "2020-04-10T10:47:34.315746Z", "Annotations": CREATE["annotations"],
    "Kind": "Event", "ApiVersion": "audit.k8s.io/v1",
    "AdditionalFields": {"user.uid": f"aws-iam-authenticator:{ACCT}:AIDAEXAMPLE"},
    "RecordId": "r"}

# An anonymous exec into a pod, forbidden (Metadata level).
FORBIDDEN: dict[str, Any] = {
    "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
    "auditID": "9b2e4c1d-6a3f-4e8b-9c7d-1f2e3a4b5c6d", "stage": "ResponseComplete",
    "requestURI": "/api/v1/namespaces/default/pods/web-0/exec?command=sh", "verb": "create",
    "user": {"username": "system:anonymous", "groups": ["system:unauthenticated"]},
    "sourceIPs": ["203.0.113.50"], "userAgent": "curl/8.5.0",
    "objectRef": {"resource": "pods", "namespace": "default", "name": "web-0", "apiVersion": "v1",
                  "subresource": "exec"},
    "responseStatus": {"metadata": {}, "status": "Failure", "reason": "Forbidden", "code": 403},
    "requestReceivedTimestamp": "2026-11-01T10:07:12.000001Z",
    "stageTimestamp": "2026-11-01T10:07:12.000950Z",
    "annotations": {"authorization.k8s.io/decision": "forbid",
                    "authorization.k8s.io/reason": ""}}


def both(rec: dict[str, Any]) -> dict[str, Any]:
    fast = orjson.loads(EKS.map_json(orjson.dumps(rec), "r"))
    generic = orjson.loads(EKS.map_dict(copy.deepcopy(rec), "r"))
    assert fast == generic and list(fast) == list(generic)
    return fast


def test_golden_row_of_the_documented_event() -> None:
    row = both(CREATE)
    assert row == CREATE_ROW
    assert list(row) == list(CREATE_ROW)  # the table's order, the record id last


def test_a_forbidden_request_keeps_its_decision_and_status() -> None:
    row = both(FORBIDDEN)
    assert row["Annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert (row["ResponseCode"], row["ResponseStatus"]["reason"], row["User"]) == (
        403, "Forbidden", "system:anonymous")
    assert "UserExtra" not in row and "AdditionalFields" not in row


def test_a_request_received_stage_has_no_response() -> None:
    received = {k: v for k, v in CREATE.items()
                if k not in ("responseStatus", "responseObject", "requestObject")}
    row = both({**received, "stage": "RequestReceived",
                "stageTimestamp": CREATE["requestReceivedTimestamp"]})
    assert row["Stage"] == "RequestReceived"
    assert not {"ResponseCode", "ResponseStatus", "ResponseObject"} & set(row)


def test_events_without_unmapped_members_take_the_fast_path() -> None:
    """An event whose every member has a column is read by the generated type alone (CREATE's
    user.uid has none: it goes the generic way, which keeps it in AdditionalFields)."""
    m = Mapper(TABLES["AWSEKSLogs_CL"])
    expected = orjson.loads(m.map_dict(copy.deepcopy(FORBIDDEN), "r"))

    def generic(*_: Any) -> bytes:
        raise AssertionError("took the generic path")

    m.row_dict = generic  # type: ignore[method-assign]
    assert orjson.loads(m.map_json(orjson.dumps(FORBIDDEN), "r")) == expected
    with pytest.raises(AssertionError, match="generic path"):
        m.map_json(orjson.dumps(CREATE), "r")


def test_new_fields_are_kept() -> None:
    row = both({**FORBIDDEN, "someFutureField": {"a": 1},
                "user": {**FORBIDDEN["user"], "uid": "u-1"}})
    assert row["AdditionalFields"] == {"someFutureField": {"a": 1}, "user.uid": "u-1"}


@pytest.mark.parametrize("how", ["absent", "null", "not a time"])
def test_an_event_without_its_stage_time_is_a_mapping_error(how: str) -> None:
    bad = {k: v for k, v in CREATE.items() if k != "stageTimestamp"}
    if how == "null":
        bad["stageTimestamp"] = None
    elif how == "not a time":
        bad["stageTimestamp"] = "yesterday"
    for call in (lambda: EKS.map_json(orjson.dumps(bad), "r"), lambda: EKS.map_dict(bad, "r")):
        with pytest.raises(MappingError) as ex:
            call()
        assert ex.value.code == ("wrong_type" if how == "not a time" else "missing_required")


def test_registry_and_detection() -> None:
    assert DEFAULT_TABLES["eksaudit"] == "AWSEKSLogs_CL" and TABLES["AWSEKSLogs_CL"].kind == "custom"
    assert "eksaudit" in JSON_FORMATS and text_format("eksaudit") is None
    assert framing_of("eksaudit") == "lines"
    key = "firehose/eks-audit/2026/11/01/10/eks-audit-to-s3-1-2026-11-01-10-05-00-2b3c4d5e.gz"
    head = orjson.dumps(CREATE) + b"\n" + orjson.dumps(FORBIDDEN)
    assert detect(key) is None and detect(key, head) == "eksaudit"
    # only from the first line: an app log quoting an audit event further down is ndjson
    assert detect(key, b'{"msg": "x"}\n' + orjson.dumps(CREATE)) == "ndjson"
    assert detect(key, orjson.dumps({"kind": "Event", "apiVersion": "v1"})) == "ndjson"


def test_events_map_through_the_flow_mapper() -> None:
    mapper = RecordMapper([SourceConfig(name="all", bucket="b", format="auto")], TABLES,
                          max_row_bytes=1_000_000)
    obj = ObjectRef("all", "all:0/1", "b", "k", "e", 1, "eksaudit")
    row = mapper(RawRecord(obj, 5, orjson.dumps(CREATE)))
    assert type(row) is Row and row.stream == "Custom-AWSEKSLogs_CL"
    assert orjson.loads(row.data)["RecordId"] == f"{obj.id}-5"
    for bad, code in ((b"2020-04-10T10:47:34Z " + orjson.dumps(CREATE), "invalid_json"),
                      (b'{"requestObject":' + b"[" * 3000 + b"]" * 3000 + b"}", "too_deep"),
                      (b"{}", "missing_required")):
        err = mapper(RawRecord(obj, 6, bad))
        assert type(err) is ErrorRecord and err.code == code and err.reason


# --------------------------------------------------------------------------- hostile input


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_mapping_errors(data: bytes) -> None:
    with contextlib.suppress(MappingError):
        EKS.map_json(data, "r")




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), base=st.sampled_from([CREATE, FORBIDDEN]))
def test_both_paths_agree_on_any_shape(data: st.DataObject, base: dict[str, Any]) -> None:
    rec = {**base, "user": data.draw(_mutations(base["user"])),
           "responseStatus": data.draw(_mutations(base["responseStatus"]))}
    rec = data.draw(_mutations(rec))
    outcomes = []
    for call in (lambda: EKS.map_json(orjson.dumps(rec), "r"),
                 lambda: EKS.map_dict(copy.deepcopy(rec), "r")):
        try:
            outcomes.append(orjson.loads(call()))
        except MappingError as ex:
            outcomes.append(ex.code)
    assert outcomes[0] == outcomes[1]
