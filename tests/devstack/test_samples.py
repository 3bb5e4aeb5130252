"""Tests for :mod:`devstack.samples`: CloudTrail records, keys, objects and bucket seeding."""

from __future__ import annotations

import gzip
import json
import random
import re
import tomllib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from devstack.samples import (
    DEFAULT_START,
    Manifest,
    cloudtrail_digest_key,
    cloudtrail_event,
    cloudtrail_key,
    cloudtrail_object,
    cloudtrail_objects,
    seed_cloudtrail,
)

TABLE_TOML = Path(__file__).resolve().parents[2] / "operators" / "tables" / "AWSCloudTrail.toml"
WHEN = datetime(2024, 6, 3, 9, 17, 42, tzinfo=UTC)
ACCOUNT, REGION = "111122223333", "eu-west-1"
BUCKET = "samples-ct-logs"
_MISSING = object()

KEY_RE = re.compile(
    r"^AWSLogs/(?P<acct>\d{12})/CloudTrail/(?P<region>[a-z]{2}(-[a-z]+)+-\d)/"
    r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P=acct)_CloudTrail_(?P=region)_"
    r"(?P=y)(?P=m)(?P=d)T\d{4}Z_[A-Za-z0-9]{16}\.json\.gz$"
)
DIGEST_RE = re.compile(
    r"^AWSLogs/(?P<acct>\d{12})/CloudTrail-Digest/(?P<region>[a-z]{2}(-[a-z]+)+-\d)/"
    r"(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P=acct)_CloudTrail-Digest_(?P=region)_"
    r"[\w.-]+_(?P=region)_(?P=y)(?P=m)(?P=d)T\d{6}Z\.json\.gz$"
)


def _events(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [cloudtrail_event(rng, account=ACCOUNT, region=REGION, when=WHEN + timedelta(seconds=i))
            for i in range(n)]


def _resolve(record: Any, path: str) -> Any:
    """Follow a dotted source path (numeric parts index lists); ``_MISSING`` when absent."""
    node = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


@pytest.fixture(scope="module")
def table() -> dict[str, Any]:
    with TABLE_TOML.open("rb") as fh:
        return tomllib.load(fh)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return _events(3000)


def test_event_is_deterministic_for_a_seed() -> None:
    assert _events(200, seed=5) == _events(200, seed=5)
    assert _events(50, seed=5) != _events(50, seed=6)


def test_table_mapping_is_well_formed(table: dict[str, Any]) -> None:
    assert (table["table"], table["kind"]) == ("AWSCloudTrail", "standard")
    assert (table["stream"], table["output_stream"]) == ("Custom-AWSCloudTrail",
                                                         "Microsoft-AWSCloudTrail")
    names = [c["name"] for c in table["columns"] if not c["name"].endswith("_CF")]
    assert len(names) == len(set(names))
    # The reference's columns in its order; the connector's own _CF columns come last.
    assert names == sorted(names, key=str.lower), "columns follow the reference's order"
    allowed = {"string", "int", "long", "real", "bool", "datetime", "dynamic"}
    assert {c["type"] for c in table["columns"]} <= allowed
    assert {c["name"] for c in table["columns"] if c.get("required")} == {
        "TimeGenerated", "EventName", "EventSource"}


def test_every_source_is_produced_and_required_ones_always(
        table: dict[str, Any], events: list[dict[str, Any]]) -> None:
    seen = Counter()
    for event in events:
        for col in table["columns"]:
            value = _resolve(event, col["source"])
            if value is not _MISSING and value is not None:
                seen[col["name"]] += 1
            elif col.get("required"):
                pytest.fail(f"{col['name']} ({col['source']}) missing in {event['eventID']}")
    never = [c["name"] for c in table["columns"]
             if not seen[c["name"]] and c["source"] != "*"]  # "*": fields no column reads
    assert not never, f"sources never produced: {never}"


def test_event_shapes_match_aws(events: list[dict[str, Any]]) -> None:
    uuid_re = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert len({e["eventID"] for e in events}) == len(events)
    names = Counter(e["eventName"] for e in events)
    for name in ("ConsoleLogin", "AssumeRole", "GetObject", "PutObject", "DescribeInstances",
                 "RunInstances", "CreateUser", "AttachUserPolicy", "CreateAccessKey",
                 "ListBuckets", "AuthorizeSecurityGroupIngress"):
        assert names[name] > 0, name
    kinds = Counter(e["userIdentity"].get("type") for e in events)
    assert {"IAMUser", "AssumedRole", "AWSService", "Root"} <= set(kinds)
    for e in events:
        assert e["eventVersion"] in ("1.08", "1.09")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", e["eventTime"])
        assert uuid_re.match(e["eventID"])
        assert e["recipientAccountId"] == ACCOUNT and e["awsRegion"] == REGION
        assert isinstance(e["readOnly"], bool) and isinstance(e["managementEvent"], bool)
        mfa = _resolve(e, "userIdentity.sessionContext.attributes.mfaAuthenticated")
        assert mfa is _MISSING or mfa in ("true", "false")
        if e["eventName"] == "ConsoleLogin":
            assert e["additionalEventData"]["MFAUsed"] in ("Yes", "No")
            assert e["eventType"] == "AwsConsoleSignIn"
        if e["eventCategory"] == "Data":
            assert e["managementEvent"] is False and e["resources"]
    assert any(":" in e["sourceIPAddress"] for e in events), "some IPv6 sources"
    assert any(e["sourceIPAddress"].endswith(".amazonaws.com") for e in events)
    assert any(e.get("errorCode") == "AccessDenied" for e in events)
    mean = sum(len(json.dumps(e, separators=(",", ":"))) for e in events) / len(events)
    assert 1200 <= mean <= 2000, mean


def test_key_layouts() -> None:
    rng = random.Random(3)
    key = cloudtrail_key(ACCOUNT, REGION, WHEN, rng)
    assert KEY_RE.match(key), key
    assert key.startswith(f"AWSLogs/{ACCOUNT}/CloudTrail/{REGION}/2024/06/03/")
    assert "_20240603T0917Z_" in key
    assert cloudtrail_key(ACCOUNT, REGION, WHEN, random.Random(3)) == key
    digest = cloudtrail_digest_key(ACCOUNT, REGION, WHEN, rng)
    assert DIGEST_RE.match(digest), digest
    assert digest.endswith("_20240603T091742Z.json.gz") and not KEY_RE.match(digest)


def test_object_is_gzip_of_records_envelope() -> None:
    records = _events(25)
    body = cloudtrail_object(records)
    assert body[:2] == b"\x1f\x8b"
    text = gzip.decompress(body).decode("utf-8")
    assert "\n" not in text and text.startswith('{"Records":[{"eventVersion":')
    assert json.loads(text) == {"Records": records}
    assert cloudtrail_object(records) == body, "byte-identical, so ETags are stable"


@pytest.fixture(scope="module")
def s3() -> Iterator[Any]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield boto3.client(
            "s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
            aws_access_key_id="testing", aws_secret_access_key="testing",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          max_pool_connections=16))
    finally:
        server.stop()


def _list_keys(s3: Any, bucket: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
    return keys


def test_seed_cloudtrail_matches_bucket(s3: Any) -> None:
    manifest = seed_cloudtrail(s3, BUCKET, objects=24, records_per_object=(5, 40), seed=3)
    assert isinstance(manifest, Manifest) and manifest.bucket == BUCKET
    assert len(manifest.objects) == 24 and 0 < len(manifest.digests) <= 9
    listed = _list_keys(s3, BUCKET)
    assert set(listed) == {o.key for o in manifest.objects} | set(manifest.digests)
    assert all(KEY_RE.match(o.key) for o in manifest.objects)
    assert all(DIGEST_RE.match(k) for k in manifest.digests)
    assert len({(KEY_RE.match(o.key)["acct"], KEY_RE.match(o.key)["region"])
                for o in manifest.objects}) == 9, "spread over 3 accounts x 3 regions"
    seen_ids: set[str] = set()
    for obj in manifest.objects:
        assert listed[obj.key] == obj.etag
        body = s3.get_object(Bucket=BUCKET, Key=obj.key)["Body"].read()
        records = json.loads(gzip.decompress(body))["Records"]
        assert len(records) == obj.records and 5 <= obj.records <= 40
        assert tuple(r["eventID"] for r in records) == obj.event_ids
        match = KEY_RE.match(obj.key)
        assert {r["recipientAccountId"] for r in records} == {match["acct"]}
        stamp = datetime.strptime(obj.key.rsplit("_", 2)[1], "%Y%m%dT%H%MZ")
        for r in records:  # events precede their delivery by at most one interval and a bit
            age = stamp.replace(tzinfo=UTC) - datetime.fromisoformat(r["eventTime"])
            assert timedelta(minutes=-1) <= age <= timedelta(minutes=8)
        seen_ids.update(obj.event_ids)
    assert manifest.event_ids == seen_ids and manifest.record_count == len(seen_ids)
    digest = json.loads(gzip.decompress(
        s3.get_object(Bucket=BUCKET, Key=manifest.digests[0])["Body"].read()))
    assert "Records" not in digest and digest["logFiles"]
    assert {f["s3Object"] for f in digest["logFiles"]} <= set(listed)


def test_seed_is_reproducible_and_digests_optional(s3: Any) -> None:
    start = DEFAULT_START + timedelta(days=1)
    first = seed_cloudtrail(s3, "samples-ct-a", objects=6, records_per_object=(3, 8), start=start,
                            seed=9, digests=False, threads=3)
    again = seed_cloudtrail(s3, "samples-ct-b", objects=6, records_per_object=(3, 8), start=start,
                            seed=9, digests=False, threads=1)
    assert first.digests == ()
    assert set(_list_keys(s3, "samples-ct-a")) == {o.key for o in first.objects}
    assert first.objects == again.objects
    assert all("/2024/06/04/" in o.key for o in first.objects)
    # The same records without S3, for benches that run the flow's steps in process:
    planned = cloudtrail_objects(6, (3, 8), start=start, seed=9)
    assert [tuple(r["eventID"] for r in recs) for recs in planned] == [
        o.event_ids for o in first.objects]
