"""A bucket holding every AWS log format in its real key layout, plus bad lines and a corrupt object.

The record lines follow the examples of the AWS documentation for each format. Used by
the end-to-end test of format detection and mapping, and by the demo. What Firehose delivers
(CloudWatch Logs subscription data, Security Hub findings through EventBridge, EKS audit
events) has no fixed key layout: those objects are recognised by their first bytes.
"""

from __future__ import annotations

import contextlib
import gzip
from dataclasses import dataclass, field
from typing import Any

import orjson

__all__ = ["MixedSeed", "seed_mixed"]

ACCT = "111122223333"

VPC_HEADER = (b"version account-id interface-id srcaddr dstaddr srcport dstport protocol packets "
              b"bytes start end action log-status")
VPC_LINES = [
    b"2 111122223333 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249 "
    b"1761955210 1761955270 ACCEPT OK",
    b"2 111122223333 eni-1235b8ca123456789 172.31.9.69 172.31.9.12 49761 3389 6 20 4249 "
    b"1761955210 1761955270 REJECT OK",
    b"2 111122223333 eni-1235b8ca123456789 2001:db8:1234:a100::10 2001:db8:1234:a102::20 "
    b"54321 443 6 10 840 1761955210 1761955270 ACCEPT OK",
    b"2 111122223333 eni-1235b8ca123456789 - - - - - - - 1761955210 1761955270 - NODATA",
]
VPC_BAD = b"2 111122223333 eni-1235b8ca123456789 172.31.16.139 too few fields"
# No header line (CloudWatch Logs export): every field of versions 2 to 5, in the order of the
# "Available fields" table, recognised by its count (29) and version (5); one wrapped as
# {"message": ...}.
VPC_V5_LINES = [
    b"5 111122223333 eni-1235b8ca123456789 10.0.0.71 52.95.128.179 34210 80 6 7 471 1761955210 "
    b"1761955270 ACCEPT OK vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b 3 "
    b"IPv4 10.0.0.71 52.95.128.179 us-east-1 use1-az1 - - - S3 egress 8",
    b'{"message": "5 111122223333 eni-1235b8ca123456789 52.95.128.179 10.0.0.71 80 34210 6 14 '
    b"15044 1761955210 1761955270 ACCEPT OK vpc-abcdefab012345678 subnet-aaaaaaaa012345678 "
    b'i-0c50d5961bcb2d47b 19 IPv4 52.95.128.179 10.0.0.71 us-east-1 use1-az1 - - S3 - ingress -"}',
]

ALB_LINES = [
    b'http 2026-11-01T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 192.168.131.39:2817 '
    b'10.0.0.1:80 0.000 0.001 0.000 200 200 34 366 "GET http://www.example.com:80/ HTTP/1.1" '
    b'"curl/7.46.0" - - arn:aws:elasticloadbalancing:us-east-2:111122223333:targetgroup/'
    b'my-targets/73e2d6bc24d8a067 "Root=1-58337262-36d228ad5d99923122bbe354" "-" "-" 0 '
    b'2026-11-01T22:22:48.364000Z "forward" "-" "-" "10.0.0.1:80" "200" "-" "-" TID_1234',
    b'https 2026-11-01T22:23:00.186641Z app/my-loadbalancer/50dc6c495c0c9188 192.168.131.39:2817 '
    b'10.0.0.1:80 0.086 0.048 0.037 200 200 0 57 "GET https://www.example.com:443/a?b=1 HTTP/1.1" '
    b'"Mozilla/5.0 (X11; Linux) \\"quoted\\"" ECDHE-RSA-AES128-GCM-SHA256 TLSv1.2 '
    b'arn:aws:elasticloadbalancing:us-east-2:111122223333:targetgroup/my-targets/73e2d6bc24d8a067 '
    b'"Root=1-58337281-1d84f3d73c47ec4e58577259" "www.example.com" '
    b'"arn:aws:acm:us-east-2:111122223333:certificate/12345678-1234-1234-1234-123456789012" 1 '
    b'2026-11-01T22:22:48.364000Z "authenticate,forward" "-" "-" "10.0.0.1:80" "200" "-" "-" '
    b'TID_5678',
]

ALBCONN_LINES = [
    b'2026-11-01T22:23:00.186641Z 192.168.131.39 2817 443 TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 '
    b'0.012 "CN=client.example.com,O=Example,C=US" '
    b'NotBefore=2026-01-01T00:00:00Z;NotAfter=2027-01-01T00:00:00Z FEF257E3AC9A2B2A Success '
    b'TID_5678',
    b'2026-11-01T22:23:01.000000Z 192.168.131.40 2818 443 TLSv1.3 TLS_AES_128_GCM_SHA256 - "-" '
    b'- - Failed:ClientCertMaxChainDepthExceeded',
]

CF_HEADER = [
    b"#Version: 1.0",
    b"#Fields: date time x-edge-location sc-bytes c-ip cs-method cs(Host) cs-uri-stem sc-status "
    b"cs(Referer) cs(User-Agent) cs-uri-query cs(Cookie) x-edge-result-type x-edge-request-id "
    b"x-host-header cs-protocol cs-bytes time-taken x-forwarded-for ssl-protocol ssl-cipher "
    b"x-edge-response-result-type cs-protocol-version fle-status fle-encrypted-fields c-port "
    b"time-to-first-byte x-edge-detailed-result-type sc-content-type sc-content-len "
    b"sc-range-start sc-range-end",
]
CF_LINES = [
    b"\t".join([b"2026-11-01", b"21:02:31", b"LAX1", b"392", b"192.0.2.100", b"GET",
                b"d111111abcdef8.cloudfront.net", b"/index.html", b"200", b"-",
                b"Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64)", b"-", b"-", b"Hit",
                b"SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==",
                b"d111111abcdef8.cloudfront.net", b"https", b"23", b"0.001", b"-", b"TLSv1.2",
                b"ECDHE-RSA-AES128-GCM-SHA256", b"Hit", b"HTTP/2.0", b"-", b"-", b"11040",
                b"0.001", b"Hit", b"text/html", b"78", b"-", b"-"]),
    b"\t".join([b"2026-11-01", b"21:02:32", b"LAX1", b"0", b"2001:db8::1", b"GET",
                b"d111111abcdef8.cloudfront.net", b"/a%20b.png", b"404", b"https://example.com/",
                b"curl/8.0", b"x=1&y=%22q%22", b"-", b"Error",
                b"k6WGMNkEzR5BEM_SaF47gjtX9zBDO2m349OY2an0QPEaUum1ZOLrow==",
                b"d111111abcdef8.cloudfront.net", b"https", b"23", b"0.000", b"-", b"TLSv1.3",
                b"TLS_AES_128_GCM_SHA256", b"Error", b"HTTP/1.1", b"-", b"-", b"443", b"0.000",
                b"Error", b"text/html", b"-", b"-", b"-"]),
]

S3ACCESS_LINES = [
    b'79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be amzn-s3-demo-bucket1 '
    b'[06/Feb/2026:00:00:38 +0000] 192.0.2.3 '
    b'79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be 3E57427F3EXAMPLE '
    b'REST.GET.VERSIONING - "GET /amzn-s3-demo-bucket1?versioning HTTP/1.1" 200 - 113 - 7 - '
    b'"-" "S3Console/0.4" - s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3/eTPFvsiP/'
    b'XV/VLi31234= SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader '
    b'amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com TLSV1.2 - -',
]


# Network Firewall (JSON lines, AWSLogs/<acct>/network-firewall/<log-type>/...): the alert and flow
# examples of "Contents of a AWS Network Firewall log" (event_timestamp as a string of epoch seconds).
NFW_FLOW_LINES = [
    b'{"firewall_name":"test-firewall","availability_zone":"us-east-1b","event_timestamp":"1793527565",'
    b'"event":{"timestamp":"2026-11-01T10:06:05.007515+0000","flow_id":1770453319291727,'
    b'"event_type":"netflow","src_ip":"45.129.33.153","src_port":47047,"dest_ip":"172.31.16.139",'
    b'"dest_port":16463,"proto":"TCP","netflow":{"pkts":1,"bytes":60,'
    b'"start":"2026-11-01T10:05:04.070479+0000","end":"2026-11-01T10:05:04.070479+0000","age":0,'
    b'"min_ttl":241,"max_ttl":241},"tcp":{"tcp_flags":"02","syn":true}}}',
    b'{"firewall_name":"test-firewall","availability_zone":"us-east-1b","event_timestamp":"1793527566",'
    b'"event":{"timestamp":"2026-11-01T10:06:06.118003+0000","flow_id":1770453319291728,'
    b'"event_type":"netflow","src_ip":"172.31.16.139","src_port":443,"dest_ip":"198.51.100.20",'
    b'"dest_port":52100,"proto":"TCP","app_proto":"tls","netflow":{"pkts":12,"bytes":5210,'
    b'"start":"2026-11-01T10:05:10.000000+0000","end":"2026-11-01T10:05:40.000000+0000","age":30,'
    b'"min_ttl":64,"max_ttl":64},"tcp":{"tcp_flags":"1b","syn":true,"fin":true,"psh":true,'
    b'"ack":true}}}',
]
NFW_ALERT_LINES = [
    b'{"firewall_name":"test-firewall","availability_zone":"us-east-1b","event_timestamp":"1793527801",'
    b'"event":{"timestamp":"2026-11-01T10:10:01.006481+0000","flow_id":1582438383425873,'
    b'"event_type":"alert","src_ip":"203.0.113.4","src_port":55555,"dest_ip":"192.0.2.16",'
    b'"dest_port":111,"proto":"TCP","alert":{"action":"blocked","signature_id":5,"rev":0,'
    b'"signature":"test_tcp","category":"","severity":1}}}',
]

# EKS control-plane audit events (Kubernetes audit.k8s.io/v1, one JSON object per line), the
# caller's IAM identity in user.extra as EKS writes it.
EKS_AUDIT_LINES = [
    b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata",'
    b'"auditID":"0a4376d5-307a-4e16-a049-24e0170b3a5c","stage":"ResponseComplete",'
    b'"requestURI":"/api/v1/namespaces/kube-system/secrets/aws-secret","verb":"get",'
    b'"user":{"username":"kubernetes-admin","uid":"aws-iam-authenticator:111122223333:AIDAEXAMPLE",'
    b'"groups":["system:masters","system:authenticated"],"extra":{"accessKeyId":["AKIAIOSFODNN7EXAMPLE"],'
    b'"arn":["arn:aws:iam::111122223333:user/admin"],"canonicalArn":["arn:aws:iam::111122223333:user/admin"],'
    b'"principalId":["AIDAEXAMPLE"],"sessionName":[""]}},"sourceIPs":["192.0.2.10"],'
    b'"userAgent":"kubectl/v1.31.0 (linux/amd64) kubernetes/9edcffc",'
    b'"objectRef":{"resource":"secrets","namespace":"kube-system","name":"aws-secret","apiVersion":"v1"},'
    b'"responseStatus":{"metadata":{},"code":200},"requestReceivedTimestamp":"2026-11-01T10:07:11.042617Z",'
    b'"stageTimestamp":"2026-11-01T10:07:11.046330Z","annotations":{"authorization.k8s.io/decision":"allow",'
    b'"authorization.k8s.io/reason":""}}',
    b'{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata",'
    b'"auditID":"9b2e4c1d-6a3f-4e8b-9c7d-1f2e3a4b5c6d","stage":"ResponseComplete",'
    b'"requestURI":"/api/v1/namespaces/default/pods/web-0/exec?command=sh","verb":"create",'
    b'"user":{"username":"system:anonymous","groups":["system:unauthenticated"]},'
    b'"sourceIPs":["203.0.113.50"],"userAgent":"curl/8.5.0",'
    b'"objectRef":{"resource":"pods","namespace":"default","name":"web-0","apiVersion":"v1",'
    b'"subresource":"exec"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden",'
    b'"code":403},"requestReceivedTimestamp":"2026-11-01T10:07:12.000001Z",'
    b'"stageTimestamp":"2026-11-01T10:07:12.000950Z","annotations":{"authorization.k8s.io/decision":"forbid",'
    b'"authorization.k8s.io/reason":""}}',
]


def _cloudwatch() -> list[dict[str, Any]]:
    """CloudWatch Logs subscription documents (the decompressed data of "Subscription filters with
    Amazon Data Firehose"): a DATA_MESSAGE of CloudTrail events, and CloudWatch's own check."""
    return [{
        "owner": ACCT, "logGroup": "CloudTrail/logs",
        "logStream": f"{ACCT}_CloudTrail/logs_us-east-1", "subscriptionFilters": ["Destination"],
        "messageType": "DATA_MESSAGE", "logEvents": [
            {"id": f"3195310660696698337880902507980421114328961542429822156{i}",
             "timestamp": 1793527200000 + i,
             "message": '{"eventVersion":"1.03","userIdentity":{"type":"Root"}}'}
            for i in range(3)]}, {
        "messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "",
        "logStream": "", "subscriptionFilters": [], "logEvents": [
            {"id": "", "timestamp": 1793527200000,
             "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}]


def _securityhub() -> list[dict[str, Any]]:
    """EventBridge events of Security Hub findings ("EventBridge event formats for Security Hub
    CSPM"), one finding each, in the AWS Security Finding Format."""
    def event(n: int, finding: dict[str, Any]) -> dict[str, Any]:
        return {"version": "0", "id": f"8e5622f9-d81c-4d81-612a-9319e7ee2506-{n}",
                "detail-type": "Security Hub Findings - Imported", "source": "aws.securityhub",
                "account": ACCT, "time": f"2026-11-01T10:0{n}:17Z", "region": "us-east-1",
                "resources": [finding["ProductArn"]], "detail": {"findings": [finding]}}

    control = {
        "SchemaVersion": "2018-10-08",
        "Id": f"arn:aws:securityhub:us-east-1:{ACCT}:security-control/IAM.4/finding/"
              "a1b2c3d4-0000-4000-8000-000000000001",
        "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/securityhub",
        "ProductName": "Security Hub", "CompanyName": "AWS", "Region": "us-east-1",
        "GeneratorId": "security-control/IAM.4", "AwsAccountId": ACCT,
        "Types": ["Software and Configuration Checks/Industry and Regulatory Standards"],
        "FirstObservedAt": "2026-10-30T13:21:11.946Z", "LastObservedAt": "2026-11-01T10:02:14.010Z",
        "CreatedAt": "2026-10-30T13:21:11.946Z", "UpdatedAt": "2026-11-01T10:02:29.270Z",
        "Severity": {"Label": "CRITICAL", "Normalized": 90, "Original": "CRITICAL"},
        "Title": "IAM root user access key should not exist",
        "Description": "This AWS control checks whether the root user access key is available.",
        "Remediation": {"Recommendation": {
            "Text": "For information on how to correct this issue, consult the AWS Security Hub "
                    "controls documentation.",
            "Url": "https://docs.aws.amazon.com/console/securityhub/IAM.4/remediation"}},
        "ProductFields": {"aws/securityhub/ProductName": "Security Hub"},
        "Resources": [{"Type": "AwsAccount", "Id": f"AWS::::Account:{ACCT}", "Partition": "aws",
                       "Region": "us-east-1"}],
        "Compliance": {"Status": "FAILED", "SecurityControlId": "IAM.4",
                       "AssociatedStandards": [{"StandardsId": "standards/aws-foundational-"
                                                               "security-best-practices/v/1.0.0"}]},
        "WorkflowState": "NEW", "Workflow": {"Status": "NEW"}, "RecordState": "ACTIVE",
        "FindingProviderFields": {"Severity": {"Label": "CRITICAL", "Original": "CRITICAL"},
                                  "Types": ["Software and Configuration Checks/Industry and "
                                            "Regulatory Standards"]},
        "ProcessedAt": "2026-11-01T10:02:32.771Z"}
    guardduty = {
        "SchemaVersion": "2018-10-08",
        "Id": f"arn:aws:guardduty:us-east-1:{ACCT}:detector/12abc34d567e8f4912ab3d45e67891f2/"
              "finding/16afba5c5c43e07c9e3e5e2e544e95df",
        "ProductArn": "arn:aws:securityhub:us-east-1::product/aws/guardduty",
        "ProductName": "GuardDuty", "CompanyName": "Amazon", "Region": "us-east-1",
        "GeneratorId": "arn:aws:guardduty:us-east-1:" + ACCT + ":detector/12abc34d567e8f4912ab3d45e67891f2",
        "AwsAccountId": ACCT, "Types": ["TTPs/Initial Access/UnauthorizedAccess:EC2-SSHBruteForce"],
        "FirstObservedAt": "2026-11-01T09:41:03.000Z", "LastObservedAt": "2026-11-01T10:04:51.000Z",
        "CreatedAt": "2026-11-01T09:47:06.612Z", "UpdatedAt": "2026-11-01T10:05:13.405Z",
        "Severity": {"Product": 2, "Label": "LOW", "Normalized": 20},
        "Title": "198.51.100.1 is performing SSH brute force attacks against i-99999999.",
        "Description": "198.51.100.1 is performing SSH brute force attacks against i-99999999.",
        "Resources": [{"Type": "AwsEc2Instance", "Id": f"arn:aws:ec2:us-east-1:{ACCT}:instance/"
                       "i-99999999", "Partition": "aws", "Region": "us-east-1"}],
        "WorkflowState": "NEW", "Workflow": {"Status": "NEW"}, "RecordState": "ACTIVE",
        "FindingProviderFields": {"Severity": {"Label": "LOW"},
                                  "Types": ["TTPs/Initial Access/UnauthorizedAccess:EC2-"
                                            "SSHBruteForce"]},
        "ProcessedAt": "2026-11-01T10:05:20.000Z"}
    return [event(2, control), event(5, guardduty)]


def _guardduty() -> list[dict[str, Any]]:
    return [{
        "schemaVersion": "2.0", "accountId": ACCT, "region": "us-east-1", "partition": "aws",
        "id": "16afba5c5c43e07c9e3e5e2e544e95df", "arn": f"arn:aws:guardduty:us-east-1:{ACCT}:"
        "detector/123/finding/16afba5c5c43e07c9e3e5e2e544e95df",
        "type": "UnauthorizedAccess:EC2/SSHBruteForce",
        "resource": {"resourceType": "Instance", "instanceDetails": {"instanceId": "i-99999999"}},
        "service": {"serviceName": "guardduty", "detectorId": "123", "count": 3,
                    "action": {"actionType": "NETWORK_CONNECTION"}},
        "severity": 5, "createdAt": "2026-11-01T10:00:00.000Z",
        "updatedAt": "2026-11-01T10:05:00.000Z", "title": "SSH brute force attacks",
        "description": "198.51.100.1 is performing SSH brute force attacks against i-99999999."}]


def _waf() -> list[dict[str, Any]]:
    return [{
        "timestamp": 1761991200000, "formatVersion": 1,
        "webaclId": f"arn:aws:wafv2:us-east-1:{ACCT}:regional/webacl/acl/1234",
        "terminatingRuleId": "AWS-AWSManagedRulesSQLiRuleSet", "terminatingRuleType": "MANAGED_RULE_GROUP",
        "action": "BLOCK", "terminatingRuleMatchDetails": [], "httpSourceName": "ALB",
        "httpSourceId": f"{ACCT}-app/my-lb/1234", "ruleGroupList": [], "rateBasedRuleList": [],
        "nonTerminatingMatchingRules": [], "requestHeadersInserted": None,
        "responseCodeSent": None, "labels": [{"name": "awswaf:managed:aws:sql-database:SQLi_QueryArguments"}],
        "httpRequest": {"clientIp": "198.51.100.7", "country": "US", "headers": [
            {"name": "Host", "value": "example.com"}], "uri": "/login", "args": "id=1%27%20OR%201=1",
            "httpVersion": "HTTP/1.1", "httpMethod": "GET", "requestId": "rid-1"}}]


def _route53() -> list[dict[str, Any]]:
    return [{
        "version": "1.100000", "account_id": ACCT, "region": "us-east-1", "vpc_id": "vpc-0123",
        "query_timestamp": "2026-11-01T10:00:00Z", "query_name": "example.com.", "query_type": "A",
        "query_class": "IN", "rcode": "NOERROR", "answers": [
            {"Rdata": "93.184.216.34", "Type": "A", "Class": "IN"}],
        "srcaddr": "10.0.0.5", "srcport": "53123", "transport": "UDP",
        "srcids": {"instance": "i-0123"}}]


@dataclass
class MixedSeed:
    bucket: str
    expected: dict[str, int] = field(default_factory=dict)
    """Format -> records that must be delivered."""
    bad_records: int = 0
    bad_objects: int = 0


def _gz(lines: list[bytes]) -> bytes:
    return gzip.compress(b"\n".join(lines) + b"\n", mtime=0)


def seed_mixed(s3: Any, bucket: str) -> MixedSeed:
    """Write one object per format (AWS key layouts), bad lines, and a corrupt object."""
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=bucket)
    seed = MixedSeed(bucket)
    base = f"AWSLogs/{ACCT}"
    day = "2026/11/01"

    def put(key: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=key, Body=body)

    put(f"{base}/vpcflowlogs/us-east-1/{day}/{ACCT}_vpcflowlogs_us-east-1_fl-1234_"
        "20261101T0000Z_abcd1234.log.gz", _gz([VPC_HEADER, *VPC_LINES, VPC_BAD]))
    put(f"{base}/vpcflowlogs/us-east-1/{day}/{ACCT}_vpcflowlogs_us-east-1_fl-5678_"
        "20261101T0000Z_efgh5678.log.gz", _gz(VPC_V5_LINES))
    seed.expected["vpcflow"] = len(VPC_LINES) + len(VPC_V5_LINES)
    seed.bad_records += 1
    put(f"{base}/elasticloadbalancing/us-east-1/{day}/{ACCT}_elasticloadbalancing_us-east-1_"
        "app.my-loadbalancer.50dc6c495c0c9188_20261101T2220Z_192.0.2.1_2xhxdobf.log.gz",
        _gz(ALB_LINES))
    seed.expected["alb"] = len(ALB_LINES)
    put(f"{base}/elasticloadbalancing/us-east-1/{day}/conn_log.{ACCT}_elasticloadbalancing_"
        "us-east-1_app.my-loadbalancer.50dc6c495c0c9188_20261101T2220Z_192.0.2.1_2xhxdobf.log.gz",
        _gz(ALBCONN_LINES))
    seed.expected["albconn"] = len(ALBCONN_LINES)
    put("cloudfront/E2EXAMPLE12345.2026-11-01-21.a1b2c3d4.gz", _gz([*CF_HEADER, *CF_LINES]))
    seed.expected["cloudfront"] = len(CF_LINES)
    put("s3access/2026-11-01-00-00-38-0A1B2C3D4E5F6A7B", b"\n".join(S3ACCESS_LINES) + b"\n")
    seed.expected["s3access"] = len(S3ACCESS_LINES)
    for fmt, path, records in (("guardduty", "GuardDuty", _guardduty()), ("waf", "WAFLogs", _waf()),
                               ("route53resolver", "vpcdnsquerylogs", _route53())):
        put(f"{base}/{path}/us-east-1/{day}/{fmt}-0001.json.gz",
            _gz([orjson.dumps(r) for r in records]))
        seed.expected[fmt] = len(records)
    for kind, lines in (("flow", NFW_FLOW_LINES), ("alert", NFW_ALERT_LINES)):
        put(f"{base}/network-firewall/{kind}/us-east-1/test-firewall/{day}/10/{ACCT}_network-"
            f"firewall_{kind}_us-east-1_test-firewall_20261101T1005Z_a1b2c3d4.log.gz", _gz(lines))
        seed.expected[f"nfw{kind}"] = len(lines)
    # Firehose: keys under a prefix of the user's choosing (recognised by content). CloudWatch
    # Logs sends each document gzip'd and Firehose concatenates them (a multi-member gzip);
    # EventBridge events are concatenated JSON, here gzip'd by the stream.
    docs = _cloudwatch()
    put("firehose/cloudwatch/2026/11/01/10/cwl-to-s3-1-2026-11-01-10-05-00-"
        "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", b"".join(
            gzip.compress(orjson.dumps(d), mtime=0) for d in docs))
    seed.expected["cloudwatchlogs"] = sum(len(d["logEvents"]) for d in docs
                                          if d["messageType"] == "DATA_MESSAGE")
    events = _securityhub()
    put("firehose/securityhub/2026/11/01/10/securityhub-to-s3-1-2026-11-01-10-05-00-"
        "1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d.gz",
        gzip.compress(b"".join(orjson.dumps(e) for e in events), mtime=0))
    seed.expected["securityhub"] = sum(len(e["detail"]["findings"]) for e in events)
    put("firehose/eks-audit/2026/11/01/10/eks-audit-to-s3-1-2026-11-01-10-05-00-"
        "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e.gz", _gz(EKS_AUDIT_LINES))
    seed.expected["eksaudit"] = len(EKS_AUDIT_LINES)
    put(f"{base}/CloudTrail/us-east-1/{day}/{ACCT}_CloudTrail_us-east-1_20261101T0000Z_x.json.gz",
        gzip.compress(orjson.dumps({"Records": [{
            "eventVersion": "1.09", "eventTime": "2026-11-01T00:00:00Z", "eventName": "ListBuckets",
            "eventSource": "s3.amazonaws.com", "awsRegion": "us-east-1",
            "eventID": "3c5e2c3b-0000-4000-8000-000000000001"}]})))
    seed.expected["cloudtrail"] = 1
    put(f"{base}/CloudTrail/us-east-1/{day}/{ACCT}_CloudTrail_us-east-1_20261101T0005Z_y.json.gz",
        gzip.compress(b'{"Records": [{"eventVersion": "1.09"}]}')[:25])  # corrupt: truncated
    seed.bad_objects += 1
    return seed
