"""Record formats: how one record's bytes become a dict of source fields.

JSON formats (CloudTrail, NDJSON, JSON arrays, GuardDuty, WAF, Route 53 Resolver, Network
Firewall flow logs, EKS audit events, and the records of the envelopes below) need no
parser: their records are decoded and mapped in one pass by the table's
:class:`~operators.schema.Mapper`. Text formats (VPC Flow Logs, load balancer, CloudFront
and S3 server access logs, CSV, delimited lines) are one record per line; a
:class:`TextFormat` turns a line into a dict whose keys are the names the table
definitions use as ``source`` paths.

Some text formats start with header lines (VPC Flow Logs' field names, CloudFront's
``#Version``/``#Fields``, a CSV header). The source recognises them with
:meth:`TextFormat.is_header`, does not emit them as records, and passes every header
line seen so far in the object with each record, so parsing needs no state of its own
and a restart in the middle of an object parses exactly as the first run did.

Some objects are concatenated JSON documents, each an envelope of several records (CloudWatch
Logs subscription data, EventBridge events of Security Hub findings, as Firehose writes them):
their format has an :data:`Expand` function (:mod:`operators.formats.envelopes`) that turns
one document into its records, so that every log event or finding is a record with an
offset of its own (its row's record id, its place in the journals and the dead letters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dataflow.core.errors import TerminalError

__all__ = ["JSON_FORMATS", "Expand", "ParseError", "TextFormat"]

JSON_FORMATS = frozenset(
    {"cloudtrail", "ndjson", "json_array", "guardduty", "waf", "route53resolver",
     "cloudwatchlogs", "securityhub", "nfwflow", "eksaudit", "parquet"})
"""Formats whose records are JSON objects, mapped straight from their bytes (``parquet``:
each row of a Parquet object is a record as a JSON object of its columns)."""

Expand = Callable[[bytes], list[bytes]]
"""One JSON document of a ``documents`` format -> the records it holds (JSON objects), in
order; ``[]`` when it holds none. Raises :class:`ParseError` when the document is not the
envelope the format reads (the document is then one error record, in its place)."""


class ParseError(TerminalError, ValueError):
    """A record (line) cannot be parsed; ``reason`` says why, for the error record."""

    def __init__(self, reason: str, code: str = "unparseable") -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)



class TextFormat(Protocol):
    """A line-oriented format."""

    name: str

    def is_header(self, line: bytes) -> bool:
        """Whether ``line`` is a header or comment line rather than a record."""
        ...

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one record line.

        :arg line: The line, without its line break.
        :arg header: The header lines of the object seen before this line, in order.
        :returns: Field name -> value (str, or int/float where the format defines a
            number); fields absent or written as ``-`` are left out.
        :raises ParseError: The line does not have the format's shape.
        """
        ...
