"""The dataflow: S3 → map → batch → Sentinel, with every failure on a dead-letter path.

Run it with bytewax, the config file named by ``$S3SENTINEL_CONFIG``::

    S3SENTINEL_CONFIG=examples/demo.toml python -m bytewax.run dataflow.flow:flow -w 2

or through the CLI: ``s3sentinel run -c examples/demo.toml``.
"""

from __future__ import annotations

import atexit
import functools
import gc
import os
import sys
from collections.abc import Callable
from datetime import timedelta
from typing import Any, cast

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from connectors.aws import client_for, s3_client, sqs_client
from connectors.deadletter import DeadLetterSink, DeadLetterStore
from connectors.ledger import SettledSink
from connectors.s3.source import S3Source
from connectors.sentinel.sink import SentinelSink
from dataflow import runtime
from dataflow.config import Config, ConfigError, load_config
from dataflow.core import metrics
from dataflow.core.messages import (
    ErrorRecord,
    ObjectEnd,
    ObjectStart,
    Partial,
    RawRecord,
    Row,
    Rows,
    Settled,
)
from dataflow.keys import keyring_for
from dataflow.locality import ClusterShape, LocalKeys
from dataflow.tables import tables_for
from dataflow.targets import Routing, check_targets, credentials_for, targets_of
from operators.batch import batch_rows
from operators.enrich.operator import Enricher, Observed, score_shard
from operators.parse import RecordMapper
from operators.transform import Aggregator, Transformer
from operators.transform import check as check_transforms

__all__ = ["build_flow"]


def build_flow(cfg: Config, *, s3_factory: Callable[[], Any] | None = None,
               service_factory: Callable[..., Any] | None = None,
               shape: ClusterShape | None = None, resumable: bool | None = None) -> Dataflow:
    """The connector's dataflow for ``cfg``.

    :arg s3_factory: Builds the S3 client of each source partition (default: from ``cfg.aws``).
    :arg service_factory: Builds the Logs Ingestion client of each sink partition.
    :arg shape: This process's place in the cluster (default: from bytewax.run's arguments).
    :arg resumable: Whether the flow runs with a recovery store (default: from bytewax.run's
        arguments and environment).
    """
    if resumable is None:
        resumable = _recovery_in_use()
    tables = tables_for(cfg)
    problems = check_targets(cfg, tables) + check_transforms(
        cfg.transforms, tables, [s.name for s in cfg.sources])
    if problems:
        raise ConfigError(problems)
    routing = Routing(cfg, tables)
    enricher = None
    if cfg.enrich.enabled:
        intel_s3 = s3_client(cfg.aws) if cfg.enrich.intel_file.startswith("s3://") else None
        enricher = Enricher(cfg.enrich, tables, intel_s3)
    # The enrichment step reads the rows the mapper builds, rather than decoding them again.
    mapper = RecordMapper(cfg.sources, tables, cfg.batch.max_bytes,
                          keep_parsed=enricher.reads if enricher else frozenset())
    # Per-source clients (each source may assume its own role), unless a test injects one.
    per_source = functools.partial(client_for, cfg.aws) if s3_factory is None else None
    s3_factory = s3_factory or functools.partial(s3_client, cfg.aws)
    # Dead letters, pending batches and enrichment state in snapshots are encrypted at rest,
    # and journal lines are authenticated, with this keyring (None: no key configured).
    keyring = keyring_for(cfg)
    transformer = Transformer(cfg.transforms, tables) if cfg.transforms else None
    summarise = transformer is not None and transformer.aggregates
    source = S3Source(cfg.sources, s3_factory, catch_up=cfg.runtime.mode == "catch_up",
                      sqs_factory=functools.partial(sqs_client, cfg.aws),
                      journal_dir=cfg.runtime.journal_dir, client_for=per_source,
                      keyring=keyring, journal_retention_secs=cfg.runtime.journal_retention_secs,
                      mark_ends=summarise, resumable=resumable)

    flow = Dataflow("s3sentinel")
    items = op.input("s3", flow, source)
    # The outputs of a branch are cast to what the predicate let through (as bytewax's own
    # operators do), so the element types survive it.
    read = op.branch("read_ok", items, lambda x: not isinstance(x, ErrorRecord))
    mapped = op.flat_map_batch("map", cast("op.Stream[RawRecord | ObjectEnd | ObjectStart]", read.trues),
                               mapper.map_batch)
    rows = op.branch("map_ok", mapped, lambda x: isinstance(x, Rows))
    errors: op.Stream[ErrorRecord] = op.merge(
        "errors", cast("op.Stream[ErrorRecord]", read.falses),
        cast("op.Stream[ErrorRecord]", rows.falses))
    rt = cfg.runtime
    op.output("dead_letter", errors, DeadLetterSink(rt.errors_dir, rt.errors_s3_uri, s3_factory,
                                                    journal_dir=rt.journal_dir, keyring=keyring))

    good = cast("op.Stream[Rows]", rows.trues)
    if enricher is not None:
        good = _enrich(cfg, enricher, good, keyring)
    # Objects' end markers (only when rows are summarised per object) follow their rows.
    local = LocalKeys(shape or ClusterShape.from_argv(sys.argv))
    if transformer is not None:  # after enrichment: a row dropped here may still raise a finding
        good = _transform(cfg, tables, transformer, good, local, keyring)
    if not routing.single:  # each bundle learns its target: batches never mix targets
        good = op.map("route", good, routing.stamp)
    lanes = op.branch("lane", good, lambda r: r.fast)
    # Batches are keyed so that bytewax keeps them on this process: an object's rows are
    # delivered (and journaled) where they were read, so hosts need share no disk.

    def batch_key(rows: Rows) -> str:
        return local(f"{rows.target}|{rows.stream}|{rows.partition}")

    def fast_key(rows: Rows) -> str:
        return local(f"{rows.target}|{rows.stream}|fast")

    batch = functools.partial(batch_rows, max_bytes=cfg.batch.max_bytes,
                              max_records=cfg.batch.max_records, keyring=keyring)
    normal = batch("batch", _keyed(op.key_on("key", lanes.falses, batch_key)),
                   max_age=timedelta(seconds=cfg.batch.max_age_secs))
    # One fast-lane batch per stream and target (in each process), not per source
    # partition: urgent rows are few, and every key would send its own small request each
    # fast_lane_secs.
    fast = batch("fast_batch", _keyed(op.key_on("fast_key", lanes.trues, fast_key)),
                 max_age=timedelta(seconds=cfg.enrich.fast_lane_secs))
    batches = op.merge("batches", normal, fast)
    dead_letters = functools.partial(DeadLetterStore, rt.errors_dir, rt.errors_s3_uri, s3_factory,
                                     keyring)
    sink = SentinelSink(cfg.sentinel, service_factory, targets=targets_of(cfg),
                        credential_for=credentials_for(cfg), journal_dir=rt.journal_dir,
                        journal_retention_secs=rt.journal_retention_secs,
                        dead_letters=dead_letters)
    op.output("sentinel", op.key_rm("unkey", batches), sink)
    return flow


def _transform(cfg: Config, tables: Any, transformer: Transformer, rows: op.Stream[Rows],
               local: LocalKeys, keyring: Any) -> op.Stream[Rows]:
    """The ``[[transforms]]``: kept and routed rows go on; the ids of rows taken away are
    journaled as settled; partial summaries merge per object (on this process) until the
    object's end marker."""
    out = op.flat_map("transform", rows, transformer.apply)
    settled = op.branch("settled", out, lambda x: isinstance(x, Settled))
    rt = cfg.runtime
    if rt.journal_dir is not None:
        op.output("settled_journal", cast("op.Stream[Settled]", settled.trues),
                  SettledSink(rt.journal_dir, rt.journal_retention_secs, keyring))
    rest = cast("op.Stream[Rows | Partial]", settled.falses)
    if not transformer.aggregates:
        return cast("op.Stream[Rows]", rest)
    # Rows go on; partial summaries and start and end markers go to their object's merge.
    split = op.branch("summaries", rest,
                      lambda x: isinstance(x, Partial) or bool(x.end or x.begin))

    def object_key(x: Partial | Rows) -> str:
        return local(x.object_id if isinstance(x, Partial) else x.end or x.begin)

    keyed = op.key_on("object", split.trues, object_key)
    logic = functools.partial(Aggregator(cfg.transforms, tables).logic, keyring=keyring)
    summaries = op.key_rm("unobject", op.stateful_batch("aggregate", keyed, logic))
    return op.merge("with_summaries", cast("op.Stream[Rows]", split.falses), summaries)


def _keyed(stream: op.KeyedStream[Rows]) -> op.KeyedStream[Row | Rows]:
    """The batcher takes single rows too (KeyedStream is invariant)."""
    return cast("op.KeyedStream[Row | Rows]", stream)


def _enrich(cfg: Config, enricher: Enricher, rows: op.Stream[Rows],
            keyring: Any) -> op.Stream[Rows]:
    """Rules and intel on every row; anomaly scores and sequences on a keyed side branch."""
    out = op.flat_map_batch("enrich", rows, enricher.enrich_batch)
    split = op.branch("observed", out, lambda x: isinstance(x, Observed))
    good = cast("op.Stream[Rows]", split.falses)
    if cfg.enrich.anomaly or cfg.enrich.sequences:
        keyed = op.key_on("shard", cast("op.Stream[Observed]", split.trues), lambda o: o.shard)
        # The shard state (principals, addresses, key ids) is encrypted in the snapshots.
        scored = op.stateful_map("score", keyed, functools.partial(
            score_shard, enricher, cfg.enrich, keyring=keyring))
        found = op.flat_map("findings", op.key_rm("unshard", scored), lambda rows: rows)
        good = op.merge("with_findings", good, found)
    return good


def _recovery_in_use() -> bool:
    """Whether bytewax.run was given a recovery store (``-r`` or its environment variable)."""
    return bool(os.environ.get("BYTEWAX_RECOVERY_DIRECTORY")) or any(
        a in ("-r", "--recovery-directory") or a.startswith("--recovery-directory=")
        for a in sys.argv)


def _tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a flow that allocates many short-lived
    rows: what start-up built (modules, tables, rules) is moved out of its sight for good,
    and young collections run every 20,000 allocations instead of 700, so fewer survivors
    are promoted and rescanned. Rows are freed by reference counting either way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _print_summary() -> None:
    print(metrics.summary(), file=sys.stderr, flush=True)


def __getattr__(name: str) -> Any:
    # `python -m bytewax.run dataflow.flow:flow` reads this attribute: build the flow from
    # $S3SENTINEL_CONFIG on first use, so importing the module needs no config.
    if name == "flow":
        cfg = load_config()
        if cfg.runtime.mode == "continuous" and not _recovery_in_use():
            print("s3sentinel: continuous mode without a recovery store: after a restart every "
                  "source starts over (the upload journal still skips what was delivered). "
                  "Use `s3sentinel run`, or pass -r DIR -s SECS -b 0 to bytewax.run.",
                  file=sys.stderr, flush=True)
        flow = build_flow(cfg)
        _tune_gc()

        runtime.start(cfg)
        globals()["flow"] = flow
        atexit.register(_print_summary)
        return flow
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
