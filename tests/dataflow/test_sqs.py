"""SQS notification mode end to end: moto's real S3 → SQS event notifications, the real
dataflow, the emulator. Every record exactly once, the queue drained, and messages that
name no object accounted for instead of dropped."""

from __future__ import annotations

import collections
import json
from pathlib import Path

from connectors.deadletter import read_entries
from devstack.samples import seed_cloudtrail
from devstack.stack import LocalStack
from tests.conftest import run_flow

TRAIL = "Custom-AWSCloudTrail"


def sqs_config(path: Path, bucket: str, queue_url: str, *, mode: str = "catch_up",
               partitions: int = 2, visibility: int = 6) -> Path:
    path.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
retry_cap_secs = 2.0
[batch]
max_age_secs = 0.5
[runtime]
mode = "{mode}"
[[sources]]
name = "trail"
bucket = "{bucket}"
prefix = "AWSLogs/"
format = "cloudtrail"
discovery = "sqs"
queue_url = "{queue_url}"
queue_poll_secs = 0.2
visibility_timeout_secs = {visibility}
partitions = {partitions}
""")
    return path


def queue_depth(stack: LocalStack, url: str) -> int:
    attrs = stack.sqs().get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(
        attrs["ApproximateNumberOfMessagesNotVisible"])


def test_notifications_deliver_every_record_once_and_drain_the_queue(
        clean: LocalStack, tmp_path: Path) -> None:
    bucket = "e2e-sqs"
    url = clean.notify_queue(bucket, "e2e-sqs-events")
    manifest = seed_cloudtrail(clean.s3(), bucket, objects=40, records_per_object=(10, 80), seed=11)
    errors = tmp_path / "errors"
    config = sqs_config(tmp_path / "flow.toml", bucket, url)
    run_flow(clean, config, errors, "-w", "2")

    def check() -> None:
        records = clean.admin().records(TRAIL)
        counts = collections.Counter(r["AwsEventId"] for r in records)
        assert counts.keys() == manifest.event_ids
        assert sum(counts.values()) == manifest.record_count  # no duplicates
        assert queue_depth(clean, url) == 0

    check()
    assert not errors.exists() or read_entries(errors) == []
    # Later: the same event again, wrapped by SNS (a redelivered notification: its records
    # are in the journal and are not sent twice), an event for another bucket, and a message
    # that is no S3 event at all (kept in the dead-letter store, not dropped).
    sqs = clean.sqs()
    first = manifest.objects[0].key
    event = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": first.replace("/", "%2F"), "size": 1}}}]}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
        {"Type": "Notification", "Message": json.dumps(event)}))
    other = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": "someone-else"}, "object": {"key": "AWSLogs/x.json", "size": 1}}}]}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(other))
    sqs.send_message(QueueUrl=url, MessageBody="hello, not an event")
    run_flow(clean, config, errors, "-w", "2")
    check()
    (entry,) = read_entries(errors)
    assert entry["code"] == "not_s3_event" and entry["data"] == "hello, not an event"


def test_rows_a_transform_takes_away_are_accounted_for(clean: LocalStack, tmp_path: Path) -> None:
    """Rows dropped or sampled out by [[transforms]] count as accounted for: the queue drains
    (before, an object with a dropped row kept its message forever, read again at every
    visibility timeout)."""
    bucket = "e2e-sqs-transform"
    url = clean.notify_queue(bucket, "e2e-sqs-transform-events")
    manifest = seed_cloudtrail(clean.s3(), bucket, objects=12, records_per_object=(10, 40),
                               seed=5)
    errors = tmp_path / "errors"
    config = sqs_config(tmp_path / "flow.toml", bucket, url, partitions=1)
    config.write_text(config.read_text() + """
[[transforms]]
table = "AWSCloudTrail"
where = "EventName NOT LIKE 'Describe%'"
sample = 2
""")
    run_flow(clean, config, errors, timeout=90)
    records = clean.admin().records(TRAIL)
    assert 0 < len(records) < manifest.record_count
    assert queue_depth(clean, url) == 0
    assert not errors.exists() or read_entries(errors) == []
