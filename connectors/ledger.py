"""The delivery ledger: which records are accounted for, by object and offset range, kept
across crashes.

One ledger answers one question for every part of the flow: has this record been
accepted by the service (the ``journal`` ledger, written by the Sentinel sink), or written
to the dead-letter store (the ``deadletter`` ledger, written by the dead-letter sink)? The
sink skips what either holds when bytewax replays after a crash; the SQS partition deletes
a message, and the freshness tracker sets ``s3sentinel_lag_seconds``, once the two
together cover every offset an object emitted (:class:`LedgerView`). Nothing here knows
which component writes it.

bytewax recovery replays everything after the last snapshot, so after a crash the
sink sees again records it already delivered; the Logs Ingestion API is append-only
and cannot de-duplicate them. The ledger remembers, per object, the offset ranges of
the records of every accepted request (one JSON line per request, flushed and fsynced
before the sink moves on), and the sink leaves those records out when they come again.

One window remains: a crash after the service accepted a request and before its
ledger line reached the disk sends that request's records again. Record ids are
deterministic, so such duplicates can still be removed at query time.

Each writer appends to its own file (``journal-w<worker>.jsonl``) and, when it starts,
reads every file of its ledger in the directory, so a restart with another worker count
still sees all that was accounted for. Compaction (at start, and every ``COMPACT_EVERY``
appends) drops objects whose last entry is older than the retention, measured from the
newest entry (not the clock), so a long outage does not expire what a replay can reach, and
packs the objects idle for ``IDLE_SECS`` (:mod:`connectors.packed`: ~70 bytes an object
instead of ~250). The writer's own file is rewritten as merged ranges at start, and then
once it has had as many appends as the ledger holds objects (so a week of objects is not
rewritten every thousand requests).

A line is ``{"t": <time>, "r": {"<object id>": [[start, end], ...]}}``. With a keyring
(``runtime.encryption_*``) each line is authenticated, so that a line slipped into a
ledger cannot make the sink skip records::

    {"t":1733400000.5,"r":{"9f..":[[0,120]]},"kid":"k2","mac":"<base64 HMAC-SHA256>"}

The MAC covers the ledger's name (``journal`` or ``deadletter``) and the line's ``t`` and
``r`` as written, under a key derived from key ``kid`` for this purpose (see
:meth:`connectors.ops.crypto.Keyring.mac`); old keys keep verifying while they are in the
keyring, and compaction re-authenticates a writer's own lines under the current key. Lines
that fail, or carry no MAC (written without a key, e.g. before encryption was turned on),
are logged, counted in ``s3sentinel_journal_rejected_lines_total`` and ignored: their
records count as not accounted for, so a replay sends them again -- a duplicate, never a
loss. Files are ``0600`` in a ``0700`` directory.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import logging
import os
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import orjson
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from connectors.packed import Flat, PackedRanges
from dataflow.core import metrics
from dataflow.core.files import atomic_write, open_private, private_dir
from dataflow.core.messages import Settled, is_derived

__all__ = ["COMPACT_EVERY", "DEAD_LETTERED", "DELIVERED", "IDLE_SECS", "REST", "SETTLED", "Ledger",
           "LedgerView", "RETENTION_SECS", "SettledSink", "add_offset", "line_rejected",
           "merge_ranges", "signed_line"]

COMPACT_EVERY = 1000
"""Appends between two compactions of a partition's ledger (expiry and packing; the file
is rewritten when it has had at least as many appends as the ledger holds objects)."""

IDLE_SECS = 60.0
"""An object whose last entry is this much older than the newest entry is packed
(:class:`~connectors.packed.PackedRanges`): replays still find it, for a fraction of the
memory. An object's requests come within seconds; one written to again (a replay) is
unpacked, for microseconds."""

_LOAD_SETTLE_LINES = 20_000
"""Lines read at start between two packings of idle objects (the start's peak memory)."""

DELIVERED = "journal"
"""Journal of records the service accepted (the sink skips them on replay)."""
DEAD_LETTERED = "deadletter"
"""Journal of records written to the dead-letter store (accounted for, not delivered)."""
SETTLED = "settled"
"""Journal of records a transform took away (dropped, sampled out, summarised): accounted
for, with nothing to send."""

RETENTION_SECS = 7 * 24 * 3600.0
"""How long an object's ranges are kept after its last entry, unless configured
(``runtime.journal_retention_secs``)."""

REST = 2**62
"""End of the range that stands for "this offset and everything after it"."""


_MAC_PURPOSE = b"journal"

log = logging.getLogger(__name__)


def _mac_data(name: str, body: bytes) -> bytes:
    return name.encode() + b"\x00" + body


def _encode_line(name: str, t: float, ranges: dict[str, Any], keyring: Any,
                 via: str | None = None) -> bytes:
    """One journal line (with its newline), authenticated when there is a keyring; ``via``
    names what accepted the records (a DCR's immutable id)."""
    body = orjson.dumps({"t": t, "r": ranges} if via is None else {"t": t, "r": ranges, "d": via})
    return signed_line(body, _mac_data(name, body), keyring, _MAC_PURPOSE)


def signed_line(body: bytes, data: bytes, keyring: Any, purpose: bytes) -> bytes:
    """A JSON object ``body`` as one line, with the key id and MAC of ``data`` added as
    ``kid`` and ``mac`` when there is a keyring (:func:`line_rejected` checks them)."""
    if keyring is None:
        return body + b"\n"
    kid, tag = keyring.mac(data, purpose)
    return (body[:-1] + b',"kid":' + orjson.dumps(kid) + b',"mac":"' + base64.b64encode(tag)
            + b'"}\n')


def line_rejected(kid: Any, mac: Any, data: bytes, keyring: Any, purpose: bytes) -> str | None:
    """Why a line's ``kid`` and ``mac`` do not authenticate ``data`` (``unauthenticated``,
    ``malformed``, ``bad_mac``, ``unknown_key``); None when they do, or with no keyring."""
    if keyring is None:
        return None
    if kid is None and mac is None:
        return "unauthenticated"
    try:
        tag = base64.b64decode(str(mac), validate=True)
    except (binascii.Error, ValueError):
        return "malformed"
    try:
        keyring.verify_mac(str(kid), data, tag, purpose)
    except ValueError:  # connectors.ops.crypto.DecryptError
        return "bad_mac" if kid in keyring.key_ids else "unknown_key"
    return None


_Offset = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]  # what an array('q') holds


class _Line(msgspec.Struct):
    """One journal line, typed: msgspec checks a line's shape in C as it decodes it, and a
    line of another shape is rejected whole, offsets an ``array('q')`` cannot hold included
    (they stopped the start with OverflowError). Checking the decoded dict in Python cost
    ~15% of a start's CPU (bench/journal.py)."""

    t: int | float
    r: dict[str, list[tuple[_Offset, _Offset]]]
    d: Any = msgspec.UNSET  # a DCR's immutable id; UNSET: no "d" in the line
    kid: Any = None
    mac: Any = None


_decode = msgspec.json.Decoder(_Line).decode


def _decode_line(name: str, line: bytes, keyring: Any) -> tuple[_Line | None, str | None]:
    """(entry, None) for a line to use; (None, reason) for one to ignore, reason ``torn``
    for a line a crash cut short (not an error), else why it was rejected."""
    try:
        entry = _decode(line)
    except msgspec.ValidationError:  # JSON, of another shape
        return None, "malformed"
    except msgspec.DecodeError:
        return None, "torn"
    if keyring is None:
        return entry, None
    body = orjson.dumps({"t": entry.t, "r": entry.r} if entry.d is msgspec.UNSET else
                        {"t": entry.t, "r": entry.r, "d": entry.d})
    why = line_rejected(entry.kid, entry.mac, _mac_data(name, body), keyring, _MAC_PURPOSE)
    return (None, why) if why else (entry, None)


def _report_rejected(path: Path, name: str, rejected: dict[str, list[int]]) -> None:
    """Log and count the lines of one file (or one read of it) that were rejected."""
    if not rejected:
        return
    for reason, lines in rejected.items():
        metrics.JOURNAL_REJECTED_LINES.labels(name, reason).inc(len(lines))
    detail = "; ".join(f"{reason}: {len(lines)} (lines {', '.join(map(str, lines[:5]))}"
                       f"{', ...' if len(lines) > 5 else ''})"
                       for reason, lines in sorted(rejected.items()))
    why = ("they are not journal lines of this version's shape" if set(rejected) == {"malformed"}
           else "they do not authenticate with the configured keys, or are not journal lines")
    log.error("journal %s: lines rejected (%s): %s, so their records count as not delivered "
              "and a replay sends them again (a duplicate, not a loss); a line nobody wrote "
              "here means someone else can write to the journal directory", path, detail, why)


def merge_ranges(ranges: Iterable[list[int]]) -> list[list[int]]:
    """Half-open ``[start, end)`` ranges, sorted and merged where they touch or overlap."""
    out: list[list[int]] = []
    for s, e in sorted(ranges):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def add_offset(ranges: list[list[int]], offset: int) -> None:
    """Add ``offset`` to merged half-open ranges, in place (offsets mostly come in increasing
    order: that case costs a comparison)."""
    if ranges and ranges[-1][1] == offset:
        ranges[-1][1] = offset + 1
    elif not ranges or offset > ranges[-1][1]:
        ranges.append([offset, offset + 1])
    else:
        ranges[:] = merge_ranges([*ranges, [offset, offset + 1]])


def _ranges(offsets: Iterable[int]) -> list[list[int]]:
    """Offsets as merged half-open ranges (one pass when sorted, as a batch's mostly are)."""
    out: list[list[int]] = []
    end = -1
    for o in sorted(offsets):
        if o == end:
            end = out[-1][1] = o + 1
        elif o > end:
            out.append([o, o + 1])
            end = o + 1
    return out


# Flat (connectors.packed): merged half-open ranges as one flat ``array('q')``,
# ``[start0, end0, start1, end1, ...]``, strictly increasing (ranges that touch are merged,
# empty ones left out). An offset is in them when ``bisect_right(flat, offset)`` is odd. A
# range costs 16 bytes this way, against ~130 as a list of two-int lists; an object's
# findings make dozens of one-record ranges. Never changed in place once stored: a
# ledger's two tables share them.

_EMPTY: Flat = array("q")


def _flat_add(flat: Flat | None, ranges: Sequence[Sequence[int]]) -> Flat:
    """``flat`` with ``ranges`` added, as a new array (``flat`` itself is not changed)."""
    if not flat and ranges:  # a new object: mostly one range, or already strictly in order
        if len(ranges) == 1:
            s, e = ranges[0]
            return array("q", (s, e)) if e > s else _EMPTY
        out = array("q", itertools.chain.from_iterable(ranges))
        offsets = out.tolist()  # strictly increasing: sorted, none twice (checked in C)
        if offsets == sorted(offsets) and len(set(offsets)) == len(offsets):
            return out
    new = sorted((s, e) for s, e in ranges if e > s)
    if not new:
        return flat if flat is not None else _EMPTY
    if flat and new[0][0] < flat[-1]:  # not after the last range: merged as pairs
        merged = merge_ranges([*_pairs(flat), *map(list, new)])
        return array("q", itertools.chain.from_iterable(merged))
    out = array("q", flat or ())
    for s, e in new:  # the usual case: after (or touching) what is there
        if out and s <= out[-1]:
            if e > out[-1]:
                out[-1] = e
        else:
            out.append(s)
            out.append(e)
    return out


def _pairs(flat: Flat) -> list[list[int]]:
    """A :data:`Flat` as ``[[start, end], ...]``."""
    it = iter(flat)
    return [[s, e] for s, e in zip(it, it, strict=True)]


def _holds(flat: Flat | None, start: int, end: int) -> bool:
    """Whether every offset in ``[start, end)`` is in ``flat`` (an empty range always is)."""
    if end <= start:
        return True
    if not flat:
        return False
    i = bisect.bisect_right(flat, start)
    return bool(i & 1) and flat[i] >= end


class Ledger:
    """Accounted-for record ranges per object, durable on disk (one writer's file, and
    every other file of the same ledger read at start).

    :arg directory: Where the journal files live (beside the recovery store).
    :arg worker: This sink partition's worker index (or another label unique among the
        writers); it owns ``<name>-w<worker>.jsonl``.
    :arg retention_secs: How long an object's ranges are kept after its last delivery.
    :arg name: ``journal`` (:data:`DELIVERED`) or ``deadletter`` (:data:`DEAD_LETTERED`):
        the files are ``<name>-w<worker>.jsonl``.
    :arg keyring: Authenticates the lines written and checks those read (see the module
        docstring); None writes and accepts lines without a MAC.
    :arg clock: The time written on each line (seconds since the epoch).
    """

    def __init__(self, directory: str | os.PathLike[str], worker: int | str,
                 retention_secs: float = RETENTION_SECS, name: str = DELIVERED,
                 keyring: Any = None, clock: Callable[[], float] | None = None) -> None:
        self._clock = clock or time.time
        self._dir = private_dir(directory)
        self._keyring = keyring
        self._name = name
        self._path = self._dir / f"{name}-w{worker}.jsonl"
        self._retention = retention_secs
        self._done: dict[str, Flat] = {}  # object id -> its ranges, from every file
        self._seen: dict[str, float] = {}  # object id -> time of its last delivery
        self._mine: dict[str, Flat] = {}  # what this partition's file holds (shared arrays)
        self._idle = PackedRanges()  # objects idle for IDLE_SECS (flag: this file holds them)
        self._newest = 0.0  # the newest entry's time
        self._appends = 0
        self._since_rewrite = 0  # appends since this partition's file was last rewritten
        for path in sorted(self._dir.glob(f"{name}-w*.jsonl")):
            self._load(path, own=path == self._path)
        self._compact(rewrite=True)
        self._file = open_private(self._path, "ab")

    def _load(self, path: Path, *, own: bool) -> None:
        rejected: dict[str, list[int]] = {}
        with path.open("rb") as f:
            for n, line in enumerate(f, 1):
                entry, why = _decode_line(self._name, line, self._keyring)
                if entry is not None:
                    self._add(entry.r, entry.t, own=own)
                elif why != "torn":  # a line torn by a crash: its request was not journaled
                    rejected.setdefault(why or "", []).append(n)
                if n % _LOAD_SETTLE_LINES == 0:  # a week of objects never all unpacked at once
                    self._compact(rewrite=False)
        _report_rejected(path, self._name, rejected)

    def _add(self, ranges: Mapping[str, Sequence[Sequence[int]]], t: float, *,
             own: bool) -> None:
        done, mine, seen, idle = self._done, self._mine, self._seen, self._idle
        for obj, rs in ranges.items():
            had = done.get(obj)
            if had is None and idle and (got := idle.pop(obj)) is not None:
                seen[obj], had, in_mine = got  # written to again (a replay): unpacked
                done[obj] = had
                if in_mine:
                    mine[obj] = had
            merged = done[obj] = _flat_add(had, rs)
            if own:  # one array for both while only this file has the object (the usual case)
                ours = mine.get(obj)
                mine[obj] = merged if ours is had else _flat_add(ours, rs)
            seen[obj] = max(seen.get(obj, 0.0), t)
        if t > self._newest:
            self._newest = t

    def has(self, record_id: str) -> bool:
        """Whether the ledger holds the record (accepted by the service, or dead-lettered:
        whichever this ledger records), from this run or an earlier one."""
        return bool(self.held((record_id,)))

    def held(self, record_ids: Sequence[str]) -> list[int]:
        """The indexes of the records the ledger holds (:meth:`has` for a whole batch;
        usually none: only a replay sends records again). Objects it has nothing of, and
        offsets past an object's last range, cost no search."""
        done = self._done
        if not done:
            return []
        out: list[int] = []
        last: str | None = None
        flat: Flat | None = None
        end = 0
        for i, rid in enumerate(record_ids):
            obj, _, offset = rid.rpartition("-")
            if obj != last:
                last, flat = obj, done.get(obj)
                if flat is None:
                    flat = self._idle.get(obj)
                end = flat[-1] if flat else 0
            if flat:
                o = int(offset)
                if o < end and _holds(flat, o, o + 1):
                    out.append(i)
        return out

    def record(self, record_ids: Iterable[str], via: str | None = None) -> None:
        """Journal records the service has just accepted (durable when this returns).

        :arg via: What accepted them (the DCR's immutable id), kept on the line until the
            journal is compacted.
        """
        by_obj: dict[str, list[int]] = {}
        last: str | None = None
        offsets: list[int] = []
        for rid in record_ids:
            obj, _, offset = rid.rpartition("-")
            if obj != last:  # a batch's ids come in runs of one object
                last = obj
                offsets = by_obj.setdefault(obj, [])
            offsets.append(int(offset))
        self.record_ranges({obj: _ranges(offs) for obj, offs in by_obj.items()}, via)

    def record_ranges(self, ranges: dict[str, list[list[int]]], via: str | None = None) -> None:
        """Journal half-open offset ranges per object id (durable when this returns)."""
        if not ranges:
            return
        now = self._clock()
        self._file.write(_encode_line(self._name, now, ranges, self._keyring, via))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._add(ranges, now, own=True)
        self._appends += 1
        self._since_rewrite += 1
        if self._appends % COMPACT_EVERY == 0:
            rewrite = self._since_rewrite >= len(self)
            if rewrite:
                self._file.close()
            self._compact(rewrite=rewrite)
            if rewrite:
                self._file = open_private(self._path, "ab")

    def _compact(self, *, rewrite: bool) -> None:
        """Drop expired objects, pack idle ones, and with ``rewrite``, rewrite this
        partition's file as merged ranges of what it holds."""
        done, mine, seen, idle = self._done, self._mine, self._seen, self._idle
        horizon = self._newest - self._retention
        quiet = max(horizon, self._newest - IDLE_SECS)  # what is older: expired or packed
        for obj in [o for o, t in seen.items() if t < quiet]:
            t, flat, ours = seen[obj], done[obj], mine.get(obj)
            if t < horizon or ((ours is None or ours is flat)  # else two files differ: kept
                               and idle.put(obj, t, flat, ours is not None)):
                del seen[obj], done[obj]
                mine.pop(obj, None)
        idle.expire(horizon, slack=self._retention / 16)  # a full pass only now and then
        if not rewrite:
            return
        self._since_rewrite = 0
        lines = (_encode_line(self._name, t, {obj: _pairs(rs)}, self._keyring)
                 for obj, t, rs in idle.items(flagged=True))
        atomic_write(self._path, itertools.chain(lines, (
            _encode_line(self._name, seen.get(obj, self._newest), {obj: _pairs(rs)},
                         self._keyring)
            for obj, rs in mine.items() if rs)))

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        """Objects with delivered records in the journal."""
        return len(self._done) + len(self._idle)


class LedgerView:
    """A read-only, incrementally refreshed view of every journal file in a directory.

    The sources use it to learn when every record of an object is accounted for (delivered,
    or written to the dead-letter store): the SQS source before it deletes the object's
    message, a listing source for its freshness figures. It tails the files other processes
    append to, and reads a file again from the start when compaction replaced it.

    One view serves a process: :meth:`shared` hands every partition the same one, so the
    journals are read (and held) once, not once per partition. Its owners :meth:`watch`
    the objects they wait for and :meth:`forget` them when done. Objects no owner waits for
    are dropped once their last entry is older than ``retention_secs`` from the newest entry, as the journal
    itself drops them: what a replay can bring back is never dropped earlier than the sink
    forgets it. Derived ids (findings, :func:`~dataflow.core.messages.is_derived`) are not
    kept at all: no source waits for them.

    :arg keyring: Checks the lines' MACs, as :class:`Ledger` does; None accepts
        every line.
    :arg retention_secs: How long an unwatched object's ranges are kept after its last
        entry (the journal's retention).
    """

    _registry: ClassVar[weakref.WeakValueDictionary[tuple[str, int, float], LedgerView]] = (
        weakref.WeakValueDictionary())
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, directory: str | os.PathLike[str],
                 names: tuple[str, ...] = (DELIVERED, DEAD_LETTERED, SETTLED),
                 keyring: Any = None, retention_secs: float = RETENTION_SECS) -> None:
        self._dir = Path(directory)
        self._names = names
        self._keyring = keyring
        self._retention = retention_secs
        self._lock = threading.Lock()  # a shared view is used by every worker thread
        self._pos: dict[Path, tuple[int, int]] = {}  # path -> (inode, bytes read)
        self._done: dict[str, tuple[float, Flat]] = {}  # object id -> (last entry, ranges),
        # least recently written first
        self._watched: dict[str, int] = {}  # object id -> owners waiting for it
        self._idle = PackedRanges()  # unwatched objects idle for IDLE_SECS
        self._newest = 0.0

    @classmethod
    def shared(cls, directory: str | os.PathLike[str], *, keyring: Any = None,
               retention_secs: float = RETENTION_SECS) -> LedgerView:
        """The process's view of ``directory`` (made on first use, kept while in use)."""
        key = (os.path.realpath(directory), id(keyring), retention_secs)  # the view holds
        with cls._registry_lock:  # the keyring, so its id is not reused while it lives
            view = cls._registry.get(key)
            if view is None:
                view = cls._registry[key] = cls(directory, keyring=keyring,
                                                retention_secs=retention_secs)
            return view

    def refresh(self) -> None:
        """Read what was appended since the last refresh."""
        with self._lock:
            for name in self._names:
                for path in self._dir.glob(f"{name}-w*.jsonl"):
                    self._tail(name, path)
            self._expire()

    def _tail(self, name: str, path: Path) -> None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return
        inode, pos = self._pos.get(path, (st.st_ino, 0))
        if inode != st.st_ino or st.st_size < pos:
            pos = 0
        if st.st_size == pos:
            self._pos[path] = (st.st_ino, pos)
            return
        with path.open("rb") as f:
            f.seek(pos)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written waits for next time
        rejected: dict[str, list[int]] = {}
        done = self._done
        for n, line in enumerate(data[:end].splitlines(), 1):
            entry, why = _decode_line(name, line, self._keyring)
            if entry is None:
                if why != "torn":
                    rejected.setdefault(why or "", []).append(n)
                continue
            t = float(entry.t)
            self._newest = max(self._newest, t)
            for obj, rs in entry.r.items():
                if is_derived(obj):  # findings: no source waits for them
                    continue
                had = done.pop(obj, None)  # re-inserted last: the dict stays in write order
                if had is None and self._idle and (got := self._idle.pop(obj)) is not None:
                    had = got[:2]
                if had is None:
                    done[obj] = (t, _flat_add(None, rs))
                else:
                    done[obj] = (max(t, had[0]), _flat_add(had[1], rs))
        _report_rejected(path, name, rejected)  # line numbers count from ``pos``
        self._pos[path] = (st.st_ino, pos + end)

    def _expire(self) -> None:
        """Drop unwatched objects whose last entry is older than the retention, and pack
        those idle for ``IDLE_SECS``."""
        horizon = self._newest - self._retention
        quiet = max(horizon, self._newest - IDLE_SECS)
        old = []
        for obj, (t, _) in self._done.items():
            if t >= quiet:
                break
            if obj not in self._watched:
                old.append(obj)
        for obj in old:
            t, flat = self._done[obj]
            if t < horizon or self._idle.put(obj, t, flat):
                del self._done[obj]
        self._idle.expire(horizon, slack=self._retention / 16)

    def covered(self, object_id: str, count: int) -> bool:
        """Whether offsets ``0 .. count-1`` of the object are all accounted for."""
        return self.covered_ranges(object_id, [[0, count]])

    def covered_ranges(self, object_id: str, ranges: list[list[int]]) -> bool:
        """Whether every offset in ``ranges`` (half-open [start, end)) is accounted for."""
        with self._lock:
            got = self._done.get(object_id)
            flat = got[1] if got else self._idle.get(object_id)
        return all(_holds(flat, s, e) for s, e in ranges)

    def watch(self, object_id: str) -> None:
        """An owner waits for the object: its ranges stay until it :meth:`forget` s it."""
        with self._lock:
            self._watched[object_id] = self._watched.get(object_id, 0) + 1

    def forget(self, object_id: str) -> None:
        """An owner is done with the object (e.g. its message is deleted); once no owner
        watches it, its ranges are kept as long as any unwatched object's. They are not
        dropped: a view reads each line once, and the object may be waited for again (S3
        notifies at least once; a restart reads a deleted message's objects again)."""
        with self._lock:
            left = self._watched.pop(object_id, 0) - 1
            if left > 0:
                self._watched[object_id] = left

    def __len__(self) -> int:
        """Objects whose ranges the view holds."""
        return len(self._done) + len(self._idle)


class _SettledPartition(StatelessSinkPartition[Settled]):
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    @override
    def write_batch(self, items: list[Settled]) -> None:
        self._ledger.record(rid for item in items for rid in item.record_ids)

    @override
    def close(self) -> None:
        self._ledger.close()


class SettledSink(DynamicSink[Settled]):
    """Journals the records transforms took away (:data:`SETTLED`), one file per worker.

    :arg directory: The journals' directory.
    :arg retention_secs: How long an object's ranges are kept after its last entry.
    :arg keyring: Authenticates the lines (see the module docstring).
    """

    def __init__(self, directory: str | os.PathLike[str], retention_secs: float,
                 keyring: Any = None) -> None:
        self._dir = directory
        self._retention = retention_secs
        self._keyring = keyring

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SettledPartition:
        return _SettledPartition(Ledger(self._dir, worker_index, self._retention, name=SETTLED,
                                        keyring=self._keyring))
