"""GuardDuty findings, AWS WAF logs and Route 53 Resolver query logs onto their standard tables.

These formats are JSON lines: there is no parser, the table's Mapper is the whole mapping.
Each record below follows the examples of the AWS documentation (GuardDuty sample findings,
the WAF developer guide's log examples, the Route 53 query log example). Every golden row is
checked on both paths of the Mapper (``map_json`` on the bytes, ``map_dict`` on the parsed
record), which must give the same bytes.
"""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.config import SourceConfig
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Row
from dataflow.dcr import dcr_template
from operators.formats import JSON_FORMATS
from operators.formats.registry import DEFAULT_TABLES, detect, framing_of, text_format
from operators.parse import RecordMapper
from operators.schema import Mapper, MappingError, TableDef, load_tables
from tests.operators.formats.strategies import mutations as _mutations

TABLES = load_tables()
RID = "id-0"
ACCT = "123456789012"

# --------------------------------------------------------------------------- GuardDuty

SSH_BRUTE_FORCE: dict[str, Any] = {
    "schemaVersion": "2.0",
    "accountId": ACCT,
    "region": "us-east-1",
    "partition": "aws",
    "id": "16afba5c5c43e07c9e3e5e2e544e95df",
    "arn": f"arn:aws:guardduty:us-east-1:{ACCT}:detector/12abc34d567e8f4912ab3d45e67891f2/"
           "finding/16afba5c5c43e07c9e3e5e2e544e95df",
    "type": "UnauthorizedAccess:EC2/SSHBruteForce",
    "resource": {
        "resourceType": "Instance",
        "instanceDetails": {
            "instanceId": "i-99999999",
            "instanceType": "m3.xlarge",
            "launchTime": "2026-08-02T02:05:06.000Z",
            "productCodes": [{"productCodeId": "GeneratedFindingProductCodeId",
                              "productCodeType": "GeneratedFindingProductCodeType"}],
            "iamInstanceProfile": {"arn": f"arn:aws:iam::{ACCT}:example/instance/profile",
                                   "id": "GeneratedFindingInstanceProfileId"},
            "networkInterfaces": [{
                "ipv6Addresses": [],
                "networkInterfaceId": "eni-bfcffe88",
                "privateDnsName": "ip-10-0-0-23.ec2.internal",
                "privateIpAddress": "10.0.0.23",
                "privateIpAddresses": [{"privateDnsName": "ip-10-0-0-23.ec2.internal",
                                        "privateIpAddress": "10.0.0.23"}],
                "subnetId": "subnet-0a1b2c3d",
                "vpcId": "vpc-0a1b2c3d",
                "securityGroups": [{"groupName": "ssh-open", "groupId": "sg-0a1b2c3d"}],
                "publicDnsName": "ec2-203-0-113-10.compute-1.amazonaws.com",
                "publicIp": "203.0.113.10"}],
            "outpostArn": None,
            "tags": [{"key": "Name", "value": "bastion"}],
            "instanceState": "running",
            "availabilityZone": "us-east-1a",
            "imageId": "ami-99999999",
            "imageDescription": "Amazon Linux 2023 AMI"}},
    "service": {
        "serviceName": "guardduty",
        "detectorId": "12abc34d567e8f4912ab3d45e67891f2",
        "action": {
            "actionType": "NETWORK_CONNECTION",
            "networkConnectionAction": {
                "connectionDirection": "INBOUND",
                "remoteIpDetails": {
                    "ipAddressV4": "198.51.100.1",
                    "organization": {"asn": "64496", "asnOrg": "Example Org", "isp": "Example ISP",
                                     "org": "Example Org"},
                    "country": {"countryName": "Netherlands"},
                    "city": {"cityName": "Amsterdam"},
                    "geoLocation": {"lat": 52.3676, "lon": 4.9041}},
                "remotePortDetails": {"port": 32794, "portName": "Unknown"},
                "localPortDetails": {"port": 22, "portName": "SSH"},
                "localIpDetails": {"ipAddressV4": "10.0.0.23"},
                "protocol": "TCP",
                "blocked": False}},
        "resourceRole": "TARGET",
        "additionalInfo": {"value": "{}", "type": "default"},
        "eventFirstSeen": "2026-11-01T09:41:03.000Z",
        "eventLastSeen": "2026-11-01T10:04:51.000Z",
        "archived": False,
        "count": 24},
    "severity": 2,
    "createdAt": "2026-11-01T09:47:06.612Z",
    "updatedAt": "2026-11-01T10:05:13.405Z",
    "title": "198.51.100.1 is performing SSH brute force attacks against i-99999999.",
    "description": "198.51.100.1 is performing SSH brute force attacks against i-99999999. Brute "
                   "force attacks are used to gain unauthorized access to your instance by "
                   "guessing the SSH password.",
}

CREDENTIAL_EXFILTRATION: dict[str, Any] = {
    "schemaVersion": "2.0",
    "accountId": ACCT,
    "region": "eu-west-1",
    "partition": "aws",
    "id": "a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1",
    "arn": f"arn:aws:guardduty:eu-west-1:{ACCT}:detector/3ec0a4f2b1d6c8e9f0a1b2c3d4e5f6a7/"
           "finding/a2b4c6d8e0f1a3b5c7d9e1f3a5b7c9d1",
    "type": "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
    "resource": {
        "resourceType": "AccessKey",
        "accessKeyDetails": {"accessKeyId": "ASIASZ5EXAMPLE3KXQ7Z",
                             "principalId": "AROASZ5EXAMPLEROLEID:i-0a1b2c3d4e5f60718",
                             "userName": "app-server-role", "userType": "AssumedRole"}},
    "service": {
        "serviceName": "guardduty",
        "detectorId": "3ec0a4f2b1d6c8e9f0a1b2c3d4e5f6a7",
        "action": {
            "actionType": "AWS_API_CALL",
            "awsApiCallAction": {
                "api": "ListBuckets", "serviceName": "s3.amazonaws.com", "callerType": "Remote IP",
                "remoteIpDetails": {"ipAddressV4": "203.0.113.77",
                                    "country": {"countryName": "Brazil"},
                                    "organization": {"asn": "64511", "asnOrg": "Example Hosting",
                                                     "isp": "Example Hosting", "org": "Example"}},
                "affectedResources": {}}},
        "resourceRole": "TARGET",
        "additionalInfo": {"value": "{\"unusual\":{\"userAgents\":[\"aws-cli/2.15.0\"]}}",
                           "type": "default"},
        "evidence": None,
        "eventFirstSeen": "2026-11-02T21:14:20.000Z",
        "eventLastSeen": "2026-11-02T21:19:58.000Z",
        "archived": False,
        "count": 3},
    "severity": 8,
    "createdAt": "2026-11-02T21:30:41.118Z",
    "updatedAt": "2026-11-02T21:30:41.118Z",
    "title": "Credentials for the EC2 instance role app-server-role were used from a remote AWS "
             "account.",
    "description": "Credentials created exclusively for an EC2 instance using instance role "
                   "app-server-role have been used from external IP address 203.0.113.77.",
}


def guardduty_row(f: dict[str, Any]) -> dict[str, Any]:
    return {"AccountId": f["accountId"], "ActivityType": f["type"], "Arn": f["arn"],
            "Description": f["description"], "Id": f["id"], "Partition": f["partition"],
            "Region": f["region"], "ResourceDetails": f["resource"],
            "SchemaVersion": f["schemaVersion"], "ServiceDetails": f["service"],
            "Severity": f["severity"], "TimeCreated": f["createdAt"],
            "TimeGenerated": f["updatedAt"], "Title": f["title"], "RecordId_CF": RID}


# --------------------------------------------------------------------------- WAF

WEBACL = (f"arn:aws:wafv2:us-east-1:{ACCT}:regional/webacl/prod-acl/"
          "1f2e3d4c-5b6a-4798-8a9b-0c1d2e3f4a5b")

BLOCK_BY_MANAGED_GROUP: dict[str, Any] = {
    "timestamp": 1793527517481,
    "formatVersion": 1,
    "webaclId": WEBACL,
    "terminatingRuleId": "AWS-AWSManagedRulesSQLiRuleSet",
    "terminatingRuleType": "MANAGED_RULE_GROUP",
    "action": "BLOCK",
    "terminatingRuleMatchDetails": [],
    "httpSourceName": "ALB",
    "httpSourceId": f"{ACCT}-app/prod-alb/50dc6c495c0c9188",
    "ruleGroupList": [
        {"ruleGroupId": "AWS#AWSManagedRulesCommonRuleSet", "terminatingRule": None,
         "nonTerminatingMatchingRules": [], "excludedRules": None, "customerConfig": None},
        {"ruleGroupId": "AWS#AWSManagedRulesSQLiRuleSet",
         "terminatingRule": {"ruleId": "SQLi_QUERYARGUMENTS", "action": "BLOCK",
                             "ruleMatchDetails": [{"conditionType": "SQL_INJECTION",
                                                   "sensitivityLevel": "LOW",
                                                   "location": "QUERY_STRING",
                                                   "matchedData": ["UNION", "SELECT"]}]},
         "nonTerminatingMatchingRules": [], "excludedRules": None, "customerConfig": None}],
    "rateBasedRuleList": [],
    "nonTerminatingMatchingRules": [],
    "requestHeadersInserted": None,
    "responseCodeSent": None,
    "httpRequest": {
        "clientIp": "198.51.100.7",
        "country": "NL",
        "headers": [{"name": "Host", "value": "shop.example.com"},
                    {"name": "User-Agent", "value": "sqlmap/1.8.2#stable (https://sqlmap.org)"},
                    {"name": "Accept", "value": "*/*"}],
        "uri": "/products",
        "args": "id=1%20UNION%20SELECT%20username,password%20FROM%20users",
        "httpVersion": "HTTP/1.1",
        "httpMethod": "GET",
        "requestId": "1-6724a9dd-0f1e2d3c4b5a69788796a5b4",
        "fragment": "",
        "scheme": "https",
        "host": "shop.example.com"},
    "labels": [{"name": "awswaf:managed:aws:sql-database:SQLi_QueryArguments"}],
    "ja3Fingerprint": "e7d705a3286e19ea42f587b344ee6865",
}

ALLOW_WITH_LABELS: dict[str, Any] = {
    "timestamp": 1793527518022,
    "formatVersion": 1,
    "webaclId": WEBACL,
    "terminatingRuleId": "Default_Action",
    "terminatingRuleType": "REGULAR",
    "action": "ALLOW",
    "terminatingRuleMatchDetails": [],
    "httpSourceName": "CF",
    "httpSourceId": "E1EXAMPLE2ABCD",
    "ruleGroupList": [
        {"ruleGroupId": "AWS#AWSManagedRulesBotControlRuleSet", "terminatingRule": None,
         "nonTerminatingMatchingRules": [{"ruleId": "CategoryHttpLibrary", "action": "COUNT",
                                          "overriddenAction": "BLOCK", "ruleMatchDetails": []}],
         "excludedRules": None, "customerConfig": None}],
    "rateBasedRuleList": [],
    "nonTerminatingMatchingRules": [{"ruleId": "CountNonUS", "action": "COUNT",
                                     "ruleMatchDetails": []}],
    "requestHeadersInserted": [{"name": "x-amzn-waf-bot-category", "value": "http_library"}],
    "responseCodeSent": None,
    "httpRequest": {
        "clientIp": "2001:db8:85a3::8a2e:370:7334",
        "country": "DE",
        "headers": [{"name": "host", "value": "d111111abcdef8.cloudfront.net"},
                    {"name": "user-agent", "value": "python-requests/2.32.3"},
                    {"name": "accept-encoding", "value": "gzip, deflate"},
                    {"name": "accept", "value": "*/*"},
                    {"name": "content-type", "value": "application/json"},
                    {"name": "content-length", "value": "512"}],
        "uri": "/api/v1/orders",
        "args": "",
        "httpVersion": "HTTP/2.0",
        "httpMethod": "POST",
        "requestId": "Hn3dS5tC6mGfbFZlpyWvqOzQ1fCJgEXAMPLE==",
        "fragment": "",
        "scheme": "https",
        "host": "d111111abcdef8.cloudfront.net"},
    "labels": [{"name": "awswaf:managed:aws:bot-control:bot:category:http_library"},
               {"name": "awswaf:managed:aws:bot-control:bot:name:python_requests"},
               {"name": "awswaf:managed:aws:bot-control:signal:non_browser_user_agent"},
               {"name": f"awswaf:{ACCT}:webacl:prod-acl:non-us"}],
    "captchaResponse": {"responseCode": 0, "solveTimestamp": 1793527402},
    "ja3Fingerprint": "8d9f7747675e24454cd9b7ed35c58707",
    "ja4Fingerprint": "t13d1516h2_8daaf6152771_e5627efa2ab1",
    "oversizeFields": ["REQUEST_BODY"],
    "requestBodySize": 512,
    "requestBodySizeInspectedByWAF": 512,
}


def waf_row(r: dict[str, Any], time: str) -> dict[str, Any]:
    req = r["httpRequest"]
    row = {"Action": r["action"], "Args": req["args"], "ClientIp": req["clientIp"],
           "Country": req["country"], "FormatVersion": "1", "Headers": req["headers"],
           "HttpMethod": req["httpMethod"], "HttpRequest": req,
           "HttpSourceId": r["httpSourceId"], "HttpSourceName": r["httpSourceName"],
           "HttpVersion": req["httpVersion"], "Ja3Fingerprint": r["ja3Fingerprint"],
           "Labels": r["labels"], "NonTerminatingMatchingRules": r["nonTerminatingMatchingRules"],
           "RateBasedRuleList": r["rateBasedRuleList"], "RequestId": req["requestId"],
           "RuleGroupList": r["ruleGroupList"], "TerminatingRuleId": r["terminatingRuleId"],
           "TerminatingRuleMatchDetails": r["terminatingRuleMatchDetails"],
           "TerminatingRuleType": r["terminatingRuleType"], "TimeGenerated": time,
           "Uri": req["uri"], "WebAclId": r["webaclId"]}
    for key, col in (("captchaResponse", "CaptchaResponse"), ("oversizeFields", "OversizeFields"),
                     ("requestHeadersInserted", "RequestHeadersInserted")):
        if r.get(key) is not None:
            row[col] = r[key]
    row = dict(sorted(row.items(), key=lambda kv: kv[0].lower()))  # the table's order
    extra = {k: r[k] for k in ("ja4Fingerprint", "requestBodySize",
                               "requestBodySizeInspectedByWAF") if k in r}
    if extra:
        row["AdditionalFields_CF"] = extra
    return {**row, "RecordId_CF": RID}


# --------------------------------------------------------------------------- Route 53 Resolver

NOERROR_A: dict[str, Any] = {
    "version": "1.100000",
    "account_id": ACCT,
    "region": "us-east-1",
    "vpc_id": "vpc-0a1b2c3d4e5f60718",
    "query_timestamp": "2026-11-01T10:05:19Z",
    "query_name": "api.example.com.",
    "query_type": "A",
    "query_class": "IN",
    "rcode": "NOERROR",
    "answers": [{"Rdata": "api-lb-1234.us-east-1.elb.amazonaws.com.", "Type": "CNAME",
                 "Class": "IN"},
                {"Rdata": "192.0.2.44", "Type": "A", "Class": "IN"},
                {"Rdata": "192.0.2.45", "Type": "A", "Class": "IN"}],
    "srcaddr": "10.0.1.25",
    "srcport": "49152",
    "transport": "UDP",
    "srcids": {"instance": "i-0a1b2c3d4e5f60718"},
}

NXDOMAIN_VIA_INBOUND_ENDPOINT: dict[str, Any] = {
    "version": "1.100000",
    "account_id": ACCT,
    "region": "us-east-1",
    "vpc_id": "vpc-0a1b2c3d4e5f60718",
    "query_timestamp": "2026-11-01T10:05:21Z",
    "query_name": "wpad.corp.example.com.",
    "query_type": "AAAA",
    "query_class": "IN",
    "rcode": "NXDOMAIN",
    "answers": [],
    "srcaddr": "172.16.20.9",
    "srcport": "53981",
    "transport": "TCP",
    "srcids": {"resolver_endpoint": "rslvr-in-0123456789abcdef0",
               "resolver_network_interface": "rni-0123456789abcdef0"},
}

# The Route 53 Developer Guide's own example: a query blocked by a DNS Firewall rule.
FIREWALL_BLOCK: dict[str, Any] = {
    "srcaddr": "4.5.64.102",
    "vpc_id": "vpc-7example",
    "answers": [{"Rdata": "203.0.113.9", "Type": "PTR", "Class": "IN"}],
    "firewall_rule_group_id": "rslvr-frg-01234567890abcdef",
    "firewall_rule_action": "BLOCK",
    "query_name": "15.3.4.32.in-addr.arpa.",
    "firewall_domain_list_id": "rslvr-fdl-01234567890abcdef",
    "query_class": "IN",
    "srcids": {"instance": "i-0d15cd0d3example"},
    "rcode": "NOERROR",
    "query_type": "PTR",
    "transport": "UDP",
    "version": "1.100000",
    "account_id": "111122223333",
    "srcport": "56067",
    "query_timestamp": "2021-02-04T17:51:55Z",
    "region": "us-east-1",
}

_R53_COLUMNS = {"account_id": "AccountId", "answers": "Answers",
                "firewall_domain_list_id": "FirewallDomainListId",
                "firewall_rule_action": "FirewallRuleAction",
                "firewall_rule_group_id": "FirewallRuleGroupId", "query_class": "QueryClass",
                "query_name": "QueryName", "query_type": "QueryType", "rcode": "Rcode",
                "region": "Region", "srcaddr": "SrcAddr", "srcids": "SrcIds", "srcport": "SrcPort",
                "query_timestamp": "TimeGenerated", "transport": "Transport", "version": "Version",
                "vpc_id": "VpcId"}


def route53_row(r: dict[str, Any]) -> dict[str, Any]:
    row = {col: r[field] for field, col in _R53_COLUMNS.items() if field in r}
    return {**dict(sorted(row.items(), key=lambda kv: kv[0].lower())), "RecordId_CF": RID}


# --------------------------------------------------------------------------- the cases

CASES = [
    pytest.param("AWSGuardDuty", SSH_BRUTE_FORCE, guardduty_row(SSH_BRUTE_FORCE),
                 datetime(2026, 11, 1, 10, 5, 13, 405000, UTC), id="guardduty-ssh"),
    pytest.param("AWSGuardDuty", CREDENTIAL_EXFILTRATION, guardduty_row(CREDENTIAL_EXFILTRATION),
                 datetime(2026, 11, 2, 21, 30, 41, 118000, UTC), id="guardduty-iam"),
    pytest.param("AWSWAF", BLOCK_BY_MANAGED_GROUP,
                 waf_row(BLOCK_BY_MANAGED_GROUP, "2026-11-01T10:05:17.481000Z"),
                 datetime(2026, 11, 1, 10, 5, 17, 481000, UTC), id="waf-block"),
    pytest.param("AWSWAF", ALLOW_WITH_LABELS,
                 waf_row(ALLOW_WITH_LABELS, "2026-11-01T10:05:18.022000Z"),
                 datetime(2026, 11, 1, 10, 5, 18, 22000, UTC), id="waf-allow"),
    pytest.param("AWSRoute53Resolver", NOERROR_A, route53_row(NOERROR_A),
                 datetime(2026, 11, 1, 10, 5, 19, tzinfo=UTC), id="r53-noerror"),
    pytest.param("AWSRoute53Resolver", NXDOMAIN_VIA_INBOUND_ENDPOINT,
                 route53_row(NXDOMAIN_VIA_INBOUND_ENDPOINT),
                 datetime(2026, 11, 1, 10, 5, 21, tzinfo=UTC), id="r53-nxdomain"),
    pytest.param("AWSRoute53Resolver", FIREWALL_BLOCK, route53_row(FIREWALL_BLOCK),
                 datetime(2021, 2, 4, 17, 51, 55, tzinfo=UTC), id="r53-firewall"),
]
SAMPLES = [(p.values[0], p.values[1]) for p in CASES]


def both(table: str, rec: dict[str, Any]) -> bytes:
    """The row from both paths of the Mapper, which must be the same bytes."""
    m = Mapper(TABLES[table])
    fast = m.map_json(orjson.dumps(rec), RID)
    generic = m.map_dict(copy.deepcopy(rec), RID)
    assert fast == generic
    return fast


@pytest.mark.parametrize(("table", "rec", "expected", "when"), CASES)
def test_golden_rows(table: str, rec: dict[str, Any], expected: dict[str, Any],
                     when: datetime) -> None:
    row = orjson.loads(both(table, rec))
    assert row == expected
    assert list(row) == list(expected)  # columns in table order, the record id last
    t = datetime.fromisoformat(row["TimeGenerated"])
    assert row["TimeGenerated"].endswith("Z") and t.utcoffset().total_seconds() == 0
    assert t == when


def test_waf_times_are_the_epoch_milliseconds_in_utc() -> None:
    for rec in (BLOCK_BY_MANAGED_GROUP, ALLOW_WITH_LABELS):
        row = orjson.loads(both("AWSWAF", rec))
        t = datetime.fromisoformat(row["TimeGenerated"])
        assert t.tzinfo is not None and round(t.timestamp() * 1000) == rec["timestamp"]


def test_guardduty_times_keep_created_and_updated_apart() -> None:
    row = orjson.loads(both("AWSGuardDuty", SSH_BRUTE_FORCE))
    assert row["TimeCreated"] == "2026-11-01T09:47:06.612Z"   # createdAt
    assert row["TimeGenerated"] == "2026-11-01T10:05:13.405Z"  # updatedAt: the last activity


@pytest.mark.parametrize(("table", "rec"), SAMPLES)
def test_no_top_level_field_is_lost(table: str, rec: dict[str, Any]) -> None:
    """Every non-null top-level field of the record is in some column of the row.

    A field is either a column's whole source (its value is in the row, as the same JSON
    value for dynamic and string columns) or kept in AdditionalFields_CF. Null fields carry
    nothing and are left out, as the Mapper leaves out every null.
    """
    row = orjson.loads(both(table, rec))
    whole = {c.source[0]: c for c in TABLES[table].columns if len(c.source) == 1}
    rest = row.get("AdditionalFields_CF", {})
    for key, value in rec.items():
        if value is None:
            assert key not in rest
            continue
        col = whole.get(key)
        if col is not None and col.source != ("*",):
            assert col.name in row, key
            if col.type == "dynamic" or col.type == "int" and type(value) is int:
                assert row[col.name] == value, key
            elif col.type == "string":  # formatVersion 1 -> "1"
                assert row[col.name] == (value if isinstance(value, str) else str(value)), key
        else:
            assert rest.get(key) == value, key


@pytest.mark.parametrize(("table", "rec"), SAMPLES)
def test_nested_objects_are_kept_whole(table: str, rec: dict[str, Any]) -> None:
    row = orjson.loads(both(table, rec))
    nested = {"AWSGuardDuty": {"ResourceDetails": "resource", "ServiceDetails": "service"},
              "AWSWAF": {"HttpRequest": "httpRequest", "RuleGroupList": "ruleGroupList",
                         "Labels": "labels"},
              "AWSRoute53Resolver": {"Answers": "answers", "SrcIds": "srcids"}}[table]
    for col, key in nested.items():
        assert row[col] == rec[key]


def test_unknown_new_fields_land_in_additional_fields() -> None:
    """A field AWS adds later is kept on both paths, next to the known extras."""
    for table, rec in SAMPLES:
        newer = {**rec, "someFutureField": {"a": [1, 2]}, "another_new_one": "x"}
        row = orjson.loads(both(table, newer))
        assert row["AdditionalFields_CF"]["someFutureField"] == {"a": [1, 2]}
        assert row["AdditionalFields_CF"]["another_new_one"] == "x"
    sequence = f"arn:aws:guardduty:eu-west-1:{ACCT}:detector/x/finding/y"
    extra = {**CREDENTIAL_EXFILTRATION, "confidence": 8, "associatedAttackSequenceArn": sequence}
    row = orjson.loads(both("AWSGuardDuty", extra))
    assert row["AdditionalFields_CF"] == {"confidence": 8, "associatedAttackSequenceArn": sequence}


@pytest.mark.parametrize(("table", "rec"), SAMPLES)
def test_documented_records_take_the_fast_path(table: str, rec: dict[str, Any]) -> None:
    """No documented field sends a record down the slower generic path."""
    m = Mapper(TABLES[table])
    expected = m.map_dict(copy.deepcopy(rec), RID)

    def generic(*_: Any) -> bytes:
        raise AssertionError("took the generic path")

    m.row_dict = generic  # type: ignore[method-assign]
    assert m.map_json(orjson.dumps(rec), RID) == expected


# --------------------------------------------------------------------------- values and errors


@pytest.mark.parametrize(("severity", "expected"), [(8, 8), (8.0, 8), (5, 5), ("2", 2)])
def test_guardduty_severity_is_an_int(severity: Any, expected: int) -> None:
    row = orjson.loads(both("AWSGuardDuty", {**SSH_BRUTE_FORCE, "severity": severity}))
    assert row["Severity"] == expected


@pytest.mark.parametrize(("severity", "cut"), [(5.5, 5), (8.3, 8), (6.95, 6), ("7.2", 7)])
def test_a_fractional_severity_maps_as_toint_and_keeps_the_exact_value(severity: Any,
                                                                        cut: int) -> None:
    """Real findings carry fractions (5.5): never lost to a number format. The column takes
    what the service's own connector writes (toint), AdditionalFields_CF the exact value."""
    row = orjson.loads(both("AWSGuardDuty", {**SSH_BRUTE_FORCE, "severity": severity}))
    assert row["Severity"] == cut
    assert row["AdditionalFields_CF"]["severity"] == severity


def test_a_whole_severity_adds_nothing_to_additional_fields() -> None:
    row = orjson.loads(both("AWSGuardDuty", {**SSH_BRUTE_FORCE, "severity": 8.0}))
    assert row["Severity"] == 8 and "severity" not in row.get("AdditionalFields_CF", {})


@pytest.mark.parametrize("severity", ["high", [5], float("nan"), float("inf")])
def test_a_severity_that_is_no_number_is_still_an_error(severity: Any) -> None:
    rec = {**SSH_BRUTE_FORCE, "severity": severity}
    m = Mapper(TABLES["AWSGuardDuty"])
    with pytest.raises(MappingError) as ex:
        m.map_dict(rec, RID)
    assert ex.value.code == "wrong_type"


def test_waf_values_as_aws_writes_them() -> None:
    """formatVersion 1 -> "1"; "-" sources kept; a custom response code is an int."""
    rec = {**BLOCK_BY_MANAGED_GROUP, "httpSourceName": "-", "httpSourceId": "-",
           "responseCodeSent": 403,
           "httpRequest": {**BLOCK_BY_MANAGED_GROUP["httpRequest"], "country": "-"}}
    row = orjson.loads(both("AWSWAF", rec))
    assert (row["FormatVersion"], row["HttpSourceName"], row["HttpSourceId"], row["Country"],
            row["ResponseCodeSent"]) == ("1", "-", "-", "-", 403)
    assert "RuleGroupId" not in row and "TerminatingRule" not in row  # see AWSWAF.toml


def test_a_waf_record_without_http_request_maps() -> None:
    rec = {k: v for k, v in BLOCK_BY_MANAGED_GROUP.items() if k != "httpRequest"}
    row = orjson.loads(both("AWSWAF", rec))
    assert not {"HttpRequest", "ClientIp", "Uri", "Headers", "Args"} & set(row)


def test_route53_srcport_as_a_number_is_still_a_string() -> None:
    row = orjson.loads(both("AWSRoute53Resolver", {**NOERROR_A, "srcport": 49152}))
    assert row["SrcPort"] == "49152"


REQUIRED = [
    ("AWSGuardDuty", SSH_BRUTE_FORCE, "updatedAt", "TimeGenerated"),
    ("AWSGuardDuty", SSH_BRUTE_FORCE, "id", "Id"),
    ("AWSGuardDuty", SSH_BRUTE_FORCE, "type", "ActivityType"),
    ("AWSWAF", ALLOW_WITH_LABELS, "timestamp", "TimeGenerated"),
    ("AWSWAF", ALLOW_WITH_LABELS, "action", "Action"),
    ("AWSWAF", ALLOW_WITH_LABELS, "webaclId", "WebAclId"),
    ("AWSRoute53Resolver", NOERROR_A, "query_timestamp", "TimeGenerated"),
    ("AWSRoute53Resolver", NOERROR_A, "query_name", "QueryName"),
]


def test_the_required_columns_are_the_listed_ones() -> None:
    for name in ("AWSGuardDuty", "AWSWAF", "AWSRoute53Resolver"):
        required = {c.name for c in TABLES[name].columns if c.required}
        assert required == {col for t, _, _, col in REQUIRED if t == name}


@pytest.mark.parametrize(("table", "rec", "field", "column"), REQUIRED)
@pytest.mark.parametrize("how", ["absent", "null"])
def test_missing_required_fields_are_mapping_errors(table: str, rec: dict[str, Any], field: str,
                                                     column: str, how: str) -> None:
    bad = {k: v for k, v in rec.items() if k != field}
    if how == "null":
        bad[field] = None
    m = Mapper(TABLES[table])
    for call in (lambda: m.map_json(orjson.dumps(bad), RID), lambda: m.map_dict(bad, RID)):
        message = rf"required field '{field}' \(column {column}\)"
        with pytest.raises(MappingError, match=message) as ex:
            call()
        assert ex.value.code == "missing_required"


@pytest.mark.parametrize(("table", "rec", "field", "bad"), [
    ("AWSGuardDuty", SSH_BRUTE_FORCE, "updatedAt", "yesterday"),
    ("AWSGuardDuty", SSH_BRUTE_FORCE, "createdAt", {"t": 1}),
    ("AWSWAF", ALLOW_WITH_LABELS, "timestamp", "soon"),
    ("AWSWAF", ALLOW_WITH_LABELS, "responseCodeSent", "OK"),
    ("AWSRoute53Resolver", NOERROR_A, "query_timestamp", "2026-11-01 25:61:00"),
    ("AWSRoute53Resolver", NOERROR_A, "query_timestamp", "2026-13-45T99:00:00Z"),
])
def test_values_that_do_not_fit_are_mapping_errors(table: str, rec: dict[str, Any], field: str,
                                                   bad: Any) -> None:
    m = Mapper(TABLES[table])
    wrong = {**rec, field: bad}
    for call in (lambda: m.map_json(orjson.dumps(wrong), RID), lambda: m.map_dict(wrong, RID)):
        with pytest.raises(MappingError) as ex:
            call()
        assert ex.value.code == "wrong_type"


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"42", b'"text"', b"\xff\xfe{}",
                                  b'{"updatedAt": "2026-11-01T00:00:00Z"',
                                  b"2 123456789010 eni-1235b8ca1 - - - - - - - 1 2 - NODATA"])
@pytest.mark.parametrize("table", ["AWSGuardDuty", "AWSWAF", "AWSRoute53Resolver"])
def test_bytes_that_are_not_a_json_object_are_mapping_errors(table: str, data: bytes) -> None:
    with pytest.raises(MappingError) as ex:
        Mapper(TABLES[table]).map_json(data, RID)
    assert ex.value.code in ("invalid_json", "not_an_object", "missing_required")


MAPPERS = {name: Mapper(TABLES[name]) for name in ("AWSGuardDuty", "AWSWAF", "AWSRoute53Resolver")}


@settings(max_examples=300, deadline=None)
@given(table=st.sampled_from(sorted(MAPPERS)), data=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_mapping_errors(table: str, data: bytes) -> None:
    with contextlib.suppress(MappingError):
        MAPPERS[table].map_json(data, RID)




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=st.sampled_from(SAMPLES))
def test_both_paths_agree_on_any_shape(data: st.DataObject, case: tuple[str, dict]) -> None:
    """Whatever the types of the fields, map_json and map_dict give the same row or both fail.

    httpRequest's own fields are mutated too: the fast path reads them from the raw
    httpRequest text (a column of its own), the generic path walks the parsed record.
    """
    table, rec = case
    if "httpRequest" in rec:
        rec = {**rec, "httpRequest": data.draw(_mutations(rec["httpRequest"]))}
    mutated = data.draw(_mutations(rec))
    m = MAPPERS[table]
    outcomes = []
    for call in (lambda: m.map_json(orjson.dumps(mutated), RID),
                 lambda: m.map_dict(copy.deepcopy(mutated), RID)):
        try:
            outcomes.append(orjson.loads(call()))
        except MappingError as ex:
            outcomes.append(ex.code)
    assert outcomes[0] == outcomes[1]


# --------------------------------------------------------------------------- tables, detection, DCR

# The Azure Monitor table reference's columns (system columns left out) with their types.
REFERENCE = {
    "AWSGuardDuty": {
        "AccountId": "string", "ActivityType": "string", "Arn": "string", "Description": "string",
        "Id": "string", "Partition": "string", "Region": "string", "ResourceDetails": "dynamic",
        "SchemaVersion": "string", "ServiceDetails": "dynamic", "Severity": "int",
        "TimeCreated": "datetime", "TimeGenerated": "datetime", "Title": "string"},
    "AWSWAF": {
        "Action": "string", "Args": "string", "CaptchaResponse": "dynamic",
        "ChallengeResponse": "dynamic", "ClientIp": "string", "Country": "string",
        "ExcludedRules": "dynamic", "FormatVersion": "string", "Headers": "dynamic",
        "HttpMethod": "string", "HttpRequest": "dynamic", "HttpSourceId": "string",
        "HttpSourceName": "string", "HttpVersion": "string", "Ja3Fingerprint": "string",
        "Labels": "dynamic", "NonTerminatingMatchingRules": "dynamic", "OversizeFields": "dynamic",
        "RateBasedRuleList": "dynamic", "RequestHeadersInserted": "dynamic", "RequestId": "string",
        "ResponseCodeSent": "int", "RuleGroupId": "string", "RuleGroupList": "dynamic",
        "TerminatingRule": "dynamic", "TerminatingRuleId": "string",
        "TerminatingRuleMatchDetails": "dynamic", "TerminatingRuleType": "string",
        "TimeGenerated": "datetime", "Uri": "string", "WebAclId": "string"},
    "AWSRoute53Resolver": {
        "AccountId": "string", "Answers": "dynamic", "FirewallDomainListId": "string",
        "FirewallRuleAction": "string", "FirewallRuleGroupId": "string", "LogType": "string",
        "QueryClass": "string", "QueryName": "string", "QueryType": "string", "Rcode": "string",
        "Region": "string", "SrcAddr": "string", "SrcIds": "dynamic", "SrcPort": "string",
        "TimeGenerated": "datetime", "Transport": "string", "Version": "string",
        "VpcId": "string"},
}
# Reference columns the TOMLs leave out, each with its reason written there.
NOT_WRITTEN = {"AWSWAF": {"ExcludedRules", "RuleGroupId", "TerminatingRule"},
               "AWSRoute53Resolver": {"LogType"}}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_tables_follow_the_reference(name: str) -> None:
    table: TableDef = TABLES[name]
    assert (table.kind, table.stream, table.output_stream) == (
        "standard", f"Custom-{name}", f"Microsoft-{name}")
    cols = {c.name: c.type for c in table.columns}
    assert cols.pop("AdditionalFields_CF") == "dynamic"
    ref = {k: v for k, v in REFERENCE[name].items() if k not in NOT_WRITTEN.get(name, set())}
    assert cols == ref
    names = [c.name for c in table.columns][:-1]
    assert names == sorted(names, key=str.lower)  # the reference's order


def test_formats_detect_map_and_frame_as_json_lines() -> None:
    keys = {
        "guardduty": f"AWSLogs/{ACCT}/GuardDuty/us-east-1/2026/11/01/"
                     "0b5e8c2a-1f3d-3a4b-9c8d-7e6f5a4b3c2d.jsonl.gz",
        "waf": f"AWSLogs/{ACCT}/WAFLogs/us-east-1/prod-acl/2026/11/01/10/05/"
               f"{ACCT}_waflogs_us-east-1_prod-acl_20261101T1005Z_a1b2c3d4.log.gz",
        "route53resolver": f"AWSLogs/{ACCT}/vpcdnsquerylogs/vpc-0a1b2c3d4e5f60718/2026/11/01/"
                           f"vpc-0a1b2c3d4e5f60718_vpcdnsquerylogs_{ACCT}_20261101T1005Z_"
                           "5f4e3d2c.log.gz",
    }
    for fmt, key in keys.items():
        assert detect(key) == fmt
        assert fmt in JSON_FORMATS and text_format(fmt) is None and framing_of(fmt) == "lines"
        assert DEFAULT_TABLES[fmt] in TABLES


def test_the_dcr_declares_every_column_and_adds_the_cf_column() -> None:
    tables = [TABLES[n] for n in REFERENCE]
    template = dcr_template(tables)
    rule = next(r for r in template["resources"]
                if r["type"] == "Microsoft.Insights/dataCollectionRules")
    for t in tables:
        stream = rule["properties"]["streamDeclarations"][t.stream]
        declared = {c["name"] for c in stream["columns"]}
        assert declared == {c.name for c in t.columns} | {"RecordId_CF"}
        added = next(r for r in template["resources"] if r["type"].endswith("/tables")
                     and r["properties"]["schema"]["name"] == t.name)
        assert [c["name"] for c in added["properties"]["schema"]["columns"]] == [
            "AdditionalFields_CF", "RecordId_CF"]
    flows = {f["streams"][0]: f["outputStream"] for f in rule["properties"]["dataFlows"]}
    assert flows == {t.stream: t.output_stream for t in tables}


def test_auto_detected_objects_go_to_their_default_tables() -> None:
    """A source with format = "auto" and no table: each object goes where its key says."""
    mapper = RecordMapper([SourceConfig(name="all", bucket="logs", format="auto")], TABLES,
                          max_row_bytes=1_000_000)
    cases = [("guardduty", "GuardDuty/us-east-1/2026/11/01/f.jsonl.gz", SSH_BRUTE_FORCE),
             ("waf", "WAFLogs/us-east-1/prod-acl/2026/11/01/10/05/w.log.gz", ALLOW_WITH_LABELS),
             ("route53resolver", "vpcdnsquerylogs/vpc-1/2026/11/01/q.log.gz", FIREWALL_BLOCK)]
    for fmt, key, rec in cases:
        obj = ObjectRef("all", "all:0/1", "logs", f"AWSLogs/{ACCT}/{key}", "etag", 10, fmt)
        row = mapper(RawRecord(obj, 7, orjson.dumps(rec)))
        assert type(row) is Row and row.stream == f"Custom-{DEFAULT_TABLES[fmt]}"
        assert orjson.loads(row.data)["RecordId_CF"] == f"{obj.id}-7"
        bad = mapper(RawRecord(obj, 8, b'{"not": "a record of this format"}'))
        assert type(bad) is ErrorRecord and bad.stage == "map"
