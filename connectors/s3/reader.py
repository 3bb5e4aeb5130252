"""One object reader, composed into both discovery modes.

The listing partition and the SQS partition find objects differently, but read them the
same way (as Filebeat's S3 poller and SQS reader share one object processor): fetch (from
the prefetcher), decompress, frame, skip to the resume offset, and turn what fails into
error records. :class:`ObjectReader` holds that work for one object at a time; a partition
says what to open and learns, through :class:`Finished`, when an object is done.

Failures that may pass (throttling, 5xx, network) are retried from the record where they
broke, with back-off through the partition's ``next_awake``, never by sleeping; after
``READ_ATTEMPTS`` tries, or on any other failure, the object fails from that record (an
:class:`~dataflow.core.messages.ErrorRecord` at stage ``read``) and the partition moves on.
A record the framer can delimit but not hand on (too large, too deep) is an error record in
its place, and the object goes on. A record that holds nothing to send (an empty GuardDuty
envelope, see :func:`is_empty_envelope`) is counted and not emitted at all, like a blank
line: its offset is not among those the journals must account for, so no SQS message and
no freshness check waits for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from connectors.ledger import add_offset
from connectors.s3.config import SourceConfig
from connectors.s3.errors import ObjectReadError, is_transient
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.objects import Prefetcher
from connectors.s3.records import FormatUnknown, Record, object_records
from dataflow.core import metrics
from dataflow.core.backoff import Backoff
from dataflow.core.failures import failed
from dataflow.core.messages import ErrorRecord, ObjectEnd, ObjectRef, ObjectStart, RawRecord
from operators.formats import TextFormat
from operators.formats.registry import text_format

__all__ = ["BATCH_RECORDS", "READ_ATTEMPTS", "Clock", "Finished", "Item", "ObjectReader", "Pending",
           "is_empty_envelope", "retry_later"]

log = logging.getLogger(__name__)

READ_ATTEMPTS = 8
"""Tries of one object before it is reported as failed and skipped."""

BATCH_RECORDS = 2000
"""Most records emitted by one ``next_batch`` call (keeps epochs and snapshots moving)."""

Item = RawRecord | ErrorRecord | ObjectEnd | ObjectStart
Clock = Callable[[], datetime]

_ENVELOPE_BYTES = 64
"""Longer than any spelling of an empty envelope worth recognising (spaces included)."""


def is_empty_envelope(fmt: str, data: bytes) -> bool:
    """Whether a record is exactly an empty GuardDuty envelope: a JSON object whose only key
    is ``findings``, holding an empty list (``{"findings":[]}``). It carries no finding, so
    it is neither a row nor a bad record."""
    if fmt != "guardduty" or len(data) > _ENVELOPE_BYTES or b"findings" not in data:
        return False
    try:
        return bool(orjson.loads(data) == {"findings": []})
    except orjson.JSONDecodeError:
        return False


@dataclass(frozen=True)
class Pending:
    """An object to open: ``etag`` None reads the current version; records before
    ``offset`` were emitted already (a resume)."""

    key: str
    etag: str | None = None
    offset: int = 0
    size: int = 0
    modified: float = 0.0
    """LastModified, epoch seconds (the listing's look-back and freshness use it)."""


@dataclass(frozen=True)
class Finished:
    """An object read to its end, or given up on."""

    ref: ObjectRef
    outcome: str
    """``completed`` or ``failed``."""
    emitted: list[list[int]] = field(default_factory=list)
    """Offsets emitted (records and error records), as merged ``[start, end)`` ranges; a
    failure's offset stands for the rest of the object (the dead-letter journal marks it)."""
    modified: float = 0.0


class _Reading:
    """The object being read: its ref and the iterator of its records."""

    __slots__ = ("modified", "next_offset", "records", "ref")

    def __init__(self, ref: ObjectRef, records: Iterator[Record | UnreadableRecord], start: int,
                 modified: float) -> None:
        self.ref = ref
        self.records = records
        self.next_offset = start
        self.modified = modified


class ObjectReader:
    """Reads the objects a partition opens, one at a time.

    :arg partition: The partition's name (error records and logs carry it).
    :arg backoff: The partition's back-off: a transient failure here sets its ``wake_at``.
    :arg track: Keep the emitted offsets (for the journals' "accounted for" checks).
    :arg mark_ends: Emit an :class:`~dataflow.core.messages.ObjectEnd` after the last item
        of each object (completed or failed), and an
        :class:`~dataflow.core.messages.ObjectStart` before the first when it is read from
        its first record, for steps that aggregate per object.
    """

    def __init__(self, src: SourceConfig, partition: str, fetch: Prefetcher,
                 backoff: Backoff, *, track: bool = True, mark_ends: bool = False) -> None:
        self._mark_ends = mark_ends
        self._src = src
        self._name = partition
        self._fetch = fetch
        self._backoff = backoff
        self._track = track
        self._parsers: dict[str, TextFormat | None] = {}
        self._emitted: list[list[int]] = []
        self._ended: list[ObjectEnd] = []
        self.reading: _Reading | None = None
        self.retry: Pending | None = None
        """The object to open again (after a transient failure, or a changed version)."""

    @property
    def busy(self) -> bool:
        """Whether an object is being read or waits to be opened again."""
        return self.reading is not None or self.retry is not None

    def position(self) -> Pending | None:
        """Where reading resumes after a restart: the object in work and its next record."""
        r = self.reading
        if r is not None:
            return Pending(r.ref.key, r.ref.etag, r.next_offset, r.ref.size, r.modified)
        return self.retry

    def open(self, p: Pending, now: datetime) -> tuple[list[Item], Finished | None]:
        """Open ``p``; what comes back is a failure's error record and its :class:`Finished`
        (else nothing: the object is being read, or will be tried again at ``wake_at``)."""
        src = self._src
        try:
            body = self._fetch.take(p.key, p.etag)
        except ObjectReadError as ex:
            if ex.transient and self._backoff.attempts + 1 < READ_ATTEMPTS:
                self.retry = p
                retry_later(self._src, self._name, self._backoff, "get", ex, now)
                return [], None
            if ex.gone and p.etag is not None:
                # The version being read was overwritten: read the new version from the start.
                log.warning("s3://%s/%s changed while being read; reading the new version",
                            src.bucket, p.key)
                self.retry = Pending(p.key, None, 0, p.size, p.modified)
                return [], None
            ref = ObjectRef(src.name, self._name, src.bucket, p.key, p.etag or "", p.size)
            return self._fail(ref, p.offset, ex.reason, p.modified)
        self._backoff.reset()
        try:
            fmt, recs = object_records(p.key, body.chunks(), src.format, skip=p.offset,
                                       max_bytes=src.max_object_bytes,
                                       max_record_bytes=src.max_record_bytes,
                                       max_ratio=src.max_compression_ratio,
                                       parser_for=self._parser)
        except Exception as ex:  # whatever one object does, it fails that object only
            body.close()
            if getattr(ex, "transient", False) and self._backoff.attempts + 1 < READ_ATTEMPTS:
                self.retry = Pending(p.key, body.etag, p.offset, body.size, p.modified)
                retry_later(self._src, self._name, self._backoff, "read", ex, now)
                return [], None
            ref = ObjectRef(src.name, self._name, src.bucket, p.key, body.etag, body.size)
            ours = isinstance(ex, (ObjectReadError, FormatUnknown, FramingError))
            return self._fail(ref, p.offset, str(ex) if ours else f"{type(ex).__name__}: {ex}",
                              p.modified)
        ref = ObjectRef(src.name, self._name, src.bucket, p.key, body.etag, body.size, fmt)
        self.reading = _Reading(ref, recs, p.offset, p.modified)
        self.retry = None
        # Read from its first record (SQS reads a taken-back object again from the start):
        # what an earlier read summed of it must not count twice.
        return ([ObjectStart(ref)] if self._mark_ends and p.offset == 0 else []), None

    def read(self, limit: int, now: datetime) -> tuple[list[Item], Finished | None]:
        """Up to ``limit`` items of the object being read, and :class:`Finished` when it ended
        (read to the end, or failed) with this call."""
        r = self.reading
        assert r is not None
        out: list[Item] = []
        done: Finished | None = None
        track, emitted = self._track, self._emitted
        fmt = r.ref.format
        envelopes = fmt == "guardduty"  # decided once per object, not per record
        try:
            for rec in r.records:
                if isinstance(rec, UnreadableRecord):  # too large or too deep: that record only
                    offset = rec.offset
                    out.append(self._unreadable(r.ref, rec))
                else:
                    offset, data, header = rec
                    if envelopes and is_empty_envelope(fmt, data):  # not emitted, not waited on
                        r.next_offset = offset + 1
                        metrics.RECORDS_SKIPPED_EMPTY.labels(self._src.name, fmt).inc()
                        continue
                    out.append(RawRecord(r.ref, offset, data, header))
                r.next_offset = offset + 1
                if track:
                    add_offset(emitted, offset)
                if len(out) >= limit:
                    break
            else:
                done = self._finish(r.ref, "completed", r.modified)
                out += self._take_ends()
        except FramingError as ex:
            errs, done = self._fail(r.ref, ex.offset, ex.reason, r.modified)
            out.extend(errs)
        except Exception as ex:
            err = ex if isinstance(ex, ObjectReadError) else None
            transient = err.transient if err is not None else is_transient(ex)
            if transient and self._backoff.attempts + 1 < READ_ATTEMPTS:
                # Read it again from where it broke: same version, records from next_offset.
                self.retry = Pending(r.ref.key, r.ref.etag, r.next_offset, r.ref.size,
                                     r.modified)
                self.reading = None
                retry_later(self._src, self._name, self._backoff, "read", ex, now)
            else:
                # Non-transient, or still failing after READ_ATTEMPTS: this object fails from
                # here on, never the flow (a bug or a hostile object must not stop ingestion).
                reason = err.reason if err is not None else f"{type(ex).__name__}: {ex}"
                if err is None and not transient:
                    log.exception("%s: unexpected error at record %d", r.ref.uri, r.next_offset)
                errs, done = self._fail(r.ref, r.next_offset, reason, r.modified)
                out.extend(errs)
        ends = 1 if out and type(out[-1]) is ObjectEnd else 0
        metrics.RECORDS_READ.labels(self._src.name).inc(len(out) - ends)
        return out, done

    def _parser(self, fmt: str) -> TextFormat | None:
        if fmt not in self._parsers:
            self._parsers[fmt] = text_format(fmt, fields=self._src.fields,
                                             delimiter=self._src.delimiter)
        return self._parsers[fmt]

    def _unreadable(self, ref: ObjectRef, rec: UnreadableRecord) -> ErrorRecord:
        """The error record of one record the framer could delimit but not hand on."""
        return failed(ref, rec.offset, "parse", rec.reason, rec.code, rec.sample,
                      level=logging.ERROR)

    def _finish(self, ref: ObjectRef, outcome: str, modified: float) -> Finished:
        metrics.OBJECTS.labels(self._src.name, outcome).inc()
        metrics.OBJECT_BYTES.labels(self._src.name).inc(ref.size)
        done = Finished(ref, outcome, self._emitted, modified)
        if self._mark_ends:
            self._ended.append(ObjectEnd(ref))
        self._emitted = []
        self.reading = None
        self.retry = None
        self._backoff.reset()
        return done

    def _fail(self, ref: ObjectRef, offset: int | None, reason: str,
              modified: float) -> tuple[list[Item], Finished]:
        """An object that cannot be read from ``offset`` on: its error record, and done."""
        add_offset(self._emitted, offset or 0)  # the dead-letter journal marks it and the rest
        err = failed(ref, offset, "read", reason, "object_unreadable", level=logging.ERROR)
        done = self._finish(ref, "failed", modified)
        return [err, *self._take_ends()], done

    def _take_ends(self) -> list[ObjectEnd]:
        ended, self._ended = self._ended, []
        return ended


def retry_later(src: SourceConfig, partition: str, backoff: Backoff, operation: str,
                ex: BaseException, now: datetime) -> None:
    """A transient failure of ``operation`` (get, read, list, receive): counted, logged, and
    tried again at ``backoff.wake_at``."""
    delay = backoff.fail(now)
    metrics.OBJECT_RETRIES.labels(src.name, operation).inc()
    log.warning("source %s partition %s: %s failed (attempt %d), retrying in %.1fs: %s",
                src.name, partition, operation, backoff.attempts, delay, ex)
