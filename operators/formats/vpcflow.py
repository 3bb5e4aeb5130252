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

Flow logs delivered as Apache Parquet (``vpcflow_parquet``, :class:`VpcFlowParquetFormat`)
come as one record per row, a JSON object of the file's columns
(:mod:`connectors.s3.parquet`). Their columns are the field names with ``_`` for ``-``
(``account_id``, ``interface_id``, ``log_status``, ``pkt_src_aws_service``, ...: the
Athena tables AWS documents for Parquet flow logs), typed as "Available fields" says
(version, srcport, dstport, protocol, tcp-flags and traffic-path INT_32; packets, bytes,
start and end INT_64; the rest STRING). A row is read into the same dict as the text record
of the same flow, so both map through the same AWSVPCFlow columns.

Sources: "Flow log records" and "Flow log record examples" in the Amazon VPC User Guide
(https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html), and "Transit
Gateway Flow Log records" in the Transit Gateways guide
(https://docs.aws.amazon.com/vpc/latest/tgw/tgw-flow-logs.html).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson

from operators.formats import ParseError

__all__ = ["DEFAULT_FIELDS", "FIELDS", "INT_FIELDS", "TGW_FIELDS", "VpcFlowFormat",
           "VpcFlowParquetFormat", "parse_field_list"]

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


class VpcFlowParquetFormat:
    """VPC Flow Logs delivered as Parquet: one row (a JSON object of the file's columns) per
    record, read into the dict :class:`VpcFlowFormat` gives for the same flow: the AWS field
    names (``account_id`` -> ``account-id``), numbers as ints, no value (null, or ``-`` in
    a string column) left out. A column this module does not know is kept under its name
    with ``-`` for ``_``, as the text format keeps an unknown field."""

    name = "vpcflow_parquet"

    def __init__(self) -> None:
        self._names: dict[str, tuple[str, bool]] = {}

    def is_header(self, line: bytes) -> bool:
        """Rows have no header lines."""
        return False

    def _name(self, column: str) -> tuple[str, bool]:
        got = self._names.get(column)
        if got is None:
            if len(self._names) >= 1024:  # column names of the files read; bounded anyway
                self._names.clear()
            name = column.replace("_", "-")
            got = self._names[column] = (name, name in INT_FIELDS)
        return got

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one row.

        :raises ParseError: The row is not a JSON object, or a numeric field holds a value
            that is not a whole number (a string column of digits is read as the number).
        """
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            msg = "not a Parquet row (a JSON object of its columns)"
            raise ParseError(msg, "malformed")
        rec: dict[str, Any] = {}
        for column, value in row.items():
            if value is None or value == "-":
                continue
            name, number = self._name(column)
            if number and type(value) is not int:
                value = _whole_number(name, value)
            rec[name] = value
        return rec


def _whole_number(name: str, value: Any) -> int:
    """A numeric field's value as an int: digits in a string column, or a float without a
    fraction (a writer that stored the column as floating point)."""
    if isinstance(value, str) and value.isdigit() and value.isascii():
        return int(value)
    if type(value) is float and value.is_integer():
        return int(value)
    shown = orjson.dumps(value)[:40].decode("utf-8", "replace")
    msg = f"field {name!r} = {shown} is not a number"
    raise ParseError(msg, "not_a_number")
