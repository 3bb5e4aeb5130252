"""Freshness of a listing source: when did an object's last record reach Sentinel?

A source partition knows which offsets it emitted for each object it finished and when
the object arrived (``LastModified``); the upload and dead-letter journals say which
records were delivered or dead-lettered. The tracker joins the two: once an object is
fully accounted for, ``s3sentinel_lag_seconds`` is set to the time from its arrival to
now; meanwhile ``s3sentinel_oldest_undelivered_seconds`` shows the oldest object still
waiting. (The SQS partition does the same with its messages.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from connectors.ledger import RETENTION_SECS, LedgerView
from dataflow.core import metrics

__all__ = ["CHECK_EVERY_SECS", "DeliveryTracker"]

CHECK_EVERY_SECS = 1.0

MAX_TRACKED = 10_000
"""Objects followed at most; beyond that the oldest are dropped from the freshness figures."""


class DeliveryTracker:
    """Objects finished by one partition, until the journals account for all their records."""

    def __init__(self, journal_dir: str, source: str, partition: str,
                 clock: Callable[[], float] = time.time, keyring: Any = None,
                 retention_secs: float = RETENTION_SECS) -> None:
        self._view = LedgerView.shared(journal_dir, keyring=keyring,
                                       retention_secs=retention_secs)
        self._labels = (source, partition)
        self._clock = clock
        self._waiting: dict[str, tuple[list[list[int]], float]] = {}
        self._next = 0.0

    def add(self, object_id: str, ranges: list[list[int]], arrived: float) -> None:
        """An object was read to the end (``arrived``: its LastModified, epoch seconds)."""
        if object_id not in self._waiting:
            if len(self._waiting) >= MAX_TRACKED:
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                self._view.forget(oldest)
            self._view.watch(object_id)
        self._waiting[object_id] = ([list(r) for r in ranges], arrived)

    @property
    def waiting(self) -> bool:
        """Whether some finished object is not accounted for yet."""
        return bool(self._waiting)

    def check(self) -> None:
        """Update the freshness gauges (at most once per CHECK_EVERY_SECS)."""
        now = self._clock()
        if now < self._next:
            return
        self._next = now + CHECK_EVERY_SECS
        if self._waiting:
            self._view.refresh()
        oldest = 0.0
        for oid, (ranges, arrived) in list(self._waiting.items()):
            if self._view.covered_ranges(oid, ranges):
                del self._waiting[oid]
                self._view.forget(oid)
                metrics.LAG_SECONDS.labels(*self._labels).set(max(0.0, now - arrived))
            else:
                oldest = max(oldest, now - arrived)
        metrics.OLDEST_UNDELIVERED_SECONDS.labels(*self._labels).set(oldest)
        metrics.IN_FLIGHT_OBJECTS.labels(*self._labels).set(len(self._waiting))
