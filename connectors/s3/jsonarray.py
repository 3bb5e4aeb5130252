"""The elements of a JSON array, found in one pass: CloudTrail's ``{"Records": [...]}`` and
``json_array`` objects.

See :mod:`connectors.s3.framing` for the framer contract. The common case (many small
records) costs one msgspec decode per chunk; a long element costs msgspec's own end
position, or a bracket and string scanner that keeps its state across chunks, never a
re-decode at every candidate boundary (which made one 1.6 MB record cost 73 s of CPU).
"""

from __future__ import annotations

import re

import msgspec

from connectors.s3.framing import (
    _BOM,
    DEFAULT_MAX_RECORD_BYTES,
    Framed,
    FramingError,
    UnreadableRecord,
    _Head,
    _too_large,
)

__all__ = ["JsonArrayFramer"]

_decode_raw = msgspec.json.Decoder(msgspec.Raw).decode
_decode_raw_list = msgspec.json.Decoder(list[msgspec.Raw]).decode
_TAIL_BYTES = 32 * 1024
_EAGER_BYTES = 4096  # an incomplete element up to this size is tried again at every chunk
_WS = re.compile(rb"[ \t\r\n]*")
# Outside strings: runs of non-structural bytes and whole strings, in C; stops at a bracket,
# at the quote of a string not closed in the buffer, or at the end.
_OUTSIDE = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+', re.S)
_IN_STRING = re.compile(rb'(?:[^"\\]++|\\.)*+', re.S)
_TRAILING = re.compile(r"JSON is malformed: trailing characters \(byte (\d+)\)")
_LEAD = re.compile(rb'\{"(?:[^"\\\s]|\\.){1,64}"')
_MALFORMED = re.compile(r"JSON is malformed: .* \(byte (\d+)\)")


def _trailing_shift() -> int | None:
    """How msgspec's "trailing characters (byte N)" relates to the trailing byte's index
    (N - index; None if its message has another form: element ends are then scanned)."""
    try:
        _decode_raw(b'{"a":{}} \n,')
    except msgspec.DecodeError as ex:
        m = _TRAILING.fullmatch(str(ex))
        if m is not None:
            return int(m[1]) - 10
    return None


_SHIFT = _trailing_shift()


class _Scan(_Head):
    """Walks one JSON element to its end across chunks: bracket by bracket, not byte by
    byte, with no recursion and holding only its head. Brackets are counted, not matched:
    the element is validated (or dropped) once its end is known."""

    __slots__ = ("depth", "esc", "in_str")

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.in_str = False
        self.esc = False

    def run(self, buf: bytes, pos: int) -> int:
        """The index just after the element's end in ``buf``, or -1 when ``buf`` ends first."""
        start, n, depth = pos, len(buf), self.depth
        while pos < n:
            if self.in_str:
                if self.esc:
                    self.esc, pos = False, pos + 1
                    continue
                pos = _IN_STRING.match(buf, pos).end()  # type: ignore[union-attr]
                if pos < n:
                    self.in_str = buf[pos] != 0x22  # '"' closes; else a '\' is the last byte
                    self.esc = self.in_str
                    pos += 1
                continue
            pos = _OUTSIDE.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                break
            c = buf[pos]
            pos += 1
            if c == 0x22:
                self.in_str = True
            elif c in (0x7B, 0x5B):
                depth += 1
            else:
                depth -= 1
                if depth <= 0:
                    self.add(memoryview(buf)[start:pos])
                    return pos
        self.depth = depth
        self.add(memoryview(buf)[start:])
        return -1


class JsonArrayFramer:
    """The elements of a JSON array of objects, found in linear time.

    Most chunks are split by one C call: the bytes up to a candidate end near the chunk's
    end (a ``}`` followed by ``,{`` or ``]``, or better ``},`` and the opening the first
    record had, as records of one producer start alike) are decoded as a list of raw
    values, which checks every element without building objects. Otherwise each element
    is decoded on its own from its start, and msgspec's "trailing characters" position
    gives its end. An element still incomplete is held and tried again once the bytes
    held have doubled (or, once, when a chunk shows that opening), so a long record costs
    O(its size). An element longer than ``max_record_bytes`` or nested too deep for the
    decoder is walked to its end by a bracket scanner, holding only its head, and comes
    out as an :class:`UnreadableRecord`. An element is handed on once the ``,`` or ``]``
    after it is read.

    :arg key: Top-level key holding the array (``"Records"``), or None when the
        document itself is the array.
    :arg max_record_bytes: Size bound of one element.
    """

    _candidate = re.compile(rb"\}\s*(?:,\s*(?=\{)|\])")

    def __init__(self, key: str | None = None,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> None:
        if key is None:
            self._head = re.compile(rb"\s*\[\s*")
        else:
            self._head = re.compile(rb'\s*\{\s*"' + re.escape(key.encode()) + rb'"\s*:\s*\[\s*')
        self._key = key
        self._parts: list[bytes] = []  # bytes not framed yet
        self._size = 0
        self._started = False
        self._done = False
        self._tail = b""
        self._count = 0
        self._max = max_record_bytes
        self._first = True   # nothing read in the array yet: "]" may close it
        self._after = False  # an element was read last: "," or "]" comes next
        self._tried = 0      # bytes held when the element at their start was found incomplete
        self._next = b""     # "}," + the first record's opening up to its first key: most
        self._hint = False   # records start alike, so this marks likely ends (a hint only)
        self._by_hint = False
        self._scan: _Scan | None = None  # an element being passed over
        self._scan_code = ""

    @property
    def emitted(self) -> int:
        return self._count

    def feed(self, chunk: bytes) -> list[Framed]:
        if self._done:
            self._tail += chunk
            if len(self._tail) > 4096:
                msg = "unexpected data after the end of the array"
                raise FramingError(msg, self._count)
            return []
        self._parts.append(chunk)
        self._size += len(chunk)
        self._by_hint = False
        if not self._started and not self._start():
            return []
        if self._tried > _EAGER_BYTES and self._scan is None:
            # A long element is held: try it again when the hint shows a likely end (once),
            # else once the bytes held have doubled, so that retries cost O(its size); and
            # past max_record_bytes, to pass it over.
            self._by_hint = self._hint and self._next in chunk
            grown = self._size > self._max or (not self._hint and self._size >= 2 * self._tried)
            if not (grown or self._by_hint):
                return []
        return self._run(final=False)

    def finish(self) -> list[Framed]:
        if not self._started:
            raise FramingError(self._shape_error(), 0)
        out = self._run(final=True) if not self._done else []
        if not self._done:
            msg = "the JSON array is truncated or malformed: no closing ']'"
            raise FramingError(msg, self._count, out)
        if self._tail.strip() not in (b"", b"}") if self._key else self._tail.strip() != b"":
            msg = f"unexpected data after the array: {self._tail[:40]!r}"
            raise FramingError(msg, self._count, out)
        return out

    def _start(self) -> bool:
        """Past the document's head (BOM, ``{"Records":[``); False while it is incomplete."""
        buf = b"".join(self._parts)
        self._parts, self._size = [buf], len(buf)
        if len(buf) < 3 and _BOM.startswith(buf):  # a BOM split across chunks
            return False
        if buf.startswith(_BOM):
            buf = buf[3:]
        m = self._head.match(buf)
        if m is None:
            stripped = buf.lstrip()
            if len(buf) >= 256 or (stripped and not stripped.startswith((b"[", b"{"))):
                raise FramingError(self._shape_error(), 0)
            return False  # not enough bytes yet to decide
        self._started = True
        self._parts, self._size = [buf[m.end():]], len(buf) - m.end()
        return True

    def _run(self, *, final: bool) -> list[Framed]:
        buf = b"".join(self._parts)
        self._parts, self._size = [], 0
        out: list[Framed] = []
        try:
            rest = self._frame(buf, out, final)
        except FramingError as ex:
            ex.records = out
            raise
        except Exception as ex:  # a bug here must fail this object only
            msg = f"unexpected error while splitting records: {type(ex).__name__}: {ex}"
            raise FramingError(msg, self._count, out) from ex
        if rest:
            self._parts, self._size = [rest], len(rest)
        return out

    def _frame(self, buf: bytes, out: list[Framed], final: bool) -> bytes:
        """Frame ``buf`` into ``out``; return the bytes to hold for later."""
        n, pos, batches = len(buf), 0, 1
        if self._scan is not None:
            pos = self._scan.run(buf, 0)
            if pos < 0:
                return b""
            self._passed(out)
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos >= n:
                return b""
            c = buf[pos]
            if self._after or (self._first and c == 0x5D):
                if c == 0x2C and not self._first:  # ","
                    self._after, pos = False, pos + 1
                    continue
                if c == 0x5D:  # "]"
                    self._done, self._tail = True, buf[pos + 1:]
                    return b""
                msg = f"expected ',' or ']' after a record, found {buf[pos:pos + 20]!r}"
                raise FramingError(msg, self._count)
            if c != 0x7B:
                msg = f"expected a JSON object as record, found {buf[pos:pos + 20]!r}"
                raise FramingError(msg, self._count)
            self._first = False
            if batches and not self._tried:
                batches -= 1
                end = self._batch(buf, pos, out)
                if end >= 0:
                    pos = end
                    continue
            end = self._one(buf, pos, out, final)
            if end < 0:
                return b"" if self._scan is not None else buf[pos:]
            pos = end

    def _batch(self, buf: bytes, pos: int, out: list[Framed]) -> int:
        """Every element up to a real candidate end near the end of ``buf``, in one C call."""
        ends = [m.start() + 1 for m in
                self._candidate.finditer(buf, max(pos, len(buf) - _TAIL_BYTES))][-3:]
        likely = buf.rfind(self._next, pos) + 1 if self._next else 0
        if likely > pos and likely not in ends:
            ends.append(likely)
        for end in reversed(ends):
            if end - pos > self._max:
                return -1  # a long element among them may be too long: one at a time
            try:
                elems = _decode_raw_list(b"".join((b"[", memoryview(buf)[pos:end], b"]")))
            except (msgspec.DecodeError, RecursionError):
                continue  # a "}," inside a nested value, or nested too deep; keep looking
            out += [bytes(e) for e in elems]
            self._count += len(elems)
            self._after = True
            return end
        return -1

    def _one(self, buf: bytes, pos: int, out: list[Framed], final: bool) -> int:
        """The element starting at ``pos``: its end, or -1 (held for more bytes, or passed over)."""
        n = len(buf)
        end = -1
        if not self._next and (lead := _LEAD.match(buf, pos)) is not None:
            self._next = b"}," + lead[0]
        try:
            _decode_raw(memoryview(buf)[pos:])  # complete, but is it followed by "," or "]"?
        except msgspec.DecodeError as ex:
            end = self._end_from(buf, pos, str(ex))
        except RecursionError:
            return self._pass_over(buf, pos, "too_deep", out)
        if end == -2:  # msgspec did not say where it ends: scan for it
            scan = _Scan()
            end = scan.run(buf, pos)
            if end >= 0 and end - pos <= self._max:
                try:
                    _decode_raw(memoryview(buf)[pos:end])
                except msgspec.DecodeError as ex:
                    msg = f"a record is not valid JSON: {ex}"
                    raise FramingError(msg, self._count) from None
                except RecursionError:
                    return self._pass_over(buf, pos, "too_deep", out)
        if end < 0:
            if n - pos > self._max:
                return self._pass_over(buf, pos, "record_too_large", out)
            if self._by_hint:  # a likely end that was not one: not heard again for this element
                self._hint = False
            elif not self._tried:
                self._hint = True
            self._tried = 0 if final else n - pos
            return -1
        self._tried, self._by_hint = 0, False
        if end - pos > self._max:
            return self._pass_over(buf, pos, "record_too_large", out)
        out.append(buf[pos:end])
        self._count += 1
        self._after = True
        return end

    def _end_from(self, buf: bytes, pos: int, msg: str) -> int:
        """The element's end from a decode error: -1 truncated, -2 unknown; raises if malformed."""
        m = _TRAILING.fullmatch(msg)
        if m is None:
            if msg.startswith("Input data was truncated"):
                return -1
            bad = _MALFORMED.fullmatch(msg)
            if bad is not None and int(bad[1]) + 1 >= len(buf) - pos:
                return -1  # malformed where the bytes end (in a number, say): may go on
            if msg.startswith("JSON is malformed"):
                msg = f"a record is not valid JSON: {msg}"
                raise FramingError(msg, self._count)
            return -2
        if _SHIFT is None:
            return -2
        end = t = pos + int(m[1]) - _SHIFT
        while end > pos and buf[end - 1] in b" \t\r\n":
            end -= 1
        if not (pos < end < t + 1 <= len(buf) and buf[end - 1] == 0x7D and buf[t] not in b" \t\r\n"):
            return -2
        return end

    def _pass_over(self, buf: bytes, pos: int, code: str, out: list[Framed]) -> int:
        """Walk the element at ``pos`` to its end without holding it; -1 if it goes on."""
        self._scan, self._scan_code, self._tried = _Scan(), code, 0
        end = self._scan.run(buf, pos)
        if end >= 0:
            self._passed(out)
        return end

    def _passed(self, out: list[Framed]) -> None:
        scan, self._scan = self._scan, None
        assert scan is not None
        if self._scan_code == "too_deep" and scan.size <= self._max:
            reason = ("record nested deeper than the JSON decoder's limit (about 1000 levels); "
                      "skipped")
            out.append(UnreadableRecord(self._count, reason, "too_deep", scan.head, scan.size))
        else:
            out.append(_too_large(self._count, scan, self._max))
        self._count += 1
        self._after = True

    def _shape_error(self) -> str:
        if self._key is None:
            return "expected a JSON array of objects ('[{...}, ...]')"
        return f'expected a JSON object whose first key is "{self._key}" holding an array'
