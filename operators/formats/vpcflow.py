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
Records are parsed against the object's header line, or against the default v2 field list
when the object has none. A record with a different number of fields is an error that
names both counts: reading it against the wrong names would fill the wrong columns.

Which line is the header: every token is shaped like a field name (lower-case letters and
digits joined by ``-``), no name repeats, and at least half of them are known field
names. Records do not qualify: the default and most custom formats carry numbers or
``-``, and the string values of flow logs (``eni-0a1b``, ``us-east-1``, ``ingress``,
``ACCEPT``) are not field names. The one record that could is a custom format of string
fields only whose values are all lower-case words, half of them field names (say an ECS
service named ``region``). At least half rather than all, so a header naming fields newer
than this list is still recognised. The header is the first line of an object; if several
lines qualify, records are read against the first.

Source: "Flow log records" and "Flow log record examples" in the Amazon VPC User Guide
(https://docs.aws.amazon.com/vpc/latest/userguide/flow-log-records.html).
"""

from __future__ import annotations

import re
from typing import Any

from operators.formats import ParseError

__all__ = ["DEFAULT_FIELDS", "FIELDS", "INT_FIELDS", "VpcFlowFormat"]

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

INT_FIELDS = frozenset({"version", "srcport", "dstport", "protocol", "packets", "bytes",
                        "start", "end", "tcp-flags", "traffic-path"})
"""Fields whose values are numbers (``start``/``end`` in epoch seconds)."""

_KNOWN = frozenset(f.encode() for f in FIELDS)
_HEADER_SHAPE = re.compile(rb"[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?:[ \t]+[a-z][a-z0-9]*(?:-[a-z0-9]+)*)*"
                           rb"[ \t\r]*")
_Layout = tuple[tuple[str, bool], ...]
"""(field name, is a number) per position."""


def _layout(names: list[str]) -> _Layout:
    return tuple((n, n in INT_FIELDS) for n in names)


_DEFAULT_LAYOUT = _layout(list(DEFAULT_FIELDS))


class VpcFlowFormat:
    """VPC Flow Logs text records (default v2 format, or any custom field list)."""

    name = "vpcflow"

    def __init__(self) -> None:
        self._layouts: dict[bytes, _Layout] = {}

    def is_header(self, line: bytes) -> bool:
        """Whether ``line`` names the fields (see the module docstring for the rule)."""
        if not line[:1].isalpha() or _HEADER_SHAPE.fullmatch(line) is None:
            return False
        names = line.split()
        known = sum(1 for n in names if n in _KNOWN)
        return known * 2 >= len(names) and len(set(names)) == len(names)

    def _layout_of(self, header: tuple[bytes, ...]) -> _Layout:
        if not header:
            return _DEFAULT_LAYOUT
        line = header[0]
        layout = self._layouts.get(line)
        if layout is None:
            if len(self._layouts) >= 256:  # one per distinct custom format; bounded anyway
                self._layouts.clear()
            layout = self._layouts[line] = _layout(line.decode("ascii", "replace").split())
        return layout

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one record; numbers as ints, ``-`` fields left out.

        :raises ParseError: The line is not UTF-8, has a different number of fields than
            the header, or has a value that is not a number in a numeric field.
        """
        layout = self._layout_of(header)
        try:
            values = line.decode("utf-8").split()
        except UnicodeDecodeError as ex:
            msg = f"not UTF-8 text (byte {ex.start})"
            raise ParseError(msg, "not_utf8") from None
        if len(values) != len(layout):
            source = "the header line" if header else "the default version 2 format; no header line"
            msg = f"expected {len(layout)} fields (from {source}), got {len(values)}"
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
