"""CSV with a header and delimited lines with declared fields (the seed's firewall and VPN logs)."""

from __future__ import annotations

import contextlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.formats import ParseError
from operators.formats.delimited import CsvFormat, DelimitedFormat
from operators.schema import Mapper, TableDef

FIREWALL_FIELDS = ["timestamp", "action", "src_ip", "src_port", "dst_ip", "dst_port", "protocol",
                   "rule", "bytes"]
FIREWALL = TableDef.from_mapping({"table": "Firewall_CL", "columns": [
    {"name": "TimeGenerated", "type": "datetime", "source": "timestamp", "required": True},
    {"name": "Action", "type": "string", "source": "action", "allowed": ["ALLOW", "DENY"]},
    {"name": "SrcIp", "type": "string", "source": "src_ip"},
    {"name": "SrcPort", "type": "int", "source": "src_port"},
    {"name": "DstIp", "type": "string", "source": "dst_ip"},
    {"name": "DstPort", "type": "int", "source": "dst_port"},
    {"name": "Protocol", "type": "string", "source": "protocol"},
    {"name": "Rule", "type": "string", "source": "rule"},
    {"name": "Bytes", "type": "long", "source": "bytes"},
]}, "test")


def test_pipe_delimited_firewall_lines() -> None:
    fmt = DelimitedFormat(FIREWALL_FIELDS, "|")
    line = b"2026-11-01T10:00:00Z|DENY|203.0.113.9|51515|10.0.0.5|22|TCP|block-ssh|0"
    row = orjson.loads(Mapper(FIREWALL).map_dict(fmt.parse(line, ()), "id-0"))
    assert row == {"TimeGenerated": "2026-11-01T10:00:00Z", "Action": "DENY",
                   "SrcIp": "203.0.113.9", "SrcPort": 51515, "DstIp": "10.0.0.5", "DstPort": 22,
                   "Protocol": "TCP", "Rule": "block-ssh", "Bytes": 0, "RecordId": "id-0"}
    short = fmt.parse(b"2026-11-01T10:00:00Z|ALLOW|10.0.0.1", ())
    assert short == {"timestamp": "2026-11-01T10:00:00Z", "action": "ALLOW", "src_ip": "10.0.0.1"}
    with pytest.raises(ParseError, match="at most 9 fields, got 10"):
        fmt.parse(b"|".join([b"x"] * 10), ())
    assert fmt.is_header(b"# firewall export v2")


def test_csv_with_a_header_line() -> None:
    fmt = CsvFormat()
    header = (b"user,ip,ts,note",)
    assert fmt.header_lines == 1
    assert fmt.parse(b'alice,10.0.0.1,2026-11-01T00:00:00Z,"said ""hi"", left"', header) == {
        "user": "alice", "ip": "10.0.0.1", "ts": "2026-11-01T00:00:00Z", "note": 'said "hi", left'}
    with pytest.raises(ParseError, match="expected 4 fields"):
        fmt.parse(b"alice,10.0.0.1", header)
    with pytest.raises(ParseError, match="no CSV header"):
        fmt.parse(b"a,b", ())
    assert CsvFormat(["a", "b"], ";").parse(b"1;2", ()) == {"a": "1", "b": "2"}


@settings(max_examples=200, deadline=None)
@given(line=st.binary(max_size=200), header=st.binary(max_size=60))
def test_arbitrary_bytes_only_raise_parse_errors(line: bytes, header: bytes) -> None:
    for fmt, hdr in ((CsvFormat(), (header,)), (CsvFormat(), ()),
                     (DelimitedFormat(FIREWALL_FIELDS), ())):
        with contextlib.suppress(ParseError):
            fmt.parse(line, hdr)
