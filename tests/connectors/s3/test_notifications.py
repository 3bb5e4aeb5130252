"""The SQS partition against a moto server: real S3 → SQS notifications, deletion only once
the journals account for every record, visibility extension, and messages that keep failing."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import boto3
import pytest

from connectors.ledger import DEAD_LETTERED, Ledger
from connectors.s3.notifications import parse_notification
from connectors.s3.source import S3Source
from dataflow.config import SourceConfig
from dataflow.core import metrics
from dataflow.core.messages import ErrorRecord, RawRecord

BUCKET = "notified"


def client(endpoint: str, service: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


@pytest.fixture
def aws(endpoint: str, request: pytest.FixtureRequest) -> tuple[Any, Any, str]:
    s3, sqs = client(endpoint, "s3"), client(endpoint, "sqs")
    url = sqs.create_queue(QueueName=f"q-{request.node.name[:60]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn["QueueArn"], "Events": ["s3:ObjectCreated:*"]}]})
    return s3, sqs, url


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def part(aws: tuple[Any, Any, str], tmp_path: Any, mono: Mono | None = None, **kw: Any) -> Any:
    s3, sqs, url = aws
    cfg = SourceConfig(**{"name": "n", "bucket": BUCKET, "format": "ndjson", "table": "T_CL",
                          "prefix": "logs/", "discovery": "sqs", "queue_url": url,
                          "visibility_timeout_secs": 30, "queue_poll_secs": 0.01, **kw})
    source = S3Source([cfg], lambda: s3, sqs_factory=lambda: sqs, journal_dir=str(tmp_path))
    p = source.build_part("s3", "n:0/1", None)
    if mono is not None:
        p._mono = mono
    return p


def pump(p: Any, rounds: int = 50) -> list[Any]:
    out: list[Any] = []
    for _ in range(rounds):
        p._wake_at = None
        p._next_check = 0.0
        out.extend(p.next_batch())
    return out


def depth(sqs: Any, url: str) -> int:
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def test_parse_notification_forms() -> None:
    direct = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": "b"}, "object": {"key": "a+b%2Fc%2Bd.json", "size": 3, "eTag": "e"}}},
        {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b"},
                                                      "object": {"key": "gone"}}}]}
    objs, why = parse_notification(json.dumps(direct))
    assert why is None and [(o.key, o.etag, o.size) for o in objs] == [("a b/c+d.json", "e", 3)]
    sns = {"Type": "Notification", "Message": json.dumps(direct)}
    assert parse_notification(json.dumps(sns))[0] == objs
    bridge = {"detail-type": "Object Created", "detail": {"bucket": {"name": "b"},
                                                         "object": {"key": "k 1", "size": 5}}}
    assert [o.key for o in parse_notification(json.dumps(bridge))[0]] == ["k 1"]
    assert parse_notification('{"Event": "s3:TestEvent", "Bucket": "b"}') == ([], "test_event")
    assert parse_notification("nope")[1].startswith("not JSON")
    assert "not an S3 event" in parse_notification('{"hello": 1}')[1]


def test_message_is_deleted_only_once_every_record_is_accounted_for(aws: Any, tmp_path: Any) -> None:
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/a.ndjson", Body=b'{"a":1}\n\n{"a":2}\n{"a":3}\n')
    s3.put_object(Bucket=BUCKET, Key="other/skip.ndjson", Body=b'{"a":1}\n')  # not our prefix
    p = part(aws, tmp_path)
    out = pump(p)
    recs = [x for x in out if isinstance(x, RawRecord)]
    assert [r.offset for r in recs] == [0, 2, 3]  # the blank line 1 is no record
    assert depth(sqs, url) == 1  # read, not yet delivered: the message stays
    delivered = Ledger(tmp_path, 0)
    delivered.record([recs[0].record_id, recs[2].record_id])
    pump(p, 3)
    assert depth(sqs, url) == 1  # offset 2 is neither delivered nor dead-lettered
    Ledger(tmp_path, 5, name=DEAD_LETTERED).record([recs[1].record_id])
    pump(p, 3)
    assert depth(sqs, url) == 0 and p._messages == {}


def test_visibility_is_extended_while_the_object_is_in_work(aws: Any, tmp_path: Any) -> None:
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/b.ndjson", Body=b'{"a":1}\n')
    mono = Mono()
    p = part(aws, tmp_path, mono)
    before = metrics.SQS_MESSAGES.labels("n", "extended")._value.get()
    pump(p, 5)
    assert len(p._messages) == 1
    mono.now += 25  # 5 s of the 30 s visibility left: extend
    pump(p, 1)
    assert metrics.SQS_MESSAGES.labels("n", "extended")._value.get() - before == 1
    (msg,) = p._messages.values()
    assert msg.visible_until == mono.now + 30
    pump(p, 1)  # just extended: no second extension yet
    assert metrics.SQS_MESSAGES.labels("n", "extended")._value.get() - before == 1


def test_a_message_received_too_often_dead_letters_its_object(aws: Any, tmp_path: Any) -> None:
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/c.ndjson", Body=b'{"a":1}\n')
    for _ in range(2):  # two earlier receivers that never finished
        sqs.receive_message(QueueUrl=url, VisibilityTimeout=0, MaxNumberOfMessages=10)
    p = part(aws, tmp_path, max_receive_count=2)
    out = pump(p, 3)
    (err,) = [x for x in out if isinstance(x, ErrorRecord)]
    assert err.code == "max_receives" and err.obj.key == "logs/c.ndjson"
    assert "received 3 times" in err.reason and "s3sentinel replay" in err.reason
    assert not [x for x in out if isinstance(x, RawRecord)]
    assert depth(sqs, url) == 1  # deleted once the dead-letter entry is journaled
    Ledger(tmp_path, 0, name=DEAD_LETTERED).record_ranges({err.obj.id: [[0, 2**62]]})
    pump(p, 2)
    assert depth(sqs, url) == 0


def test_duplicate_notifications_read_the_object_once(aws: Any, tmp_path: Any) -> None:
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/d.ndjson", Body=b'{"a":1}\n{"a":2}\n')
    dup = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": BUCKET}, "object": {"key": "logs/d.ndjson", "size": 1}}}]}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(dup))
    p = part(aws, tmp_path)
    recs = [x for x in pump(p) if isinstance(x, RawRecord)]
    assert [r.offset for r in recs] == [0, 1] and len(p._messages) == 2
    Ledger(tmp_path, 0).record([r.record_id for r in recs])
    pump(p, 2)
    assert depth(sqs, url) == 0


def _s3_event(bucket: Any, key: Any, **obj: Any) -> dict:
    return {"Records": [{"eventName": "ObjectCreated:Put", "s3": {
        "bucket": {"name": bucket}, "object": {"key": key, "size": 1, **obj}}}]}


def _bridge_event(bucket: Any, key: Any) -> dict:
    return {"detail-type": "Object Created", "detail": {"bucket": {"name": bucket},
                                                         "object": {"key": key, "size": 1}}}


POISON_KEYS = [7, None, ["logs/x"], {"k": 1}, True, 1.5, ""]


@pytest.mark.parametrize("key", POISON_KEYS, ids=repr)
@pytest.mark.parametrize("bucket", [BUCKET, "someone-elses"])
@pytest.mark.parametrize("form", ["s3", "sns", "eventbridge"])
def test_a_key_that_is_not_a_string_is_a_reason_not_an_exception(form: str, bucket: str,
                                                                   key: Any) -> None:
    doc = _bridge_event(bucket, key) if form == "eventbridge" else _s3_event(bucket, key)
    if form == "sns":
        doc = {"Type": "Notification", "Message": json.dumps(doc)}
    objs, why = parse_notification(json.dumps(doc))
    assert objs == [] and why is not None and "key" in why, why


@pytest.mark.parametrize("doc", [
    {"Records": ["x"]},
    {"Records": [{"eventName": 5}]},
    {"Records": [{"eventName": "ObjectCreated:Put", "s3": []}]},
    {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": "b", "object": {"key": "k"}}}]},
    _s3_event(BUCKET, "logs/k", size="big"),
    _s3_event(BUCKET, "logs/k", size=-1),
    _s3_event(BUCKET, "logs/k", eTag=["e"]),
    {"Type": "Notification", "Message": {"Records": []}},
    {"detail-type": "Object Created", "detail": "x"},
], ids=repr)
def test_every_field_read_is_checked_for_its_type(doc: dict) -> None:
    objs, why = parse_notification(json.dumps(doc))
    assert objs == [] and why is not None


def test_a_poison_message_is_dead_lettered_deleted_and_counted_and_the_rest_is_read(
        aws: Any, tmp_path: Any) -> None:
    s3, sqs, url = aws
    for key in (7, None, ["logs/x"]):  # before the ordinary object, in the same queue
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(_s3_event(BUCKET, key)))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(
        {"Type": "Notification", "Message": json.dumps(_bridge_event("other", 3))}))
    s3.put_object(Bucket=BUCKET, Key="logs/good.ndjson", Body=b'{"a":1}\n{"a":2}\n')
    before = metrics.ERRORS.labels("n", "read", "not_s3_event")._value.get()
    p = part(aws, tmp_path)
    out = pump(p)
    errs = [x for x in out if isinstance(x, ErrorRecord)]
    recs = [x for x in out if isinstance(x, RawRecord)]
    assert [r.offset for r in recs] == [0, 1] and recs[0].obj.key == "logs/good.ndjson"
    assert len(errs) == 4 and all(e.code == "not_s3_event" and "key" in e.reason for e in errs)
    assert metrics.ERRORS.labels("n", "read", "not_s3_event")._value.get() - before == 4
    # The poison messages are deleted once their dead-letter entries are journaled.
    journal = Ledger(tmp_path, 0, name=DEAD_LETTERED)
    journal.record_ranges({e.obj.id: [[0, 1]] for e in errs})
    Ledger(tmp_path, 1).record([r.record_id for r in recs])
    pump(p, 3)
    assert depth(sqs, url) == 0 and p._messages == {}


def test_an_unexpected_error_handling_one_message_dead_letters_only_that_message(
        aws: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    s3, sqs, url = aws
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(_s3_event(BUCKET, "logs/boom")))
    s3.put_object(Bucket=BUCKET, Key="logs/fine.ndjson", Body=b'{"a":1}\n')
    p = part(aws, tmp_path)
    real = p._wanted

    def wanted(o: Any) -> bool:
        if o.key == "logs/boom":
            msg = "a bug"
            raise RuntimeError(msg)
        return real(o)

    monkeypatch.setattr(p, "_wanted", wanted)
    out = pump(p)
    (err,) = [x for x in out if isinstance(x, ErrorRecord)]
    assert err.code == "sqs_message_error" and "RuntimeError: a bug" in err.reason
    assert [r.obj.key for r in out if isinstance(r, RawRecord)] == ["logs/fine.ndjson"]


def test_a_restart_takes_back_the_messages_of_its_snapshot(aws: Any, tmp_path: Any) -> None:
    """The messages in flight at a snapshot are taken back by the restarted partition (their
    visibility extended with the saved receipt handles) and their objects read again by
    it, not left to whichever receiver gets them when their visibility runs out (on another
    host, whose journal would not know what this one delivered)."""
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/c.ndjson", Body=b'{"a":1}\n{"a":2}\n')
    first = part(aws, tmp_path)
    recs = [x for x in pump(first) if isinstance(x, RawRecord)]
    assert [r.offset for r in recs] == [0, 1]
    snap = first.snapshot()
    assert [m["objects"] for m in snap["messages"]] == [[["logs/c.ndjson", mock.ANY, 16]]]
    # A kill: the first partition is gone. The restarted one takes the message back.
    first.close()
    other = part(aws, tmp_path)  # another receiver of the queue (its journal: none here)
    again = S3Source([first._src], lambda: s3, sqs_factory=lambda: sqs,
                     journal_dir=str(tmp_path)).build_part("s3", "n:0/1", snap)
    reread = [x for x in pump(again) if isinstance(x, RawRecord)]
    assert [r.record_id for r in reread] == [r.record_id for r in recs]
    assert [x for x in pump(other) if isinstance(x, RawRecord)] == []  # not visible to it
    Ledger(tmp_path, 0).record([r.record_id for r in recs])
    pump(again, 3)
    assert depth(sqs, url) == 0
    again.close()
    # The message was deleted after the snapshot, by this partition, which journaled it
    # first. A restart from that snapshot reads the object again (what its records derive
    # downstream, summaries and findings, may not have been delivered), holding no message.
    late = S3Source([first._src], lambda: s3, sqs_factory=lambda: sqs,
                    journal_dir=str(tmp_path)).build_part("s3", "n:0/1", snap)
    before = metrics.SQS_MESSAGES.labels("n", "read_again_after_delete")._value.get()
    reread = [x for x in pump(late, 3) if isinstance(x, RawRecord)]
    assert [r.record_id for r in reread] == [r.record_id for r in recs]
    assert metrics.SQS_MESSAGES.labels("n", "read_again_after_delete")._value.get() - before == 1
    assert late._messages == {}  # accounted for (the journal has every record): forgotten


def test_a_message_deleted_since_the_snapshot_is_read_again_until_accounted_for(
        aws: Any, tmp_path: Any) -> None:
    """Only a deletion this source journaled makes a restart read a message's objects again
    (one gone from the queue otherwise, e.g. by its visibility running out, is for whichever
    receiver gets it); the message read again is in later snapshots as deleted, so a second
    restart reads it again with no call to SQS, and it is forgotten, not deleted, once its
    records are accounted for."""
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/d.ndjson", Body=b'{"a":1}\n{"a":2}\n')
    s3.put_object(Bucket=BUCKET, Key="logs/e.ndjson", Body=b'{"a":3}\n')
    first = part(aws, tmp_path)
    recs = [x for x in pump(first) if isinstance(x, RawRecord)]
    snap = first.snapshot()
    assert len(snap["messages"]) == 2
    by_key = {m["objects"][0][0]: m for m in snap["messages"]}
    # Someone else deletes e's message: no journal entry of this source says so.
    sqs.delete_message(QueueUrl=url, ReceiptHandle=by_key["logs/e.ndjson"]["receipt"])
    Ledger(tmp_path, 0).record([r.record_id for r in recs if r.obj.key == "logs/d.ndjson"])
    pump(first, 3)  # d's message is accounted for: journaled, then deleted
    assert depth(sqs, url) == 0 and len(first._messages) == 1  # e's: not accounted for
    first.close()
    Ledger(tmp_path, 0).record([r.record_id for r in recs])

    def restart(state: Any) -> Any:
        return S3Source([first._src], lambda: s3, sqs_factory=lambda: sqs,
                        journal_dir=str(tmp_path)).build_part("s3", "n:0/1", state)

    again = restart(snap)
    out = [x for x in again.next_batch() if isinstance(x, RawRecord)]
    assert {r.obj.key for r in out} == {"logs/d.ndjson"}  # not e: not deleted by this source
    (msg,) = again._messages.values()
    assert msg.deleted and msg.message_id == by_key["logs/d.ndjson"]["id"]
    later = again.snapshot()
    assert [m.get("deleted") for m in later["messages"]] == [True]
    with mock.patch.object(sqs, "change_message_visibility_batch",
                           side_effect=AssertionError("no SQS call for a deleted message")):
        third = restart(later)
        assert [x.offset for x in pump(third, 3) if isinstance(x, RawRecord)] == [0, 1]
    with mock.patch.object(sqs, "delete_message", side_effect=AssertionError("deleted twice")):
        pump(third, 3)
    assert third._messages == {} and depth(sqs, url) == 0


def test_a_message_received_and_deleted_after_the_snapshot_is_read_again(
        aws: Any, tmp_path: Any) -> None:
    """The snapshot a restart resumes from may be older than the message itself: the
    journal's mark in the snapshot says which deletions came after it. A restart from a
    snapshot taken after the deletion reads nothing again; a start with no snapshot reads
    again what the journal holds, when the flow has a recovery store."""
    s3, sqs, url = aws
    first = part(aws, tmp_path)
    before = first.snapshot()  # nothing received yet
    s3.put_object(Bucket=BUCKET, Key="logs/f.ndjson", Body=b'{"a":1}\n')
    recs = [x for x in pump(first) if isinstance(x, RawRecord)]
    Ledger(tmp_path, 0).record([r.record_id for r in recs])
    pump(first, 3)
    assert depth(sqs, url) == 0 and first._messages == {}
    after = first.snapshot()
    assert after["deleted_mark"] > before["deleted_mark"]
    first.close()
    # With no snapshot: a kill before the first one committed, with a recovery store; without
    # one, every start has no snapshot, and reads nothing again.
    for state, resumable, reads in ((before, True, [0]), (after, True, []), (None, True, [0]),
                                    (None, False, [])):
        p = S3Source([first._src], lambda: s3, sqs_factory=lambda: sqs, resumable=resumable,
                     journal_dir=str(tmp_path)).build_part("s3", "n:0/1", state)
        assert [x.offset for x in pump(p, 3) if isinstance(x, RawRecord)] == reads
        assert p._messages == {}
        p.close()


def test_a_second_notification_after_the_first_was_deleted_is_deleted_too(
        aws: Any, tmp_path: Any) -> None:
    """S3 notifies at least once: a second message for an object whose first message was
    deleted is read again (the sink skips what was delivered) and deleted. It used to wait
    for ever, its visibility extended, as the journal view had dropped the object's ranges
    with the first message."""
    s3, sqs, url = aws
    p = part(aws, tmp_path)
    s3.put_object(Bucket=BUCKET, Key="logs/g.ndjson", Body=b'{"a":1}\n')
    recs = [x for x in pump(p) if isinstance(x, RawRecord)]
    Ledger(tmp_path, 0).record([r.record_id for r in recs])
    pump(p, 3)
    assert depth(sqs, url) == 0 and p._messages == {}
    etag = s3.head_object(Bucket=BUCKET, Key="logs/g.ndjson")["ETag"].strip('"')
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"Records": [{
        "eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": BUCKET}, "object": {
            "key": "logs/g.ndjson", "size": 8, "eTag": etag}}}]}))
    assert [x.record_id for x in pump(p, 5) if isinstance(x, RawRecord)] == [recs[0].record_id]
    assert depth(sqs, url) == 0 and p._messages == {}
