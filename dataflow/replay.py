"""``s3sentinel replay``: send dead-lettered records again, once the cause is fixed.

Each entry of the dead-letter store goes back through the same path as in the flow:

- ``deliver`` entries (rows the service refused, or whose retries ran out) are sent as
  they are;
- ``parse``/``map`` entries are parsed and mapped again from their bytes, with the
  current config and table definitions (so a fixed mapping applies);
- ``read`` entries (objects that could not be read from some offset on) are read again
  from S3 (the same version, by ETag) from that offset.

Rows are delivered by the sink's own partition, so retries, 413/400 splitting and the
upload journal all apply: a record the journal says was delivered is not sent again,
which makes a second replay (or one interrupted by a crash) deliver nothing twice.
Delivered entries are removed from their file (atomically); what fails again stays
in the store, with the new reason (a row refused again is written anew by the sink).

What replay trusts:

- A file is read with :meth:`~connectors.deadletter.DeadLetterStore.load`: a line that
  is refused (plain under a key, undecryptable, duplicated, from another write) is
  skipped with its reason and counted, and the rest of the file is replayed. A file with
  any problem (refused, missing or reordered lines) is then left exactly as it is, as
  evidence and so that nothing is lost (e.g. lines under a key not configured now):
  its delivered entries are in the journal and are not sent again. Legacy files
  (sealed before sequence numbers) are replayed and noted.
- ``read`` entries are read again only inside the bucket and prefix of the source they
  name, with that source's client (its ``role_arn``/``external_id``), and not when the
  key is one the source skips; others are refused with the reason and stay in the store.
- Any of this makes the exit status 1 (:attr:`ReplaySummary.ok`).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from connectors.aws import client_for, s3_client
from connectors.deadletter import DeadLetterStore, EntryFile, error_entry
from connectors.ledger import Ledger
from connectors.s3.discovery import skip_reason
from connectors.s3.objects import open_body
from connectors.s3.records import UnreadableRecord, object_records
from connectors.sentinel.sink import SentinelSink, _SentinelPartition
from dataflow.config import Config, SourceConfig
from dataflow.core import metrics
from dataflow.core.messages import Batch, ErrorRecord, ObjectRef, Partial, RawRecord, Rows, Settled
from dataflow.keys import keyring_for
from dataflow.tables import tables_for
from dataflow.targets import Routing, credentials_for, targets_of
from operators.formats.registry import text_format
from operators.parse import RecordMapper
from operators.tabledef import TableDef
from operators.transform import Transformer

__all__ = ["ReplaySummary", "parse_since", "replay"]

log = logging.getLogger(__name__)

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: a duration back from now (``30m``, ``6h``, ``2d``) or an ISO-8601 time."""
    m = _DURATION.match(text.strip())
    if m:
        secs = float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return (time.time() if now is None else now) - secs
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = f"--since {text!r}: give a duration such as 30m, 6h, 2d or an ISO-8601 time"
        raise ValueError(msg) from None
    return dt.timestamp()


@dataclass
class ReplaySummary:
    """What a replay did (or, with ``dry_run``, would do)."""

    entries: int = 0
    """Entries selected by the filters."""
    delivered: Counter[str] = field(default_factory=Counter)
    """Records delivered now, per stream."""
    already_delivered: int = 0
    """Records the upload journal had (sent by an earlier replay or before a crash)."""
    failed: int = 0
    """Records that failed again and stay in the store."""
    rejected: int = 0
    """Lines of dead-letter files refused (not authentic, not decryptable, duplicated...)."""
    refused: int = 0
    """Entries naming an object outside the bucket and prefix of their source (not read)."""
    problems: list[str] = field(default_factory=list)
    """What was wrong, one line each (file, line number, reason)."""
    notes: list[str] = field(default_factory=list)
    """What is worth knowing but not wrong (legacy files)."""
    dry_run: bool = False

    @property
    def ok(self) -> bool:
        """Whether everything selected was delivered (or already was) and nothing was wrong."""
        return not (self.failed or self.rejected or self.refused or self.problems)

    def __str__(self) -> str:
        verb = "would send" if self.dry_run else "delivered"
        streams = ", ".join(f"{k}={v}" for k, v in sorted(self.delivered.items())) or "none"
        text = (f"replay: {self.entries} dead-letter entries selected; {verb} "
                f"{sum(self.delivered.values())} records [{streams}]; already delivered "
                f"{self.already_delivered}; still failing {self.failed}")
        if self.rejected or self.refused:
            text += (f"; rejected {self.rejected} lines (integrity); refused {self.refused} "
                     "entries (outside their source)")
        return "\n".join([text, *(f"  problem: {p}" for p in self.problems),
                          *(f"  note: {n}" for n in self.notes)])


@dataclass
class _Work:
    """Rows rebuilt from one entry, and what replaced it if it failed again."""

    rows: list[tuple[str, str, bytes]] = field(default_factory=list)  # (stream, record id, row)
    remaining: list[dict] = field(default_factory=list)
    refused: int = 0
    """Entries of ``remaining`` that were refused (outside their source), not retried."""
    why: list[str] = field(default_factory=list)


def replay(cfg: Config, *, since: float | None = None, stream: str | None = None,
           dry_run: bool = False, s3_factory: Callable[[], Any] | None = None,
           service_factory: Callable[..., Any] | None = None,
           sleep: Callable[[float], None] = time.sleep) -> ReplaySummary:
    """Replay the dead-letter store of ``cfg`` (see the module docstring).

    :arg s3_factory: One S3 client for everything (tests); by default the store uses the
        default chain and each source its own client (:func:`connectors.aws.s3_client`
        with the source's role).
    """
    rt = cfg.runtime

    keyring = keyring_for(cfg)
    store = DeadLetterStore(rt.errors_dir, rt.errors_s3_uri,
                            s3_factory or functools.partial(s3_client, cfg.aws), keyring)
    if s3_factory is not None:
        client_for: Callable[[SourceConfig], Any] = lambda _src: s3_factory()  # noqa: E731 (a small test in a table of them)
    else:
        client_for = functools.partial(_source_client, cfg)
    tables = tables_for(cfg)
    mapper = RecordMapper(cfg.sources, tables, cfg.batch.max_bytes)
    rebuild = _Rebuilder(cfg, mapper, client_for, Routing(cfg, tables), tables)
    journal = Ledger(rt.journal_dir, "replay", rt.journal_retention_secs,
                            keyring=keyring)
    summary = ReplaySummary(dry_run=dry_run)
    part = None
    if not dry_run:
        lanes = SentinelSink(cfg.sentinel, service_factory, targets=targets_of(cfg),
                             credential_for=credentials_for(cfg)).lanes()
        part = _SentinelPartition(lanes, cfg.sentinel, sleep, time.monotonic, journal,
                                  store, None, name="replayed")
    try:
        for name in store.names():
            got = store.load(name)
            _check(store, got, summary)
            keep: list[dict] = []
            rows: list[tuple[str, str, bytes]] = []
            for entry in got.entries:
                if not _selected(entry, since, stream):
                    keep.append(entry)
                    continue
                work = rebuild(entry)
                if stream is not None:
                    # Rows for other streams (e.g. a read entry whose object feeds several)
                    # are not sent now; such an entry stays whole.
                    if any(s != stream for s, _, _ in work.rows):
                        keep.append(entry)
                        continue
                summary.entries += 1
                keep.extend(work.remaining)
                summary.failed += len(work.remaining) - work.refused
                summary.refused += work.refused
                summary.problems.extend(f"{store.location}/{name}: {why}" for why in work.why)
                rows.extend(work.rows)
            fresh = [r for r in rows if not journal.has(r[1])]
            summary.already_delivered += len(rows) - len(fresh)
            metrics.REPLAYED_RECORDS.labels("already_delivered").inc(len(rows) - len(fresh))
            if dry_run:
                summary.delivered.update(s for s, _, _ in fresh)
                continue
            assert part is not None
            for batch in _batches(fresh, cfg.batch.max_bytes, cfg.batch.max_records,
                                  rebuild.target_of):
                part.write_batch([batch])
            for s, rid, _ in fresh:
                if journal.has(rid):
                    summary.delivered[s] += 1
                    metrics.REPLAYED_RECORDS.labels("delivered").inc()
                else:  # the sink wrote it to the store again, with the new reason
                    summary.failed += 1
                    metrics.REPLAYED_RECORDS.labels("failed").inc()
            # A file with a problem stays as it is: rewriting it would drop what could not
            # be read now (and seal what was forged).
            if got.intact and (len(keep) != len(got.entries) or rows):
                store.replace(name, keep)
    finally:
        if part is not None:
            part.close()
        else:
            journal.close()
    return summary


def _check(store: DeadLetterStore, got: EntryFile, summary: ReplaySummary) -> None:
    """Count and describe what is wrong with one file before its entries are replayed."""
    where = f"{store.location}/{got.name}"
    for issue in got.issues:
        if issue.kind == "legacy":
            summary.notes.append(f"{where}: {issue}")
            continue
        summary.problems.append(f"{where}, {issue}")
        if issue.refused:
            summary.rejected += 1
            metrics.DEADLETTER_REJECTED_LINES.labels(issue.kind).inc()
        log.error("replay: %s, %s", where, issue)
    if not got.intact:
        summary.problems.append(f"{where}: left as it is (its problems above need a look); "
                                "what it delivered now is in the journal and is not sent twice")


def _source_client(cfg: Config, src: SourceConfig) -> Any:
    """The S3 client the flow reads ``src`` with: its own role, when it has one."""
    return client_for(cfg.aws, src, "s3")


def _selected(entry: dict, since: float | None, stream: str | None) -> bool:
    if since is not None and entry.get("time", since) < since:
        return False
    return stream is None or entry.get("stream") in (None, stream)


def _batches(rows: list[tuple[str, str, bytes]], max_bytes: int, max_records: int,
             target_of: dict[str, str]) -> Iterator[Batch]:
    by_stream: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for s, rid, row in rows:
        by_stream.setdefault((target_of.get(rid, ""), s), []).append((rid, row))
    for (target, s), items in by_stream.items():
        ids: list[str] = []
        body: list[bytes] = []
        size = 1
        for rid, row in items:
            if body and (size + len(row) + 1 > max_bytes or len(body) >= max_records):
                yield Batch(s, tuple(body), tuple(ids), target)
                ids, body, size = [], [], 1
            ids.append(rid)
            body.append(row)
            size += len(row) + 1
        if body:
            yield Batch(s, tuple(body), tuple(ids), target)


class _Rebuilder:
    """Turns one dead-letter entry back into rows (or a new entry saying why not)."""

    def __init__(self, cfg: Config, mapper: RecordMapper,
                 client_for: Callable[[SourceConfig], Any], routing: Routing,
                 tables: Mapping[str, TableDef]) -> None:
        # Rows mapped again go through the transforms as the flow's would (where, sample,
        # route, drop), but for the summaries: their objects' summaries were sent already
        # (under the ids a replay's would take), so a row an aggregate would take goes to
        # its table as a row.
        self._transformer = Transformer([replace(t, aggregate=[]) for t in cfg.transforms],
                                        tables) if cfg.transforms else None
        self._cfg = cfg
        self._mapper = mapper
        self._client_for = client_for
        self._clients: dict[str, Any] = {}
        self._routing = routing
        self.target_of: dict[str, str] = {}
        """Record id -> the target its row goes to."""

    def __call__(self, entry: dict) -> _Work:
        stage = entry.get("stage")
        if stage == "deliver":
            self.target_of[entry["record_id"]] = entry.get("target") or self._routing.target(
                "", entry["stream"])
            return _Work(rows=[(entry["stream"], entry["record_id"], entry["row"].encode())])
        try:
            src = self._cfg.source(entry["source"])
        except KeyError as ex:
            return _Work(remaining=[{**entry, "reason": f"replay: {ex.args[0]}"}])
        outside = _outside(src, entry.get("bucket"), entry.get("key"))
        if outside:  # an entry must not make replay read (or name) what no source reads
            why = f"replay refused: {outside}"
            return _Work(remaining=[{**entry, "reason": why, "time": time.time()}], refused=1,
                         why=[f"entry for s3://{entry.get('bucket')}/{entry.get('key')}: {why}"])
        ref = ObjectRef(src.name, f"{src.name}:replay", entry["bucket"], entry["key"], entry["etag"], 0,
                        entry.get("format") or src.format)
        if stage == "read":
            return self._reread(entry, ref, src)
        data = entry["data"].encode() if "data" in entry else _b64(entry["data_b64"])
        header = tuple(h.encode() for h in entry.get("header", ()))
        return self._map([RawRecord(ref, entry["offset"], data, header)])

    def _map(self, records: list[RawRecord]) -> _Work:
        work = _Work()
        mapped: list[Rows | ErrorRecord | Settled | Partial] = list(
            self._mapper.map_batch(records))
        if self._transformer is not None:  # no aggregate: no Partial comes out
            mapped = [out for item in mapped for out in (
                self._transformer.apply(item) if isinstance(item, Rows) else [item])]
        for item in mapped:
            if isinstance(item, Rows):
                source = item.partition.rpartition(":")[0]
                target = self._routing.target(source, item.stream)
                self.target_of.update(dict.fromkeys(item.record_ids, target))
                work.rows.extend(zip([item.stream] * len(item.rows), item.record_ids, item.rows,
                                     strict=True))
            elif isinstance(item, ErrorRecord):
                work.remaining.append(error_entry(item))
        return work

    def _reread(self, entry: dict, ref: ObjectRef, src: SourceConfig) -> _Work:
        offset = entry.get("offset") or 0
        fmt = src.format if src.format != "auto" else (entry.get("format") or "auto")
        try:
            s3 = self._clients.get(src.name)
            if s3 is None:
                s3 = self._clients[src.name] = self._client_for(src)
            body = open_body(s3, ref.bucket, ref.key, etag=ref.etag or None)
            fmt, recs = object_records(
                ref.key, body.chunks(), fmt, skip=offset, max_bytes=src.max_object_bytes,
                max_ratio=src.max_compression_ratio, max_record_bytes=src.max_record_bytes,
                parser_for=lambda f: text_format(f, fields=src.fields, delimiter=src.delimiter))
            ref = ObjectRef(ref.source, ref.partition, ref.bucket, ref.key, ref.etag,
                            body.size, fmt)
            raw: list[RawRecord] = []
            unreadable: list[dict] = []
            for rec in recs:
                if isinstance(rec, UnreadableRecord):  # still too large or too deep
                    unreadable.append(error_entry(ErrorRecord(
                        ref, rec.offset, "parse", rec.reason, rec.sample, (), rec.code)))
                else:
                    raw.append(RawRecord(ref, *rec))
        except Exception as ex:  # still unreadable: the entry stays, with today's reason
            reason = getattr(ex, "reason", None) or f"{type(ex).__name__}: {ex}"
            return _Work(remaining=[{**entry, "reason": f"replay: {reason}", "time": time.time()}])
        work = self._map(raw)
        work.remaining.extend(unreadable)
        return work


def _outside(src: SourceConfig, bucket: Any, key: Any) -> str | None:
    """Why ``s3://bucket/key`` is not an object that source ``src`` reads, or None."""
    if not isinstance(bucket, str) or not isinstance(key, str):
        return "the entry names no bucket and key"
    if bucket != src.bucket or not key.startswith(src.prefix):
        return (f"s3://{bucket}/{key} is outside source {src.name!r} "
                f"(s3://{src.bucket}/{src.prefix})")
    skip = skip_reason(src, key)
    if skip is not None:
        return f"source {src.name!r} does not read s3://{bucket}/{key} ({skip})"
    return None


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)
