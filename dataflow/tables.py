"""The tables a configured flow sends to: the shipped and declared table definitions, plus
the columns its enrichment adds.

It lives in the app because it joins two components' sections (``[[tables]]`` and
``runtime.tables_dir`` for the schema, ``[enrich]`` for the added columns); neither
component knows the other's config.
"""

from __future__ import annotations

from dataflow.config import Config
from operators.enrich.columns import with_enrichment_columns
from operators.tabledef import TableDef, load_tables

__all__ = ["tables_for"]


def tables_for(cfg: Config) -> dict[str, TableDef]:
    """The tables ``cfg`` sends to: :func:`~operators.tabledef.load_tables` with its tables
    directory and declared tables, plus the enrichment columns its ``[enrich]`` section adds."""
    return with_enrichment_columns(load_tables(cfg.runtime.tables_dir, cfg.tables), cfg.enrich)
