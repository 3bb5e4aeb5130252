"""AWS clients built from the config (credentials come from boto3's default chain)."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config as BotoConfig

from dataflow.config import AwsConfig

__all__ = ["s3_client", "sqs_client"]


@functools.lru_cache(maxsize=16)
def s3_client(aws: AwsConfig) -> Any:
    """A boto3 S3 client for ``aws``, one per process and config.

    boto3 clients are thread-safe, and building one costs ~0.3 s of CPU (it loads the
    service model), so every partition and fetch thread of a process shares it.
    """
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


@functools.lru_cache(maxsize=16)
def sqs_client(aws: AwsConfig) -> Any:
    """A boto3 SQS client for ``aws`` (S3 event notifications), one per process and config."""
    session = boto3.session.Session()
    return session.client(
        "sqs",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 3}, tcp_keepalive=True),
    )
