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
