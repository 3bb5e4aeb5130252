"""The items that travel between the steps of the flow.

Every message is a small frozen dataclass named as a noun. They are pickled when
bytewax moves them between workers, so they hold plain values only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Batch",
    "ErrorRecord",
    "ObjectEnd",
    "ObjectRef",
    "ObjectStart",
    "Partial",
    "RawRecord",
    "Row",
    "Rows",
    "Settled",
    "derived_id",
    "is_derived",
    "object_id",
]


def derived_id(object_id: str, what: str) -> str:
    """The object id of records made from an object's records rather than read from it
    (findings): ``<object id>.<what>``, so their record ids are deterministic too. Sources
    never wait for derived ids (:func:`is_derived`)."""
    return f"{object_id}.{what}"


def is_derived(object_id: str) -> bool:
    """Whether an object id is a :func:`derived_id` (object ids are hex digits)."""
    return "." in object_id


def object_id(bucket: str, key: str, etag: str) -> str:
    """A short, deterministic id of one version of one object: ``sha256(bucket/key@etag)[:16]``.

    A record's id is ``<object_id>-<offset>``: the same record read again (after a
    restart, or by ``replay``) always gets the same id, so it can be de-duplicated.
    """
    return hashlib.sha256(f"{bucket}/{key}@{etag}".encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """One version of one S3 object, as read by one source partition."""

    source: str
    """Name of the configured source."""
    partition: str
    """Name of the source partition that read it."""
    bucket: str
    key: str
    etag: str
    size: int
    """Stored (possibly compressed) size in bytes."""
    format: str = ""
    """Record format of the object (the source's, or the detected one for ``auto``)."""
    id: str = field(default="", compare=False)
    """``object_id(bucket, key, etag)``; filled in when empty."""

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", object_id(self.bucket, self.key, self.etag))

    @property
    def uri(self) -> str:
        """``s3://bucket/key``, for messages."""
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record's bytes, split out of an object but not yet parsed."""

    obj: ObjectRef
    offset: int
    """Position of the record in its object: record index (JSON) or line number (text), from 0."""
    data: bytes
    header: tuple[bytes, ...] = ()
    """Header lines of the object before this record (text formats with headers)."""

    @property
    def record_id(self) -> str:
        """Deterministic id: ``<object id>-<offset>``."""
        return f"{self.obj.id}-{self.offset}"


@dataclass(frozen=True, slots=True)
class ObjectEnd:
    """An object was read to its end (or failed): every record it emits went before this.

    Emitted by the source only when the flow aggregates rows per object
    (``[[transforms.aggregate]]``); the map step turns it into an end marker (:attr:`Rows.end`).
    """

    obj: ObjectRef


@dataclass(frozen=True, slots=True)
class ObjectStart:
    """An object is read from its first record: a read of it before (a restart's, an SQS
    message received again) counts for nothing in what is summed per object.

    Emitted, like :class:`ObjectEnd`, only when the flow aggregates rows per object.
    """

    obj: ObjectRef


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """A record or object that could not be read, parsed or mapped: kept as data, never dropped."""

    obj: ObjectRef
    offset: int | None
    """Record offset, or None when the whole object (or its remainder) failed."""
    stage: str
    """Where it failed: ``read``, ``parse``, ``map`` or ``batch``."""
    reason: str
    """What went wrong and, where possible, what to do about it."""
    data: bytes = b""
    """The offending bytes (possibly truncated), for inspection and replay."""
    header: tuple[bytes, ...] = ()
    """Header lines of the object (text formats), needed to parse ``data`` again."""
    code: str = ""
    """Short reason code (``invalid_json``, ``object_unreadable``, ...) for metrics and filters."""

    def describe(self) -> str:
        """One line naming the object, the position and the reason."""
        where = "" if self.offset is None else f" record {self.offset}"
        return f"{self.obj.uri}{where}: {self.stage}: {self.reason}"


@dataclass(frozen=True, slots=True)
class Row:
    """One record mapped onto a table row and encoded as compact JSON."""

    stream: str
    """DCR input stream the row is sent to."""
    record_id: str
    data: bytes
    """The row as a JSON object (UTF-8)."""
    partition: str
    """Source partition it came from; rows are batched per (stream, partition)."""


@dataclass(frozen=True, slots=True)
class Rows:
    """Consecutive rows of one source partition bound for one stream.

    Rows travel in bundles from the map step to the batcher: bytewax then moves (and,
    between processes, pickles) one item per bundle instead of one per record.
    """

    stream: str
    partition: str
    rows: tuple[bytes, ...]
    record_ids: tuple[str, ...]
    parsed: tuple[dict[str, Any], ...] | None = field(default=None, compare=False, repr=False)
    """The rows as the mapper built them, before encoding, when the enrichment step reads
    them (it would otherwise decode every row again); it drops them."""
    fast: bool = False
    """The fast lane: urgent rows (critical, intel matches, findings), batched with
    ``enrich.fast_lane_secs`` instead of ``batch.max_age_secs``."""
    target: str = ""
    """The delivery target (workspace and identity) the rows go to; empty: the only one."""
    end: str = ""
    """Set on an empty bundle that marks the end of the object with this id: every row of
    that object went before it (see :class:`ObjectEnd`)."""
    begin: str = ""
    """Set on an empty bundle that marks that the object with this id is read from its
    first record: its rows come after it (see :class:`ObjectStart`)."""


@dataclass(frozen=True, slots=True)
class Settled:
    """Records a transform took away (dropped, sampled out, summarised): nothing will be sent
    under their ids, and the journals count them as accounted for, so an SQS message or a
    freshness check does not wait for them."""

    record_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Partial:
    """Partial aggregates of rows of one object for one summary table, merged per object
    until its end marker (``[[transforms.aggregate]]``)."""

    object_id: str
    partition: str
    """The source partition of the object (the summary rows are batched with it)."""
    stream: str
    """The summary table's stream."""
    spec: int
    """Which aggregate of the flow (its summary rows' ids are numbered apart)."""
    groups: tuple[tuple[tuple[Any, ...], tuple[Any, ...]], ...]
    """(group key, accumulators) pairs: the key is the bucket start then the ``by`` values."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows bound for one stream, small enough for one request."""

    stream: str
    rows: tuple[bytes, ...]
    record_ids: tuple[str, ...]
    target: str = ""
    """The delivery target; empty: the only one."""

    @property
    def body_bytes(self) -> int:
        """Size of the request body as uncompressed JSON: ``[row,row,...]``."""
        return sum(map(len, self.rows)) + len(self.rows) + 1

    def body(self) -> bytes:
        """The request body as an uncompressed JSON array."""
        return b"[" + b",".join(self.rows) + b"]"

    def split(self) -> tuple[Batch, Batch]:
        """Two halves, for a request the service refused as too large."""
        mid = len(self.rows) // 2
        return (
            Batch(self.stream, self.rows[:mid], self.record_ids[:mid], self.target),
            Batch(self.stream, self.rows[mid:], self.record_ids[mid:], self.target),
        )
