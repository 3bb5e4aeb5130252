"""Hostile input end to end: no single input stops ingestion.

The real flow (``python -m bytewax.run``, two workers) reads buckets in moto where poison
inputs land *before* ordinary objects, in listing and in SQS mode, and ships to the
emulator. Each case of issue 11's data plane is here:

1. SQS messages whose object key is a number, null or a list (S3, SNS and EventBridge forms,
   for our bucket and another one);
2. a CloudTrail object of one record nested 1,000 arrays deep;
3. a CloudTrail object holding a 1.6 MB record of a long nested list (over
   ``max_record_bytes``) between ordinary records, and a 300 KB one (under it);
4. a 600-byte gzip object of 300,000 bad lines;
5. a GuardDuty finding with a fractional severity.

The flow must end by itself, deliver every ordinary record exactly once, and hold each poison
input in the dead-letter store with its reason.
"""

from __future__ import annotations

import collections
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from connectors.deadletter import read_entries
from devstack.samples import cloudtrail_object, seed_cloudtrail
from devstack.stack import LocalStack
from tests.conftest import run_flow

TRAIL = "Custom-AWSCloudTrail"
APP = "Custom-AppEvents_CL"
GUARDDUTY = "Custom-AWSGuardDuty"


def _event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"eventVersion": "1.08", "eventTime": "2026-11-01T10:00:00Z",
            "eventSource": "s3.amazonaws.com", "eventName": "GetObject",
            "awsRegion": "us-east-1", "eventID": event_id, "recipientAccountId": "111122223333",
            **fields}


def _listing(n: int) -> dict[str, Any]:
    """requestParameters with a long list of objects (as DescribeInstances answers have)."""
    return {"filterSet": {"items": [{"name": f"tag:Name{i}", "valueSet": {"items": [
        {"value": f"v{i}"}]}} for i in range(n)]}}


def _finding(severity: float) -> dict[str, Any]:
    return {"schemaVersion": "2.0", "accountId": "111122223333", "region": "us-east-1",
            "partition": "aws", "id": f"finding-{severity}", "type": "Recon:EC2/PortProbeUnprotectedPort",
            "arn": "arn:aws:guardduty:us-east-1:111122223333:detector/d/finding/f",
            "resource": {"resourceType": "Instance"}, "service": {"count": 1},
            "severity": severity, "createdAt": "2026-11-01T10:00:00.000Z",
            "updatedAt": "2026-11-01T10:05:00.000Z", "title": "t", "description": "d"}


def _config(path: Path, buckets: dict[str, str], queues: dict[str, str]) -> Path:
    def discovery(name: str) -> str:
        if name not in queues:
            return ""
        return (f'discovery = "sqs"\nqueue_url = "{queues[name]}"\nqueue_poll_secs = 0.2\n'
                "visibility_timeout_secs = 10\n")

    path.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
retry_cap_secs = 2.0
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"

[[sources]]
name = "trail"
bucket = "{buckets['trail']}"
prefix = "AWSLogs/"
format = "cloudtrail"
partitions = 2
{discovery('trail')}
[[sources]]
name = "app"
bucket = "{buckets['app']}"
prefix = "app/"
format = "ndjson"
table = "AppEvents_CL"
max_dead_letters_per_object = 100
{discovery('app')}
[[sources]]
name = "gd"
bucket = "{buckets['gd']}"
prefix = "GuardDuty/"
format = "guardduty"
{discovery('gd')}
[[tables]]
name = "AppEvents_CL"
columns = [
  {{ name = "TimeGenerated", type = "datetime", source = "ts", required = true }},
  {{ name = "Message", type = "string", source = "msg", required = true }},
]
""")
    return path


def _poison_messages(sqs: Any, url: str, bucket: str) -> int:
    """SQS messages naming no usable object; returns how many were sent."""
    def s3_event(b: Any, key: Any) -> dict:
        return {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
            "bucket": {"name": b}, "object": {"key": key, "size": 1}}}]}

    bodies = [s3_event(bucket, 7), s3_event(bucket, None), s3_event("someone-else", ["k"]),
              {"Type": "Notification", "Message": json.dumps(s3_event(bucket, {"a": 1}))},
              {"detail-type": "Object Created", "detail": {"bucket": {"name": bucket},
                                                           "object": {"key": 12, "size": 3}}}]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    return len(bodies)


def _depth(stack: LocalStack, url: str) -> int:
    attrs = stack.sqs().get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.mark.hostile
@pytest.mark.parametrize("mode", ["list", "sqs"])
def test_no_single_input_stops_ingestion(clean: LocalStack, tmp_path: Path, mode: str) -> None:
    s3 = clean.s3()
    buckets = {name: f"hostile-{mode}-{name}" for name in ("trail", "app", "gd")}
    queues: dict[str, str] = {}
    poison_messages = 0
    for name, bucket in buckets.items():
        if mode == "sqs":
            queues[name] = clean.notify_queue(bucket, f"hostile-{name}")
            poison_messages += _poison_messages(clean.sqs(), queues[name], bucket)
        else:
            s3.create_bucket(Bucket=bucket)
    trail, app, gd = buckets["trail"], buckets["app"], buckets["gd"]

    # -- poison first --------------------------------------------------------------------
    deep_key = "AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/01/0-deep.json.gz"
    deep = ('{"Records":[' + json.dumps(_event("deep"))[:-1] + ',"requestParameters":'
            + "[" * 1000 + "]" * 1000 + "}]}").encode()
    s3.put_object(Bucket=trail, Key=deep_key, Body=gzip.compress(deep))
    mixed_key = "AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/01/1-mixed.json.gz"
    huge = _event("huge", requestParameters=_listing(25_000))  # ~1.6 MB: over max_record_bytes
    large = _event("large", requestParameters=_listing(4_000))  # ~260 KB: delivered
    mixed = [_event("before"), huge, _event("between"), large, _event("after")]
    compact = {"separators": (",", ":")}  # as CloudTrail (and cloudtrail_object) write it
    assert len(json.dumps(huge, **compact)) > 1024 * 1024 > len(json.dumps(large, **compact))
    s3.put_object(Bucket=trail, Key=mixed_key, Body=cloudtrail_object(mixed))
    bomb_key = "app/0-bad-lines.ndjson.gz"
    bomb = gzip.compress(b"x\n" * 300_000, 9)
    assert len(bomb) < 1024
    s3.put_object(Bucket=app, Key=bomb_key, Body=bomb)
    s3.put_object(Bucket=gd, Key="GuardDuty/0-findings.jsonl", Body=b"\n".join(
        json.dumps(_finding(s)).encode() for s in (5.5, 8.0, 2.3)) + b"\n")

    # -- then ordinary objects -----------------------------------------------------------
    manifest = seed_cloudtrail(s3, trail, objects=6, records_per_object=(10, 40), seed=21)
    good_lines = [json.dumps({"ts": 1_790_000_000 + i, "msg": f"ok {i}"}).encode()
                  for i in range(50)]
    s3.put_object(Bucket=app, Key="app/1-good.ndjson", Body=b"\n".join(good_lines) + b"\n")

    errors = tmp_path / "errors"
    run_flow(clean, _config(tmp_path / "flow.toml", buckets, queues), errors, "-w", "2")

    # Every ordinary record exactly once.
    rows = clean.admin().records(TRAIL)
    counts = collections.Counter(r["AwsEventId"] for r in rows)
    want = manifest.event_ids | {"before", "between", "large", "after"}
    assert counts.keys() == want, sorted(counts.keys() ^ want)[:10]
    assert max(counts.values()) == 1
    assert sorted(r["Message"] for r in clean.admin().records(APP)) == sorted(
        f"ok {i}" for i in range(50))
    severities = {r["Id"]: (r["Severity"], (r.get("AdditionalFields_CF") or {}).get("severity"))
                  for r in clean.admin().records(GUARDDUTY)}
    assert severities == {"finding-5.5": (5, 5.5), "finding-8.0": (8, None),
                          "finding-2.3": (2, 2.3)}

    # Each poison input is in the dead-letter store, with its reason.
    entries = read_entries(errors)
    by_key = collections.defaultdict(list)
    for e in entries:
        by_key[e["key"]].append(e)
    (deep_entry,) = by_key[deep_key]
    assert deep_entry["stage"] in ("read", "parse", "map") and deep_entry["reason"]
    (huge_entry,) = by_key[mixed_key]
    assert huge_entry["offset"] == 1 and "max_record_bytes" in huge_entry["reason"]
    bomb_entries = by_key[bomb_key]
    assert 2 <= len(bomb_entries) <= 101
    assert [e["code"] for e in bomb_entries].count("too_many_bad_records") == 1
    if mode == "sqs":
        poison = [e for e in entries if e["key"].startswith("sqs-message/")]
        assert len(poison) == poison_messages
        assert all(e["code"] == "not_s3_event" for e in poison)
        assert all(_depth(clean, url) == 0 for url in queues.values())
    # Nothing else was dead-lettered.
    other = {k for k in by_key if k not in (deep_key, mixed_key, bomb_key)
             and not k.startswith("sqs-message/")}
    assert not other, other
