"""AWS clients built from the config (credentials come from boto3's default chain)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from dataflow.config import AwsConfig

__all__ = ["s3_client"]


def s3_client(aws: AwsConfig) -> Any:
    """A boto3 S3 client for ``aws``; thread-safe, so one serves a partition's fetch threads."""
    session = boto3.session.Session()
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
