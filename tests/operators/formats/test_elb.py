"""Load balancer access logs (ALB, Classic, NLB): old and new field lists, quoting, addresses."""

from __future__ import annotations

import contextlib
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.formats import ParseError
from operators.formats.elb import (
    ALB_FIELDS,
    ALB_MIN_FIELDS,
    ALBCONN_FIELDS,
    ALBCONN_MIN_FIELDS,
    ELB_FIELDS,
    ELB_MIN_FIELDS,
    NLB_FIELDS,
    NLB_MIN_FIELDS,
    AlbConnectionFormat,
    AlbFormat,
    ClassicElbFormat,
    NlbFormat,
)
from operators.formats.registry import DEFAULT_TABLES, detect, text_format
from operators.schema import Mapper, load_tables

TG = "arn:aws:elasticloadbalancing:us-east-2:123456789012:targetgroup/my-targets/73e2d6bc24d8a067"
CERT = "arn:aws:acm:us-east-2:123456789012:certificate/12345678-1234-1234-1234-123456789012"

# The shape of the AWS documentation's HTTPS example, field by field (33 fields: every field
# AWS has added, through the URL/host rewrite fields).
ALB_PARTS = [
    "https", "2018-07-02T22:23:00.186641Z", "app/my-loadbalancer/50dc6c495c0c9188",
    "192.168.131.39:2817", "10.0.0.1:80", "0.086", "0.048", "0.037", "200", "200", "0", "57",
    '"GET https://www.example.com:443/ HTTP/1.1"', '"curl/7.46.0"', "ECDHE-RSA-AES128-GCM-SHA256",
    "TLSv1.2", TG, '"Root=1-58337281-1d84f3d73c47ec4e58577259"', '"www.example.com"',
    f'"{CERT}"', "1", "2018-07-02T22:22:48.364000Z", '"authenticate,forward"', '"-"', '"-"',
    '"10.0.0.1:80"', '"200"', '"-"', '"-"', "TID_dc57cebed65b444ebc8177bb698fe166",
    '"-"', '"-"', '"-"']
ALB_LINE = " ".join(ALB_PARTS).encode()
ALB_RECORD = {
    "type": "https", "time": "2018-07-02T22:23:00.186641Z",
    "elb": "app/my-loadbalancer/50dc6c495c0c9188", "client_ip": "192.168.131.39",
    "client_port": 2817, "target_ip": "10.0.0.1", "target_port": 80,
    "request_processing_time": 0.086, "target_processing_time": 0.048,
    "response_processing_time": 0.037, "elb_status_code": 200, "target_status_code": 200,
    "received_bytes": 0, "sent_bytes": 57, "request": "GET https://www.example.com:443/ HTTP/1.1",
    "request_method": "GET", "request_url": "https://www.example.com:443/",
    "request_protocol": "HTTP/1.1", "user_agent": "curl/7.46.0",
    "ssl_cipher": "ECDHE-RSA-AES128-GCM-SHA256", "ssl_protocol": "TLSv1.2", "target_group_arn": TG,
    "trace_id": "Root=1-58337281-1d84f3d73c47ec4e58577259", "domain_name": "www.example.com",
    "chosen_cert_arn": CERT, "matched_rule_priority": 1,
    "request_creation_time": "2018-07-02T22:22:48.364000Z",
    "actions_executed": "authenticate,forward", "target_port_list": "10.0.0.1:80",
    "target_status_code_list": "200", "conn_trace_id": "TID_dc57cebed65b444ebc8177bb698fe166"}

# The AWS documentation's Classic examples: an HTTP(S) entry, a TCP entry, an undispatched one.
ELB_HTTPS = (b'2015-05-13T23:39:43.945958Z my-loadbalancer 192.168.131.39:2817 10.0.0.1:80 '
             b'0.000086 0.001048 0.001337 200 200 0 57 "GET https://www.example.com:443/ HTTP/1.1" '
             b'"curl/7.38.0" DHE-RSA-AES128-SHA TLSv1.2')
ELB_TCP = (b'2015-05-13T23:39:43.945958Z my-loadbalancer 192.168.131.39:2817 10.0.0.1:80 0.001069 '
           b'0.000028 0.000041 - - 82 305 "- - - " "-" - -')
ELB_NOT_DISPATCHED = (b'2015-05-13T23:39:43.945958Z my-loadbalancer 192.168.131.39:2817 - -1 -1 -1 '
                      b'504 0 0 0 "GET http://www.example.com:80/ HTTP/1.1" "curl/7.38.0" - -')

# The AWS documentation's NLB example (22 fields: with the ALPN fields and connection start).
NLB_LINE = (b'tls 2.0 2018-12-20T02:59:40 net/my-network-loadbalancer/c6e77e28c25b2234 '
            b'g3d4b5e8bb8464cd 72.21.218.154:51341 172.100.100.185:443 5 2 98 246 - '
            b'arn:aws:acm:us-east-2:671290407336:certificate/'
            b'2a108f19-aded-46b0-8493-c63eb1ef4a99 - '
            b'ECDHE-RSA-AES128-SHA tlsv12 - '
            b'my-network-loadbalancer-c6e77e28c25b2234.elb.us-east-2.amazonaws.com h2 h2 '
            b'"h2","http/1.1" 2018-12-20T02:59:30')


def _cut(parts: list[str], n: int) -> bytes:
    return " ".join(parts[:n]).encode()


def _names(fields: tuple[tuple[str, str], ...], n: int) -> set[str]:
    """Parser keys the first ``n`` fields can give."""
    out: set[str] = set()
    for name, kind in fields[:n]:
        if kind == "addr":
            out |= {f"{name}_ip", f"{name}_port"}
        elif kind == "request":
            out |= {"request", "request_method", "request_url", "request_protocol"}
        else:
            out.add(name)
    return out


# --------------------------------------------------------------------------- ALB


def test_alb_every_field_of_the_documented_entry() -> None:
    fmt = AlbFormat()
    assert not fmt.is_header(ALB_LINE)
    assert fmt.parse(ALB_LINE, ()) == ALB_RECORD


@pytest.mark.parametrize("n", [ALB_MIN_FIELDS, 18, 20, 22, 25, 27, 29, 30, 33])
def test_alb_older_shorter_field_lists_are_accepted(n: int) -> None:
    expected = {k: v for k, v in ALB_RECORD.items() if k in _names(ALB_FIELDS, n)}
    assert AlbFormat().parse(_cut(ALB_PARTS, n), ()) == expected


def test_alb_fields_appended_later_are_ignored() -> None:
    assert AlbFormat().parse(ALB_LINE + b' "future" 10.1.2.3', ()) == ALB_RECORD


def test_alb_rewrite_fields_and_unquoted_target_lists() -> None:
    parts = [*ALB_PARTS]
    parts[25], parts[26] = "10.0.0.1:80", "200"  # older documentation examples leave them bare
    parts[30:33] = ['"api.internal"', '"/v2/items?id=1"', '"TransformSuccessful"']
    rec = AlbFormat().parse(" ".join(parts).encode(), ())
    assert (rec["target_port_list"], rec["target_status_code_list"]) == ("10.0.0.1:80", "200")
    assert rec["transformed_host"] == "api.internal"
    assert rec["transformed_uri"] == "/v2/items?id=1"
    assert rec["request_transform_status"] == "TransformSuccessful"


def test_alb_not_dispatched_keeps_minus_one_times_and_drops_dashes() -> None:
    parts = [*ALB_PARTS]
    parts[4:10] = ["-", "-1", "-1", "-1", "460", "-"]
    parts[23] = '"https://example.com:443/"'
    parts[24] = '"LambdaInvalidResponse"'
    parts[25:27] = ['"-"', '"-"']
    rec = AlbFormat().parse(" ".join(parts).encode(), ())
    assert "target_ip" not in rec and "target_port" not in rec and "target_status_code" not in rec
    assert (rec["request_processing_time"], rec["target_processing_time"],
            rec["response_processing_time"]) == (-1.0, -1.0, -1.0)
    assert rec["elb_status_code"] == 460
    assert rec["redirect_url"] == "https://example.com:443/"
    assert rec["error_reason"] == "LambdaInvalidResponse"
    assert "target_port_list" not in rec


def test_alb_rule_evaluation_error_priority_is_minus_one() -> None:
    parts = [*ALB_PARTS]
    parts[20] = "-1"
    assert AlbFormat().parse(" ".join(parts).encode(), ())["matched_rule_priority"] == -1


@pytest.mark.parametrize(("written", "ip", "port"), [
    ("192.168.131.39:2817", "192.168.131.39", 2817),
    ("2a02:a33c:4538:1:bcf4:5264:e01c:f215:50718", "2a02:a33c:4538:1:bcf4:5264:e01c:f215", 50718),
    ("2001:db8::1:443", "2001:db8::1", 443),  # AWS's form: the port after the last colon
    ("[2001:db8::1]:443", "2001:db8::1", 443),
    ("::ffff:192.0.2.1:8080", "::ffff:192.0.2.1", 8080),
])
def test_addresses_v4_and_v6(written: str, ip: str, port: int) -> None:
    parts = [*ALB_PARTS]
    parts[3] = written
    rec = AlbFormat().parse(" ".join(parts).encode(), ())
    assert (rec["client_ip"], rec["client_port"]) == (ip, port)


@pytest.mark.parametrize(("request_line", "method", "url", "protocol"), [
    ("GET https://www.example.com:443/path?q=1&r=%20x HTTP/1.1", "GET",
     "https://www.example.com:443/path?q=1&r=%20x", "HTTP/1.1"),
    ("POST https://example.com:443/a b HTTP/2.0", "POST", "https://example.com:443/a b",
     "HTTP/2.0"),
    ("- http://www.example.com:80- -", None, "http://www.example.com:80-", None),
    ("GET http://x:80/", "GET", "http://x:80/", None),
])
def test_alb_request_line_is_split(request_line: str, method: str | None, url: str,
                                   protocol: str | None) -> None:
    parts = [*ALB_PARTS]
    parts[12] = f'"{request_line}"'
    rec = AlbFormat().parse(" ".join(parts).encode(), ())
    assert rec["request"] == request_line
    assert (rec.get("request_method"), rec["request_url"], rec.get("request_protocol")) == (
        method, url, protocol)


def test_alb_quotes_escapes_and_bytes_that_are_not_utf8() -> None:
    parts = [*ALB_PARTS]
    parts[13] = r'"Mozilla/5.0 (X11; Linux) \"quoted\" a \\ and a "stray quote"'
    rec = AlbFormat().parse(" ".join(parts).encode(), ())
    assert rec["user_agent"] == 'Mozilla/5.0 (X11; Linux) "quoted" a \\ and a "stray quote'
    line = ALB_LINE.replace(b'"curl/7.46.0"', b'"curl/8 \xff\xfe"')
    assert AlbFormat().parse(line, ())["user_agent"] == "curl/8 \\xff\\xfe"


# --------------------------------------------------------------------------- Classic ELB


def test_classic_https_entry() -> None:
    fmt = ClassicElbFormat()
    assert not fmt.is_header(ELB_HTTPS)
    assert fmt.parse(ELB_HTTPS, ()) == {
        "timestamp": "2015-05-13T23:39:43.945958Z", "elb": "my-loadbalancer",
        "client_ip": "192.168.131.39", "client_port": 2817, "backend_ip": "10.0.0.1",
        "backend_port": 80, "request_processing_time": 0.000086,
        "backend_processing_time": 0.001048, "response_processing_time": 0.001337,
        "elb_status_code": 200, "backend_status_code": 200, "received_bytes": 0, "sent_bytes": 57,
        "request": "GET https://www.example.com:443/ HTTP/1.1", "request_method": "GET",
        "request_url": "https://www.example.com:443/", "request_protocol": "HTTP/1.1",
        "user_agent": "curl/7.38.0", "ssl_cipher": "DHE-RSA-AES128-SHA", "ssl_protocol": "TLSv1.2"}


def test_classic_tcp_listener_has_no_request_or_status() -> None:
    assert ClassicElbFormat().parse(ELB_TCP, ()) == {
        "timestamp": "2015-05-13T23:39:43.945958Z", "elb": "my-loadbalancer",
        "client_ip": "192.168.131.39", "client_port": 2817, "backend_ip": "10.0.0.1",
        "backend_port": 80, "request_processing_time": 0.001069,
        "backend_processing_time": 0.000028, "response_processing_time": 0.000041,
        "received_bytes": 82, "sent_bytes": 305}


def test_classic_not_dispatched() -> None:
    rec = ClassicElbFormat().parse(ELB_NOT_DISPATCHED, ())
    assert "backend_ip" not in rec and rec["request_processing_time"] == -1.0
    assert (rec["elb_status_code"], rec["backend_status_code"]) == (504, 0)


def test_classic_older_lines_without_user_agent_and_tls() -> None:
    line = ELB_HTTPS.split(b' "curl')[0]
    assert line.endswith(b'HTTP/1.1"') and len(line.split()) == ELB_MIN_FIELDS + 2
    rec = ClassicElbFormat().parse(line, ())
    assert rec["request_url"] == "https://www.example.com:443/"
    assert "user_agent" not in rec and "ssl_cipher" not in rec


# --------------------------------------------------------------------------- NLB


NLB_RECORD = {
    "type": "tls", "version": "2.0", "time": "2018-12-20T02:59:40Z",
    "elb": "net/my-network-loadbalancer/c6e77e28c25b2234", "listener": "g3d4b5e8bb8464cd",
    "client_ip": "72.21.218.154", "client_port": 51341, "destination_ip": "172.100.100.185",
    "destination_port": 443, "connection_time": 5, "tls_handshake_time": 2,
    "received_bytes": 98, "sent_bytes": 246,
    "chosen_cert_arn": "arn:aws:acm:us-east-2:671290407336:certificate/"
                       "2a108f19-aded-46b0-8493-c63eb1ef4a99",
    "tls_cipher": "ECDHE-RSA-AES128-SHA", "tls_protocol_version": "tlsv12",
    "domain_name": "my-network-loadbalancer-c6e77e28c25b2234.elb.us-east-2.amazonaws.com",
    "alpn_fe_protocol": "h2", "alpn_be_protocol": "h2",
    "alpn_client_preference_list": '"h2","http/1.1"',
    "tls_connection_creation_time": "2018-12-20T02:59:30Z"}


def test_nlb_documented_entry() -> None:
    fmt = NlbFormat()
    assert not fmt.is_header(NLB_LINE)
    assert fmt.parse(NLB_LINE, ()) == NLB_RECORD


def test_nlb_without_connection_creation_time_and_with_later_fields() -> None:
    short = NLB_LINE.rsplit(b" ", 1)[0]
    assert len(short.split()) == NLB_MIN_FIELDS
    expected = {k: v for k, v in NLB_RECORD.items() if k != "tls_connection_creation_time"}
    assert NlbFormat().parse(short, ()) == expected
    assert NlbFormat().parse(NLB_LINE + b" future-field", ()) == NLB_RECORD


def test_nlb_ipv6_and_incomplete_handshake() -> None:
    v6 = "2401:4900:1d0c:29b7:c9b2:7b5a:e7d0:2380"
    line = NLB_LINE.replace(b"72.21.218.154:51341", f"{v6}:55932".encode())
    line = line.replace(b" 5 2 98 246 - ", b" 5 - 98 0 40 ")
    rec = NlbFormat().parse(line, ())
    assert (rec["client_ip"], rec["client_port"]) == (v6, 55932)
    assert "tls_handshake_time" not in rec
    assert (rec["sent_bytes"], rec["incoming_tls_alert"]) == (0, 40)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("fmt", "line", "code", "message"), [
    (AlbFormat(), b"", "field_count", "at least 17 fields"),
    (AlbFormat(), _cut(ALB_PARTS, 16), "field_count", "at least 17 fields .* got 16"),
    (AlbFormat(), ALB_LINE.replace(b"2018-07-02T22:23:00.186641Z", b"2018-07-02 22:23:00"),
     "bad_time", "field 2 \\(time\\) = '2018-07-02'"),
    (AlbFormat(), ALB_LINE.replace(b"2018-07-02T22:23:00.186641Z", b"02/Jul/2018:22:23:00"),
     "bad_time", "field 2 \\(time\\)"),
    (AlbFormat(), ALB_LINE.replace(b"2018-07-02T22:23:00", b"2018-02-30T22:23:00"),
     "bad_time", "not a valid date"),
    (AlbFormat(), ALB_LINE.replace(b"192.168.131.39:2817", b"192.168.131.39"), "malformed",
     "field 4 \\(client\\) = '192.168.131.39' is not address:port"),
    (AlbFormat(), ALB_LINE.replace(b"192.168.131.39:2817", b"host.example:80"), "malformed",
     "is not address:port"),
    (AlbFormat(), ALB_LINE.replace(b" 200 200 0 57 ", b" OK 200 0 57 "), "not_a_number",
     "field 9 \\(elb_status_code\\) = 'OK' is not a number"),
    (AlbFormat(), ALB_LINE.replace(b"0.086", b"fast"), "not_a_number",
     "request_processing_time"),
    (AlbFormat(), ALB_LINE.replace(b'"curl/7.46.0"', b"curl/7.46.0"), "malformed",
     'field 14 \\(user_agent\\) should be "quoted"'),
    (AlbFormat(), ALB_LINE.replace(b'"curl/7.46.0"', b'"curl" 7.46.0"'), "malformed",
     "unbalanced quote"),
    (AlbFormat(), ALB_LINE.replace(b'"GET https://www.example.com:443/ HTTP/1.1"',
                                   b'"GET https://www.example.com:443/ HTTP/1.1'),
     "malformed", "field 14 \\(user_agent\\) should be \"quoted\""),  # read out of step
    (AlbFormat(), ALB_LINE.replace(b"TLSv1.2", b'"TLS v1.2"'), "malformed",
     "field 16 \\(ssl_protocol\\) should be a bare value"),
    (ClassicElbFormat(), ELB_HTTPS.split(b' "GET')[0], "field_count", "at least 12 fields"),
    (ClassicElbFormat(), ELB_HTTPS.replace(b" 200 200 ", b" 200 x ", 1), "not_a_number",
     "backend_status_code"),
    (NlbFormat(), NLB_LINE.rsplit(b" ", 2)[0], "field_count", "at least 21 fields"),
    (NlbFormat(), NLB_LINE.replace(b"2018-12-20T02:59:40", b"20181220"), "bad_time", "time"),
    (NlbFormat(), NLB_LINE.replace(b" 5 2 98 ", b" 5ms 2 98 "), "not_a_number",
     "connection_time"),
])
def test_lines_of_the_wrong_shape_are_parse_errors(fmt: AlbFormat, line: bytes, code: str,
                                                   message: str) -> None:
    with pytest.raises(ParseError, match=message) as ex:
        fmt.parse(line, ())
    assert ex.value.code == code


def test_pathological_quotes_stay_linear() -> None:
    for body in (b'" ' * 20_000, b'"' * 40_000, b'\\"' * 20_000):
        line = ALB_LINE.replace(b'"curl/7.46.0"', b'"' + body + b'"')
        t0 = time.perf_counter()
        with contextlib.suppress(ParseError):
            AlbFormat().parse(line, ())
        assert time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------------------- mapping and wiring


@pytest.mark.parametrize(("fmt", "table", "fields", "default"), [
    ("alb", "AWSALBAccessLogs_CL", ALB_FIELDS, "AWSALBAccessLogs"),
    ("elb", "AWSELBAccessLogs_CL", ELB_FIELDS, "AWSELBAccessLogs_CL"),
    ("nlb", "AWSNLBAccessLogs_CL", NLB_FIELDS, "AWSNLBAccessLogs"),
])
def test_every_parsed_field_has_a_column(fmt: str, table: str, fields: tuple,
                                         default: str) -> None:
    """The _CL tables read every field the parser splits; ALB and NLB default to the standard
    tables (Classic has none), their _CL tables stay defined for ``table =``."""
    t = load_tables()[table]
    assert DEFAULT_TABLES[fmt] == default
    assert (t.kind, t.stream, t.record_id_column) == ("custom", f"Custom-{table}", "RecordId")
    assert {".".join(c.source) for c in t.columns} == _names(fields, len(fields))
    time_col = next(c for c in t.columns if c.name == "TimeGenerated")
    assert time_col.required and time_col.type == "datetime"


def test_alb_record_maps_onto_the_table() -> None:
    row = orjson.loads(Mapper(load_tables()["AWSALBAccessLogs_CL"]).map_dict(
        AlbFormat().parse(ALB_LINE, ()), "b/k@e-0"))
    assert row == {
        "TimeGenerated": "2018-07-02T22:23:00.186641Z", "ALBType": "https",
        "Alb": "app/my-loadbalancer/50dc6c495c0c9188", "ClientIp": "192.168.131.39",
        "ClientPort": 2817, "TargetIp": "10.0.0.1", "TargetPort": 80,
        "RequestProcessingTime": 0.086, "TargetProcessingTime": 0.048,
        "ResponseProcessingTime": 0.037, "ElbStatusCode": 200, "TargetStatusCode": 200,
        "ReceivedBytes": 0, "SentBytes": 57,
        "RequestRaw": "GET https://www.example.com:443/ HTTP/1.1", "RequestMethod": "GET",
        "RequestUrl": "https://www.example.com:443/", "RequestProtocol": "HTTP/1.1",
        "UserAgent": "curl/7.46.0", "SslCipher": "ECDHE-RSA-AES128-GCM-SHA256",
        "SslProtocol": "TLSv1.2", "TargetGroupArn": TG,
        "TraceId": "Root=1-58337281-1d84f3d73c47ec4e58577259", "DomainName": "www.example.com",
        "ChosenCertArn": CERT, "MatchedRulePriority": 1,
        "RequestCreationTime": "2018-07-02T22:22:48.364000Z",
        "ActionsExecuted": "authenticate,forward", "TargetPortList": "10.0.0.1:80",
        "TargetStatusCodeList": "200", "ConnTraceId": "TID_dc57cebed65b444ebc8177bb698fe166",
        "RecordId": "b/k@e-0"}


def test_classic_and_nlb_records_map_onto_their_tables() -> None:
    tables = load_tables()
    elb = orjson.loads(Mapper(tables["AWSELBAccessLogs_CL"]).map_dict(
        ClassicElbFormat().parse(ELB_TCP, ()), "x-1"))
    assert elb["TimeGenerated"] == "2015-05-13T23:39:43.945958Z"
    assert (elb["BackendIp"], elb["BackendPort"], elb["SentBytes"]) == ("10.0.0.1", 80, 305)
    assert "RequestRaw" not in elb and "ElbStatusCode" not in elb
    nlb = orjson.loads(Mapper(tables["AWSNLBAccessLogs_CL"]).map_dict(
        NlbFormat().parse(NLB_LINE, ()), "x-2"))
    assert nlb["TimeGenerated"] == "2018-12-20T02:59:40Z"
    assert nlb["TlsConnectionCreationTime"] == "2018-12-20T02:59:30Z"
    assert (nlb["DestinationIp"], nlb["DestinationPort"]) == ("172.100.100.185", 443)
    assert nlb["ALPNClientPrefList"] == '"h2","http/1.1"'


def test_registry_builds_the_parsers_and_detects_keys() -> None:
    assert isinstance(text_format("alb"), AlbFormat)
    assert isinstance(text_format("elb"), ClassicElbFormat)
    assert isinstance(text_format("nlb"), NlbFormat)
    base = ("AWSLogs/123456789012/elasticloadbalancing/us-east-2/2018/07/02/"
            "123456789012_elasticloadbalancing_us-east-2")
    alb = f"{base}_app.my-loadbalancer.50dc6c495c0c9188_20180702T2220Z_192.0.2.1_2xhx.log.gz"
    assert detect(alb) == "alb"
    assert detect(f"{base}_net.my-nlb.c6e77e28c25b2234_20181220T0255Z_2xhx.log.gz") == "nlb"
    assert detect(f"{base}_my-loadbalancer_20150513T2340Z_192.0.2.1_2xhx.log") == "elb"


# --------------------------------------------------------------------------- properties

_bare = st.text("abcXYZ019-_./:=+%,", min_size=1, max_size=20).filter(lambda s: s != "-")
_quoted = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None)
@given(n=st.integers(ALB_MIN_FIELDS, len(ALB_FIELDS)), data=st.data())
def test_any_alb_record_round_trips(n: int, data: st.DataObject) -> None:
    rec: dict = {}
    parts: list[str] = []
    for name, kind in ALB_FIELDS[:n]:
        if kind == "time":
            parts.append("2018-07-02T22:23:00.186641Z")
            rec[name] = parts[-1]
        elif kind in ("int", "real"):
            v = data.draw(st.none() | st.integers(-1, 2**42), label=name)
            parts.append("-" if v is None else str(v))
            if v is not None:
                rec[name] = float(v) if kind == "real" else v
        elif kind == "addr":
            v = data.draw(st.none() | st.tuples(st.ip_addresses(), st.integers(0, 65535)),
                          label=name)
            parts.append("-" if v is None else f"{v[0]}:{v[1]}")
            if v is not None:
                rec[f"{name}_ip"], rec[f"{name}_port"] = str(v[0]), v[1]
        elif kind == "request":
            m, u, p = (data.draw(_bare, label=x) for x in ("method", "url", "protocol"))
            parts.append(_q(f"{m} {u} {p}"))
            rec.update(request=f"{m} {u} {p}", request_method=m, request_url=u,
                       request_protocol=p)
        elif kind == "bare":
            v = data.draw(st.none() | _bare, label=name)
            parts.append("-" if v is None else v)
            if v is not None:
                rec[name] = v
        else:
            v = data.draw(st.none() | _quoted, label=name)
            parts.append('"-"' if v is None else _q(v))
            if v is not None and v != "-":
                rec[name] = v
    assert AlbFormat().parse(" ".join(parts).encode(), ()) == rec


@settings(max_examples=2000, deadline=None)
@given(text=st.text('ab "\\-\t', max_size=30))
def test_the_fast_tokenizer_agrees_with_the_regex(text: str) -> None:
    from operators.formats.elb import _tokens_quoted, _tokens_regex

    assert _tokens_quoted(text) == _tokens_regex(text)


# --------------------------------------------------------------------------- ALB connection logs

# AWS Knowledge Center, "How do I identify and resolve client connection issues when I use mTLS
# with the Application Load Balancer?": its lines print fields 1, 5, 6 and 8-11 of a connection
# log entry; client IP, client port, listener port and handshake latency are filled in here.
CONN_EXPIRED = (
    b'2024-04-05T18:31:29.268987Z 192.0.2.10 55012 443 TLSv1.3 ECDHE-RSA-AES256-SHA 0.004 '
    b'"CN=client-expired.alb-mtls-example.com,OU=IT,O=Company LLC,L=City,ST=State,C=US" '
    b'NotBefore=2024-01-02T19:17:20Z;NotAfter=2024-04-02T19:17:20Z 02 "Failed:ClientCertExpired"')
CONN_OK = (
    b'2024-04-05T18:31:30.000001Z 192.0.2.11 55013 443 TLSv1.2 ECDHE-RSA-AES128-GCM-SHA256 0.012 '
    b'"CN=client.alb-mtls-example.com,OU=IT,O=Company LLC,L=City,ST=State,C=US" '
    b'NotBefore=2024-01-02T19:17:20Z;NotAfter=2025-01-02T19:17:20Z 0A1B Success '
    b'TID_1234abcd5678ef90')


def test_alb_connection_log_entries() -> None:
    """11 fields (the first format) and 12 (conn_trace_id added); quoted status as AWS shows it."""
    fmt = AlbConnectionFormat()
    assert not fmt.is_header(CONN_OK)
    assert fmt.parse(CONN_EXPIRED, ()) == {
        "time": "2024-04-05T18:31:29.268987Z", "client_ip": "192.0.2.10", "client_port": 55012,
        "listener_port": 443, "tls_protocol": "TLSv1.3", "tls_cipher": "ECDHE-RSA-AES256-SHA",
        "tls_handshake_latency": 0.004,
        "leaf_client_cert_subject":
            "CN=client-expired.alb-mtls-example.com,OU=IT,O=Company LLC,L=City,ST=State,C=US",
        "leaf_client_cert_validity": "NotBefore=2024-01-02T19:17:20Z;NotAfter=2024-04-02T19:17:20Z",
        "leaf_client_cert_serial_number": "02", "tls_verify_status": "Failed:ClientCertExpired"}
    ok = fmt.parse(CONN_OK, ())
    assert ok["tls_verify_status"] == "Success" and ok["conn_trace_id"] == "TID_1234abcd5678ef90"
    assert [n for n, _ in ALBCONN_FIELDS][ALBCONN_MIN_FIELDS - 1] == "tls_verify_status"


def test_alb_connection_no_value_is_empty_not_zero() -> None:
    """A connection without a client certificate or completed handshake: "-" stays empty."""
    line = (b'2024-04-05T18:31:31.5Z 192.0.2.12 55014 443 - - - "-" - - '
            b'Failed:UnmappedConnectionError -')
    assert AlbConnectionFormat().parse(line, ()) == {
        "time": "2024-04-05T18:31:31.5Z", "client_ip": "192.0.2.12", "client_port": 55014,
        "listener_port": 443, "tls_verify_status": "Failed:UnmappedConnectionError"}


@pytest.mark.parametrize(("line", "code"), [
    (CONN_OK.rsplit(b" ", 2)[0], "field_count"),                       # 10 fields
    (CONN_OK.replace(b" 55013 ", b" port "), "not_a_number"),
    (CONN_OK.replace(b"2024-04-05T18:31:30", b"05/Apr/2024:18:31:30"), "bad_time"),
    (CONN_OK.replace(b'"CN=client.alb-mtls-example.com,OU=IT,O=Company LLC,L=City,ST=State,C=US"',
                     b"CN=client"), "malformed"),                       # subject not quoted
])
def test_malformed_alb_connection_lines(line: bytes, code: str) -> None:
    with pytest.raises(ParseError) as ex:
        AlbConnectionFormat().parse(line, ())
    assert ex.value.code == code


def test_an_alb_access_parser_rejects_connection_lines() -> None:
    """Why connection logs need a format of their own: as ALB access lines they are errors."""
    with pytest.raises(ParseError):
        AlbFormat().parse(CONN_OK, ())


def test_alb_connection_logs_are_detected_and_map_onto_their_table() -> None:
    base = "AWSLogs/123456789012/elasticloadbalancing/us-east-2/2024/04/05"
    conn = (f"{base}/conn_log.123456789012_elasticloadbalancing_us-east-2_app.my-lb."
            "50dc6c495c0c9188_20240405T1835Z_192.0.2.1_2xhxdobf.log.gz")
    access = (f"{base}/123456789012_elasticloadbalancing_us-east-2_app.my-lb.50dc6c495c0c9188_"
              "20240405T1835Z_192.0.2.1_2xhxdobf.log.gz")
    assert detect(conn) == "albconn" and detect(access) == "alb"
    assert DEFAULT_TABLES["albconn"] == "AWSALBConnectionLogs_CL"
    assert isinstance(text_format("albconn"), AlbConnectionFormat)
    table = load_tables()["AWSALBConnectionLogs_CL"]
    assert {".".join(c.source) for c in table.columns} == {n for n, _ in ALBCONN_FIELDS}
    row = orjson.loads(Mapper(table).map_dict(AlbConnectionFormat().parse(CONN_OK, ()), "r1"))
    assert row["TimeGenerated"] == "2024-04-05T18:31:30.000001Z"
    assert (row["ClientPort"], row["ListenerPort"], row["TlsHandshakeLatency"]) == (55013, 443, 0.012)
    assert row["TlsVerifyStatus"] == "Success" and row["ConnTraceId"] == "TID_1234abcd5678ef90"
    assert row["RecordId"] == "r1"


# --------------------------------------------------------------------------- the standard tables

ALB_WRITTEN = {
    "type": "https", "time": "2018-07-02T22:23:00.186641Z",
    "elb": "app/my-loadbalancer/50dc6c495c0c9188", "client_ip": "192.168.131.39",
    "client_port": 2817, "target_ip": "10.0.0.1", "target_port": 80,
    "request_processing_time": "0.086", "target_processing_time": "0.048",
    "response_processing_time": "0.037", "elb_status_code": "200", "target_status_code": "200",
    "received_bytes": "0", "sent_bytes": "57", "request": "GET https://www.example.com:443/ HTTP/1.1",
    "user_agent": "curl/7.46.0", "ssl_cipher": "ECDHE-RSA-AES128-GCM-SHA256",
    "ssl_protocol": "TLSv1.2", "target_group_arn": TG,
    "trace_id": "Root=1-58337281-1d84f3d73c47ec4e58577259", "domain_name": "www.example.com",
    "chosen_cert_arn": CERT, "matched_rule_priority": "1",
    "request_creation_time": "2018-07-02T22:22:48.364000Z",
    "actions_executed": "authenticate,forward", "target_port_list": "10.0.0.1:80",
    "target_status_code_list": "200", "conn_trace_id": "TID_dc57cebed65b444ebc8177bb698fe166"}

# The Azure Monitor reference's AWSALBAccessLogs row for the documented HTTPS entry (columns in
# the table's order, the record id last).
ALB_STANDARD_ROW = {
    "ActionsExecuted": "authenticate,forward", "Alb": "app/my-loadbalancer/50dc6c495c0c9188",
    "ALBType": "https", "ChosenCertArn": CERT, "ClientIp": "192.168.131.39", "ClientPort": 2817,
    "ConnTraceId": "TID_dc57cebed65b444ebc8177bb698fe166", "DomainName": "www.example.com",
    "ElbStatusCode": 200, "MatchedRulePriority": "1", "ReceivedBytes": 0,
    "RequestCreationTime": "2018-07-02T22:22:48.364000Z", "RequestProcessingTime": "0.086",
    "RequestRaw": "GET https://www.example.com:443/ HTTP/1.1", "ResponseProcessingTime": "0.037",
    "SentBytes": 57, "SslCipher": "ECDHE-RSA-AES128-GCM-SHA256", "SslProtocol": "TLSv1.2",
    "TargetGroupArn": TG, "TargetIp": "10.0.0.1", "TargetPort": 80, "TargetPortList": "10.0.0.1:80",
    "TargetProcessingTime": "0.048", "TargetStatusCode": "200", "TargetStatusCodeList": "200",
    "TimeGenerated": "2018-07-02T22:23:00.186641Z",
    "TraceId": "Root=1-58337281-1d84f3d73c47ec4e58577259", "UserAgent": "curl/7.46.0",
    "RecordId_CF": "r1"}

NLB_STANDARD_ROW = {
    "ALPNBEProtocol": "h2", "ALPNClientPrefList": '"h2","http/1.1"', "ALPNFEProtocol": "h2",
    "ChosenCertArn": "arn:aws:acm:us-east-2:671290407336:certificate/"
                     "2a108f19-aded-46b0-8493-c63eb1ef4a99",
    "ClientIPPort": "72.21.218.154:51341", "ConnectionTime": "5",
    "DomainName": "my-network-loadbalancer-c6e77e28c25b2234.elb.us-east-2.amazonaws.com",
    "Listener": "g3d4b5e8bb8464cd", "Nlb": "net/my-network-loadbalancer/c6e77e28c25b2234",
    "NLBType": "tls", "ReceivedBytes": "98", "SentBytes": "246",
    "TargetIPPort": "172.100.100.185:443", "TimeGenerated": "2018-12-20T02:59:40Z",
    "TLSCipher": "ECDHE-RSA-AES128-SHA", "TLSConnectionCreationTime": "2018-12-20T02:59:30",
    "TlsHandshakeTime": "2", "TLSProtocolVersion": "tlsv12", "Version": "2.0",
    "RecordId_CF": "r2"}


def _standard(fmt: str) -> AlbFormat:
    parser = text_format(fmt)
    assert parser is not None and parser.table == DEFAULT_TABLES[fmt]  # type: ignore[attr-defined]
    return parser  # type: ignore[return-value]


def test_alb_records_for_the_standard_table_are_as_aws_wrote_them() -> None:
    """For AWSALBAccessLogs: numbers and times as written (the table types most as strings),
    the request line whole (no method, URL, protocol columns); addresses split as it has them."""
    assert _standard("alb").parse(ALB_LINE, ()) == ALB_WRITTEN
    assert text_format("alb", table="AWSALBAccessLogs_CL").parse(ALB_LINE, ()) == ALB_RECORD  # type: ignore[union-attr]


def test_alb_documented_entry_onto_the_standard_table() -> None:
    table = load_tables()["AWSALBAccessLogs"]
    row = orjson.loads(Mapper(table).map_dict(_standard("alb").parse(ALB_LINE, ()), "r1"))
    assert row == ALB_STANDARD_ROW
    assert list(row) == list(ALB_STANDARD_ROW)  # the table's order, the record id last


def test_alb_standard_row_keeps_minus_one_and_zero_times_as_written() -> None:
    """-1 (not dispatched) and 0.000 stay the text AWS wrote, not -1.0 and 0.0."""
    parts = ALB_PARTS[:ALB_MIN_FIELDS]
    parts[4:8] = ["-", "-1", "-1", "0.000"]  # target, request/target/response times
    parts[9] = "-"  # no target status
    row = orjson.loads(Mapper(load_tables()["AWSALBAccessLogs"]).map_dict(
        _standard("alb").parse(" ".join(parts).encode(), ()), "r"))
    assert (row["RequestProcessingTime"], row["TargetProcessingTime"],
            row["ResponseProcessingTime"]) == ("-1", "-1", "0.000")
    assert not {"TargetIp", "TargetPort", "TargetStatusCode"} & set(row)


def test_alb_rewrite_fields_are_kept_in_additional_fields() -> None:
    parts = [*ALB_PARTS[:30], '"www.example.org"', '"/new?x=1"', '"TransformSuccess"']
    row = orjson.loads(Mapper(load_tables()["AWSALBAccessLogs"]).map_dict(
        _standard("alb").parse(" ".join(parts).encode(), ()), "r"))
    assert row["AdditionalFields_CF"] == {"transformed_host": "www.example.org",
                                          "transformed_uri": "/new?x=1",
                                          "request_transform_status": "TransformSuccess"}


def test_nlb_documented_entry_onto_the_standard_table() -> None:
    rec = _standard("nlb").parse(NLB_LINE, ())
    assert (rec["client"], rec["destination"]) == ("72.21.218.154:51341", "172.100.100.185:443")
    assert not {"client_ip", "client_port", "destination_ip", "destination_port"} & set(rec)
    row = orjson.loads(Mapper(load_tables()["AWSNLBAccessLogs"]).map_dict(rec, "r2"))
    assert row == NLB_STANDARD_ROW
    assert list(row) == list(NLB_STANDARD_ROW)


def test_standard_shape_still_checks_every_field() -> None:
    """Kept as written, but never unchecked: a bad number, time or address is still an error."""
    for fmt, line, bad in (("alb", ALB_LINE, b" 0.086 "), ("nlb", NLB_LINE, b" 5 2 98 ")):
        wrong = line.replace(bad, b" 0.0x6 " if fmt == "alb" else b" 5 2 9x8 ", 1)
        with pytest.raises(ParseError):
            _standard(fmt).parse(wrong, ())
    with pytest.raises(ParseError):
        _standard("nlb").parse(NLB_LINE.replace(b"72.21.218.154:51341", b"72.21.218.154"), ())
    with pytest.raises(ParseError):
        _standard("alb").parse(ALB_LINE.replace(b"2018-07-02T22:23:00.186641Z", b"yesterday", 1),
                               ())
