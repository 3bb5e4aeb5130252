"""VPC Flow Logs: header recognition, default and custom field lists, NODATA/SKIPDATA, mapping."""

from __future__ import annotations

import gzip
import random
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.formats import ParseError
from operators.formats.registry import detect, text_format
from operators.formats.vpcflow import (
    DEFAULT_FIELDS,
    FIELDS,
    INT_FIELDS,
    TGW_FIELDS,
    VpcFlowFormat,
    parse_field_list,
)
from operators.schema import Mapper, MappingError, load_tables

V2 = b" ".join(f.encode() for f in DEFAULT_FIELDS)
ALL = b" ".join(f.encode() for f in FIELDS)  # a custom format naming every field, v2 to v8


def records(lines: list[bytes], fmt: VpcFlowFormat | None = None) -> list[dict]:
    """Parse lines as the source does: header lines are kept and passed with each record."""
    fmt = fmt or VpcFlowFormat()
    header: tuple[bytes, ...] = ()
    out = []
    for line in lines:
        if fmt.is_header(line):
            header = (*header, line)
        else:
            out.append(fmt.parse(line, header))
    return out


def test_the_default_v2_record() -> None:
    line = (b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 "
            b"4249 1418530010 1418530070 ACCEPT OK")
    expected = {"version": 2, "account-id": "123456789010", "interface-id": "eni-1235b8ca123456789",
                "srcaddr": "172.31.16.139", "dstaddr": "172.31.16.21", "srcport": 20641,
                "dstport": 22, "protocol": 6, "packets": 20, "bytes": 4249, "start": 1418530010,
                "end": 1418530070, "action": "ACCEPT", "log-status": "OK"}
    assert records([V2, line]) == [expected]
    assert records([line]) == [expected]  # no header line: the default v2 fields


@pytest.mark.parametrize("status", [b"NODATA", b"SKIPDATA"])
def test_nodata_and_skipdata_records_parse(status: bytes) -> None:
    line = b"2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - " + status
    assert records([V2, line]) == [{"version": 2, "account-id": "123456789010",
                                    "interface-id": "eni-1235b8ca123456789", "start": 1431280876,
                                    "end": 1431280934, "log-status": status.decode()}]


def test_a_custom_format_with_every_field() -> None:
    values = {
        "version": "8", "account-id": "123456789012", "interface-id": "eni-0f3d1c2b",
        "srcaddr": "2001:db8:1234:a100::10", "dstaddr": "2001:db8:1234:a102::20",
        "srcport": "53124", "dstport": "443", "protocol": "6", "packets": "10", "bytes": "4000",
        "start": "1700000000", "end": "1700000060", "action": "REJECT", "log-status": "OK",
        "vpc-id": "vpc-0a1b", "subnet-id": "subnet-0c2d", "instance-id": "i-0e3f",
        "tcp-flags": "19", "type": "IPv6", "pkt-srcaddr": "2001:db8:1234:a100::10",
        "pkt-dstaddr": "2001:db8:1234:a102::20", "region": "eu-west-1", "az-id": "euw1-az2",
        "sublocation-type": "-", "sublocation-id": "-", "pkt-src-aws-service": "-",
        "pkt-dst-aws-service": "S3", "flow-direction": "egress", "traffic-path": "8",
        "ecs-cluster-arn": "arn:aws:ecs:eu-west-1:123456789012:cluster/prod",
        "ecs-cluster-name": "prod",
        "ecs-container-instance-arn": "arn:aws:ecs:eu-west-1:123456789012:container-instance/x",
        "ecs-container-instance-id": "3f2c", "ecs-container-id": "a1b2c3",
        "ecs-second-container-id": "-", "ecs-service-name": "api",
        "ecs-task-definition-arn": "arn:aws:ecs:eu-west-1:123456789012:task-definition/api:3",
        "ecs-task-arn": "arn:aws:ecs:eu-west-1:123456789012:task/prod/9f8e",
        "ecs-task-id": "9f8e", "reject-reason": "BPA",
    }
    line = " ".join(values[f] for f in FIELDS).encode()
    [rec] = records([ALL, line])
    assert rec == {k: int(v) if k in INT_FIELDS else v for k, v in values.items() if v != "-"}
    assert rec["tcp-flags"] == 19 and rec["traffic-path"] == 8 and rec["reject-reason"] == "BPA"


def test_a_custom_format_in_another_order_with_fewer_fields() -> None:
    header = b"start interface-id srcaddr dstaddr pkt-srcaddr flow-direction action"
    line = b"1700000000 eni-1 10.0.0.5 10.0.1.9 203.0.113.7 ingress ACCEPT"
    assert records([header, line]) == [{
        "start": 1700000000, "interface-id": "eni-1", "srcaddr": "10.0.0.5",
        "dstaddr": "10.0.1.9", "pkt-srcaddr": "203.0.113.7", "flow-direction": "ingress",
        "action": "ACCEPT"}]


def test_a_field_newer_than_this_list_is_kept_as_a_string() -> None:
    header = V2 + b" encryption-status"
    assert VpcFlowFormat().is_header(header)
    [rec] = records([header, b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000000 1700000001 "
                             b"ACCEPT OK 1"])
    assert rec["encryption-status"] == "1" and rec["bytes"] == 40


@pytest.mark.parametrize("line", [
    V2, ALL, V2 + b"\r", b"version  account-id\tinterface-id", b"log-status",
    b"interface-id vpc-id subnet-id", b"version encryption-status",
])
def test_header_lines_are_recognised(line: bytes) -> None:
    assert VpcFlowFormat().is_header(line)


@pytest.mark.parametrize("line", [
    b"2 123456789010 eni-1235b8ca123456789 - - - - - - - 1431280876 1431280934 - NODATA",
    b"eni-0a1b vpc-0c2d subnet-0e3f",            # string-only custom format: IDs, not names
    b"eni-0a1b us-east-1 use1-az1 ingress",       # region, AZ ID, flow direction
    b"ACCEPT OK", b"-", b"", b"#version account-id",
    b"version version",                            # a name twice
    b"region somefield otherfield",                # fewer than half known
    b"Version Account-Id",
])
def test_records_are_not_header_lines(line: bytes) -> None:
    assert not VpcFlowFormat().is_header(line)


def test_a_wrong_field_count_names_both_counts() -> None:
    fmt = VpcFlowFormat()
    with pytest.raises(ParseError, match=r"expected 14 fields \(from the header line\), got 13"
                       ) as ex:
        fmt.parse(b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000000 1700000001 ACCEPT", (V2,))
    assert ex.value.code == "field_count"
    with pytest.raises(ParseError, match=r"no header line and 15 fields with version '3' is "
                                         r"not a standard layout .*declare .* `fields`"):
        fmt.parse(b"3 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000000 1700000001 ACCEPT OK "
                  b"vpc-1", ())
    with pytest.raises(ParseError, match="expected 3 fields"):
        fmt.parse(b"1700000000 eni-1", (b"start interface-id action",))


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"2 1 eni-1 10.0.0.1 10.0.0.2 http 2 6 1 40 1700000000 1700000001 ACCEPT OK",
     "not_a_number", "field 'srcport' = 'http' is not a number"),
    (b"2 1 eni-1 10.0.0.1 10.0.0.2 -1 2 6 1 40 1700000000 1700000001 ACCEPT OK",
     "not_a_number", "srcport"),
    (b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000000 1700000001 ACC\xffPT OK",
     "not_utf8", "byte 64"),
])
def test_malformed_records_are_parse_errors(line: bytes, code: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as ex:
        VpcFlowFormat().parse(line, (V2,))
    assert ex.value.code == code


def test_records_read_against_the_first_header_of_the_object() -> None:
    # A second line that looks like a header does not change how later records are read.
    fmt = VpcFlowFormat()
    header = b"start interface-id action"
    assert fmt.parse(b"1700000000 eni-1 ACCEPT", (header, b"action start interface-id")) == {
        "start": 1700000000, "interface-id": "eni-1", "action": "ACCEPT"}


def test_ipv6_and_trailing_carriage_return() -> None:
    [rec] = records([V2 + b"\r", b"2 123456789012 eni-1 2001:db8::1 fe80::a:b:c:d 443 55000 6 "
                                 b"3 180 1700000000 1700000005 ACCEPT OK\r"])
    assert rec["srcaddr"] == "2001:db8::1" and rec["dstaddr"] == "fe80::a:b:c:d"
    assert rec["log-status"] == "OK"


# --------------------------------------------------------------------------- mapping


def test_records_map_onto_the_awsvpcflow_table() -> None:
    table = load_tables()["AWSVPCFlow"]
    assert (table.kind, table.stream, table.output_stream) == (
        "standard", "Custom-AWSVPCFlow", "Microsoft-AWSVPCFlow")
    m = Mapper(table)
    values = {f: "-" for f in FIELDS} | {
        "version": "5", "account-id": "123456789012", "interface-id": "eni-1",
        "srcaddr": "10.0.0.1", "dstaddr": "10.0.0.2", "srcport": "5000", "dstport": "443",
        "protocol": "6", "packets": "3", "bytes": "5000000000", "start": "1767225600",
        "end": "1767225660", "action": "ACCEPT", "log-status": "OK", "type": "IPv4",
        "traffic-path": "1", "tcp-flags": "2", "flow-direction": "egress", "reject-reason": "BPA"}
    [rec] = records([ALL, " ".join(values[f] for f in FIELDS).encode()])
    row = orjson.loads(m.map_dict(rec, "b/k@e-1"))
    assert row == {
        "AccountId": "123456789012", "Action": "ACCEPT", "Bytes": 5000000000, "DstAddr": "10.0.0.2",
        "DstPort": 443, "End": "2026-01-01T00:01:00Z", "FlowDirection": "egress",
        "InterfaceId": "eni-1", "LogStatus": "OK", "Packets": 3, "Protocol": 6,
        "SrcAddr": "10.0.0.1", "SrcPort": 5000, "Start": "2026-01-01T00:00:00Z", "TcpFlags": 2,
        "TimeGenerated": "2026-01-01T00:00:00Z", "TrafficPath": "1", "TrafficType": "IPv4",
        "Version": 5, "AdditionalFields_CF": {"reject-reason": "BPA"}, "RecordId_CF": "b/k@e-1"}


def test_a_nodata_record_maps_with_its_times() -> None:
    m = Mapper(load_tables()["AWSVPCFlow"])
    [rec] = records([b"2 123456789010 eni-1 - - - - - - - 1767225600 1767225660 - NODATA"])
    assert orjson.loads(m.map_dict(rec, "r")) == {
        "Version": 2, "AccountId": "123456789010", "InterfaceId": "eni-1",
        "Start": "2026-01-01T00:00:00Z", "End": "2026-01-01T00:01:00Z", "LogStatus": "NODATA",
        "TimeGenerated": "2026-01-01T00:00:00Z", "RecordId_CF": "r"}


def test_without_start_the_record_is_an_error_not_ingestion_time() -> None:
    m = Mapper(load_tables()["AWSVPCFlow"])
    [rec] = records([b"interface-id action", b"eni-1 ACCEPT"])
    with pytest.raises(MappingError, match=r"'start' \(column TimeGenerated\)") as ex:
        m.map_dict(rec, "r")
    assert ex.value.code == "missing_required"


def test_every_known_field_has_a_column_but_reject_reason() -> None:
    table = load_tables()["AWSVPCFlow"]
    sources = {".".join(c.source) for c in table.columns} - {"*"}
    assert sources <= set(FIELDS)
    # No column in the table (see the TOML): kept in AdditionalFields_CF (source "*").
    assert set(FIELDS) - sources == {"reject-reason"}
    ints = {".".join(c.source) for c in table.columns if c.type in ("int", "long", "datetime")}
    assert ints <= INT_FIELDS


# --------------------------------------------------------------------------- wiring


def test_registry_builds_the_parser_and_detects_objects() -> None:
    assert isinstance(text_format("vpcflow"), VpcFlowFormat)
    assert detect("x/AWSLogs/1/vpcflowlogs/eu-west-1/2026/01/01/f.log.gz") == "vpcflow"
    assert detect("plain/key.log", V2 + b"\n2 1 eni-1") == "vpcflow"


def test_an_object_is_read_as_the_source_reads_it() -> None:
    recs_mod = pytest.importorskip("connectors.s3.records")
    body = gzip.compress(b"\n".join([
        V2,
        b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1767225600 1767225601 ACCEPT OK",
        b"",
        b"2 1 eni-1 - - - - - - - 1767225600 1767225660 - NODATA",
        b"2 1 eni-1 10.0.0.1",
    ]) + b"\n")
    fmt, it = recs_mod.object_records("AWSLogs/1/vpcflowlogs/f.log.gz", [body], "auto",
                                      max_bytes=1 << 20, parser_for=text_format)
    assert fmt == "vpcflow"
    parser = text_format(fmt)
    assert parser is not None
    got = []
    for offset, data, header in it:
        assert header == (V2,)
        try:
            got.append((offset, parser.parse(data, header)["log-status"]))
        except ParseError as ex:
            got.append((offset, ex.code))
    assert got == [(1, "OK"), (3, "NODATA"), (4, "field_count")]


# --------------------------------------------------------------------------- properties

_VALUES = {
    "string": st.text("abcdefABCDEF0123456789-:./", min_size=1, max_size=12).filter(
        lambda s: s != "-"),
    "int": st.integers(0, 2**40).map(str),
}


@settings(max_examples=300, deadline=None)
@given(names=st.lists(st.sampled_from(FIELDS), min_size=1, unique=True), data=st.data())
def test_any_custom_format_round_trips(names: list[str], data: st.DataObject) -> None:
    fmt = VpcFlowFormat()
    header = " ".join(names).encode()
    values = [data.draw(st.just("-") | _VALUES["int" if n in INT_FIELDS else "string"])
              for n in names]
    line = " ".join(values).encode()
    assert fmt.is_header(header)
    assert not fmt.is_header(line) or all(v in FIELDS for v in values)
    expected = {n: int(v) if n in INT_FIELDS else v for n, v in zip(names, values, strict=False) if v != "-"}
    assert fmt.parse(line, (header,)) == expected


def test_parsing_is_fast_enough() -> None:
    fmt = VpcFlowFormat()
    rng = random.Random(1)
    lines = [(f"2 123456789012 eni-{rng.getrandbits(32):08x} 10.0.{rng.randrange(256)}.1 "
              f"10.1.0.{rng.randrange(256)} {rng.randrange(65536)} 443 6 {rng.randrange(99)} "
              f"{rng.randrange(10**6)} 1767225600 1767225660 ACCEPT OK").encode()
             for _ in range(20_000)]
    t0 = time.perf_counter()
    for line in lines:
        if not fmt.is_header(line):
            fmt.parse(line, (V2,))
    rate = len(lines) / (time.perf_counter() - t0)
    assert rate > 20_000, f"{rate:.0f} records/s"  # ~150k/s on one idle core


# --------------------------------------------------------------------------- no header line

# "Flow log record examples" > "Service name, traffic path, and flow direction": a custom
# format and two of its records, as the AWS documentation gives them.
DOC_V5_FORMAT = ("version srcaddr dstaddr srcport dstport protocol start end type packets bytes "
                 "account-id vpc-id subnet-id instance-id interface-id region az-id "
                 "sublocation-type sublocation-id action tcp-flags pkt-srcaddr pkt-dstaddr "
                 "pkt-src-aws-service pkt-dst-aws-service traffic-path flow-direction log-status")
DOC_V5_LINES = [
    b"5 52.95.128.179 10.0.0.71 80 34210 6 1616729292 1616729349 IPv4 14 15044 123456789012 "
    b"vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 "
    b"ap-southeast-2 apse2-az3 - - ACCEPT 19 52.95.128.179 10.0.0.71 S3 - - ingress OK",
    b"5 10.0.0.71 52.95.128.179 34210 80 6 1616729292 1616729349 IPv4 7 471 123456789012 "
    b"vpc-abcdefab012345678 subnet-aaaaaaaa012345678 i-0c50d5961bcb2d47b eni-1235b8ca123456789 "
    b"ap-southeast-2 apse2-az3 - - ACCEPT 3 10.0.0.71 52.95.128.179 - S3 8 egress OK",
]
DOC_V5_EGRESS = {
    "version": 5, "srcaddr": "10.0.0.71", "dstaddr": "52.95.128.179", "srcport": 34210,
    "dstport": 80, "protocol": 6, "start": 1616729292, "end": 1616729349, "type": "IPv4",
    "packets": 7, "bytes": 471, "account-id": "123456789012", "vpc-id": "vpc-abcdefab012345678",
    "subnet-id": "subnet-aaaaaaaa012345678", "instance-id": "i-0c50d5961bcb2d47b",
    "interface-id": "eni-1235b8ca123456789", "region": "ap-southeast-2", "az-id": "apse2-az3",
    "action": "ACCEPT", "tcp-flags": 3, "pkt-srcaddr": "10.0.0.71",
    "pkt-dstaddr": "52.95.128.179", "pkt-dst-aws-service": "S3", "traffic-path": 8,
    "flow-direction": "egress", "log-status": "OK"}


@pytest.mark.parametrize("declared", [
    DOC_V5_FORMAT,                                                   # plain names
    " ".join(f"${{{n}}}" for n in DOC_V5_FORMAT.split()),           # the AWS format string
    DOC_V5_FORMAT.split(),                                           # a list of names
    [f"${{{n}}}" for n in DOC_V5_FORMAT.split()],                    # a list of ${field}s
])
def test_declared_fields_read_objects_without_a_header(declared: str | list[str]) -> None:
    """CloudWatch Logs / Firehose delivery: no header line; the source declares the format."""
    fmt = VpcFlowFormat(declared)
    ingress, egress = (fmt.parse(line, ()) for line in DOC_V5_LINES)
    assert egress == DOC_V5_EGRESS
    assert ingress["flow-direction"] == "ingress" and ingress["pkt-src-aws-service"] == "S3"
    assert "traffic-path" not in ingress  # "-": not supported for ingress; empty, not 0


def test_the_registry_passes_declared_fields_to_vpcflow() -> None:
    fmt = text_format("vpcflow", fields=[" ".join(f"${{{n}}}" for n in DOC_V5_FORMAT.split())])
    assert isinstance(fmt, VpcFlowFormat)
    assert fmt.parse(DOC_V5_LINES[1], ()) == DOC_V5_EGRESS


def test_a_header_line_wins_over_declared_fields() -> None:
    fmt = VpcFlowFormat(DOC_V5_FORMAT)
    line = (b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 "
            b"4249 1418530010 1418530070 ACCEPT OK")
    assert records([V2, line], fmt)[0]["dstport"] == 22


def test_a_record_that_does_not_fit_the_declared_fields_names_both_counts() -> None:
    with pytest.raises(ParseError, match=r"expected 29 fields \(from the source's declared "
                                         r"fields\), got 14") as ex:
        VpcFlowFormat(DOC_V5_FORMAT).parse(
            b"2 1 eni-1 10.0.0.1 10.0.0.2 1 2 6 1 40 1700000000 1700000001 ACCEPT OK", ())
    assert ex.value.code == "field_count"


@pytest.mark.parametrize("bad", ["", "${}", "${a} ${a}", []])
def test_a_declared_field_list_must_name_distinct_fields(bad: str | list[str]) -> None:
    with pytest.raises(ValueError, match="field"):
        parse_field_list(bad)


def _line(names: tuple[str, ...], version: str) -> tuple[bytes, dict]:
    """A record naming every field, with plausible values (``-`` for the ECS fields)."""
    value = {"version": version, "account-id": "123456789012", "srcaddr": "10.0.0.71",
             "dstaddr": "52.95.128.179", "srcport": "34210", "dstport": "80", "protocol": "6",
             "packets": "7", "bytes": "471", "start": "1616729292", "end": "1616729349",
             "tcp-flags": "3", "traffic-path": "8", "packets-lost-no-route": "0",
             "packets-lost-blackhole": "2", "packets-lost-mtu-exceeded": "0",
             "packets-lost-ttl-expired": "0", "action": "ACCEPT", "log-status": "OK",
             "type": "IPv4", "region": "ap-southeast-2", "flow-direction": "egress",
             "resource-type": "TransitGatewayAttachment"}
    values = [value.get(n, "-" if n.startswith(("ecs-", "sub", "pkt-src-aws")) else f"x-{n}")
              for n in names]
    rec = {n: int(v) if n in INT_FIELDS else v for n, v in zip(names, values, strict=True)
           if v != "-"}
    return " ".join(values).encode(), rec


V5_ALL = FIELDS[:FIELDS.index("ecs-cluster-arn")]
V7_ALL = FIELDS[:FIELDS.index("reject-reason")]


@pytest.mark.parametrize(("names", "version"), [
    (V5_ALL, "5"), (V7_ALL, "7"), (FIELDS, "8"), (TGW_FIELDS, "6")])
def test_standard_layouts_are_recognised_by_their_field_count(names: tuple[str, ...],
                                                              version: str) -> None:
    """Every field of v2-v5, v2-v7, v2-v8 (the "Available fields" order), the TGW default."""
    assert (len(V5_ALL), len(V7_ALL), len(FIELDS), len(TGW_FIELDS)) == (29, 39, 40, 36)
    line, rec = _line(names, version)
    assert VpcFlowFormat().parse(line, ()) == rec


def test_a_transit_gateway_record_keeps_its_counters_as_numbers() -> None:
    line, _ = _line(TGW_FIELDS, "6")
    rec = VpcFlowFormat().parse(line, ())
    assert rec["packets-lost-blackhole"] == 2 and rec["resource-type"] == "TransitGatewayAttachment"
    assert rec["tgw-id"] == "x-tgw-id"


@pytest.mark.parametrize(("names", "version"), [(V5_ALL, "3"), (FIELDS, "5"), (TGW_FIELDS, "2")])
def test_a_standard_count_with_another_version_is_not_guessed(names: tuple[str, ...],
                                                              version: str) -> None:
    line, _ = _line(names, version)
    with pytest.raises(ParseError, match=r"not a standard layout .*\$\{field\} format") as ex:
        VpcFlowFormat().parse(line, ())
    assert ex.value.code == "field_count"


def test_cloudwatch_logs_message_lines_are_read() -> None:
    """A CloudWatch Logs export / Firehose line: {"message": "<record>"}."""
    line = (b"2 123456789010 eni-1235b8ca123456789 172.31.16.139 172.31.16.21 20641 22 6 20 "
            b"4249 1418530010 1418530070 ACCEPT OK")
    wrapped = orjson.dumps({"timestamp": 1418530070000, "message": line.decode()})
    fmt = VpcFlowFormat()
    assert not fmt.is_header(wrapped)
    assert fmt.parse(wrapped, ()) == fmt.parse(line, ())
    assert VpcFlowFormat(DOC_V5_FORMAT).parse(
        orjson.dumps({"message": DOC_V5_LINES[1].decode()}), ()) == DOC_V5_EGRESS
    for bad in (b'{"message": 5}', b'{"msg": "x"}', b"{not json"):
        with pytest.raises(ParseError, match="message") as ex:
            fmt.parse(bad, ())
        assert ex.value.code == "malformed"
