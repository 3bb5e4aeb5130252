"""Table definitions as data: one TOML file per table, or a ``[[tables]]`` entry in the config.

A definition names the Log Analytics table, the DCR stream rows are posted to, and each
column's exact name, type and source path (plus ``required``, ``allowed``, ``json``, and
``source = "*"`` for every field no other column holds). Everything is checked when the
definitions are loaded; :class:`operators.schema.Mapper` turns one into rows.
"""

from __future__ import annotations

import re
import tomllib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

__all__ = ["COLUMN_TYPES", "Column", "TableColumnConfig", "TableConfig", "TableDef", "TableError",
           "load_tables"]


@dataclass(frozen=True)
class TableColumnConfig:
    """A column of a custom table."""

    name: str
    type: Literal["string", "int", "long", "real", "bool", "datetime", "dynamic"]
    source: str | None = None
    """Dotted path of the value in the source record; defaults to the column name."""
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class TableConfig:
    """A custom ``_CL`` table declared in config (shipped tables live in operators/tables/)."""

    name: str
    """Table name; custom tables end in ``_CL``."""
    columns: list[TableColumnConfig]
    stream: str | None = None
    """DCR input stream; defaults to ``Custom-<name>``."""
    description: str = ""
    plan: Plan = "Analytics"
    """The table plan the deployment template creates it with: ``Analytics`` (full KQL,
    analytic rules), ``Basic`` or ``Auxiliary`` (cheaper ingestion, limited queries)."""
    retention_days: int = 0
    """Interactive retention; 0 keeps the workspace default."""
    total_retention_days: int = 0
    """Retention including long-term (archive); 0 keeps the workspace default."""

    def validate(self, problems: list[str]) -> None:
        """Append what is wrong with this table to ``problems``."""
        where = f"tables[{self.name}]"
        if not self.columns:
            problems.append(f"{where}.columns: a table needs at least one column")
        if self.retention_days and not 4 <= self.retention_days <= 730:
            problems.append(f"{where}.retention_days: must be 4..730 (or 0 for the workspace "
                            "default)")
        if self.total_retention_days and not (
                max(self.retention_days, 4) <= self.total_retention_days <= 4383):
            problems.append(f"{where}.total_retention_days: must be between retention_days and "
                            "4383 (12 years)")


Plan = Literal["Analytics", "Basic", "Auxiliary"]
"""Log Analytics table plans."""

COLUMN_TYPES = ("string", "int", "long", "real", "bool", "datetime", "dynamic")
_COLUMN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,44}$")
_RESERVED = {"type", "tenantid", "_resourceid", "_subscriptionid", "sourcesystem", "_itemid",
             "_billedsize", "_isbillable", "mg", "_timereceived"}


class TableError(ValueError):
    """A table definition is invalid."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    source: tuple[str, ...]
    required: bool = False
    description: str = ""
    json: bool = False
    """The source value is an object or array (sent as JSON text in a string column)."""
    allowed: tuple[Any, ...] | None = None
    """When set, a value (after coercion) outside these is refused: the record is quarantined."""
    known: tuple[str, ...] = ()
    """For a ``*`` column: fields expected there, read on the fast path (any other unmapped
    field sends the record down the generic path, which is slower): top-level names, or the
    dotted path of a member of an object other columns read from (``userIdentity.onBehalfOf``)."""
    truncate: bool = False
    """For an ``int``/``long`` column: a number with a fraction (GuardDuty's severity 5.5) is
    cut toward zero, as KQL's ``toint()`` in the service's own connector does, and the exact
    value is kept in the table's ``*`` column under the field's source path; without it
    such a record is an error record (``wrong_type``)."""


@dataclass(frozen=True)
class TableDef:
    """One Log Analytics table: where rows go and how each column is filled."""

    name: str
    kind: str
    """``standard`` (an Azure table such as AWSCloudTrail) or ``custom`` (``_CL``)."""
    stream: str
    """DCR input stream the rows are posted to."""
    output_stream: str
    columns: tuple[Column, ...]
    description: str = ""
    added: tuple[Column, ...] = ()
    """Columns the connector fills itself after mapping (enrichment results): declared in
    the DCR like the mapped ones, never read from the record."""
    plan: str = "Analytics"
    """Table plan the deployment template sets (custom tables)."""
    retention_days: int = 0
    total_retention_days: int = 0

    @property
    def record_id_column(self) -> str:
        """Column holding the record id (``_CF`` suffix: the only custom columns standard tables take)."""
        return "RecordId_CF" if self.kind == "standard" else "RecordId"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], origin: str) -> TableDef:
        """Build and validate a definition from parsed TOML (or a config ``[[tables]]`` entry)."""
        problems: list[str] = []
        name = str(data.get("table") or data.get("name") or "")
        kind = str(data.get("kind", "custom"))
        if not name:
            problems.append("'table' (the table name) is missing")
        if kind not in ("standard", "custom"):
            problems.append(f"kind {kind!r} must be 'standard' or 'custom'")
        if kind == "custom" and name and not name.endswith("_CL"):
            problems.append(f"custom table name {name!r} must end with '_CL'")
        columns = []
        seen: set[str] = set()
        for i, col in enumerate(data.get("columns") or ()):
            if not isinstance(col, dict):
                problems.append(f"columns[{i}]: expected a table (name, type, source), got {col!r}")
                continue
            cname = str(col.get("name", ""))
            where = f"columns[{cname or i}]"
            if not _COLUMN_NAME.match(cname):
                problems.append(f"{where}: column names start with a letter and have at most 45 "
                                "letters, digits or '_'")
            if cname.lower() in _RESERVED:
                problems.append(f"{where}: {cname!r} is a reserved column name")
            if cname in ("RecordId", "RecordId_CF"):
                problems.append(f"{where}: {cname!r} holds the record id, added by the connector")
            if cname == "TimeGenerated" and col.get("type") != "datetime":
                problems.append(f"{where}: TimeGenerated must have type datetime")
            if cname in seen:
                problems.append(f"{where}: duplicate column")
            seen.add(cname)
            ctype = col.get("type")
            if ctype not in COLUMN_TYPES:
                problems.append(f"{where}: type {ctype!r} is not one of {', '.join(COLUMN_TYPES)}")
            source = str(col.get("source") or cname)
            if source == "*" and ctype != "dynamic":
                problems.append(f"{where}: source \"*\" (every unmapped field) needs type dynamic")
            truncate = bool(col.get("truncate", False))
            if truncate and ctype not in ("int", "long"):
                problems.append(f"{where}: truncate applies to int and long columns")
            if truncate and not any(str(c.get("source")) == "*" for c in data.get("columns") or ()
                                    if isinstance(c, dict)):
                problems.append(f"{where}: truncate keeps the exact value in the table's "
                                "source = \"*\" column, and the table has none")
            columns.append(Column(cname, str(ctype), tuple(source.split(".")),
                                  bool(col.get("required", False)), str(col.get("description", "")),
                                  bool(col.get("json", False)),
                                  tuple(col["allowed"]) if col.get("allowed") else None,
                                  tuple(col.get("known") or ()), truncate))
        problems += _known_problems(columns)
        if not columns:
            problems.append("a table needs at least one column")
        elif "TimeGenerated" not in seen:
            problems.append("a table needs a TimeGenerated column (type datetime)")
        if problems:
            msg = f"table definition {origin} is invalid:\n" + "\n".join(f"  - {p}" for p in problems)
            raise TableError(msg)
        stream = str(data.get("stream") or f"Custom-{name}")
        output = str(data.get("output_stream") or
                     (f"Microsoft-{name}" if kind == "standard" else f"Custom-{name}"))
        plan = str(data.get("plan", "Analytics"))
        if plan not in typing.get_args(Plan):
            msg = (f"table definition {origin} is invalid:\n  - plan {plan!r} is not one of "
                   f"{', '.join(typing.get_args(Plan))}")
            raise TableError(msg)
        return cls(name, kind, stream, output, tuple(columns), str(data.get("description", "")),
                   plan=plan, retention_days=int(data.get("retention_days", 0)),
                   total_retention_days=int(data.get("total_retention_days", 0)))


def _known_problems(columns: list[Column]) -> list[str]:
    """A dotted ``known`` path must name a member no column reads of an object columns read."""
    sources = [c.source for c in columns if c.source != ("*",)]
    problems = []
    for col in columns:
        for k in col.known if col.source == ("*",) else ():
            path = tuple(k.split("."))
            if len(path) == 1:
                continue
            parent = path[:-1]
            if any(s[:len(path)] == path or path[:len(s)] == s for s in sources) or not any(
                    len(s) > len(parent) and s[:len(parent)] == parent for s in sources):
                problems.append(f"columns[{col.name}]: known {k!r} is not an unmapped member of an "
                                "object other columns read from (as userIdentity.onBehalfOf "
                                "beside userIdentity.arn)")
    return problems


def load_tables(extra_dir: str | Path | None = None,
                declared: Iterable[TableConfig] = ()) -> dict[str, TableDef]:
    """Every table definition: shipped ones, then ``extra_dir``'s, then config-declared ones.

    Later definitions of the same table replace earlier ones.
    """
    tables: dict[str, TableDef] = {}
    shipped = resources.files("operators") / "tables"
    files = [(f.name, f.read_text(encoding="utf-8")) for f in shipped.iterdir()
             if f.name.endswith(".toml")]
    if extra_dir is not None:
        files += [(str(p), p.read_text(encoding="utf-8"))
                  for p in sorted(Path(extra_dir).glob("*.toml"))]
    for origin, text in sorted(files) if extra_dir is None else files:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as ex:
            msg = f"table definition {origin} is not valid TOML: {ex}"
            raise TableError(msg) from None
        table = TableDef.from_mapping(data, origin)
        tables[table.name] = table
    for cfg in declared:
        data = {"table": cfg.name, "kind": "custom", "stream": cfg.stream,
                "description": cfg.description, "plan": cfg.plan,
                "retention_days": cfg.retention_days,
                "total_retention_days": cfg.total_retention_days,
                "columns": [{"name": c.name, "type": c.type, "source": c.source,
                             "required": c.required} for c in cfg.columns]}
        tables[cfg.name] = TableDef.from_mapping(data, f"config tables[{cfg.name}]")
    return tables
