"""SQS notification mode end to end: moto's real S3 → SQS event notifications, the real
dataflow, the emulator. Every record exactly once, the queue drained, and messages that
name no object accounted for instead of dropped."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from connectors.deadletter import read_entries
from devstack.samples import seed_cloudtrail
from devstack.stack import LocalStack
from tests.conftest import ROOT, flow_env, run_flow

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


def test_summaries_survive_a_kill_after_their_messages_were_deleted(
        clean: LocalStack, tmp_path: Path) -> None:
    """A message is deleted once its objects' rows are accounted for; summarised rows are as
    soon as the transform settles them, while their summary rows still wait in a batch. A
    kill -9 then, before any snapshot commits, lost the summaries: the message was gone and
    no snapshot held them. The deletions are journaled, and the restart reads the objects
    again: every event is counted once in the summaries that arrive."""
    bucket = "e2e-sqs-summaries"
    url = clean.notify_queue(bucket, "e2e-sqs-summaries-events")
    manifest = seed_cloudtrail(clean.s3(), bucket, objects=6, records_per_object=(20, 60),
                               seed=9, digests=False)
    errors = tmp_path / "errors"
    config = sqs_config(tmp_path / "flow.toml", bucket, url, mode="continuous", partitions=1)
    body = config.read_text()
    summaries = """
[[tables]]
name = "TrailSummary_CL"
columns = [{ name = "TimeGenerated", type = "datetime" },
           { name = "EventName", type = "string" }, { name = "Events", type = "long" }]
[[transforms]]
table = "AWSCloudTrail"
[[transforms.aggregate]]
table = "TrailSummary_CL"
by = ["EventName"]
values = ["count(*) AS Events"]
"""
    # The first run holds summary rows in their batch for 60 s, and takes no snapshot
    # within the first 60 s either.
    config.write_text(body.replace("max_age_secs = 0.5", "max_age_secs = 60") + summaries)
    log = (tmp_path / "flow.log").open("ab")
    cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"]
    env = flow_env(clean, config, errors)
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    subprocess.run([sys.executable, "-m", "bytewax.recovery", str(recovery), "1"], cwd=ROOT,
                   check=True)
    proc = subprocess.Popen([*cmd, "-r", str(recovery), "-s", "60", "-b", "0"], env=env,
                            cwd=ROOT, stdout=log, stderr=log)
    try:
        t0 = time.monotonic()
        while queue_depth(clean, url) > 0:
            assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 60, "the messages were never deleted"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    admin = clean.admin()
    assert admin.records("Custom-TrailSummary_CL") == []  # still in their batch: killed
    config.write_text(body + summaries)
    proc = subprocess.Popen([*cmd, "-r", str(recovery), "-s", "1", "-b", "0"], env=env,
                            cwd=ROOT, stdout=log, stderr=log)
    try:
        t0 = time.monotonic()
        while sum(r["Events"] for r in admin.records("Custom-TrailSummary_CL")) < (
                manifest.record_count):
            assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 60, "the summaries never arrived"
            time.sleep(0.2)
        time.sleep(1.5)  # time for anything sent twice to arrive
    finally:
        proc.kill()
        proc.wait()
    rows = admin.records("Custom-TrailSummary_CL")
    assert sum(r["Events"] for r in rows) == manifest.record_count
    assert admin.records(TRAIL) == []  # every row summarised, none sent
    assert queue_depth(clean, url) == 0
