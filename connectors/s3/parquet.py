"""Reading Apache Parquet objects: each row a record, its row index the record's offset.

Parquet cannot be read as a stream: its footer (at the end) says where every column chunk
is. So the object's (decompressed) bytes are first spooled to a temporary file, chunk by
chunk (never held whole; ``max_object_bytes`` is enforced while they are decompressed),
and the rows are then read with polars in bounded slices: at most :data:`SLICE_ROWS` rows,
and about :data:`SLICE_BYTES` of decoded data, are materialised at once, whatever the
object's row groups hold (polars decodes only the pages a slice needs). A slice is read when
the records before it have been taken, so a partition reading a large object holds one slice.

Each row comes out as a record whose bytes are the row as compact JSON, under the file's
column names, with null (and NaN) values left out: dead letters keep a readable row, and
everything downstream is the same as for JSON records. Values are encoded as polars writes
JSON (timestamps as ISO 8601, a timestamp without time zone taken as UTC; decimals as
strings; lists and structs as JSON); a binary column is read as UTF-8 text. A row holding
a value that cannot be encoded (bytes that are not UTF-8) is an
:class:`~connectors.s3.framing.UnreadableRecord` in its place, and the rows after it follow.

The offset of a row is its index in the file (from 0), so a resume mid-object (``skip``)
starts at exactly the next row, and an error names the row a user can find. An object
that is not Parquet, or is truncated or corrupt, raises
:class:`~connectors.s3.framing.FramingError` at the offset of the first row that could not
be read (the rows before it have been yielded): the object fails there, never the flow.
"""

from __future__ import annotations

import contextlib
import datetime
import decimal
import functools
import math
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any

import orjson

from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import SAMPLE_BYTES, FramingError, UnreadableRecord
from dataflow.core.lazy import lazy_import

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_import("polars")  # imported on first use: most flows never need it

__all__ = ["MAGIC", "SLICE_BYTES", "SLICE_ROWS", "parquet_records"]

MAGIC = b"PAR1"
"""The first and last four bytes of a Parquet file (``PARE``: encrypted footer)."""

SLICE_ROWS = 8192
"""Most rows read (decoded and encoded) at once. polars decodes a row group from its start
to reach a slice, so small slices of a large row group (AWS's files often have one) cost
that again and again: reading 1M VPC flow rows in row groups of 64k, one core, 2,048-row
slices ~0.2M rows per CPU-second, 8,192 ~0.66M, 16,384 ~1.2M, 65,536 ~2.9M; peak RSS
78, 111, 87 and 125 MB. Encoding a slice as JSON takes about ten times its decoded size."""

SLICE_BYTES = 16 * 1024 * 1024
"""About the most decoded bytes read at once: wide rows make smaller slices."""

FIRST_SLICE_ROWS = 1024
"""Rows of the first slice, which measures how large the rows are."""

_Item = tuple[int, bytes, tuple[bytes, ...]] | UnreadableRecord
Lines = Callable[["pl.DataFrame"], tuple[bytes, list[bytes]]]
"""A slice of rows as a text format's ``(header line, lines)``."""

@functools.cache
def _failures() -> tuple[type[BaseException], ...]:
    """What reading a slice may raise: any Exception, and polars' (pyo3's) PanicException
    for a panic in Rust, a BaseException (looked up when one is raised: polars is imported
    on first use)."""
    return (Exception, pl.exceptions.PanicException)


def parquet_records(chunks: Iterable[bytes], *, skip: int = 0,
                    max_record_bytes: int, spool_dir: str | None = None,
                    lines: Lines | None = None) -> Iterator[_Item]:
    """The rows of a Parquet object from row ``skip`` on, as records.

    Yields ``(row index, row as JSON, ())`` (with ``lines``: ``(row index, the row's text
    line, (header line,))``) and, for a row that cannot be handed on (larger than
    ``max_record_bytes``, or holding a value that cannot be encoded), an
    :class:`UnreadableRecord` in its place. An empty object has no rows.

    :arg chunks: The object's decompressed bytes, in chunks (spooled to a temporary file
        in ``spool_dir``, default the system's temporary directory, deleted when the
        iterator ends or is dropped).
    :arg lines: Turns a slice of rows into a format's text records, ``(header line,
        lines)`` (VPC flow logs: the text format's, so both are read by the same code).
    :raises FramingError: Not a Parquet file, or corrupt or truncated (at the offset of the
        first row that could not be read).
    :raises ObjectReadError: The temporary file cannot be written (transient: the disk may
        have room later). Errors of ``chunks`` itself pass unchanged.
    """
    with contextlib.ExitStack() as stack:
        try:
            spool = stack.enter_context(tempfile.NamedTemporaryFile(
                prefix="s3sentinel-", suffix=".parquet", dir=spool_dir))
        except OSError as ex:
            raise _spool_error(ex) from ex
        size = _spool(chunks, spool)
        if size == 0:
            return
        _check_shape(spool, size, skip)
        try:
            lf = pl.scan_parquet(spool.name, hive_partitioning=False)
            total = int(lf.select(pl.len()).collect().item())
        except _failures() as ex:
            raise FramingError(_corrupt("its footer cannot be read", ex), skip) from None
        offset = skip
        rows = FIRST_SLICE_ROWS
        while offset < total:
            try:
                df = _collect(lf, offset, rows)
            except _failures() as ex:
                msg = _corrupt(f"rows {offset}..{min(offset + rows, total) - 1} cannot be read",
                               ex)
                raise FramingError(msg, offset) from None
            if df.height == 0:
                msg = (f"corrupt Parquet file: its footer says {total} rows, but rows from "
                       f"{offset} on cannot be found")
                raise FramingError(msg, offset)
            try:
                items = _records(df, offset, max_record_bytes, lines)
            except Exception as ex:  # a bug here must fail this object, never the flow
                msg = f"unexpected error while reading rows: {type(ex).__name__}: {ex}"
                raise FramingError(msg, offset) from ex
            size_per_row = max(1, int(df.estimated_size()) // df.height)
            rows = max(1, min(SLICE_ROWS, SLICE_BYTES // size_per_row))
            offset += df.height
            del df  # only the slice's records are held while they are taken
            yield from items


def _collect(lf: pl.LazyFrame, offset: int, rows: int) -> pl.DataFrame:
    """Rows ``offset`` to ``offset + rows`` (fewer at the end) of the file: the only place
    rows are materialised."""
    return lf.slice(offset, rows).collect()


def _spool(chunks: Iterable[bytes], spool: IO[bytes]) -> int:
    """Write the chunks to the spool file; the chunks' own errors pass unchanged."""
    size = 0
    for chunk in chunks:
        try:
            spool.write(chunk)
        except OSError as ex:
            raise _spool_error(ex) from ex
        size += len(chunk)
    try:
        spool.flush()
    except OSError as ex:
        raise _spool_error(ex) from ex
    return size


def _spool_error(ex: OSError) -> ObjectReadError:
    """A temporary file that cannot be written (the disk is full, say) may be writable
    later: the object is tried again."""
    msg = (f"cannot spool the Parquet object to a temporary file in "
           f"{tempfile.gettempdir()} (set TMPDIR to a larger disk?): {ex}")
    return ObjectReadError(msg, transient=True)


def _check_shape(spool: IO[bytes], size: int, skip: int) -> None:
    """Fail early, with a clear reason, on what is not a whole Parquet file (polars' own
    errors on such input are less clear, and some are panics)."""
    spool.seek(0)
    head = spool.read(4)
    tail = b""
    if size >= 12:
        spool.seek(size - 8)
        tail = spool.read(8)
    if head == b"PARE" or tail[4:] == b"PARE":
        msg = "encrypted Parquet files (PARE) are not supported"
        raise FramingError(msg, skip)
    if head != MAGIC:
        msg = (f"not a Parquet file: it starts with {head!r}, not {MAGIC!r} (is the "
               "source's format right?)")
        raise FramingError(msg, skip)
    if size < 12 or tail[4:] != MAGIC:
        msg = (f"truncated Parquet file: {size} bytes that do not end with {MAGIC!r} (its "
               "footer is missing: the object was cut short)")
        raise FramingError(msg, skip)
    footer = int.from_bytes(tail[:4], "little")
    if footer <= 0 or footer > size - 12:
        msg = (f"corrupt Parquet file: its footer length ({footer} bytes) does not fit in "
               f"the file ({size} bytes)")
        raise FramingError(msg, skip)


def _corrupt(what: str, ex: BaseException) -> str:
    text = str(ex).strip().splitlines()[0] if str(ex).strip() else ""
    return f"corrupt Parquet file: {what}: {type(ex).__name__}: {text[:300]}"


# --------------------------------------------------------------------------- rows as JSON


def _records(df: pl.DataFrame, offset: int, limit: int, lines: Lines | None) -> list[_Item]:
    out: list[_Item] = []
    header: tuple[bytes, ...] = ()
    rows: list[bytes | UnreadableRecord]
    if lines is not None:
        try:
            head, text = lines(df)
            header, rows = (head,), list(text)
        except _failures():  # a value that cannot be text: row by row, to find which
            rows = [_slow_json(df.slice(k, 1), offset + k)[0] for k in range(df.height)]
            for k, row in enumerate(rows):
                if not isinstance(row, UnreadableRecord):
                    try:
                        head, text = lines(df.slice(k, 1))
                        header, rows[k] = (head,), text[0]
                    except _failures() as ex:
                        reason = f"row {offset + k} holds a value that cannot be read: {ex}"
                        rows[k] = UnreadableRecord(offset + k, reason, "unreadable_value",
                                                   row[:SAMPLE_BYTES], len(row))
    else:
        try:
            rows = list(_fast_json(df))
        except _failures():  # a value polars cannot write as JSON: row by row, to find which
            rows = _slow_json(df, offset)
    for i, data in enumerate(rows, offset):
        if isinstance(data, UnreadableRecord):
            out.append(data)
        elif len(data) > limit:
            reason = (f"row of {len(data)} bytes (as JSON) is larger than max_record_bytes "
                      f"({limit}); skipped (its first {min(len(data), SAMPLE_BYTES)} bytes "
                      "are kept)")
            out.append(UnreadableRecord(i, reason, "record_too_large", data[:SAMPLE_BYTES],
                                        len(data)))
        else:
            out.append((i, data, header))
    return out


def _fast_json(df: pl.DataFrame) -> list[bytes]:
    """Every row as a JSON object, encoded by polars; a column's member is left out where
    its value is null (or a float that is not finite).

    :raises Exception: Or a polars panic, when a value cannot be written as JSON.
    """
    if df.width == 0:
        return [b"{}"] * df.height
    parts = []
    for name, dtype in df.schema.items():
        col = pl.col(name)
        if dtype == pl.Binary:
            col = col.cast(pl.String)  # strict: bytes that are not UTF-8 raise
        elif isinstance(dtype, pl.Datetime):
            col = (col.dt.replace_time_zone("UTC") if dtype.time_zone is None
                   else col.dt.convert_time_zone("UTC"))
        present = col.is_not_null()
        if dtype.is_float():
            present = present & col.is_finite()
        member = pl.struct(col.alias(name)).struct.json_encode()
        parts.append(pl.when(present).then(member.str.slice(1).str.head(-1)))
    body = pl.concat_str(parts, separator=",", ignore_nulls=True)
    row = pl.concat_str([pl.lit("{"), body, pl.lit("}")]).cast(pl.Binary)
    return df.select(row.alias("row")).to_series().to_list()


def _slow_json(df: pl.DataFrame, offset: int) -> list[bytes | UnreadableRecord]:
    """Row by row, in Python: a row with a value that cannot be encoded is an
    UnreadableRecord, the others are encoded as :func:`_fast_json` would."""
    names = df.columns
    out: list[bytes | UnreadableRecord] = []
    for i, values in enumerate(df.iter_rows(), offset):
        row = {n: v for n, v in zip(names, values, strict=True) if _present(v)}
        try:
            out.append(orjson.dumps(row, default=_default, option=orjson.OPT_NAIVE_UTC))
        except (TypeError, orjson.JSONEncodeError) as ex:
            sample = orjson.dumps(row, default=repr, option=orjson.OPT_NAIVE_UTC)
            why = ex.__cause__ or ex  # orjson wraps what _default raised
            reason = f"row {i} holds a value that cannot be read: {why}"
            out.append(UnreadableRecord(i, reason, "unreadable_value", sample[:SAMPLE_BYTES],
                                        len(sample)))
    return out


def _present(v: Any) -> bool:
    return v is not None and not (type(v) is float and not math.isfinite(v))


def _default(v: Any) -> Any:
    """JSON for the values orjson does not encode itself (as polars writes them)."""
    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError as ex:
            msg = f"bytes that are not UTF-8 text (byte {ex.start} of {len(v)})"
            raise TypeError(msg) from None
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.timedelta):
        return f"PT{v.total_seconds():g}S"
    msg = f"a value of type {type(v).__name__}"
    raise TypeError(msg)

