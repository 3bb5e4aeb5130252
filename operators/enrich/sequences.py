"""Multi-step patterns by one principal within a time window, declared as data.

One CreateUser is routine; CreateUser, then AttachUserPolicy with AdministratorAccess,
then CreateAccessKey by the same principal within 30 minutes is how a stolen credential
is turned into a lasting admin one. Such chains are declared in TOML
(``operators/enrich/sequences/default.toml``), their steps written in the condition
language of :mod:`operators.enrich.rules`::

    [[sequences]]
    id = "privilege_escalation"
    table = "AWSCloudTrail"            # or "*" (AWSCloudTrail when left out)
    principal = "UserIdentityArn"      # the column whose value groups events (the default)
    window_secs = 1800                 # from the first to the last event of a match
    priority = "critical"              # as for rules ("high" when left out)
    reason = "{principal} ..."         # {principal}, {sequence_id}, {count}, last row's columns
    steps = [
      { match = { EventName = "CreateUser" } },
      { match = { EventName = { prefix = "List" }, ErrorCode = "AccessDenied" }, min_count = 10,
        min_distinct = { EventName = 5 } },
    ]

A match is a subsequence of one principal's events, in event-time order, whose first and
last events are at most ``window_secs`` apart; events in between are ignored. A step with
``min_count = N`` needs N events; with ``min_distinct = { Column = K }`` as well (2 <= K <= N),
those N events (for a first step: the last N of the principal's matching events) must hold
at least K different (non-empty) values of the column, so that ten denials of ten different
APIs count, and a job retrying one denied call ten times does not. Time is event time (the
row's TimeGenerated), never the clock, so replays and backfills find the same matches.

State is small by construction: for each principal, sequence and step reached, only the
partial match that started last is kept (it has the most window left, so for events in
time order it completes whenever an earlier-started one would), as a tuple of record
times, plus, for a ``min_count`` step, the times counted so far (a sliding count for a
first step; a later step counts against the partial match it started with, until that
expires), and for a ``min_distinct`` step their column values (at most N per partial match,
N <= 1000: only the last N events counted are kept). Only a first-step event creates state;
partial matches expire with their window, a principal's state goes once it holds nothing,
and at most ``max_principals`` principals are kept (least recently seen evicted first).
Events are expected in roughly time order: an event older than a partial match's last event
does not extend it, except in a first step's count, where a late event is counted in its
place (a burst's rows come from several objects, read in any order).
:meth:`SequenceDetector.snapshot` gives plain JSON-able state and
:meth:`SequenceDetector.restore` rebuilds it, so a detector can live in a bytewax stateful
operator (keyed by principal, or one per worker); :meth:`SequenceDetector.pack` is what
recovery snapshots hold, packed again only for the principals that changed since the last.

Steps are indexed by the EventName their conditions accept (:class:`StepIndex`): a row
whose EventName no step can take, as most rows, costs one dict lookup.
"""

from __future__ import annotations

import bisect
import logging
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from dataflow.core.timeutil import event_time
from operators.enrich import packing
from operators.enrich.conditions import (
    Pred,
    Reason,
    compile_match,
    compile_reason,
    event_name_gate,
    load_entries,
    table_columns,
)
from operators.enrich.rules import (
    PRIORITIES,
    RuleError,
)

__all__ = [
    "DEFAULT_SEQUENCES",
    "SequenceDetector",
    "SequenceMatch",
    "SequenceSpec",
    "StepIndex",
    "event_time",
    "load_sequences",
]

log = logging.getLogger(__name__)

DEFAULT_SEQUENCES = Path(__file__).with_name("sequences") / "default.toml"
"""The packaged sequences, always loaded first unless ``include_default=False``."""
SNAPSHOT_VERSION = 2
_READABLE_SNAPSHOTS = (1, 2)  # version 1: no min_distinct values

_SEQ_KEYS = frozenset({"id", "table", "principal", "window_secs", "priority", "reason", "steps",
                       "enabled", "description"})
_STEP_KEYS = frozenset({"match", "any", "min_count", "min_distinct", "name"})
_MAX_VALUE_CHARS = 256
"""Longer min_distinct values are cut to this (they are kept in the state)."""
_Chain = tuple[float, ...]




@dataclass(frozen=True, slots=True)
class SequenceMatch:
    """A completed sequence: who, why, and the event times of the records that made it."""

    sequence_id: str
    principal: str
    reason: str
    record_times: tuple[float, ...]
    """Event times (epoch seconds) of the matched records, first to last."""
    priority: str = "high"


@dataclass(frozen=True, eq=False)
class SequenceSpec:
    """One compiled sequence (build with :func:`load_sequences`)."""

    id: str
    table: str
    principal: str
    window_secs: float
    priority: str
    reason: str
    origin: str
    step_preds: tuple[Pred, ...] = field(repr=False)
    step_gates: tuple[Callable[[Any], bool] | None, ...] = field(repr=False)
    """Each step's test of the EventName alone (:func:`event_name_gate`), or None."""
    counts: tuple[int, ...] = field(repr=False)
    """Each step's min_count."""
    render: Reason = field(repr=False)
    distinct: tuple[tuple[str, int] | None, ...] = field(default=(), repr=False)
    """Each step's min_distinct as (column, number), or None; () when no step has one."""


def load_sequences(paths: Iterable[str | Path] | None = None, *,
                   include_default: bool = True) -> tuple[SequenceSpec, ...]:
    """The packaged sequences plus ``paths`` (each adds, replaces or removes by id).

    :raises RuleError: With every problem of every file, naming file and sequence.
    """
    files = ([DEFAULT_SEQUENCES] if include_default else []) + list(paths or ())
    problems: list[str] = []
    specs = []
    for origin, e in load_entries(files, "sequences", problems):
        where = f"{origin}: sequence {e['id']!r}"
        n = len(problems)
        for k in sorted(set(e) - _SEQ_KEYS):
            problems.append(f"{where}: unknown key {k!r}; sequences take "
                            f"{', '.join(sorted(_SEQ_KEYS))}")
        table, principal = e.get("table", "AWSCloudTrail"), e.get("principal", "UserIdentityArn")
        window, priority = e.get("window_secs"), e.get("priority", "high")
        if not isinstance(table, str) or not table:
            problems.append(f"{where}: 'table' must be a table name or \"*\"")
            table = "*"
        cols = table_columns(table)
        if not isinstance(principal, str) or (cols is not None and principal not in cols):
            problems.append(f"{where}: principal {principal!r} must be a column of {table}")
        if isinstance(window, bool) or not isinstance(window, (int, float)) or window <= 0:
            problems.append(f"{where}: window_secs must be a positive number of seconds")
        if priority not in PRIORITIES:
            problems.append(f"{where}: priority {priority!r} is not one of {', '.join(PRIORITIES)}")
        render = compile_reason(e.get("reason"), where, problems)
        steps = e.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, dict) for s in steps):
            problems.append(f"{where}: 'steps' must be a non-empty list of tables with 'match'")
            steps = []
        preds, gates, counts = [], [], []
        distinct: list[tuple[str, int] | None] = []
        for i, step in enumerate(steps):
            swhere = f"{where}: steps[{i}]"
            for k in sorted(set(step) - _STEP_KEYS):
                problems.append(f"{swhere}: unknown key {k!r}; steps take "
                                f"{', '.join(sorted(_STEP_KEYS))}")
            match = step.get("match", {})
            if not isinstance(match, dict) or not (match or "any" in step):
                problems.append(f"{swhere}: 'match' must be a non-empty table of conditions")
                match = {}
            if "any" in step:
                match = {**match, "any": step["any"]} if "any" not in match else match
            count = step.get("min_count", 1)
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
                problems.append(f"{swhere}: min_count must be a whole number from 1 to 1000")
                count = 1
            preds.append(compile_match(match, swhere, problems, cols))
            gates.append(event_name_gate(match))
            counts.append(count)
            distinct.append(_min_distinct(step, count, swhere, problems, cols))
        if len(problems) > n or render is None:
            continue
        assert isinstance(window, (int, float))  # checked above: a positive number
        specs.append(SequenceSpec(e["id"], table, principal, float(window), priority,
                                  e["reason"], origin, tuple(preds), tuple(gates), tuple(counts),
                                  render, tuple(distinct) if any(distinct) else ()))
    if problems:
        raise RuleError(problems, what="sequence")
    return tuple(specs)


def _min_distinct(step: Mapping[str, Any], count: int, where: str, problems: list[str],
                  cols: frozenset[str] | None) -> tuple[str, int] | None:
    """A step's ``min_distinct = { Column = K }`` as (column, K), or None (problems noted)."""
    if "min_distinct" not in step:
        return None
    spec = step["min_distinct"]
    if not isinstance(spec, dict) or len(spec) != 1:
        problems.append(f"{where}: min_distinct must be a table of one column and a number, "
                        f"e.g. min_distinct = {{ EventName = 5 }}; got {spec!r}")
        return None
    [(column, k)] = spec.items()
    if cols is not None and column not in cols:
        problems.append(f"{where}: min_distinct: the table has no column {column!r}")
        return None
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= count:
        problems.append(f"{where}: min_distinct {column} = {k!r} must be a whole number from 2 "
                        f"to the step's min_count ({count}): K different values among its "
                        "min_count events")
        return None
    return column, k


_Candidate = tuple[int, int, Pred, str, str]  # spec index, step index, predicate, principal, id
_T = TypeVar("_T")
_MAX_NAMES = 4096
"""EventNames whose candidate steps an index keeps (AWS has a few thousand APIs)."""


class StepIndex(Generic[_T]):
    """Steps (any item with its EventName gate) indexed by the EventName their gates let
    through, one tuple per name made on first sight: a row whose EventName no step can take
    costs one dict lookup, however the steps name it (a list, a prefix, a regex)."""

    __slots__ = ("_by_name", "_gated")

    def __init__(self, gated: Iterable[tuple[_T, Callable[[Any], bool] | None]]) -> None:
        self._gated = tuple(gated)
        self._by_name: dict[Any, tuple[_T, ...]] = {}

    def of(self, row: Mapping[str, Any]) -> tuple[_T, ...]:
        """The steps a row can match, judged by its EventName alone (in index order)."""
        name = row.get("EventName")
        got = self._by_name.get(name) if name is None or name.__class__ is str else None
        if got is None:
            got = tuple(c for c, gate in self._gated if gate is None or gate(name))
            if (name is None or name.__class__ is str) and len(self._by_name) < _MAX_NAMES:
                self._by_name[name] = got
        return got


class SequenceDetector:
    """Finds declared sequences in a stream of rows, per principal, in event time.

    :arg specs: Compiled sequences (:func:`load_sequences`); None loads the packaged ones.
    :arg max_principals: Most principals with partial matches kept; the least recently
        seen are evicted beyond it (their partial matches are lost).
    """

    def __init__(self, specs: Iterable[SequenceSpec] | None = None,
                 max_principals: int = 100_000) -> None:
        if max_principals < 1:
            msg = f"max_principals must be at least 1, got {max_principals}"
            raise ValueError(msg)
        self.specs = tuple(load_sequences() if specs is None else specs)
        self.max_principals = max_principals
        self.evicted = 0
        """Principals dropped (with their partial matches) to stay within max_principals."""
        self._state: OrderedDict[str, dict[str, list[Any]]] = OrderedDict()
        self._index: dict[tuple[str, str | None], StepIndex[_Candidate]] = {}
        self._packed: dict[str, bytes] = {}
        """Each principal's state as :meth:`pack` last pickled it, until it changes."""
        self._newest: dict[str, float] = {}
        """The newest event time in each principal's state."""
        self._horizon = 2.0 * max((s.window_secs for s in self.specs), default=0.0)
        """A principal whose newest event is this much older than a new principal's event
        holds only expired partial matches (twice the longest window: rows come roughly in
        time order, not exactly): it is dropped."""
        self.expired = 0
        """Principals dropped because every partial match they held had expired."""

    def __len__(self) -> int:
        """Principals with partial matches."""
        return len(self._state)

    def _build(self, table: str, group: str | None = None) -> StepIndex[_Candidate]:
        index: StepIndex[_Candidate] = StepIndex(
            ((si, j, pred, spec.principal, spec.id), gate)
            for si, spec in enumerate(self.specs) if spec.table in (table, "*")
            and (group is None or spec.principal == group)
            for j, (pred, gate) in enumerate(zip(spec.step_preds, spec.step_gates, strict=False)))
        self._index[(table, group)] = index
        return index

    def observe(self, table: str, row: Mapping[str, Any],
                ts: float | None = None, *, group: str | None = None) -> list[SequenceMatch]:
        """Feed one row; returns the sequences it completes (usually none).

        :arg ts: The row's event time in epoch seconds; by default its TimeGenerated. A row
            without a usable time cannot be placed in a window and is ignored.
        :arg group: Only the sequences grouped by this column (their ``principal``); by
            default every sequence of the table. A flow that shards rows by a column's
            value feeds each shard the rows of the sequences grouped by that column.
        """
        index = self._index.get((table, group))
        candidates = (index if index is not None else self._build(table, group)).of(row)
        if not candidates:  # the common case: no step takes this EventName
            return []
        hits: dict[int, set[int]] | None = None
        state = self._state
        for si, j, pred, col, sid in candidates:
            if j:  # a later step only advances a partial match: look for one before matching
                principal = row.get(col)
                if principal.__class__ is not str:
                    if principal is None:
                        continue
                    principal = str(principal)
                mine = state.get(principal)
                if mine is None or sid not in mine:
                    continue  # no partial match to advance: the common case
            if pred(row):
                if hits is None:
                    hits = {si: {j}}
                elif si in hits:
                    hits[si].add(j)
                else:
                    hits[si] = {j}
        if hits is None:
            return []
        out: list[SequenceMatch] = []
        when = None
        for si, steps in hits.items():
            spec = self.specs[si]
            principal = row.get(spec.principal)
            if principal is None or principal == "":
                continue
            principal = principal if principal.__class__ is str else str(principal)
            if when is None:
                when = event_time(row.get("TimeGenerated") if ts is None else ts)
                if when is None:
                    return out
            done = self._advance(spec, principal, steps, when, row)
            if done is not None:
                extra = {"principal": principal, "sequence_id": spec.id, "count": len(done)}
                out.append(SequenceMatch(spec.id, principal, spec.render(row, extra), done,
                                         spec.priority))
        return out

    def _advance(self, spec: SequenceSpec, principal: str, steps: set[int],
                 ts: float, row: Mapping[str, Any]) -> _Chain | None:
        state = self._state.get(principal)
        seen = self._newest
        if state is None:
            if 0 not in steps:  # nothing to advance: no state for this principal
                return None
            self._sweep(ts)
            state = self._state[principal] = {}
            seen[principal] = ts
            if len(self._state) > self.max_principals:
                gone, _ = self._state.popitem(last=False)
                self._packed.pop(gone, None)
                seen.pop(gone, None)
                self.evicted += 1
        else:
            self._state.move_to_end(principal)
            if ts > seen.get(principal, ts - 1.0):
                seen[principal] = ts
        self._packed.pop(principal, None)  # changed: pickled again by the next pack()
        counts, window, last = spec.counts, spec.window_secs, len(spec.counts) - 1
        entries = state.get(spec.id)
        entries = [_EMPTY] * len(counts) if entries is None else _expire(entries, ts, window)
        done_chain = None
        for j in range(last, -1, -1):  # last step first: one event advances a chain one step
            if j not in steps:
                continue
            done, anchor, times, vals = entries[j]
            if j == 0:
                prev: _Chain = ()
            else:
                before = entries[j - 1][0]
                if before is None or ts < before[-1] or ts - before[0] > window:
                    continue
                prev = before
            need = counts[j]
            if need == 1:
                new = (*prev, ts)
            else:
                dist = spec.distinct[j] if spec.distinct else None
                if j == 0:  # a sliding count: the last `need` times within one window
                    v = _value(row, dist[0]) if dist is not None else None
                    if times and times[-1] > ts:
                        # Out of order (a group's rows read from several objects by several
                        # workers): counted in its place, within the window of the newest.
                        i = bisect.bisect_right(times, ts)
                        times = (*times[:i], ts, *times[i:])
                        if dist is not None:
                            vals = (*vals[:i], v, *vals[i:])
                        k, newest = 0, times[-1]
                        while newest - times[k] > window:
                            k += 1
                        times, vals = times[k:], vals[k:]
                    else:
                        times = (*times, ts)
                        if dist is not None:
                            vals = (*vals, v)
                    times = times[-need:]
                    if dist is not None:
                        vals = vals[-need:]
                    entries[0] = (done, None, times, vals)
                    if len(times) < need or (dist is not None and _distinct(vals) < dist[1]):
                        continue
                    new = times
                else:  # counts against the partial match it started with, until that expires
                    if anchor is None or (anchor != prev and not times):
                        anchor, times, vals = prev, (), ()
                    times = (*times, ts)[-need:]
                    if dist is not None:
                        vals = (*vals, _value(row, dist[0]))[-need:]
                    if len(times) < need or (dist is not None and _distinct(vals) < dist[1]):
                        entries[j] = (done, anchor, times, vals)
                        continue
                    new = (*anchor, *times)
                    entries[j] = (done, None, (), ())
            if j == last:
                done_chain = new
            elif done is None or new[0] >= done[0]:
                entries[j] = (new, *entries[j][1:])
        if done_chain is not None or all(e[0] is None and not e[2] for e in entries):
            state.pop(spec.id, None)
            if not state:
                del self._state[principal]
                seen.pop(principal, None)
        else:
            state[spec.id] = entries
        return done_chain

    def _sweep(self, ts: float) -> None:
        """Drop the least recently seen principals whose partial matches have all expired
        by event time ``ts`` (from the front, up to the first that may hold a live one):
        principals seen once (a session name made per run, an address) do not stay until
        the ``max_principals`` bound evicts them."""
        state, newest, packed = self._state, self._newest, self._packed
        horizon = self._horizon
        while state:
            p = next(iter(state))
            if ts - newest.get(p, ts) <= horizon:
                return
            del state[p]
            newest.pop(p, None)
            packed.pop(p, None)
            self.expired += 1

    def snapshot(self) -> dict[str, Any]:
        """The partial matches as plain JSON-able data, least recently seen principal first.

        Per principal and sequence, one ``[done, anchor, times, values]`` per step: the
        partial match through that step (record times), and for a ``min_count`` step the
        times counted so far (and, after the first step, the partial match they extend),
        with, for a ``min_distinct`` step, the column value of each (else ``[]``).
        """
        return {"version": SNAPSHOT_VERSION, "principals": [
            [p, {sid: [[_list(d), _list(a), list(t), list(v)] for d, a, t, v in entries]
                 for sid, entries in state.items()}]
            for p, state in self._state.items()]}

    def pack(self) -> dict[str, Any]:
        """What recovery snapshots hold: :meth:`snapshot` with each principal's partial
        matches as bytes (``packed`` instead of ``principals``), made again only for the
        principals whose state changed since the last one, so snapshotting a detector costs
        what changed, not what it holds. :meth:`restore` takes either."""
        packed = self._packed
        out = []
        for p, state in self._state.items():
            b = packed.get(p)
            if b is None:
                b = packed[p] = packing.pack(state)
            out.append((p, b))
        return {"version": SNAPSHOT_VERSION, "packed": out}

    @classmethod
    def restore(cls, specs: Iterable[SequenceSpec] | None, snapshot: Mapping[str, Any] | None,
                max_principals: int = 100_000) -> SequenceDetector:
        """A detector continuing from ``snapshot`` (None: a fresh one).

        Partial matches of sequences that are gone, or whose number of steps changed, are
        dropped (and logged): they cannot be continued meaningfully. Counted events without
        a recorded value (a version 1 snapshot, or a step given ``min_distinct`` since)
        still count towards ``min_count`` but not as a distinct value.

        :raises ValueError: The snapshot is of a format version this code cannot read.
        """
        det = cls(specs, max_principals)
        if not snapshot:
            return det
        if snapshot.get("version") not in _READABLE_SNAPSHOTS:
            msg = (f"sequence snapshot version {snapshot.get('version')!r} is not one of "
                   f"{', '.join(map(str, _READABLE_SNAPSHOTS))}; start without the old state "
                   "(it cannot be read)")
            raise ValueError(msg)
        by_id = {s.id: s for s in det.specs}
        dropped = 0
        packed = [(p, packing.unpack(b))
                  for p, b in list(snapshot.get("packed", ()))[-max_principals:]]
        for principal, state in [*list(snapshot.get("principals", ()))[-max_principals:],
                                 *packed]:
            kept = {}
            for sid, entries in state.items():
                spec = by_id.get(sid)
                if spec is None or len(spec.counts) != len(entries):
                    dropped += 1
                    continue
                kept[sid] = [_entry(e, bool(spec.distinct and spec.distinct[j]))
                             for j, e in enumerate(entries)]
            if kept:
                det._state[str(principal)] = kept
                det._newest[str(principal)] = _newest_of(kept)
        if dropped:
            log.warning("dropped %d partial sequence matches whose sequence is gone or changed",
                        dropped)
        return det


_Entry = tuple[_Chain | None, _Chain | None, _Chain, tuple[str | None, ...]]
_EMPTY: _Entry = (None, None, (), ())


def _value(row: Mapping[str, Any], column: str) -> str | None:
    """A row's value of a min_distinct column as kept in the state (None when empty)."""
    v = row.get(column)
    if v.__class__ is not str:
        if v is None:
            return None
        v = str(v)
    if not v:
        return None
    return sys.intern(v if len(v) <= _MAX_VALUE_CHARS else v[:_MAX_VALUE_CHARS])


def _distinct(vals: tuple[str | None, ...]) -> int:
    """Different values among ``vals``, unknown (None) ones not counted."""
    seen = set(vals)
    return len(seen) - (None in seen)


def _expire(entries: list[_Entry], ts: float, window: float) -> list[_Entry]:
    """Entries without the parts whose window has passed at ``ts``."""
    out = []
    for j, (done, anchor, times, vals) in enumerate(entries):
        if done is not None and ts - done[0] > window:
            done = None
        if anchor is not None and ts - anchor[0] > window:
            anchor, times, vals = None, (), ()
        elif j == 0 and times and ts - times[0] > window:  # times ascend: drop the oldest
            k = 1
            while k < len(times) and ts - times[k] > window:
                k += 1
            times, vals = times[k:], vals[k:]
        out.append((done, anchor, times, vals))
    return out


def _entry(e: list[Any], distinct: bool) -> _Entry:
    """One step's snapshot entry (3 items in version 1, 4 since) as kept in the state."""
    done, anchor, times = _tuple(e[0]), _tuple(e[1]), _tuple(e[2]) or ()
    if not distinct:
        return done, anchor, times, ()
    vals = tuple(None if v is None else sys.intern(str(v)) for v in e[3]) if len(e) > 3 else ()
    if len(vals) != len(times):  # no values recorded: the counted events are of unknown value
        vals = (None,) * len(times)
    return done, anchor, times, vals


def _newest_of(state: Mapping[str, list[_Entry]]) -> float:
    """The newest event time in a principal's partial matches."""
    return max((t for entries in state.values() for done, anchor, times, _ in entries
                for chain in (done, anchor, times) if chain for t in chain), default=0.0)


def _list(chain: _Chain | None) -> list[float] | None:
    return None if chain is None else list(chain)


def _tuple(times: Iterable[Any] | None) -> _Chain | None:
    return None if times is None else tuple(float(t) for t in times)
