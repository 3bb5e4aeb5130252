"""AWS clients: the default chain, or a role assumed per source (STS against moto)."""

from __future__ import annotations

from connectors.aws import s3_client
from dataflow.config import AwsConfig


def test_a_source_role_is_assumed_with_its_external_id(endpoint: str, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws = AwsConfig(endpoint_url=endpoint)
    calls: list[dict] = []
    plain = s3_client(aws)
    assumed = s3_client(aws, "arn:aws:iam::123456789012:role/log-reader", "ext-42")
    import botocore.client

    real = botocore.client.BaseClient._make_api_call

    def spy(self, name, params):
        if name == "AssumeRole":
            calls.append(params)
        return real(self, name, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", spy)
    plain.create_bucket(Bucket="assume-role-test")
    assert "assume-role-test" in [b["Name"] for b in assumed.list_buckets()["Buckets"]]
    assert calls == [{"RoleArn": "arn:aws:iam::123456789012:role/log-reader",
                      "RoleSessionName": "s3sentinel", "ExternalId": "ext-42"}]
    creds = assumed._request_signer._credentials
    assert creds.method == "assume-role"
    assert creds.get_frozen_credentials().access_key != "testing"
    assert s3_client(aws, "arn:aws:iam::123456789012:role/log-reader", "ext-42") is assumed


def test_timestamps_are_parsed_as_botocore_does_without_dateutil() -> None:
    """The instants botocore's own parser gives, for the forms S3 sends and for the others
    (which go to botocore's parser)."""
    from datetime import UTC, datetime, timedelta

    from botocore.utils import parse_timestamp

    from connectors.aws import fast_timestamp

    t = datetime(2026, 11, 28, 10, 0, 7, 250000, tzinfo=UTC)
    values = ["2026-11-28T10:00:07.250Z", "2026-11-28T10:00:07Z", "2024-02-29T23:59:59.999Z",
              "Sat, 28 Nov 2026 10:00:07 GMT", "Mon, 01 Jan 2024 00:00:00 GMT",
              "2026-11-28T12:00:07+02:00", 1795860007, 1795860007.25, "1795860007"]
    for v in values:
        got, want = fast_timestamp(v), parse_timestamp(v)
        assert got.tzinfo is not None and got == want, v
    assert fast_timestamp("2026-11-28T10:00:07.250Z") == t
    assert fast_timestamp("Sat, 28 Nov 2026 10:00:07 GMT") == t - timedelta(microseconds=250000)


def test_s3_listings_and_gets_parse_their_timestamps_without_dateutil(
        endpoint: str, monkeypatch) -> None:
    """Every listed key's LastModified, and each GET's, used to go through dateutil (~40 µs
    a timestamp); the clients this project builds parse them on the fast path, to the same
    values a plain boto3 client reads."""
    import boto3
    import botocore.parsers

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ours = s3_client(AwsConfig(endpoint_url=endpoint, region="eu-west-2"))
    plain = boto3.client("s3", endpoint_url=endpoint, region_name="eu-west-2")
    plain.create_bucket(Bucket="timestamps-test",
                        CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    for i in range(5):
        plain.put_object(Bucket="timestamps-test", Key=f"k{i}", Body=b"x")
    slow: list[str] = []  # botocore's default parser, on the client side (moto, in this
    real = botocore.parsers.DEFAULT_TIMESTAMP_PARSER  # process, serialises with its own)

    def counted(value):
        slow.append(value)
        return real(value)

    monkeypatch.setattr(botocore.parsers, "DEFAULT_TIMESTAMP_PARSER", counted)
    want = {o["Key"]: o["LastModified"]
            for o in plain.list_objects_v2(Bucket="timestamps-test")["Contents"]}
    head = plain.get_object(Bucket="timestamps-test", Key="k0")["LastModified"]
    assert len(slow) == 6  # a plain client: every timestamp through dateutil
    slow.clear()
    got = {o["Key"]: o["LastModified"]
           for o in ours.list_objects_v2(Bucket="timestamps-test")["Contents"]}
    got_head = ours.get_object(Bucket="timestamps-test", Key="k0")["LastModified"]
    assert got == want and len(got) == 5 and got_head == head
    assert slow == []
