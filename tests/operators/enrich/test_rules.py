"""Priority rules: every shipped rule (hit and near miss), the condition language, user
overrides, error reporting, and the per-row cost."""

from __future__ import annotations

import pickle
import re
import timeit
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.enrich.conditions import compile_json_path, compile_match
from operators.enrich.rules import (
    PRIORITIES,
    Classification,
    RuleError,
    RuleSet,
)

CT = "AWSCloudTrail"


def ct(**cols: Any) -> dict[str, Any]:
    """A CloudTrail row (IAM user alice calling EC2, successfully) with ``cols`` replaced;
    dict or list values are written as compact JSON text, as the mapper writes them."""
    row: dict[str, Any] = {
        "TimeGenerated": "2026-11-28T14:30:00Z", "EventVersion": "1.09",
        "EventSource": "ec2.amazonaws.com", "EventName": "DescribeInstances",
        "EventTypeName": "AwsApiCall", "AWSRegion": "eu-west-1",
        "SourceIpAddress": "198.51.100.23", "UserAgent": "aws-cli/2.15.0",
        "UserIdentityType": "IAMUser", "UserIdentityPrincipalid": "AIDAEXAMPLE",
        "UserIdentityArn": "arn:aws:iam::111122223333:user/alice",
        "UserIdentityAccountId": "111122223333", "UserIdentityUserName": "alice",
        "UserIdentityAccessKeyId": "AKIAIOSFODNN7EXAMPLE", "RecipientAccountId": "111122223333",
        "ReadOnly": True, "ManagementEvent": True, "Category": "Management",
        "AwsEventId": "3c2e1a4b-0000-4000-8000-000000000001",
        "RequestParameters": '{"instancesSet":{},"filterSet":{}}',
    }
    for k, v in cols.items():
        if v is None:
            row.pop(k, None)
        else:
            row[k] = orjson.dumps(v).decode() if isinstance(v, (dict, list)) else v
    return row


def sg(**perm: Any) -> dict[str, Any]:
    return {"groupId": "sg-0123456789abcdef0", "ipPermissions": {"items": [
        {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "groups": {}, "prefixListIds": {},
         "ipRanges": {}, "ipv6Ranges": {}} | perm]}}


def policy(principal: Any) -> dict[str, Any]:
    return {"bucketName": "data", "Host": "data.s3.eu-west-1.amazonaws.com", "policy": "",
            "bucketPolicy": {"Version": "2012-10-17", "Statement": [
                {"Sid": "a", "Effect": "Allow", "Principal": principal, "Action": "s3:GetObject",
                 "Resource": "arn:aws:s3:::data/*"}]}}


def pab(**flags: bool) -> dict[str, Any]:
    conf = {"xmlns": "http://s3.amazonaws.com/doc/2006-03-01/", "RestrictPublicBuckets": True,
            "BlockPublicPolicy": True, "BlockPublicAcls": True, "IgnorePublicAcls": True} | flags
    return {"publicAccessBlock": "", "bucketName": "data", "PublicAccessBlockConfiguration": conf}


ROOT = {"UserIdentityType": "Root", "UserIdentityArn": "arn:aws:iam::111122223333:root",
        "UserIdentityUserName": None, "UserIdentityPrincipalid": "111122223333"}
LOGIN = {"EventSource": "signin.amazonaws.com", "EventName": "ConsoleLogin",
         "EventTypeName": "AwsConsoleSignIn", "RequestParameters": None, "ReadOnly": False,
         "UserIdentityAccessKeyId": None}
OK, FAIL = {"ConsoleLogin": "Success"}, {"ConsoleLogin": "Failure"}
ACL_PUBLIC = {"bucketName": "data", "acl": "", "AccessControlPolicy": {"AccessControlList": {
    "Grant": [{"Grantee": {"xsi:type": "Group",
                           "URI": "http://acs.amazonaws.com/groups/global/AllUsers"},
               "Permission": "READ"}]}}}
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"

# (rule id, table, row, expected priority): rows that must match the rule.
HITS: list[tuple[str, str, dict[str, Any], str]] = [
    ("ct-root-console-login", CT, ct(**ROOT, **LOGIN, ResponseElements=OK), "critical"),
    ("ct-root-activity", CT, ct(**ROOT, EventSource="s3.amazonaws.com", EventName="CreateBucket",
                                ReadOnly=False), "high"),
    ("ct-root-activity", CT, ct(**ROOT), "high"),  # read-only root calls too
    ("ct-cloudtrail-tamper", CT, ct(EventSource="cloudtrail.amazonaws.com",
                                    EventName="StopLogging", RequestParameters={"name": "main"}),
     "critical"),
    ("ct-cloudtrail-tamper", CT, ct(EventSource="cloudtrail.amazonaws.com",
                                    EventName="PutEventSelectors"), "critical"),
    ("ct-flow-logs-deleted", CT, ct(EventName="DeleteFlowLogs"), "critical"),
    ("ct-guardduty-disabled", CT, ct(EventSource="guardduty.amazonaws.com",
                                     EventName="DeleteDetector"), "critical"),
    ("ct-guardduty-disabled", CT, ct(EventSource="guardduty.amazonaws.com",
                                     EventName="DisassociateFromMasterAccount"), "critical"),
    ("ct-guardduty-detector-suspended", CT, ct(
        EventSource="guardduty.amazonaws.com", EventName="UpdateDetector",
        RequestParameters={"detectorId": "12abc", "enable": False}), "critical"),
    ("ct-config-recorder-stopped", CT, ct(EventSource="config.amazonaws.com",
                                          EventName="StopConfigurationRecorder"), "high"),
    ("ct-console-login-failure", CT, ct(**LOGIN, ResponseElements=FAIL,
                                        ErrorMessage="Failed authentication"), "high"),
    ("ct-access-key-for-other-user", CT, ct(EventSource="iam.amazonaws.com",
                                            EventName="CreateAccessKey",
                                            RequestParameters={"userName": "bob"}), "high"),
    ("ct-admin-policy-attached", CT, ct(EventSource="iam.amazonaws.com",
                                        EventName="AttachUserPolicy",
                                        RequestParameters={"userName": "bob", "policyArn": ADMIN}),
     "high"),
    ("ct-admin-policy-attached", CT, ct(EventSource="iam.amazonaws.com",
                                        EventName="AttachRolePolicy",
                                        RequestParameters={"roleName": "ci", "policyArn": ADMIN}),
     "high"),
    ("ct-security-group-open-to-world", CT, ct(
        EventName="AuthorizeSecurityGroupIngress",
        RequestParameters=sg(ipRanges={"items": [{"cidrIp": "10.0.0.0/8"},
                                                 {"cidrIp": "0.0.0.0/0"}]})), "critical"),
    ("ct-security-group-open-to-world", CT, ct(
        EventName="AuthorizeSecurityGroupIngress",
        RequestParameters=sg(ipv6Ranges={"items": [{"cidrIpv6": "::/0"}]})), "critical"),
    ("ct-security-group-open-to-world", CT, ct(
        EventName="AuthorizeSecurityGroupIngress",
        RequestParameters={"groupId": "sg-1", "cidrIp": "0.0.0.0/0", "ipProtocol": "tcp"}),
     "critical"),
    ("ct-s3-bucket-policy-public", CT, ct(EventSource="s3.amazonaws.com",
                                          EventName="PutBucketPolicy",
                                          RequestParameters=policy("*")), "high"),
    ("ct-s3-bucket-policy-public", CT, ct(EventSource="s3.amazonaws.com",
                                          EventName="PutBucketPolicy",
                                          RequestParameters=policy({"AWS": ["*"]})), "high"),
    ("ct-s3-bucket-acl-public", CT, ct(EventSource="s3.amazonaws.com", EventName="PutBucketAcl",
                                       RequestParameters=ACL_PUBLIC), "high"),
    ("ct-s3-bucket-acl-public", CT, ct(EventSource="s3.amazonaws.com", EventName="PutBucketAcl",
                                       RequestParameters={"bucketName": "data",
                                                          "x-amz-acl": ["public-read"]}), "high"),
    ("ct-s3-public-access-block-removed", CT, ct(EventSource="s3.amazonaws.com",
                                                 EventName="DeletePublicAccessBlock"), "high"),
    ("ct-s3-public-access-block-weakened", CT, ct(
        EventSource="s3.amazonaws.com", EventName="PutBucketPublicAccessBlock",
        RequestParameters=pab(BlockPublicPolicy=False)), "high"),
    ("ct-kms-key-destruction", CT, ct(EventSource="kms.amazonaws.com",
                                      EventName="ScheduleKeyDeletion",
                                      RequestParameters={"keyId": "k", "pendingWindowInDays": 7}),
     "critical"),
    ("ct-kms-key-destruction", CT, ct(EventSource="kms.amazonaws.com", EventName="DisableKey"),
     "critical"),
    ("ct-ebs-default-encryption-disabled", CT, ct(EventName="DisableEbsEncryptionByDefault"),
     "high"),
    ("ct-access-denied", CT, ct(ErrorCode="AccessDenied", ErrorMessage="User: ... is not "
                                "authorized"), "error"),
    ("ct-access-denied", CT, ct(ErrorCode="Client.UnauthorizedOperation"), "error"),
    ("ct-access-denied", CT, ct(ErrorCode="AccessDeniedException"), "error"),
    ("ct-throttling", CT, ct(ErrorCode="ThrottlingException"), "performance"),
    ("ct-throttling", CT, ct(ErrorCode="Client.RequestLimitExceeded"), "performance"),
    ("gd-severity-high", "AWSGuardDuty", {"Severity": 8, "Title": "C&C",
                                          "ActivityType": "Backdoor:EC2/C&CActivity.B"},
     "critical"),
    ("gd-severity-high", "AWSGuardDuty", {"Severity": 7.0, "ActivityType": "x", "Title": "t"},
     "critical"),
    ("gd-severity-medium", "AWSGuardDuty", {"Severity": 5, "ActivityType": "Recon:EC2/PortProbe",
                                            "Title": "probe"}, "high"),
    ("alb-5xx", "AWSALBAccessLogs_CL", {"ElbStatusCode": 502, "TargetStatusCode": None}, "error"),
    ("alb-5xx", "AWSALBAccessLogs_CL", {"ElbStatusCode": 200, "TargetStatusCode": 503}, "error"),
    ("alb-slow-target", "AWSALBAccessLogs_CL", {"ElbStatusCode": 200,
                                                "TargetProcessingTime": 12.5}, "performance"),
    ("alb-std-5xx", "AWSALBAccessLogs", {"ElbStatusCode": 502, "TargetStatusCode": ""}, "error"),
    ("alb-std-5xx", "AWSALBAccessLogs", {"ElbStatusCode": 200, "TargetStatusCode": "503"},
     "error"),
    ("alb-std-slow-target", "AWSALBAccessLogs", {"ElbStatusCode": 200,
                                                 "TargetProcessingTime": "12.500"}, "performance"),
    ("elb-5xx", "AWSELBAccessLogs_CL", {"ElbStatusCode": 200, "BackendStatusCode": 500}, "error"),
    ("cloudfront-5xx", "AWSCloudFront_CL", {"HttpStatus": 504}, "error"),
    ("s3access-slowdown", "AWSS3ServerAccess_CL", {"ErrorCode": "SlowDown", "HttpStatus": 503},
     "performance"),
]

# (rule id, table, row): near misses that must not match the rule.
MISSES: list[tuple[str, str, dict[str, Any]]] = [
    ("ct-root-console-login", CT, ct(**LOGIN, ResponseElements=OK)),
    ("ct-root-activity", CT, ct(**ROOT, UserIdentityInvokedBy="cloudtrail.amazonaws.com")),
    ("ct-root-activity", CT, ct(**ROOT, EventTypeName="AwsServiceEvent")),
    ("ct-root-activity", CT, ct(**ROOT, **LOGIN, ResponseElements=OK)),  # the critical rule's
    ("ct-cloudtrail-tamper", CT, ct(EventSource="cloudtrail.amazonaws.com",
                                    EventName="StartLogging")),
    ("ct-flow-logs-deleted", CT, ct(EventName="DescribeFlowLogs")),
    ("ct-guardduty-disabled", CT, ct(EventSource="guardduty.amazonaws.com",
                                     EventName="CreateDetector")),
    ("ct-guardduty-detector-suspended", CT, ct(
        EventSource="guardduty.amazonaws.com", EventName="UpdateDetector",
        RequestParameters={"detectorId": "12abc", "enable": True})),
    ("ct-config-recorder-stopped", CT, ct(EventSource="config.amazonaws.com",
                                          EventName="StartConfigurationRecorder")),
    ("ct-console-login-failure", CT, ct(**LOGIN, ResponseElements=OK)),
    ("ct-access-key-for-other-user", CT, ct(EventSource="iam.amazonaws.com",
                                            EventName="CreateAccessKey",
                                            RequestParameters={"userName": "alice"})),
    ("ct-access-key-for-other-user", CT, ct(EventSource="iam.amazonaws.com",
                                            EventName="CreateAccessKey", RequestParameters=None)),
    ("ct-access-key-for-other-user", CT, ct(EventSource="iam.amazonaws.com",
                                            EventName="CreateAccessKey", ErrorCode="AccessDenied",
                                            RequestParameters={"userName": "bob"})),
    ("ct-admin-policy-attached", CT, ct(
        EventSource="iam.amazonaws.com", EventName="AttachUserPolicy",
        RequestParameters={"userName": "bob",
                           "policyArn": "arn:aws:iam::aws:policy/ReadOnlyAccess"})),
    ("ct-admin-policy-attached", CT, ct(
        EventSource="iam.amazonaws.com", EventName="DetachUserPolicy",
        RequestParameters={"userName": "bob", "policyArn": ADMIN})),
    ("ct-security-group-open-to-world", CT, ct(
        EventName="AuthorizeSecurityGroupIngress",
        RequestParameters=sg(ipRanges={"items": [{"cidrIp": "10.0.0.0/8"}]},
                             ipv6Ranges={"items": [{"cidrIpv6": "2001:db8::/32"}]}))),
    ("ct-security-group-open-to-world", CT, ct(
        EventName="RevokeSecurityGroupIngress",
        RequestParameters=sg(ipRanges={"items": [{"cidrIp": "0.0.0.0/0"}]}))),
    ("ct-s3-bucket-policy-public", CT, ct(
        EventSource="s3.amazonaws.com", EventName="PutBucketPolicy",
        RequestParameters=policy({"AWS": "arn:aws:iam::444455556666:root"}))),
    ("ct-s3-bucket-acl-public", CT, ct(EventSource="s3.amazonaws.com", EventName="PutBucketAcl",
                                       RequestParameters={"bucketName": "data",
                                                          "x-amz-acl": ["private"]})),
    ("ct-s3-public-access-block-removed", CT, ct(EventSource="s3.amazonaws.com",
                                                 EventName="GetPublicAccessBlock")),
    ("ct-s3-public-access-block-weakened", CT, ct(
        EventSource="s3.amazonaws.com", EventName="PutBucketPublicAccessBlock",
        RequestParameters=pab())),
    ("ct-kms-key-destruction", CT, ct(EventSource="kms.amazonaws.com", EventName="EnableKey")),
    ("ct-ebs-default-encryption-disabled", CT, ct(EventName="EnableEbsEncryptionByDefault")),
    ("ct-access-denied", CT, ct(ErrorCode="NoSuchBucket")),
    ("ct-throttling", CT, ct(ErrorCode="ValidationException")),
    ("gd-severity-high", "AWSGuardDuty", {"Severity": 6.9}),
    ("gd-severity-medium", "AWSGuardDuty", {"Severity": 2}),
    ("gd-severity-medium", "AWSGuardDuty", {"Severity": 8}),  # the critical rule's
    ("alb-5xx", "AWSALBAccessLogs_CL", {"ElbStatusCode": 404, "TargetStatusCode": 404}),
    ("alb-slow-target", "AWSALBAccessLogs_CL", {"TargetProcessingTime": -1.0}),
    ("alb-std-5xx", "AWSALBAccessLogs", {"ElbStatusCode": 404, "TargetStatusCode": "404"}),
    ("alb-std-5xx", "AWSALBAccessLogs", {"ElbStatusCode": 200, "TargetStatusCode": "5000"}),
    ("alb-std-slow-target", "AWSALBAccessLogs", {"TargetProcessingTime": "-1"}),
    ("alb-std-slow-target", "AWSALBAccessLogs", {"TargetProcessingTime": "9.999"}),
    ("elb-5xx", "AWSELBAccessLogs_CL", {"ElbStatusCode": 200, "BackendStatusCode": 200}),
    ("cloudfront-5xx", "AWSCloudFront_CL", {"HttpStatus": 304}),
    ("s3access-slowdown", "AWSS3ServerAccess_CL", {"ErrorCode": "AccessDenied"}),
]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load()


@pytest.mark.parametrize(("rule_id", "table", "row", "priority"), HITS,
                         ids=[f"{h[0]}-{i}" for i, h in enumerate(HITS)])
def test_each_shipped_rule_matches_its_rows(rules: RuleSet, rule_id: str, table: str,
                                            row: dict, priority: str) -> None:
    got = rules.classify(table, row)
    assert rule_id in got.rule_ids
    assert got.priority == priority
    reason = got.reasons[got.rule_ids.index(rule_id)]
    assert reason and not re.search(r"\{[A-Za-z_]+\}", reason)  # every placeholder filled


@pytest.mark.parametrize(("rule_id", "table", "row"), MISSES,
                         ids=[f"{m[0]}-{i}" for i, m in enumerate(MISSES)])
def test_each_shipped_rule_ignores_near_misses(rules: RuleSet, rule_id: str, table: str,
                                               row: dict) -> None:
    assert rule_id not in rules.classify(table, row).rule_ids


def test_every_shipped_rule_has_hits_and_misses(rules: RuleSet) -> None:
    ids = {r.id for r in rules.rules}
    assert len(ids) >= 25
    assert {h[0] for h in HITS} == ids
    assert {m[0] for m in MISSES} == ids


def test_routine_rows_are_normal(rules: RuleSet) -> None:
    assert rules.classify(CT, ct()) == Classification("normal")
    assert rules.classify("AWSVPCFlow", {"Action": "REJECT", "SrcAddr": "203.0.113.9"}).priority \
        == "normal"
    assert rules.classify("SomeTable_CL", {"EventName": "StopLogging"}).priority == "normal"


def test_highest_priority_wins_and_every_reason_is_kept(rules: RuleSet) -> None:
    row = ct(EventSource="cloudtrail.amazonaws.com", EventName="StopLogging",
             ErrorCode="AccessDenied")
    got = rules.classify(CT, row)
    assert got.priority == "critical"
    assert got.rule_ids == ("ct-cloudtrail-tamper", "ct-access-denied")
    assert got.reasons[0] == ("CloudTrail StopLogging by arn:aws:iam::111122223333:user/alice "
                              "from 198.51.100.23 (error: AccessDenied)")
    assert got.reasons[1] == ("StopLogging denied (AccessDenied) for "
                              "arn:aws:iam::111122223333:user/alice")
    root_fail = rules.classify(CT, ct(**ROOT, **LOGIN, ResponseElements=FAIL))
    assert root_fail.rule_ids == ("ct-root-console-login", "ct-console-login-failure")


def test_reasons_fill_missing_values_with_a_question_mark_and_cut_long_ones(
        rules: RuleSet) -> None:
    got = rules.classify(CT, {"EventName": "DeleteFlowLogs", "EventSource": "ec2.amazonaws.com",
                              "SourceIpAddress": "x" * 500})
    assert got.reasons[0].startswith("VPC flow logs deleted by ? from xxx")
    assert got.reasons[0].endswith("...") and len(got.reasons[0]) < 260


# --------------------------------------------------------------------------- condition language


def pred(match: dict[str, Any]) -> Any:
    problems: list[str] = []
    p = compile_match(match, "test", problems)
    assert not problems
    return p


def test_json_path_syntax() -> None:
    doc = {"a": {"b": [{"c": 1}, {"c": [2, 3]}, {"d": 4}, None]}, "s": {"c": 5}, "n": None}
    assert compile_json_path("a.b[].c")(doc) == [1, 2, 3]
    assert compile_json_path("a.b[1].c")(doc) == [2, 3]
    assert compile_json_path("a.b[9].c")(doc) == []
    assert compile_json_path("s[].c")(doc) == [5]  # an object is a one-element array
    assert compile_json_path("n.x")(doc) == []
    assert compile_json_path("a.b[].c")(orjson.dumps(doc)) == [1, 2, 3]
    assert compile_json_path("a.b[].c")(orjson.dumps(doc).decode()) == [1, 2, 3]
    assert compile_json_path("a.b[].c")(msgspec.Raw(orjson.dumps(doc))) == [1, 2, 3]
    assert compile_json_path("x")("not json {") == []
    assert compile_json_path("[].k")('[{"k": 1}, {"k": 2}]') == [1, 2]
    for bad in ("a..b", "a[x]", "a]", ""):
        with pytest.raises(ValueError, match="json_path"):
            compile_json_path(bad)


def test_operators() -> None:
    row = {"S": "Client.UnauthorizedOperation", "N": 503, "F": "7.5", "E": "", "L": [],
           "U": "bob", "V": "alice", "J": '{"u": "bob", "xs": ["a", "b"]}', "B": False}
    yes = [
        {"S": {"suffix": "UnauthorizedOperation"}}, {"S": {"prefix": ["x", "Client."]}},
        {"S": {"contains": "Unauth"}}, {"S": {"regex": "^Client\\."}}, {"N": {"regex": "^5"}},
        {"N": {"gte": 500, "lte": 599}}, {"N": {"gt": 502, "lt": 504}}, {"F": {"gt": 7}},
        {"N": [500, 503]}, {"N": {"not_in": [500]}}, {"S": {"not_equals": "x"}},
        {"Missing": {"exists": False}}, {"Missing": {"not_equals": "x"}},
        {"E": {"not_empty": False}}, {"L": {"not_empty": False}}, {"U": {"not_empty": True}},
        {"U": {"not_equals_column": "V"}}, {"J": {"json_path": "u", "equals_column": "U"}},
        {"J": {"json_path": "xs", "equals": "b"}}, {"J": {"json_path": "u"}},
        {"J": {"json_path": "nope", "exists": False}}, {"S": {"not": {"prefix": "Server."}}},
        {"B": False}, {"any": [{"N": 1}, {"U": "bob"}]},
        {"U": [{"prefix": "b"}, {"suffix": "b"}]},
    ]
    no = [
        {"S": {"suffix": "Denied"}}, {"N": {"gt": 503}}, {"N": {"lt": 503}}, {"E": {"gte": 0}},
        {"Missing": {"exists": True}}, {"Missing": "x"}, {"Missing": {"regex": "."}},
        {"Missing": {"gte": 1}}, {"E": {"not_empty": True}}, {"U": {"equals_column": "V"}},
        {"J": {"json_path": "nope"}}, {"J": {"json_path": "xs", "equals": "c"}},
        {"S": {"not": {"prefix": "Client."}}}, {"any": [{"N": 1}, {"U": "eve"}]},
        {"U": [{"prefix": "b"}, {"suffix": "x"}]}, {"L": {"in": ["a"]}}, {"N": "503"}, {"B": 0},
    ]
    for m in yes:
        assert pred(m)(row), m
    for m in no:
        assert not pred(m)(row), m


@pytest.mark.parametrize("row,equal,not_equal", [
    ({"U": "bob", "V": "alice"}, False, True),
    ({"U": "bob", "V": "bob"}, True, False),
    # A missing (or null) value fails equals_column but not not_equals_column: it differs
    # from the other column's value ...
    ({"V": "alice"}, False, True),
    ({"U": None, "V": "alice"}, False, True),
    # ... and a value differs from a missing (or null) other column ...
    ({"U": "bob"}, False, True),
    ({"U": "bob", "V": None}, False, True),
    # ... but two missing (or null) values are not different: neither holds.
    ({}, False, False),
    ({"U": None, "V": None}, False, False),
    ({"U": None}, False, False),
])
def test_column_comparisons_with_missing_values(row: dict[str, Any], equal: bool,
                                                not_equal: bool) -> None:
    assert pred({"U": {"equals_column": "V"}})(row) is equal
    assert pred({"U": {"not_equals_column": "V"}})(row) is not_equal
    # A json_path selecting nothing compares a missing value, the same way.
    doc = {"J": '{"u": "bob"}', "V": row.get("V")}
    nothing = pred({"J": {"json_path": "nope", "not_equals_column": "V"}})
    assert nothing(doc) is (row.get("V") is not None)


def test_pinned_rules_are_indexed_by_event_name(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('''
[[rules]]
id = "one"
table = "AWSCloudTrail"
priority = "high"
reason = "one"
any = [ { EventName = "A", ErrorCode = "x" }, { EventName = { in = ["B"] } } ]
''')
    rs = RuleSet.load([f], include_default=False)
    assert rs.classify(CT, {"EventName": "B"}).rule_ids == ("one",)
    assert rs.classify(CT, {"EventName": "A", "ErrorCode": "x"}).rule_ids == ("one",)
    assert rs.classify(CT, {"EventName": "A"}).priority == "normal"
    by_event, generic = rs._index[CT]
    assert set(by_event) == {"A", "B"} and generic == ()


# --------------------------------------------------------------------------- user files


def test_a_user_file_replaces_adds_and_removes_rules_by_id(tmp_path: Path) -> None:
    user = tmp_path / "mine.toml"
    user.write_text('''
[[rules]]
id = "ct-throttling"
table = "AWSCloudTrail"
priority = "normal"
reason = "throttled, as expected: {EventName}"
match = { ErrorCode = { suffix = "Exception" } }

[[rules]]
id = "ct-flow-logs-deleted"
enabled = false

[[rules]]
id = "my-break-glass"
table = "*"
priority = "critical"
reason = "break-glass role used by {UserIdentityArn}"
match = { UserIdentityArn = { regex = ":assumed-role/BreakGlass/" } }
''')
    default, mine = RuleSet.load(), RuleSet.load([user])
    assert len(mine) == len(default)
    assert [r.id for r in mine.rules][:3] == [r.id for r in default.rules][:3]  # order kept
    got = mine.classify(CT, ct(ErrorCode="ValidationException"))
    assert got == Classification("normal", ("throttled, as expected: DescribeInstances",),
                                 ("ct-throttling",))
    assert mine.classify(CT, ct(ErrorCode="ThrottlingException")).priority == "normal"
    assert mine.classify(CT, ct(EventName="DeleteFlowLogs")).priority == "normal"
    assert default.classify(CT, ct(EventName="DeleteFlowLogs")).priority == "critical"
    arn = "arn:aws:sts::111122223333:assumed-role/BreakGlass/jo"
    assert mine.classify(CT, ct(UserIdentityArn=arn)).rule_ids == ("my-break-glass",)
    assert mine.classify("AWSGuardDuty", {"UserIdentityArn": arn}).priority == "critical"
    assert next(r for r in mine.rules if r.id == "ct-throttling").origin == str(user)
    with pytest.raises(RuleError, match="no earlier file defines this id"):
        RuleSet.load([user], include_default=False)  # nothing to disable without the defaults


BAD = '''
[[rules]]
id = "bad-everything"
table = "AWSCloudTrail"
priority = "urgent"
reason = "{EventName!r} by {UserIdentityArn}"
colour = "red"

[rules.match]
EventNme = "X"
ErrorCode = { startswith = "A" }
UserAgent = { regex = "(" }
ReadOnly = { gte = "1" }

[[rules]]
id = "no-conditions"
table = "AWSCloudTrail"
priority = "high"
reason = "x"

[[rules]]
id = "bad-path"
table = "*"
priority = "high"
reason = "unclosed {brace"
match = { RequestParameters = { json_path = "a..b" }, X = { not = { json_path = "a" } } }

[[rules]]
id = "twice"
table = "AWSCloudTrail"
priority = "high"
reason = "first"
match = { EventName = "X" }

[[rules]]
id = "twice"
table = "AWSCloudTrail"
priority = "high"
reason = "second"
match = { EventName = "X", ErrorCode = {} }

[[rules]]
id = "ct-does-not-exist"
enabled = false

[[rules]]
reason = "no id"
'''


def test_a_bad_rule_file_reports_every_problem_with_file_and_rule(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    with pytest.raises(RuleError) as err:
        RuleSet.load([bad])
    text = str(err.value)
    expected = [
        "rule 'bad-everything': unknown key 'colour'",
        "rule 'bad-everything': priority 'urgent' is not one of critical, high, error, "
        "performance, normal",
        "rule 'bad-everything': reason placeholder {EventName!r} must be a plain column name",
        "rule 'bad-everything': the table has no column 'EventNme' (did you mean 'EventName'?)",
        "rule 'bad-everything': ErrorCode: unknown operator 'startswith'",
        "rule 'bad-everything': UserAgent: regex = '(': not a valid regular expression",
        "rule 'bad-everything': ReadOnly: gte take numbers",
        "rule 'no-conditions': no conditions; a rule needs 'match' or 'any'",
        "rule 'twice': defined twice in this file",
        "rule 'twice': ErrorCode: the condition is empty",
        "rule 'bad-path': reason 'unclosed {brace' is not a valid template",
        "rule 'bad-path': RequestParameters: json_path 'a..b': segment '' is not",
        "rule 'bad-path': X: json_path cannot be inside 'not'",
        "rule 'ct-does-not-exist': enabled = false, but no earlier file defines this id",
        "rules[6]: 'id' is missing",
    ]
    for e in expected:
        assert e in text, e
    assert all(p.startswith(f"{bad}: ") for p in err.value.problems)
    assert len(err.value.problems) >= len(expected) - 1
    assert "fix them and start again" in text
    again = pickle.loads(pickle.dumps(err.value))
    assert again.problems == err.value.problems


def test_unreadable_files_are_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[rules]\nid=")
    wrong = tmp_path / "wrong.toml"
    wrong.write_text('rule = 1\n')
    with pytest.raises(RuleError) as err:
        RuleSet.load([broken, tmp_path / "missing.toml", wrong])
    probs = err.value.problems
    assert probs[0].startswith(f"{broken}: not valid TOML")
    assert probs[1].startswith(f"{tmp_path / 'missing.toml'}: cannot be read")
    assert probs[2] == f"{wrong}: unknown top-level key 'rule'; entries go in [[rules]]"


def test_priorities_are_ordered() -> None:
    assert PRIORITIES == ("critical", "high", "error", "performance", "normal")


# --------------------------------------------------------------------------- cost


def test_classifying_a_routine_row_costs_a_few_microseconds(rules: RuleSet) -> None:
    rows = [ct(), ct(EventName="GetObject", EventSource="s3.amazonaws.com",
                    RequestParameters={"bucketName": "b", "key": "k"}),
            ct(EventName="AssumeRole", EventSource="sts.amazonaws.com", ReadOnly=True,
               UserIdentityType="AWSService"),
            ct(EventName="AuthorizeSecurityGroupIngress",
               RequestParameters=sg(ipRanges={"items": [{"cidrIp": "10.0.0.0/8"}]}))]
    for row in rows:
        assert rules.classify(CT, row).priority == "normal"
    n = 20_000
    per_row = min(timeit.repeat(lambda: rules.classify(CT, rows[0]), number=n, repeat=5)) / n
    print(f"classify: {per_row * 1e6:.2f} us/row (routine CloudTrail row, {len(rules)} rules)")
    assert per_row < 20e-6  # ~1 us on a laptop; generous for shared CI runners


# --------------------------------------------------------------------------- column gates

_GATE_OPS = {
    "equals": st.sampled_from(["a", "b"]), "not_equals": st.sampled_from(["a", "b"]),
    "in": st.lists(st.sampled_from(["a", "c"]), min_size=1, max_size=2),
    "not_in": st.lists(st.sampled_from(["a", "c"]), min_size=1, max_size=2),
    "prefix": st.sampled_from(["a", "x"]), "suffix": st.sampled_from(["a", "x"]),
    "exists": st.booleans(), "gt": st.integers(0, 2), "lte": st.integers(0, 2),
    "not_equals_column": st.sampled_from(["P", "Q"])}
_GATE_OP = st.sampled_from(sorted(_GATE_OPS)).flatmap(lambda op: _GATE_OPS[op].map(
    lambda v: {op: v}))
_GATE_SPECS = st.one_of(
    st.sampled_from(["a", "b"]), st.integers(0, 2), st.booleans(),
    st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=2),
    _GATE_OP, st.tuples(_GATE_OP, _GATE_OP).map(lambda ab: ab[0] | ab[1]))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["P", "Q", "R", "EventName"]), _GATE_SPECS,
                       min_size=1, max_size=3),
       st.lists(st.dictionaries(st.sampled_from(["P", "Q", "R", "EventName"]),
                                st.one_of(st.sampled_from(["a", "b", "c", "ax"]),
                                          st.integers(0, 3), st.booleans()), max_size=4),
                max_size=12))
def test_a_column_gate_never_turns_away_a_row_its_rule_takes(match, rows) -> None:
    """classify checks a rule's column gate before its predicate: the gate must pass every
    row the predicate passes, whatever the conditions (rows missing the column included)."""
    from operators.enrich.conditions import column_gate, compile_match

    problems: list[str] = []
    pred = compile_match(match, "rule", problems)
    gate = column_gate(match)
    for row in rows:
        if problems or not pred(row) or gate is None:
            continue
        value = row.get(gate[0])
        assert value is not None and (gate[1] is None or value == gate[1]), (match, row, gate)
