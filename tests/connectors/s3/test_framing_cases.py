"""connectors.s3.framing: records split out of a byte stream of any chunking."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.s3.framing import (
    FramingError,
    JsonArrayFramer,
    LineFramer,
    UnreadableRecord,
    framer_for,
)

BOM = b"\xef\xbb\xbf"
WHOLE = 1 << 30
CHUNKS = [1, 2, 7, 64, WHOLE]

TRICKY: list[dict[str, Any]] = [
    {"eventVersion": "1.08", "a": [{"x": 1}, {"y": 2}, {"z": [{"q": {}}, {}]}]},   # nested },{
    {"s": "},{", "t": "}]", "u": "]", "v": "a\"},{\"b", "w": "\\", "x": "\\\"}"},   # in strings
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
    with pytest.raises(ValueError, match="csv"):
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


junk = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b" ", b"\n",
                                 b'"Records"', b"1", b"null", BOM, b"\xff", b'{"a":1}']),
                max_size=40).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(blob=st.binary(max_size=300) | junk, key=st.sampled_from(["Records", None]),
       data=st.data())
def test_property_arbitrary_bytes_only_raise_framing_error(blob: bytes, key: str | None,
                                                           data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=8))
    for framer in (JsonArrayFramer(key, max_record_bytes=64), LineFramer(max_record_bytes=64)):
        try:
            out = frame_at(framer, blob, cuts)
        except FramingError as ex:
            assert ex.offset >= 0
        else:
            assert all(isinstance(r, bytes) for r in out)


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
