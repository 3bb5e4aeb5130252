"""Which target each row goes to, and whether the targets' DCRs carry what is sent.

It lives in the app because it joins three sections: ``[[sources]]`` (each names its
target), ``[[targets]]`` (their DCRs and pinned tables) and the tables (the stream each
source's rows are posted to). A row goes to the target its table is pinned to, else to its
source's target, else to the first target; a config without ``[[targets]]`` has one,
``default``, from ``[sentinel] endpoint/rule_id``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from connectors.ops.secrets import SecretResolver
from connectors.s3.config import SourceConfig
from connectors.sentinel.config import DEFAULT_TARGET, MAX_STREAMS_PER_DCR, TargetConfig
from connectors.sentinel.service import IngestionService, make_credential
from dataflow.config import Config
from dataflow.core.messages import Rows
from operators.enrich.columns import FINDINGS_TABLE
from operators.formats.registry import DEFAULT_TABLES
from operators.tabledef import TableDef

__all__ = ["MAX_STREAM_COLUMNS", "Probe", "Routing", "check_targets", "credentials_for",
           "legacy_warning", "sent_streams", "service_for", "source_tables", "targets_of"]

MAX_STREAM_COLUMNS = 500
"""Columns of one stream declaration / custom table (Log Analytics' column limit)."""


def targets_of(cfg: Config) -> list[TargetConfig]:
    """The configured targets; the single-DCR ``[sentinel]`` form makes one, ``default``."""
    if cfg.targets:
        return list(cfg.targets)
    legacy = cfg.sentinel.legacy_target()
    return [legacy] if legacy is not None else []


def source_tables(src: SourceConfig) -> list[str]:
    """The tables a source's rows can land in (an ``auto`` source: every format's table)."""
    if src.table:
        return [src.table]
    if src.format == "auto":
        return sorted(set(DEFAULT_TABLES.values()))
    table = DEFAULT_TABLES.get(src.format)
    return [table] if table else []


class Routing:
    """The target of each bundle of rows: its table's pin, its source's, or the first."""

    def __init__(self, cfg: Config, tables: Mapping[str, TableDef]) -> None:
        targets = targets_of(cfg)
        self.default = targets[0].name if targets else DEFAULT_TARGET
        self._by_source = {s.name: s.target or self.default for s in cfg.sources}
        self._pinned = {tables[t].stream: target.name for target in targets
                        for t in target.tables if t in tables}
        self.single = len(targets) <= 1

    def target(self, source: str, stream: str) -> str:
        """The target of rows of ``source`` posted to ``stream``."""
        return self._pinned.get(stream) or self._by_source.get(source, self.default)

    def stamp(self, rows: Rows) -> Rows:
        """``rows`` with its target set (the source is the partition's ``<source>:i/n``)."""
        source = rows.partition.rpartition(":")[0]
        return dataclasses.replace(rows, target=self.target(source, rows.stream))


def sent_streams(cfg: Config, tables: Mapping[str, TableDef]) -> dict[str, dict[str, str]]:
    """target -> {stream it receives: why (the source or section that sends it)}."""
    routing = Routing(cfg, tables)
    out: dict[str, dict[str, str]] = {}

    def add(source: str, table: str, why: str) -> None:
        if table in tables:
            stream = tables[table].stream
            out.setdefault(routing.target(source, stream), {}).setdefault(stream, why)

    moved: dict[str, list[tuple[str, str]]] = {}  # table -> (table its rows go to, how)
    for t in cfg.transforms:
        moved.setdefault(t.table, []).extend(
            [(r.table, "routed to") for r in t.route]
            + [(a.table, "summarised into") for a in t.aggregate])
    for src in cfg.sources:
        for table in source_tables(src):
            add(src.name, table, f"source {src.name!r} -> {table}")
            for other, how in moved.get(table, ()):
                add(src.name, other, f"source {src.name!r} -> {table} -> {how} {other}")
        if cfg.enrich.enabled:  # findings follow the rows they are about
            add(src.name, FINDINGS_TABLE, f"enrich (findings of source {src.name!r})")
    if cfg.ops.health_table:
        add("", cfg.ops.health_table, "ops.health_table")
    return out


def legacy_warning(cfg: Config, tables: Mapping[str, TableDef]) -> str | None:
    """For the single-DCR form: a warning when the config may send more streams than one
    DCR can declare (its ``auto`` sources can land in every format's table), with how to
    migrate; None otherwise. Not an error: the one DCR may declare just the streams the
    objects really hold."""
    if cfg.targets or not cfg.sentinel.rule_id:
        return None
    streams = sorted(set().union(*sent_streams(cfg, tables).values()))
    if len(streams) <= MAX_STREAMS_PER_DCR:
        return None
    return (f"sentinel.rule_id: this config may send {len(streams)} streams ({', '.join(streams)})"
            f" and one DCR declares at most {MAX_STREAMS_PER_DCR}: rows of a stream the rule "
            "does not declare are refused (404 InvalidStream) and dead-lettered. Migrate to "
            "[[targets]]: `s3sentinel deploy -c CONFIG` writes a template with enough DCRs, and "
            "`s3sentinel targets OUTPUTS.json` the [[targets]] section that replaces "
            "endpoint/rule_id")


def check_targets(cfg: Config, tables: Mapping[str, TableDef]) -> list[str]:
    """What the targets' DCRs lack or break, each with its key path: a stream sent to a
    target none of its DCRs carries, a stream over the column limit, a pinned table that
    does not exist."""
    problems: list[str] = []
    by_stream = {t.stream: t for t in tables.values()}
    sent = sent_streams(cfg, tables)
    for target in cfg.targets:
        where = f"targets[{target.name}]"
        for t in target.tables:
            if t not in tables:
                problems.append(f"{where}.tables: no table {t!r}")
        carried = {s for dcr in target.dcrs for s in dcr.streams}
        for stream, why in sorted(sent.get(target.name, {}).items()):
            if stream not in carried:
                problems.append(f"{where}.dcrs: stream {stream} ({why}) is on no DCR of this "
                                "target: add it to a DCR's streams (and to its template)")
        for dcr in target.dcrs:
            for stream in dcr.streams:
                table = by_stream.get(stream)  # (a stream of no table here is unused)
                if table is not None and len(table.columns) + len(table.added) + 1 > MAX_STREAM_COLUMNS:
                    problems.append(f"{where}.dcrs[{dcr.name}].streams: {stream} has more than "
                                    f"{MAX_STREAM_COLUMNS} columns")
    return problems


class Probe:
    """Sends to every DCR that carries a stream, over all targets: what readiness checks
    (an empty request proves the endpoint, the credential, the role and the stream)."""

    def __init__(self, cfg: Config, credential_for: Callable[[TargetConfig], Any] | None = None,
                 ) -> None:
        make = credential_for or credentials_for(cfg)
        self._services: list[tuple[list[str], Any]] = []
        for target in targets_of(cfg):
            credential = make(target)
            for dcr in target.dcrs:
                self._services.append((dcr.streams, IngestionService.for_dcr(
                    cfg.sentinel, target, dcr, credential)))

    def send(self, stream: str, body: bytes, request_id: str | None = None) -> str:
        """Send ``body`` to each DCR that carries ``stream``; the last request id."""
        rid = ""
        for streams, service in self._services:
            if not streams or stream in streams:
                rid = service.send(stream, body, request_id=request_id)
        return rid

    def close(self) -> None:
        for _, service in self._services:
            service.close()


def credentials_for(cfg: Config) -> Callable[[TargetConfig], Any]:
    """Builds a target's credential; a service principal's ``keyvault:`` secret is read
    through ``ops.keyvault_url`` (with the process's own Azure identity)."""

    def build(target: TargetConfig) -> Any:
        secret = None
        if target.credential == "service_principal":
            kwargs: dict[str, Any] = {
                "verify_challenge_resource": cfg.ops.keyvault_verify_challenge_resource}
            if target.ca_file or cfg.sentinel.ca_file:
                kwargs["connection_verify"] = target.ca_file or cfg.sentinel.ca_file
            secret = SecretResolver(cfg.ops.keyvault_url, ttl_secs=cfg.ops.secret_ttl_secs,
                                    **kwargs).resolve
        return make_credential(target, secret)

    return build


def service_for(cfg: Config, tables: Mapping[str, TableDef], stream: str,
                credential_for: Callable[[TargetConfig], Any] | None = None) -> IngestionService:
    """A client of the first DCR that carries ``stream`` in the target its rows go to (the
    health table's rows, which come from no source)."""
    routing = Routing(cfg, tables)
    name = routing.target("", stream)
    target = next(t for t in targets_of(cfg) if t.name == name)
    dcr = next(d for d in target.dcrs if not d.streams or stream in d.streams)
    credential = (credential_for or credentials_for(cfg))(target)
    return IngestionService.for_dcr(cfg.sentinel, target, dcr, credential)
