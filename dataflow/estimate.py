"""``s3sentinel estimate``: the Sentinel bill of a config before it is deployed.

For each source, the objects that arrived in the last ``days`` days are listed (or local
files stand for ``days`` days of one source's objects); a sample of them is read, parsed
and mapped as the flow would, and the ``[[transforms]]`` applied. The sample's rows and
bytes per table, scaled by objects listed / objects sampled and divided by the days, give
events and GB a day before and after the transforms, and the monthly cost at the price per
GB of each table's plan.

Bytes are the rows' JSON as the connector sends them (before gzip), which is what the
Logs Ingestion API bills as ingested data, to within the columns Azure adds.
"""

from __future__ import annotations

import builtins
import random
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from connectors.aws import client_for
from connectors.s3.discovery import skip_reason
from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.objects import CHUNK_BYTES
from connectors.s3.records import FormatUnknown, object_records
from dataflow.config import Config, SourceConfig
from dataflow.core.messages import ObjectRef, RawRecord, Rows
from dataflow.tables import tables_for
from operators.formats.registry import text_format
from operators.parse import RecordMapper
from operators.tabledef import TableDef
from operators.transform import Transformer

__all__ = ["PRICES", "Estimate", "estimate", "print_estimate"]

PRICES = {"Analytics": 4.30, "Basic": 1.12, "Auxiliary": 0.15}
"""USD per GB ingested by plan: placeholders near list prices; set your region's and your
commitment tier's with --price (they differ by region and change)."""
DAYS_PER_MONTH = 30.4


@dataclass
class _Count:
    rows: int = 0
    bytes: int = 0

    def add(self, rows: Iterable[builtins.bytes]) -> None:
        for r in rows:
            self.rows += 1
            self.bytes += len(r)


@dataclass
class Estimate:
    """Per table: rows and bytes a day, before and after the transforms."""

    before: dict[str, _Count] = field(default_factory=lambda: defaultdict(_Count))
    after: dict[str, _Count] = field(default_factory=lambda: defaultdict(_Count))
    sources: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Source -> (objects listed, objects sampled)."""


def _listed(cfg: Config, src: SourceConfig, days: float, now: datetime) -> list[dict[str, Any]]:
    s3 = client_for(cfg.aws, src, "s3")
    since = now - timedelta(days=days)
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=src.bucket,
                                                             Prefix=src.prefix):
        for obj in page.get("Contents", []):
            if obj["LastModified"] >= since and skip_reason(src, obj["Key"]) is None:
                out.append(obj)
    return out


def _s3_body(cfg: Config, src: SourceConfig, key: str) -> tuple[str, Iterator[bytes]]:
    body = client_for(cfg.aws, src, "s3").get_object(Bucket=src.bucket, Key=key)
    return body["ETag"].strip('"'), body["Body"].iter_chunks(CHUNK_BYTES)


def _file_body(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _rows(src: SourceConfig, mapper: RecordMapper, key: str, etag: str,
          chunks: Iterable[bytes], err: IO[str]) -> list[Rows]:
    """The rows one object maps to (records that fail are left out, as the flow
    dead-letters them; they are not billed)."""
    try:
        found, records = object_records(
            key, chunks, src.format, max_bytes=src.max_object_bytes,
            max_ratio=src.max_compression_ratio,
            parser_for=lambda f: text_format(f, fields=src.fields, delimiter=src.delimiter))
        ref = ObjectRef(src.name, f"{src.name}:0/1", src.bucket, key, etag, 0, found)
        raw = [RawRecord(ref, r[0], r[1], r[2]) for r in records
               if not isinstance(r, UnreadableRecord)]
    except (FormatUnknown, ObjectReadError, FramingError, ValueError) as ex:
        print(f"estimate: {key}: {ex}", file=err)
        return []
    return [x for x in mapper.map_batch(raw) if isinstance(x, Rows)]


def estimate(cfg: Config, *, sample: int = 20, days: float = 1.0,
             files: list[Path] | None = None, source: str | None = None, seed: int = 0,
             now: datetime | None = None, err: IO[str] | None = None) -> Estimate:
    """The estimate of ``cfg`` (see the module docstring)."""
    err = err or sys.stderr
    tables = tables_for(cfg)
    mapper = RecordMapper(cfg.sources, tables, cfg.batch.max_bytes)
    transformer = Transformer(cfg.transforms, tables) if cfg.transforms else None
    by_stream = {t.stream: t.name for t in tables.values()}
    est = Estimate()
    rng = random.Random(seed)

    def count(bundles: list[Rows], scale: float) -> None:
        """The rows of one object, before and after the transforms (summaries included)."""
        for b in bundles:
            before = _Count()
            before.add(b.rows)
            _scaled(est.before[by_stream[b.stream]], before, scale)
        for out in transformer.apply_whole(bundles) if transformer else bundles:
            after = _Count()
            after.add(out.rows)
            _scaled(est.after[by_stream[out.stream]], after, scale)

    if files:
        src = cfg.source(source) if source else cfg.sources[0]
        picked = files if len(files) <= sample else rng.sample(files, sample)
        for path in picked:
            count(_rows(src, mapper, path.name, "local", _file_body(path), err),
                  len(files) / len(picked) / days)
        est.sources[src.name] = (len(files), len(picked))
        return est
    when = now or datetime.now(UTC)
    for src in cfg.sources:
        listed = _listed(cfg, src, days, when)
        chosen = listed if len(listed) <= sample else rng.sample(listed, sample)
        est.sources[src.name] = (len(listed), len(chosen))
        for obj in chosen:
            etag, chunks = _s3_body(cfg, src, obj["Key"])
            count(_rows(src, mapper, obj["Key"], etag, chunks, err),
                  len(listed) / len(chosen) / days)
    return est


def _scaled(into: _Count, got: _Count, scale: float) -> None:
    into.rows += round(got.rows * scale)
    into.bytes += round(got.bytes * scale)


def print_estimate(est: Estimate, tables: Mapping[str, TableDef], prices: Mapping[str, float],
                   out: IO[str] | None = None) -> None:
    """The estimate as a table, with the monthly cost at ``prices`` (USD per GB by plan)."""
    out = out or sys.stdout
    for name, (listed, picked) in est.sources.items():
        print(f"source {name}: {listed} objects in the period, {picked} read", file=out)
    head = (f"{'table':<28} {'plan':<9} {'events/day':>12} {'-> after':>12} {'GB/day':>9} "
            f"{'-> after':>9} {'$/month':>10} {'-> after':>10}")
    print(head, file=out)
    total_b = total_a = 0.0
    for name in sorted(set(est.before) | set(est.after)):
        b, a = est.before.get(name, _Count()), est.after.get(name, _Count())
        plan = tables[name].plan if name in tables else "Analytics"
        price = prices.get(plan, prices["Analytics"])
        cost_b = b.bytes / 1e9 * DAYS_PER_MONTH * price
        cost_a = a.bytes / 1e9 * DAYS_PER_MONTH * price
        total_b += cost_b
        total_a += cost_a
        print(f"{name:<28} {plan:<9} {b.rows:>12,} {a.rows:>12,} {b.bytes / 1e9:>9.3f} "
              f"{a.bytes / 1e9:>9.3f} {cost_b:>10,.2f} {cost_a:>10,.2f}", file=out)
    saved = f" ({1 - total_a / total_b:.0%} less)" if total_b else ""
    print(f"{'total':<28} {'':<9} {'':>12} {'':>12} {'':>9} {'':>9} {total_b:>10,.2f} "
          f"{total_a:>10,.2f}{saved}", file=out)
    print("prices (USD per GB): " + ", ".join(f"{k} {v}" for k, v in prices.items()) +
          " (set yours with --price PLAN=USD)", file=out)
