"""Deploying an ``s3sentinel deploy`` template to the local emulator, as Azure would.

:func:`deploy` reads the template's DCR resources (refusing one that breaks Azure's DCR
limits, as ARM would), gives each DCR an immutable id, and returns the emulator's rules
and the deployment's outputs in the shape ``az deployment group show --query
properties.outputs`` prints, which ``s3sentinel targets`` turns into the config's
``[[targets]]`` section: the same deploy → configure path a user follows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devstack.dcrdef import rules_from_template
from operators.tabledef import TableDef

__all__ = ["Deployment", "deploy", "immutable_id", "table_schemas"]

DCR_TYPE = "Microsoft.Insights/dataCollectionRules"


def immutable_id(name: str, salt: str = "") -> str:
    """A stable immutable id for the DCR ``name`` (``dcr-`` and 32 hex digits)."""
    return "dcr-" + hashlib.md5(f"{salt}{name}".encode()).hexdigest()  # noqa: S324 - an id, not a secret


def table_schemas(tables: Mapping[str, TableDef]) -> dict[str, dict[str, str]]:
    """Every table's columns with their Kusto types (the destination schemas of data flows)."""
    kusto = {"bool": "bool"}
    return {t.name: {c.name: kusto.get(c.type, c.type) for c in (*t.columns, *t.added)}
            | {t.record_id_column: "string"} for t in tables.values()}


@dataclass(frozen=True)
class Deployment:
    """What deploying a template made: the emulator's rules and the template's outputs."""

    rules: dict[str, Any]
    """Immutable id -> rule spec, for :class:`devstack.sentinel.SentinelEmulator`."""
    outputs: dict[str, Any]
    """The deployment's outputs, as ``az`` prints them."""


def deploy(template: Mapping[str, Any], endpoint: str, tables: Mapping[str, TableDef], *,
           salt: str = "", limits: Mapping[str, float] | None = None,
           identity: str | None = None) -> Deployment:
    """Deploy ``template`` against the emulator at ``endpoint``.

    :arg salt: Makes the ids of another deployment (another tenant) differ.
    :arg limits: Per-DCR limits for the emulator (bytes_per_min, requests_per_min, ...).
    :arg identity: The managed-identity client id the role assignments are for: the
        emulator refuses tokens of any other identity on these DCRs.
    :raises devstack.dcrdef.DcrDefinitionError: A DCR Azure would refuse.
    """
    dcrs = [r for r in template["resources"] if r["type"] == DCR_TYPE]
    ids = {r["name"]: immutable_id(r["name"], salt) for r in dcrs}
    rules = rules_from_template(dict(template), ids, table_schemas(tables))
    for spec in rules.values():
        if limits:
            spec["limits"] = dict(limits)
        if identity:
            spec["identity"] = identity
    outputs = {
        "target": {"type": "String", "value": template.get("metadata", {}).get("target",
                                                                               "default")},
        "dcrs": {"type": "Array", "value": [
            {"name": r["name"], "immutableId": ids[r["name"]], "endpoint": endpoint,
             "streams": list(r["properties"]["streamDeclarations"])} for r in dcrs]},
    }
    return Deployment(rules, outputs)
