"""AWS Network Firewall alert logs: JSON lines, read with one correction.

Each line is one log record (objects under ``AWSLogs/<acct>/network-firewall/alert/``)::

    {"firewall_name": "test-firewall", "availability_zone": "us-east-1b",
     "event_timestamp": "1602627001",
     "event": {"timestamp": "2020-10-13T22:10:01.006481+0000", "flow_id": 1582438383425873,
               "event_type": "alert", "src_ip": "203.0.113.4", "src_port": 55555,
               "dest_ip": "192.0.2.16", "dest_port": 111, "proto": "TCP",
               "alert": {"action": "allowed", "signature_id": 5, "rev": 0,
                         "signature": "test_tcp", "category": "", "severity": 1}}}

``event_timestamp`` is "the time that the log was created, written in epoch seconds", as a
JSON string in the alert and flow examples of the AWS documentation (and as a number in its
TLS examples). The standard table AWSNetworkFirewallAlert types its EventTimestamp column
``datetime``, and a datetime column takes epoch seconds as a number, not as a string of
digits; so this parser returns the record with a digit-string ``event_timestamp`` turned
into that number, everything else as written. (Flow logs need no such step: their table types
EventTimestamp ``string``, and the ``nfwflow`` format is mapped straight from the JSON.)

A line that is not a JSON object is a :class:`~operators.formats.ParseError` with the reason.

Sources: "Contents of a AWS Network Firewall log" (fields and the alert and flow examples),
https://docs.aws.amazon.com/network-firewall/latest/developerguide/firewall-logging-contents.html;
"Logging for TLS inspection" (event_timestamp as a number),
https://docs.aws.amazon.com/network-firewall/latest/developerguide/tls-inspection-logging.html.
"""

from __future__ import annotations

from typing import Any

import orjson

from operators.formats import ParseError

__all__ = ["NetworkFirewallFormat"]

_MAX_EPOCH_DIGITS = 13
"""Longest digit string read as an epoch number (13: milliseconds, which a datetime column
also takes); longer ones stay strings, and fail the column."""


class NetworkFirewallFormat:
    """Network Firewall log records (JSON lines), ``event_timestamp`` as epoch seconds."""

    name = "nfwalert"

    def is_header(self, line: bytes) -> bool:
        """Never: Network Firewall log objects have no header lines."""
        return False

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The record of one line (see the module docstring).

        :raises ParseError: The line is not a JSON object.
        """
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as ex:
            deep = "depth" in str(ex) or "recursion" in str(ex)
            msg = (f"record nested deeper than the JSON decoder's limit: {ex}" if deep
                   else f"not valid JSON: {ex}")
            raise ParseError(msg, "too_deep" if deep else "invalid_json") from None
        if not isinstance(rec, dict):
            msg = f"expected a JSON object, got {type(rec).__name__}"
            raise ParseError(msg, "not_an_object")
        ts = rec.get("event_timestamp")
        if type(ts) is str and 0 < len(ts) <= _MAX_EPOCH_DIGITS and ts.isascii() and ts.isdigit():
            rec["event_timestamp"] = int(ts)
        return rec
