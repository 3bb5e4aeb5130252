"""Transforms before ingest: keep, sample, route and trim rows, to pay only for what matters.

Declared per table (and optionally per source) under ``[[transforms]]``, they act on rows
after mapping (so they speak the table's column names) and after enrichment (a row that is
dropped can still raise a finding), before batching, in this order:

1. ``where``: keep the rows matching a SQL boolean expression, drop the rest;
2. ``sample``: keep 1 row in N, chosen by the record id (CRC-32 modulo N), so a restart or
   a replay keeps exactly the same rows and the upload journal's guarantee holds;
3. ``route``: a row matching a route's ``where`` goes to that route's table instead (the
   first route that matches), e.g. low-value rows to a table on the Basic or Auxiliary
   plan; it carries the columns that table declares (a table with fewer columns is a way
   to trim what is kept there);
4. ``drop``: remove columns from the rows that remain (routed ones included).

Expressions are SQL, run by polars' SQL engine on a frame of the rows with the table's
column types: no code from the config is executed, and :func:`check` compiles every
expression against the table's columns (an unknown column or a type mismatch is refused
with its key path). ``datetime`` columns are ISO-8601 UTC text (so ``TimeGenerated >=
'2026-01-01'`` compares as it reads) and ``dynamic`` ones their JSON text.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import polars as pl

from dataflow.core import metrics
from dataflow.core.messages import Rows
from operators.tabledef import TableDef

__all__ = ["RouteConfig", "TransformConfig", "Transformer", "check"]

_POLARS = {"string": pl.String, "int": pl.Int64, "long": pl.Int64, "real": pl.Float64,
           "bool": pl.Boolean, "datetime": pl.String, "dynamic": pl.String}
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
    route: list[RouteConfig] = field(default_factory=list)
    """Rows matching a route's ``where`` go to its table (the first that matches)."""
    drop: list[str] = field(default_factory=list)
    """Columns removed from the rows that remain."""

    def validate(self, problems: list[str], where: str) -> None:
        """Append what is wrong with this entry (alone) to ``problems``."""
        if self.sample < 1:
            problems.append(f"{where}.sample: must be a positive integer (keep 1 row in N)")
        if not (self.where or self.sample > 1 or self.route or self.drop):
            problems.append(f"{where}: does nothing (set where, sample, route or drop)")


def _schema(table: TableDef) -> dict[str, Any]:
    cols = {c.name: _POLARS[c.type] for c in (*table.columns, *table.added)}
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


class _Plan:
    """The transforms of one (table, source), ready to run."""

    def __init__(self, t: TransformConfig, table: TableDef,
                 tables: Mapping[str, TableDef]) -> None:
        self.where = t.where
        self.sample = t.sample
        self.routes = [(r.where, tables[r.table]) for r in t.route]
        self.drop = frozenset(t.drop)
        self.table = table
        self.schema = _schema(table)


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
        for t in transforms:
            table = tables[t.table]
            self._any.setdefault(table.stream, []).append(
                (frozenset(t.sources), _Plan(t, table, tables)))

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

    def apply(self, rows: Rows) -> list[Rows]:
        """The bundle after the transforms of its table and source (one bundle per table
        its rows end in; none when every row was dropped)."""
        source = rows.partition.rpartition(":")[0]
        plans = self._plans_for(rows.stream, source)
        if not plans:
            return [rows]
        out: list[Rows] = []
        for plan in plans:
            rows, routed = self._run(plan, rows)
            out += routed
            if not rows.rows:
                break
        return ([rows] if rows.rows else []) + out

    def _run(self, plan: _Plan, rows: Rows) -> tuple[Rows, list[Rows]]:
        table = plan.table.name
        n_in = len(rows.rows)
        metrics.TRANSFORM_ROWS.labels(table, "in").inc(n_in)
        metrics.TRANSFORM_BYTES.labels(table, "in").inc(sum(map(len, rows.rows)))
        dicts = [orjson.loads(r) for r in rows.rows]
        keep = list(range(n_in))
        if plan.where or plan.routes:
            frame = _frame(dicts, plan.schema)
        if plan.where:
            keep = _matching(frame, plan.where, keep)
            metrics.TRANSFORM_ROWS.labels(table, "dropped").inc(n_in - len(keep))
        if plan.sample > 1:
            ids = rows.record_ids
            kept = [i for i in keep if zlib.crc32(ids[i].encode()) % plan.sample == 0]
            metrics.TRANSFORM_ROWS.labels(table, "sampled_out").inc(len(keep) - len(kept))
            keep = kept
        routed: list[Rows] = []
        for sql, target in plan.routes:
            hits = set(_matching(frame, sql, keep))
            if hits:
                idx = [i for i in keep if i in hits]
                keep = [i for i in keep if i not in hits]
                cols = frozenset(_schema(target))
                moved = [{k: v for k, v in _rename_id(dicts[i], plan.table, target).items()
                          if k in cols} for i in idx]
                routed.append(self._bundle(rows, target.stream, moved, idx, plan.drop))
                metrics.TRANSFORM_ROWS.labels(table, "routed").inc(len(idx))
        result = self._bundle(rows, rows.stream, [dicts[i] for i in keep], keep, plan.drop)
        metrics.TRANSFORM_ROWS.labels(table, "kept").inc(len(keep))
        metrics.TRANSFORM_BYTES.labels(table, "out").inc(
            sum(map(len, result.rows)) + sum(len(r) for b in routed for r in b.rows))
        return result, routed

    @staticmethod
    def _bundle(rows: Rows, stream: str, dicts: list[dict[str, Any]], idx: list[int],
                drop: frozenset[str]) -> Rows:
        if drop:
            dicts = [{k: v for k, v in d.items() if k not in drop} for d in dicts]
        return replace(rows, stream=stream, rows=tuple(orjson.dumps(d) for d in dicts),
                       record_ids=tuple(rows.record_ids[i] for i in idx), parsed=None)


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
