"""VPC Flow Logs delivered to S3 as text: space-separated fields named by a header line.

AWS writes each object (gzip) with one header line naming the fields of the flow log's
format, then one record per line (the default format; both lines wrapped here)::

    version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes
      start end action log-status
    2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 4249
      1418530010 1418530070 ACCEPT OK

The default format is the version 2 field list above; a custom format names any fields of
versions 2 to 8 (and later ones: a field this module does not know is kept as a string
under its own name). ``-`` means the field has no value for this record; NODATA and
SKIPDATA records (``log-status``) are ``-`` in most fields and are records like any other.
Which field list a record is read against, first that applies:

1. the object's header line (direct S3 delivery writes one);
2. the field list the source declares (``fields``: the flow log's AWS format string
   ``${version} ${account-id} ...``, or the names, as one string or a list), for objects
   without a header (CloudWatch Logs exports, Firehose, copies);
3. a standard layout recognised by its field count, where the count is unambiguous and
   the record's ``version`` value is the one that layout writes: the default format (14
   fields, v2), every field of versions 2 to 5 (29, ``version`` 5), 2 to 7 (39, ``7``) and
   2 to 8 (40, ``8``) in the order of the "Available fields" table, and the Transit
   Gateway flow log default (36, every field of versions 2 to 6, ``version`` 6).

Anything else is an error that names the count and says how to declare the fields:
reading a record against the wrong names would fill the wrong columns.

A line that is a JSON object with a string ``message`` (a CloudWatch Logs export or a
Firehose record, ``{"message": "2 123456789010 eni-..."}``) is read as that message.

Which line is the header: every token is shaped like a field name (lower-case letters and
digits joined by ``-``), no name repeats, and at least half of them are known field
names. Records do not qualify: the default and most custom formats carry numbers or
``-``, and the string values of flow logs (``eni-0a1b``, ``us-east-1``, ``ingress``,
``ACCEPT``) are not field names. The one record that could is a custom format of string
fields only whose values are all lower-case words, half of them field names (say an ECS
service named ``region``). At least half rather than all, so a header naming fields newer
than this list is still recognised. The header is the first line of an object; if several
lines qualify, records are read against the first.

Flow logs delivered as Apache Parquet (``vpcflow_parquet``) are read by rows
(:mod:`connectors.s3.parquet`) and handed on as the text records of the same flows
(:func:`parquet_lines`), with a header line of their columns: the field names with ``_``
for ``-`` (``account_id``, ``interface_id``, ``log_status``, ``pkt_src_aws_service``,
...: the Athena tables AWS documents for Parquet flow logs), typed as "Available fields"
says (version, srcport, dstport, protocol, tcp-flags and traffic-path INT_32; packets,
bytes, start and end INT_64; the rest STRING). So both map through the same AWSVPCFlow
columns, by the same code.

Sources: "Flow log records" and "Flow log record examples" in the Amazon VPC User Guide
(https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html), and "Transit
Gateway Flow Log records" in the Transit Gateways guide
(https://docs.aws.amazon.com/vpc/latest/tgw/tgw-flow-logs.html).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from dataflow.core.lazy import lazy_import
from operators.formats import ParseError

if TYPE_CHECKING:
    import polars as pl
else:
    pl = lazy_import("polars")  # imported on first use: most flows never need it

__all__ = ["DEFAULT_FIELDS", "FIELDS", "INT_FIELDS", "TGW_FIELDS", "VpcFlowFormat",
           "parquet_lines", "parse_field_list"]

DEFAULT_FIELDS = ("version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport",
                  "dstport", "protocol", "packets", "bytes", "start", "end", "action",
                  "log-status")
"""The default format: the version 2 fields, in this order."""

FIELDS = DEFAULT_FIELDS + (
    # version 3
    "vpc-id", "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr",
    # version 4
    "region", "az-id", "sublocation-type", "sublocation-id",
    # version 5
    "pkt-src-aws-service", "pkt-dst-aws-service", "flow-direction", "traffic-path",
    # version 7
    "ecs-cluster-arn", "ecs-cluster-name", "ecs-container-instance-arn",
    "ecs-container-instance-id", "ecs-container-id", "ecs-second-container-id",
    "ecs-service-name", "ecs-task-definition-arn", "ecs-task-arn", "ecs-task-id",
    # version 8
    "reject-reason",
)
"""Every field a VPC flow log format may name (version 6 is Transit Gateway flow logs)."""

TGW_FIELDS = (
    "version", "resource-type", "account-id", "tgw-id", "tgw-attachment-id",
    "tgw-src-vpc-account-id", "tgw-dst-vpc-account-id", "tgw-src-vpc-id", "tgw-dst-vpc-id",
    "tgw-src-subnet-id", "tgw-dst-subnet-id", "tgw-src-eni", "tgw-dst-eni", "tgw-src-az-id",
    "tgw-dst-az-id", "tgw-pair-attachment-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "log-status", "type",
    "packets-lost-no-route", "packets-lost-blackhole", "packets-lost-mtu-exceeded",
    "packets-lost-ttl-expired", "tcp-flags", "region", "flow-direction",
    "pkt-src-aws-service", "pkt-dst-aws-service",
)
"""Transit Gateway flow log fields; its default format is all of them, in this order."""

INT_FIELDS = frozenset({"version", "srcport", "dstport", "protocol", "packets", "bytes",
                        "start", "end", "tcp-flags", "traffic-path", "packets-lost-no-route",
                        "packets-lost-blackhole", "packets-lost-mtu-exceeded",
                        "packets-lost-ttl-expired"})
"""Fields whose values are numbers (``start``/``end`` in epoch seconds)."""

_KNOWN = frozenset(f.encode() for f in (*FIELDS, *TGW_FIELDS))
_HEADER_SHAPE = re.compile(rb"[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:[ \t]+[a-z][a-z0-9]*(?:-[a-z0-9]+)*)*"
                           rb"[ \t\r]*")
_Layout = tuple[tuple[str, bool], ...]
"""(field name, is a number) per position."""


def _layout(names: list[str]) -> _Layout:
    return tuple((n, n in INT_FIELDS) for n in names)


_DEFAULT_LAYOUT = _layout(list(DEFAULT_FIELDS))
_V7_END = FIELDS.index("reject-reason")
_STANDARD: dict[int, tuple[str | None, _Layout, str]] = {
    # field count -> (the version value it writes or None, layout, what it is)
    14: (None, _DEFAULT_LAYOUT, "the default version 2 format"),
    29: ("5", _layout(list(FIELDS[:FIELDS.index("ecs-cluster-arn")])),
         "every field of versions 2 to 5"),
    36: ("6", _layout(list(TGW_FIELDS)), "the Transit Gateway flow log default format"),
    39: ("7", _layout(list(FIELDS[:_V7_END])), "every field of versions 2 to 7"),
    40: ("8", _layout(list(FIELDS)), "every field of versions 2 to 8"),
}
"""The layouts recognised by their field count when an object has no header line."""

_FIELD_REF = re.compile(r"\$\{([^}]*)\}")


def parse_field_list(fields: str | Sequence[str]) -> list[str]:
    """Field names from an AWS format string (``${version} ${srcaddr}``) or plain names.

    :raises ValueError: No names, or a name repeated.
    """
    text = fields if isinstance(fields, str) else " ".join(fields)
    names = [m.strip() for m in _FIELD_REF.findall(text)] if "${" in text else text.split()
    if not names or not all(names):
        msg = f"no field names in {text[:80]!r}; give the flow log's format string or names"
        raise ValueError(msg)
    if len(set(names)) != len(names):
        msg = f"a field is named twice in {text[:80]!r}"
        raise ValueError(msg)
    return names


class VpcFlowFormat:
    """VPC Flow Logs text records (default v2 format, or any custom field list).

    :arg fields: The field list of objects without a header line (the flow log's format
        string or names); see the module docstring.
    """

    name = "vpcflow"

    def __init__(self, fields: str | Sequence[str] | None = None) -> None:
        self._layouts: dict[bytes, _Layout] = {}
        self._declared = _layout(parse_field_list(fields)) if fields else None

    def is_header(self, line: bytes) -> bool:
        """Whether ``line`` names the fields (see the module docstring for the rule)."""
        if not line[:1].isalpha() or _HEADER_SHAPE.fullmatch(line) is None:
            return False
        names = line.split()
        known = sum(1 for n in names if n in _KNOWN)
        return known * 2 >= len(names) and len(set(names)) == len(names)

    def field_names(self, header: tuple[bytes, ...]) -> tuple[str, ...] | None:
        """The field list of every record under ``header``: the header line's, else the
        declared one; None when each record's own field count decides (no header, nothing
        declared)."""
        if header:
            return tuple(name for name, _ in self._layout_of(header, []))
        return tuple(name for name, _ in self._declared) if self._declared is not None else None

    def _layout_of(self, header: tuple[bytes, ...], values: list[str]) -> _Layout:
        if not header:
            if self._declared is not None:
                if len(values) != len(self._declared):
                    msg = (f"expected {len(self._declared)} fields (from the source's declared "
                           f"fields), got {len(values)}")
                    raise ParseError(msg, "field_count")
                return self._declared
            return self._standard(values)
        line = header[0]
        layout = self._layouts.get(line)
        if layout is None:
            if len(self._layouts) >= 256:  # one per distinct custom format; bounded anyway
                self._layouts.clear()
            layout = self._layouts[line] = _layout(line.decode("ascii", "replace").split())
        return layout

    @staticmethod
    def _standard(values: list[str]) -> _Layout:
        """The standard layout of a record without header or declaration, by its count."""
        standard = _STANDARD.get(len(values))
        if standard is not None:
            version, layout, _ = standard
            if version is None or values[0] == version:
                return layout
        known = ", ".join(f"{what} ({n})" for n, (_, _, what) in sorted(_STANDARD.items()))
        got = (f"{len(values)} fields with version {values[0][:8]!r}" if values
               else "no fields")
        msg = (f"the object has no header line and {got} is not a standard layout ({known}); "
               "declare the flow log's format in the source's `fields` (its ${field} format "
               "string, e.g. \"${version} ${account-id} ...\", or the field names)")
        raise ParseError(msg, "field_count")

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one record; numbers as ints, ``-`` fields left out.

        :raises ParseError: The line is not UTF-8, has a different number of fields than
            the header or declaration (or, without either, than any standard layout), or
            has a value that is not a number in a numeric field.
        """
        if line[:1] == b"{":
            line = _message(line)
        try:
            values = line.decode("utf-8").split()
        except UnicodeDecodeError as ex:
            msg = f"not UTF-8 text (byte {ex.start})"
            raise ParseError(msg, "not_utf8") from None
        layout = self._layout_of(header, values)
        if len(values) != len(layout):
            msg = f"expected {len(layout)} fields (from the header line), got {len(values)}"
            raise ParseError(msg, "field_count")
        rec: dict[str, Any] = {}
        for (name, number), value in zip(layout, values, strict=False):
            if value == "-":
                continue
            if number:
                if not (value.isdigit() and value.isascii()):
                    msg = f"field {name!r} = {value[:40]!r} is not a number"
                    raise ParseError(msg, "not_a_number")
                rec[name] = int(value)
            else:
                rec[name] = value
        return rec


def _message(line: bytes) -> bytes:
    """The ``message`` of a ``{"message": "..."}`` line (CloudWatch Logs export)."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = None
    message = obj.get("message") if isinstance(obj, dict) else None
    if not isinstance(message, str):
        msg = 'a JSON line that is not {"message": "<flow log record>"}'
        raise ParseError(msg, "malformed")
    return message.encode()


def parquet_lines(frame: pl.DataFrame) -> tuple[bytes, list[bytes]]:
    """A slice of a Parquet flow log as the text format's header line and one line per row,
    so that its rows are read (and mapped, on the columnar path too) as the text records of
    the same flows are: the column names with ``-`` for ``_`` (``account_id`` ->
    ``account-id``; a column this module does not know is kept under that name, as the text
    format keeps an unknown field), numbers as digits (a float without a fraction, from a
    writer that stored a number column as floating point, as its whole number), no value
    (null or an empty string) as ``-``.

    A value with whitespace in it cannot be one field of a line: its row gets a field count
    the header does not have, an error record with the reason (AWS writes none: ids,
    addresses, names without spaces).

    :raises Exception: A value that cannot be text (bytes that are not UTF-8).
    """
    names = [c.replace("_", "-") for c in frame.columns]
    cols = []
    for column, dtype in frame.schema.items():
        col = pl.col(column)
        if dtype.is_float():
            text = pl.when(col.is_finite() & (col == col.floor())).then(
                col.cast(pl.Int64, strict=False).cast(pl.String)).otherwise(col.cast(pl.String))
        else:
            text = col.cast(pl.String)  # bytes that are not UTF-8 raise
        text = text.str.replace_all(r"[\r\n]", " ")  # one line per row, whatever a value holds
        cols.append(pl.when(text.is_null() | (text == "")).then(pl.lit("-")).otherwise(text))
    if not cols:
        return b"", [b""] * frame.height
    lines = frame.select(pl.concat_str(cols, separator=" ").alias("l"))["l"]
    return " ".join(names).encode(), lines.str.join("\n").item().encode().split(b"\n")
