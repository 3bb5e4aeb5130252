"""From an object's stored bytes to its records: decompress, detect the format, frame.

Shared by the source and by ``s3sentinel preview``, so a preview reads a file exactly
as the connector would read it from S3.

What reading one object may raise is the project's own: :class:`FormatUnknown`,
:class:`~connectors.s3.errors.ObjectReadError` (corrupt, truncated or oversized compressed
data) and :class:`~connectors.s3.framing.FramingError` (the records from its offset on
cannot be found); an unexpected error of a framer becomes a FramingError. Parquet objects
(``parquet`` framing) are not framed from a stream: :mod:`connectors.s3.parquet` spools
them and reads their rows, with the same offsets, errors and unreadable records. Exceptions
raised by the stored chunks' own iterator (network errors) pass unchanged, for the caller
to classify as transient or not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

from connectors.s3.documents import JsonDocumentsFramer
from connectors.s3.framing import (
    DEFAULT_MAX_RECORD_BYTES,
    Framed,
    Framer,
    FramingError,
    LineFramer,
    UnreadableRecord,
)
from connectors.s3.jsonarray import JsonArrayFramer
from connectors.s3.objects import decompress
from connectors.s3.parquet import parquet_records
from dataflow.core.errors import TerminalError
from operators.formats import TextFormat
from operators.formats.registry import detect, expander_of, framing_of, lines_of

__all__ = ["FormatUnknown", "Record", "UnreadableRecord", "framer_for", "object_records"]

Record = tuple[int, bytes, tuple[bytes, ...]]
"""(offset, record bytes, header lines of the object seen before it)."""

Item = Record | UnreadableRecord
"""What :func:`object_records` yields: a record, or one found but not readable (too large,
too deeply nested), to be reported under its offset while the object goes on."""


class FormatUnknown(TerminalError, ValueError):
    """``format = "auto"`` and neither the key nor the first bytes say what the object is."""


def framer_for(fmt: str, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Framer:
    """The framer for a configured source format."""
    if fmt == "cloudtrail":
        return JsonArrayFramer("Records", max_record_bytes)
    if fmt == "json_array":
        return JsonArrayFramer(None, max_record_bytes)
    if fmt == "ndjson":
        return LineFramer(max_record_bytes)
    if framing_of(fmt) == "documents":
        return JsonDocumentsFramer(expander_of(fmt), max_record_bytes)
    msg = f"no framer for format {fmt!r}"
    raise ValueError(msg)


def _framer(fmt: str, max_record_bytes: int) -> Framer:
    kind = framing_of(fmt)
    if kind == "records":
        return JsonArrayFramer("Records", max_record_bytes)
    if kind == "array":
        return JsonArrayFramer(None, max_record_bytes)
    if kind == "documents":
        return JsonDocumentsFramer(expander_of(fmt), max_record_bytes)
    return LineFramer(max_record_bytes)


def object_records(key: str, stored: Iterable[bytes], fmt: str, *, max_bytes: int,
                   max_ratio: float = 0.0,
                   parser_for: Callable[[str], TextFormat | None], skip: int = 0,
                   max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
                   ) -> tuple[str, Iterator[Item]]:
    """The object's format, and an iterator of its records from offset ``skip`` on.

    The iterator yields :data:`Record` tuples and, in the place of a record longer than
    ``max_record_bytes`` or nested too deep to decode, an :class:`UnreadableRecord`
    (offsets below ``skip`` are not yielded, whichever they are). It raises
    :class:`~connectors.s3.framing.FramingError` (after yielding the records before its
    ``offset``) or :class:`~connectors.s3.errors.ObjectReadError`; exceptions of
    ``stored`` itself pass unchanged.

    :arg stored: The object's bytes as stored (compressed or not), in chunks.
    :arg fmt: The configured format, or ``auto`` to detect it.
    :arg parser_for: The text parser of a format (None for JSON formats).
    :arg max_record_bytes: Size bound of one record (decompressed).
    :raises FormatUnknown: When ``auto`` cannot tell.
    :raises ObjectReadError: When the first chunk cannot be decompressed.
    """
    chunks = decompress(stored, max_bytes=max_bytes, max_ratio=max_ratio)
    if fmt == "auto":
        found = detect(key)
        if found is None:
            first = next(chunks, b"")
            found = detect(key, first[:4096])
            chunks = itertools.chain([first], chunks)
        if found is None:
            msg = (f"cannot tell the format of {key!r} from its key or first bytes; "
                   "set the source's format")
            raise FormatUnknown(msg)
        fmt = found
    if framing_of(fmt) == "parquet":  # random access to its footer: spooled, read by rows
        return fmt, parquet_records(chunks, skip=skip, max_record_bytes=max_record_bytes,
                                    lines=lines_of(fmt))
    return fmt, _records(chunks, fmt, parser_for(fmt), skip, max_record_bytes)


def _records(chunks: Iterator[bytes], fmt: str, parser: TextFormat | None,
             skip: int, max_record_bytes: int) -> Iterator[Item]:
    framer = _framer(fmt, max_record_bytes)
    header: tuple[bytes, ...] = ()
    header_lines = getattr(parser, "header_lines", 0) if parser is not None else 0
    base = 0

    def emit(recs: list[Framed], base: int) -> Iterator[Item]:
        nonlocal header
        for i, rec in enumerate(recs, base):
            if isinstance(rec, UnreadableRecord):
                if i >= skip:
                    yield rec
                continue
            if not rec or rec.isspace():
                continue
            if parser is not None and (i < header_lines or parser.is_header(rec)):
                header = (*header, rec)
                continue
            if i >= skip:
                yield i, rec, header

    def framed(step: Callable[..., list[Framed]], *args: bytes) -> list[Framed]:
        try:
            return step(*args)
        except FramingError:
            raise
        except Exception as ex:  # a framer's bug must fail this object, never the flow
            msg = f"unexpected error while splitting records: {type(ex).__name__}: {ex}"
            raise FramingError(msg, framer.emitted) from ex

    try:
        for chunk in chunks:
            recs = framed(framer.feed, chunk)
            yield from emit(recs, base)
            base += len(recs)
        yield from emit(framed(framer.finish), base)
    except FramingError as ex:
        yield from emit(ex.records, base)  # the records the failing call found before it
        ex.records = []
        raise
