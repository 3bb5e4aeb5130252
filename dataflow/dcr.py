"""The Azure side of a target as one ARM template: tables, DCRs, roles, and their outputs.

What the connector sends and what the DCRs declare come from the same table files, so
they cannot drift apart: every column a row can carry (the record id included) is declared
in its stream, custom ``_CL`` tables are created with the same columns (and their plan and
retention), and the ``_CF`` columns the connector adds to standard tables are added to
those tables.

A DCR declares at most 10 streams and 10 data flows, so the streams are spread over as
many DCRs as that takes (:func:`plan_dcrs`): related streams stay together (AWS security
logs, network logs, the connector's own tables, custom tables), and a stream that needs
more than one DCR's throughput gets DCRs of its own (``fanout``). Each DCR is of kind
``Direct`` (its own logs ingestion endpoint) unless a data collection endpoint is given,
and the connector's identity gets *Monitoring Metrics Publisher* on each. The outputs list
every DCR's name, immutable id, endpoint and streams: ``s3sentinel targets`` turns
them into the ``[[targets]]`` section (:func:`targets_toml`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connectors.sentinel.config import MAX_STREAMS_PER_DCR, DcrConfig, TargetConfig
from operators.tabledef import TableDef

__all__ = ["DCR_API", "METRICS_PUBLISHER_ROLE", "PlannedDcr", "dcr_template", "deploy_template",
           "plan_dcrs", "stream_columns", "targets_from_outputs", "targets_toml",
           "transform_of"]

DCR_API = "2023-03-11"
TABLES_API = "2022-10-01"
METRICS_PUBLISHER_ROLE = "3913510d-42f4-4e42-8a64-420c390055eb"
"""Built-in role *Monitoring Metrics Publisher*: what sending to a DCR takes."""
MAX_TRANSFORM_CHARS = 15_360
"""Longest ``transformKql`` a data flow may have."""

_TYPES = {"string": "string", "int": "int", "long": "long", "real": "real", "bool": "boolean",
          "datetime": "datetime", "dynamic": "dynamic"}

_GROUPS = (  # related streams stay in one DCR; first match wins
    ("security", re.compile(r"CloudTrail|GuardDuty|WAF|SecurityHub|EKS|Findings")),
    ("network", re.compile(r"VPCFlow|Route53|ALB|NLB|ELB|CloudFront|S3ServerAccess|Firewall")),
    ("connector", re.compile(r"S3Sentinel")),
)


def stream_columns(table: TableDef) -> list[dict[str, str]]:
    """The stream declaration's columns: every table column plus the record id."""
    cols = [{"name": c.name, "type": _TYPES[c.type]} for c in (*table.columns, *table.added)]
    return cols + [{"name": table.record_id_column, "type": "string"}]


def transform_of(table: TableDef) -> str:
    """The data flow's ``transformKql``: the stream's columns are the table's, with the
    table's types, so rows pass as they are."""
    return "source"


@dataclass(frozen=True)
class PlannedDcr:
    """One DCR of a template: its resource name and the streams it declares."""

    name: str
    streams: tuple[str, ...]


def _group(stream: str) -> int:
    return next((i for i, (_, rx) in enumerate(_GROUPS) if rx.search(stream)), len(_GROUPS))


def plan_dcrs(streams: Iterable[str], *, prefix: str = "s3sentinel",
              fanout: Mapping[str, int] | None = None) -> list[PlannedDcr]:
    """The fewest DCRs that declare ``streams`` within the per-DCR limit, related streams
    together; a stream with ``fanout[stream] = N > 1`` gets N DCRs of its own."""
    fanout = fanout or {}
    streams = set(streams)
    planned: list[PlannedDcr] = []
    for stream in sorted(s for s in streams if fanout.get(s, 1) > 1):
        slug = re.sub(r"[^a-z0-9]+", "-", stream.removeprefix("Custom-").lower()).strip("-")
        planned += [PlannedDcr(f"{prefix}-{slug}-{i + 1}", (stream,))
                    for i in range(fanout[stream])]
    rest = sorted((s for s in streams if fanout.get(s, 1) <= 1), key=lambda s: (_group(s), s))
    groups: list[list[str]] = []
    for stream in rest:
        if groups and _group(groups[-1][-1]) == _group(stream) and \
                len(groups[-1]) < MAX_STREAMS_PER_DCR:
            groups[-1].append(stream)
        else:
            groups.append([stream])
    bins: list[list[str]] = []  # whole groups share a DCR while they fit
    for group in groups:
        if bins and len(bins[-1]) + len(group) <= MAX_STREAMS_PER_DCR:
            bins[-1] += group
        else:
            bins.append(list(group))
    planned += [PlannedDcr(f"{prefix}-{i + 1}", tuple(b)) for i, b in enumerate(bins)]
    return planned


def _table_resource(table: TableDef) -> dict[str, Any] | None:
    props: dict[str, Any] = {}
    if table.kind == "custom":
        columns = stream_columns(table)
        props["plan"] = table.plan
    else:  # standard tables only get the connector's own _CF columns
        columns = [c for c in stream_columns(table) if c["name"].endswith("_CF")]
        if not columns:
            return None
    if table.retention_days:
        props["retentionInDays"] = table.retention_days
    if table.total_retention_days:
        props["totalRetentionInDays"] = table.total_retention_days
    return {
        "type": "Microsoft.OperationalInsights/workspaces/tables",
        "apiVersion": TABLES_API,
        "name": f"[concat(split(parameters('workspaceResourceId'), '/')[8], '/{table.name}')]",
        "properties": {"schema": {"name": table.name, "columns": columns}, **props},
    }


def _dcr_id(name: str) -> str:
    return f"resourceId('Microsoft.Insights/dataCollectionRules', '{name}')"


def _rule(dcr: PlannedDcr, by_stream: Mapping[str, TableDef],
          table_ids: Mapping[str, str]) -> dict[str, Any]:
    tables = [by_stream[s] for s in dcr.streams]
    return {
        "type": "Microsoft.Insights/dataCollectionRules",
        "apiVersion": DCR_API,
        "name": dcr.name,
        "location": "[parameters('location')]",
        "kind": "Direct",
        "dependsOn": sorted({table_ids[t.name] for t in tables if t.name in table_ids}),
        "properties": {
            "description": "s3sentinel: AWS logs from S3 (streams: "
                           f"{', '.join(dcr.streams)})",
            "dataCollectionEndpointId": "[if(empty(parameters('dataCollectionEndpointId')), "
                                        "null(), parameters('dataCollectionEndpointId'))]",
            "streamDeclarations": {t.stream: {"columns": stream_columns(t)} for t in tables},
            "destinations": {"logAnalytics": [
                {"workspaceResourceId": "[parameters('workspaceResourceId')]",
                 "name": "workspace"}]},
            "dataFlows": [{"streams": [t.stream], "destinations": ["workspace"],
                           "transformKql": transform_of(t), "outputStream": t.output_stream}
                          for t in tables],
        },
    }


def _role(dcr: PlannedDcr) -> dict[str, Any]:
    return {
        "type": "Microsoft.Authorization/roleAssignments",
        "apiVersion": "2022-04-01",
        "name": f"[guid({_dcr_id(dcr.name)}, parameters('principalId'), "
                f"'{METRICS_PUBLISHER_ROLE}')]",
        "scope": f"[format('Microsoft.Insights/dataCollectionRules/{{0}}', '{dcr.name}')]",
        "condition": "[not(empty(parameters('principalId')))]",
        "dependsOn": [f"[{_dcr_id(dcr.name)}]"],
        "properties": {
            "roleDefinitionId": "[subscriptionResourceId('Microsoft.Authorization/"
                                f"roleDefinitions', '{METRICS_PUBLISHER_ROLE}')]",
            "principalId": "[parameters('principalId')]",
            "principalType": "[parameters('principalType')]",
        },
    }


def _output(dcr: PlannedDcr) -> dict[str, Any]:
    ref = f"reference({_dcr_id(dcr.name)}, '{DCR_API}')"
    return {
        "name": dcr.name,
        "immutableId": f"[{ref}.immutableId]",
        "endpoint": f"[if(empty(parameters('dataCollectionEndpointId')), "
                    f"{ref}.endpoints.logsIngestion, reference(parameters("
                    f"'dataCollectionEndpointId'), '{DCR_API}').logsIngestion.endpoint)]",
        "streams": list(dcr.streams),
    }


def deploy_template(tables: Mapping[str, TableDef], dcrs: Sequence[PlannedDcr], *,
                    target: str = "default") -> dict[str, Any]:
    """An ARM template creating ``dcrs`` (each declaring its streams' tables), the custom
    tables and ``_CF`` columns they write, and the role assignments; its outputs name
    ``target`` and list each DCR's immutable id and endpoint.

    :raises KeyError: A DCR names a stream no table posts to, declares more streams than
        a DCR may, or a transform is longer than a data flow's may be.
    """
    by_stream = {t.stream: t for t in tables.values()}
    unknown = sorted({s for d in dcrs for s in d.streams} - set(by_stream))
    if unknown:
        msg = f"no table posts to stream(s) {', '.join(unknown)}"
        raise KeyError(msg)
    too_long = [t.name for t in tables.values() if len(transform_of(t)) > MAX_TRANSFORM_CHARS]
    if too_long:
        msg = f"the transformKql of {', '.join(too_long)} is over {MAX_TRANSFORM_CHARS} characters"
        raise KeyError(msg)
    over = [d.name for d in dcrs if len(d.streams) > MAX_STREAMS_PER_DCR]
    if over:
        msg = f"DCR(s) {', '.join(over)} declare more than {MAX_STREAMS_PER_DCR} streams"
        raise KeyError(msg)
    used = sorted({by_stream[s].name for d in dcrs for s in d.streams})
    table_resources = [r for r in (_table_resource(tables[n]) for n in used) if r is not None]
    table_ids = {r["properties"]["schema"]["name"]:
                 "[resourceId('Microsoft.OperationalInsights/workspaces/tables', "
                 "split(parameters('workspaceResourceId'), '/')[8], "
                 f"'{r['properties']['schema']['name']}')]" for r in table_resources}
    return {
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/"
                   "deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "metadata": {"generator": "s3sentinel deploy", "target": target},
        "parameters": {
            "location": {"type": "string", "defaultValue": "[resourceGroup().location]"},
            "workspaceResourceId": {"type": "string", "metadata": {
                "description": "Resource id of the Log Analytics workspace behind Sentinel "
                               "(in this resource group)"}},
            "principalId": {"type": "string", "defaultValue": "", "metadata": {
                "description": "Object id of the connector's identity: it gets Monitoring "
                               "Metrics Publisher on every DCR (empty: no role assignment)"}},
            "principalType": {"type": "string", "defaultValue": "ServicePrincipal",
                              "allowedValues": ["ServicePrincipal", "User", "Group"]},
            "dataCollectionEndpointId": {"type": "string", "defaultValue": "", "metadata": {
                "description": "Resource id of a data collection endpoint to use instead of "
                               "each DCR's own endpoint (e.g. for private links)"}},
        },
        "resources": [*table_resources, *(_rule(d, by_stream, table_ids) for d in dcrs),
                      *(_role(d) for d in dcrs)],
        "outputs": {
            "target": {"type": "string", "value": target},
            "dcrs": {"type": "array", "value": [_output(d) for d in dcrs]},
        },
    }


def dcr_template(tables: Iterable[TableDef], *, prefix: str = "s3sentinel",
                 fanout: Mapping[str, int] | None = None) -> dict[str, Any]:
    """:func:`deploy_template` for ``tables``, their streams planned by :func:`plan_dcrs`."""
    by_name = {t.name: t for t in tables}
    plan = plan_dcrs((t.stream for t in by_name.values()), prefix=prefix, fanout=fanout)
    return deploy_template(by_name, plan)


def targets_from_outputs(outputs: Mapping[str, Any], base: TargetConfig | None = None,
                         ) -> TargetConfig:
    """The target a deployment's outputs describe (``az deployment group show --query
    properties.outputs``: ``{"dcrs": {"type": "Array", "value": [...]}, ...}``, or the bare
    values); credential settings come from ``base``."""

    def value(key: str) -> Any:
        v = outputs.get(key)
        return v.get("value") if isinstance(v, Mapping) and "value" in v else v

    dcrs = value("dcrs")
    if not isinstance(dcrs, list) or not dcrs:
        msg = "the outputs have no 'dcrs' list: pass the outputs of an s3sentinel template"
        raise ValueError(msg)
    name = str(value("target") or (base.name if base else "default"))
    made = [DcrConfig(str(d["name"]), str(d["immutableId"]), [str(s) for s in d["streams"]],
                      endpoint=str(d.get("endpoint") or "")) for d in dcrs]
    if base is None:
        return TargetConfig(name, made)
    return TargetConfig(name, made, credential=base.credential, client_id=base.client_id,
                        tenant_id=base.tenant_id, client_secret=base.client_secret,
                        token_file=base.token_file, ca_file=base.ca_file, tables=base.tables)


def targets_toml(target: TargetConfig) -> str:
    """``target`` as the ``[[targets]]`` TOML section to paste into the config."""
    q = json.dumps  # a JSON string is a valid TOML basic string
    lines = ["[[targets]]", f"name = {q(target.name)}", f"credential = {q(target.credential)}"]
    for key in ("endpoint", "client_id", "tenant_id", "client_secret", "token_file"):
        if getattr(target, key):
            lines.append(f"{key} = {q(getattr(target, key))}")
    if target.tables:
        lines.append(f"tables = [{', '.join(map(q, target.tables))}]")
    for dcr in target.dcrs:
        lines += ["", "[[targets.dcrs]]", f"name = {q(dcr.name)}", f"id = {q(dcr.id)}"]
        if dcr.endpoint:
            lines.append(f"endpoint = {q(dcr.endpoint)}")
        lines.append(f"streams = [{', '.join(map(q, dcr.streams))}]")
    return "\n".join(lines) + "\n"
