"""Parquet objects (issue 15, item 4): VPC flow logs delivered as Parquet map exactly as the
same flows in text do; a generic ``parquet`` format maps rows onto a declared table; rows
are read in bounded slices with their row index as the offset (resume, dead letters); a
corrupt or truncated object fails that object only, a bad value that row only."""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import random
import tempfile
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import polars as pl
import pytest

import connectors.s3.parquet as parquet_mod
from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.objects import decompress
from connectors.s3.records import object_records
from connectors.s3.source import S3Source
from dataflow.config import SourceConfig, TableColumnConfig, TableConfig
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Rows
from operators.formats import JSON_FORMATS
from operators.formats.registry import DEFAULT_TABLES, detect, framing_of, text_format
from operators.formats.vpcflow import FIELDS, INT_FIELDS, VpcFlowFormat
from operators.parse import RecordMapper
from operators.schema import load_tables

V5 = FIELDS[:FIELDS.index("ecs-cluster-arn")]  # every field of versions 2 to 5
INT64 = {"packets", "bytes", "start", "end"}  # INT_64 in "Available fields"; the other ints INT_32
ACCT = "111122223333"
HIVE_KEY = (f"AWSLogs/aws-account-id={ACCT}/aws-service=vpcflowlogs/aws-region=us-east-1/"
            f"year=2026/month=01/day=02/hour=03/{ACCT}_vpcflowlogs_us-east-1_fl-0a1b2c3d4e5f6a7b8"
            "_20260102T0305Z_4a5b6c7d.log.parquet")
TEXT_KEY = (f"AWSLogs/{ACCT}/vpcflowlogs/us-east-1/2026/01/02/{ACCT}_vpcflowlogs_us-east-1_"
            "fl-0a1b2c3d4e5f6a7b8_20260102T0305Z_4a5b6c7d.log.gz")
TABLES = load_tables(None, [TableConfig(name="Events_CL", columns=[
    TableColumnConfig(name="TimeGenerated", type="datetime", source="ts", required=True),
    TableColumnConfig(name="User", type="string", source="user.name"),
    TableColumnConfig(name="Port", type="int", source="port"),
    TableColumnConfig(name="Score", type="real", source="score"),
    TableColumnConfig(name="Tags", type="dynamic", source="tags"),
])])


# --------------------------------------------------------------------------- helpers


def flows(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """VPC flows as the AWS fields of versions 2 to 5 (None: the field has no value, '-' in
    text), NODATA records among them."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        f: dict[str, Any] = dict.fromkeys(V5)
        f.update({"version": 5, "account-id": ACCT, "interface-id": f"eni-{rng.getrandbits(60):015x}",
                  "start": 1767323100 + i, "end": 1767323160 + i, "vpc-id": "vpc-0a1b2c3d",
                  "subnet-id": "subnet-0a1b2c3d", "region": "us-east-1", "az-id": "use1-az2"})
        if rng.random() < 0.05:
            f["log-status"] = "NODATA"
        else:
            f.update({"srcaddr": f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
                      "dstaddr": f"172.31.{rng.randrange(256)}.{rng.randrange(256)}",
                      "srcport": rng.randrange(1024, 65536), "dstport": rng.choice([22, 443, 53]),
                      "protocol": rng.choice([6, 17]), "packets": rng.randrange(1, 10**6),
                      "bytes": rng.randrange(40, 2**40), "action": rng.choice(["ACCEPT", "REJECT"]),
                      "log-status": "OK", "tcp-flags": rng.choice([0, 2, 18, 19]),
                      "type": "IPv4", "flow-direction": rng.choice(["ingress", "egress"]),
                      "instance-id": rng.choice([None, "i-0a1b2c3d4e5f60718"]),
                      "pkt-src-aws-service": rng.choice([None, None, "S3", "AMAZON"]),
                      "traffic-path": rng.choice([None, 1, 8])})
            f["pkt-srcaddr"], f["pkt-dstaddr"] = f["srcaddr"], f["dstaddr"]
        out.append(f)
    return out


def text_object(rows: list[dict[str, Any]]) -> bytes:
    lines = [" ".join(V5)] + [" ".join("-" if r[k] is None else str(r[k]) for k in V5)
                              for r in rows]
    return gzip.compress(("\n".join(lines) + "\n").encode())


def parquet_object(rows: list[dict[str, Any]], *, row_group_size: int = 1000,
                   **overrides: pl.Series) -> bytes:
    """The flows as AWS writes them in Parquet: columns named with ``_``, INT_32 / INT_64 /
    STRING as "Available fields" types them, null for no value."""
    cols = {}
    for k in V5:
        dtype = (pl.Int64 if k in INT64 else pl.Int32) if k in INT_FIELDS else pl.String
        cols[k.replace("-", "_")] = pl.Series([r[k] for r in rows], dtype=dtype)
    cols.update(overrides)
    buf = io.BytesIO()
    pl.DataFrame(cols).write_parquet(buf, row_group_size=row_group_size, compression="gzip")
    return buf.getvalue()


def frame(data: bytes, fmt: str = "auto", key: str = HIVE_KEY, *, skip: int = 0,
          chunk: int = 64 * 1024, max_record_bytes: int = 1 << 20) -> list[Any]:
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    _, items = object_records(key, chunks, fmt, max_bytes=1 << 30, skip=skip,
                              max_record_bytes=max_record_bytes, parser_for=text_format)
    return list(items)


def mapped(fmt: str, key: str, data: bytes, table: str | None = None,
           tables: Any = None) -> tuple[list[dict], list[ErrorRecord], list[int]]:
    """(rows without their record id, error records, offsets) of one object read as the
    source reads it and mapped as the flow maps it."""
    src = SourceConfig(name="s", bucket="b", format=fmt, table=table)  # type: ignore[arg-type]
    tables = tables or load_tables()
    mapper = RecordMapper([src], tables, 1_000_000)
    found, items = object_records(key, [data], fmt, max_bytes=1 << 30, parser_for=text_format)
    ref = ObjectRef("s", "s:0/1", "b", key, "etag", len(data), found)
    raw = [RawRecord(ref, o, d, h) for o, d, h in items]  # type: ignore[misc]
    rows: list[dict] = []
    errors: list[ErrorRecord] = []
    for out in mapper.map_batch(raw):
        if isinstance(out, Rows):
            rows += [orjson.loads(r) for r in out.rows]
        else:
            errors.append(out)
    name = table or DEFAULT_TABLES[found]
    rid = tables[name].record_id_column
    return [{k: v for k, v in r.items() if k != rid} for r in rows], errors, [r.offset for r in raw]


# --------------------------------------------------------------------------- formats


def test_the_formats_are_declared_and_detected() -> None:
    assert DEFAULT_TABLES["vpcflow_parquet"] == "AWSVPCFlow" and "parquet" not in DEFAULT_TABLES
    assert framing_of("vpcflow_parquet") == framing_of("parquet") == "parquet"
    assert isinstance(text_format("vpcflow_parquet"), VpcFlowFormat)  # read as text
    assert "parquet" in JSON_FORMATS and text_format("parquet") is None  # rows map as JSON
    assert detect(HIVE_KEY) == "vpcflow_parquet"  # Hive-compatible prefixes
    assert detect(HIVE_KEY.replace("aws-account-id=", "").replace("aws-service=", "")) \
        == "vpcflow_parquet"
    assert detect(TEXT_KEY.replace(".log.gz", ".log.parquet")) == "vpcflow_parquet"
    assert detect(TEXT_KEY) == "vpcflow"  # the text ones are unchanged
    assert detect("exports/2026/01/02/part-0001.snappy.parquet") == "parquet"
    assert detect("exports/part-0001", b"PAR1\x15\x04") == "parquet"  # by its magic number


def test_decompress_leaves_parquet_alone_and_unwraps_gzipped_parquet() -> None:
    data = parquet_object(flows(50))
    assert data[:4] == b"PAR1"
    assert b"".join(decompress([data[:3], data[3:]], max_bytes=1 << 30)) == data
    assert frame(gzip.compress(data), key="x/flows.parquet.gz") == frame(data, key="x/flows.parquet")


# --------------------------------------------------------------------------- VPC flow logs


def test_vpc_flow_parquet_rows_equal_the_text_rows_of_the_same_flows() -> None:
    sample = flows(2500)
    text_rows, text_errors, _ = mapped("auto", TEXT_KEY, text_object(sample))
    pq_rows, pq_errors, offsets = mapped("auto", HIVE_KEY, parquet_object(sample,
                                                                         row_group_size=700))
    assert text_errors == [] and pq_errors == []
    assert len(pq_rows) == len(sample) and offsets == list(range(len(sample)))
    assert pq_rows == text_rows  # same columns, same values, same types
    nodata = [r for r in pq_rows if r["LogStatus"] == "NODATA"]
    assert nodata and all("SrcPort" not in r and "Bytes" not in r for r in nodata)
    assert any(r.get("PktSrcAwsService") == "S3" for r in pq_rows)
    assert all(type(r["Bytes"]) is int for r in pq_rows if "Bytes" in r)


def test_a_row_is_the_flows_text_line_under_a_header_of_its_columns() -> None:
    """VPC flow Parquet rows are handed on as the text records of the same flows (so the
    text format's code, columnar path included, reads both)."""
    sample = flows(3)
    sample[1]["srcport"] = None
    offset, line, header = frame(parquet_object(sample), key=HIVE_KEY)[1]
    assert offset == 1 and len(header) == 1
    names = header[0].decode().split()
    assert {"account-id", "interface-id", "log-status", "srcport"} <= set(names)
    values = dict(zip(names, line.decode().split(" "), strict=True))
    assert values["srcport"] == "-"  # no value, as the text format writes it
    parsed = VpcFlowFormat().parse(line, header)
    assert parsed["account-id"] == ACCT and "srcport" not in parsed
    assert type(parsed["dstport"]) is int and parsed["log-status"] == "OK"


def test_a_value_that_does_not_fit_its_column_fails_that_row_only() -> None:
    sample = flows(30)
    ports = [str(f["srcport"]) if f["srcport"] is not None else None for f in sample]
    ports[7] = "http"  # a string column (not as AWS writes it): digits are numbers, not this
    rows, errors, _ = mapped("vpcflow_parquet", HIVE_KEY, parquet_object(
        sample, srcport=pl.Series(ports, dtype=pl.String)))
    assert len(rows) == 29
    assert [(e.offset, e.stage, e.code) for e in errors] == [(7, "parse", "not_a_number")]
    assert b" http " in errors[0].data and errors[0].header  # the row, readable, kept
    assert "srcport" in errors[0].reason


# --------------------------------------------------------------------------- generic parquet


def events_object(n: int, *, row_group_size: int = 64, **overrides: pl.Series) -> bytes:
    cols: dict[str, Any] = {
        "ts": pl.Series([1767323100 + i for i in range(n)], dtype=pl.Int64),
        "user": [{"name": f"u{i}", "id": i} if i % 5 else None for i in range(n)],
        "port": pl.Series([i % 100 if i % 3 else None for i in range(n)], dtype=pl.Int32),
        "score": [i / 4 for i in range(n)],
        "tags": [[f"t{i}"] for i in range(n)],
    }
    cols.update(overrides)
    buf = io.BytesIO()
    pl.DataFrame(cols).write_parquet(buf, row_group_size=row_group_size)
    return buf.getvalue()


def test_generic_parquet_rows_map_like_json_records_onto_a_declared_table() -> None:
    data = events_object(300)
    rows, errors, offsets = mapped("parquet", "exports/e.parquet", data, "Events_CL", TABLES)
    assert errors == [] and offsets == list(range(300))
    ndjson = b"\n".join(orjson.dumps(r) for r in pl.read_parquet(data).to_dicts())
    as_json, _, _ = mapped("ndjson", "exports/e.ndjson", ndjson, "Events_CL", TABLES)
    assert rows == as_json  # the same rows as the same records in JSON
    assert rows[7] == {"TimeGenerated": "2026-01-02T03:05:07Z", "User": "u7", "Port": 7,
                       "Score": 1.75, "Tags": ["t7"]}
    assert "User" not in rows[5] and "Port" not in rows[3]  # null: no value


def test_timestamps_decimals_and_text_bytes_are_read_as_json_values() -> None:
    import datetime as dt

    data = events_object(3, ts=pl.Series([dt.datetime(2026, 1, 2, 3, 4, 5)] * 3),
                         score=pl.Series(["1.25", "2", None]).cast(pl.Decimal(10, 2)),
                         user=pl.Series([b"a", b"b", None]))
    got = [orjson.loads(r[1]) for r in frame(data, key="x.parquet")]
    assert got[0]["ts"] == "2026-01-02T03:04:05+00:00"  # no time zone: UTC
    assert got[0]["score"] == "1.25" and got[1]["user"] == "b" and "user" not in got[2]


def test_a_value_that_cannot_be_read_is_an_unreadable_record_for_that_row_only() -> None:
    data = events_object(5, user=pl.Series([b"a", b"\xff\xfe", None, b"d", b"e"]))
    items = frame(data, key="x.parquet")
    assert [type(i).__name__ for i in items] == ["tuple", "UnreadableRecord", "tuple",
                                                 "tuple", "tuple"]
    bad = items[1]
    assert (bad.offset, bad.code) == (1, "unreadable_value") and "UTF-8" in bad.reason
    assert [i[0] for i in items if isinstance(i, tuple)] == [0, 2, 3, 4]


def test_a_row_larger_than_max_record_bytes_is_unreadable_in_its_place() -> None:
    data = events_object(4, user=pl.Series(["x", "y" * 5000, "z", None]))
    items = frame(data, key="x.parquet", max_record_bytes=2048)
    assert isinstance(items[1], UnreadableRecord) and items[1].code == "record_too_large"
    assert items[1].size > 5000 and [i[0] for i in items if isinstance(i, tuple)] == [0, 2, 3]


# --------------------------------------------------------------------------- offsets, memory


@pytest.mark.parametrize("skip", [0, 1, 699, 700, 701, 2047, 2999, 3000, 4000])
def test_resume_from_a_row_yields_exactly_the_remaining_rows(skip: int) -> None:
    data = parquet_object(flows(3000), row_group_size=700)
    everything = frame(data)
    rest = frame(data, skip=skip)
    assert [r[0] for r in rest] == list(range(skip, 3000))
    assert rest == everything[skip:]


def test_rows_are_read_one_bounded_slice_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """However large the object and its row groups (here one row group of 40k rows), at most
    SLICE_ROWS rows are materialised at once, and a slice only when its rows are wanted."""
    heights: list[int] = []
    collect = parquet_mod._collect

    def counting(lf: pl.LazyFrame, offset: int, rows: int) -> pl.DataFrame:
        df = collect(lf, offset, rows)
        heights.append(df.height)
        return df

    monkeypatch.setattr(parquet_mod, "_collect", counting)
    n = 40_000
    data = events_object(n, row_group_size=n)
    _, items = object_records("x.parquet", [data], "parquet", max_bytes=1 << 30,
                              parser_for=text_format)
    first = [next(items) for _ in range(10)]
    assert [r[0] for r in first] == list(range(10))  # type: ignore[index]
    assert heights == [parquet_mod.FIRST_SLICE_ROWS]  # only the first slice was read
    rest = list(items)
    assert len(first) + len(rest) == n and sum(heights) == n
    assert max(heights) <= parquet_mod.SLICE_ROWS and len(heights) > 1


def test_wide_rows_make_smaller_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    heights: list[int] = []
    collect = parquet_mod._collect
    monkeypatch.setattr(parquet_mod, "_collect",
                        lambda lf, o, r: heights.append((df := collect(lf, o, r)).height) or df)
    monkeypatch.setattr(parquet_mod, "SLICE_BYTES", 1 << 20)
    n = 3000
    data = events_object(n, row_group_size=n,
                         user=pl.Series([f"{i:06d}" + "w" * 10_000 for i in range(n)]))
    assert len(frame(data, key="x.parquet")) == n
    assert max(heights[1:]) <= (1 << 20) // 10_000  # about SLICE_BYTES of rows at once


def test_the_spool_file_is_removed_when_reading_ends_or_stops(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = events_object(100)
    assert len(frame(data, key="x.parquet")) == 100
    _, items = object_records("x.parquet", [data], "parquet", max_bytes=1 << 30,
                              parser_for=text_format)
    next(items)
    assert len(os.listdir(tmp_path)) == 1  # spooled while being read
    del items
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- bad objects


def test_max_object_bytes_is_respected_while_spooling() -> None:
    data = parquet_object(flows(500))
    with pytest.raises(ObjectReadError, match="exceeds the limit"):
        list(object_records(HIVE_KEY, [data], "auto", max_bytes=len(data) - 1,
                            parser_for=text_format)[1])


def _footer(data: bytes) -> int:
    return int.from_bytes(data[-8:-4], "little")


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda d: d[:-200], "truncated Parquet file"),
    (lambda d: d[:len(d) // 2], "truncated Parquet file"),
    (lambda d: b"2 123456789010 eni-0 - - - - - - - 1 2 - NODATA\n", "not a Parquet file"),
    (lambda d: d[:-8] + (10**9).to_bytes(4, "little") + b"PAR1", "footer length"),
    (lambda d: d[:-8 - _footer(d)] + b"\x00" * _footer(d) + d[-8:], "footer cannot be read"),
])
def test_a_corrupt_or_truncated_object_is_a_framing_error(damage: Any, reason: str) -> None:
    with pytest.raises(FramingError, match=reason) as ex:
        frame(damage(parquet_object(flows(200))))
    assert ex.value.offset == 0


def test_corrupt_data_pages_fail_the_object_from_the_first_row_not_read() -> None:
    n = 3000
    data = parquet_object(flows(n), row_group_size=500)
    mid = len(data) // 2  # inside the column chunks of a row group in the middle
    damaged = data[:mid] + b"\x00" * 3000 + data[mid + 3000:]
    _, items = object_records(HIVE_KEY, [damaged], "auto", max_bytes=1 << 30,
                              parser_for=text_format)
    got: list[Any] = []
    with pytest.raises(FramingError, match="corrupt Parquet file: rows") as ex:
        for item in items:
            got.append(item)
    assert 0 < ex.value.offset < n and ex.value.reason.startswith(
        f"corrupt Parquet file: rows {ex.value.offset}..")
    assert [r[0] for r in got] == list(range(ex.value.offset))  # every row before it


# --------------------------------------------------------------------------- through a source


BUCKET = "unit-parquet"


@pytest.fixture
def s3(endpoint: str) -> Any:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)
    for obj in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    return client


def drain(part: Any) -> Iterator[Any]:
    for _ in range(10_000):
        try:
            yield from part.next_batch()
        except StopIteration:
            return
    raise AssertionError("partition did not reach EOF")


def test_a_source_resumes_mid_object_and_fails_a_corrupt_one_alone(
        s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import connectors.s3.source as source_mod

    monkeypatch.setattr(source_mod, "BATCH_RECORDS", 300)
    good = parquet_object(flows(1000), row_group_size=256)
    s3.put_object(Bucket=BUCKET, Key="AWSLogs/a.parquet", Body=good)
    s3.put_object(Bucket=BUCKET, Key="AWSLogs/b.parquet", Body=good[:-300])  # cut short
    s3.put_object(Bucket=BUCKET, Key="AWSLogs/c.parquet", Body=good)
    cfg = SourceConfig(name="pq", bucket=BUCKET, format="vpcflow_parquet", prefix="AWSLogs/",
                       lookback_secs=0, prefetch_max_bytes=1024)  # a.parquet streams

    def build(state: dict | None) -> Any:
        source = S3Source([cfg], lambda: s3, catch_up=True)
        return source.build_part("s3", S3Source.part_name("pq", 0, 1), state)

    part = build(None)
    first = part.next_batch() + part.next_batch()
    snap = part.snapshot()
    assert snap["key"] == "AWSLogs/a.parquet" and snap["offset"] == 600
    part.close()
    rest = list(drain(build(snap)))
    items = first + rest
    a = [i.offset for i in items if i.obj.key == "AWSLogs/a.parquet"]
    assert a == list(range(1000))  # nothing twice, nothing skipped
    assert len([i for i in items if i.obj.key == "AWSLogs/c.parquet"]) == 1000
    b = [i for i in items if i.obj.key == "AWSLogs/b.parquet"]
    assert len(b) == 1 and isinstance(b[0], ErrorRecord)
    assert (b[0].stage, b[0].offset, b[0].code) == ("read", 0, "object_unreadable")
    assert "truncated Parquet file" in b[0].reason
    assert {i.obj.format for i in items} == {"vpcflow_parquet"}


def test_vpc_flow_parquet_takes_the_columnar_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from operators.columnar import VpcFlowColumns

    taken: list[int] = []
    real = VpcFlowColumns.map_run
    monkeypatch.setattr(VpcFlowColumns, "map_run",
                        lambda self, lines, *a: taken.append(len(lines)) or real(self, lines, *a))
    sample = flows(3000)
    rows, errors, _ = mapped("auto", HIVE_KEY, parquet_object(sample, row_group_size=1000))
    assert errors == [] and len(rows) == 3000
    assert sum(taken) == 3000  # every row mapped by polars
