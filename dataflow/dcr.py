"""The Data Collection Rule, as an ARM template, derived from the table definitions.

What the connector sends and what the DCR declares come from the same table files,
so they cannot drift apart: every column a row can carry (the record id included) is
declared in the stream, custom ``_CL`` tables are created with the same columns, and
the ``_CF`` columns the connector adds to standard tables are added to those tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from operators.schema import TableDef

__all__ = ["dcr_template", "stream_columns"]

_TYPES = {"string": "string", "int": "int", "long": "long", "real": "real", "bool": "boolean",
          "datetime": "datetime", "dynamic": "dynamic"}


def stream_columns(table: TableDef) -> list[dict[str, str]]:
    """The stream declaration's columns: every table column plus the record id."""
    cols = [{"name": c.name, "type": _TYPES[c.type]} for c in (*table.columns, *table.added)]
    return cols + [{"name": table.record_id_column, "type": "string"}]


def _table_resource(table: TableDef) -> dict[str, Any] | None:
    if table.kind == "custom":
        columns = stream_columns(table)
    else:  # standard tables only get the connector's own _CF columns
        columns = [c for c in stream_columns(table) if c["name"].endswith("_CF")]
        if not columns:
            return None
    return {
        "type": "Microsoft.OperationalInsights/workspaces/tables",
        "apiVersion": "2022-10-01",
        "name": f"[concat(split(parameters('workspaceResourceId'), '/')[8], '/{table.name}')]",
        "properties": {"schema": {"name": table.name, "columns": columns}},
    }


def dcr_template(tables: Iterable[TableDef]) -> dict[str, Any]:
    """An ARM template deploying the DCR (and custom tables/columns) for ``tables``."""
    tables = sorted(tables, key=lambda t: t.name)
    table_resources = [r for r in map(_table_resource, tables) if r is not None]
    rule = {
        "type": "Microsoft.Insights/dataCollectionRules",
        "apiVersion": "2023-03-11",
        "name": "[parameters('dataCollectionRuleName')]",
        "location": "[parameters('location')]",
        "dependsOn": [f"[resourceId('Microsoft.OperationalInsights/workspaces/tables', "
                      f"split(parameters('workspaceResourceId'), '/')[8], "
                      f"'{r['properties']['schema']['name']}')]" for r in table_resources],
        "properties": {
            "dataCollectionEndpointId": "[parameters('dataCollectionEndpointId')]",
            "streamDeclarations": {t.stream: {"columns": stream_columns(t)} for t in tables},
            "destinations": {"logAnalytics": [
                {"workspaceResourceId": "[parameters('workspaceResourceId')]",
                 "name": "sentinelWorkspace"}]},
            "dataFlows": [{"streams": [t.stream], "destinations": ["sentinelWorkspace"],
                           "transformKql": "source", "outputStream": t.output_stream}
                          for t in tables],
        },
    }
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                   "deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "parameters": {
            "dataCollectionRuleName": {"type": "string", "defaultValue": "s3sentinel"},
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "workspaceResourceId": {"type": "string", "metadata": {
                "description": "Resource id of the Log Analytics workspace behind Sentinel"}},
            "dataCollectionEndpointId": {"type": "string", "metadata": {
                "description": "Resource id of the data collection endpoint"}},
        },
        "resources": [*table_resources, rule],
        "outputs": {"immutableId": {"type": "string", "value":
                    "[reference(parameters('dataCollectionRuleName')).immutableId]"}},
    }
