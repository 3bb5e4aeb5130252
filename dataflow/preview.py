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
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from connectors.aws import client_for, s3_client
from connectors.s3.discovery import skip_reason
from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.objects import CHUNK_BYTES
from connectors.s3.reader import is_empty_envelope
from connectors.s3.records import FormatUnknown, object_records
from dataflow.config import AwsConfig, Config, SourceConfig
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord
from dataflow.tables import tables_for
from operators.enrich.rules import RuleError, RuleSet
from operators.formats.registry import text_format
from operators.parse import RecordMapper
from operators.schema import load_tables

__all__ = ["preview"]


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def _s3_chunks(uri: str, cfg: Config | None) -> tuple[str, str, Iterator[bytes]]:
    """Open an object with the client the flow would read it with: that of the configured
    source whose bucket and (longest) prefix hold it (its role, e.g. in another account),
    else the default credential chain."""

    bucket, _, key = uri[len("s3://"):].partition("/")
    src = max((s for s in cfg.sources if s.bucket == bucket and key.startswith(s.prefix)),
              key=lambda s: len(s.prefix), default=None) if cfg else None
    if src is not None and cfg is not None:  # the source's own client (its role)
        s3 = client_for(cfg.aws, src, "s3")
    else:
        s3 = s3_client(cfg.aws if cfg else AwsConfig())
    body = s3.get_object(Bucket=bucket, Key=key)
    return bucket, body["ETag"].strip('"'), body["Body"].iter_chunks(CHUNK_BYTES)


def preview(target: str, *, fmt: str = "auto", table: str | None = None,
            cfg: Config | None = None, fields: list[str] | None = None, delimiter: str = "",
            enrich: str | None = None,
            out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """Print the rows of one file or ``s3://`` object; 0 when every record mapped, else 1."""
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
    src = SourceConfig(name="preview", bucket=bucket, format=fmt, table=table,
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
    ref = ObjectRef("preview", "preview:0/1", bucket, key, etag, 0, found)
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
                out.write(res.data.decode("utf-8") + "\n")
                if rules is not None:
                    import orjson

                    c = rules.classify(by_stream.get(res.stream, ""), orjson.loads(res.data))
                    out.write(orjson.dumps({"_enrichment": {
                        "record_id": res.record_id, "priority": c.priority,
                        "reasons": list(c.reasons), "rule_ids": list(c.rule_ids)}}).decode()
                              + "\n")
    except (ObjectReadError, FramingError) as ex:
        bad += 1
        print(f"{target}: {ex}", file=err)
    try:
        stream = f"stream {mapper.stream_of('preview', found)}"
    except KeyError:  # no table for the format: each record said so above
        stream = "no table (name one with --table)"
    skipped = f", {empty} empty envelopes skipped" if empty else ""
    print(f"preview: {ok} rows for {stream}, {bad} errors{skipped} (format {found})", file=err)
    return 0 if bad == 0 else 1


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
