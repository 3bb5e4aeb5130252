"""Empty GuardDuty envelopes (``{"findings":[]}``) are skipped by the object reader: no row,
no dead letter, counted; and the SQS message of their object does not wait for them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connectors.ledger import Ledger
from connectors.s3.reader import is_empty_envelope
from dataflow.core import metrics
from dataflow.core.messages import ErrorRecord, RawRecord
from tests.connectors.s3.test_notifications import BUCKET, client, depth, part, pump

FINDING = orjson.dumps({"schemaVersion": "2.0", "id": "f-1", "type": "Recon:EC2/PortProbe"})


@pytest.fixture
def aws(endpoint: str, request: pytest.FixtureRequest) -> tuple[Any, Any, str]:
    s3, sqs = client(endpoint, "s3"), client(endpoint, "sqs")
    url = sqs.create_queue(QueueName=f"e-{request.node.name[:60]}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_notification_configuration(Bucket=BUCKET, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn["QueueArn"], "Events": ["s3:ObjectCreated:*"]}]})
    return s3, sqs, url


def skipped(source: str) -> float:
    return metrics.RECORDS_SKIPPED_EMPTY.labels(source, "guardduty")._value.get()


@pytest.mark.parametrize(("data", "empty"), [
    (b'{"findings":[]}', True),
    (b' { "findings" : [ ] } ', True),
    (b'{"findings":[{"id":"f-1"}]}', False),  # a finding inside: not empty
    (b'{"findings":[],"more":1}', False),  # another key: not exactly an envelope
    (b'{"findings":{}}', False),
    (b'{"findings":[]', False),  # broken JSON: the mapper reports it
    (FINDING, False),
])
def test_what_counts_as_an_empty_envelope(data: bytes, empty: bool) -> None:
    assert is_empty_envelope("guardduty", data) is empty
    assert is_empty_envelope("ndjson", data) is False  # only GuardDuty objects have them


def test_empty_envelopes_are_skipped_and_their_message_does_not_wait(aws: Any,
                                                                     tmp_path: Any) -> None:
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/gd.jsonl",
                  Body=b'{"findings":[]}\n' + FINDING + b'\n{"findings": []}\n')
    before = skipped("n")
    p = part(aws, tmp_path, format="guardduty", table="AWSGuardDuty")
    out = pump(p)
    assert not [x for x in out if isinstance(x, ErrorRecord)]
    recs = [x for x in out if isinstance(x, RawRecord)]
    assert [r.offset for r in recs] == [1]  # neither envelope is emitted
    assert skipped("n") - before == 2
    assert depth(sqs, url) == 1  # the finding is not delivered yet
    Ledger(tmp_path, 0).record([recs[0].record_id])
    pump(p, 3)
    assert depth(sqs, url) == 0 and p._messages == {}  # the envelopes are not waited for


def test_an_object_of_only_an_empty_envelope_is_done_at_once(aws: Any, tmp_path: Any) -> None:
    s3, sqs, url = aws
    s3.put_object(Bucket=BUCKET, Key="logs/empty.jsonl", Body=b'{"findings":[]}\n')
    p = part(aws, tmp_path, format="guardduty", table="AWSGuardDuty")
    assert [x for x in pump(p) if isinstance(x, (RawRecord, ErrorRecord))] == []
    pump(p, 3)
    assert depth(sqs, url) == 0 and p._messages == {}
