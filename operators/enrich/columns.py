"""Enrichment columns: what the rules and threat intel found, on the row itself.

Custom ``_CL`` tables get four columns when enrichment is on; Azure's own tables get them
with the ``_CF`` suffix (the only custom columns those tables take) when
``enrich.standard_tables = "columns"``, and otherwise keep their schema while the results
go to ``S3SentinelFindings_CL``. The columns are *added* columns of the table definition
(:attr:`~operators.tabledef.TableDef.added`): the DCR export declares them, the mapper
never reads them from a record, and :func:`splice` writes them into the mapped JSON.

=========================  =======  ==========================================================
column (``_CF`` on Azure)  type     holds
=========================  =======  ==========================================================
EnrichmentPriority         string   critical, high, error, performance or normal (the rules)
EnrichmentReasons          dynamic  why, in words: each rule's reason and each intel match
EnrichmentRuleIds          dynamic  ids of the rules that matched
EnrichmentIntel            dynamic  indicators matched: kind, value, indicator, description,
                                    column
=========================  =======  ==========================================================

Anomaly scores and sequences are decided on a stateful side branch, after the row has
gone on; they are always findings rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from operators.enrich.config import EnrichConfig
from operators.tabledef import Column, TableDef, TableError

__all__ = ["COLUMNS", "FINDINGS_TABLE", "carries_columns", "column_names", "splice",
           "with_enrichment_columns"]

FINDINGS_TABLE = "S3SentinelFindings_CL"

COLUMNS = (
    ("EnrichmentPriority", "string", "Priority class from the rules: critical, high, error, "
                                     "performance or normal."),
    ("EnrichmentReasons", "dynamic", "Why, in words: the rules' reasons and intel matches."),
    ("EnrichmentRuleIds", "dynamic", "Ids of the priority rules that matched."),
    ("EnrichmentIntel", "dynamic", "Threat-intel indicators matched (kind, value, indicator, "
                                   "description, column)."),
)


def carries_columns(table: TableDef, cfg: EnrichConfig) -> bool:
    """Whether rows of ``table`` carry the enrichment columns under ``cfg``."""
    if not cfg.enabled or table.name.startswith("S3Sentinel"):  # findings, health: our own
        return False
    return table.kind == "custom" or cfg.standard_tables == "columns"


def column_names(table: TableDef) -> tuple[str, str, str, str]:
    """(priority, reasons, rule ids, intel) column names of ``table``."""
    suffix = "_CF" if table.kind == "standard" else ""
    return tuple(name + suffix for name, _, _ in COLUMNS)  # type: ignore[return-value]


def with_enrichment_columns(tables: Mapping[str, TableDef],
                            cfg: EnrichConfig) -> dict[str, TableDef]:
    """``tables`` with the enrichment columns added where ``cfg`` puts them.

    :raises TableError: A table already has a column of one of those names.
    """
    out = dict(tables)
    for name, table in tables.items():
        if not carries_columns(table, cfg):
            continue
        names = column_names(table)
        taken = sorted({c.name for c in table.columns} & set(names))
        if taken:
            msg = (f"table {name} has column(s) {', '.join(taken)}, which enrichment fills: "
                   "rename them in the table definition, or turn enrichment off")
            raise TableError(msg)
        added = tuple(Column(n, t, (), description=d)
                      for n, (_, t, d) in zip(names, COLUMNS, strict=True))
        out[name] = dataclasses.replace(table, added=table.added + added)
    return out


def splice(raw: bytes, values: Mapping[str, Any]) -> bytes:
    """The JSON object ``raw`` with ``values`` added (their keys must not be in it)."""
    if not values:
        return raw
    return raw[:-1] + b"," + orjson.dumps(values)[1:]
