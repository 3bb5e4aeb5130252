"""S3Source: log objects from S3 buckets as a bytewax input, resumable mid-object.

Each configured source is split into ``partitions`` partitions named
``<source>:<index>/<count>``. A source found by listing (:class:`ListingPartition`) gives
each partition the keys of one hash shard: every poll lists the prefix and reads, oldest
first, the keys it has not read whose LastModified is within the look-back window (see
:mod:`connectors.s3.discovery`). A source notified through SQS
(:class:`~connectors.s3.notifications.SqsPartition`) reads the objects its messages name.
Both read through one :class:`~connectors.s3.reader.ObjectReader` and emit one
:class:`~dataflow.core.messages.RawRecord` per record. A listing partition's resume state is
the keys read within the window plus the object in progress and the offset of its next
record, so a restart neither starts that object over nor skips any of it.

Failures that may pass (throttling, 5xx, network) are retried with back-off through
``next_awake``, never by sleeping. An object that cannot be read (corrupt, truncated,
deleted, or still failing after ``READ_ATTEMPTS`` tries) becomes an
:class:`~dataflow.core.messages.ErrorRecord` and the partition moves on.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from connectors.ledger import RETENTION_SECS
from connectors.s3.config import SourceConfig
from connectors.s3.delivery import DeliveryTracker
from connectors.s3.discovery import (
    ListedObject,
    Lister,
    RecentKeys,
    SharedListing,
    next_poll,
)
from connectors.s3.errors import is_transient
from connectors.s3.notifications import SqsPartition
from connectors.s3.objects import Prefetcher
from connectors.s3.reader import (
    BATCH_RECORDS,
    READ_ATTEMPTS,
    Clock,
    Finished,
    Item,
    ObjectReader,
    Pending,
    retry_later,
)
from connectors.s3.state import PartitionState
from dataflow.core import metrics, status
from dataflow.core.backoff import Backoff

__all__ = ["BATCH_RECORDS", "READ_ATTEMPTS", "ListingPartition", "S3Source"]



def _utcnow() -> datetime:
    return datetime.now(UTC)


class ListingPartition(StatefulSourcePartition[Item, dict[str, Any]]):
    """One shard of a source found by listing: a :class:`Lister` says what to read, an
    :class:`~connectors.s3.reader.ObjectReader` reads it, :class:`PartitionState` is what a
    restart resumes from."""

    def __init__(self, s3: Any, src: SourceConfig, name: str, shard: int, shards: int,
                 resume_state: dict[str, Any] | None, *, catch_up: bool, clock: Clock,
                 journal_dir: str | None = None, keyring: Any = None,
                 journal_retention_secs: float = RETENTION_SECS,
                 mark_ends: bool = False) -> None:
        self._src = src
        self._name = name
        self._catch_up = catch_up
        self._clock = clock
        state = PartitionState.from_snapshot(resume_state, src.start_after)
        self._after = state.after
        shared = SharedListing.of(s3, src, shards) if src.lookback_secs > 0 else None
        if shared is not None:
            shared.join(shard)
        self._lister = Lister(s3, src, shard, shards, shared=shared)
        self._fetch = Prefetcher(s3, src.bucket, threads=src.fetch_threads,
                                 prefetch_max_bytes=src.prefetch_max_bytes)
        self._backoff = Backoff(base_secs=1.0, cap_secs=60.0)
        self._tracker = (DeliveryTracker(journal_dir, src.name, name, keyring=keyring,
                                         retention_secs=journal_retention_secs)
                         if journal_dir else None)
        self._reader = ObjectReader(src, name, self._fetch, self._backoff,
                                    track=self._tracker is not None, mark_ends=mark_ends)
        if state.key is not None:  # the object in work when the snapshot was taken
            self._reader.retry = Pending(state.key, state.etag, state.offset, 0, state.modified)
        self._queue: deque[ListedObject] = deque()
        self._listed_to = self._after
        self._wake_at: datetime | None = None
        self._recent: RecentKeys | None = None
        if src.lookback_secs > 0:
            not_before = 0.0
            if src.start_time:
                start = datetime.fromisoformat(src.start_time.replace("Z", "+00:00"))
                not_before = start.timestamp()
            if src.ignore_older_secs:
                not_before = max(not_before, clock().timestamp() - src.ignore_older_secs)
            self._recent = RecentKeys(src.lookback_secs, not_before, state.recent)

    # -- bytewax interface -------------------------------------------------------------

    @override
    def next_batch(self) -> list[Item]:
        if status.is_paused(self._src.name):
            self._wake_at = self._clock() + timedelta(seconds=1)
            self._report(False)
            return []
        if self._tracker is not None:
            self._tracker.check()
        now = self._clock()
        if self._wake_at is not None:
            if now < self._wake_at:
                return []
            self._wake_at = None
        out: list[Item] = []
        if self._reader.reading is None:
            out, done = self._open_next(now)
        else:
            done = None
        if self._reader.reading is not None:
            items, done = self._reader.read(BATCH_RECORDS, now)
            out.extend(items)
        if done is not None:
            self._finished(done)
        if self._backoff.wake_at is not None:
            self._wake_at, self._backoff.wake_at = self._backoff.wake_at, None
        self._report(bool(out))
        return out

    def _report(self, progressed: bool) -> None:
        r = self._reader.reading
        status.report(self._name, self._src.name, progressed=progressed,
                      busy=self._reader.busy or bool(self._queue),
                      object=r.ref.key if r is not None else None,
                      offset=r.next_offset if r is not None else None,
                      queued=len(self._queue), paused=status.is_paused(self._src.name),
                      retries=self._backoff.attempts)

    @override
    def next_awake(self) -> datetime | None:
        # Idle with objects not yet accounted for: wake now and then to keep the freshness
        # gauges current. (None means "call again at once": never delay a busy partition.)
        if self._wake_at is not None and self._tracker is not None and self._tracker.waiting:
            return min(self._wake_at, self._clock() + timedelta(seconds=1))
        return self._wake_at

    @override
    def snapshot(self) -> dict[str, Any]:
        recent = self._recent.snapshot(self._pending()) if self._recent is not None else None
        pos = self._reader.position()
        if pos is not None:
            return PartitionState(self._after, pos.key, pos.etag, pos.offset, pos.modified,
                                  recent).to_snapshot()
        return PartitionState(self._after, recent=recent).to_snapshot()

    def _pending(self) -> float:
        """Oldest LastModified among objects listed or in progress but not finished."""
        oldest = min((o.modified for o in self._queue), default=float("inf"))
        pos = self._reader.position()
        if pos is not None:
            oldest = min(oldest, pos.modified)
        return oldest

    @override
    def close(self) -> None:
        self._fetch.close()

    # -- discovery -----------------------------------------------------------------------

    def _open_next(self, now: datetime) -> tuple[list[Item], Finished | None]:
        """Open the object to retry, else the next listed one (listing when none is left)."""
        retry = self._reader.retry
        if retry is not None:
            return self._reader.open(retry, now)
        if not self._queue and not self._list(now):
            return [], None
        nxt = self._queue[0]
        return self._reader.open(Pending(nxt.key, None, 0, nxt.size, nxt.modified), now)

    def _list(self, now: datetime) -> bool:
        try:
            if self._recent is not None:
                busy = {o.key for o in self._queue}
                pos = self._reader.position()
                if pos is not None:
                    busy.add(pos.key)
                listed = self._lister.list_recent(self._recent, busy, self._pending(), self._after)
            else:
                listed = self._lister.list_after(self._listed_to)
        except Exception as ex:
            if not is_transient(ex):
                msg = (f"source {self._src.name!r}: cannot list s3://{self._src.bucket}/"
                       f"{self._src.prefix}: {ex}. Check the bucket name, the region and that "
                       "the connector's AWS role has s3:ListBucket on it.")
                raise RuntimeError(msg) from ex
            retry_later(self._src, self._name, self._backoff, "list", ex, now)
            return False
        self._backoff.reset()
        if not listed:
            if self._catch_up:
                raise StopIteration
            self._wake_at = (next_poll(now, self._src.poll_secs) if self._recent is not None
                             else now + timedelta(seconds=self._src.poll_secs))
            return False
        self._queue.extend(listed)
        metrics.OBJECTS_LISTED.labels(self._src.name).inc(len(listed))
        self._listed_to = listed[-1].key
        self._fetch.want(o.key for o in self._queue)
        return True

    def _finished(self, done: Finished) -> None:
        """An object is read to its end, or given up on: the listing state moves past it."""
        key = done.ref.key
        if self._tracker is not None:
            self._tracker.add(done.ref.id, done.emitted, done.modified or time.time())
        if self._recent is not None:
            rest = min((o.modified for o in self._queue if o.key != key), default=float("inf"))
            self._recent.add(key, done.modified, rest)
        else:  # with look-back, ``after`` stays a fixed floor (start_after, or a lexical past)
            self._after = max(self._after, key)
        self._listed_to = max(self._listed_to, key)
        if self._queue and self._queue[0].key == key:
            self._queue.popleft()
        self._fetch.want(o.key for o in self._queue)


class S3Source(FixedPartitionedSource[Item, dict[str, Any]]):
    """Records of log objects in S3, for ``op.input``.

    :arg sources: The configured sources; each contributes ``partitions`` partitions.
    :arg s3_factory: Builds a boto3 S3 client (called once per partition, on its worker).
    :arg catch_up: When True, each partition stops once it has read every object listed;
        otherwise it polls for new objects every ``poll_secs``.
    :arg clock: Current time (injectable for tests).
    :arg sqs_factory: Builds the SQS client (sources with ``discovery = "sqs"``).
    :arg client_for: Builds (S3 client, SQS client) for one source (per-source roles); when
        given, it is used instead of ``s3_factory``/``sqs_factory``.
    :arg journal_dir: The upload journal's directory (SQS sources delete a message once the
        journal has all its records).
    :arg keyring: Checks the journal lines' MACs (a forged line must not make a message be
        deleted, or an object count as delivered); None when no key is configured.
    :arg journal_retention_secs: The journal's retention (``runtime.journal_retention_secs``):
        how long the sources' view of it keeps ranges of objects nobody waits for.
    :arg mark_ends: Emit an :class:`~dataflow.core.messages.ObjectEnd` after each object
        (for a flow that aggregates rows per object).
    :arg resumable: The flow runs with a recovery store. SQS partitions that start with no
        snapshot then read again the objects of the messages their deletion journal holds
        (a kill before the first snapshot committed); without a recovery store every start
        has no snapshot, and reading the last hour's objects again at each would be waste.
    """

    def __init__(self, sources: list[SourceConfig], s3_factory: Callable[[], Any], *,
                 catch_up: bool = False, clock: Clock = _utcnow,
                 sqs_factory: Callable[[], Any] | None = None,
                 journal_dir: str | None = None,
                 client_for: Callable[[SourceConfig, str], Any] | None = None,
                 keyring: Any = None, journal_retention_secs: float = RETENTION_SECS,
                 mark_ends: bool = False, resumable: bool = False) -> None:
        self._sources = {s.name: s for s in sources}
        self._resumable = resumable
        self._keyring = keyring
        self._retention = journal_retention_secs
        self._mark_ends = mark_ends
        self._client_for = client_for
        self._s3_factory = s3_factory
        self._sqs_factory = sqs_factory
        self._journal_dir = journal_dir
        self._catch_up = catch_up
        self._clock = clock
        sqs = [s.name for s in sources if s.discovery == "sqs"]
        if sqs and ((sqs_factory is None and client_for is None) or journal_dir is None):
            msg = (f"sources {sqs} use SQS notifications: S3Source needs an sqs_factory and the "
                   "journal_dir (messages are deleted once the journal has their records)")
            raise ValueError(msg)

    @staticmethod
    def part_name(source: str, index: int, count: int) -> str:
        """Stable partition name: ``<source>:<index>/<count>``."""
        return f"{source}:{index}/{count}"

    @override
    def list_parts(self) -> list[str]:
        return [self.part_name(s.name, i, s.partitions)
                for s in self._sources.values() for i in range(s.partitions)]

    @override
    def build_part(self, step_id: str, for_part: str,
                   resume_state: dict[str, Any] | None) -> StatefulSourcePartition[Item, Any]:
        source, _, shard = for_part.rpartition(":")
        index, _, count = shard.partition("/")
        src = self._sources[source]
        if int(count) != src.partitions:
            msg = (f"partition {for_part!r} was made for {count} partitions but source {source!r} "
                   f"now has {src.partitions}; changing partitions needs a fresh recovery store")
            raise ValueError(msg)
        s3 = self._client_for(src, "s3") if self._client_for else self._s3_factory()
        if src.discovery == "sqs":
            assert self._journal_dir is not None
            if self._client_for is not None:
                sqs = self._client_for(src, "sqs")
            else:
                assert self._sqs_factory is not None  # checked in __init__
                sqs = self._sqs_factory()
            return SqsPartition(s3, sqs, src, for_part, self._journal_dir,
                                catch_up=self._catch_up, clock=self._clock,
                                keyring=self._keyring, resume_state=resume_state,
                                journal_retention_secs=self._retention,
                                mark_ends=self._mark_ends, resumable=self._resumable)
        return ListingPartition(s3, src, for_part, int(index), int(count),
                            resume_state, catch_up=self._catch_up, clock=self._clock,
                            journal_dir=self._journal_dir, keyring=self._keyring,
                            journal_retention_secs=self._retention,
                            mark_ends=self._mark_ends)
