"""From an object's stored bytes to its records: decompress, detect the format, frame.

Shared by the source and by ``s3sentinel preview``, so a preview reads a file exactly
as the connector would read it from S3.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator

from connectors.s3.framing import Framer, JsonArrayFramer, LineFramer
from connectors.s3.objects import decompress
from operators.formats import TextFormat
from operators.formats.registry import detect, framing_of

__all__ = ["FormatUnknown", "Record", "object_records"]

Record = tuple[int, bytes, tuple[bytes, ...]]
"""(offset, record bytes, header lines of the object seen before it)."""


class FormatUnknown(ValueError):
    """``format = "auto"`` and neither the key nor the first bytes say what the object is."""


def _framer(fmt: str) -> Framer:
    kind = framing_of(fmt)
    if kind == "records":
        return JsonArrayFramer("Records")
    if kind == "array":
        return JsonArrayFramer(None)
    return LineFramer()


def object_records(key: str, stored: Iterable[bytes], fmt: str, *, max_bytes: int,
                   max_ratio: float = 0.0,
                   parser_for: Callable[[str], TextFormat | None], skip: int = 0
                   ) -> tuple[str, Iterator[Record]]:
    """The object's format, and an iterator of its records from offset ``skip`` on.

    :arg stored: The object's bytes as stored (compressed or not), in chunks.
    :arg fmt: The configured format, or ``auto`` to detect it.
    :arg parser_for: The text parser of a format (None for JSON formats).
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
    return fmt, _records(chunks, fmt, parser_for(fmt), skip)


def _records(chunks: Iterator[bytes], fmt: str, parser: TextFormat | None,
             skip: int) -> Iterator[Record]:
    framer = _framer(fmt)
    header: tuple[bytes, ...] = ()
    header_lines = getattr(parser, "header_lines", 0) if parser is not None else 0
    base = 0

    def emit(recs: list[bytes], base: int) -> Iterator[Record]:
        nonlocal header
        for i, rec in enumerate(recs, base):
            if not rec or rec.isspace():
                continue
            if parser is not None and (i < header_lines or parser.is_header(rec)):
                header = (*header, rec)
                continue
            if i >= skip:
                yield i, rec, header

    for chunk in chunks:
        recs = framer.feed(chunk)
        yield from emit(recs, base)
        base += len(recs)
    yield from emit(framer.finish(), base)
