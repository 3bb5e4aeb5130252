"""The KQL in the READMEs passes Microsoft's Kusto language service (parsing and semantic
analysis) against the tables the connector writes, with the enrichment's columns (both
modes) and the workspace's standard columns: a query a user copies from the docs works."""

from __future__ import annotations

import re
from pathlib import Path

from dataflow.config import parse_config
from dataflow.tables import tables_for
from devstack.deploy import table_schemas
from devstack.kusto import WORKSPACE_COLUMNS, Query, analyze

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "kubernetes" / "README.md"]


def _queries() -> list[Query]:
    """Every query of every ```kusto block (queries in one block apart by a blank line)."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for n, block in enumerate(re.findall(r"```kusto\n(.*?)```", text, re.S)):
            for k, query in enumerate(re.split(r"\n\s*\n", block)):
                lines = [line.strip() for line in query.splitlines() if line.strip()]
                if lines:
                    out.append(Query(f"{doc.relative_to(ROOT)} block {n} query {k}",
                                     "\n".join(lines)))
    return out


def test_every_kql_query_of_the_readmes_passes_semantic_analysis() -> None:
    queries = _queries()
    assert len(queries) >= 4
    cfg = parse_config({"sources": [{"name": "t", "bucket": "b", "format": "cloudtrail"}],
                        "sentinel": {"endpoint": "https://x", "rule_id": "dcr-1"},
                        "enrich": {"enabled": True, "standard_tables": "columns"}})
    tables = {name: cols | {c: t for c, t in WORKSPACE_COLUMNS if c not in cols}
              for name, cols in table_schemas(tables_for(cfg)).items()}
    results = analyze(queries, {name: list(cols.items()) for name, cols in tables.items()})
    problems = [(r.id, d.message) for r in results for d in r.errors]
    assert problems == []
    # The check can fail: a column no table has is an error.
    (bad,) = analyze([Query("bad", "AWSCloudTrail | where NoSuchColumn == 1")],
                     {n: list(c.items()) for n, c in tables.items()})
    assert bad.errors
