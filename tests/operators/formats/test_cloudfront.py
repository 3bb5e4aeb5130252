"""CloudFront standard logs: #Fields headers, tab-separated values, URL decoding, mapping."""

from __future__ import annotations

from urllib.parse import quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.core.metrics import FIELDS_MISSING
from operators.formats import ParseError
from operators.formats.cloudfront import (
    DEFAULT_FIELDS,
    INT_FIELDS,
    MIN_FIELDS,
    REAL_FIELDS,
    CloudFrontFormat,
)
from operators.formats.registry import DEFAULT_TABLES, detect, text_format
from operators.schema import Mapper, load_tables

VERSION = b"#Version: 1.0"
FIELDS_LINE = b"#Fields: " + " ".join(DEFAULT_FIELDS).encode()
HEADER = (VERSION, FIELDS_LINE)
UA = ("Mozilla/5.0%20(Windows%20NT%2010.0;%20Win64;%20x64)%20AppleWebKit/537.36%20(KHTML,"
      "%20like%20Gecko)%20Chrome/78.0.3904.108%20Safari/537.36")
# The AWS documentation's example records (the first, and an origin DNS error).
HIT = "\t".join([
    "2019-12-04", "21:02:31", "LAX1", "392", "192.0.2.100", "GET", "d111111abcdef8.cloudfront.net",
    "/index.html", "200", "-", UA, "-", "-", "Hit",
    "SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==", "d111111abcdef8.cloudfront.net",
    "https", "23", "0.001", "-", "TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", "Hit", "HTTP/2.0", "-",
    "-", "11040", "0.001", "Hit", "text/html", "78", "-", "-"]).encode()
DNS_ERROR = "\t".join([
    "2019-12-13", "22:36:27", "SEA19-C1", "900", "192.0.2.200", "GET",
    "d111111abcdef8.cloudfront.net", "/favicon.ico", "502", "http://www.example.com/", UA, "-", "-",
    "Error", "1pkpNfBQ39sYMnjjUQjmH2w1wdJnbHYTbag21o_3OfcQgPzdL2RSSQ==", "www.example.com", "http",
    "675", "0.102", "-", "-", "-", "Error", "HTTP/1.1", "-", "-", "25260", "0.102",
    "OriginDnsError", "text/html", "507", "-", "-"]).encode()
UA_TEXT = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
           "Chrome/78.0.3904.108 Safari/537.36")
HIT_RECORD = {
    "date": "2019-12-04", "time": "21:02:31", "date-time": "2019-12-04T21:02:31Z",
    "x-edge-location": "LAX1", "sc-bytes": 392, "c-ip": "192.0.2.100", "cs-method": "GET",
    "cs(Host)": "d111111abcdef8.cloudfront.net", "cs-uri-stem": "/index.html", "sc-status": 200,
    "cs(User-Agent)": UA_TEXT, "x-edge-result-type": "Hit",
    "x-edge-request-id": "SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==",
    "x-host-header": "d111111abcdef8.cloudfront.net", "cs-protocol": "https", "cs-bytes": 23,
    "time-taken": 0.001, "ssl-protocol": "TLSv1.2", "ssl-cipher": "ECDHE-RSA-AES128-GCM-SHA256",
    "x-edge-response-result-type": "Hit", "cs-protocol-version": "HTTP/2.0", "c-port": 11040,
    "time-to-first-byte": 0.001, "x-edge-detailed-result-type": "Hit",
    "sc-content-type": "text/html", "sc-content-len": 78}


def parse(line: bytes, header: tuple[bytes, ...] = HEADER) -> dict:
    fmt = CloudFrontFormat()
    assert not fmt.is_header(line)
    return fmt.parse(line, header)


def _with(line: bytes, **fields: str) -> bytes:
    """The record with some fields (by W3C name, ``_`` for ``-``) replaced."""
    values = line.split(b"\t")
    for name, value in fields.items():
        values[DEFAULT_FIELDS.index(name.replace("_", "-"))] = value.encode()
    return b"\t".join(values)


def test_header_lines() -> None:
    fmt = CloudFrontFormat()
    assert fmt.is_header(VERSION) and fmt.is_header(FIELDS_LINE) and fmt.is_header(b"#Remark: x")
    assert not fmt.is_header(HIT)


def test_the_documented_example_record() -> None:
    assert parse(HIT) == HIT_RECORD


def test_a_record_without_any_header_uses_the_documented_order() -> None:
    assert parse(HIT, ()) == HIT_RECORD
    assert parse(HIT, (VERSION,)) == HIT_RECORD


def test_an_origin_error_record() -> None:
    rec = parse(DNS_ERROR)
    assert rec["cs(Referer)"] == "http://www.example.com/"
    assert (rec["sc-status"], rec["x-edge-detailed-result-type"]) == (502, "OriginDnsError")
    assert "ssl-protocol" not in rec and rec["cs-protocol"] == "http"
    assert rec["x-host-header"] == "www.example.com"


def test_a_trailing_tab_is_ignored() -> None:
    assert parse(HIT + b"\t") == HIT_RECORD  # as in one of the documentation's examples


def test_values_follow_the_last_fields_line() -> None:
    names = ["date", "time", "c-ip", "cs(User-Agent)", "sc-status", "x-new-field"]
    header = (VERSION, FIELDS_LINE, b"#Fields: " + " ".join(names).encode())
    line = b"2019-12-04\t21:02:31\t2001:db8::1\tcurl/8.0\t000\tsome%20value"
    assert parse(line, header) == {
        "date": "2019-12-04", "time": "21:02:31", "date-time": "2019-12-04T21:02:31Z",
        "c-ip": "2001:db8::1", "cs(User-Agent)": "curl/8.0", "sc-status": 0,
        "x-new-field": "some value"}


def test_an_older_shorter_field_list() -> None:
    names = DEFAULT_FIELDS[:24]  # a shorter list, as in older logs (fields were added since)
    header = (VERSION, b"#Fields: " + " ".join(names).encode())
    line = b"\t".join(HIT.split(b"\t")[:24])
    assert parse(line, header) == {k: v for k, v in HIT_RECORD.items()
                                   if k in names or k == "date-time"}


def test_url_decoding_once_for_uris_and_twice_for_the_user_agent() -> None:
    line = _with(HIT, **{
        "cs-uri-stem": "/a%2520b/%E2%82%AC.png",            # viewer sent /a%20b/€.png
        "cs-uri-query": "q=%2522x%2522&r=a+b&s=%252F",      # viewer sent q=%22x%22&r=a+b&s=%2F
        "cs(Referer)": "https://example.com/p%3Fq%3D%2520",
        "cs(User-Agent)": "Tiny%2520Tiny%2520RSS/21.1%20%2522x%2522%20%255C%20100%25",
        "cs(Cookie)": "session=a%253Db;%20theme=dark",
    })
    rec = parse(line)
    assert rec["cs-uri-stem"] == "/a%20b/€.png"
    assert rec["cs-uri-query"] == "q=%22x%22&r=a+b&s=%2F"
    assert rec["cs(Referer)"] == "https://example.com/p?q=%20"
    assert rec["cs(User-Agent)"] == 'Tiny Tiny RSS/21.1 "x" \\ 100%'
    assert rec["cs(Cookie)"] == "session=a%3Db; theme=dark"


def test_bad_escapes_and_bytes_that_are_not_utf8_are_kept() -> None:
    rec = parse(_with(HIT, cs_uri_stem="/100%", cs_uri_query="a=%zz&b=%FF%FE"))
    assert rec["cs-uri-stem"] == "/100%"
    assert rec["cs-uri-query"] == "a=%zz&b=\\xff\\xfe"
    assert parse(HIT.replace(b"LAX1", b"LAX\xff"))["x-edge-location"] == "LAX\\xff"


@pytest.mark.parametrize(("line", "header", "code", "message"), [
    (b"\t".join(HIT.split(b"\t")[:11]), HEADER, "field_count",
     "expected 33 tab-separated fields \\(from the #Fields line\\), got 11: fewer than the 12"),
    (HIT + b"\textra", (), "field_count", "from the documented default; the object has no"),
    (HIT.replace(b"\t", b" "), HEADER, "field_count", "got 1: fewer than the 12"),
    (_with(HIT, sc_status="OK"), HEADER, "not_a_number", "field 'sc-status' = 'OK'"),
    (_with(HIT, time_taken="1s"), HEADER, "not_a_number", "time-taken"),
    (_with(HIT, date="04/12/2019"), HEADER, "bad_time", "are not like 2019-12-04"),
    (_with(HIT, date="2019-02-30"), HEADER, "bad_time", "not a valid date"),
    (_with(HIT, time="25:00:00"), HEADER, "bad_time", "not a valid date"),
])
def test_records_of_the_wrong_shape_are_parse_errors(line: bytes, header: tuple[bytes, ...],
                                                     code: str, message: str) -> None:
    with pytest.raises(ParseError, match=message) as ex:
        CloudFrontFormat().parse(line, header)
    assert ex.value.code == code


def test_a_record_without_date_or_time_leaves_time_generated_to_the_mapper() -> None:
    from operators.schema import MappingError

    header = (b"#Fields: c-ip sc-status",)
    rec = parse(b"192.0.2.1\t200", header)
    assert rec == {"c-ip": "192.0.2.1", "sc-status": 200}
    with pytest.raises(MappingError, match="date-time.*TimeGenerated") as ex:
        Mapper(load_tables()["AWSCloudFront_CL"]).map_dict(rec, "x-0")
    assert ex.value.code == "missing_required"


# --------------------------------------------------------------------------- mapping and wiring


def test_every_field_has_a_column() -> None:
    table = load_tables()["AWSCloudFront_CL"]
    assert DEFAULT_TABLES["cloudfront"] == "AWSCloudFront_CL"
    assert (table.kind, table.stream, table.record_id_column) == (
        "custom", "Custom-AWSCloudFront_CL", "RecordId")
    sources = {".".join(c.source) for c in table.columns}
    assert sources == (set(DEFAULT_FIELDS) - {"date", "time"}) | {"date-time"}
    types = {".".join(c.source): c.type for c in table.columns}
    assert all(types[f] in ("int", "long") for f in INT_FIELDS)
    assert all(types[f] == "real" for f in REAL_FIELDS)


def test_records_map_onto_the_custom_table() -> None:
    row = orjson.loads(Mapper(load_tables()["AWSCloudFront_CL"]).map_dict(parse(HIT), "b/k@e-2"))
    assert row == {
        "TimeGenerated": "2019-12-04T21:02:31Z", "EdgeLocation": "LAX1", "ScBytes": 392,
        "ClientIp": "192.0.2.100", "RequestMethod": "GET",
        "DistributionDomain": "d111111abcdef8.cloudfront.net", "UriStem": "/index.html",
        "HttpStatus": 200, "UserAgent": UA_TEXT, "EdgeResultType": "Hit",
        "EdgeRequestId": "SOX4xwn4XV6Q4rgb7XiVGOHms_BGlTAC4KyHmureZmBNrjGdRLiNIQ==",
        "HostHeader": "d111111abcdef8.cloudfront.net", "Protocol": "https", "CsBytes": 23,
        "TimeTaken": 0.001, "SslProtocol": "TLSv1.2", "SslCipher": "ECDHE-RSA-AES128-GCM-SHA256",
        "EdgeResponseResultType": "Hit", "ProtocolVersion": "HTTP/2.0", "ClientPort": 11040,
        "TimeToFirstByte": 0.001, "EdgeDetailedResultType": "Hit", "ContentType": "text/html",
        "ContentLength": 78, "RecordId": "b/k@e-2"}


def test_registry_builds_the_parser_and_detects_objects() -> None:
    assert isinstance(text_format("cloudfront"), CloudFrontFormat)
    assert detect("logs/E2EXAMPLE12345.2026-11-01-21.a1b2c3d4.gz") == "cloudfront"
    # The documentation's own file name (an upper-case unique ID): known by its first bytes.
    assert detect("example-prefix/EMLARXS9EXAMPLE.2019-11-14-20.RT4KCN4SGK9.gz",
                  b"#Version: 1.0\n#Fields: date time\n") == "cloudfront"


# --------------------------------------------------------------------------- properties

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30)


def _encode(s: str) -> str:
    """As CloudFront writes a value: its own characters URL-encoded (``%`` too)."""
    return quote(s, safe="!$&()*+,-./:;=?@_", encoding="utf-8")


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.none() | _text, min_size=len(DEFAULT_FIELDS),
                       max_size=len(DEFAULT_FIELDS)))
def test_any_string_values_round_trip(values: list[str | None]) -> None:
    names = [n for n in DEFAULT_FIELDS if n not in INT_FIELDS | REAL_FIELDS | {"date", "time"}]
    header = (b"#Fields: date time " + " ".join(names).encode(),)
    cells = ["2019-12-04", "21:02:31"]
    expected: dict = {"date": "2019-12-04", "time": "21:02:31", "date-time": "2019-12-04T21:02:31Z"}
    for name, value in zip(names, values, strict=False):
        cells.append("-" if value is None else _encode(value))
        if value is not None and value != "-":
            expected[name] = value
    rec = parse("\t".join(cells).encode(), header)
    ua = expected.get("cs(User-Agent)")
    if ua is not None and any(x in ua for x in ("%20", "%22", "%5C", "%5c")):
        expected["cs(User-Agent)"] = (ua.replace("%20", " ").replace("%22", '"')
                                      .replace("%5C", "\\").replace("%5c", "\\"))
    assert rec == expected


def _missing(table: str = "AWSCloudFront_CL") -> float:
    return FIELDS_MISSING.labels(table=table)._value.get()


@pytest.mark.parametrize("present", [12, 19, 24, 26, 32])
def test_an_older_line_under_a_newer_fields_line_maps_what_it_has(present: int) -> None:
    """The documentation's example record, cut where older formats ended (fields were appended)."""
    before = _missing()
    rec = parse(b"\t".join(HIT.split(b"\t")[:present]))
    kept = set(DEFAULT_FIELDS[:present]) | {"date-time"}
    assert rec == {k: v for k, v in HIT_RECORD.items() if k in kept}
    assert _missing() - before == len(DEFAULT_FIELDS) - present


def test_the_fields_missing_count_carries_the_table_of_the_source() -> None:
    fmt = text_format("cloudfront", table="MyCloudFront_CL")
    assert isinstance(fmt, CloudFrontFormat)
    before, other = _missing("MyCloudFront_CL"), _missing()
    fmt.parse(b"\t".join(HIT.split(b"\t")[:30]), HEADER)
    assert _missing("MyCloudFront_CL") - before == 3 and _missing() == other


def test_a_short_line_that_does_not_line_up_is_a_field_count_error() -> None:
    """Values shifted by one (x-edge-location lost): sc-bytes gets an address; not aligned."""
    values = HIT.split(b"\t")
    shifted = b"\t".join(values[:2] + values[3:30])
    before = _missing()
    with pytest.raises(ParseError, match="do not line up with the first 29 field names") as ex:
        parse(shifted)
    assert ex.value.code == "field_count" and _missing() == before
    with pytest.raises(ParseError, match=f"fewer than the {MIN_FIELDS}"):
        parse(b"\t".join(values[:MIN_FIELDS - 1]))
