"""S3Source: log objects from S3 buckets as a bytewax input, resumable mid-object.

Each configured source is split into ``partitions`` partitions named
``<source>:<index>/<count>``; a key belongs to one partition by a stable hash. A
partition lists its keys in lexical order, reads each object as a stream, and emits
one :class:`~dataflow.core.messages.RawRecord` per record. Its resume state is the last
finished key plus the object in progress and the offset of the next record, so a
restart neither starts that object over nor skips any of it.

Failures that may pass (throttling, 5xx, network) are retried with back-off through
``next_awake``, never by sleeping. An object that cannot be read (corrupt, truncated,
deleted, or still failing after ``READ_ATTEMPTS`` tries) becomes an
:class:`~dataflow.core.messages.ErrorRecord` and the partition moves on.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from typing_extensions import override

from connectors.s3.config import SourceConfig
from connectors.s3.delivery import DeliveryTracker, add_offset
from connectors.s3.discovery import ListedObject, Lister, RecentKeys
from connectors.s3.errors import ObjectReadError, is_transient
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.objects import Prefetcher
from connectors.s3.records import FormatUnknown, Record, object_records
from connectors.s3.state import PartitionState
from dataflow.core import metrics, status
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord
from operators.formats import TextFormat
from operators.formats.registry import text_format

__all__ = ["READ_ATTEMPTS", "S3Source"]

log = logging.getLogger(__name__)

READ_ATTEMPTS = 8
"""Tries of one object before it is reported as failed and skipped."""

BATCH_RECORDS = 2000
"""Most records emitted by one ``next_batch`` call (keeps epochs and snapshots moving)."""

Item = RawRecord | ErrorRecord
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Reading:
    """The object a partition is reading: its ref and the iterator of its records."""

    def __init__(self, ref: ObjectRef, records: Iterator[Record], start: int,
                 modified: float = 0.0) -> None:
        self.ref = ref
        self.records = records
        self.next_offset = start
        self.modified = modified


class _S3Partition(StatefulSourcePartition[Item, dict]):
    def __init__(self, s3: Any, src: SourceConfig, name: str, shard: int, shards: int,
                 resume_state: dict | None, *, catch_up: bool, clock: Clock,
                 journal_dir: str | None = None, keyring: Any = None) -> None:
        self._src = src
        self._name = name
        self._catch_up = catch_up
        self._clock = clock
        state = PartitionState.from_snapshot(resume_state, src.start_after)
        self._after = state.after
        self._resume = state if state.key is not None else None
        self._lister = Lister(s3, src, shard, shards)
        self._fetch = Prefetcher(s3, src.bucket, threads=src.fetch_threads,
                                 prefetch_max_bytes=src.prefetch_max_bytes)
        self._queue: deque[ListedObject] = deque()
        self._listed_to = self._after
        self._listing_done = False
        self._reading: _Reading | None = None
        self._wake_at: datetime | None = None
        self._attempts = 0
        self._errors: list[ErrorRecord] = []
        self._parsers: dict[str, TextFormat | None] = {}
        self._modified = state.modified  # LastModified of the object being opened or read
        self._tracker = (DeliveryTracker(journal_dir, src.name, name, keyring=keyring)
                         if journal_dir else None)
        self._emitted: list[list[int]] = []  # offsets emitted of the object being read
        self._recent: RecentKeys | None = None
        if src.lookback_secs > 0:
            not_before = 0.0
            if src.start_time:
                not_before = datetime.fromisoformat(src.start_time.replace("Z", "+00:00")).timestamp()
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
        if self._wake_at is not None:
            if self._clock() < self._wake_at:
                return []
            self._wake_at = None
        out: list[Item] = []
        if self._reading is not None or self._open_next():
            out = self._read_some()
        if self._errors:
            out.extend(self._errors)
            self._errors.clear()
        self._report(bool(out))
        return out

    def _report(self, progressed: bool) -> None:
        r = self._reading
        status.report(self._name, self._src.name, progressed=progressed,
                      busy=r is not None or bool(self._queue) or self._resume is not None,
                      object=r.ref.key if r is not None else None,
                      offset=r.next_offset if r is not None else None,
                      queued=len(self._queue), paused=status.is_paused(self._src.name),
                      retries=self._attempts)

    @override
    def next_awake(self) -> datetime | None:
        # Idle with objects not yet accounted for: wake now and then to keep the freshness
        # gauges current. (None means "call again at once": never delay a busy partition.)
        if self._wake_at is not None and self._tracker is not None and self._tracker.waiting:
            return min(self._wake_at, self._clock() + timedelta(seconds=1))
        return self._wake_at

    @override
    def snapshot(self) -> dict:
        recent = self._recent.snapshot(self._pending()) if self._recent is not None else None
        if self._reading is not None:
            r = self._reading
            return PartitionState(self._after, r.ref.key, r.ref.etag, r.next_offset,
                                  r.modified, recent).to_snapshot()
        if self._resume is not None:
            st = self._resume
            return PartitionState(st.after, st.key, st.etag, st.offset, st.modified,
                                  recent).to_snapshot()
        return PartitionState(self._after, recent=recent).to_snapshot()

    def _pending(self) -> float:
        """Oldest LastModified among objects listed or in progress but not finished."""
        oldest = min((o.modified for o in self._queue), default=float("inf"))
        if self._reading is not None or self._resume is not None:
            oldest = min(oldest, self._modified)
        return oldest

    @override
    def close(self) -> None:
        self._fetch.close()

    # -- discovery -----------------------------------------------------------------------

    def _open_next(self) -> bool:
        """Open the next object; False when there is nothing to read right now."""
        if self._resume is not None:
            st = self._resume
            assert st.key is not None
            self._modified = st.modified
            return self._open(st.key, st.etag, st.offset, size=0)
        if not self._queue and not self._list():
            return False
        nxt = self._queue[0]
        self._modified = nxt.modified
        return self._open(nxt.key, None, 0, size=nxt.size)

    def _list(self) -> bool:
        try:
            if self._recent is not None:
                busy = {o.key for o in self._queue}
                if self._resume is not None and self._resume.key is not None:
                    busy.add(self._resume.key)
                listed = self._lister.list_recent(self._recent, busy, self._pending(), self._after)
            else:
                listed = self._lister.list_after(self._listed_to)
        except Exception as ex:
            if not is_transient(ex):
                msg = (f"source {self._src.name!r}: cannot list s3://{self._src.bucket}/"
                       f"{self._src.prefix}: {ex}. Check the bucket name, the region and that "
                       "the connector's AWS role has s3:ListBucket on it.")
                raise RuntimeError(msg) from ex
            self._backoff("list", ex)
            return False
        self._attempts = 0
        if not listed:
            if self._catch_up:
                raise StopIteration
            self._wake_at = self._clock() + timedelta(seconds=self._src.poll_secs)
            return False
        self._queue.extend(listed)
        metrics.OBJECTS_LISTED.labels(self._src.name).inc(len(listed))
        self._listed_to = listed[-1].key
        self._fetch.want(o.key for o in self._queue)
        return True

    # -- reading ------------------------------------------------------------------------

    def _open(self, key: str, etag: str | None, offset: int, size: int) -> bool:
        try:
            body = self._fetch.take(key, etag)
        except ObjectReadError as ex:
            if ex.transient and self._attempts + 1 < READ_ATTEMPTS:
                self._backoff("get", ex)
                return False
            if ex.gone and etag is not None:
                # The version being read was overwritten: read the new version from the start.
                log.warning("s3://%s/%s changed while being read; reading the new version",
                            self._src.bucket, key)
                self._resume = PartitionState(self._after, key, None, 0, self._modified)
                return False
            self._fail_object(ObjectRef(self._src.name, self._name, self._src.bucket, key,
                                        etag or "", size), offset, ex.reason)
            return False
        self._attempts = 0
        src = self._src
        try:
            fmt, recs = object_records(key, body.chunks(), src.format, skip=offset,
                                       max_bytes=src.max_object_bytes,
                                       max_record_bytes=src.max_record_bytes,
                                       max_ratio=src.max_compression_ratio,
                                       parser_for=self._parser)
        except Exception as ex:  # whatever one object does, it fails that object only
            body.close()
            if getattr(ex, "transient", False) and self._attempts + 1 < READ_ATTEMPTS:
                self._resume = PartitionState(self._after, key, body.etag, offset, self._modified)
                self._backoff("read", ex)
                return False
            ref = ObjectRef(src.name, self._name, src.bucket, key, body.etag, body.size)
            ours = isinstance(ex, (ObjectReadError, FormatUnknown, FramingError))
            self._fail_object(ref, offset, str(ex) if ours else f"{type(ex).__name__}: {ex}")
            return False
        ref = ObjectRef(src.name, self._name, src.bucket, key, body.etag, body.size, fmt)
        self._reading = _Reading(ref, recs, offset, self._modified)
        self._resume = None
        return True

    def _parser(self, fmt: str) -> TextFormat | None:
        if fmt not in self._parsers:
            self._parsers[fmt] = text_format(fmt, fields=self._src.fields,
                                             delimiter=self._src.delimiter)
        return self._parsers[fmt]

    def _read_some(self) -> list[Item]:
        r = self._reading
        assert r is not None
        out: list[Item] = []
        track = self._tracker is not None
        try:
            for rec in r.records:
                if rec.__class__ is UnreadableRecord:  # too large or too deep: that record only
                    offset = rec.offset
                    out.append(self._unreadable(r.ref, rec))
                else:
                    offset, data, header = rec
                    out.append(RawRecord(r.ref, offset, data, header))
                r.next_offset = offset + 1
                if track:
                    add_offset(self._emitted, offset)
                if len(out) >= BATCH_RECORDS:
                    break
            else:
                self._finish(r.ref, "completed")
        except FramingError as ex:
            self._fail_object(r.ref, ex.offset, ex.reason)
        except Exception as ex:
            err = ex if isinstance(ex, ObjectReadError) else None
            transient = err.transient if err is not None else is_transient(ex)
            if transient and self._attempts + 1 < READ_ATTEMPTS:
                # Read it again from where it broke: same version, records from next_offset.
                self._resume = PartitionState(self._after, r.ref.key, r.ref.etag, r.next_offset,
                                              r.modified)
                self._reading = None
                self._backoff("read", ex)
            else:
                # Non-transient, or still failing after READ_ATTEMPTS: this object fails from
                # here on, never the flow (a bug or a hostile object must not stop ingestion).
                reason = err.reason if err is not None else f"{type(ex).__name__}: {ex}"
                if err is None and not transient:
                    log.exception("%s: unexpected error at record %d", r.ref.uri, r.next_offset)
                self._fail_object(r.ref, r.next_offset, reason)
        metrics.RECORDS_READ.labels(self._src.name).inc(len(out))
        return out

    def _unreadable(self, ref: ObjectRef, rec: UnreadableRecord) -> ErrorRecord:
        """The error record of one record the framer could delimit but not hand on; the
        object goes on with the next record."""
        log.error("%s record %d: %s", ref.uri, rec.offset, rec.reason)
        metrics.ERRORS.labels(self._src.name, "parse", rec.code).inc()
        return ErrorRecord(ref, rec.offset, "parse", rec.reason, rec.sample, (), rec.code)

    def _finish(self, ref: ObjectRef, outcome: str) -> None:
        metrics.OBJECTS.labels(self._src.name, outcome).inc()
        metrics.OBJECT_BYTES.labels(self._src.name).inc(ref.size)
        if self._tracker is not None:
            self._tracker.add(ref.id, self._emitted, self._modified or time.time())
        self._emitted = []
        if self._recent is not None:
            rest = min((o.modified for o in self._queue if o.key != ref.key), default=float("inf"))
            self._recent.add(ref.key, self._modified, rest)
        else:  # with look-back, ``after`` stays a fixed floor (start_after, or a lexical past)
            self._after = max(self._after, ref.key)
        self._listed_to = max(self._listed_to, ref.key)
        if self._queue and self._queue[0].key == ref.key:
            self._queue.popleft()
        self._fetch.want(o.key for o in self._queue)
        self._reading = None
        self._resume = None
        self._attempts = 0

    def _fail_object(self, ref: ObjectRef, offset: int | None, reason: str) -> None:
        """Report an object that cannot be read (from ``offset`` on) and move past it."""
        log.error("%s: giving up on this object at record %s: %s", ref.uri, offset, reason)
        if self._tracker is not None:
            add_offset(self._emitted, offset or 0)  # the dead-letter journal marks it and the rest
        metrics.ERRORS.labels(self._src.name, "read", "object_unreadable").inc()
        self._finish(ref, "failed")
        self._errors.append(ErrorRecord(ref, offset, "read", reason, code="object_unreadable"))

    def _backoff(self, operation: str, ex: BaseException) -> None:
        self._attempts += 1
        metrics.OBJECT_RETRIES.labels(self._src.name, operation).inc()
        delay = min(60.0, 0.5 * 2 ** self._attempts) * random.uniform(0.5, 1.0)
        log.warning("source %s partition %s: %s failed (attempt %d), retrying in %.1fs: %s",
                    self._src.name, self._name, operation, self._attempts, delay, ex)
        self._wake_at = self._clock() + timedelta(seconds=delay)


class S3Source(FixedPartitionedSource[Item, dict]):
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
    """

    def __init__(self, sources: list[SourceConfig], s3_factory: Callable[[], Any], *,
                 catch_up: bool = False, clock: Clock = _utcnow,
                 sqs_factory: Callable[[], Any] | None = None,
                 journal_dir: str | None = None,
                 client_for: Callable[[SourceConfig, str], Any] | None = None,
                 keyring: Any = None) -> None:
        self._sources = {s.name: s for s in sources}
        self._keyring = keyring
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
    def build_part(self, step_id: str, for_part: str, resume_state: dict | None) -> _S3Partition:
        source, _, shard = for_part.rpartition(":")
        index, _, count = shard.partition("/")
        src = self._sources[source]
        if int(count) != src.partitions:
            msg = (f"partition {for_part!r} was made for {count} partitions but source {source!r} "
                   f"now has {src.partitions}; changing partitions needs a fresh recovery store")
            raise ValueError(msg)
        s3 = self._client_for(src, "s3") if self._client_for else self._s3_factory()
        if src.discovery == "sqs":
            from connectors.s3.notifications import SqsPartition

            assert self._journal_dir is not None
            sqs = self._client_for(src, "sqs") if self._client_for else self._sqs_factory()
            return SqsPartition(s3, sqs, src, for_part, self._journal_dir,
                                catch_up=self._catch_up, clock=self._clock,
                                keyring=self._keyring)
        return _S3Partition(s3, src, for_part, int(index), int(count),
                            resume_state, catch_up=self._catch_up, clock=self._clock,
                            journal_dir=self._journal_dir, keyring=self._keyring)
