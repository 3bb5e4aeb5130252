"""A source partition's resume state: small, plain, and everything a restart needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["PartitionState"]


@dataclass(frozen=True)
class PartitionState:
    """Where a partition resumes: what it has read, and the object in progress.

    What has been read depends on how the partition lists (see
    :mod:`connectors.s3.discovery`). With look-back listing (the default), ``recent`` holds
    the keys read within the window of the newest LastModified read, and ``after`` is a
    fixed floor (``start_after``, or the watermark of a partition that listed by key
    before): keys at or before it are never read. With ``lookback_secs = 0`` keys are
    listed by name, so ``after`` is a watermark: every key of the partition at or before
    it has been read to the end. ``key``/``etag``/``offset`` name the object being read
    and the offset of the next record to emit; a restart reads that version of that object
    again from the start but emits only records from ``offset`` on.
    """

    after: str = ""
    """Keys at or before this are not read (a watermark only with ``lookback_secs = 0``)."""
    key: str | None = None
    etag: str | None = None
    offset: int = 0
    modified: float = 0.0
    """LastModified (epoch seconds) of the object in progress (look-back listing)."""
    recent: dict[str, Any] | None = None
    """Look-back listing: :meth:`RecentKeys.snapshot` (keys read within the window)."""

    def to_snapshot(self) -> dict[str, Any]:
        """Plain dict for bytewax's recovery store (independent of this class's layout)."""
        snap: dict[str, Any] = {"v": 1, "after": self.after}
        if self.key is not None:
            snap.update(key=self.key, etag=self.etag, offset=self.offset, modified=self.modified)
        if self.recent is not None:
            snap["recent"] = self.recent
        return snap

    @classmethod
    def from_snapshot(cls, snap: dict[str, Any] | None, default_after: str = "") -> PartitionState:
        """Rebuild from :meth:`to_snapshot` output; None means a fresh start."""
        if snap is None:
            return cls(after=default_after)
        return cls(after=max(snap.get("after", ""), default_after), key=snap.get("key"),
                   etag=snap.get("etag"), offset=int(snap.get("offset", 0)),
                   modified=float(snap.get("modified", 0.0)), recent=snap.get("recent"))
