"""CSV with a header line, and delimited lines with a declared field list.

CSV follows RFC 4180 quoting (``csv`` module) but one record per line: a quoted field
holding a line break is not supported (the line framer has already split it) and is
reported as a parse error. Delimited lines split on a single character and take their
field names from the config (the seed's pipe-delimited firewall and VPN logs).
"""

from __future__ import annotations

import csv
from typing import Any

from operators.formats import ParseError

__all__ = ["CsvFormat", "DelimitedFormat"]


def _text(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as ex:
        msg = f"not UTF-8 text (byte {ex.start})"
        raise ParseError(msg, "not_utf8") from None


def _record(names: list[str], values: list[str]) -> dict[str, Any]:
    return {k: v for k, v in zip(names, values, strict=False) if v not in ("", "-")}


class CsvFormat:
    """CSV; field names from the first line, unless ``fields`` are given.

    :arg fields: Field names, when the objects have no header line.
    :arg delimiter: One character (default ``,``).
    """

    name = "csv"

    def __init__(self, fields: list[str] | None = None, delimiter: str = ",") -> None:
        self._fields = list(fields or [])
        self._delimiter = delimiter or ","
        self.header_lines = 0 if self._fields else 1

    def is_header(self, line: bytes) -> bool:
        return False  # the header is the first line (header_lines), not a kind of line

    def _split(self, line: bytes) -> list[str]:
        try:
            rows = list(csv.reader([_text(line)], delimiter=self._delimiter, strict=True))
        except csv.Error as ex:
            msg = f"malformed CSV: {ex}"
            raise ParseError(msg, "malformed_csv") from None
        return rows[0] if rows else []

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        names = self._fields or (self._split(header[0]) if header else [])
        if not names:
            msg = "no CSV header line before this record"
            raise ParseError(msg, "no_header")
        values = self._split(line)
        if len(values) != len(names):
            msg = f"expected {len(names)} fields (from the header), got {len(values)}"
            raise ParseError(msg, "field_count")
        return _record(names, values)


class DelimitedFormat:
    """Lines split on one character, with the field names declared in the config.

    Extra trailing fields are an error; missing trailing fields are absent values.
    """

    name = "delimited"
    header_lines = 0

    def __init__(self, fields: list[str], delimiter: str = "|") -> None:
        if not fields:
            msg = "the delimited format needs a field list (sources.fields)"
            raise ValueError(msg)
        self._fields = fields
        self._delimiter = delimiter or "|"

    def is_header(self, line: bytes) -> bool:
        return line.startswith(b"#")

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        values = [v.strip() for v in _text(line).split(self._delimiter)]
        if len(values) > len(self._fields):
            msg = f"expected at most {len(self._fields)} fields, got {len(values)}"
            raise ParseError(msg, "field_count")
        return _record(self._fields, values)
