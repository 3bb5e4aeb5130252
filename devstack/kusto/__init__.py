"""Offline semantic checking of KQL with Microsoft's Kusto language service.

The service is the npm package ``@kusto/language-service-next`` (pinned in
``devstack/kusto/package.json``; ``./run.sh test`` installs it). :func:`analyze` hands a batch
of queries to one ``node devstack/kusto/analyze.js`` process and returns, for each query, the
errors Kusto finds (unknown columns, tables and functions, type errors, syntax errors) and the
query's result columns. :func:`check_transform` uses it to check a DCR ``transformKql`` against
its input stream and its destination table.

The service is lenient where the engine is too: ``where IntCol == "x"`` is not an error, while
``where IntCol > "x"`` or ``strlen(IntCol)`` is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "WORKSPACE_COLUMNS",
    "Analysis",
    "Diagnostic",
    "KustoUnavailable",
    "Query",
    "analyze",
    "check_transform",
]

_HERE = Path(__file__).resolve().parent
_SCRIPT = _HERE / "analyze.js"
_PACKAGE = _HERE / "node_modules" / "@kusto" / "language-service-next"

Columns = Sequence[tuple[str, str]]
"""A schema: (column name, Kusto type name) pairs, e.g. ``[("TimeGenerated", "datetime")]``."""

# The standard columns Azure Monitor adds to every Log Analytics table; queries may use them
# although no stream sends them. Checked against the Azure Monitor table reference
# (learn.microsoft.com/azure/azure-monitor/reference/tables/*): every table lists TenantId,
# TimeGenerated, Type, SourceSystem, _ResourceId, _SubscriptionId as string/datetime, _BilledSize
# as real and _IsBillable as *string* (not bool). _ItemId is only described on the "Standard
# columns in Azure Monitor Logs" page (a unique identifier of the record, no type given in what we
# found); string is assumed.
WORKSPACE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("TimeGenerated", "datetime"),
    ("Type", "string"),
    ("TenantId", "string"),
    ("SourceSystem", "string"),
    ("_ResourceId", "string"),
    ("_SubscriptionId", "string"),
    ("_ItemId", "string"),
    ("_IsBillable", "string"),
    ("_BilledSize", "real"),
)


class KustoUnavailable(RuntimeError):
    """node or the npm package is missing, so no query can be analysed."""


@dataclass(frozen=True)
class Query:
    """One query to analyse.

    ``source``, when given, puts a table named ``source`` with these columns in scope, as a
    DCR ``transformKql`` sees its input stream.
    """

    id: str
    query: str
    source: Columns | None = None


@dataclass(frozen=True)
class Diagnostic:
    """One finding of the language service; ``start``/``end`` are offsets into the query text."""

    severity: str
    code: str
    message: str
    start: int
    end: int


@dataclass(frozen=True)
class Analysis:
    """The result for one :class:`Query`.

    ``errors`` holds the Error-severity diagnostics, ``warnings`` the Warning ones (e.g. a join
    without a kind). ``columns`` is the result schema with Kusto type names (string, long, int,
    real, bool, datetime, dynamic, guid, timespan, decimal), or None when the result is not
    tabular (``let x = 1; x``). A column Kusto could not resolve has the type ``unknown``.
    """

    id: str
    errors: list[Diagnostic]
    columns: list[tuple[str, str]] | None
    warnings: list[Diagnostic] = field(default_factory=list)


def analyze(
    queries: Sequence[Query],
    tables: Mapping[str, Columns],
    functions: Mapping[str, str] | None = None,
    *,
    timeout: float = 120.0,
) -> list[Analysis]:
    """Analyse ``queries`` against a workspace holding ``tables`` and ``functions``.

    ``functions`` maps a name to its body, either bare (``"T | take 1"``) or with parameters
    (``"(n:int) { T | take n }"``). One node process analyses the whole batch (it takes about a
    second to start); results come back in the order of ``queries``.

    Raises :class:`KustoUnavailable` when node or the npm package is missing, and RuntimeError
    when analyze.js fails (an unknown type name, a malformed function, a crash) or times out.
    """
    node = shutil.which("node")
    if node is None or not _PACKAGE.is_dir():
        missing = "node is not on PATH" if node is None else f"{_PACKAGE} is missing"
        raise KustoUnavailable(
            f"the Kusto language service is not available ({missing}); "
            "run `./run.sh test`, which installs it (npm ci --prefix devstack/kusto)"
        )
    request: dict[str, Any] = {
        "tables": {name: [list(c) for c in columns] for name, columns in tables.items()},
        "functions": dict(functions or {}),
        "queries": [
            {"id": q.id, "query": q.query}
            | ({"source": [list(c) for c in q.source]} if q.source is not None else {})
            for q in queries
        ],
    }
    try:
        done = subprocess.run(
            [node, str(_SCRIPT)],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"analyze.js did not finish within {timeout}s") from exc
    if done.returncode != 0:
        raise RuntimeError(f"analyze.js failed (exit {done.returncode}): {done.stderr.strip()}")
    return [
        Analysis(
            id=r["id"],
            errors=[Diagnostic(**d) for d in r["diagnostics"]],
            columns=None if r["columns"] is None else [(n, t) for n, t in r["columns"]],
            warnings=[Diagnostic(**d) for d in r["warnings"]],
        )
        for r in json.loads(done.stdout)
    ]


def _type(name: str) -> str:
    # Tables and DCR streams say boolean (and dateTime); Kusto says bool.
    name = name.lower()
    return "bool" if name == "boolean" else name


def check_transform(
    transform_kql: str, stream_columns: Columns, table_columns: Columns
) -> list[str]:
    """Problems of a DCR transform: Kusto errors, and output columns the table cannot take.

    The transform sees only ``source`` (with ``stream_columns``), as in a DCR. Each output
    column must exist in ``table_columns`` with the same type (boolean and bool are the same).
    An empty list means the transform is fine.
    """
    (result,) = analyze([Query("transform", transform_kql, stream_columns)], tables={})
    problems = [
        f"{d.code} at {d.start}-{d.end} ({transform_kql[d.start : d.end]!r}): {d.message}"
        for d in result.errors
    ]
    if result.columns is None:
        return [*problems, "the transform does not return a table"]
    declared = {name: _type(kind) for name, kind in table_columns}
    for name, kind in result.columns:
        if name not in declared:
            problems.append(f"output column {name!r} ({kind}) is not in the destination table")
        # An `unknown` type comes from an error reported above.
        elif kind != "unknown" and _type(kind) != declared[name]:
            problems.append(
                f"output column {name!r} is {kind}, the destination table declares {declared[name]}"
            )
    return problems
