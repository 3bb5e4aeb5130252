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

With look-back, the partitions of one process share their listings (:class:`SharedListing`),
and poll at the same moments (multiples of ``poll_secs``): a partition that wants to list
takes the listing another partition finished at most :data:`REUSE_SECS` ago, if it began
after the partition's own previous request, and lists anew for all of them otherwise. So a
process makes one full listing per poll, not one per partition: with 4 partitions, a
quarter of the ``ListObjectsV2`` requests (each 1,000 keys of a prefix is a request,
billed, and counted against the prefix's request rate).
"""

from __future__ import annotations

import math
import re
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from connectors.s3.config import SourceConfig

__all__ = ["REUSE_SECS", "ListedObject", "Lister", "RecentKeys", "SharedListing", "next_poll",
           "shard_of", "skip_reason"]

REUSE_SECS = 1.0
"""A listing finished at most this long ago may serve another partition's request: an
object landing in between is found at that partition's next poll instead."""
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

    def __init__(self, s3: Any, src: SourceConfig, shard: int, shards: int, *,
                 shared: SharedListing | None = None) -> None:
        self._s3 = s3
        self._src = src
        self._shard = shard
        self._shards = shards
        self._shared = shared
        self.skipped = 0
        """Keys passed over (digests, excluded, other partitions' keys are not counted)."""

    def _pages(self, after: str) -> Iterator[tuple[list[ListedObject], bool]]:
        """This partition's keys after ``after``, one listing page at a time, with whether
        more pages follow."""
        return _list_pages(self._s3, self._src, after, (self._shard, self._shards))

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
        if self._shared is not None:
            listed = self._shared.objects(self._s3, self._shard, after,
                                          recent.horizon(pending))
        else:
            listed = [obj for page, _ in self._pages(after) for obj in page]
        out = [obj for obj in listed if obj.key not in queued and recent.wanted(obj, pending)
               and skip_reason(self._src, obj.key) is None]
        out.sort(key=lambda o: (o.modified, o.key))
        recent.listed()
        return out


def _list_pages(s3: Any, src: SourceConfig, after: str,
                only: tuple[int, int] | None = None) -> Iterator[tuple[list[ListedObject], bool]]:
    """The source's keys after ``after`` (and its ``start_after``), one ``ListObjectsV2``
    page at a time, with whether more pages follow; ``only``: (shard, shards), that shard's
    keys alone."""
    kwargs: dict[str, Any] = {"Bucket": src.bucket, "Prefix": src.prefix}
    start = max(after, src.start_after)
    if start:
        kwargs["StartAfter"] = start
    while True:
        resp = s3.list_objects_v2(**kwargs)
        page = [ListedObject(item["Key"], item["ETag"].strip('"'), int(item["Size"]),
                             item["LastModified"].timestamp())
                for item in resp.get("Contents", ())
                if only is None or shard_of(item["Key"], only[1]) == only[0]]
        more = bool(resp.get("IsTruncated"))
        yield page, more
        if not more:
            return
        kwargs["ContinuationToken"] = resp["NextContinuationToken"]
        kwargs.pop("StartAfter", None)


class SharedListing:
    """The last look-back listing of one source's prefix, for its partitions in this process.

    Each partition :meth:`join` s when it is built and asks for its objects with
    :meth:`objects`. A listing serves a partition's request if it began after that
    partition's previous request (for its first, after it joined) and finished at most
    :data:`REUSE_SECS` before: it then holds at least what the partition's own listing
    would have held a moment earlier. Otherwise the partition lists anew, for every
    partition, while the others wait for it (workers are threads). Partitions poll on the
    same grid (:func:`next_poll`), so their requests come together.

    Kept per local partition are only the objects modified at or after the lowest of their
    look-back horizons (a partition that has not asked yet counts as no horizon at all):
    each partition filters out the rest itself. A partition's share is let go when it takes
    it, so between polls little is held: about what the partitions' own listings held
    together, for as long.
    """

    _registry: ClassVar[weakref.WeakValueDictionary[tuple[Any, ...], SharedListing]] = (
        weakref.WeakValueDictionary())
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, src: SourceConfig, shards: int) -> None:
        self._src = src
        self._shards = shards
        self._lock = threading.Lock()
        self._floors: dict[int, float] = {}
        """Each local partition's look-back horizon when it last asked (-inf: not yet)."""
        self._asked: dict[int, float] = {}
        """When each local partition last asked (or joined), on the monotonic clock."""
        self._began = self._ended = float("-inf")
        self._after = ""
        self._objects: dict[int, list[ListedObject]] = {}

    @classmethod
    def of(cls, s3: Any, src: SourceConfig, shards: int) -> SharedListing:
        """The process's shared listing of ``src`` (made on first use, kept while in use).

        Sources are told apart by name, bucket, prefix, ``start_after`` and partition count,
        and by the S3 endpoint their client talks to."""
        endpoint = getattr(getattr(s3, "meta", None), "endpoint_url", None)
        key = (src.name, src.bucket, src.prefix, src.start_after, shards, endpoint)
        with cls._registry_lock:
            shared = cls._registry.get(key)
            if shared is None:
                shared = cls._registry[key] = cls(src, shards)
            return shared

    def join(self, shard: int) -> None:
        """A partition of this process reads ``shard``: it has no horizon yet, and no
        listing begun before now is its."""
        with self._lock:
            self._floors[shard] = float("-inf")
            self._asked[shard] = time.monotonic()

    def objects(self, s3: Any, shard: int, after: str, horizon: float) -> list[ListedObject]:
        """``shard``'s objects after ``after``: from the last listing when it may serve
        this request, else from a new one.

        :arg horizon: The partition's look-back horizon: it wants nothing modified before.
        :raises botocore.exceptions.ClientError: As raised by ``ListObjectsV2``.
        """
        asked = time.monotonic()
        with self._lock:
            previous = self._asked.get(shard, asked)
            self._asked[shard] = asked
            self._floors[shard] = horizon
            # A partition takes its share once: its next request needs a later listing.
            fresh = (self._began >= previous and asked - self._ended <= REUSE_SECS
                     and after == self._after)
            got = self._objects.pop(shard, None) if fresh else None
            if got is None:
                began = time.monotonic()
                floor = min(self._floors.values())
                objects: dict[int, list[ListedObject]] = {s: [] for s in self._floors}
                for page, _ in _list_pages(s3, self._src, after):
                    for obj in page:
                        mine = objects.get(shard_of(obj.key, self._shards))
                        if mine is not None and obj.modified >= floor:
                            mine.append(obj)
                got = objects.pop(shard)
                self._objects, self._after = objects, after
                self._began, self._ended = began, time.monotonic()
            return got


def next_poll(now: datetime, poll_secs: float) -> datetime:
    """The first multiple of ``poll_secs`` (since the epoch) after ``now``: partitions that
    poll on this grid list together, and so share their listings."""
    ts = now.timestamp()
    return now + timedelta(seconds=(math.floor(ts / poll_secs) + 1) * poll_secs - ts)
