"""The columnar path: runs of tabular log lines decoded, mapped and encoded by polars.

The line path (a :class:`~operators.formats.TextFormat`'s ``parse``, then
:meth:`Mapper.row_dict <operators.schema.Mapper.row_dict>` and
:meth:`~operators.schema.Mapper.encode`) does one line at a time in Python. For a run of
lines of one object, a format's columns class does the same work as polars expressions
over the whole run and writes each row's JSON with the columns in the table's order, the
fields no column reads in the ``*`` column and the record id, so that the rows are the
line path's byte for byte:

- :class:`VpcFlowColumns`: VPC flow logs read against one field list (a header line or the
  declared fields): split the fields, ``-`` as no value, numbers, epoch seconds as ISO 8601;
- :class:`PatternColumns` (:func:`alb_columns`, :func:`nlb_columns`: load balancer access
  logs onto their standard tables, AWS's text as written, addresses split for ALB;
  :func:`s3access_columns`: S3 server access logs): one pattern with named groups takes a
  line whole (:func:`_pattern_rows`).

A line it cannot vouch for is left to the line path, which gives its row or its error record
with the reason exactly as before. For VPC flow logs: anything but printable ASCII (or a
``"`` or ``\\``, which JSON escapes), other whitespace than single spaces, a
``{"message": ...}`` line, a field count that differs from the field list, a number field
that is not digits (or has a leading zero, or more than 18), a required column without a
value, epoch milliseconds, a string value the mapper would cut (over 16 KiB), a row over the
largest one a request takes. A field list the plan does not cover (a column reading a
nested path, a number column fed by a string field, ...) leaves the whole run to the line
path. The pattern-based formats say what they refuse in their own docstrings.

Which path a run takes is decided per run (:data:`MIN_RUN`): for a few lines the fixed cost
of building frames is more than the line path's work (``bench/formats.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dataflow.core.lazy import lazy_import
from operators.formats.vpcflow import INT_FIELDS, VpcFlowFormat
from operators.tabledef import TableDef

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_import("polars")  # imported on first use: most flows never need it

__all__ = ["MIN_RUN", "Columns", "PatternColumns", "VpcFlowColumns", "alb_columns", "columns_for",
           "nlb_columns", "s3access_columns"]

MIN_RUN = 80
"""Fewest lines a run needs for the columnar path: it has a fixed cost of about a
millisecond a run (measured per row, default format: 48 lines 25 µs columnar vs 20 µs
line path, 64 lines 20 vs 20, 128 lines 11 vs 21, 512 lines 5 vs 20)."""

_MAX_FIELD = 16384
"""The mapper cuts longer strings (with a marker): such a line takes the line path."""
_TEXT = r"[!#-\[\]-~]+"
"""A text field the columnar path takes: printable ASCII but space, quote and backslash
(which JSON escapes); anything else (other whitespace, which the line path's ``split()``
splits on, or bytes that are not ASCII) leaves the line to the line path."""
_NUMBER = r"(?:0|[1-9][0-9]{0,17}|-)"
"""A number field the columnar path takes: digits without a leading zero (so the text is the
int's JSON as it is), at most 18 of them, or ``-``."""
_SECONDS = r"(?:0|[1-9][0-9]{0,10}|-)"
"""A number field read as epoch seconds: below the mapper's milliseconds threshold."""


@dataclass(frozen=True)
class _Plan:
    """How the fields of one field list become one table's row."""

    names: tuple[str, ...]
    pieces: tuple[tuple[str, int, str], ...]
    """(column, field position, how: ``str``, ``int``, ``int_str`` (a number kept as text)
    or ``time``), in the table's column order."""
    required: tuple[int, ...]
    """Positions of fields that feed a required column."""
    rest: tuple[int, ...]
    """Positions of fields no column reads (into the ``*`` column, in field order)."""


class VpcFlowColumns:
    """Maps runs of VPC flow log lines onto rows of one table, as the line path would.

    :arg table: The table (AWSVPCFlow, or a custom table fed by ``vpcflow``).
    :arg max_row: Largest encoded row; a longer one takes the line path (which refuses it).
    """

    def __init__(self, table: TableDef, max_row: int) -> None:
        self._table = table
        self._max_row = max_row
        self._plans: dict[tuple[str, ...], _Plan | None] = {}
        self._steps: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self._rest = next((c.name for c in table.columns if c.source == ("*",)), None)

    def plan_for(self, parser: VpcFlowFormat, header: tuple[bytes, ...]) -> _Plan | None:
        """The plan of the lines under ``header`` (None: the line path; each record's own
        field count decides its fields when there is no header and nothing declared)."""
        names = parser.field_names(header)
        return self.plan(names) if names is not None else None

    def plan(self, names: tuple[str, ...]) -> _Plan | None:
        """The plan of a field list; None when the line path must do it (see the module)."""
        if names not in self._plans:
            if len(self._plans) >= 256:  # one per distinct field list; bounded anyway
                self._plans.clear()
            self._plans[names] = self._make(names)
        return self._plans[names]

    def _make(self, names: tuple[str, ...]) -> _Plan | None:
        if len(set(names)) != len(names):
            return None
        where = {n: i for i, n in enumerate(names)}
        pieces: list[tuple[str, int, str]] = []
        required: list[int] = []
        read: set[str] = set()
        for c in self._table.columns:
            if c.source == ("*",):
                continue
            if len(c.source) != 1 or c.json or c.allowed is not None:
                return None
            field = c.source[0]
            read.add(field)
            pos = where.get(field)
            if pos is None:
                if c.required:
                    return None  # every line is an error record: the line path says why
                continue
            number = field in INT_FIELDS
            if c.type == "string":
                how = "int_str" if number else "str"
            elif c.type in ("int", "long") and number:
                how = "int"
            elif c.type == "datetime" and number:
                how = "time"
            else:
                return None
            pieces.append((c.name, pos, how))
            if c.required:
                required.append(pos)
        rest = tuple(i for i, n in enumerate(names) if n not in read) if self._rest else ()
        return _Plan(names, tuple(pieces), tuple(required), rest)

    def map_run(self, lines: list[bytes], plan: _Plan, id_prefix: str,
                offsets: list[int]) -> list[bytes]:
        """The rows of ``lines`` (record ids ``id_prefix + offset``); ``b""`` for a line
        left to the line path."""
        steps = self._steps.get(plan.names)
        if steps is None:
            if len(self._steps) >= 256:
                self._steps.clear()
            steps = self._steps[plan.names] = self._build(plan)
        split, nulls, times, pieces, bad = steps
        text = b"\n".join(lines).decode("latin-1")  # not ASCII: refused below, line path
        record_id = pl.concat_str([pl.lit(f'"{self._table.record_id_column}":"{id_prefix}'),
                                   pl.col("o").cast(pl.String), pl.lit('"')])
        row = pl.concat_str([pl.lit("{"), pl.concat_str([*pieces, record_id], separator=",",
                                                        ignore_nulls=True), pl.lit("}")])
        query = pl.LazyFrame({
            "l": pl.Series([text]).str.split("\n").explode(empty_as_null=False),
            "o": pl.Series(offsets, dtype=pl.Int64)}).with_columns(split).unnest("s")
        query = query.with_columns(nulls)
        if times:
            query = query.with_columns(times)
        query = query.with_columns(row.alias("r")).select(
            pl.when(bad | (pl.col("r").str.len_bytes() > self._max_row))
            .then(pl.lit("")).otherwise(pl.col("r")).alias("r"))
        out = query.collect()
        return out["r"].str.join("\n").item().encode().split(b"\n")

    def _build(self, plan: _Plan) -> tuple[list[pl.Expr], list[pl.Expr], list[pl.Expr],
                                           list[pl.Expr], pl.Expr]:
        """The expressions of a plan (built once per field list): split and check the lines,
        no value for ``-``, the times, the row's pieces but the record id, what sends a line
        to the line path."""
        n = len(plan.names)
        fields = [f"f{i}" for i in range(n)]
        numbers = {i for i, name in enumerate(plan.names) if name in INT_FIELDS}
        times = sorted({i for _, i, how in plan.pieces if how == "time"})
        # One pattern checks a line whole: the field count, single spaces, printable ASCII
        # without quote or backslash, digits (or -) in the number fields, seconds (not
        # milliseconds, which the mapper reads otherwise) in the time fields.
        shape = "^" + " ".join(_SECONDS if i in times else _NUMBER if i in numbers else _TEXT
                               for i in range(n)) + "$"
        line = pl.col("l")
        split = [line.str.split_exact(" ", n - 1).struct.rename_fields(fields).alias("s"),
                 (~line.str.contains(shape) | (line.str.len_bytes() > _MAX_FIELD)
                  | line.str.starts_with("{")).alias("bad")]
        nulls = [pl.when(pl.col(f) != "-").then(pl.col(f)).alias(f) for f in fields]
        bad = pl.col("bad")
        for i in plan.required:
            bad = bad | pl.col(fields[i]).is_null()
        # Epoch seconds, as the mapper writes them.
        time_exprs = [pl.from_epoch(pl.col(fields[i]).cast(pl.Int64, strict=False), time_unit="s")
                      .dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias(f"t{i}") for i in times]
        pieces: list[pl.Expr] = []
        for name, i, how in plan.pieces:
            if how in ("str", "int_str"):  # a number's text is its JSON (no leading zero)
                pieces.append(pl.concat_str([pl.lit(f'"{name}":"'), pl.col(fields[i]),
                                             pl.lit('"')]))
            elif how == "int":
                pieces.append(pl.concat_str([pl.lit(f'"{name}":'), pl.col(fields[i])]))
            else:
                pieces.append(pl.concat_str([pl.lit(f'"{name}":"'), pl.col(f"t{i}"),
                                             pl.lit('"')]))
        if plan.rest:
            parts = [pl.concat_str([pl.lit(f'"{plan.names[i]}":'), pl.col(fields[i])])
                     if i in numbers else
                     pl.concat_str([pl.lit(f'"{plan.names[i]}":"'), pl.col(fields[i]),
                                    pl.lit('"')])
                     for i in plan.rest]
            body = pl.concat_str(parts, separator=",", ignore_nulls=True)
            pieces.append(pl.when(body != "").then(
                pl.concat_str([pl.lit(f'"{self._rest}":{{'), body, pl.lit("}")])))
        return split, nulls, time_exprs, pieces, bad


@dataclass(frozen=True)
class _Pattern:
    """A pattern with named groups that takes a format's lines whole, and the row's JSON
    members it writes from them."""

    shape: str
    pieces: list[pl.Expr]
    bad: list[pl.Expr]
    """Which lines the line path takes anyway, though the pattern took them."""
    first: str
    """A group every line the pattern takes has (null: the pattern did not take it)."""


class PatternColumns:
    """The columnar path of a format whose lines one pattern takes whole (load balancer and
    S3 server access logs), built once from the table by ``make``.

    :arg table: The table the rows are for.
    :arg max_row: Largest encoded row; a longer one takes the line path.
    :arg make: The format's pattern for ``table``; None when the table has a column it
        does not cover (the line path then takes every run).
    """

    def __init__(self, table: TableDef, max_row: int,
                 make: Callable[[TableDef], _Pattern | None]) -> None:
        self._table = table
        self._max_row = max_row
        self._make = make
        self._pattern: _Pattern | None | object = _UNPLANNED

    def plan_for(self, parser: object, header: tuple[bytes, ...]) -> _Pattern | None:
        """The pattern (one for every line: these formats have no header)."""
        if self._pattern is _UNPLANNED:
            self._pattern = self._make(self._table)
        return self._pattern  # type: ignore[return-value]

    def map_run(self, lines: list[bytes], plan: _Pattern, id_prefix: str,
                offsets: list[int]) -> list[bytes]:
        """The rows of ``lines`` (record ids ``id_prefix + offset``); ``b""`` for a line
        left to the line path."""
        return _pattern_rows(lines, offsets, plan,
                             f'"{self._table.record_id_column}":"{id_prefix}', self._max_row)


def alb_columns(table: TableDef, max_row: int) -> PatternColumns:
    """Application Load Balancer access log lines onto AWSALBAccessLogs, as the line path
    maps them (:class:`~operators.formats.elb.AlbFormat`, whose records for that standard
    table keep AWS's own text: numbers and times as written, the request line whole,
    addresses split into address and port).

    One pattern takes a line whole: every field of its field list (the 17 of the first
    format, then those AWS added, in order), bare ones without a quote, quoted ones without
    a quote inside, single spaces between. Anything else takes the line path: a backslash
    (escapes), a character below space (tabs, which its split treats as spaces), bytes that
    are not UTF-8, a bracketed IPv6 address, a number or port with a leading zero, a time
    without its ``Z``, more fields than the list, a line over 16 KiB or a row over the
    request limit; and so does a time that does not exist (checked by polars).
    """
    return PatternColumns(table, max_row, _alb_pattern)


def s3access_columns(table: TableDef, max_row: int) -> PatternColumns:
    """S3 server access log lines onto their table's rows, as the line path maps them
    (:class:`~operators.formats.s3access.S3AccessFormat`).

    One pattern takes a line whole: the 17 fields through the user agent, then those AWS
    added, bare fields without a quote or bracket, the time in brackets at ``+0000`` (S3
    writes UTC), the request line, referrer and user agent quoted without a quote inside
    (or a bare ``-``), single spaces; fields past the known ones are ignored, as there.
    Anything else takes the line path: escapes, other offsets, a time out of range, a
    number with a leading zero, bytes that are not UTF-8, control characters.
    """
    return PatternColumns(table, max_row, _s3access_pattern)


def nlb_columns(table: TableDef, max_row: int) -> PatternColumns:
    """Network Load Balancer (TLS) access log lines onto AWSNLBAccessLogs, as the line path
    maps them (:class:`~operators.formats.elb.NlbFormat`: that standard table keeps AWS's
    text, numbers, addresses and times as written; TimeGenerated is the time as ISO 8601 UTC).

    One pattern takes a line whole: the 21 fields every line has, then
    ``tls_connection_creation_time``, bare values without a quote (but the ALPN preference
    list, written with quotes of its own, escaped for JSON here), numbers, ``address:port``
    (or ``[address]:port``), times to the second (with or without ``Z``), single spaces;
    fields past the known ones are ignored, as there. Anything else takes the line path.
    """
    return PatternColumns(table, max_row, _nlb_pattern)


def _alb_pattern(table: TableDef) -> _Pattern | None:
    """The pattern of ALB access log lines onto AWSALBAccessLogs (see
    :func:`alb_columns`)."""
    from operators.formats.elb import ALB_FIELDS, ALB_MIN_FIELDS

    rest_column = next((c.name for c in table.columns if c.source == ("*",)), None)

    # (group names per field: how its text is read) -> pattern and value expressions
    kinds = dict(ALB_FIELDS)
    parts: list[str] = []
    values: dict[str, pl.Expr] = {}  # parser key -> its text (null: no value)
    times: list[str] = []
    for i, (name, kind) in enumerate(ALB_FIELDS):
        g = f"g{i}"
        if kind in ("bare",):
            part = f"(?P<{g}>[^ \"]+)"
            values[name] = _no_dash(pl.col(g))
        elif kind in ("quoted", "request"):
            part = f'(?:"(?P<{g}>[^"]*)"|(?P<{g}b>-))'
            values[name] = _no_dash(pl.col(g))
        elif kind == "str":
            part = f'(?:"(?P<{g}>[^"]*)"|(?P<{g}b>[^ "]+))'
            values[name] = _no_dash(pl.coalesce(pl.col(g), pl.col(f"{g}b")))
        elif kind == "int":
            part = f"(?P<{g}>-?(?:0|[1-9][0-9]{{0,17}})|-)"
            values[name] = _no_dash(pl.col(g))
        elif kind == "real":
            part = f"(?P<{g}>-?[0-9]+(?:\\.[0-9]+)?|-)"
            values[name] = _no_dash(pl.col(g))
        elif kind == "time":
            part = f"(?P<{g}>{_ALB_TIME}|-)"
            values[name] = _no_dash(pl.col(g))
            times.append(name)
        elif kind == "addr":
            part = f"(?:(?P<{g}>[0-9A-Fa-f:.]+):(?P<{g}p>0|[1-9][0-9]{{0,4}})|-)"
            values[f"{name}_ip"] = pl.col(g)
            values[f"{name}_port"] = pl.col(f"{g}p")
        else:
            return None
        parts.append(part)
    required = " ".join(parts[:ALB_MIN_FIELDS])
    tail = ""
    for part in reversed(parts[ALB_MIN_FIELDS:]):
        tail = f"(?: {part}{tail})?"
    shape = f"^{required}{tail}$"
    # The request line is kept when some part of it is not "-" (a Classic TCP listener's
    # "- - - " is no request).
    values["request"] = pl.when(values["request"].str.contains(r"(?:^| )(?:[^ \-]|-[^ ])")
                                ).then(values["request"])
    ints = {n for n, k in kinds.items() if k == "int"} | {"client_port", "target_port"}
    members = _members(table, values, ints, {n: values[n] for n in times})
    if members is None:
        return None
    pieces, bad, read = members
    for name in times:  # a time that does not exist is the line path's error
        v = values[name]
        bad.append(v.is_not_null() & v.str.to_datetime(
            "%Y-%m-%dT%H:%M:%S%.fZ", strict=False).is_null())
    rest = [(n, v) for n, v in values.items() if n not in read]
    if rest_column is not None and rest:
        if any(n.endswith(("_ip", "_port")) for n, _ in rest):
            return None  # a port is an int there: not what the pieces below write
        # As written: the fields no column reads are text in the record.
        body = pl.concat_str([pl.concat_str([pl.lit(f'"{n}":"'), v, pl.lit('"')])
                              for n, v in rest], separator=",", ignore_nulls=True)
        pieces.append(pl.when(body != "").then(
            pl.concat_str([pl.lit(f'"{rest_column}":{{'), body, pl.lit("}")])))
    return _Pattern(shape, pieces, bad, "g0")


def _members(table: TableDef, values: dict[str, pl.Expr], ints: set[str],
             times: dict[str, pl.Expr]) -> tuple[list[pl.Expr], list[pl.Expr], set[str]] | None:
    """The row's JSON members, in the table's column order, from the record's text
    ``values`` (by record key): a string column quoted, an int/long column of a key in
    ``ints`` as the number it is, a datetime column of a key in ``times`` as that ISO 8601
    text; with which lines the line path takes (a required column without a value) and the
    keys the columns read. None when a column is none of those (the line path then)."""
    pieces: list[pl.Expr] = []
    bad: list[pl.Expr] = []
    read: set[str] = set()
    for c in table.columns:
        if c.source == ("*",):
            continue
        if len(c.source) != 1 or c.json or c.allowed is not None or c.truncate:
            return None
        key = c.source[0]
        read.add(key)
        v = values.get(key)
        if v is None:
            if c.required:
                return None
            continue
        if c.type == "datetime" and key in times:
            v = times[key]
        elif c.type in ("int", "long") and key in ints:
            pieces.append(pl.concat_str([pl.lit(f'"{c.name}":'), v]))
            v = None
        elif c.type != "string":
            return None
        if v is not None:
            pieces.append(pl.concat_str([pl.lit(f'"{c.name}":"'), v, pl.lit('"')]))
        if c.required:
            bad.append(values[key].is_null())
    return pieces, bad, read


def _pattern_rows(lines: list[bytes], offsets: list[int], pattern: _Pattern, id_head: str,
                  max_row: int) -> list[bytes]:
    """The rows of the lines ``pattern`` takes whole; ``b""`` for the others, and for lines
    with a backslash, a control character, more than 16 KiB or bytes that are not UTF-8."""
    shape, pieces, bad, first = pattern.shape, pattern.pieces, pattern.bad, pattern.first
    try:
        text = b"\n".join(lines).decode("utf-8")
    except UnicodeDecodeError:  # the line paths keep such bytes as \xNN escapes
        return [b""] * len(lines)
    line = pl.col("l")
    record_id = pl.concat_str([pl.lit(id_head), pl.col("o").cast(pl.String), pl.lit('"')])
    row = pl.concat_str([pl.lit("{"), pl.concat_str([*pieces, record_id], separator=",",
                                                    ignore_nulls=True), pl.lit("}")])
    unsafe = line.str.contains(r"[\x00-\x1f\x7f\\]") | (line.str.len_bytes() > _MAX_FIELD)
    query = pl.LazyFrame({
        "l": pl.Series([text]).str.split("\n").explode(empty_as_null=False),
        "o": pl.Series(offsets, dtype=pl.Int64)}).with_columns(
        line.str.extract_groups(shape).alias("s"), unsafe.alias("unsafe")).unnest("s")
    refused = pl.col("unsafe") | pl.col(first).is_null()
    for b in bad:
        refused = refused | b.fill_null(False)
    out = query.with_columns(row.alias("r")).select(
        pl.when(refused | (pl.col("r").str.len_bytes() > max_row))
        .then(pl.lit("")).otherwise(pl.col("r")).alias("r")).collect()
    return out["r"].str.join("\n").item().encode().split(b"\n")


def _s3access_pattern(table: TableDef) -> _Pattern | None:
    """The pattern of S3 server access log lines (see :func:`s3access_columns`)."""
    from operators.formats.s3access import FIELDS, MIN_FIELDS

    quoted = {"request_uri", "referer", "user_agent"}
    numbers = {"http_status", "bytes_sent", "object_size", "total_time",
               "turn_around_time"}
    parts: list[str] = []
    values: dict[str, pl.Expr] = {}
    for i, name in enumerate(FIELDS):
        g = f"g{i}"
        if name == "time":
            # As the line path writes a +0000 time: the fields in range, as they are
            # (it checks no more than that at +0000: 31/Feb is written as it comes).
            part = (r"\[(?P<td>0[1-9]|[12][0-9]|3[01])/(?P<tm>[A-Z][a-z]{2})/"
                    r"(?P<ty>[0-9]{4}):(?P<th>[01][0-9]|2[0-3]):(?P<tn>[0-5][0-9]):"
                    r"(?P<ts>[0-5][0-9]) \+0000\]")
            month = pl.col("tm").replace_strict(_MONTHS, default=None)
            values[name] = pl.concat_str(
                [pl.col("ty"), pl.lit("-"), month, pl.lit("-"), pl.col("td"), pl.lit("T"),
                 pl.col("th"), pl.lit(":"), pl.col("tn"), pl.lit(":"), pl.col("ts"),
                 pl.lit("Z")])
            parts.append(part)
            continue
        if name in quoted:
            part = f'(?:"(?P<{g}>[^"]*)"|(?P<{g}b>-))'
        elif name in numbers:
            part = f"(?P<{g}>0|[1-9][0-9]{{0,17}}|-)"
        else:
            part = f'(?P<{g}>[^ "\\[\\]]+)'
        value = pl.col(g)
        if name == "bytes_sent":  # "-" is zero bytes sent (AWS's definition)
            values[name] = pl.when(value.is_null() | (value == "-") | (value == "")
                                   ).then(pl.lit("0")).otherwise(value)
        else:
            values[name] = pl.when((value != "-") & (value != "")).then(value)
        parts.append(part)
    # Fields past the known ones are ignored (as there), only after all of them: a
    # later field that does not fit must fail the line, not end it early.
    tail = "(?: .*)?"
    for part in reversed(parts[MIN_FIELDS:]):
        tail = f"(?: {part}{tail})?"
    shape = "^" + " ".join(parts[:MIN_FIELDS]) + tail + "$"
    members = _members(table, values, numbers, {"time": values["time"]})
    if members is None:
        return None
    pieces, bad, _ = members
    return _Pattern(shape, pieces, [values["time"].is_null(), *bad], "td")


def _nlb_pattern(table: TableDef) -> _Pattern | None:
    """The pattern of NLB access log lines onto AWSNLBAccessLogs (see
    :func:`nlb_columns`)."""
    from operators.formats.elb import NLB_FIELDS, NLB_MIN_FIELDS

    parts: list[str] = []
    values: dict[str, pl.Expr] = {}
    times: list[str] = []
    for i, (name, kind) in enumerate(NLB_FIELDS):
        g = f"g{i}"
        if kind == "time":
            part = f"(?P<{g}>{_SECOND}Z?|-)"
            times.append(name)
        elif kind == "int":
            part = f"(?P<{g}>-?[0-9]+|-)"
        elif kind == "addr":
            part = (f"(?P<{g}>(?:\\[[0-9A-Fa-f:.]+\\]|[0-9A-Fa-f:.]+):[0-9]{{1,5}}|-)")
        elif name == "alpn_client_preference_list":
            part = f"(?P<{g}>[^ ]+)"
        elif kind == "bare":
            part = f'(?P<{g}>[^ "]+)'
        else:
            return None
        value: pl.Expr = pl.when(pl.col(g) != "-").then(pl.col(g))
        if name == "alpn_client_preference_list":  # its own quotes, escaped for JSON
            value = value.str.replace_all('"', '\\"', literal=True)
        values[name] = value
        parts.append(part)
    tail = "(?: .*)?"
    for part in reversed(parts[NLB_MIN_FIELDS:]):
        tail = f"(?: {part}{tail})?"
    shape = "^" + " ".join(parts[:NLB_MIN_FIELDS]) + tail + "$"
    bad: list[pl.Expr] = []
    for name in times:  # a time that does not exist is the line path's error
        v = values[name]
        bad.append(v.is_not_null() & v.str.strip_suffix("Z").str.to_datetime(
            "%Y-%m-%dT%H:%M:%S", strict=False).is_null())
    # A datetime column gets the time as ISO 8601 UTC: with its Z.
    members = _members(table, values, set(), {
        n: pl.when(values[n].str.ends_with("Z")).then(values[n]).otherwise(values[n] + "Z")
        for n in times})
    if members is None:
        return None
    pieces, more, _ = members
    return _Pattern(shape, pieces, bad + more, "g0")


_SECOND = r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"


_MONTHS = {m: f"{i:02d}" for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_UNPLANNED = object()
_ALB_TIME = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?Z")


def _no_dash(v: pl.Expr) -> pl.Expr:
    """No value for ``-`` (and an empty quoted value), as the parser leaves such fields out."""
    return pl.when((v != "-") & (v != "")).then(v)


class Columns(Protocol):
    """A format's columnar path (:class:`VpcFlowColumns`, :class:`PatternColumns`)."""

    def plan_for(self, parser: Any, header: tuple[bytes, ...]) -> Any:
        """How the lines under ``header`` are mapped; None: the line path."""

    def map_run(self, lines: list[bytes], plan: Any, id_prefix: str,
                offsets: list[int]) -> list[bytes]:
        """The rows of ``lines``; ``b""`` for a line left to the line path."""


def columns_for(parser: object, table: TableDef,
                max_row: int) -> VpcFlowColumns | PatternColumns | None:
    """The columnar path of a route's records, when its format and table have one."""
    from operators.formats.elb import AlbFormat, NlbFormat
    from operators.formats.s3access import S3AccessFormat

    if isinstance(parser, VpcFlowFormat):
        return VpcFlowColumns(table, max_row)
    if isinstance(parser, AlbFormat) and parser.table == parser.standard_table == table.name:
        return alb_columns(table, max_row)
    if isinstance(parser, S3AccessFormat):
        return s3access_columns(table, max_row)
    if isinstance(parser, NlbFormat) and parser.table == parser.standard_table == table.name:
        return nlb_columns(table, max_row)
    return None
