"""Discovery by listing: which keys a partition reads next.

Keys are spread over a source's partitions by a stable hash, and each partition
lists the prefix in lexical order from its watermark (``StartAfter``), keeping the
keys that are its own. That needs no AWS-side set-up and no state beyond the
watermark.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from typing import Any

from dataflow.config import SourceConfig

__all__ = ["ListedObject", "Lister", "shard_of", "skip_reason"]

_CLOUDTRAIL_DIGEST = re.compile(r"/CloudTrail-Digest/|_CloudTrail-Digest_")


def shard_of(key: str, shards: int) -> int:
    """The partition index that owns ``key`` (stable across processes and restarts)."""
    return zlib.crc32(key.encode()) % shards


def skip_reason(src: SourceConfig, key: str) -> str | None:
    """Why a listed key is not read, or None if it is."""
    if key.endswith("/"):
        return "folder marker"
    if src.format == "cloudtrail" and _CLOUDTRAIL_DIGEST.search(key):
        return "CloudTrail digest file"
    for pattern in src.exclude:
        if re.search(pattern, key):
            return f"matches exclude pattern {pattern!r}"
    return None


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str
    etag: str
    size: int


class Lister:
    """Lists one partition's keys of one source, in lexical order."""

    def __init__(self, s3: Any, src: SourceConfig, shard: int, shards: int) -> None:
        self._s3 = s3
        self._src = src
        self._shard = shard
        self._shards = shards
        self.skipped = 0
        """Keys passed over (digests, excluded, other partitions' keys are not counted)."""

    def list_after(self, after: str, max_keys: int = 1000) -> list[ListedObject]:
        """Up to ``max_keys`` of this partition's keys after ``after``, oldest name first.

        :raises botocore.exceptions.ClientError: As raised by ``ListObjectsV2``.
        """
        out: list[ListedObject] = []
        kwargs: dict[str, Any] = {"Bucket": self._src.bucket, "Prefix": self._src.prefix}
        start = max(after, self._src.start_after)
        if start:
            kwargs["StartAfter"] = start
        while True:
            resp = self._s3.list_objects_v2(**kwargs)
            for item in resp.get("Contents", ()):
                key = item["Key"]
                if shard_of(key, self._shards) != self._shard:
                    continue
                if skip_reason(self._src, key) is not None:
                    self.skipped += 1
                    continue
                out.append(ListedObject(key, item["ETag"].strip('"'), int(item["Size"])))
            if len(out) >= max_keys or not resp.get("IsTruncated"):
                return out
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]
            kwargs.pop("StartAfter", None)
