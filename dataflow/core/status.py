"""What this process's partitions are doing, for /readyz and the admin API.

Source partitions report their position and progress here (a dict update per batch:
cheap); the ops server reads it from its own thread. A source can be paused from the
admin API: its partitions in this process then emit nothing until it is resumed.
"""

from __future__ import annotations

import threading
import time
from typing import Any

__all__ = ["is_paused", "partitions", "pause", "report", "resume", "paused_sources"]

_lock = threading.Lock()
_parts: dict[str, dict[str, Any]] = {}
_paused: set[str] = set()


def report(partition: str, source: str, *, progressed: bool, busy: bool, **fields: Any) -> None:
    """A partition's state after one ``next_batch``.

    :arg progressed: It emitted something or finished an object.
    :arg busy: It has work in hand (an object being read, a queue of objects, messages).
    """
    now = time.time()
    with _lock:
        entry = _parts.setdefault(partition, {"source": source, "last_progress": now,
                                              "since": now})
        if progressed or not busy:
            entry["last_progress"] = now
        entry["busy"] = busy
        entry["updated"] = now
        entry.update(fields)


def partitions() -> dict[str, dict[str, Any]]:
    """A copy of every partition's last report."""
    with _lock:
        return {k: dict(v) for k, v in _parts.items()}


def pause(source: str) -> None:
    with _lock:
        _paused.add(source)


def resume(source: str) -> None:
    with _lock:
        _paused.discard(source)


def is_paused(source: str) -> bool:
    return source in _paused


def paused_sources() -> list[str]:
    with _lock:
        return sorted(_paused)
