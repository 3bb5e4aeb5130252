"""connectors.s3.framing: records split out of a byte stream of any chunking; and read out of
objects, where a record too deep or too large is reported in its place."""

from __future__ import annotations

import gzip
import json
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.s3 import jsonarray
from connectors.s3.framing import FramingError, LineFramer, UnreadableRecord
from connectors.s3.jsonarray import JsonArrayFramer
from connectors.s3.records import framer_for, object_records

BOM = b"\xef\xbb\xbf"
WHOLE = 1 << 30
CHUNKS = [1, 2, 7, 64, WHOLE]

TRICKY: list[dict[str, Any]] = [
    {"eventVersion": "1.08", "a": [{"x": 1}, {"y": 2}, {"z": [{"q": {}}, {}]}]},   # nested },{
    {"s": "},{", "t": "}]", "u": "]", "v": "a\"},{\"b", "w": "\\", "x": "\\\"}",   # in strings
     "y": "]}, {"},
    {"uni": "ünïcødé ✓ 日本 \U0001f600", "esc": "\u0000\u001f\t\n"},
    {},
    {"nested": [[{"a": {}}, {"b": []}], {}], "deep": {"k": [1, 2, {"q": [{"r": "},{"}]}]}},
    {"after": "x", "n": -1.5e300, "t": True, "f": False, "z": None},
]


def frame(framer: Any, data: bytes, chunk: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i:i + chunk])
    return out + framer.finish()


def frame_at(framer: Any, data: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    prev = 0
    for c in [*sorted(cuts), len(data)]:
        out += framer.feed(data[prev:c])
        prev = c
    return out + framer.finish()


def compact(recs: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(r) for r in recs]


def cloudtrail_doc(recs: list[dict[str, Any]], indent: int | None = None) -> bytes:
    if indent is None:
        return orjson.dumps({"Records": recs})
    return json.dumps({"Records": recs}, indent=indent, ensure_ascii=False).encode()


def array_doc(recs: list[dict[str, Any]], indent: int | None = None) -> bytes:
    if indent is None:
        return orjson.dumps(recs)
    return json.dumps(recs, indent=indent, ensure_ascii=False).encode()


# --------------------------------------------------------------------------- JsonArrayFramer


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("key,make", [("Records", cloudtrail_doc), (None, array_doc)])
def test_compact_documents_for_every_chunking(chunk: int, key: str | None, make: Any) -> None:
    recs = TRICKY * 5
    f = JsonArrayFramer(key)
    assert frame(f, make(recs), chunk) == compact(recs)
    assert f.emitted == len(recs)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("key,make", [("Records", cloudtrail_doc), (None, array_doc)])
def test_pretty_printed_documents_for_every_chunking(chunk: int, key: str | None,
                                                      make: Any) -> None:
    recs = TRICKY * 3
    doc = make(recs, indent=2)
    f = JsonArrayFramer(key)
    out = frame(f, doc, chunk)
    assert [orjson.loads(r) for r in out] == recs
    # Each record is exactly the element's text: a slice of the document, no padding.
    for r in out:
        assert r == r.strip() and r in doc
    assert f.emitted == len(recs)


@pytest.mark.parametrize("chunk", CHUNKS)
def test_bom_and_surrounding_whitespace(chunk: int) -> None:
    recs = TRICKY[:3]
    doc = BOM + b" \r\n\t" + cloudtrail_doc(recs, indent=4) + b"\n\n"
    assert [orjson.loads(r) for r in frame(JsonArrayFramer("Records"), doc, chunk)] == recs
    doc = BOM + b"\n" + array_doc(recs) + b"\n"
    assert frame(JsonArrayFramer(None), doc, chunk) == compact(recs)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("doc,key", [
    (b'{"Records":[]}', "Records"),
    (b'{ "Records" : [ \n ] }\n', "Records"),
    (b"[]", None),
    (b" [\n\n ] ", None),
    (BOM + b"[]", None),
])
def test_empty_array(chunk: int, doc: bytes, key: str | None) -> None:
    f = JsonArrayFramer(key)
    assert frame(f, doc, chunk) == []
    assert f.emitted == 0


def test_emitted_counts_as_records_come_out() -> None:
    f = JsonArrayFramer("Records")
    assert f.emitted == 0
    assert f.feed(b'{"Records": [{"a": 1}, {"b"') == [b'{"a": 1}']
    assert f.emitted == 1
    assert f.feed(b': 2}, {"c": [{"d": 3}, ') == [b'{"b": 2}']
    assert f.emitted == 2
    assert f.feed(b'{"e": "},{"}]}]}') == [b'{"c": [{"d": 3}, {"e": "},{"}]}']
    assert f.emitted == 3
    assert f.finish() == []


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("doc,key,offset", [
    (b'{"Records":[{"a":1},{"b":2},{"c":', "Records", 2),      # cut inside a record
    (b'{"Records":[{"a":1},{"b":2}', "Records", 1),           # cut after a record
    (b'{"Records":[{"a":1},', "Records", 1),               # the "," ends record 0
    (b'{"Records":[', "Records", 0),
    (b'[{"a":"},{"},{"b":"]', None, 1),                        # cut inside a string
    (b'[{"a":[{"b":1},{"c":2}', None, 0),                      # cut inside a nested list
])
def test_truncated_documents(chunk: int, doc: bytes, key: str | None, offset: int) -> None:
    f = JsonArrayFramer(key)
    with pytest.raises(FramingError, match="truncated") as ei:
        frame(f, doc, chunk)
    assert ei.value.offset == offset
    assert f.emitted == offset


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("doc,key", [
    (b'[{"a":1}]', "Records"),                         # an array where an object is expected
    (b'{"Other":[{"a":1}]}', "Records"),                # wrong key
    (b'{"digestStartTime":"x"}', "Records"),            # a CloudTrail digest file
    (b'{"Records":{"a":1}}', "Records"),                # not an array under the key
    (b'{"a":1}', None),                                 # an object where an array is expected
    (b"hello", None),
    (b"", None),
    (b"   \n", "Records"),
])
def test_wrong_top_level_shape(chunk: int, doc: bytes, key: str | None) -> None:
    with pytest.raises(FramingError, match="expected a JSON") as ei:
        frame(JsonArrayFramer(key), doc, chunk)
    assert ei.value.offset == 0
    if key:
        assert f'"{key}"' in ei.value.reason


def test_wrong_shape_is_reported_early_for_long_streams() -> None:
    # An object whose first key is not "Records": decided within 256 bytes, not at the end.
    f = JsonArrayFramer("Records")
    assert f.feed(b'{"Other": "' + b"x" * 100) == []
    with pytest.raises(FramingError) as ei:
        f.feed(b"x" * 300)
    assert ei.value.offset == 0


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("doc,key", [
    (b'{"Records":[{"a":1},{"b":2}]} trailing', "Records"),
    (b'{"Records":[{"a":1},{"b":2}]}}', "Records"),
    (b'{"Records":[{"a":1},{"b":2}],"x":1}', "Records"),
    (b'[{"a":1},{"b":2}] , {"c":3}', None),
    (b'[{"a":1},{"b":2}]]', None),
])
def test_trailing_garbage(chunk: int, doc: bytes, key: str | None) -> None:
    f = JsonArrayFramer(key)
    out: list[Any] = []
    with pytest.raises(FramingError, match="after") as ei:
        for i in range(0, len(doc), chunk):
            out += f.feed(doc[i:i + chunk])
        f.finish()
    assert out + ei.value.records == [b'{"a":1}', b'{"b":2}']
    assert ei.value.offset == 2


def test_long_trailing_garbage_is_refused_while_streaming() -> None:
    f = JsonArrayFramer(None)
    assert f.feed(b'[{"a":1}]') == [b'{"a":1}']
    with pytest.raises(FramingError, match="after the end") as ei:
        for _ in range(10):
            f.feed(b"x" * 1000)
    assert ei.value.offset == 1


def test_non_object_elements_are_malformed() -> None:
    with pytest.raises(FramingError) as ei:
        frame(JsonArrayFramer(None), b"[1, 2, 3]", WHOLE)
    assert ei.value.offset == 0


def test_record_longer_than_the_limit_is_passed_over() -> None:
    f = JsonArrayFramer(None, max_record_bytes=100)
    assert f.feed(b'[{"a":1},{"b":"') == [b'{"a":1}']
    assert f.feed(b"x" * 50) == []
    assert f.feed(b"x" * 60) == []
    assert f._parts == []  # nothing of it is held any more
    [bad] = f.feed(b"x" * 10_000 + b'"},{"c":3}')
    assert f.feed(b"]") == [b'{"c":3}'] and f.finish() == []
    assert isinstance(bad, UnreadableRecord)
    assert (bad.offset, bad.code, bad.size) == (1, "record_too_large", 10_118)
    assert bad.sample == b'{"b":"' + b"x" * 10_110 + b'"}'
    assert "max_record_bytes (100)" in bad.reason
    assert f.emitted == 3


def test_first_record_has_no_leading_whitespace_on_the_slow_path() -> None:
    f = JsonArrayFramer(None)
    out = f.feed(b"[ ")
    out += f.feed(b'  {"a":1},{"b":[{"x":1},{"y":2},{"z":3},{"w":4')
    out += f.feed(b"}]}]")
    assert out + f.finish() == [b'{"a":1}', b'{"b":[{"x":1},{"y":2},{"z":3},{"w":4}]}']


def test_framing_error_pickles() -> None:
    import pickle

    err = FramingError("bad", 7)
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.offset, str(back)) == ("bad", 7, "record 7: bad")


def test_framer_for() -> None:
    assert isinstance(framer_for("ndjson"), LineFramer)
    ct = framer_for("cloudtrail")
    assert frame(ct, b'{"Records":[{"a":1}]}', WHOLE) == [b'{"a":1}']
    arr = framer_for("json_array")
    assert frame(arr, b'[{"a":1}]', WHOLE) == [b'{"a":1}']
    with pytest.raises(ValueError, match="no framer for format 'csv'"):
        framer_for("csv")


# --------------------------------------------------------------------------- properties

json_leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(
    alphabet=st.sampled_from(list('ab{}[],:"\\ /\n\x00é✓\U0001f600')), max_size=8)
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=4),
    max_leaves=8,
)
json_object = st.dictionaries(st.text(max_size=6), json_value, max_size=4)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(recs=st.lists(json_object, max_size=6), key=st.sampled_from(["Records", None]),
       data=st.data())
def test_property_any_split_returns_exactly_the_serialized_elements(
        recs: list[dict[str, Any]], key: str | None, data: st.DataObject) -> None:
    doc = orjson.dumps({"Records": recs} if key else recs)
    cuts = data.draw(st.lists(st.integers(0, len(doc)), max_size=12))
    f = JsonArrayFramer(key)
    assert frame_at(f, doc, cuts) == compact(recs)
    assert f.emitted == len(recs)


@settings(max_examples=25, deadline=None)
@given(recs=st.lists(json_object, min_size=1, max_size=5), data=st.data())
def test_property_pretty_printed_any_split(recs: list[dict[str, Any]],
                                          data: st.DataObject) -> None:
    doc = json.dumps({"Records": recs}, indent=1).encode()
    cuts = data.draw(st.lists(st.integers(0, len(doc)), max_size=12))
    out = frame_at(JsonArrayFramer("Records"), doc, cuts)
    assert [orjson.loads(r) for r in out] == recs


# --------------------------------------------------------------------------- LineFramer


@pytest.mark.parametrize("chunk", CHUNKS)
def test_lines_crlf_blank_lines_and_no_trailing_newline(chunk: int) -> None:
    doc = b'{"a":1}\r\n\r\n{"b":2}\n\n\n{"c":3}\r\n{"d":4}'
    f = LineFramer()
    out = frame(f, doc, chunk)
    # Blank lines come out as b"" so that index == line number.
    assert out == [b'{"a":1}', b"", b'{"b":2}', b"", b"", b'{"c":3}', b'{"d":4}']
    assert f.emitted == 7


@pytest.mark.parametrize("chunk", CHUNKS)
def test_lines_bom_is_dropped(chunk: int) -> None:
    f = LineFramer()
    assert frame(f, BOM + b"first\nsecond\n", chunk) == [b"first", b"second"]
    # Only at the very start: a BOM later in the stream is data.
    assert frame(LineFramer(), b"x\n" + BOM + b"y\n", chunk) == [b"x", BOM + b"y"]


def test_lines_emitted_and_final_whitespace() -> None:
    f = LineFramer()
    assert f.feed(b"a\nb") == [b"a"]
    assert f.emitted == 1
    assert f.feed(b"c\n") == [b"bc"]
    assert f.emitted == 2
    assert f.feed(b"  ") == []
    assert f.finish() == []          # a whitespace-only last line is no record
    assert f.emitted == 2
    assert frame(LineFramer(), b"", WHOLE) == []


def test_line_too_long_is_passed_over_under_its_number() -> None:
    f = LineFramer(max_record_bytes=10)
    assert f.feed(b"ok\n\nfine\n") == [b"ok", b"", b"fine"]
    assert f.feed(b"x" * 11) == []
    assert f._rest == []  # nothing of it is held
    out = f.feed(b"y" * 5 + b"\nnext\n" + b"z" * 12 + b"\nlast")
    assert [type(r) for r in out] == [UnreadableRecord, bytes, UnreadableRecord]
    assert (out[0].offset, out[0].size, out[0].sample, out[0].code) == (
        3, 16, b"x" * 11 + b"y" * 5, "record_too_large")
    assert out[1] == b"next"
    assert (out[2].offset, out[2].size) == (5, 12)  # a long line inside one chunk too
    assert f.finish() == [b"last"]
    assert f.emitted == 7
    f = LineFramer(max_record_bytes=10)
    assert f.feed(b"a\n" + b"x" * 20) == [b"a"]
    last = f.finish()
    assert len(last) == 1 and isinstance(last[0], UnreadableRecord) and last[0].offset == 1


# --------------------------------------------------------------------------- records of objects

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

    monkeypatch.setattr(jsonarray, "_decode_raw", counting(jsonarray._decode_raw))
    monkeypatch.setattr(jsonarray, "_decode_raw_list", counting(jsonarray._decode_raw_list))
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
    assert jsonarray._SHIFT == 1
    with pytest.raises(msgspec.DecodeError, match=r"trailing characters \(byte 11\)"):
        msgspec.json.decode(b'{"a":{}} \n,{')


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 30])
def test_without_msgspec_positions_elements_are_scanned(monkeypatch: pytest.MonkeyPatch,
                                                         chunk: int) -> None:
    recs = [*TRICKY, {"deep": [{"x": "},{"}] * 3}] * 3
    doc = orjson.dumps({"Records": recs}, option=orjson.OPT_INDENT_2)
    def no_batch(data: Any) -> None:
        raise msgspec.DecodeError("JSON is malformed")

    monkeypatch.setattr(jsonarray, "_SHIFT", None)
    monkeypatch.setattr(jsonarray, "_decode_raw_list", no_batch)  # one element at a time
    out = frame(JsonArrayFramer("Records"), doc, chunk)
    assert [orjson.loads(r) for r in out] == recs
    with pytest.raises(FramingError, match="not valid JSON") as ei:
        frame(JsonArrayFramer(None), b'[{"a":1},{"b" 2},{"c":3}]', chunk)
    assert ei.value.offset == 1
