"""AWS Network Firewall flow and alert logs onto AWSNetworkFirewallFlow and AWSNetworkFirewallAlert.

The records follow "Contents of a AWS Network Firewall log" (its alert and flow examples, with
``event_timestamp`` a string of epoch seconds) and "Logging for TLS inspection" (a number
there). Flow records are JSON mapped straight from their bytes: every golden row is checked
on both paths of the Mapper. Alert records go through their parser (``event_timestamp`` to a
number, for the table's datetime column); their rows are checked on both paths too, from the
parsed record.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.config import SourceConfig
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Row
from operators.formats import ParseError
from operators.formats.networkfirewall import NetworkFirewallFormat
from operators.formats.registry import DEFAULT_TABLES, detect, framing_of, text_format
from operators.parse import RecordMapper
from operators.schema import Mapper, MappingError, load_tables
from tests.operators.formats.strategies import mutations as _mutations

TABLES = load_tables()
FLOW = Mapper(TABLES["AWSNetworkFirewallFlow"])
ALERT = Mapper(TABLES["AWSNetworkFirewallAlert"])
PARSER = NetworkFirewallFormat()

# The documentation's alert example (a connection allowed by a stateful rule).
ALERT_LINE = (
    b'{"firewall_name":"firewall","availability_zone":"zone","event_timestamp":"1601074865",'
    b'"event":{"timestamp":"2020-09-25T23:01:05.598481+0000","flow_id":1111111111111111,'
    b'"event_type":"alert","src_ip":"10.16.197.56","src_port":49157,"dest_ip":"10.16.197.55",'
    b'"dest_port":8883,"proto":"TCP","alert":{"action":"allowed","signature_id":2,"rev":0,'
    b'"signature":"","category":"","severity":3}}}')
ALERT_ROW = {
    "AlertAction": "allowed", "AvailabilityZone": "zone", "Category": "",
    "DestIp": "10.16.197.55", "DestPort": "8883", "EventTimestamp": "2020-09-25T23:01:05Z",
    "EventType": "alert", "FirewallName": "firewall", "FlowId": "1111111111111111",
    "Proto": "TCP", "Rev": "0", "Severity": "3", "Signature": "", "SignatureId": "2",
    "SrcIp": "10.16.197.56", "SrcPort": "49157", "TimeGenerated": "2020-09-25T23:01:05.598481Z",
    "Timestamp": "2020-09-25T23:01:05.598481Z", "RecordId_CF": "r"}

# The documentation's flow example (netflow traffic, one direction).
FLOW_LINE = (
    b'{"firewall_name":"firewall","availability_zone":"us-east-1b","event_timestamp":"1601587565",'
    b'"event":{"timestamp":"2020-10-01T21:26:05.007515+0000","flow_id":1770453319291727,'
    b'"event_type":"netflow","src_ip":"45.129.33.153","src_port":47047,'
    b'"dest_ip":"172.31.16.139","dest_port":16463,"proto":"TCP","netflow":{"pkts":1,"bytes":60,'
    b'"start":"2020-10-01T21:25:04.070479+0000","end":"2020-10-01T21:25:04.070479+0000","age":0,'
    b'"min_ttl":241,"max_ttl":241},"tcp":{"tcp_flags":"02","syn":true}}}')
FLOW_ROW = {
    "AvailabilityZone": "us-east-1b", "DestIp": "172.31.16.139", "DestPort": "16463",
    "EventTimestamp": "1601587565", "EventType": "netflow", "FirewallName": "firewall",
    "FlowId": "1770453319291727", "NetFlowAge": "0", "NetFlowBytes": "60",
    "NetFlowEnd": "2020-10-01T21:25:04.070479Z", "NetFlowMaxttl": "241", "NetFlowMinttl": "241",
    "NetFlowPkts": "1", "NetFlowStart": "2020-10-01T21:25:04.070479Z", "Proto": "TCP",
    "SrcIp": "45.129.33.153", "SrcPort": "47047", "Syn": True, "TCPFlags": "02",
    "TimeGenerated": "2020-10-01T21:26:05.007515Z", "Timestamp": "2020-10-01T21:26:05.007515Z",
    "RecordId_CF": "r"}


def both_json(m: Mapper, line: bytes) -> dict[str, Any]:
    fast = orjson.loads(m.map_json(line, "r"))
    generic = orjson.loads(m.map_dict(orjson.loads(line), "r"))
    assert fast == generic and list(fast) == list(generic)
    return fast


def both_parsed(m: Mapper, rec: dict[str, Any]) -> dict[str, Any]:
    """The parsed record's row on both paths (the Mapper's fast path on the record's JSON)."""
    generic = orjson.loads(m.map_dict(copy.deepcopy(rec), "r"))
    fast = orjson.loads(m.map_json(orjson.dumps(rec), "r"))
    assert fast == generic and list(fast) == list(generic)
    return generic


# --------------------------------------------------------------------------- flow


def test_flow_golden_row() -> None:
    row = both_json(FLOW, FLOW_LINE)
    assert row == FLOW_ROW
    assert list(row) == list(FLOW_ROW)  # the table's order, the record id last


def test_flow_tcp_flags_and_app_proto() -> None:
    rec = orjson.loads(FLOW_LINE)
    rec["event"]["app_proto"] = "tls"
    rec["event"]["tcp"] = {"tcp_flags": "1b", "syn": True, "fin": True, "psh": True, "ack": True}
    row = both_json(FLOW, orjson.dumps(rec))
    assert (row["AppProto"], row["TCPFlags"], row["Syn"], row["Fin"], row["Psh"], row["Ack"]) == (
        "tls", "1b", True, True, True, True)
    assert "Rst" not in row and "Ecn" not in row  # a flag not seen is empty, not false


def test_flow_event_timestamp_is_kept_as_written() -> None:
    """The flow table types EventTimestamp string: AWS's text, or a number (the TLS-log form)
    written as text."""
    rec = orjson.loads(FLOW_LINE)
    rec["event_timestamp"] = 1719943304
    assert both_json(FLOW, orjson.dumps(rec))["EventTimestamp"] == "1719943304"


def test_flow_fields_without_a_column_land_in_additional_fields_on_the_fast_path() -> None:
    rec = orjson.loads(FLOW_LINE)
    rec["aws_category"] = ["Search Engines and Portals"]
    rec["event"]["tls_inspected"] = True
    line = orjson.dumps(rec)
    m = Mapper(TABLES["AWSNetworkFirewallFlow"])
    expected = orjson.loads(m.map_dict(orjson.loads(line), "r"))

    def generic(*_: Any) -> bytes:
        raise AssertionError("took the generic path")

    m.row_dict = generic  # type: ignore[method-assign]
    row = orjson.loads(m.map_json(line, "r"))
    assert row == expected
    assert row["AdditionalFields_CF"] == {"aws_category": ["Search Engines and Portals"],
                                          "event.tls_inspected": True}
    rec["event"]["tcp"]["cwr"] = True  # undocumented: the generic path keeps it
    assert both_json(FLOW, orjson.dumps(rec))["AdditionalFields_CF"]["event.tcp.cwr"] is True


# --------------------------------------------------------------------------- alert


def test_alert_parser_turns_only_the_epoch_string_into_a_number() -> None:
    rec = PARSER.parse(ALERT_LINE, ())
    assert rec == {**orjson.loads(ALERT_LINE), "event_timestamp": 1601074865}
    assert not PARSER.is_header(ALERT_LINE)


def test_alert_golden_row() -> None:
    row = both_parsed(ALERT, PARSER.parse(ALERT_LINE, ()))
    assert row == ALERT_ROW
    assert list(row) == list(ALERT_ROW)


def test_alert_with_tls_verdict_and_http() -> None:
    rec = orjson.loads(ALERT_LINE)
    rec["event"].update({"tx_id": 0, "app_proto": "tls", "direction": "to_server",
                         "pkt_src": "wire/pcap", "verdict": {"action": "drop"},
                         "tls": {"sni": "malware.example.com", "version": "TLS 1.2",
                                 "subject": "CN=malware.example.com"},
                         "alert": {**rec["event"]["alert"], "action": "blocked", "gid": 1,
                                   "metadata": {"policy": ["x"]}}})
    row = both_parsed(ALERT, PARSER.parse(orjson.dumps(rec), ()))
    assert (row["TxId"], row["AppProto"], row["Direction"], row["PktSrc"], row["VerdictAction"],
            row["Sni"], row["Version"], row["AlertAction"]) == (
        "0", "tls", "to_server", "wire/pcap", "drop", "malware.example.com", "TLS 1.2", "blocked")
    assert row["AdditionalFields_CF"] == {"event.tls.subject": "CN=malware.example.com",
                                          "event.alert.gid": 1,
                                          "event.alert.metadata": {"policy": ["x"]}}


@pytest.mark.parametrize(("written", "expected"), [
    ("1601074865", "2020-09-25T23:01:05Z"), (1601074865, "2020-09-25T23:01:05Z"),
    ("1719943304", "2024-07-02T18:01:44Z"), ("1601074865123", "2020-09-25T23:01:05.123000Z")])
def test_alert_event_timestamp_as_string_or_number(written: Any, expected: str) -> None:
    rec = {**orjson.loads(ALERT_LINE), "event_timestamp": written}
    row = both_parsed(ALERT, PARSER.parse(orjson.dumps(rec), ()))
    assert row["EventTimestamp"] == expected


@pytest.mark.parametrize("written", ["16010 74865", "-1601074865", "1601074865.5", "soon",
                                     "１６０１０７４８６５", "9" * 20])
def test_an_event_timestamp_that_is_no_epoch_is_a_mapping_error(written: str) -> None:
    rec = PARSER.parse(orjson.dumps({**orjson.loads(ALERT_LINE), "event_timestamp": written}), ())
    assert rec["event_timestamp"] == written  # left as written
    with pytest.raises(MappingError) as ex:
        ALERT.map_dict(rec, "r")
    assert ex.value.code == "wrong_type"


@pytest.mark.parametrize(("line", "code"), [
    (b"", "invalid_json"), (b"{", "invalid_json"), (b"[1]", "not_an_object"),
    (b'"event"', "not_an_object"), (b"null", "not_an_object"), (b"\xff{}", "invalid_json"),
    (b"[" * 2000 + b"]" * 2000, "too_deep")])
def test_lines_that_are_not_json_objects_are_parse_errors(line: bytes, code: str) -> None:
    with pytest.raises(ParseError) as ex:
        PARSER.parse(line, ())
    assert ex.value.code == code and ex.value.reason


# --------------------------------------------------------------------------- both


@pytest.mark.parametrize(("m", "line", "parse"), [(FLOW, FLOW_LINE, False),
                                                  (ALERT, ALERT_LINE, True)])
def test_a_record_without_its_event_time_is_a_mapping_error(m: Mapper, line: bytes,
                                                            parse: bool) -> None:
    rec = orjson.loads(line)
    del rec["event"]["timestamp"]
    if parse:
        rec = PARSER.parse(orjson.dumps(rec), ())
    with pytest.raises(MappingError, match=r"column TimeGenerated") as ex:
        m.map_dict(rec, "r")
    assert ex.value.code == "missing_required"


def test_registry_keys_and_tables() -> None:
    base = "AWSLogs/111122223333/network-firewall"
    flow = (f"{base}/flow/us-east-1/test-firewall/2026/11/01/10/111122223333_network-firewall_"
            "flow_us-east-1_test-firewall_202611011005_a1b2c3d4.log.gz")
    alert = flow.replace("/flow/", "/alert/").replace("_flow_", "_alert_")
    assert detect(flow) == "nfwflow" and detect(alert) == "nfwalert"
    assert detect(f"prefix/{flow}") == "nfwflow"  # with the optional bucket prefix
    assert (DEFAULT_TABLES["nfwflow"], DEFAULT_TABLES["nfwalert"]) == (
        "AWSNetworkFirewallFlow", "AWSNetworkFirewallAlert")
    assert framing_of("nfwflow") == framing_of("nfwalert") == "lines"
    assert text_format("nfwflow") is None
    assert isinstance(text_format("nfwalert"), NetworkFirewallFormat)


def test_records_map_through_the_flow_mapper() -> None:
    mapper = RecordMapper([SourceConfig(name="all", bucket="b", format="auto")], TABLES,
                          max_row_bytes=1_000_000)
    for fmt, line in (("nfwflow", FLOW_LINE), ("nfwalert", ALERT_LINE)):
        obj = ObjectRef("all", "all:0/1", "b", "k", "e", 1, fmt)
        row = mapper(RawRecord(obj, 3, line))
        assert type(row) is Row and row.stream == f"Custom-{DEFAULT_TABLES[fmt]}"
        assert orjson.loads(row.data)["RecordId_CF"] == f"{obj.id}-3"
        for bad in (b"not json", b"[" * 3000 + b"]" * 3000, b'{"event": {}}'):
            err = mapper(RawRecord(obj, 4, bad))
            assert type(err) is ErrorRecord and err.offset == 4 and err.reason


# --------------------------------------------------------------------------- hostile input


@settings(max_examples=400, deadline=None)
@given(line=st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_parse_and_mapping_errors(line: bytes) -> None:
    with contextlib.suppress(ParseError, MappingError):
        ALERT.map_dict(PARSER.parse(line, ()), "r")
    with contextlib.suppress(MappingError):
        FLOW.map_json(line, "r")




@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=st.sampled_from([(FLOW, FLOW_LINE), (ALERT, ALERT_LINE)]))
def test_both_paths_agree_on_any_shape(data: st.DataObject, case: tuple[Mapper, bytes]) -> None:
    m, line = case
    rec = orjson.loads(line)
    rec["event"] = data.draw(_mutations(rec["event"]))
    if isinstance(rec["event"].get("netflow"), dict):
        rec["event"]["netflow"] = data.draw(_mutations(rec["event"]["netflow"]))
    rec = data.draw(_mutations(rec))
    outcomes = []
    for call in (lambda: m.map_json(orjson.dumps(rec), "r"),
                 lambda: m.map_dict(copy.deepcopy(rec), "r")):
        try:
            outcomes.append(orjson.loads(call()))
        except MappingError as ex:
            outcomes.append(ex.code)
    assert outcomes[0] == outcomes[1]


def test_a_huge_line_parses_in_linear_time() -> None:
    rec = orjson.loads(ALERT_LINE)
    small = orjson.dumps({**rec, "x": "a" * 200_000})
    large = orjson.dumps({**rec, "x": "a" * 2_000_000})
    t0 = time.perf_counter()
    PARSER.parse(small, ())
    t1 = time.perf_counter()
    assert PARSER.parse(large, ())["x"] == "a" * 2_000_000
    assert time.perf_counter() - t1 < max(20 * (t1 - t0), 1.0)
