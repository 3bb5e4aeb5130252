"""Transforms before ingest: keep, sample, route and trim rows, to pay only for what matters.

Declared per table (and optionally per source) under ``[[transforms]]``, they act on rows
after mapping (so they speak the table's column names) and after enrichment (a row that is
dropped can still raise a finding), before batching, in this order:

1. ``where``: keep the rows matching a SQL boolean expression, drop the rest;
2. ``sample``: keep 1 row in N, chosen by the record id (CRC-32 modulo N), so a restart or
   a replay keeps exactly the same rows and the upload journal's guarantee holds;
3. ``aggregate``: rows matching an aggregate's ``where`` are summarised instead of sent:
   one row per ``by`` values and ``bucket_secs`` of ``TimeGenerated`` within what one
   object holds, with SQL aggregate functions that merge (``sum``, ``count``, ``min``,
   ``max``), into a table you declare (see :class:`Aggregator`);
4. ``route``: a row matching a route's ``where`` goes to that route's table instead (the
   first route that matches), e.g. low-value rows to a table on the Basic or Auxiliary
   plan; it carries the columns that table declares (a table with fewer columns is a way
   to trim what is kept there);
5. ``drop``: remove columns from the rows that remain (routed ones included).

Rows taken away (dropped, sampled out, summarised) come out as
:class:`~dataflow.core.messages.Settled` record ids: the journals count them as accounted
for, so an SQS message or a freshness check does not wait for rows that will never be sent.

Expressions are SQL, run by polars' SQL engine on a frame of the rows with the table's
column types: no code from the config is executed, and :func:`check` compiles every
expression against the table's columns (an unknown column or a type mismatch is refused
with its key path). ``datetime`` columns are ISO-8601 UTC text (so ``TimeGenerated >=
'2026-01-01'`` compares as it reads) and ``dynamic`` ones their JSON text.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from bytewax.operators import StatefulBatchLogic
from typing_extensions import override

from dataflow.core import metrics
from dataflow.core.lazy import lazy_import
from dataflow.core.messages import Partial, Rows, Settled
from operators.tabledef import TableDef

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_import("polars")  # imported on first use: most flows never need it

__all__ = ["AGGREGATE_OFFSET", "AggregateConfig", "AggregateLogic", "Aggregator", "RouteConfig",
           "TransformConfig", "Transformer", "check"]

_POLARS = {"string": "String", "int": "Int64", "long": "Int64", "real": "Float64",
           "bool": "Boolean", "datetime": "String", "dynamic": "String"}
"""The polars type of each column type, by name (polars is imported on first use)."""
_INDEX = "__row"


@dataclass(frozen=True)
class RouteConfig:
    """Rows matching ``where`` go to ``table`` instead."""

    table: str
    """The table they go to: the rows keep the columns it declares (same names and types
    as their own table's)."""
    where: str
    """SQL boolean expression over the rows' columns."""


@dataclass(frozen=True)
class AggregateConfig:
    """Rows matching ``where`` are summarised into ``table`` instead of sent.

    One summary row per object, ``bucket_secs`` of ``TimeGenerated`` (the bucket's start is
    the summary's ``TimeGenerated``) and ``by`` values, with the ``values``.
    """

    table: str
    """The summary table: it declares TimeGenerated, the ``by`` columns and the values."""
    by: list[str]
    """Columns of the rows that key a summary (same names and types in the summary table)."""
    values: list[str]
    """``FUNCTION(column) AS Name`` with ``sum``, ``count`` (``count(*)`` counts rows),
    ``min`` and ``max``: SQL aggregate functions that merge across parts of an object."""
    where: str = ""
    """SQL boolean expression: the rows summarised (default: every row)."""
    bucket_secs: int = 60
    """Width of a time bucket in seconds."""


@dataclass(frozen=True)
class TransformConfig:
    """What happens to the rows of one table before they are sent."""

    table: str
    """The table whose rows are transformed."""
    sources: list[str] = field(default_factory=list)
    """Only rows of these sources (default: every source)."""
    where: str = ""
    """Keep the rows matching this SQL boolean expression; drop the others."""
    sample: int = 1
    """Keep 1 row in ``sample``, chosen by the record id (deterministic)."""
    aggregate: list[AggregateConfig] = field(default_factory=list)
    """Rows matching an aggregate's ``where`` are summarised into its table (the first that
    matches), before the routes."""
    route: list[RouteConfig] = field(default_factory=list)
    """Rows matching a route's ``where`` go to its table (the first that matches)."""
    drop: list[str] = field(default_factory=list)
    """Columns removed from the rows that remain."""

    def validate(self, problems: list[str], where: str) -> None:
        """Append what is wrong with this entry (alone) to ``problems``."""
        if self.sample < 1:
            problems.append(f"{where}.sample: must be a positive integer (keep 1 row in N)")
        if not (self.where or self.sample > 1 or self.route or self.drop or self.aggregate):
            problems.append(f"{where}: does nothing (set where, sample, aggregate, route or drop)")
        for j, a in enumerate(self.aggregate):
            if a.bucket_secs < 1:
                problems.append(f"{where}.aggregate[{j}].bucket_secs: must be a positive "
                                "number of seconds")


def _schema(table: TableDef) -> dict[str, Any]:
    cols = {c.name: getattr(pl, _POLARS[c.type]) for c in (*table.columns, *table.added)}
    return cols | {table.record_id_column: pl.String}


def _compile(sql: str, schema: Mapping[str, Any]) -> str | None:
    """Why ``sql`` is not a boolean expression over ``schema``, or None."""
    frame = pl.DataFrame(schema=dict(schema))
    try:
        out = pl.SQLContext(rows=frame).execute(f"SELECT * FROM rows WHERE {sql}", eager=True)
    except Exception as ex:  # polars raises several kinds (SQLSyntaxError, ColumnNotFound, ...)
        first = str(ex).strip().splitlines()[0] if str(ex).strip() else type(ex).__name__
        return f"{type(ex).__name__}: {first}"
    if list(out.columns) != list(schema):
        return "the expression must filter rows, not change columns"
    return None


def check(transforms: Sequence[TransformConfig], tables: Mapping[str, TableDef],
          sources: Sequence[str]) -> list[str]:
    """Every problem of the transforms against the tables, with key paths: unknown tables,
    sources and columns, expressions that do not compile or compare mismatched types,
    routes to tables that cannot take the rows."""
    problems: list[str] = []
    for i, t in enumerate(transforms):
        where = f"transforms[{i}]"
        table = tables.get(t.table)
        if table is None:
            problems.append(f"{where}.table: no table {t.table!r}")
            continue
        schema = _schema(table)
        for s in t.sources:
            if s not in sources:
                problems.append(f"{where}.sources: no source {s!r}")
        if t.where and (why := _compile(t.where, schema)):
            problems.append(f"{where}.where: {why}")
        for j, a in enumerate(t.aggregate):
            problems += _check_aggregate(a, table, tables, f"{where}.aggregate[{j}]")
        for j, r in enumerate(t.route):
            rwhere = f"{where}.route[{j}]"
            target = tables.get(r.table)
            if target is None:
                problems.append(f"{rwhere}.table: no table {r.table!r} (declare it under "
                                "[[tables]] with the columns of " + t.table + ")")
                continue
            if target.stream == table.stream:
                problems.append(f"{rwhere}.table: routes to its own table")
            theirs = _schema(target)
            clash = [f"{c} ({schema[c]} here, {tp} there)" for c, tp in theirs.items()
                     if c in schema and c != target.record_id_column and schema[c] != tp]
            if clash:
                problems.append(f"{rwhere}.table: {r.table} types columns otherwise: "
                                f"{', '.join(clash)}")
            if why := _compile(r.where, schema):
                problems.append(f"{rwhere}.where: {why}")
        for c in t.drop:
            col = next((x for x in table.columns if x.name == c), None)
            if c not in schema:
                problems.append(f"{where}.drop: no column {c!r} in {t.table}")
            elif c == "TimeGenerated" or c == table.record_id_column or (col and col.required):
                problems.append(f"{where}.drop: {c!r} is required (TimeGenerated, the record "
                                "id and required columns stay)")
    return problems


_VALUE = re.compile(r"\s*(sum|count|min|max)\s*\(\s*(\*|[A-Za-z_][A-Za-z0-9_]*)\s*\)"
                    r"\s+as\s+([A-Za-z_][A-Za-z0-9_]*)\s*", re.IGNORECASE)
_NUMERIC = frozenset({"int", "long", "real"})

AGGREGATE_OFFSET = 2**48
"""Summary rows' record ids are ``<object id>-<offset>`` with offsets from here on (2**32
per aggregate of the flow), apart from any record's own offset."""

MAX_GROUPS = 100_000
"""Most summaries one object holds per aggregate; past it, those held are sent and the
object's next rows start new ones (an object of endless distinct keys stays bounded)."""


@dataclass(frozen=True)
class _Value:
    func: str
    """sum, count, min or max."""
    column: str
    """The column it reads, or ``*`` (``count(*)``)."""
    name: str
    """The summary table's column."""


def _values(a: AggregateConfig) -> tuple[list[_Value], list[str]]:
    out, problems = [], []
    for k, text in enumerate(a.values):
        m = _VALUE.fullmatch(text)
        if m is None:
            problems.append(f"values[{k}]: {text!r} is not FUNCTION(column) AS Name with "
                            "FUNCTION one of sum, count, min, max")
            continue
        func, col, name = m.group(1).lower(), m.group(2), m.group(3)
        if col == "*" and func != "count":
            problems.append(f"values[{k}]: {func}(*) is not defined (only count(*))")
            continue
        out.append(_Value(func, col, name))
    return out, problems


def _check_aggregate(a: AggregateConfig, table: TableDef, tables: Mapping[str, TableDef],
                     where: str) -> list[str]:
    problems: list[str] = []
    target = tables.get(a.table)
    if target is None:
        return [f"{where}.table: no table {a.table!r} (declare it under [[tables]] with "
                "TimeGenerated, the by columns and the values)"]
    if target.stream == table.stream:
        problems.append(f"{where}.table: summarises into its own table")
    src = {c.name: c.type for c in (*table.columns, *table.added)}
    dst = {c.name: c.type for c in (*target.columns, *target.added)}
    if dst.get("TimeGenerated") != "datetime":
        problems.append(f"{where}.table: {a.table} has no TimeGenerated (datetime) column")
    if not a.by:
        problems.append(f"{where}.by: name at least one column")
    for c in a.by:
        if c not in src:
            problems.append(f"{where}.by: no column {c!r} in {table.name}")
        elif dst.get(c) != src[c]:
            problems.append(f"{where}.by: {a.table} must declare {c} as {src[c]} "
                            f"(it declares {dst.get(c) or 'nothing'})")
    values, bad = _values(a)
    problems += [f"{where}.{p}" for p in bad]
    if not values and not bad:
        problems.append(f"{where}.values: name at least one value (e.g. \"count(*) AS Rows\")")
    for k, v in enumerate(values):
        vwhere = f"{where}.values[{k}]"
        if v.column != "*" and v.column not in src:
            problems.append(f"{vwhere}: no column {v.column!r} in {table.name}")
            continue
        if v.name in a.by or v.name == "TimeGenerated":
            problems.append(f"{vwhere}: {v.name} is already a key column")
        have = src.get(v.column)
        if v.func == "count":
            want = {"int", "long"}
        elif v.func == "sum":
            if have not in _NUMERIC:
                problems.append(f"{vwhere}: sum({v.column}) needs a number column "
                                f"({v.column} is {have})")
                continue
            want = {"real"} if have == "real" else {"long", "int"}
        else:
            want = {have or ""}
        if dst.get(v.name) not in want:
            problems.append(f"{vwhere}: {a.table} must declare {v.name} as "
                            f"{' or '.join(sorted(want))} (it declares "
                            f"{dst.get(v.name) or 'nothing'})")
    if a.where and (why := _compile(a.where, _schema(table))):
        problems.append(f"{where}.where: {why}")
    return problems


class _Spec:
    """One aggregate of the flow, ready to run."""

    def __init__(self, index: int, a: AggregateConfig, table: TableDef,
                 target: TableDef) -> None:
        self.index = index
        self.where = a.where
        self.by = list(a.by)
        self.bucket = a.bucket_secs
        self.values = _values(a)[0]
        self.table = table
        self.target = target

    def exprs(self) -> list[pl.Expr]:
        out: list[pl.Expr] = []
        for v in self.values:
            col = pl.col(v.column) if v.column != "*" else None
            if col is None:
                e = pl.len()
            elif v.func == "count":
                e = col.count()
            elif v.func == "sum":  # SQL: the sum of no values is null, not 0
                e = pl.when(col.count() > 0).then(col.sum())
            else:
                e = col.min() if v.func == "min" else col.max()
            out.append(e.alias(f"__v{len(out)}"))
        return out

    def merge(self, acc: list[Any], more: Sequence[Any]) -> None:
        for k, (v, b) in enumerate(zip(self.values, more, strict=True)):
            a = acc[k]
            if b is None:
                continue
            if a is None:
                acc[k] = b
            elif v.func in ("sum", "count"):
                acc[k] = a + b
            elif v.func == "min":
                acc[k] = min(a, b)
            else:
                acc[k] = max(a, b)

    def row(self, key: Sequence[Any], acc: Sequence[Any], record_id: str) -> bytes:
        row: dict[str, Any] = {"TimeGenerated": _iso(key[0])}
        for name, v in zip(self.by, key[1:], strict=True):
            if v is not None:
                row[name] = v
        for v, a in zip(self.values, acc, strict=True):
            if a is not None:
                row[v.name] = a
        row[self.target.record_id_column] = record_id
        return orjson.dumps(row)


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class _Plan:
    """The transforms of one (table, source), ready to run."""

    def __init__(self, t: TransformConfig, table: TableDef,
                 tables: Mapping[str, TableDef], specs: list[_Spec]) -> None:
        self.where = t.where
        self.sample = t.sample
        self.aggregates = specs
        self.routes = [(r.where, tables[r.table]) for r in t.route]
        self.drop = frozenset(t.drop)
        self.table = table
        schema = _schema(table)
        # The frame holds only the columns the expressions read (and what aggregates key
        # and sum): read by polars' JSON reader straight from the rows, unless one of them
        # is dynamic (its JSON text must be orjson's, as documented, not polars' spelling).
        wanted = {table.record_id_column}
        for sql in [t.where, *(r.where for r in t.route), *(a.where for a in specs)]:
            if sql:
                wanted |= set(pl.sql_expr(sql).meta.root_names())
        for a in specs:
            wanted |= {"TimeGenerated", *a.by, *(v.column for v in a.values if v.column != "*")}
        self.schema = {c: tp for c, tp in schema.items() if c in wanted}
        dynamic = {c.name for c in (*table.columns, *table.added) if c.type == "dynamic"}
        self.by_polars = not (wanted & dynamic)


def _specs(transforms: Sequence[TransformConfig],
           tables: Mapping[str, TableDef]) -> list[list[_Spec]]:
    """The aggregates of each transform, numbered across the flow."""
    out, n = [], 0
    for t in transforms:
        specs = []
        for a in t.aggregate:
            specs.append(_Spec(n, a, tables[t.table], tables[a.table]))
            n += 1
        out.append(specs)
    return out


class Transformer:
    """Applies the ``[[transforms]]`` to bundles of rows (see the module docstring).

    :arg transforms: The configured transforms (checked with :func:`check`).
    :arg tables: Table definitions by name.
    """

    def __init__(self, transforms: Sequence[TransformConfig],
                 tables: Mapping[str, TableDef]) -> None:
        self._plans: dict[tuple[str, str], list[_Plan]] = {}
        self._by_stream = {t.stream: t for t in tables.values()}
        self._any: dict[str, list[tuple[frozenset[str], _Plan]]] = {}
        self._all_specs = [s for specs in _specs(transforms, tables) for s in specs]
        for t, specs in zip(transforms, _specs(transforms, tables), strict=True):
            table = tables[t.table]
            self._any.setdefault(table.stream, []).append(
                (frozenset(t.sources), _Plan(t, table, tables, specs)))
        self.aggregates = any(t.aggregate for t in transforms)
        """Whether some rows are summarised (the flow then needs objects' end markers)."""

    @property
    def streams(self) -> frozenset[str]:
        """Streams some transform applies to."""
        return frozenset(self._any)

    def _plans_for(self, stream: str, source: str) -> list[_Plan]:
        plans = self._plans.get((stream, source))
        if plans is None:
            plans = [p for srcs, p in self._any.get(stream, ()) if not srcs or source in srcs]
            self._plans[(stream, source)] = plans
        return plans

    def apply(self, rows: Rows) -> list[Rows | Settled | Partial]:
        """The bundle after the transforms of its table and source: one bundle per table
        its rows end in (none when every row was taken away), the partial summaries, and
        the ids of the rows taken away."""
        source = rows.partition.rpartition(":")[0]
        plans = self._plans_for(rows.stream, source) if rows.rows else None
        if not plans:
            return [rows]
        table = plans[0].table.name  # every plan of a stream is of its table
        metrics.TRANSFORM_ROWS.labels(table, "in").inc(len(rows.rows))
        metrics.TRANSFORM_BYTES.labels(table, "in").inc(sum(map(len, rows.rows)))
        out: list[Rows | Settled | Partial] = []
        gone: list[str] = []
        for plan in plans:
            rows, more = self._run(plan, rows, gone)
            out += more
            if not rows.rows:
                break
        metrics.TRANSFORM_ROWS.labels(table, "kept").inc(len(rows.rows))
        metrics.TRANSFORM_BYTES.labels(table, "out").inc(
            sum(map(len, rows.rows))
            + sum(len(r) for b in out if isinstance(b, Rows) for r in b.rows))
        return ([rows] if rows.rows else []) + out + ([Settled(tuple(gone))] if gone else [])

    def apply_whole(self, bundles: Iterable[Rows]) -> list[Rows]:
        """The rows of whole objects after the transforms, summaries merged: for tools that
        read objects to the end in one go (``preview``, ``estimate``), not for the flow."""
        out: list[Rows] = []
        logics: dict[str, AggregateLogic] = {}
        for bundle in bundles:
            for item in self.apply(bundle):
                if isinstance(item, Partial):
                    logic = logics.setdefault(item.object_id,
                                              AggregateLogic(self._all_specs, None, None))
                    out += logic.on_batch([item])[0]
                elif isinstance(item, Rows):
                    out.append(item)
        for logic in logics.values():
            out += logic.on_eof()[0]
        return out

    def _run(self, plan: _Plan, rows: Rows,
             gone: list[str]) -> tuple[Rows, list[Rows | Partial]]:
        table = plan.table.name
        n_in = len(rows.rows)
        keep = list(range(n_in))
        ids = rows.record_ids
        if plan.where or plan.routes or plan.aggregates:
            frame = (_read(rows.rows, plan.schema) if plan.by_polars else
                     _frame([orjson.loads(r) for r in rows.rows], plan.schema))
        if plan.where:
            kept = _matching(frame, plan.where, keep)
            gone += _taken(ids, keep, kept)
            metrics.TRANSFORM_ROWS.labels(table, "dropped").inc(n_in - len(kept))
            keep = kept
        if plan.sample > 1:
            kept = [i for i in keep if zlib.crc32(ids[i].encode()) % plan.sample == 0]
            gone += _taken(ids, keep, kept)
            metrics.TRANSFORM_ROWS.labels(table, "sampled_out").inc(len(keep) - len(kept))
            keep = kept
        routed: list[Rows | Partial] = []
        for spec in plan.aggregates:
            if not keep:
                break
            partials, summed = _summarise(spec, frame, keep, rows.partition)
            if summed:
                kept = [i for i in keep if i not in summed]
                gone += _taken(ids, keep, kept)
                keep = kept
                routed += partials
                metrics.TRANSFORM_ROWS.labels(table, "aggregated").inc(len(summed))
        for sql, target in plan.routes:
            hits = set(_matching(frame, sql, keep))
            if hits:
                idx = [i for i in keep if i in hits]
                keep = [i for i in keep if i not in hits]
                cols = frozenset(_schema(target))
                moved = [orjson.dumps({k: v for k, v in _rename_id(
                    orjson.loads(rows.rows[i]), plan.table, target).items()
                    if k in cols and k not in plan.drop}) for i in idx]
                routed.append(replace(rows, stream=target.stream, rows=tuple(moved),
                                      record_ids=tuple(ids[i] for i in idx), parsed=None))
                metrics.TRANSFORM_ROWS.labels(table, "routed").inc(len(idx))
        if len(keep) == n_in and not plan.drop:
            return rows, routed
        # Kept rows go on as the mapper wrote them; only a column dropped means re-encoding.
        kept_rows = ([orjson.dumps({k: v for k, v in orjson.loads(rows.rows[i]).items()
                                    if k not in plan.drop}) for i in keep] if plan.drop
                     else [rows.rows[i] for i in keep])
        return replace(rows, rows=tuple(kept_rows), record_ids=tuple(ids[i] for i in keep),
                       parsed=None), routed


def _taken(ids: Sequence[str], before: list[int], after: list[int]) -> list[str]:
    """Ids of the rows in ``before`` that are not in ``after`` (a subsequence of it)."""
    left = set(after)
    return [ids[i] for i in before if i not in left]


_TIME = "%Y-%m-%dT%H:%M:%S%.fZ"


def _summarise(spec: _Spec, frame: pl.DataFrame, among: list[int],
               partition: str) -> tuple[list[Partial], set[int]]:
    """The partial summaries of the rows of ``among`` that ``spec`` takes (per object), and
    their indices. A row whose TimeGenerated does not parse is not taken."""
    idx = _matching(frame, spec.where, among) if spec.where else among
    if not idx:
        return [], set()
    rid = spec.table.record_id_column
    sub = frame.filter(pl.col(_INDEX).is_in(idx)).with_columns(
        __obj=pl.col(rid).str.replace(r"-[0-9]+$", ""),
        __bucket=pl.col("TimeGenerated").str.to_datetime(_TIME, time_zone="UTC", strict=False)
        .dt.epoch("s") // spec.bucket * spec.bucket,
    ).filter(pl.col("__bucket").is_not_null())
    if sub.is_empty():
        return [], set()
    keys = ["__obj", "__bucket", *spec.by]
    groups = sub.group_by(keys, maintain_order=True).agg(spec.exprs())
    per_obj: dict[str, list[tuple[tuple[Any, ...], tuple[Any, ...]]]] = {}
    n_key = len(keys)
    for r in groups.iter_rows():
        per_obj.setdefault(r[0], []).append((r[1:n_key], r[n_key:]))
    partials = [Partial(obj, partition, spec.target.stream, spec.index, tuple(g))
                for obj, g in per_obj.items()]
    return partials, set(sub[_INDEX].to_list())


class Aggregator:
    """Builds the per-object merge of partial summaries (:class:`AggregateLogic`)."""

    def __init__(self, transforms: Sequence[TransformConfig],
                 tables: Mapping[str, TableDef]) -> None:
        self._specs = [s for specs in _specs(transforms, tables) for s in specs]

    def logic(self, resume_state: dict | None, keyring: Any = None) -> AggregateLogic:
        """The logic of one object's key (``op.stateful_batch`` builder)."""
        return AggregateLogic(self._specs, resume_state, keyring)


_AAD = b"s3sentinel-aggregate-snapshot"


class AggregateLogic(StatefulBatchLogic[Partial | Rows, Rows, dict]):
    """Merges one object's partial summaries until its end marker, then emits the summary
    rows (one bundle per summary table) and forgets the object. A start marker (the object
    read from its first record again: SQS reads a taken-back object from the start) drops
    what an earlier read merged.

    The state is part of the snapshot, taken with the source's position: after a restart
    the rows read again are merged into the summaries as they stood, so a summary counts
    every row once, and its record id (the object's id and a number) is the same as before
    the crash: the journal keeps it from being sent twice.
    """

    def __init__(self, specs: list[_Spec], resume_state: dict | None, keyring: Any) -> None:
        self._specs = specs
        self._keyring = keyring
        self._held: dict[int, dict[tuple[Any, ...], list[Any]]] = {}
        self._sent: dict[int, int] = {}
        self._object = ""
        self._partition = ""
        if resume_state is not None:
            state = resume_state
            if "sealed" in state:
                if keyring is None:
                    msg = ("the recovery store holds encrypted summaries: configure the keyring "
                           "it was written with")
                    raise RuntimeError(msg)
                state = orjson.loads(keyring.decrypt(state["sealed"], _AAD))
            self._object, self._partition = state["object"], state["partition"]
            self._sent = {int(k): v for k, v in state["sent"].items()}
            self._held = {int(k): {tuple(key): list(acc) for key, acc in groups}
                          for k, groups in state["held"].items()}

    @override
    def on_batch(self, values: list[Partial | Rows]) -> tuple[Iterable[Rows], bool]:
        out: list[Rows] = []
        for item in values:
            if isinstance(item, Rows):
                if item.begin:  # read again from its first record: an earlier read's sums
                    self._held, self._sent = {}, {}  # count for nothing (ids start over)
                else:  # the object's end: its summaries go out, and it is forgotten
                    out += [self._emit(k) for k in list(self._held)]
                    self._held, self._sent = {}, {}
                continue
            self._object, self._partition = item.object_id, item.partition
            spec = self._specs[item.spec]
            held = self._held.setdefault(item.spec, {})
            for key, acc in item.groups:
                have = held.get(key)
                if have is None:
                    if len(held) >= MAX_GROUPS:
                        out.append(self._emit(item.spec))
                        held = self._held.setdefault(item.spec, {})
                    held[key] = list(acc)
                else:
                    spec.merge(have, acc)
        done = StatefulBatchLogic.RETAIN if self._held or self._sent else StatefulBatchLogic.DISCARD
        return [b for b in out if b.rows], done

    @override
    def on_eof(self) -> tuple[Iterable[Rows], bool]:
        out = [self._emit(k) for k in list(self._held)]
        return [b for b in out if b.rows], StatefulBatchLogic.DISCARD

    def _emit(self, k: int) -> Rows:
        spec = self._specs[k]
        held = self._held.pop(k, {})
        n = self._sent.get(k, 0)
        base = AGGREGATE_OFFSET + k * 2**32 + n
        ids = tuple(f"{self._object}-{base + i}" for i in range(len(held)))
        rows = tuple(spec.row(key, acc, rid)
                     for (key, acc), rid in zip(held.items(), ids, strict=True))
        self._sent[k] = n + len(held)
        table = spec.table.name
        metrics.TRANSFORM_ROWS.labels(table, "summaries").inc(len(rows))
        metrics.TRANSFORM_BYTES.labels(table, "out").inc(sum(map(len, rows)))
        return Rows(spec.target.stream, self._partition, rows, ids)

    @override
    def snapshot(self) -> dict:
        state = {"object": self._object, "partition": self._partition,
                 "sent": {str(k): v for k, v in self._sent.items()},
                 "held": {str(k): [[list(key), acc] for key, acc in groups.items()]
                          for k, groups in self._held.items()}}
        if self._keyring is not None:
            return {"sealed": self._keyring.encrypt(orjson.dumps(state), _AAD).to_bytes()}
        return state


def _read(rows: Sequence[bytes], schema: Mapping[str, Any]) -> pl.DataFrame:
    """The rows' ``schema`` columns as a frame, read by polars' JSON reader (no dynamic
    column among them: see :class:`_Plan`)."""
    frame = pl.read_ndjson(io.BytesIO(b"\n".join(rows)), schema=dict(schema))
    return frame.with_row_index(_INDEX).with_columns(pl.col(_INDEX).cast(pl.Int64))


def _frame(dicts: list[dict[str, Any]], schema: Mapping[str, Any]) -> pl.DataFrame:
    """The rows as a frame with the table's types (dynamic values as their JSON text)."""
    data: dict[str, list[Any]] = {}
    for name, tp in schema.items():
        col = [d.get(name) for d in dicts]
        if tp is pl.String:
            col = [v if v is None or isinstance(v, str) else orjson.dumps(v).decode()
                   for v in col]
        data[name] = col
    data[_INDEX] = list(range(len(dicts)))
    return pl.DataFrame(data, schema={**schema, _INDEX: pl.Int64}, strict=False)


def _matching(frame: pl.DataFrame, sql: str, among: list[int]) -> list[int]:
    """Indices of ``among`` whose rows match ``sql``."""
    hits = pl.SQLContext(rows=frame).execute(
        f"SELECT {_INDEX} FROM rows WHERE {sql}", eager=True)[_INDEX].to_list()
    wanted = set(hits)
    return [i for i in among if i in wanted]


def _rename_id(row: dict[str, Any], table: TableDef, target: TableDef) -> dict[str, Any]:
    """A row of ``table`` as a row of ``target`` (whose record id column may differ)."""
    a, b = table.record_id_column, target.record_id_column
    if a == b or a not in row:
        return row
    return {(b if k == a else k): v for k, v in row.items()}
