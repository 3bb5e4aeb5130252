"""Enrichment in the flow: priority rules and threat intel on every row, a fast lane for
what is urgent, results as columns or findings rows; anomaly scores and sequences on a side
branch.

The stateless step (:meth:`Enricher.enrich_batch`) runs on the mapped row bundles. For
tables that rules or intel cover it reads each row, classifies it and matches it against
the indicators. A row flagged critical, or matching an indicator, leaves the normal
bundle for a fast-lane bundle (:attr:`~dataflow.core.messages.Rows.fast`), which the flow
batches with ``enrich.fast_lane_secs`` instead of ``batch.max_age_secs``. Where the results
go depends on the table (:mod:`operators.enrich.columns`): custom ``_CL`` tables, and
Azure's own tables with ``enrich.standard_tables = "columns"``, carry them as columns on
every row; otherwise a row flagged high or critical, or matching intel, yields a finding
row (``S3SentinelFindings_CL``) that references the record id, and the table keeps its
exact schema.

With ``enrich.anomaly`` or ``enrich.sequences``, CloudTrail rows also go, bundled per hash
shard of their principal (:func:`principal_shard`: the principal entity the scorer keeps
baselines for, assumed-role sessions with machine-made names folded to their role, so one
principal's whole baseline lives in one shard), to a stateful step (:func:`score_shard`)
holding one bounded :class:`~operators.enrich.anomaly.AnomalyScorer` and one
:class:`~operators.enrich.sequences.SequenceDetector` per shard, both in the recovery
snapshots (each entity and principal packed again only once it changed); the scorer takes
a shard's rows as one batch. Anomalous rows and completed sequences come out as findings, in
the fast lane.
That state names principals, source addresses and access key ids: with a keyring
(``runtime.encryption_*``) a shard's snapshot is one AES-GCM envelope, opened again by
:func:`score_shard` on restore; snapshots written without a key still restore.

Sequences grouped by another column than the principal (``principal = "Alb"``: a burst of
5xx answers from one load balancer; ``principal = "SourceIpAddress"``: failed console
logins from one address) get the rows that match one of their steps, of whatever table
they declare, sharded by that column's value, so each group's count lives in one shard.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import pickle
import zlib
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from dataflow.core import metrics
from dataflow.core.messages import Rows, derived_id
from operators.enrich.anomaly import ANOMALOUS, AnomalyConfig, AnomalyScorer, principal_of
from operators.enrich.columns import FINDINGS_TABLE, carries_columns, column_names, splice
from operators.enrich.config import EnrichConfig
from operators.enrich.intel import FIELDS, IntelWatcher
from operators.enrich.rules import RuleSet
from operators.enrich.sequences import SequenceDetector, StepIndex, load_sequences
from operators.schema import Mapper
from operators.tabledef import TableDef

__all__ = ["Enricher", "Observed", "SealedShard", "ShardState", "principal_shard", "score_shard"]

log = logging.getLogger(__name__)

CLOUDTRAIL = "AWSCloudTrail"
PRINCIPAL = "UserIdentityArn"
"""The column CloudTrail sequences group by; rows are sharded by the principal entity made
from it (:func:`principal_shard`), the same for every row of one ARN."""
_URGENT = frozenset({"critical"})
_FINDING = frozenset({"critical", "high"})
_PLAIN = frozenset({str, int, float, bool})
_MAX_SHARD_KEYS = 8192
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


@dataclass(frozen=True, slots=True)
class Observed:
    """CloudTrail rows of one principal shard on their way to the anomaly/sequence side
    branch, in order: one item per shard per batch (bytewax moves items one by one)."""

    shard: str
    rows: tuple[tuple[str, str, dict], ...]
    """(record id, source partition, row) of each CloudTrail row sharded by principal."""
    grouped: tuple[tuple[str, str, str, str, dict], ...] = ()
    """(table, group column, record id, source partition, row) of each row sharded by the
    value of a sequence's group column other than the principal."""
    principals: tuple[str, ...] = ()
    """The principal entity (:func:`~operators.enrich.anomaly.principal_of`, ``""`` for
    none) of each of ``rows``, as the shard was chosen by; empty: not given."""


class Enricher:
    """The stateless enrichment step, built once per process from the config."""

    def __init__(self, cfg: EnrichConfig, tables: dict[str, TableDef],
                 s3_client: Any = None) -> None:

        self._cfg = cfg
        self._by_stream = {t.stream: t for t in tables.values()}
        self._findings = Mapper(tables[FINDINGS_TABLE])
        self.findings_stream = tables[FINDINGS_TABLE].stream
        self._rules = None
        if cfg.rules:

            self._rules = RuleSet.load(cfg.rule_files or None)
        self._intel = None
        if cfg.intel_file:

            self._intel = IntelWatcher(cfg.intel_file, s3_client,
                                       check_every_secs=cfg.intel_check_secs)
        self._side = cfg.anomaly or cfg.sequences
        self._columns = {t.name: column_names(t) for t in tables.values()
                         if carries_columns(t, cfg)}
        """Tables whose rows carry the rule and intel results as columns (no findings rows)."""

        self.reads = frozenset(
            t.name for t in tables.values() if t.name != FINDINGS_TABLE and (
                t.name in self._columns or (self._side and t.name == CLOUDTRAIL)
                or (self._rules is not None and self._rules.covers(t.name))
                or (self._intel is not None and t.name in FIELDS)))
        """Tables whose rows this step reads; the others pass untouched (and undecoded)."""
        self._dynamic = {t.name: tuple(c.name for c in t.columns if c.type == "dynamic")
                         for t in tables.values()}
        self._groups = {t.name: g for t in tables.values()
                        if cfg.sequences and (g := _groups(_sequence_specs(), t.name))}
        """Per table: (group column, its sequences' steps indexed by EventName) of the
        sequences not grouped by the principal, whose matching rows go to the shard of their
        group's value."""
        self._shards: dict[str, str] = {}
        """The shard of each principal (as :func:`principal_of` names it) recently seen."""
        self.reads |= frozenset(self._groups)

    def enrich_batch(self, items: list[Rows]) -> list[Rows | Observed]:
        out: list[Rows | Observed] = []
        side: dict[str, list[tuple[str, str, dict]]] = {}
        side_who: dict[str, list[str]] = {}  # the principal of each row in side
        grouped: dict[str, list[tuple[str, str, str, str, dict]]] = {}
        shards = self._shards
        for bundle in items:
            table = self._by_stream.get(bundle.stream)
            parsed = bundle.parsed
            if parsed is not None:  # rows go on as bytes only
                bundle = Rows(bundle.stream, bundle.partition, bundle.rows, bundle.record_ids)
            if table is None or table.name not in self.reads:
                out.append(bundle)
                continue
            cols = self._columns.get(table.name)
            dynamic = self._dynamic[table.name]
            rows = list(bundle.rows) if cols else bundle.rows
            keep: list[int] = []
            fast: list[int] = []
            findings: list[tuple[bytes, str]] = []
            groups = self._groups.get(table.name, ())
            for i, (raw, rid) in enumerate(zip(bundle.rows, bundle.record_ids, strict=True)):
                try:
                    if parsed is None:
                        row = orjson.loads(raw)
                    else:  # the mapper's dict: what orjson.loads(raw) gives, but for dynamic
                        row = parsed[i]  # values, which may hold JSON text (msgspec.Raw)
                        for c in dynamic:
                            v = row.get(c)
                            if v is not None and v.__class__ not in _PLAIN:
                                row[c] = _decode(_encode(v))
                    urgent, values = self._flag(table.name, row, rid, findings, cols)
                except Exception as ex:  # a bug must not stop the flow or lose the row
                    log.exception("%s: cannot enrich row %s; it goes on as it is", table.name,
                                  rid)
                    metrics.ERRORS.labels(bundle.partition.partition(":")[0], "enrich",
                                          type(ex).__name__).inc()
                    keep.append(i)
                    continue
                if values:
                    rows[i] = splice(raw, values)  # type: ignore[index]
                (fast if urgent else keep).append(i)
                if self._side and table.name == CLOUDTRAIL:
                    # The scorer's principal entity, not the raw ARN: two sessions of one
                    # role folded to ``role/*`` must share a shard (and so one baseline).
                    who = principal_of(row) or ""
                    shard = shards.get(who)
                    if shard is None:
                        shard = _principal_shard(who, self._cfg.shards)
                        if len(shards) >= _MAX_SHARD_KEYS:
                            shards.clear()
                        shards[who] = shard
                    got = side.get(shard)
                    if got is None:
                        side[shard] = [(rid, bundle.partition, row)]
                        side_who[shard] = [who]
                    else:
                        got.append((rid, bundle.partition, row))
                        side_who[shard].append(who)
                for column, steps in groups:
                    preds = steps.of(row)  # by EventName: most rows match no step's name
                    if not preds:
                        continue
                    value = row.get(column)
                    if value is not None and value != "" and any(p(row) for p in preds):
                        grouped.setdefault(_group_shard(column, value, self._cfg.shards),
                                           []).append((table.name, column, rid,
                                                       bundle.partition, row))
            if cols:
                bundle = Rows(bundle.stream, bundle.partition, tuple(rows), bundle.record_ids)
            if fast:
                metrics.RECORDS_FLAGGED.labels(table.name, "fast_lane").inc(len(fast))
                out.append(_subset(bundle, fast, bundle.partition, fast=True))
            if keep:
                out.append(_subset(bundle, keep, bundle.partition) if fast else bundle)
            if findings:
                out.append(Rows(self.findings_stream, bundle.partition,
                                tuple(r for r, _ in findings), tuple(i for _, i in findings),
                                fast=True))
        for shard in dict.fromkeys([*side, *grouped]):  # in order of first row, as before
            out.append(Observed(shard, tuple(side.get(shard, ())), tuple(grouped.get(shard, ())),
                                tuple(side_who.get(shard, ()))))
        return out

    def _flag(self, table: str, row: dict, rid: str, findings: list[tuple[bytes, str]],
              cols: tuple[str, str, str, str] | None) -> tuple[bool, dict[str, Any] | None]:
        """Classify and match one row: (whether it takes the fast lane, the enrichment
        column values when ``cols`` names them); findings rows otherwise."""
        urgent = False
        values: dict[str, Any] | None = {} if cols else None
        reasons: list[str] = []
        if self._rules is not None:
            c = self._rules.classify(table, row)
            if c.priority in _FINDING:
                urgent = c.priority in _URGENT
                metrics.RECORDS_FLAGGED.labels(table, c.priority).inc()
                if values is None:
                    findings.append(self.finding(table, row, rid, c.priority, list(c.reasons),
                                                 rule_ids=list(c.rule_ids), detector="rules"))
            if values is not None:
                values[cols[0]] = c.priority  # type: ignore[index]
                if c.rule_ids:
                    reasons.extend(c.reasons)
                    values[cols[2]] = list(c.rule_ids)  # type: ignore[index]
        if self._intel is not None:
            matches = self._intel.match(table, row)
            if matches:
                urgent = True
                metrics.RECORDS_FLAGGED.labels(table, "intel").inc()
                why = [f"{m.column} {m.value} matches {m.kind} indicator {m.indicator}"
                       + (f" ({m.description})" if m.description else "") for m in matches]
                intel = [{"kind": m.kind, "value": m.value, "indicator": m.indicator,
                          "description": m.description, "column": m.column} for m in matches]
                if values is None:
                    findings.append(self.finding(table, row, rid, "intel", why, intel=intel,
                                                 detector="intel"))
                else:
                    reasons.extend(why)
                    values[cols[3]] = intel  # type: ignore[index]
        if reasons:
            values[cols[1]] = reasons  # type: ignore[index]
        return urgent, values

    def finding(self, table: str, row: dict, rid: str, priority: str, reasons: list[str], *,
                rule_ids: list[str] | None = None, score: float | None = None,
                intel: list[dict] | None = None, sequence: str = "",
                detector: str) -> tuple[bytes, str]:
        """A finding row (JSON) and its record id: ``<object id>.<detector>-<offset>``, with
        the sequence's id for sequence findings (``.sequence.<id>``), so two sequences that
        complete on one row are two findings. Deterministic, so the upload journal keeps
        findings from being sent twice after a restart, as it does rows."""
        obj, _, offset = rid.rpartition("-")
        what = f"{detector}.{_id_part(sequence)}" if sequence else detector
        fid = f"{derived_id(obj, what)}-{offset}"
        doc = {"TimeGenerated": row.get("TimeGenerated"), "SourceTable": table,
               "SourceRecordId": rid, "Priority": priority, "Reasons": reasons,
               "RuleIds": rule_ids or [], "AnomalyScore": score, "IntelMatches": intel or [],
               "SequenceId": sequence, "Principal": row.get("UserIdentityArn"),
               "EventName": row.get("EventName"),
               "SourceIp": row.get("SourceIpAddress") or row.get("SrcAddr")
               or row.get("ClientIp"), "Detector": detector}
        return self._findings.map_dict(doc, fid), fid


def _id_part(name: str) -> str:
    """``name`` as it can stand in a record id (a short hash when it has other characters)."""
    if name.replace("_", "").isalnum() and name.isascii() and len(name) <= 64:
        return name
    return "h" + hashlib.sha256(name.encode()).hexdigest()[:16]


def _subset(bundle: Rows, idx: list[int], partition: str, *, fast: bool = False) -> Rows:
    return Rows(bundle.stream, partition, tuple(bundle.rows[i] for i in idx),
                tuple(bundle.record_ids[i] for i in idx), fast=fast)


def principal_shard(row: dict, shards: int) -> str:
    """The side-branch shard of a CloudTrail row: a hash of the principal entity the anomaly
    scorer keeps the row's baselines under (:func:`~operators.enrich.anomaly.principal_of`:
    the ARN, an assumed role's machine-made session names folded to ``role/*``; else the
    access key; else the invoking service), so every row of one entity, whichever session
    made it, reaches the one shard (and worker) that holds its whole baseline. Rows of one
    ARN always share a shard, as the sequences grouped by the principal need."""
    return _principal_shard(principal_of(row) or "", shards)


def _principal_shard(principal: str, shards: int) -> str:
    return str(zlib.crc32(principal.encode()) % shards)


def _group_shard(column: str, value: Any, shards: int) -> str:
    return str(zlib.crc32(f"{column}={value}".encode()) % shards)


def _groups(specs: tuple, table: str) -> tuple[tuple[str, StepIndex], ...]:
    """(column, step predicates indexed by EventName) per group column of the sequences of
    ``table`` that are not grouped by the principal on CloudTrail (those follow the
    principal shards)."""
    by: dict[str, list] = {}
    for spec in specs:
        if spec.table in (table, "*") and not (table == CLOUDTRAIL
                                               and spec.principal == PRINCIPAL):
            by.setdefault(spec.principal, []).extend(zip(spec.step_preds, spec.step_gates,
                                                         strict=True))
    return tuple((c, StepIndex(p)) for c, p in by.items())


@functools.lru_cache(maxsize=1)
def _sequence_specs() -> tuple:
    """The shipped sequence specs, read and compiled once per process."""

    return tuple(load_sequences())


class ShardState:
    """Anomaly scorer and sequence detector of one shard; pickles as their snapshots.

    bytewax snapshots ``stateful_map`` state with ``copy.deepcopy`` at every epoch, then
    pickles it into the recovery store; :meth:`__deepcopy__` returns the frozen snapshot
    (plain data) instead of rebuilding live objects that would only be pickled, sealed
    into one envelope when there is a ``keyring``.
    """

    def __init__(self, cfg: EnrichConfig, snapshot: dict | None = None,
                 keyring: Any = None) -> None:
        self.cfg = cfg
        self.keyring = keyring
        self.scorer = self.detector = None
        snapshot = snapshot or {}
        if cfg.anomaly:

            self.scorer = AnomalyScorer(AnomalyConfig(max_entities=cfg.shard_cap(),
                                                      entity_kinds=tuple(cfg.anomaly_entities)))
            if snapshot.get("scorer") is not None:
                self.scorer.restore(snapshot["scorer"])
        if cfg.sequences:

            self.detector = SequenceDetector.restore(_sequence_specs(), snapshot.get("detector"),
                                                     max_principals=cfg.shard_cap())
        self._held = [0, 0]
        """What :meth:`report` last added to the process's gauges: (entities, groups)."""
        self._evicted = [d.evicted if d is not None else 0 for d in (self.scorer, self.detector)]
        """The detectors' eviction counts (kept in their snapshots) :meth:`report` last saw."""

    def report(self) -> None:
        """Bring the process's ``s3sentinel_enrich_entities`` and ``_evicted_total`` up to
        date with this shard (by the change since the last call: a process holds many)."""
        for i, (name, d) in enumerate((("anomaly", self.scorer), ("sequences", self.detector))):
            if d is None:
                continue
            held = len(d)
            if held != self._held[i]:
                metrics.ENRICH_ENTITIES.labels(name).inc(held - self._held[i])
                self._held[i] = held
            if d.evicted != self._evicted[i]:
                metrics.ENRICH_EVICTED.labels(name).inc(max(0, d.evicted - self._evicted[i]))
                self._evicted[i] = d.evicted

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg,
                "scorer": self.scorer.pack() if self.scorer is not None else None,
                "detector": self.detector.pack() if self.detector is not None else None}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["cfg"], state)  # type: ignore[misc]

    def __deepcopy__(self, memo: dict) -> _FrozenShard | SealedShard:
        state = self.__getstate__()
        if self.keyring is None:
            return _FrozenShard(state)
        plain = pickle.dumps({"scorer": state["scorer"], "detector": state["detector"]},
                             protocol=pickle.HIGHEST_PROTOCOL)
        return SealedShard(self.cfg, self.keyring.encrypt(plain, _SHARD_AAD).to_bytes())


_SHARD_AAD = b"s3sentinel-shard-snapshot"


class _FrozenShard:
    """A shard's snapshot as bytewax stores it; unpickles as a live :class:`ShardState`."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def __reduce__(self) -> tuple:
        return (_thaw, (self.state,))


class SealedShard:
    """A shard's snapshot encrypted with the keyring (what the recovery store holds when
    one is configured); :func:`score_shard` opens it on restore."""

    def __init__(self, cfg: EnrichConfig, sealed: bytes) -> None:
        self.cfg = cfg
        self.sealed = sealed

    def __reduce__(self) -> tuple:
        return (SealedShard, (self.cfg, self.sealed))

    def open(self, keyring: Any) -> ShardState:
        """The live state, decrypted (with the config it was snapshotted with, as a plain
        snapshot is); raises when no keyring is configured, or it lacks the key."""
        if keyring is None:
            msg = ("the recovery store holds encrypted enrichment state: configure the keyring "
                   "it was written with (runtime.encryption_key_file or "
                   "runtime.encryption_keyvault_keys), or start with a new recovery store")
            raise RuntimeError(msg)
        state = pickle.loads(keyring.decrypt(self.sealed, _SHARD_AAD))  # authenticated
        return ShardState(self.cfg, state, keyring)


def _thaw(state: dict) -> ShardState:
    return ShardState(state["cfg"], state)


def score_shard(enricher: Enricher, cfg: EnrichConfig,
                state: ShardState | SealedShard | None, obs: Observed, *,
                keyring: Any = None) -> tuple[ShardState, list[Rows]]:
    """The stateful side step: findings for anomalous rows and completed sequences.

    :arg keyring: Seals the shard's snapshots (and opens sealed ones on restore); None
        keeps them plain.
    """

    if state is None:
        state = ShardState(cfg, keyring=keyring)
    elif isinstance(state, SealedShard):
        state = state.open(keyring)
    else:
        state.keyring = keyring  # a plain snapshot is sealed from the next one on
    found: dict[str, list[tuple[bytes, str]]] = {}  # source partition -> findings
    flagged = (state.scorer.flag_many([row for _, _, row in obs.rows], ANOMALOUS,
                                      principals=obs.principals or None)
               if state.scorer is not None else [])
    flagged.reverse()  # popped in row order
    for k, (rid, partition, row) in enumerate(obs.rows):
        if flagged and flagged[-1][0] == k:
            score = flagged.pop()[1]
            metrics.RECORDS_FLAGGED.labels(CLOUDTRAIL, "anomalous").inc()
            found.setdefault(partition, []).append(enricher.finding(
                CLOUDTRAIL, row, rid, "anomalous", list(score.reasons),
                score=round(score.value, 3), detector="anomaly"))
        if state.detector is not None:
            for m in state.detector.observe(CLOUDTRAIL, row, group=PRINCIPAL):
                metrics.RECORDS_FLAGGED.labels(CLOUDTRAIL, "sequence").inc()
                found.setdefault(partition, []).append(enricher.finding(
                    CLOUDTRAIL, row, rid, m.priority, [m.reason], sequence=m.sequence_id,
                    detector="sequence"))
    if state.detector is not None:
        for table, column, rid, partition, row in obs.grouped:
            for m in state.detector.observe(table, row, group=column):
                metrics.RECORDS_FLAGGED.labels(table, "sequence").inc()
                found.setdefault(partition, []).append(enricher.finding(
                    table, row, rid, m.priority, [m.reason], sequence=m.sequence_id,
                    detector="sequence"))
    state.report()
    return state, [Rows(enricher.findings_stream, partition,
                        tuple(r for r, _ in rows), tuple(i for _, i in rows), fast=True)
                   for partition, rows in found.items()]
