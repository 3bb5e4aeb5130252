"""Batching rows into requests: flushed by size, by count, by age, and at end of input.

``op.collect`` cannot be used: its timeout measures inactivity, so a steady trickle
would never flush. This batcher is an ``op.stateful_batch`` logic whose
``notify_at`` is the moment the oldest pending row reaches ``max_age``.

A batch's body is ``[row,row,...]``; the batcher never lets it exceed ``max_bytes``.
Pending rows are part of the snapshot: after a restart they are sent from the
snapshot, since the source will not read them again. With a keyring (encryption at
rest), the pending rows are stored in the recovery store as one AES-GCM envelope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from typing_extensions import override

from dataflow.core.messages import Batch, Row, Rows

__all__ = ["BatchConfig", "BatchLogic", "batch_rows"]


@dataclass(frozen=True)
class BatchConfig:
    """How records are grouped into requests."""

    max_bytes: int = 1_000_000
    """Largest request body, as uncompressed JSON (the service limit is 1 MiB)."""
    max_records: int = 20_000
    """Most records in one request."""
    max_age_secs: float = 5.0
    """Oldest a record may wait in a batch before the batch is sent."""

    def validate(self, problems: list[str], where: str = "batch") -> None:
        """Append what is wrong with this section to ``problems``."""
        if not (1 <= self.max_bytes <= 1_048_576):
            problems.append(f"{where}.max_bytes: must be between 1 and 1048576 (the service's "
                            "limit)")
        if self.max_records < 1 or self.max_age_secs <= 0:
            problems.append(f"{where}: max_records must be >= 1 and max_age_secs > 0")


Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BatchLogic(StatefulBatchLogic[Row | Rows, Batch, dict]):
    """Size-or-age batching of one key's rows (one stream, one source partition).

    :arg max_bytes: Largest body (uncompressed JSON, with brackets and commas).
    :arg max_records: Most rows in one batch.
    :arg max_age: Longest a row waits before its batch is sent.
    :arg clock: Current time.
    :arg resume_state: A snapshot of this logic, or None.
    :arg keyring: Encrypts the pending rows in snapshots (see :mod:`connectors.ops.crypto`).
    """

    def __init__(self, *, max_bytes: int, max_records: int, max_age: timedelta,
                 clock: Clock = _utcnow, resume_state: dict | None = None,
                 keyring: Any = None) -> None:
        self._keyring = keyring
        self._stream = ""
        self._target = ""
        self._max_bytes = max_bytes
        self._max_records = max_records
        self._max_age = max_age
        self._clock = clock
        self._rows: list[bytes] = []
        self._ids: list[str] = []
        self._size = 1  # "[" and "]" minus the comma the first row does not need
        self._opened: datetime | None = None
        if resume_state is not None:
            if "sealed" in resume_state:
                resume_state = _unseal(resume_state, keyring)
            self._rows = list(resume_state["rows"])
            self._ids = list(resume_state["ids"])
            self._size = 1 + sum(len(r) + 1 for r in self._rows)
            self._opened = resume_state["opened"]
            self._stream = resume_state["stream"]
            self._target = resume_state.get("target", "")

    @override
    def on_batch(self, values: list[Row | Rows]) -> tuple[Iterable[Batch], bool]:
        out: list[Batch] = []
        for item in values:
            if isinstance(item, Rows):
                pairs: Iterable[tuple[bytes, str]] = zip(item.rows, item.record_ids, strict=False)
            else:
                pairs = ((item.data, item.record_id),)
            for data, record_id in pairs:
                n = len(data) + 1
                if self._rows and (self._size + n > self._max_bytes
                                   or len(self._rows) >= self._max_records):
                    out.append(self._take())
                if not self._rows:
                    self._opened = self._clock()
                    self._stream = item.stream
                    self._target = item.target if isinstance(item, Rows) else ""
                self._rows.append(data)
                self._ids.append(record_id)
                self._size += n
        if self._rows and self._size >= self._max_bytes:
            out.append(self._take())
        return out, StatefulBatchLogic.RETAIN

    @override
    def on_notify(self) -> tuple[Iterable[Batch], bool]:
        if self._rows and self._due():
            return [self._take()], StatefulBatchLogic.RETAIN
        return [], StatefulBatchLogic.RETAIN

    @override
    def on_eof(self) -> tuple[Iterable[Batch], bool]:
        out = [self._take()] if self._rows else []
        return out, StatefulBatchLogic.DISCARD

    @override
    def notify_at(self) -> datetime | None:
        if self._opened is None:
            return None
        return self._opened + self._max_age

    @override
    def snapshot(self) -> dict:
        if self._keyring is not None and self._rows:
            plain = orjson.dumps({"rows": [r.decode() for r in self._rows], "ids": self._ids})
            sealed = self._keyring.encrypt(plain, _AAD).to_bytes()
            return {"sealed": sealed, "opened": self._opened, "stream": self._stream,
                    "target": self._target}
        return {"rows": list(self._rows), "ids": list(self._ids), "opened": self._opened,
                "stream": self._stream, "target": self._target}

    def _due(self) -> bool:
        return self._opened is not None and self._clock() >= self._opened + self._max_age

    def _take(self) -> Batch:
        batch = Batch(self._stream, tuple(self._rows), tuple(self._ids), self._target)
        self._rows, self._ids, self._size, self._opened = [], [], 1, None
        return batch


_AAD = b"s3sentinel-batch-snapshot"


def _unseal(state: dict, keyring: Any) -> dict:
    if keyring is None:
        msg = ("the recovery store holds encrypted batches: configure the keyring it was written "
               "with (runtime.encryption_key_file or runtime.encryption_keyvault_keys)")
        raise RuntimeError(msg)
    doc = orjson.loads(keyring.decrypt(state["sealed"], _AAD))
    return {**state, "rows": [r.encode() for r in doc["rows"]], "ids": doc["ids"]}


@operator
def batch_rows(step_id: str, up: KeyedStream[Row | Rows], *, max_bytes: int, max_records: int,
               max_age: timedelta, clock: Clock = _utcnow,
               keyring: Any = None) -> KeyedStream[Batch]:
    """Group keyed rows into batches of at most ``max_bytes`` / ``max_records``, sent by ``max_age``.

    Keys are ``<target>|<stream>|<partition>``: every row of a key goes to the same stream
    of the same target.
    """

    def builder(resume_state: dict | None) -> BatchLogic:
        return BatchLogic(max_bytes=max_bytes, max_records=max_records, max_age=max_age,
                          clock=clock, resume_state=resume_state, keyring=keyring)

    return op.stateful_batch("batch", up, builder)
