"""Framing: records split out of byte streams of any chunking."""

from __future__ import annotations

import contextlib
import gzip
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.s3 import framing
from connectors.s3.framing import (
    FramingError,
    JsonArrayFramer,
    LineFramer,
    UnreadableRecord,
    framer_for,
)
from connectors.s3.records import object_records

TRICKY = [
    {"eventVersion": "1.08", "a": [{"x": 1}, {"y": "},{\"z"}], "n": {"k": [1, 2, {"q": []}]}},
    {"s": "]}, {", "u": "ünïcødé ✓", "esc": "\\\"}"},
    {},
    {"nested": [[{"a": {}}, {"b": []}], {}]},
]


def frame(framer, data: bytes, chunk: int) -> list[bytes]:
    out = []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i:i + chunk])
    return out + framer.finish()


@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 10**9])
@pytest.mark.parametrize("indent", [False, True])
def test_cloudtrail_records_for_any_chunking(chunk: int, indent: bool) -> None:
    recs = TRICKY * 50
    doc = orjson.dumps({"Records": recs}, option=orjson.OPT_INDENT_2 if indent else 0)
    framer = JsonArrayFramer("Records")
    out = frame(framer, b"\xef\xbb\xbf" + doc, chunk)
    assert [orjson.loads(r) for r in out] == recs
    assert framer.emitted == len(recs)


@pytest.mark.parametrize("chunk", [1, 5, 10**9])
def test_json_array_documents(chunk: int) -> None:
    assert [orjson.loads(r) for r in frame(JsonArrayFramer(None), orjson.dumps(TRICKY), chunk)] \
        == TRICKY
    assert frame(JsonArrayFramer(None), b" [ ] ", chunk) == []
    assert frame(JsonArrayFramer("Records"), b'{"Records": []}', chunk) == []


@pytest.mark.parametrize(("doc", "offset", "text"), [
    (b'{"Records":[{"a":1},{"b":', 1, "truncated"),
    (b'{"Records":[{"a":1}', 0, "truncated"),
    (b'{"digestStartTime":"x"}', 0, '"Records"'),
    (b"[1,2]", 0, '"Records"'),
    (b'{"Records":[{"a":1}]} trailing garbage here', 1, "after the array"),
])
def test_malformed_documents(doc: bytes, offset: int, text: str) -> None:
    with pytest.raises(FramingError, match=text) as info:
        frame(JsonArrayFramer("Records"), doc, 4)
    assert info.value.offset == offset


def test_lines_keep_their_numbers() -> None:
    framer = LineFramer()
    out = frame(framer, b'\xef\xbb\xbf{"a":1}\r\n\n{"b":2}\n{"c":3}', 3)
    assert out == [b'{"a":1}', b"", b'{"b":2}', b'{"c":3}']  # blank line kept as b"" (offset 1)


def test_framer_for_formats() -> None:
    assert isinstance(framer_for("cloudtrail"), JsonArrayFramer)
    assert isinstance(framer_for("ndjson"), LineFramer)
    with pytest.raises(ValueError, match="no framer"):
        framer_for("xml")


json_objects = st.dictionaries(st.text(max_size=6), st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3), max_leaves=10),
    max_size=4)


@settings(max_examples=150, deadline=None)
@given(recs=st.lists(json_objects, max_size=20), cuts=st.lists(st.integers(1, 50), max_size=30))
def test_any_objects_any_cuts(recs: list, cuts: list) -> None:
    doc = orjson.dumps({"Records": recs})
    framer, out, pos = JsonArrayFramer("Records"), [], 0
    for c in cuts:
        out += framer.feed(doc[pos:pos + c])
        pos += c
    out += framer.feed(doc[pos:])
    out += framer.finish()
    assert out == [orjson.dumps(r) for r in recs]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_framing_errors(data: bytes) -> None:
    for framer in (JsonArrayFramer("Records"), JsonArrayFramer(None), LineFramer()):
        with contextlib.suppress(FramingError):
            frame(framer, data, 7)


# --------------------------------------------------------------------------- issue 11

DEEP = b"[" * 1000 + b"]" * 1000  # what a 128-byte gzip object can hold


def ct_event(i: int, params: bytes = b'{"bucketName":"b"}') -> bytes:
    return (b'{"eventVersion":"1.08","eventTime":"2024-01-02T03:04:05Z","eventName":"GetObject",'
            b'"eventSource":"s3.amazonaws.com","eventID":"e%d","requestParameters":' % i
            + params + b"}")


def read(key: str, blob: bytes, fmt: str, chunk: int = 1 << 30, **kw: Any) -> list[Any]:
    _, it = object_records(key, [blob[i:i + chunk] for i in range(0, len(blob), chunk)], fmt,
                           max_bytes=1 << 30, parser_for=lambda f: None, **kw)
    return list(it)


@pytest.mark.parametrize("chunk", [7, 4096, 1 << 30])
@pytest.mark.parametrize("fmt,key,doc", [
    ("cloudtrail", "AWSLogs/1/CloudTrail/us-east-1/x.json.gz",
     b'{"Records":[%s,%s,%s]}' % (ct_event(0), ct_event(1, DEEP), ct_event(2))),
    ("json_array", "x.json.gz", b"[%s,%s,%s]" % (ct_event(0), ct_event(1, DEEP), ct_event(2))),
    ("auto", "dump/x.gz", b"[%s,%s,%s]" % (ct_event(0), ct_event(1, DEEP), ct_event(2))),
])
def test_deeply_nested_record_is_reported_and_the_object_goes_on(chunk: int, fmt: str,
                                                                 key: str, doc: bytes) -> None:
    blob = gzip.compress(doc, 9)
    assert len(blob) < 200
    out = read(key, blob, fmt, chunk)
    assert [o[:2] for o in (out[0], out[2])] == [(0, ct_event(0)), (2, ct_event(2))]
    bad = out[1]
    assert isinstance(bad, UnreadableRecord)
    assert (bad.offset, bad.code, bad.sample) == (1, "too_deep", ct_event(1, DEEP))
    assert "nested deeper" in bad.reason


def test_deeply_nested_ndjson_line_is_a_too_deep_parse_error() -> None:
    from dataflow.config import SourceConfig
    from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord
    from operators.parse import RecordMapper
    from operators.schema import load_tables

    src = SourceConfig(name="trail", bucket="b", format="ndjson", table="AWSCloudTrail")
    recs = read("x.ndjson", ct_event(0) + b"\n" + ct_event(1, DEEP) + b"\n", "ndjson")
    assert [r[0] for r in recs] == [0, 1]  # lines are framed whatever they hold
    mapper = RecordMapper([src], load_tables(), 1_000_000)
    ref = ObjectRef("trail", "trail:0/1", "b", "x.ndjson", "e", 1)
    err = mapper(RawRecord(ref, 1, recs[1][1]))
    assert isinstance(err, ErrorRecord)
    assert (err.stage, err.code, err.data) == ("parse", "too_deep", recs[1][1])
    assert not isinstance(mapper(RawRecord(ref, 0, recs[0][1])), ErrorRecord)


@pytest.mark.parametrize("first_key", [b"eventVersion", None])
def test_a_long_record_costs_linear_work(monkeypatch: pytest.MonkeyPatch,
                                          first_key: bytes | None) -> None:
    # One record holding a long nested list of objects (each "},{" a false end): the old
    # framer decoded it again from its start at every candidate, in every chunk.
    items = b",".join(b'{"instanceId":"i-%05d","state":{"name":"running"}}' % i
                      for i in range(6000))
    recs = [ct_event(i, b'{"items":[%s]}' % items) for i in range(3)]
    if first_key is None:  # records that do not start alike: no hint for where they end
        recs = [b'{"k%d":1,' % i + r[1:] for i, r in enumerate(recs)]
    doc = b'{"Records":[' + b",".join(recs) + b"]}"
    budget = 6 * len(doc)
    decoded = 0

    def counting(decode: Any) -> Any:
        def wrapper(data: Any) -> Any:
            nonlocal decoded
            decoded += len(data)
            assert decoded <= budget, "framing work grows faster than the data"
            return decode(data)
        return wrapper

    monkeypatch.setattr(framing, "_decode_raw", counting(framing._decode_raw))
    monkeypatch.setattr(framing, "_decode_raw_list", counting(framing._decode_raw_list))
    out = frame(JsonArrayFramer("Records", max_record_bytes=1 << 30), doc, 16 * 1024)
    assert out == recs


def test_records_before_a_framing_error_come_out_first() -> None:
    long = b'{"b":"' + b"x" * 50_000 + b'"}'
    doc = b'[{"a":1},' + long + b",{\"c\" 3}]"
    out: list[Any] = []
    with pytest.raises(FramingError, match="not valid JSON") as ei:
        _, it = object_records("x.json", [doc[:20], doc[20:]], "json_array", max_bytes=1 << 30,
                               parser_for=lambda f: None)
        out.extend(it)
    assert [r[:2] for r in out] == [(0, b'{"a":1}'), (1, long)]
    assert ei.value.offset == 2


def test_an_unexpected_framer_error_fails_the_object_not_the_flow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Any, *args: Any) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(LineFramer, "_take", broken)
    with pytest.raises(FramingError, match="RecursionError") as ei:
        read("x.ndjson", b'{"a":1}\n{"b":2}\n', "ndjson")
    assert ei.value.offset == 0


def test_records_over_the_limit_are_reported_in_their_place() -> None:
    big = ct_event(1, b'"' + b"y" * 5000 + b'"')
    doc = b'{"Records":[%s,%s,%s]}' % (ct_event(0), big, ct_event(2))
    out = read("AWSLogs/1/CloudTrail/r/x.json", doc, "cloudtrail", 1000, max_record_bytes=2000)
    assert [type(o) for o in out] == [tuple, UnreadableRecord, tuple]
    assert (out[1].offset, out[1].code, out[1].size) == (1, "record_too_large", len(big))
    assert out[1].sample == big
    # With a restart past it (skip), it is not reported again.
    out = read("AWSLogs/1/CloudTrail/r/x.json", doc, "cloudtrail", 1000,
               max_record_bytes=2000, skip=2)
    assert [o[:2] for o in out] == [(2, ct_event(2))]


def test_msgspec_reports_trailing_characters_as_the_framer_reads_them() -> None:
    # The per-element path reads where an element ends from this message; were it to
    # change, elements would be found by the (slower) bracket scanner instead.
    assert framing._SHIFT == 1
    with pytest.raises(msgspec.DecodeError, match=r"trailing characters \(byte 11\)"):
        msgspec.json.decode(b'{"a":{}} \n,{')


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 30])
def test_without_msgspec_positions_elements_are_scanned(monkeypatch: pytest.MonkeyPatch,
                                                         chunk: int) -> None:
    recs = [*TRICKY, {"deep": [{"x": "},{"}] * 3}] * 3
    doc = orjson.dumps({"Records": recs}, option=orjson.OPT_INDENT_2)
    def no_batch(data: Any) -> None:
        raise msgspec.DecodeError("JSON is malformed")

    monkeypatch.setattr(framing, "_SHIFT", None)
    monkeypatch.setattr(framing, "_decode_raw_list", no_batch)  # one element at a time
    out = frame(JsonArrayFramer("Records"), doc, chunk)
    assert [orjson.loads(r) for r in out] == recs
    with pytest.raises(FramingError, match="not valid JSON") as ei:
        frame(JsonArrayFramer(None), b'[{"a":1},{"b" 2},{"c":3}]', chunk)
    assert ei.value.offset == 1
