"""Framing: records split out of byte streams of any chunking."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.s3.framing import FramingError, JsonArrayFramer, LineFramer, framer_for

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
        try:
            frame(framer, data, 7)
        except FramingError:
            pass
