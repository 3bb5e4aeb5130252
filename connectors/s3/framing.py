"""Framing: splitting a decompressed byte stream into the raw bytes of each record.

Framers are fed chunks of any size and return the records completed so far, so an
object of any size is split while it streams, holding at most one chunk plus one
partial record in memory. They do not parse records; they only find where each
one ends.

- :class:`LineFramer`: one record per line (NDJSON and the line-oriented text formats).
- :class:`JsonArrayFramer`: the elements of a JSON array, either the whole document
  (``[{...}, ...]``) or the array under a top-level key (CloudTrail's ``{"Records": [...]}``).
"""

from __future__ import annotations

import re
from typing import Protocol

import msgspec

__all__ = [
    "Framer",
    "FramingError",
    "JsonArrayFramer",
    "LineFramer",
    "framer_for",
]

_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode
_decode_raw_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
_TAIL_BYTES = 32 * 1024
_BOM = b"\xef\xbb\xbf"


class FramingError(ValueError):
    """The stream does not have the expected shape; records after ``offset`` are unreadable."""

    def __init__(self, reason: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset
        super().__init__(f"record {offset}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.reason, self.offset))


class Framer(Protocol):
    """Splits a byte stream into records."""

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add bytes; return the records completed by them."""
        ...

    def finish(self) -> list[bytes]:
        """End of stream: return the last records, or raise FramingError if incomplete."""
        ...

    @property
    def emitted(self) -> int:
        """Records returned so far (the offset of the next record)."""
        ...


class LineFramer:
    """One record per line; blank lines are skipped but still counted as offsets.

    Offsets are line numbers from 0, so an error names the line a user can open.
    """

    def __init__(self, max_record_bytes: int = 16 * 1024 * 1024) -> None:
        self._rest = b""
        self._line = 0
        self._max = max_record_bytes
        self._bom_checked = False

    @property
    def emitted(self) -> int:
        return self._line

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._rest + chunk if self._rest else chunk
        if self._line == 0 and not self._bom_checked:
            if len(buf) < 3 and _BOM.startswith(buf):  # a BOM split across chunks
                self._rest = buf
                return []
            self._bom_checked = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        lines = buf.split(b"\n")
        self._rest = lines.pop()
        if len(self._rest) > self._max:
            msg = f"line longer than {self._max} bytes"
            raise FramingError(msg, self._line + len(lines))
        return self._take(lines)

    def finish(self) -> list[bytes]:
        rest, self._rest = self._rest, b""
        return self._take([rest]) if rest.strip() else []

    def _take(self, lines: list[bytes]) -> list[bytes]:
        # Blank lines keep their line number but produce no record; the source
        # pairs each returned record with `start + index`, so blanks are kept as b"".
        self._line += len(lines)
        return [line.rstrip(b"\r") for line in lines]


class JsonArrayFramer:
    """The elements of a JSON array of objects, found without decoding them.

    A candidate end of element is a ``}`` followed by ``,{`` or ``]``. A candidate
    is real when the bytes from the element's start to it are one complete JSON
    value, which msgspec checks in C without building objects. A false candidate
    (a ``},{`` inside a nested list) fails fast at the truncation point, so the
    cost stays linear in the object's size.

    :arg key: Top-level key holding the array (``"Records"``), or None when the
        document itself is the array.
    """

    _candidate = re.compile(rb"\}\s*(?:,\s*(?=\{)|\])")

    def __init__(self, key: str | None = None, max_record_bytes: int = 64 * 1024 * 1024) -> None:
        if key is None:
            self._head = re.compile(rb"\s*\[\s*")
        else:
            self._head = re.compile(rb'\s*\{\s*"' + re.escape(key.encode()) + rb'"\s*:\s*\[\s*')
        self._key = key
        self._buf = b""
        self._started = False
        self._done = False
        self._tail = b""
        self._count = 0
        self._max = max_record_bytes

    @property
    def emitted(self) -> int:
        return self._count

    def feed(self, chunk: bytes) -> list[bytes]:
        if self._done:
            self._tail += chunk
            if len(self._tail) > 4096:
                msg = "unexpected data after the end of the array"
                raise FramingError(msg, self._count)
            return []
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):  # a BOM split across chunks
                self._buf = buf
                return []
            if buf.startswith(_BOM):
                buf = buf[3:]
            m = self._head.match(buf)
            if m is None:
                stripped = buf.lstrip()
                if len(buf) >= 256 or (stripped and not stripped.startswith((b"[", b"{"))):
                    raise FramingError(self._shape_error(), 0)
                self._buf = buf  # not enough bytes yet to decide
                return []
            self._started = True
            buf = buf[m.end():]
        if self._count == 0 and buf.lstrip().startswith(b"]"):  # an empty array
            self._done, self._tail, self._buf = True, buf.lstrip()[1:], b""
            return []
        out, start = self._split(buf)
        self._buf = buf[start:]
        self._count += len(out)
        if len(self._buf) > self._max:
            msg = f"a record is longer than {self._max} bytes (or the JSON is malformed)"
            raise FramingError(msg, self._count)
        return out

    def _split(self, buf: bytes) -> tuple[list[bytes], int]:
        """The complete elements at the start of ``buf``, and where the rest begins.

        Usually one C call validates every complete element of the chunk at once: the
        prefix up to the last real boundary is decoded as a list of raw values. When the
        last few candidates are all false, elements are checked one at a time.
        """
        # Look for the last boundary near the end first; most chunks hold many records.
        tail = list(self._candidate.finditer(buf, max(0, len(buf) - _TAIL_BYTES)))
        for m in reversed(tail[-3:]):
            end = m.start() + 1
            try:
                elems = _decode_raw_list(b"[" + buf[:end] + b"]")
            except msgspec.DecodeError:
                continue
            return [bytes(e) for e in elems], self._advance(buf, m)
        out: list[bytes] = []
        start = len(buf) - len(buf.lstrip())  # whitespace after "[" may arrive in a later chunk
        for m in self._candidate.finditer(buf, start):
            end = m.start() + 1
            try:
                _decode_raw(memoryview(buf)[start:end])
            except msgspec.DecodeError:
                continue  # a "}," inside a nested value; keep looking
            out.append(buf[start:end])
            start = self._advance(buf, m)
            if self._done:
                break
        return out, start

    def _advance(self, buf: bytes, m: re.Match[bytes]) -> int:
        """Past boundary ``m``: the next element's start, or the end of ``buf`` after ``]``."""
        if m.group().endswith(b"]"):
            self._done = True
            self._tail = buf[m.end():]
            return len(buf)
        return m.end()

    def finish(self) -> list[bytes]:
        if not self._started:
            raise FramingError(self._shape_error(), 0)
        if not self._done:
            msg = "the JSON array is truncated or malformed: no closing ']'"
            raise FramingError(msg, self._count)
        if self._tail.strip() not in (b"", b"}") if self._key else self._tail.strip() != b"":
            msg = f"unexpected data after the array: {self._tail[:40]!r}"
            raise FramingError(msg, self._count)
        return []

    def _shape_error(self) -> str:
        if self._key is None:
            return "expected a JSON array of objects ('[{...}, ...]')"
        return f'expected a JSON object whose first key is "{self._key}" holding an array'


def framer_for(fmt: str) -> Framer:
    """The framer for a configured source format."""
    if fmt == "cloudtrail":
        return JsonArrayFramer("Records")
    if fmt == "json_array":
        return JsonArrayFramer(None)
    if fmt == "ndjson":
        return LineFramer()
    msg = f"no framer for format {fmt!r}"
    raise ValueError(msg)
