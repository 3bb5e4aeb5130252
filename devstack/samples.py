"""Realistic, deterministic AWS CloudTrail sample logs for the local stack (demo, tests, bench).

Records follow AWS's "CloudTrail record contents" and "userIdentity element" docs: management and
data events, console sign-ins, an AWS service event, errors, cross-account AssumeRole with
``sharedEventID``, ``tlsDetails``, ``vpcEndpointId`` and EC2 instance-role sessions with
``ec2RoleDelivery``. Keys follow CloudTrail's S3 layout, digest files included (a connector must
skip those). Everything is a pure function of the seed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import string
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

try:  # ~10x faster than zlib; the output is still one standard gzip member.
    from isal import igzip as _gzip_impl

    _GZIP_LEVEL = 2
except ImportError:  # pragma: no cover - isal is a project dependency
    _gzip_impl = gzip  # type: ignore[assignment]
    _GZIP_LEVEL = 6

__all__ = [
    "DEFAULT_START",
    "DELIVERY_INTERVAL",
    "TRAIL_NAME",
    "Manifest",
    "SeededObject",
    "cloudtrail_digest_key",
    "cloudtrail_event",
    "cloudtrail_key",
    "cloudtrail_object",
    "cloudtrail_objects",
    "seed_cloudtrail",
]

DEFAULT_START = datetime(2024, 6, 3, 8, 0, tzinfo=UTC)
"""Start of the seeded timeline when none is given (fixed, so seeding is reproducible)."""
DELIVERY_INTERVAL = timedelta(minutes=5)
"""CloudTrail delivers a log file per account and region about every five minutes."""
TRAIL_NAME = "management-and-data"

Record = dict[str, Any]
Rng = random.Random
_ALNUM = string.ascii_letters + string.digits
_B64 = _ALNUM + "+/"
_UPPER = string.ascii_uppercase + string.digits
_HEX = "0123456789abcdef"
_ORDER = (  # field order of a CloudTrail record as AWS writes it
    "eventVersion", "userIdentity", "eventTime", "eventSource", "eventName", "awsRegion",
    "sourceIPAddress", "userAgent", "errorCode", "errorMessage", "requestParameters",
    "responseElements", "additionalEventData", "requestID", "eventID", "readOnly", "resources",
    "eventType", "apiVersion", "managementEvent", "recipientAccountId", "serviceEventDetails",
    "sharedEventID", "vpcEndpointId", "eventCategory", "tlsDetails", "sessionCredentialFromConsole",
)
_USERS = ("alice", "bob", "carol.ops", "deploy-bot", "ci-runner", "dana.sec")
_ROLES = ("AdminRole", "ReadOnlyAuditor", "DevOpsDeploy", "lambda-exec-orders", "eks-node-role",
          "AWSReservedSSO_PowerUserAccess_4f1c2a9be0d3a7c5")
_INSTANCE_ROLE = "ec2-app-instance-role"
_ORG_ACCOUNTS = tuple(str(210987654321 + 7919 * i) for i in range(24))
"""The organisation's other accounts, that cross-account calls come from."""
_BUCKETS = ("prod-app-assets", "analytics-raw", "finance-reports", "backup-archive")
_AGENTS = (
    "aws-cli/2.15.30 Python/3.11.8 Linux/6.1.79-99.164.amzn2023.x86_64 exe/x86_64.amzn.2023 "
    "prompt/off command/{svc}",
    "Boto3/1.34.69 md/Botocore#1.34.69 ua/2.0 os/linux#5.10.213-201.855.amzn2.x86_64 "
    "md/arch#x86_64 lang/python#3.11.8 md/pyimpl#CPython cfg/retry-mode#legacy Botocore/1.34.69",
    "aws-sdk-go-v2/1.26.1 os/linux lang/go#1.22.2 md/GOOS#linux md/GOARCH#amd64 api/{svc}#1.53.1",
    "aws-sdk-java/2.25.16 Linux/5.10.214-202.855.amzn2.x86_64 OpenJDK_64-Bit_Server_VM/17.0.10+7 "
    "Java/17.0.10 vendor/Amazon.com_Inc. io/sync http/Apache cfg/retry-mode/legacy",
    "APN/1.0 HashiCorp/1.0 Terraform/1.7.5 (+https://www.terraform.io) terraform-provider-aws/"
    "5.44.0 (+https://registry.terraform.io/providers/hashicorp/aws) aws-sdk-go-v2/1.26.1 "
    "api/{svc}#1.151.1",
)
_BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/123.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:124.0) Gecko/20100101 Firefox/124.0",
)


def _utc(dt: datetime) -> datetime:
    """``dt`` in UTC; a naive datetime is taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _ts(dt: datetime) -> str:
    return _utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ")


def _java_date(dt: datetime) -> str:
    """Date style AWS uses inside some responseElements (``Jun 3, 2024, 9:15:02 AM``)."""
    hour = dt.hour % 12 or 12
    return f"{dt:%b} {dt.day}, {dt.year}, {hour}:{dt:%M:%S} {'AM' if dt.hour < 12 else 'PM'}"


def _uuid(rng: Rng) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _chars(rng: Rng, alphabet: str, n: int) -> str:
    return "".join(rng.choices(alphabet, k=n))


def _hexid(rng: Rng, prefix: str) -> str:
    """EC2-style resource ID such as ``i-0123456789abcdef0``."""
    return f"{prefix}-0{_chars(rng, _HEX, 16)}"


@lru_cache(maxsize=4096)
def _stable(prefix: str, *parts: str, n: int = 17) -> str:
    """IAM-style unique ID derived from a hash, so one user or role keeps one ID."""
    digest = hashlib.sha256(":".join(parts).encode()).digest()
    return prefix + "".join(_UPPER[b % 36] for b in digest[:n])


_FIRST_OCTETS = (3, 18, 34, 52, 54, 63, 81, 89, 104, 176, 185, 198, 203)


def _ipv4(rng: Rng) -> str:
    first = rng.choice(_FIRST_OCTETS)
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


@lru_cache(maxsize=4096)
def _home(who: str) -> bytes:
    """Where a principal usually calls from, as hash bytes: one /24 and one IPv6 /48."""
    return hashlib.sha256(b"home:" + who.encode()).digest()


def _home_of(ident: Record) -> str:
    """Whose addresses a caller's calls come from: its ARN, but an assumed role's session
    other than an instance's calls from the role's machines (SDK sessions are many)."""
    arn = ident["arn"]
    head, _, session = arn.rpartition("/")
    return head if ":assumed-role/" in arn and not session.startswith("i-") else arn


def _source_ip(rng: Rng, who: str) -> str:
    """The address of a call by ``who`` (:func:`_home_of`): about 31 calls in 32 come from
    one of its own few addresses (three in an IPv4 /24, two in an IPv6 /48: an office, a
    home, an instance, a NAT gateway), the others from an address never seen (travel, a
    Lambda or CI runner on AWS's ever-changing ranges).

    The random draws are those of a new address for every call, so the rest of a seeded
    sample is what it was when every call came from a new address. That made every row a
    new source IP and a new IP entity for the anomaly scorer, a worst case no
    organisation's trail looks like."""
    h = _home(who)
    if rng.random() < 0.08:
        groups = [rng.getrandbits(16) for _ in range(6)]
        if groups[0] < 2048:  # 1 in 32
            return "2001:db8:" + ":".join(f"{g:x}" for g in groups)
        return f"2001:db8:{h[4] << 8 | h[5]:x}::{h[6] << 8 | h[7]:x}:{1 + groups[5] % 2:x}"
    first, second, third, host = (rng.choice(_FIRST_OCTETS), rng.randint(0, 255),
                                  rng.randint(0, 255), rng.randint(1, 254))
    if second < 8:  # 1 in 32
        return f"{first}.{second}.{third}.{host}"
    first = _FIRST_OCTETS[h[0] % len(_FIRST_OCTETS)]
    return f"{first}.{h[1]}.{h[2]}.{1 + (h[3] + host % 3) % 254}"


def _tls(rng: Rng, host: str) -> dict[str, str]:
    v13 = rng.random() < 0.6
    return {"tlsVersion": "TLSv1.3" if v13 else "TLSv1.2",
            "cipherSuite": "TLS_AES_128_GCM_SHA256" if v13 else "ECDHE-RSA-AES128-GCM-SHA256",
            "clientProvidedHostHeader": host}


def _session(rng: Rng, when: datetime, issuer: dict[str, str], mfa: bool) -> Record:
    created = when - timedelta(seconds=rng.randint(30, 6 * 3600))
    return {"sessionIssuer": issuer, "webIdFederationData": {},
            "attributes": {"creationDate": _ts(created), "mfaAuthenticated": str(mfa).lower()}}


def _role_identity(rng: Rng, acct: str, when: datetime, role: str, session: str) -> Record:
    role_id = _stable("AROA", acct, role)
    issuer = {"type": "Role", "principalId": role_id, "arn": f"arn:aws:iam::{acct}:role/{role}",
              "accountId": acct, "userName": role}
    ctx = _session(rng, when, issuer, mfa=rng.random() < 0.3)
    if session.startswith("i-"):  # EC2 instance-profile credentials, delivered by IMDS
        ctx["ec2RoleDelivery"] = "2.0" if rng.random() < 0.85 else "1.0"
    return {"type": "AssumedRole", "principalId": f"{role_id}:{session}",
            "arn": f"arn:aws:sts::{acct}:assumed-role/{role}/{session}", "accountId": acct,
            "accessKeyId": _stable("ASIA", acct, role, session, _ts(when)[:13], n=16),
            "sessionContext": ctx}


def _user_identity(acct: str, user: str) -> Record:
    return {"type": "IAMUser", "principalId": _stable("AIDA", acct, user),
            "arn": f"arn:aws:iam::{acct}:user/{user}", "accountId": acct,
            "accessKeyId": _stable("AKIA", acct, user, n=16), "userName": user}


def _caller(rng: Rng, acct: str, when: datetime) -> tuple[Record, bool]:
    """A human or workload principal: (userIdentity, is it a console session)."""
    roll = rng.random()
    if roll < 0.03:
        return {"type": "Root", "principalId": acct, "arn": f"arn:aws:iam::{acct}:root",
                "accountId": acct, "accessKeyId": _stable("ASIA", acct, "root", n=16),
                "sessionContext": _session(rng, when, {}, mfa=rng.random() < 0.8)}, True
    if roll < 0.58:
        if rng.random() < 0.25:
            return _role_identity(rng, acct, when, _INSTANCE_ROLE, _hexid(rng, "i")), False
        role = rng.choice(_ROLES)
        session = (rng.choice(_USERS) if rng.random() < 0.6
                   else f"botocore-session-{rng.randint(10**9, 2 * 10**9)}")
        return _role_identity(rng, acct, when, role, session), role.startswith("AWSReserved")
    user = rng.choice(_USERS)
    ident = _user_identity(acct, user)
    if rng.random() < 0.2:  # console session: temporary key plus session attributes
        ident["accessKeyId"] = _stable("ASIA", acct, user, _ts(when)[:13], n=16)
        ident["sessionContext"] = _session(rng, when, {}, mfa=rng.random() < 0.7)
        return ident, True
    return ident, False


def _called(rng: Rng, acct: str, when: datetime, svc: str, host: str) -> Record:
    """Caller fields of an API call to ``svc``: identity, source IP, user agent, TLS."""
    ident, console = _caller(rng, acct, when)
    agent = (rng.choice(("AWS Internal", f"{svc}.amazonaws.com", *_BROWSERS)) if console
             else rng.choice(_AGENTS).replace("{svc}", svc))
    fields = {"userIdentity": ident, "sourceIPAddress": _source_ip(rng, _home_of(ident)),
              "userAgent": agent, "tlsDetails": _tls(rng, host)}
    if console:
        fields["sessionCredentialFromConsole"] = "true"
    return fields


# --- scenarios: each returns the event-specific fields of one record ---------------------------


def _console_login(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    ok = rng.random() < 0.8
    if rng.random() < 0.1:
        ident: Record = {"type": "Root", "principalId": acct, "arn": f"arn:aws:iam::{acct}:root",
                         "accountId": acct, "accessKeyId": ""}
    else:
        ident = _user_identity(acct, rng.choice(_USERS))
        del ident["accessKeyId"]
    state = f"hashArgsFromTB_{region}_{_chars(rng, _HEX, 16)}"
    fields: Record = {
        "userIdentity": ident, "eventSource": "signin.amazonaws.com", "eventName": "ConsoleLogin",
        "sourceIPAddress": _source_ip(rng, _home_of(ident)),
        "userAgent": rng.choice(_BROWSERS),
        "requestParameters": None,
        "responseElements": {"ConsoleLogin": "Success" if ok else "Failure"},
        "additionalEventData": {
            "LoginTo": f"https://console.aws.amazon.com/console/home?state={state}&isauthcode=true",
            "MobileVersion": "No", "MFAUsed": "Yes" if ok and rng.random() < 0.7 else "No"},
        "readOnly": False, "eventType": "AwsConsoleSignIn",
        "tlsDetails": _tls(rng, "signin.aws.amazon.com"),
    }
    if not ok:
        fields["errorMessage"] = "Failed authentication"
    return fields


def _assume_role(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    role = _INSTANCE_ROLE if rng.random() < 0.5 else rng.choice(_ROLES)
    session = _hexid(rng, "i") if role == _INSTANCE_ROLE else rng.choice(_USERS)
    role_arn = f"arn:aws:iam::{acct}:role/{role}"
    fields: Record = {
        "eventSource": "sts.amazonaws.com", "eventName": "AssumeRole", "readOnly": True,
        "requestParameters": {"roleArn": role_arn, "roleSessionName": session,
                              "durationSeconds": 3600},
        "responseElements": {
            "credentials": {"accessKeyId": _stable("ASIA", acct, role, session, _ts(when), n=16),
                            "sessionToken": "IQoJb3JpZ2luX2Vj" + _chars(rng, _B64, 180),
                            "expiration": _java_date(when + timedelta(hours=1))},
            "assumedRoleUser": {"assumedRoleId": f"{_stable('AROA', acct, role)}:{session}",
                                "arn": f"arn:aws:sts::{acct}:assumed-role/{role}/{session}"}},
        "resources": [{"accountId": acct, "type": "AWS::IAM::Role", "ARN": role_arn}],
    }
    if role == _INSTANCE_ROLE or rng.random() < 0.3:
        svc = ("ec2.amazonaws.com" if role == _INSTANCE_ROLE
               else rng.choice(("lambda.amazonaws.com", "ecs-tasks.amazonaws.com")))
        fields.update(userIdentity={"type": "AWSService", "invokedBy": svc},
                      sourceIPAddress=svc, userAgent=svc)
        return fields
    fields.update(_called(rng, acct, when, "sts", f"sts.{region}.amazonaws.com"))
    if rng.random() < 0.3:  # cross-account: both accounts' copies share one sharedEventID
        # From one of the organisation's other accounts (a fixed few, as in a real
        # organisation; a new account per call would make every such call a new principal).
        other = _ORG_ACCOUNTS[rng.randint(10**11, 10**12 - 1) % len(_ORG_ACCOUNTS)]
        fields["userIdentity"] = _role_identity(rng, other, when, "OrgAutomation", "pipeline")
        fields["sharedEventID"] = _uuid(rng)
    return fields


def _s3_object(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    put = rng.random() < 0.35
    bucket = rng.choice(_BUCKETS)
    ext = rng.choice(("json", "csv", "parquet", "pdf"))
    folder = rng.choice(("data", "exports", "uploads"))
    key = f"{folder}/{when:%Y/%m/%d}/{_chars(rng, _HEX, 12)}.{ext}"
    host = f"{bucket}.s3.{region}.amazonaws.com"
    size = rng.randint(200, 5_000_000)
    sse = {"x-amz-server-side-encryption": "AES256"}
    fields = _called(rng, acct, when, "s3", host)
    fields.update({
        "eventSource": "s3.amazonaws.com", "eventName": "PutObject" if put else "GetObject",
        "readOnly": not put, "requestParameters": {"bucketName": bucket, "Host": host, "key": key,
                                                   **(sse if put else {})},
        "responseElements": sse if put else None,
        "additionalEventData": {"SignatureVersion": "SigV4",
                                "CipherSuite": "TLS_AES_128_GCM_SHA256",
                                "bytesTransferredIn": size if put else 0,
                                "AuthenticationMethod": "AuthHeader",
                                "x-amz-id-2": _chars(rng, _B64, 76),
                                "bytesTransferredOut": 0 if put else size},
        "requestID": _chars(rng, _UPPER, 16),
        "resources": [{"type": "AWS::S3::Object", "ARN": f"arn:aws:s3:::{bucket}/{key}"},
                      {"accountId": acct, "type": "AWS::S3::Bucket",
                       "ARN": f"arn:aws:s3:::{bucket}"}],
        "managementEvent": False, "eventCategory": "Data",
    })
    if rng.random() < 0.2:  # through a gateway endpoint: private source address
        fields["vpcEndpointId"] = _hexid(rng, "vpce")
        fields["sourceIPAddress"] = "10." + ".".join(str(rng.randint(1, 254)) for _ in range(3))
    return fields


def _run_instances(rng: Rng, acct: str, region: str, when: datetime) -> tuple[Record, Record]:
    itype, ami = rng.choice(("t3.micro", "m6i.large", "c7g.xlarge")), _hexid(rng, "ami")
    subnet, ip = _hexid(rng, "subnet"), f"10.0.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    req = {"instancesSet": {"items": [{"imageId": ami, "minCount": 1, "maxCount": 1}]},
           "instanceType": itype, "blockDeviceMapping": {}, "monitoring": {"enabled": False},
           "disableApiTermination": False, "disableApiStop": False, "clientToken": _uuid(rng),
           "tagSpecificationSet": {"items": [{"resourceType": "instance", "tags": [
               {"key": "Name", "value": f"app-{_chars(rng, _HEX, 6)}"}]}]}}
    instance = {
        "instanceId": _hexid(rng, "i"), "imageId": ami,
        "instanceState": {"code": 0, "name": "pending"},
        "privateDnsName": f"ip-{ip.replace('.', '-')}.{region}.compute.internal",
        "amiLaunchIndex": 0, "productCodes": {}, "instanceType": itype,
        "launchTime": int(when.timestamp() * 1000),
        "placement": {"availabilityZone": region + rng.choice("abc"), "tenancy": "default"},
        "monitoring": {"state": "disabled"}, "subnetId": subnet, "vpcId": _hexid(rng, "vpc"),
        "privateIpAddress": ip, "stateReason": {"code": "pending", "message": "pending"},
        "architecture": "x86_64", "rootDeviceType": "ebs", "rootDeviceName": "/dev/xvda",
        "virtualizationType": "hvm", "sourceDestCheck": True, "ebsOptimized": False,
        "networkInterfaceSet": {"items": [{"networkInterfaceId": _hexid(rng, "eni"),
                                           "subnetId": subnet, "status": "in-use"}]},
        "metadataOptions": {"state": "pending", "httpTokens": "required",
                            "httpPutResponseHopLimit": 2, "httpEndpoint": "enabled"}}
    resp = {"requestId": _uuid(rng), "reservationId": _hexid(rng, "r"), "ownerId": acct,
            "groupSet": {}, "instancesSet": {"items": [instance]}}
    return req, resp


def _ec2(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    roll = rng.random()
    resp: Record | None = None
    if roll < 0.6:
        name, req = "DescribeInstances", {"instancesSet": {}, "filterSet": {"items": [
            {"name": "instance-state-name", "valueSet": {"items": [{"value": "running"}]}}]}}
    elif roll < 0.8:
        name, group = "AuthorizeSecurityGroupIngress", _hexid(rng, "sg")
        port = rng.choice((22, 443, 3389, 5432, 8080))
        cidr = rng.choice(("0.0.0.0/0", "10.0.0.0/8", f"{_ipv4(rng)}/32"))
        req = {"groupId": group, "ipPermissions": {"items": [{
            "ipProtocol": "tcp", "fromPort": port, "toPort": port, "groups": {},
            "ipRanges": {"items": [{"cidrIp": cidr}]}, "ipv6Ranges": {}, "prefixListIds": {}}]}}
        resp = {"requestId": _uuid(rng), "_return": True, "securityGroupRuleSet": {"items": [{
            "groupOwnerId": acct, "groupId": group, "securityGroupRuleId": _hexid(rng, "sgr"),
            "isEgress": False, "ipProtocol": "tcp", "fromPort": port, "toPort": port,
            "cidrIpv4": cidr}]}}
    else:
        name = "RunInstances"
        req, resp = _run_instances(rng, acct, region, when)
    fields = _called(rng, acct, when, "ec2", f"ec2.{region}.amazonaws.com")
    fields.update(eventSource="ec2.amazonaws.com", eventName=name, requestParameters=req,
                  responseElements=resp, readOnly=name == "DescribeInstances")
    return fields


def _iam(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    name = rng.choice(("CreateUser", "AttachUserPolicy", "CreateAccessKey", "ListBuckets"))
    target = f"svc-{_chars(rng, string.ascii_lowercase, 6)}"
    if name == "ListBuckets":
        host = f"s3.{region}.amazonaws.com"
        fields = _called(rng, acct, when, "s3", host)
        fields.update(eventSource="s3.amazonaws.com", requestParameters={"Host": host},
                      responseElements=None, readOnly=True, requestID=_chars(rng, _UPPER, 16),
                      additionalEventData={"SignatureVersion": "SigV4",
                                           "AuthenticationMethod": "AuthHeader",
                                           "x-amz-id-2": _chars(rng, _B64, 76)})
    else:
        fields = _called(rng, acct, when, "iam", "iam.amazonaws.com")
        req: Record = {"userName": target}
        resp: Record | None = None
        if name == "CreateUser":
            req["path"] = "/"
            resp = {"user": {"path": "/", "userName": target,
                             "userId": _stable("AIDA", acct, target),
                             "arn": f"arn:aws:iam::{acct}:user/{target}",
                             "createDate": _java_date(when)}}
        elif name == "AttachUserPolicy":
            policy = rng.choice(("AdministratorAccess", "ReadOnlyAccess", "AmazonS3FullAccess"))
            req["policyArn"] = f"arn:aws:iam::aws:policy/{policy}"
        else:
            resp = {"accessKey": {"userName": target, "status": "Active",
                                  "accessKeyId": _stable("AKIA", acct, target, n=16),
                                  "createDate": _java_date(when)}}
        fields.update(eventSource="iam.amazonaws.com", requestParameters=req,
                      responseElements=resp, readOnly=False)
    fields["eventName"] = name
    return fields


def _dynamodb(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    table, data = rng.choice(("orders", "sessions", "inventory")), rng.random() < 0.6
    req: Record = {"tableName": table}
    if data:
        req.update(key={"pk": f"ORDER#{rng.randint(1, 10**6)}"}, consistentRead=False)
    fields = _called(rng, acct, when, "dynamodb", f"dynamodb.{region}.amazonaws.com")
    fields.update({
        "eventSource": "dynamodb.amazonaws.com",
        "eventName": "GetItem" if data else "DescribeTable",
        "requestParameters": req, "responseElements": None, "readOnly": True,
        "resources": [{"accountId": acct, "type": "AWS::DynamoDB::Table",
                       "ARN": f"arn:aws:dynamodb:{region}:{acct}:table/{table}"}],
        "apiVersion": "2012-08-10", "managementEvent": not data,
        "eventCategory": "Data" if data else "Management"})
    return fields


def _kms(rng: Rng, acct: str, region: str, when: datetime) -> Record:
    key_id = _uuid(rng)
    resources = [{"accountId": acct, "type": "AWS::KMS::Key",
                  "ARN": f"arn:aws:kms:{region}:{acct}:key/{key_id}"}]
    common = {"eventSource": "kms.amazonaws.com", "responseElements": None, "resources": resources}
    if rng.random() < 0.15:  # non-API event that AWS itself performed
        return {**common, "userIdentity": {"accountId": acct, "invokedBy": "kms.amazonaws.com"},
                "eventName": "RotateKey", "sourceIPAddress": "kms.amazonaws.com",
                "userAgent": "kms.amazonaws.com", "requestParameters": None, "readOnly": False,
                "eventType": "AwsServiceEvent", "serviceEventDetails": {"keyId": key_id}}
    ident, _ = _caller(rng, acct, when)
    ident["invokedBy"] = "s3.amazonaws.com"  # S3 SSE-KMS on the caller's behalf
    context = {"aws:s3:arn": f"arn:aws:s3:::{rng.choice(_BUCKETS)}"}
    return {**common, "userIdentity": ident, "eventName": "GenerateDataKey",
            "sourceIPAddress": "s3.amazonaws.com", "userAgent": "s3.amazonaws.com",
            "requestParameters": {"encryptionContext": context, "keyId": resources[0]["ARN"],
                                  "keySpec": "AES_256"}, "readOnly": True}


_Scenario = Callable[[Rng, str, str, datetime], Record]
_SCENARIOS: tuple[_Scenario, ...] = (_console_login, _assume_role, _s3_object, _ec2, _iam,
                                     _dynamodb, _kms)
_WEIGHTS = (6, 14, 28, 20, 12, 8, 12)


def _fail(fields: Record) -> None:
    """Turn an API call into an authorization failure, as AWS records it."""
    ident, name = fields["userIdentity"], fields["eventName"]
    svc = fields["eventSource"].split(".")[0]
    if svc == "ec2":
        fields["errorCode"] = "Client.UnauthorizedOperation"
        fields["errorMessage"] = ("You are not authorized to perform this operation. User: "
                                  f"{ident['arn']} is not authorized to perform: ec2:{name} "
                                  "with an explicit deny in a service control policy")
    else:
        resource = (fields.get("resources") or [{"ARN": "*"}])[0]["ARN"]
        fields["errorCode"] = "AccessDenied"
        fields["errorMessage"] = (f"User: {ident['arn']} is not authorized to perform: {svc}:{name}"
                                  f" on resource: {resource} because no identity-based policy "
                                  f"allows the {svc}:{name} action")
    fields["responseElements"] = None


def cloudtrail_event(rng: Rng, *, account: str, region: str, when: datetime) -> Record:
    """One realistic CloudTrail record (eventVersion 1.08/1.09) for ``account``/``region``."""
    fields = rng.choices(_SCENARIOS, _WEIGHTS)[0](rng, account, region, when)
    fields.setdefault("eventType", "AwsApiCall")
    if (fields["eventType"] == "AwsApiCall" and rng.random() < 0.07
            and fields["userIdentity"].get("type") in ("IAMUser", "AssumedRole")):
        _fail(fields)
    fields.update(eventVersion=rng.choice(("1.08", "1.09")), eventTime=_ts(when),
                  awsRegion=region, eventID=_uuid(rng), recipientAccountId=account)
    fields.setdefault("managementEvent", True)
    fields.setdefault("eventCategory", "Management")
    if fields["eventType"] != "AwsConsoleSignIn":
        fields.setdefault("requestID", _uuid(rng))
    return {k: fields[k] for k in _ORDER if k in fields}


def cloudtrail_key(account: str, region: str, when: datetime, rng: Rng) -> str:
    """S3 key of a CloudTrail log file delivered at ``when``."""
    when = _utc(when)
    return (f"AWSLogs/{account}/CloudTrail/{region}/{when:%Y/%m/%d}/{account}_CloudTrail_"
            f"{region}_{when:%Y%m%dT%H%M}Z_{_chars(rng, _ALNUM, 16)}.json.gz")


def cloudtrail_digest_key(account: str, region: str, when: datetime, rng: Rng) -> str:
    """S3 key of a digest file whose period ends at ``when`` (``rng`` unused: no random part)."""
    del rng
    when = _utc(when)
    return (f"AWSLogs/{account}/CloudTrail-Digest/{region}/{when:%Y/%m/%d}/{account}_CloudTrail-"
            f"Digest_{region}_{TRAIL_NAME}_{region}_{when:%Y%m%dT%H%M%S}Z.json.gz")


def _gzip(data: bytes) -> bytes:
    return _gzip_impl.compress(data, _GZIP_LEVEL, mtime=0)


def cloudtrail_object(records: list[Record]) -> bytes:
    """Gzip of ``{"Records":[...]}`` as CloudTrail writes it: compact, single-line JSON."""
    body = json.dumps({"Records": records}, separators=(",", ":"), ensure_ascii=False)
    return _gzip(body.encode("utf-8"))


# --- seeding a bucket ------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededObject:
    """One CloudTrail log file written to the bucket."""

    key: str
    etag: str
    records: int
    event_ids: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    """What :func:`seed_cloudtrail` wrote; digests are listed apart since they hold no records."""

    bucket: str
    objects: tuple[SeededObject, ...]
    digests: tuple[str, ...]

    @property
    def record_count(self) -> int:
        """Number of CloudTrail records over all log files."""
        return sum(o.records for o in self.objects)

    @property
    def event_ids(self) -> set[str]:
        """Every seeded ``eventID``."""
        return {e for o in self.objects for e in o.event_ids}


_Planned = tuple[str, bytes, list[Record]]  # key, gzip body, records


def _plan_object(seed: int, index: int, account: str, region: str, delivered: datetime,
                 records_per_object: tuple[int, int]) -> _Planned:
    """Log file ``index``; it has its own RNG, so thread scheduling cannot change it."""
    rng = random.Random(f"s3sentinel-cloudtrail:{seed}:{index}")
    window = int((DELIVERY_INTERVAL + timedelta(minutes=2)).total_seconds())
    records = [cloudtrail_event(rng, account=account, region=region,
                                when=delivered - timedelta(seconds=rng.randint(20, window)))
               for _ in range(rng.randint(*records_per_object))]
    return cloudtrail_key(account, region, delivered, rng), cloudtrail_object(records), records


def _digest(bucket: str, account: str, region: str, end: datetime,
            files: list[_Planned]) -> tuple[str, bytes]:
    """(key, gzip body) of a trail's first digest file (no previous digest), listing ``files``."""
    key = cloudtrail_digest_key(account, region, end, random.Random(0))
    times = sorted(r["eventTime"] for _, _, records in files for r in records) or [None]
    doc: Record = {
        "awsAccountId": account, "digestStartTime": _ts(end - timedelta(hours=1)),
        "digestEndTime": _ts(end), "digestS3Bucket": bucket, "digestS3Object": key,
        "digestPublicKeyFingerprint": hashlib.sha256(account.encode()).hexdigest()[:32],
        "digestSignatureAlgorithm": "SHA256withRSA", "newestEventTime": times[-1],
        "oldestEventTime": times[0], "previousDigestS3Bucket": None,
        "previousDigestS3Object": None, "previousDigestHashValue": None,
        "previousDigestHashAlgorithm": None, "previousDigestSignature": None,
        "logFiles": [{"s3Bucket": bucket, "s3Object": k, "hashValue": hashlib.sha256(b).hexdigest(),
                      "hashAlgorithm": "SHA-256"} for k, b, _ in files],
    }
    return key, _gzip(json.dumps(doc, separators=(",", ":")).encode())


def _ensure_bucket(s3: Any, bucket: str) -> None:
    try:
        s3.head_bucket(Bucket=bucket)
        return
    except Exception:  # noqa: BLE001 - botocore ClientError (404): create it below
        pass
    region = s3.meta.region_name
    if region and region != "us-east-1":
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    else:
        s3.create_bucket(Bucket=bucket)


def _plan(i: int, pairs: Sequence[tuple[str, str]], origin: datetime, seed: int,
          records_per_object: tuple[int, int]) -> tuple[tuple[str, str], datetime, _Planned]:
    """Log file ``i`` of a trail seeded from ``origin``: its account and region, delivery
    time and plan."""
    account, region = pairs[i % len(pairs)]
    jitter = timedelta(seconds=random.Random(f"s3sentinel-jitter:{seed}:{i}").randint(0, 50))
    delivered = origin + (i // len(pairs)) * DELIVERY_INTERVAL + jitter
    return (account, region), delivered, _plan_object(seed, i, account, region, delivered,
                                                      records_per_object)


def cloudtrail_objects(objects: int, records_per_object: tuple[int, int] = (20, 200), *,
                       accounts: Sequence[str] = ("111122223333", "444455556666",
                                                  "777788889999"),
                       regions: Sequence[str] = ("us-east-1", "eu-west-1", "ap-southeast-2"),
                       start: datetime | None = None, seed: int = 7) -> list[list[Record]]:
    """The records of the log files :func:`seed_cloudtrail` writes with the same arguments,
    one list per file, without S3 (for benches that run the flow's steps in process)."""
    origin = _utc(start or DEFAULT_START)
    pairs = [(a, r) for a in accounts for r in regions]
    return [_plan(i, pairs, origin, seed, records_per_object)[2][2] for i in range(objects)]


def seed_cloudtrail(s3: Any, bucket: str, *, objects: int,
                    records_per_object: tuple[int, int] = (20, 200),
                    accounts: Sequence[str] = ("111122223333", "444455556666", "777788889999"),
                    regions: Sequence[str] = ("us-east-1", "eu-west-1", "ap-southeast-2"),
                    start: datetime | None = None, seed: int = 7, digests: bool = True,
                    threads: int = 8) -> Manifest:
    """Write ``objects`` CloudTrail log files (plus digests) to ``bucket`` via boto3 client ``s3``.

    Files go round-robin over ``accounts`` x ``regions``; each pair gets one delivery every
    :data:`DELIVERY_INTERVAL` from ``start`` (default :data:`DEFAULT_START`). With ``digests``,
    one digest file per pair lists that pair's files. Keys and bodies depend on ``seed`` only;
    building and uploading run on ``threads`` workers.
    """
    lo, hi = records_per_object
    if objects < 0 or not accounts or not regions or not 0 <= lo <= hi:
        raise ValueError("need objects >= 0, accounts, regions and 0 <= min <= max records")
    _ensure_bucket(s3, bucket)
    origin = _utc(start or DEFAULT_START)
    pairs = [(a, r) for a in accounts for r in regions]

    def build_and_put(i: int) -> tuple[tuple[str, str], datetime, _Planned, str]:
        pair, delivered, planned = _plan(i, pairs, origin, seed, (lo, hi))
        etag = s3.put_object(Bucket=bucket, Key=planned[0], Body=planned[1])["ETag"].strip('"')
        return pair, delivered, planned, etag

    digest_keys: list[str] = []
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        done = list(pool.map(build_and_put, range(objects)))
        if digests and done:
            groups: dict[tuple[str, str], list[_Planned]] = {}
            last: dict[tuple[str, str], datetime] = {}
            for pair, delivered, planned, _ in done:
                groups.setdefault(pair, []).append(planned)
                last[pair] = delivered
            made = [_digest(bucket, a, r, last[(a, r)] + timedelta(minutes=7), files)
                    for (a, r), files in groups.items()]
            list(pool.map(lambda d: s3.put_object(
                Bucket=bucket, Key=d[0], Body=d[1],
                Metadata={"signature": hashlib.sha256(d[1]).hexdigest(),
                          "signature-algorithm": "SHA256withRSA"}), made))
            digest_keys = [key for key, _ in made]
    seeded = tuple(SeededObject(key, etag, len(records), tuple(r["eventID"] for r in records))
                   for _, _, (key, _, records), etag in done)
    return Manifest(bucket, seeded, tuple(digest_keys))
