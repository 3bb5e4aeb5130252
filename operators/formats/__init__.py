"""Record formats: how one record's bytes become a dict of source fields.

JSON formats (CloudTrail, NDJSON, JSON arrays, GuardDuty, WAF, Route 53 Resolver) need
no parser: their records are decoded and mapped in one pass by the table's
:class:`~operators.schema.Mapper`. Text formats (VPC Flow Logs, load balancer, CloudFront
and S3 server access logs, CSV, delimited lines) are one record per line; a
:class:`TextFormat` turns a line into a dict whose keys are the names the table
definitions use as ``source`` paths.

Some text formats start with header lines (VPC Flow Logs' field names, CloudFront's
``#Version``/``#Fields``, a CSV header). The source recognises them with
:meth:`TextFormat.is_header`, does not emit them as records, and passes every header
line seen so far in the object with each record, so parsing needs no state of its own
and a restart in the middle of an object parses exactly as the first run did.
"""

from __future__ import annotations

from typing import Any, Protocol

from dataflow.core.errors import TerminalError

__all__ = ["JSON_FORMATS", "ParseError", "TextFormat"]

JSON_FORMATS = frozenset(
    {"cloudtrail", "ndjson", "json_array", "guardduty", "waf", "route53resolver"})
"""Formats whose records are JSON objects, mapped straight from their bytes."""


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
