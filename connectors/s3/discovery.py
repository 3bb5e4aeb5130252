"""Discovery by listing: which keys a partition reads next.

Keys are spread over a source's partitions by a stable hash; each partition lists the
prefix and keeps the keys that are its own. That needs no AWS-side set-up.

Two ways to list:

- **Look-back** (``lookback_secs > 0``, the default): every poll lists the whole prefix
  and reads the keys not read yet whose ``LastModified`` is within ``lookback_secs`` of
  the newest object read so far, oldest first. A log file delivered late (CloudTrail and
  VPC Flow Logs do not deliver in key order) or under a key that sorts before the others
  (a new account or region under ``AWSLogs/``) has a recent LastModified, so it is found.
  State is the set of keys read within the window (:class:`RecentKeys`): bounded by the
  arrival rate times the window, however many objects the bucket holds. The price is one
  full listing per poll; for buckets of millions of keys use SQS notifications.
- **Lexical** (``lookback_secs = 0``): list from a watermark key with ``StartAfter``;
  cheapest, but only correct when new keys always sort after the old ones.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from connectors.s3.config import SourceConfig

__all__ = ["ListedObject", "Lister", "RecentKeys", "shard_of", "skip_reason"]

_CLOUDTRAIL_DIGEST = re.compile(r"/CloudTrail-Digest/|_CloudTrail-Digest_")


def shard_of(key: str, shards: int) -> int:
    """The partition index that owns ``key`` (stable across processes and restarts)."""
    return zlib.crc32(key.encode()) % shards


def skip_reason(src: SourceConfig, key: str) -> str | None:
    """Why a listed key is not read, or None if it is."""
    if key.endswith("/"):
        return "folder marker"
    if src.format in ("cloudtrail", "auto") and _CLOUDTRAIL_DIGEST.search(key):
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
    modified: float = 0.0
    """LastModified, epoch seconds."""


class RecentKeys:
    """Keys read whose LastModified is within the look-back window of the newest one read.

    The window's lower edge (the horizon) never passes an object that was listed but not
    read yet, so a snapshot taken with a backlog loses nothing: it records the horizon
    that still covers the backlog.

    :arg lookback_secs: Width of the window.
    :arg not_before: Objects modified before this (epoch seconds) are never read
        (``start_time`` / ``ignore_older_secs``).
    """

    def __init__(self, lookback_secs: float, not_before: float = 0.0,
                 snap: dict[str, Any] | None = None) -> None:
        self._lookback = lookback_secs
        self._not_before = not_before
        self.newest = float(snap.get("newest", 0.0)) if snap else 0.0
        self._restored_floor = float(snap.get("floor", 0.0)) if snap else None
        self._seen: dict[str, float] = dict(snap.get("seen", {})) if snap else {}

    def horizon(self, pending: float = float("inf")) -> float:
        """Objects modified before this are taken as read; ``pending`` is the oldest
        LastModified of the objects listed but not read yet."""
        if not self.newest:
            return self._not_before
        edge = min(self.newest - self._lookback, pending)
        if self._restored_floor is not None:
            edge = min(edge, self._restored_floor)
        return max(self._not_before, edge)

    def wanted(self, obj: ListedObject, pending: float = float("inf")) -> bool:
        return obj.modified >= self.horizon(pending) and obj.key not in self._seen

    def listed(self) -> None:
        """A listing after a restore has queued the backlog: its floor is no longer needed."""
        self._restored_floor = None

    def add(self, key: str, modified: float, pending: float = float("inf")) -> None:
        """``key`` has been read to the end (or given up on)."""
        self._seen[key] = modified
        if modified > self.newest:
            self.newest = modified
            horizon = self.horizon(pending)
            for k in [k for k, t in self._seen.items() if t < horizon]:
                del self._seen[k]

    def __len__(self) -> int:
        return len(self._seen)

    def snapshot(self, pending: float = float("inf")) -> dict[str, Any]:
        return {"newest": self.newest, "floor": self.horizon(pending), "seen": dict(self._seen)}


class Lister:
    """Lists one partition's keys of one source: those not read yet within the look-back
    window, oldest LastModified first (:meth:`list_recent`), or, with ``lookback_secs = 0``,
    those after a watermark key, in name order (:meth:`list_after`)."""

    def __init__(self, s3: Any, src: SourceConfig, shard: int, shards: int) -> None:
        self._s3 = s3
        self._src = src
        self._shard = shard
        self._shards = shards
        self.skipped = 0
        """Keys passed over (digests, excluded, other partitions' keys are not counted)."""

    def _pages(self, after: str) -> Iterator[tuple[list[ListedObject], bool]]:
        """This partition's keys after ``after``, one listing page at a time, with whether
        more pages follow."""
        kwargs: dict[str, Any] = {"Bucket": self._src.bucket, "Prefix": self._src.prefix}
        start = max(after, self._src.start_after)
        if start:
            kwargs["StartAfter"] = start
        while True:
            resp = self._s3.list_objects_v2(**kwargs)
            page = [ListedObject(item["Key"], item["ETag"].strip('"'), int(item["Size"]),
                                 item["LastModified"].timestamp())
                    for item in resp.get("Contents", ())
                    if shard_of(item["Key"], self._shards) == self._shard]
            more = bool(resp.get("IsTruncated"))
            yield page, more
            if not more:
                return
            kwargs["ContinuationToken"] = resp["NextContinuationToken"]
            kwargs.pop("StartAfter", None)

    def list_after(self, after: str, max_keys: int = 1000) -> list[ListedObject]:
        """Up to ``max_keys`` of this partition's keys after ``after``, in name order.

        :raises botocore.exceptions.ClientError: As raised by ``ListObjectsV2``.
        """
        out: list[ListedObject] = []
        for page, _ in self._pages(after):
            for obj in page:
                if skip_reason(self._src, obj.key) is not None:
                    self.skipped += 1
                    continue
                out.append(obj)
            if len(out) >= max_keys:
                break
        return out

    def list_recent(self, recent: RecentKeys, queued: set[str],
                    pending: float = float("inf"), after: str = "") -> list[ListedObject]:
        """This partition's keys not read yet within the look-back window, oldest first.

        :arg after: Keys at or before this are done (``start_after``, or the watermark of
            a partition that listed by key before).

        :raises botocore.exceptions.ClientError: As raised by ``ListObjectsV2``.
        """
        out = [obj for page, _ in self._pages(after) for obj in page
               if obj.key not in queued and recent.wanted(obj, pending)
               and skip_reason(self._src, obj.key) is None]
        out.sort(key=lambda o: (o.modified, o.key))
        recent.listed()
        return out
