"""AWS clients built from the config (credentials come from boto3's default chain)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from connectors.s3.config import SourceConfig

__all__ = ["AwsConfig", "client_for", "s3_client", "sqs_client"]


@dataclass(frozen=True)
class AwsConfig:
    """How to reach S3 (and SQS)."""

    region: str = "us-east-1"
    """Default AWS region for clients."""
    endpoint_url: str | None = None
    """Custom S3/SQS endpoint (a local stack, or a VPC endpoint); None uses AWS's."""
    max_pool_connections: int = 16
    """HTTP connections per S3 client; at least fetch_threads."""


def _session(aws: AwsConfig, role_arn: str = "", external_id: str = "") -> Any:
    """A boto3 session: the default credential chain, or a role assumed from it.

    With ``role_arn``, credentials come from STS AssumeRole (with ``external_id`` when
    set) and are refreshed before they expire, so one deployment reads many accounts.
    """
    session = boto3.session.Session()
    if not role_arn:
        return session
    from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

    core = session._session  # the botocore session behind boto3's

    def sts_client(service: str, **kwargs: Any) -> Any:
        return core.create_client(service, region_name=aws.region,
                                  endpoint_url=aws.endpoint_url, **kwargs)

    extra: dict[str, Any] = {"RoleSessionName": "s3sentinel"}
    if external_id:
        extra["ExternalId"] = external_id
    fetcher = AssumeRoleCredentialFetcher(sts_client, core.get_credentials(), role_arn,
                                          extra_args=extra)
    core._credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials)
    return session


@functools.lru_cache(maxsize=64)
def s3_client(aws: AwsConfig, role_arn: str = "", external_id: str = "") -> Any:
    """A boto3 S3 client for ``aws`` (and a role to assume), one per process.

    boto3 clients are thread-safe, and building one costs ~0.3 s of CPU (it loads the
    service model), so every partition and fetch thread of a process shares it.
    """
    session = _session(aws, role_arn, external_id)
    return session.client(
        "s3",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=BotoConfig(
            max_pool_connections=aws.max_pool_connections,
            retries={"mode": "standard", "max_attempts": 3},
            tcp_keepalive=True,
        ),
    )


@functools.lru_cache(maxsize=64)
def sqs_client(aws: AwsConfig, role_arn: str = "", external_id: str = "") -> Any:
    """A boto3 SQS client for ``aws`` (S3 event notifications), one per process and role."""
    session = _session(aws, role_arn, external_id)
    return session.client(
        "sqs",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 3}, tcp_keepalive=True),
    )


def client_for(aws: AwsConfig, src: SourceConfig, service: str) -> Any:
    """The ``s3`` or ``sqs`` client a source reads with: through its ``role_arn`` (and
    ``external_id``) when it has one. Every S3 access for a source (the flow, readiness,
    replay, preview) goes through this, so a cross-account source works everywhere."""
    make = s3_client if service == "s3" else sqs_client
    return make(aws, src.role_arn, src.external_id)
