"""Amazon CloudFront standard logs (legacy): W3C extended log files, tab-separated.

CloudFront writes each object (gzip) with two header lines, then one request per line::

    #Version: 1.0
    #Fields: date time x-edge-location sc-bytes c-ip cs-method cs(Host) cs-uri-stem ...
    2019-12-04<TAB>21:02:31<TAB>LAX1<TAB>392<TAB>192.0.2.100<TAB>GET<TAB>...

Every line starting with ``#`` is a header (:meth:`CloudFrontFormat.is_header`). Values
are read in the order of the last ``#Fields:`` line seen in the object, or of the
documented 33-field default (:data:`DEFAULT_FIELDS`) when the object has none. Empty
values after the last field (a trailing tab, as in one of the documentation's own
examples) are ignored; more values than fields is an error naming both counts.

Fewer values than fields: CloudFront has added fields at the end of the line over the
years, so an older line under a newer ``#Fields`` line (a merged or rewritten object) has
the first fields only. The values present are read against the first field names, the
missing columns are left empty and counted (``s3sentinel_fields_missing_total{table}``).
Such a line is an error (``field_count``) only when what is present cannot be aligned:
fewer than the :data:`MIN_FIELDS` of the first log format (through ``cs-uri-query``), or a
value that does not fit its field (a number field that is not a number, a date or time
that does not parse), which says the values are not the first fields.

Parser keys are the W3C field names exactly as the ``#Fields:`` line writes them
(``cs(Host)``, ``cs-uri-stem``, ``x-edge-location``): none holds a dot, so each is a
valid table ``source``. ``date-time`` is added: ``date`` and ``time`` (UTC, the time the
server finished responding) as ISO 8601 UTC, ``2019-12-04T21:02:31Z``. Numbers become
ints (``sc-status``, byte counts and lengths, ``c-port``, ``sc-range-*``,
``fle-encrypted-fields``; ``sc-status`` ``000``, the viewer closed the connection before
a response, is 0) or floats (``time-taken``, ``time-to-first-byte``, in seconds). ``-``
means no value and leaves the field out. A field this module does not know is kept as a
(decoded) string under its own name.

URL encoding: CloudFront writes ASCII 0-32 and 127 and up, and ``< > " # % { } | \\ ^ ~ [
] ` '`` and space as ``%XX``, so every value is percent-decoded once (``+`` is not a
space; an invalid ``%`` escape is kept as written; bytes that are not UTF-8 become
``\\xNN``). Because ``%`` itself is encoded, escapes the viewer sent arrive doubled: a
request for ``/a%20b.png`` is logged as ``/a%2520b.png`` and decodes to ``/a%20b.png``,
the URI as the viewer sent it. ``cs-uri-stem``, ``cs-uri-query``, ``cs(Referer)`` and
``cs(Cookie)`` are URIs or hold URL-encoded values of their own, so they are decoded
that once only (decoding further would make ``%2F`` and ``/``, or ``%26`` and ``&``, the
same). The user agent is plain text, and CloudFront has been seen to double-encode its
space, quote and backslash (``Tiny%2520Tiny%2520RSS``, as other parsers of these logs
found); in ``cs(User-Agent)`` ``%2520``, ``%2522`` and ``%255C`` are decoded to `` ``,
``"`` and ``\\``. (A user agent that really contained ``%20`` reads as a space: it cannot
be told apart.)

Source: "Standard logging reference" / "Log file fields" and "Configure standard logging
(legacy)" in the Amazon CloudFront Developer Guide
(https://docs.aws.amazon.com/AmazonCloudFront/latest/DeveloperGuide/standard-logs-reference.html).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote_to_bytes

from dataflow.core.metrics import FIELDS_MISSING
from operators.formats import ParseError

__all__ = ["DEFAULT_FIELDS", "INT_FIELDS", "MIN_FIELDS", "REAL_FIELDS", "CloudFrontFormat"]

DEFAULT_FIELDS = (
    "date", "time", "x-edge-location", "sc-bytes", "c-ip", "cs-method", "cs(Host)",
    "cs-uri-stem", "sc-status", "cs(Referer)", "cs(User-Agent)", "cs-uri-query", "cs(Cookie)",
    "x-edge-result-type", "x-edge-request-id", "x-host-header", "cs-protocol", "cs-bytes",
    "time-taken", "x-forwarded-for", "ssl-protocol", "ssl-cipher",
    "x-edge-response-result-type", "cs-protocol-version", "fle-status", "fle-encrypted-fields",
    "c-port", "time-to-first-byte", "x-edge-detailed-result-type", "sc-content-type",
    "sc-content-len", "sc-range-start", "sc-range-end",
)
"""The 33 fields of a distribution's standard log, in the documented order."""

MIN_FIELDS = 12
"""Values a line shorter than its ``#Fields`` line must have: the first format's, ``date``
through ``cs-uri-query`` (``cs(Cookie)`` and everything after were added later)."""

INT_FIELDS = frozenset({"sc-bytes", "sc-status", "cs-bytes", "fle-encrypted-fields", "c-port",
                        "sc-content-len", "sc-range-start", "sc-range-end"})
"""Fields whose values are integers."""

REAL_FIELDS = frozenset({"time-taken", "time-to-first-byte"})
"""Fields whose values are seconds with a fraction."""

_USER_AGENT = "cs(User-Agent)"
_FIELDS_PREFIX = b"#Fields:"
_INT, _REAL, _UA, _STR = "int", "real", "ua", "str"
_DOUBLED = re.compile(r"%25(20|22|5[Cc])")
_DOUBLED_CHARS = {"20": "%20", "22": "%22", "5C": "%5C", "5c": "%5C"}
_INT_TEXT = re.compile(r"-?[0-9]+")
_REAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_TIME = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2})")
_Layout = tuple[tuple[str, str], ...]
"""(field name, kind) per position."""


def _layout(names: list[str] | tuple[str, ...]) -> _Layout:
    return tuple((n, _INT if n in INT_FIELDS else _REAL if n in REAL_FIELDS
                  else _UA if n == _USER_AGENT else _STR) for n in names)


_DEFAULT_LAYOUT = _layout(DEFAULT_FIELDS)


def _decode(value: str) -> str:
    """One round of percent-decoding, as UTF-8 (``\\xNN`` for bytes that are not)."""
    return unquote_to_bytes(value).decode("utf-8", "backslashreplace")


def _date_time(date: str, time: str) -> str:
    """``2019-12-04`` and ``21:02:31`` as ``2019-12-04T21:02:31Z``."""
    d, t = _DATE.fullmatch(date), _TIME.fullmatch(time)
    if d is None or t is None:
        msg = (f"date {date[:20]!r} and time {time[:20]!r} are not like 2019-12-04 and "
               "21:02:31")
        raise ParseError(msg, "bad_time")
    try:
        year, month, day, hour, minute, second = (int(x) for x in (*d.groups(), *t.groups()))
        datetime(year, month, day, hour, minute, second)  # noqa: DTZ001 (a check only)
    except ValueError:
        msg = f"date {date!r} and time {time!r} are not a valid date and time"
        raise ParseError(msg, "bad_time") from None
    return f"{date}T{time}Z"


class CloudFrontFormat:
    """CloudFront standard (legacy) log records, in the order of the object's ``#Fields:``."""

    name = "cloudfront"
    table = "AWSCloudFront_CL"
    """The table records map onto, the label of the fields-missing count."""

    def __init__(self) -> None:
        self._layouts: dict[bytes, _Layout] = {}

    def is_header(self, line: bytes) -> bool:
        """Whether ``line`` is a W3C directive (``#Version:``, ``#Fields:``, any ``#`` line)."""
        return line[:1] == b"#"

    def _layout_of(self, header: tuple[bytes, ...]) -> tuple[_Layout, bool]:
        """The layout of the last ``#Fields:`` line, and whether there was one."""
        for line in reversed(header):
            if line.startswith(_FIELDS_PREFIX):
                layout = self._layouts.get(line)
                if layout is None:
                    names = line[len(_FIELDS_PREFIX):].decode("utf-8", "replace").split()
                    if not names:
                        continue
                    if len(self._layouts) >= 256:  # one per distinct field list; bounded
                        self._layouts.clear()
                    layout = self._layouts[line] = _layout(names)
                return layout, True
        return _DEFAULT_LAYOUT, False

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one record (see the module docstring).

        :raises ParseError: A different number of fields than the ``#Fields:`` line names,
            a value that is not a number in a numeric field, or a date and time that do not
            parse.
        """
        layout, from_header = self._layout_of(header)
        values = line.decode("utf-8", "backslashreplace").split("\t")
        missing = 0
        if len(values) != len(layout):
            source = ("the #Fields line" if from_header
                      else "the documented default; the object has no #Fields line")
            if len(values) > len(layout) and any(values[len(layout):]):
                msg = (f"expected {len(layout)} tab-separated fields (from {source}), "
                       f"got {len(values)}")
                raise ParseError(msg, "field_count")
            if len(values) < min(MIN_FIELDS, len(layout)):
                msg = (f"expected {len(layout)} tab-separated fields (from {source}), got "
                       f"{len(values)}: fewer than the {MIN_FIELDS} every CloudFront log line "
                       "has, so the values cannot be matched to field names")
                raise ParseError(msg, "field_count")
            missing = max(0, len(layout) - len(values))
        try:
            rec = self._record(layout, values)
        except ParseError as ex:
            if not missing:
                raise
            msg = (f"{len(values)} of the {len(layout)} tab-separated fields: the values do not "
                   f"line up with the first {len(values)} field names ({ex.reason})")
            raise ParseError(msg, "field_count") from None
        if missing:
            FIELDS_MISSING.labels(table=self.table).inc(missing)
        return rec

    @staticmethod
    def _record(layout: _Layout, values: list[str]) -> dict[str, Any]:
        rec: dict[str, Any] = {}
        for (name, kind), value in zip(layout, values, strict=False):
            if value == "-" or not value:
                continue
            if kind == _STR:
                rec[name] = _decode(value) if "%" in value else value
            elif kind == _INT:
                if _INT_TEXT.fullmatch(value) is None:
                    msg = f"field {name!r} = {value[:40]!r} is not a number"
                    raise ParseError(msg, "not_a_number")
                rec[name] = int(value)
            elif kind == _REAL:
                if _REAL_TEXT.fullmatch(value) is None:
                    msg = f"field {name!r} = {value[:40]!r} is not a number"
                    raise ParseError(msg, "not_a_number")
                rec[name] = float(value)
            elif "%" in value:  # the user agent: undo the doubled space, quote, backslash too
                once = _DOUBLED.sub(lambda m: _DOUBLED_CHARS[m.group(1)], value)
                rec[name] = _decode(once)
            else:
                rec[name] = value
        date, time = rec.get("date"), rec.get("time")
        if date is not None and time is not None:
            rec["date-time"] = _date_time(date, time)
        return rec
