"""Framing: splitting a decompressed byte stream into the raw bytes of each record.

Framers are fed chunks of any size and return the records completed so far, so an
object of any size is split while it streams, holding at most one chunk plus one
partial record in memory. They do not parse records; they only find where each
one ends, in time linear in the stream's length whatever the records hold.

- :class:`LineFramer`: one record per line (NDJSON and the line-oriented text formats).
- :class:`~connectors.s3.jsonarray.JsonArrayFramer`: the elements of a JSON array, either the whole document
  (``[{...}, ...]``) or the array under a top-level key (CloudTrail's ``{"Records": [...]}``).
- :class:`~connectors.s3.documents.JsonDocumentsFramer`: concatenated JSON documents (``{...}{...}``, as
  Firehose writes them), each turned into the records it holds by the format's expander.

Two kinds of failure. A record that can be delimited but not handed on (longer than
``max_record_bytes``, or a JSON element nested deeper than the decoder's limit) comes out
in its place as an :class:`UnreadableRecord`, holding at most its first ``SAMPLE_BYTES``,
and the records after it follow. A stream whose shape is broken raises
:class:`FramingError`: the records from its ``offset`` on cannot be found. Framers raise
nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dataflow.core.errors import TerminalError

__all__ = [
    "DEFAULT_MAX_RECORD_BYTES",
    "SAMPLE_BYTES",
    "Framed",
    "Framer",
    "FramingError",
    "LineFramer",
    "UnreadableRecord",
]

DEFAULT_MAX_RECORD_BYTES = 1024 * 1024
"""Default size bound of one record (as ``SourceConfig.max_record_bytes``): a row must fit in
one 1 MB Logs Ingestion request, so a larger record cannot be delivered."""

SAMPLE_BYTES = 64 * 1024
"""Most bytes of an :class:`UnreadableRecord` kept as its sample (its head)."""

_BOM = b"\xef\xbb\xbf"


class FramingError(TerminalError, ValueError):
    """The stream does not have the expected shape; records from ``offset`` on are unreadable.

    :arg records: Records found before the error by the call that raised it (so not
        returned by it); they precede ``offset`` and are to be handed on before the error.
    """

    def __init__(self, reason: str, offset: int, records: list[Framed] | None = None) -> None:
        self.reason = reason
        self.offset = offset
        self.records: list[Framed] = records or []
        super().__init__(f"record {offset}: {reason}")



@dataclass(frozen=True, slots=True)
class UnreadableRecord:
    """A record found in the stream but not handed on; the records after it follow.

    :arg offset: Its offset, counted like any record's.
    :arg reason: Why, for the error record.
    :arg code: ``record_too_large`` or ``too_deep``.
    :arg sample: Its first bytes (at most :data:`SAMPLE_BYTES`).
    :arg size: Its length in bytes.
    """

    offset: int
    reason: str
    code: str
    sample: bytes
    size: int


Framed = bytes | UnreadableRecord


class Framer(Protocol):
    """Splits a byte stream into records."""

    def feed(self, chunk: bytes) -> list[Framed]:
        """Add bytes; return the records completed by them, in order.

        :raises FramingError: The stream cannot be split from the returned offset on.
        """
        ...

    def finish(self) -> list[Framed]:
        """End of stream: return the last records, or raise FramingError if incomplete."""
        ...

    @property
    def emitted(self) -> int:
        """Records returned so far, unreadable ones included (the offset of the next one)."""
        ...


class _Head:
    """The size and first bytes of a record being passed over."""

    __slots__ = ("head", "size")

    def __init__(self) -> None:
        self.head = b""
        self.size = 0

    def add(self, data: bytes | memoryview) -> None:
        if len(self.head) < SAMPLE_BYTES:
            self.head += bytes(data[:SAMPLE_BYTES - len(self.head)])
        self.size += len(data)


def _too_large(offset: int, rec: _Head, limit: int) -> UnreadableRecord:
    reason = (f"record of {rec.size} bytes is larger than max_record_bytes ({limit}); "
              f"skipped (its first {len(rec.head)} bytes are kept)")
    return UnreadableRecord(offset, reason, "record_too_large", rec.head, rec.size)


class LineFramer:
    """One record per line; blank lines are skipped but still counted as offsets.

    Offsets are line numbers from 0, so an error names the line a user can open. A line
    longer than ``max_record_bytes`` is passed over (only its head is held) and comes out
    as an :class:`UnreadableRecord`.
    """

    def __init__(self, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        self._rest: list[bytes] = []  # the unfinished last line, in pieces
        self._rest_len = 0
        self._line = 0
        self._max = max_record_bytes
        self._bom_checked = False
        self._skip: _Head | None = None  # the over-long line being passed over

    @property
    def emitted(self) -> int:
        return self._line

    def feed(self, chunk: bytes) -> list[Framed]:
        if not self._bom_checked:
            buf = b"".join([*self._rest, chunk])
            self._rest, self._rest_len = [], 0
            if len(buf) < 3 and _BOM.startswith(buf):  # a BOM split across chunks
                self._rest, self._rest_len = [buf], len(buf)
                return []
            self._bom_checked = True
            chunk = buf[3:] if buf.startswith(_BOM) else buf
        out: list[Framed] = []
        if self._skip is not None:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._skip.add(chunk)
                return out
            self._skip.add(memoryview(chunk)[:nl])
            out.append(_too_large(self._line, self._skip, self._max))
            self._line += 1
            self._skip = None
            chunk = chunk[nl + 1:]
        if b"\n" not in chunk:  # a long line grows without being copied again
            self._rest.append(chunk)
            self._rest_len += len(chunk)
            if self._rest_len > self._max:
                self._skip = _Head()
                self._skip.add(b"".join(self._rest))
                self._rest, self._rest_len = [], 0
            return out
        buf = b"".join([*self._rest, chunk]) if self._rest else chunk
        lines = buf.split(b"\n")
        rest = lines.pop()
        self._rest, self._rest_len = [rest], len(rest)
        out += self._take(lines, len(buf) > self._max)
        if self._rest_len > self._max:
            self._skip = _Head()
            self._skip.add(rest)
            self._rest, self._rest_len = [], 0
        return out

    def finish(self) -> list[Framed]:
        if self._skip is not None:
            rec, self._skip = _too_large(self._line, self._skip, self._max), None
            self._line += 1
            return [rec]
        rest = b"".join(self._rest)
        self._rest, self._rest_len = [], 0
        return self._take([rest], False) if rest.strip() else []

    def _take(self, lines: list[bytes], check: bool) -> list[Framed]:
        # Blank lines keep their line number but produce no record; the source
        # pairs each returned record with `start + index`, so blanks are kept as b"".
        out: list[Framed] = [line.rstrip(b"\r") for line in lines]
        if check:  # only a buffer longer than the limit can hold a line longer than it
            for i, line in enumerate(lines):
                if len(line) > self._max:
                    rec = _Head()
                    rec.add(line)
                    out[i] = _too_large(self._line + i, rec, self._max)
        self._line += len(lines)
        return out
