"""S3 server access logs: quoting and brackets, old and new field lists, shape checks, mapping."""

from __future__ import annotations

import contextlib
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from operators.formats import ParseError
from operators.formats.registry import detect, text_format
from operators.formats.s3access import FIELDS, MIN_FIELDS, S3AccessFormat
from operators.schema import Mapper, load_tables

OWNER = "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be"
HOST_ID = "s9lzHYrFp76ZVxRcpX9+5cjAnEH2ROuNkd2BHfIa6UkFVdtjf5mKR3/eTPFvsiP/XV/VLi31234="
# The AWS documentation's first example record (26 fields), field by field.
DOC_PARTS = [
    OWNER, "amzn-s3-demo-bucket1", "[06/Feb/2019:00:00:38 +0000]", "192.0.2.3", OWNER,
    "3E57427F3EXAMPLE", "REST.GET.VERSIONING", "-",
    '"GET /amzn-s3-demo-bucket1?versioning HTTP/1.1"', "200", "-", "113", "-", "7", "-", '"-"',
    '"S3Console/0.4"', "-", HOST_ID, "SigV4", "ECDHE-RSA-AES128-GCM-SHA256", "AuthHeader",
    "amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com", "TLSV1.2",
    "arn:aws:s3:us-west-1:123456789012:accesspoint/example-AP", "Yes"]
DOC_LINE = " ".join(DOC_PARTS).encode()
DOC_RECORD = {
    "bucket_owner": OWNER, "bucket": "amzn-s3-demo-bucket1", "time": "2019-02-06T00:00:38Z",
    "remote_ip": "192.0.2.3", "requester": OWNER, "request_id": "3E57427F3EXAMPLE",
    "operation": "REST.GET.VERSIONING",
    "request_uri": "GET /amzn-s3-demo-bucket1?versioning HTTP/1.1", "http_status": 200,
    "bytes_sent": 113, "total_time": 7, "user_agent": "S3Console/0.4", "host_id": HOST_ID,
    "signature_version": "SigV4", "cipher_suite": "ECDHE-RSA-AES128-GCM-SHA256",
    "authentication_type": "AuthHeader",
    "host_header": "amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com", "tls_version": "TLSV1.2",
    "access_point_arn": "arn:aws:s3:us-west-1:123456789012:accesspoint/example-AP",
    "acl_required": "Yes"}


def parse(line: bytes) -> dict:
    fmt = S3AccessFormat()
    assert not fmt.is_header(line)
    return fmt.parse(line, ())


def test_the_documented_example_record() -> None:
    assert parse(DOC_LINE) == DOC_RECORD


def _cut(n: int) -> bytes:
    """The example record as written when it had only its first ``n`` fields."""
    return " ".join(DOC_PARTS[:n]).encode()


@pytest.mark.parametrize("n", [17, 18, 19, 24, 25, 26])
def test_older_shorter_field_lists_are_accepted(n: int) -> None:
    expected = {k: v for k, v in DOC_RECORD.items() if FIELDS.index(k) < n}
    assert parse(_cut(n)) == expected


def test_fields_appended_after_acl_required_are_ignored() -> None:
    assert parse(DOC_LINE + b" eu-west-1 something-new") == DOC_RECORD


def test_quoted_fields_with_spaces_escaped_quotes_and_a_stray_quote() -> None:
    line = (f'{OWNER} b [06/Feb/2019:00:00:38 +0000] 2001:db8::7 arn:aws:iam::1:user/a REQ '
            'REST.GET.OBJECT photos/2019/a%20b.jpg "GET /b/photos/2019/a%20b.jpg?x=1&y=2 HTTP/1.1" '
            '206 - 1024 4096 12 10 "https://example.com/page?q=\\"x\\"" '
            '"Mozilla/5.0 (X11; Linux) \\"quoted\\" and a "stray quote \\\\" '
            'AbCdVersion - SigV4 - QueryString b.s3.amazonaws.com -').encode()
    rec = parse(line)
    assert rec["remote_ip"] == "2001:db8::7"
    assert rec["key"] == "photos/2019/a%20b.jpg"
    assert rec["request_uri"] == "GET /b/photos/2019/a%20b.jpg?x=1&y=2 HTTP/1.1"
    assert rec["referer"] == 'https://example.com/page?q="x"'
    assert rec["user_agent"] == 'Mozilla/5.0 (X11; Linux) "quoted" and a "stray quote \\'
    assert (rec["object_size"], rec["turn_around_time"]) == (4096, 10)
    assert rec["version_id"] == "AbCdVersion" and rec["authentication_type"] == "QueryString"
    assert "host_id" not in rec and "cipher_suite" not in rec and "tls_version" not in rec


def test_dashes_are_absent_but_bytes_sent_dash_means_zero() -> None:
    line = (f'{OWNER} b [06/Feb/2019:00:00:38 +0000] 192.0.2.3 - REQ REST.HEAD.BUCKET - - '
            '403 AccessDenied - - 5 - "-" "-" -').encode()
    assert parse(line) == {
        "bucket_owner": OWNER, "bucket": "b", "time": "2019-02-06T00:00:38Z",
        "remote_ip": "192.0.2.3", "request_id": "REQ", "operation": "REST.HEAD.BUCKET",
        "http_status": 403, "error_code": "AccessDenied", "bytes_sent": 0, "total_time": 5}


@pytest.mark.parametrize(("stamp", "iso"), [
    ("06/Feb/2019:00:00:38 +0000", "2019-02-06T00:00:38Z"),
    ("31/Dec/2025:23:30:00 -0100", "2026-01-01T00:30:00Z"),
    ("01/Jan/2026:01:00:00 +0130", "2025-12-31T23:30:00Z"),
    ("30/Jun/2015:23:59:60 +0000", "2015-06-30T23:59:59Z"),  # a leap second, held at :59
])
def test_the_request_time_becomes_iso_utc(stamp: str, iso: str) -> None:
    line = DOC_LINE.replace(b"06/Feb/2019:00:00:38 +0000", stamp.encode())
    assert parse(line)["time"] == iso


def test_bytes_that_are_not_utf8_are_kept_escaped() -> None:
    line = DOC_LINE.replace(b'"S3Console/0.4"', b'"curl/8 \xff\xfe"')
    assert parse(line)["user_agent"] == "curl/8 \\xff\\xfe"


def test_a_key_with_brackets_is_a_plain_value() -> None:
    line = DOC_LINE.replace(b"REST.GET.VERSIONING - ", b"REST.GET.OBJECT [v2]/a ")
    assert parse(line)["key"] == "[v2]/a"


@pytest.mark.parametrize(("line", "code", "message"), [
    (b"", "field_count", "at least 17 fields"),
    (b" ".join(_cut(17).split(b" ")[:-3]), "field_count", r"at least 17 fields .* got 1[0-9]"),
    (DOC_LINE.replace(b"[06/Feb/2019:00:00:38 +0000]", b"06/Feb/2019:00:00:38"), "malformed",
     "field 3 \\(time\\) should be \\[bracketed\\]"),
    (DOC_LINE.replace(b"06/Feb/2019", b"06/Fbr/2019"), "bad_time", "is not like"),
    (DOC_LINE.replace(b"06/Feb/2019", b"31/Feb/2019").replace(b"+0000", b"+0100"), "bad_time",
     "not a valid date"),
    (DOC_LINE.replace(b'"S3Console/0.4"', b"S3Console/0.4"), "malformed",
     "field 17 \\(user_agent\\) should be \"quoted\""),
    (DOC_LINE.replace(b'"S3Console/0.4"', b'"S3Console" 0.4"'), "malformed", "unbalanced quote"),
    (DOC_LINE.replace(b'"GET /amzn-s3-demo-bucket1?versioning HTTP/1.1"', b'"GET /x HTTP/1.1'),
     "malformed", "field 10 \\(http_status\\) should be a bare value"),  # read out of step
    (DOC_LINE.replace(b"3E57427F3EXAMPLE", b'"3E57 427F"'), "malformed",
     "field 6 \\(request_id\\) should be a bare value"),
    (DOC_LINE.replace(b"200 - 113", b"OK - 113"), "not_a_number",
     "field 10 \\(http_status\\) = 'OK' is not a number"),
    (DOC_LINE.replace(b"Yes", b"[a b]"), "malformed", "should be a bare value"),
])
def test_lines_of_the_wrong_shape_are_parse_errors(line: bytes, code: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as ex:
        S3AccessFormat().parse(line, ())
    assert ex.value.code == code


def test_pathological_quotes_stay_linear() -> None:
    for body in (b'" ' * 20_000, b'"' * 40_000, b'\\"' * 20_000):
        line = DOC_LINE.replace(b'"S3Console/0.4"', b'"' + body + b'"')
        t0 = time.perf_counter()
        with contextlib.suppress(ParseError):
            S3AccessFormat().parse(line, ())
        assert time.perf_counter() - t0 < 1.0


# --------------------------------------------------------------------------- mapping and wiring


def test_records_map_onto_the_custom_table() -> None:
    table = load_tables()["AWSS3ServerAccess_CL"]
    assert (table.kind, table.stream, table.record_id_column) == (
        "custom", "Custom-AWSS3ServerAccess_CL", "RecordId")
    assert {".".join(c.source) for c in table.columns} == set(FIELDS)
    row = orjson.loads(Mapper(table).map_dict(parse(DOC_LINE), "b/k@e-0"))
    assert row == {
        "TimeGenerated": "2019-02-06T00:00:38Z", "BucketOwner": OWNER,
        "Bucket": "amzn-s3-demo-bucket1", "RemoteIp": "192.0.2.3", "Requester": OWNER,
        "RequestId": "3E57427F3EXAMPLE", "Operation": "REST.GET.VERSIONING",
        "RequestUri": "GET /amzn-s3-demo-bucket1?versioning HTTP/1.1", "HttpStatus": 200,
        "BytesSent": 113, "TotalTime": 7, "UserAgent": "S3Console/0.4", "HostId": HOST_ID,
        "SignatureVersion": "SigV4", "CipherSuite": "ECDHE-RSA-AES128-GCM-SHA256",
        "AuthenticationType": "AuthHeader",
        "HostHeader": "amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com", "TLSVersion": "TLSV1.2",
        "AccessPointARN": "arn:aws:s3:us-west-1:123456789012:accesspoint/example-AP",
        "ACLRequired": "Yes", "RecordId": "b/k@e-0"}


def test_registry_builds_the_parser_and_detects_keys() -> None:
    assert isinstance(text_format("s3access"), S3AccessFormat)
    assert detect("logs/2019-02-06-00-00-38-5A8B3C2D1E0F9A7B") == "s3access"


# --------------------------------------------------------------------------- properties

_bare = st.text("abcXYZ019-_./:=+%", min_size=1, max_size=20).filter(lambda s: s != "-")
_quoted = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


@settings(max_examples=300, deadline=None)
@given(n=st.integers(MIN_FIELDS, len(FIELDS)), data=st.data())
def test_any_record_round_trips(n: int, data: st.DataObject) -> None:
    rec, parts = {}, []
    for i, name in enumerate(FIELDS[:n]):
        if name == "time":
            parts.append("[06/Feb/2019:00:00:38 +0000]")
            rec[name] = "2019-02-06T00:00:38Z"
        elif name in ("http_status", "bytes_sent", "object_size", "total_time",
                      "turn_around_time"):
            v = data.draw(st.none() | st.integers(0, 2**42), label=name)
            parts.append("-" if v is None else str(v))
            if v is not None or name == "bytes_sent":
                rec[name] = v or 0
        elif name in ("request_uri", "referer", "user_agent"):
            v = data.draw(st.none() | _quoted, label=name)
            parts.append('"-"' if v is None else _q(v))
            if v is not None and v != "-":
                rec[name] = v
        else:
            v = data.draw(st.none() | _bare, label=name)
            parts.append("-" if v is None else v)
            if v is not None:
                rec[name] = v
        assert i == len(parts) - 1
    assert parse(" ".join(parts).encode()) == rec
