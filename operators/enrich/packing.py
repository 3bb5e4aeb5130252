"""The bytes the enrichment state is kept as in recovery snapshots.

The anomaly baselines and partial sequence matches are plain data (numbers, strings, tuples,
lists, dicts), packed once per entity or principal that changed since the last snapshot.
:mod:`marshal` packs such data about twice as fast as :mod:`pickle` (it keeps no memo of
the tuples it has written), which matters because every epoch snapshots every entity that
saw a row. A marker byte says which: snapshots written by pickle before still restore.
"""

from __future__ import annotations

import marshal
import pickle
from typing import Any

__all__ = ["pack", "unpack"]

_MARSHAL = b"M"
"""The first byte of marshal-packed state (a pickle starts with b"\\x80")."""
_VERSION = 4
"""marshal's format, pinned: a later Python still reads it."""


def pack(value: Any) -> bytes:
    """``value`` (plain data only) as bytes :func:`unpack` reads back."""
    return _MARSHAL + marshal.dumps(value, _VERSION)


def unpack(data: bytes) -> Any:
    """What :func:`pack` (or, before it, ``pickle.dumps``) made of a value.

    :raises ValueError: The bytes are neither.
    """
    try:
        if data[:1] == _MARSHAL:
            return marshal.loads(memoryview(data)[1:])
        return pickle.loads(data)  # noqa: S301 (our own recovery state, from before marshal)
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, IndexError) as exc:
        msg = f"packed state is unreadable ({exc!r})"
        raise ValueError(msg) from exc
