"""``s3sentinel preview``: the rows a file or S3 object would become, before deploying.

Reads the object exactly as the connector does (compression from the magic bytes,
format from ``--format`` or detected, the same framing, parsers and table mapping),
prints each row as it would be sent (NDJSON on stdout) and each error with its
position and reason on stderr. With ``--enrich RULES.toml`` (or ``--enrich default``),
each row is followed by the enrichment it gets: priority, reasons and rule ids, so a
rule can be checked before it is deployed.

What the flow passes over, preview passes over with a message: a CloudTrail digest file
(under ``CloudTrail-Digest/``; it holds hashes, not events) and empty GuardDuty envelopes
(``{"findings":[]}``), which are counted as skipped, not as errors.

With a config that declares ``[[transforms]]`` (``-c CONFIG``), the rows go through them
as the flow's would (the source's, with ``--source NAME``; an ``s3://`` object is the
source's whose bucket and prefix hold it), and preview shows, per table, the rows and
bytes before and after: in, kept, dropped, sampled out, routed (and to which table),
and the first ``--rows`` rows after, routed rows under the table they go to.
``--json`` prints the same as one JSON document; ``--no-transforms`` shows the rows as
mapped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from connectors.aws import client_for, s3_client
from connectors.s3.discovery import skip_reason
from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.objects import CHUNK_BYTES
from connectors.s3.reader import is_empty_envelope
from connectors.s3.records import FormatUnknown, object_records
from dataflow.config import AwsConfig, Config, SourceConfig
from dataflow.core import metrics
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Rows
from dataflow.tables import tables_for
from operators.enrich.rules import RuleError, RuleSet
from operators.formats.registry import text_format
from operators.parse import RecordMapper
from operators.schema import load_tables
from operators.tabledef import TableDef
from operators.transform import Transformer

__all__ = ["preview"]


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _source_of(uri: str, cfg: Config | None) -> SourceConfig | None:
    """The configured source whose bucket and (longest) prefix hold an ``s3://`` object."""
    if cfg is None or not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://"):].partition("/")
    return max((s for s in cfg.sources if s.bucket == bucket and key.startswith(s.prefix)),
               key=lambda s: len(s.prefix), default=None)


def _s3_chunks(uri: str, cfg: Config | None) -> tuple[str, str, Iterator[bytes]]:
    """Open an object with the client the flow would read it with: that of the configured
    source whose bucket and (longest) prefix hold it (its role, e.g. in another account),
    else the default credential chain."""

    bucket, _, key = uri[len("s3://"):].partition("/")
    src = _source_of(uri, cfg)
    if src is not None and cfg is not None:  # the source's own client (its role)
        s3 = client_for(cfg.aws, src, "s3")
    else:
        s3 = s3_client(cfg.aws if cfg else AwsConfig())
    body = s3.get_object(Bucket=bucket, Key=key)
    return bucket, body["ETag"].strip('"'), body["Body"].iter_chunks(CHUNK_BYTES)


def preview(target: str, *, fmt: str = "auto", table: str | None = None,
            cfg: Config | None = None, fields: list[str] | None = None, delimiter: str = "",
            enrich: str | None = None, source: str | None = None, transforms: bool = True,
            as_json: bool = False, show: int = 5,
            out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Print the rows of one file or ``s3://`` object; 0 when every record mapped, else 1.

    :arg source: The configured source the object stands for (its transforms apply; its
        format, table and fields are the defaults); an ``s3://`` object's own by default.
    :arg transforms: Apply the config's ``[[transforms]]`` and show before and after.
    :arg as_json: Print the per-table report as one JSON document instead of the rows.
    :arg show: Rows shown per table in the report.
    """
    out = out or sys.stdout  # at call time (a redirected sys.stdout, pytest's capsys)
    err = err or sys.stderr
    if source is not None:
        conf = next((s for s in cfg.sources if s.name == source), None) if cfg else None
        if conf is None:
            print(f"preview: --source {source}: " + ("no such source in the config" if cfg
                  else "needs the config (-c CONFIG)"), file=err)
            return 2
    else:
        conf = _source_of(target, cfg)
    name = conf.name if conf is not None else "preview"
    if conf is not None:  # read as that source reads (options given here win)
        fmt = conf.format if fmt == "auto" else fmt
        table = table or conf.table
        fields = fields or list(conf.fields)
        delimiter = delimiter or conf.delimiter
    digest = _digest(target, fmt)
    if digest is not None:
        print(f"preview: {target}: skipped: {digest} (hashes of log files, not events; a "
              "cloudtrail source passes over it too)", file=err)
        return 0
    if target.startswith("s3://"):
        bucket, etag, chunks = _s3_chunks(target, cfg)
        key = target[len("s3://"):].partition("/")[2]
    else:
        path = Path(target)
        if not path.is_file():
            print(f"preview: {target}: no such file", file=err)
            return 2
        bucket, key, etag, chunks = "local", str(path), "local", _file_chunks(path)
    tables = tables_for(cfg) if cfg else load_tables()
    src = SourceConfig(name=name, bucket=bucket, format=fmt, table=table,
                       fields=list(fields or []), delimiter=delimiter)
    try:
        mapper = RecordMapper([src], tables, 1_000_000)
        found, records = object_records(
            key, chunks, fmt, max_bytes=src.max_object_bytes,
            max_ratio=src.max_compression_ratio,
            parser_for=lambda f: text_format(f, fields=src.fields, delimiter=src.delimiter))
    except (KeyError, FormatUnknown, ObjectReadError, ValueError) as ex:
        print(f"preview: {target}: {str(ex).strip(chr(39))}", file=err)
        return 2
    ref = ObjectRef(name, f"{name}:0/1", bucket, key, etag, 0, found)
    transformer = (Transformer(cfg.transforms, tables)
                   if cfg is not None and cfg.transforms and transforms else None)
    report = transformer is not None or as_json
    mapped: dict[str, tuple[list[bytes], list[str]]] = {}
    enriched: dict[str, dict[str, Any]] = {}
    rules = None
    if enrich is not None:

        try:
            rules = RuleSet.load(None if enrich == "default" else [enrich])
        except RuleError as ex:
            print(f"preview: {ex}", file=err)
            return 2
        by_stream = {t.stream: t.name for t in tables.values()}
    ok = bad = empty = 0
    try:
        for rec in records:
            if isinstance(rec, UnreadableRecord):  # too large or too deep to hand on
                bad += 1
                print(f"{target}: record {rec.offset}: parse: {rec.reason}", file=err)
                continue
            offset, data, header = rec
            if is_empty_envelope(found, data):  # as the reader: skipped, not an error
                empty += 1
                continue
            res: Any = mapper(RawRecord(ref, offset, data, header))
            if isinstance(res, ErrorRecord):
                bad += 1
                print(f"{target}: record {offset}: {res.stage}: {res.reason}", file=err)
            else:
                ok += 1
                enrichment = None
                if rules is not None:
                    c = rules.classify(by_stream.get(res.stream, ""), orjson.loads(res.data))
                    enrichment = {"record_id": res.record_id, "priority": c.priority,
                                  "reasons": list(c.reasons), "rule_ids": list(c.rule_ids)}
                if report:  # shown after the transforms, per table
                    rows, ids = mapped.setdefault(res.stream, ([], []))
                    rows.append(res.data)
                    ids.append(res.record_id)
                    if enrichment is not None:
                        enriched[res.record_id] = enrichment
                    continue
                out.write(res.data.decode("utf-8") + "\n")
                if enrichment is not None:
                    out.write(orjson.dumps({"_enrichment": enrichment}).decode() + "\n")
    except (ObjectReadError, FramingError) as ex:
        bad += 1
        print(f"{target}: {ex}", file=err)
    try:
        stream = f"stream {mapper.stream_of(name, found)}"
    except KeyError:  # no table for the format: each record said so above
        stream = "no table (name one with --table)"
    if report:
        tables_out = _transformed(mapped, name, transformer, tables, show)
        if as_json:
            out.write(orjson.dumps(_json_report(target, found, bad, empty, tables_out,
                                                enriched if rules is not None else None),
                                   option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            unnamed = conf is None and any(t.sources for t in cfg.transforms) if cfg else False
            _print_report(tables_out, enriched, out,
                          "; name the source with --source" if unnamed else "")
    skipped = f", {empty} empty envelopes skipped" if empty else ""
    print(f"preview: {ok} rows for {stream}, {bad} errors{skipped} (format {found})", file=err)
    return 0 if bad == 0 else 1


def _outcomes(table: str) -> dict[str, float]:
    """The transform metric's counts of ``table`` by outcome, now."""
    return {s.labels["outcome"]: s.value for m in metrics.TRANSFORM_ROWS.collect()
            for s in m.samples if s.name.endswith("_total") and s.labels["table"] == table}


def _transformed(mapped: Mapping[str, tuple[list[bytes], list[str]]], source: str,
                 transformer: Transformer | None, tables: Mapping[str, TableDef],
                 show: int) -> dict[str, dict[str, Any]]:
    """Per table: rows and bytes before and after the transforms, their outcomes, where
    rows went to or came from, and the first ``show`` rows after (with their record ids).

    ``in`` and ``kept`` are counted here (several ``[[transforms]]`` of one table each count
    their own in the metric); the other outcomes (dropped, sampled_out, routed, and any the
    transforms gain) are the metric's, whatever they are."""
    names = {t.stream: t.name for t in tables.values()}
    out: dict[str, dict[str, Any]] = {}

    def entry(stream: str) -> dict[str, Any]:
        return out.setdefault(names.get(stream, stream), {
            "stream": stream, "transformed": False, "rows_in": 0, "bytes_in": 0,
            "outcomes": {}, "to": {}, "from": {}, "rows_out": 0, "bytes_out": 0,
            "rows": [], "record_ids": []})

    for stream, (rows, ids) in mapped.items():
        table = names.get(stream, stream)
        e = entry(stream)
        e["rows_in"] += len(rows)
        e["bytes_in"] += sum(map(len, rows))
        bundle = Rows(stream, f"{source}:0", tuple(rows), tuple(ids))
        if transformer is None:
            results = [bundle]
        else:
            before = _outcomes(table)
            # The object is whole here: its summaries (aggregate) are merged and come out
            # too; the ids of rows taken away (Settled) are the flow's bookkeeping, not rows.
            whole = getattr(transformer, "apply_whole", None)
            results = [b for b in (whole([bundle]) if whole else transformer.apply(bundle))
                       if isinstance(b, Rows)]
            after = _outcomes(table)
            delta = {k: int(v - before.get(k, 0.0)) for k, v in after.items()}
            e["transformed"] = e["transformed"] or delta.get("in", 0) > 0
            for k, v in delta.items():  # an outcome this run counted (0 included)
                if k not in ("in", "kept") and (v or k not in before):
                    e["outcomes"][k] = e["outcomes"].get(k, 0) + v
        kept = sum(len(b.rows) for b in results if b.stream == stream)
        e["outcomes"] = {"in": e["outcomes"].get("in", 0) + len(rows),
                         "kept": e["outcomes"].get("kept", 0) + kept} | {
            k: v for k, v in e["outcomes"].items() if k not in ("in", "kept")}
        for b in results:
            t = entry(b.stream)
            t["rows_out"] += len(b.rows)
            t["bytes_out"] += sum(map(len, b.rows))
            room = max(0, show - len(t["rows"]))
            t["rows"] += [orjson.loads(r) for r in b.rows[:room]]
            t["record_ids"] += list(b.record_ids[:room])
            if b.stream != stream:
                there = names.get(b.stream, b.stream)
                e["to"][there] = e["to"].get(there, 0) + len(b.rows)
                t["from"][table] = t["from"].get(table, 0) + len(b.rows)
    return out


def _saved(before: int, after: int) -> float | None:
    return round(1 - after / before, 4) if before else None


def _json_report(target: str, found: str, errors: int, empty: int,
                 tables: Mapping[str, dict[str, Any]],
                 enriched: Mapping[str, dict[str, Any]] | None) -> dict[str, Any]:
    doc_tables = {}
    for name, e in tables.items():
        t = {k: v for k, v in e.items() if k != "record_ids"}
        t["saved"] = _saved(e["bytes_in"], e["bytes_out"]) if e["rows_in"] else None
        if enriched is not None:
            t["enrichment"] = [enriched.get(i) for i in e["record_ids"]]
        doc_tables[name] = t
    bytes_in = sum(e["bytes_in"] for e in tables.values())
    bytes_out = sum(e["bytes_out"] for e in tables.values())
    return {"target": target, "format": found, "errors": errors, "empty_envelopes": empty,
            "rows_in": sum(e["rows_in"] for e in tables.values()),
            "rows_out": sum(e["rows_out"] for e in tables.values()),
            "bytes_in": bytes_in, "bytes_out": bytes_out, "saved": _saved(bytes_in, bytes_out),
            "tables": doc_tables}


def _print_report(tables: Mapping[str, dict[str, Any]], enriched: Mapping[str, dict[str, Any]],
                  out: IO[str], hint: str = "") -> None:
    """Per table, one ``#`` line of counts and bytes, then its first rows after (NDJSON)."""
    for name, e in tables.items():
        parts = []
        if e["rows_in"]:
            o = e["outcomes"]
            counts = [f"{o.get('in', 0)} rows in", f"{o.get('kept', 0)} kept"] + [
                f"{v} {k.replace('_', ' ')}" for k, v in o.items() if k not in ("in", "kept")]
            parts.append(", ".join(counts) + (
                "" if e["transformed"] else f" (no transforms apply{hint})"))
        parts += [f"{n} rows to {t}" for t, n in e["to"].items()]
        parts += [f"{n} rows from {t}" for t, n in e["from"].items()]
        size = f"{e['bytes_in']:,} bytes before, {e['bytes_out']:,} after"
        if (saved := _saved(e["bytes_in"], e["bytes_out"])) is not None:
            size += f" ({saved:.0%} saved)"
        parts.append(size)
        out.write(f"# {name} ({e['stream']}): " + "; ".join(parts) + "\n")
        for row, rid in zip(e["rows"], e["record_ids"], strict=True):
            out.write(orjson.dumps(row).decode() + "\n")
            if rid in enriched:
                out.write(orjson.dumps({"_enrichment": enriched[rid]}).decode() + "\n")
        if e["rows_out"] > len(e["rows"]):
            out.write(f"# ... {e['rows_out'] - len(e['rows'])} more rows of {name}\n")
    bytes_in = sum(e["bytes_in"] for e in tables.values())
    bytes_out = sum(e["bytes_out"] for e in tables.values())
    total = f"# all tables: {bytes_in:,} bytes before, {bytes_out:,} after"
    if (saved := _saved(bytes_in, bytes_out)) is not None:
        total += f" ({saved:.0%} saved)"
    out.write(total + "\n")


def _digest(target: str, fmt: str) -> str | None:
    """Why ``target`` is a CloudTrail digest file the flow would pass over, or None.

    The flow's listing skips digests of ``cloudtrail`` sources; a digest previewed with no
    ``--format`` is judged as CloudTrail's (its key says it is one)."""
    key = target[len("s3://"):].partition("/")[2] if target.startswith("s3://") else target
    if fmt not in ("auto", "cloudtrail") or key.endswith("/"):
        return None
    # A cloudtrail source with no exclude patterns: the digest rule is the only one left.
    probe = SourceConfig(name="preview", bucket="preview", format="cloudtrail")
    return skip_reason(probe, "/" + key.lstrip("/"))
