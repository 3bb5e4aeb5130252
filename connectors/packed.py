"""Offset ranges of idle objects, packed tight: what keeps a week of journal in memory small.

The journals (:mod:`connectors.ledger`) remember every object's accounted-for ranges for
their retention (7 days by default). Kept as a dict entry, a key string, a float and an
array per object, that was ~0.25 KB an object (~1.1 KB with findings) in the sink's ledger
and ~0.29 KB again in the sources' view: a trail of 20,000 objects an hour held GBs after a
week.
Almost all of it is idle: an object is written in a few requests within seconds, and read
again only by a replay.

:class:`PackedRanges` keeps idle objects in 256 buckets per id suffix, each a sorted
``array('Q')`` of the 64-bit ids (the 16 hex digits of :func:`~dataflow.core.messages.object_id`),
an ``array('d')`` of their last-entry times, a ``bytearray`` of flags and a list of their
ranges packed by :func:`pack_flat`: ~70 bytes an object, ~220 with its findings.
Ids of another shape (no 16 hex digits) are not taken: their owner keeps them as they were.
A lookup is a bisection in one bucket. Not thread-safe; its owner locks.
"""

from __future__ import annotations

import bisect
import itertools
import operator
from array import array
from collections.abc import Iterator
from typing import TypeAlias

__all__ = ["Flat", "PackedRanges", "pack_flat", "unpack_flat"]

Flat: TypeAlias = "array[int]"
"""Merged half-open ranges as one flat ``array('q')``: ``[start0, end0, start1, end1, ...]``,
strictly increasing (see :mod:`connectors.ledger`)."""

_BUCKETS = 256
_HEX = frozenset("0123456789abcdef")


def pack_flat(flat: Flat) -> bytes:
    """``flat`` in a few bytes: its first number and the gaps to the next ones as one byte
    each when they all fit (an object's findings: one-record ranges a few records apart),
    else its numbers as the narrowest array that holds them (``[0, 480)``: 4 bytes). Made
    and read in C (this runs for every object going idle, and at every start)."""
    if len(flat) > 2:
        try:
            return b"d" + flat[:1].tobytes() + bytes(map(operator.sub, flat[1:], flat[:-1]))
        except ValueError:  # a gap of 256 or more
            pass
    top = flat[-1] if flat else 0
    code = ("q" if flat and flat[0] < 0  # not from the flow, but a journal line may say so
            else "H" if top < 1 << 16 else "I" if top < 1 << 32 else "q")
    return code.encode() + array(code, flat).tobytes()


def unpack_flat(data: bytes) -> Flat:
    """The :data:`Flat` that :func:`pack_flat` packed."""
    code = chr(data[0])
    if code == "d":
        first = array("q")
        first.frombytes(data[1:9])
        return array("q", itertools.accumulate(data[9:], initial=first[0]))
    numbers = array(code)
    numbers.frombytes(data[1:])
    return array("q", numbers)


def _split(obj: str) -> tuple[str, int] | None:
    """(suffix, 64-bit id) of ``<16 hex digits>[.<suffix>]``; None for another shape."""
    head, dot, suffix = obj.partition(".")
    if len(head) != 16 or not _HEX.issuperset(head) or (dot and not suffix):
        return None
    return suffix, int(head, 16)


class _Bucket:
    __slots__ = ("flags", "keys", "oldest", "times", "values")

    def __init__(self) -> None:
        self.keys = array("Q")
        self.times = array("d")
        self.flags = bytearray()
        self.values: list[bytes] = []
        self.oldest = float("inf")

    def find(self, key: int) -> int:
        i = bisect.bisect_left(self.keys, key)
        return i if i < len(self.keys) and self.keys[i] == key else -1

    def remove(self, i: int) -> None:
        del self.keys[i], self.times[i], self.flags[i], self.values[i]


class PackedRanges:
    """Idle objects' ranges, their last-entry times and one flag each (the ledger's: its
    own file holds the object), packed as the module docstring says."""

    def __init__(self) -> None:
        self._by_suffix: dict[str, list[_Bucket | None]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _bucket(self, suffix: str, key: int, *, create: bool) -> _Bucket | None:
        buckets = self._by_suffix.get(suffix)
        if buckets is None:
            if not create:
                return None
            buckets = self._by_suffix[suffix] = [None] * _BUCKETS
        b = buckets[key & (_BUCKETS - 1)]
        if b is None and create:
            b = buckets[key & (_BUCKETS - 1)] = _Bucket()
        return b

    def put(self, obj: str, t: float, flat: Flat, flag: bool = False) -> bool:
        """Keep ``obj`` packed (replacing what was kept of it); False, and nothing kept, for
        an id this store cannot pack."""
        split = _split(obj)
        if split is None:
            return False
        b = self._bucket(split[0], split[1], create=True)
        assert b is not None
        key, value = split[1], pack_flat(flat)
        i = bisect.bisect_left(b.keys, key)
        if i < len(b.keys) and b.keys[i] == key:
            b.times[i], b.flags[i], b.values[i] = t, flag, value
        else:
            b.keys.insert(i, key)
            b.times.insert(i, t)
            b.flags.insert(i, flag)
            b.values.insert(i, value)
            self._count += 1
        b.oldest = min(b.oldest, t)
        return True

    def get(self, obj: str) -> Flat | None:
        """The ranges kept of ``obj``, or None."""
        if not self._count or (split := _split(obj)) is None:
            return None
        b = self._bucket(split[0], split[1], create=False)
        if b is None or (i := b.find(split[1])) < 0:
            return None
        return unpack_flat(b.values[i])

    def pop(self, obj: str) -> tuple[float, Flat, bool] | None:
        """(last entry, ranges, flag) of ``obj``, no longer kept; None if it was not."""
        if not self._count or (split := _split(obj)) is None:
            return None
        b = self._bucket(split[0], split[1], create=False)
        if b is None or (i := b.find(split[1])) < 0:
            return None
        got = (b.times[i], unpack_flat(b.values[i]), bool(b.flags[i]))
        b.remove(i)
        self._count -= 1
        return got

    def expire(self, horizon: float, slack: float = 0.0) -> int:
        """Drop the objects whose last entry is older than ``horizon``, in the buckets
        holding one older than ``horizon - slack`` (so that a pass over every object is
        made once per ``slack`` of time, not at each call); how many went."""
        gone = 0
        for buckets in self._by_suffix.values():
            for b in buckets:
                if b is None or b.oldest >= horizon - slack:
                    continue
                keep = [i for i, t in enumerate(b.times) if t >= horizon]
                if len(keep) < len(b.times):  # rebuilt: one pass, not a shift per entry gone
                    gone += len(b.times) - len(keep)
                    b.keys = array("Q", [b.keys[i] for i in keep])
                    b.times = array("d", [b.times[i] for i in keep])
                    b.flags = bytearray([b.flags[i] for i in keep])
                    b.values = [b.values[i] for i in keep]
                b.oldest = min(b.times, default=float("inf"))
        self._count -= gone
        return gone

    def items(self, *, flagged: bool | None = None) -> Iterator[tuple[str, float, Flat]]:
        """(object id, last entry, ranges) of every object kept (only those whose flag is
        ``flagged``, unless None), in no particular order."""
        for suffix, buckets in self._by_suffix.items():
            tail = "." + suffix if suffix else ""
            for b in buckets:
                if b is None:
                    continue
                for key, t, flag, value in zip(b.keys, b.times, b.flags, b.values, strict=True):
                    if flagged is None or bool(flag) is flagged:
                        yield f"{key:016x}{tail}", t, unpack_flat(value)
