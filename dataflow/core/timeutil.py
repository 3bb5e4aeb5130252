"""Time parsing shared by the components: one ``event_time`` (two copies used to disagree
on times without a zone: one read them as UTC, the other as the machine's local time)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

__all__ = ["event_time"]


def event_time(value: Any) -> float | None:
    """Epoch seconds of an ISO 8601 time (``2026-11-28T14:30:00.123Z``) or of a number, else
    None. A time without a zone is UTC, as every time this connector writes is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp()
