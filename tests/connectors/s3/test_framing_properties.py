"""Properties of reading objects: whatever the bytes, nesting, record sizes and chunking,
framers and parsers raise only the project's own errors, and valid records all come out,
each in its place (as itself, or as an UnreadableRecord when too large or too deep)."""

from __future__ import annotations

import contextlib
import gzip
from typing import Any

import msgspec
import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from connectors.s3.errors import ObjectReadError
from connectors.s3.framing import FramingError, LineFramer, UnreadableRecord
from connectors.s3.jsonarray import JsonArrayFramer
from connectors.s3.records import FormatUnknown, object_records
from operators.formats import JSON_FORMATS, ParseError
from operators.formats.registry import FORMATS, text_format

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SHALLOW, DEEP = 200, 2500  # well below / above the JSON decoder's nesting limit (~1000)
TEXT_FORMATS = [f for f in FORMATS if f not in JSON_FORMATS]


def frame_at(framer: Any, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    prev = 0
    try:
        for c in [*sorted(cuts), len(data)]:
            out += framer.feed(data[prev:c])
            prev = c
        return out + framer.finish()
    except FramingError as ex:
        ex.records = out + ex.records  # everything found before the error, for the caller
        raise


def nested(depth: int, opens: list[bool], leaf: bytes) -> bytes:
    """A JSON value nested ``depth`` levels, arrays and objects mixed as ``opens`` says."""
    kinds = [opens[i % len(opens)] if opens else True for i in range(depth)]
    head = b"".join(b"[" if k else b'{"k":' for k in kinds)
    tail = b"".join(b"]" if k else b"}" for k in reversed(kinds))
    return head + leaf + tail


leaves = st.sampled_from([b'"},{\\"x\\":[1]"', b'"\\\\"', b"1.5e3", b"null", b'"]]}}"', b"{}",
                          b'[{"a":1},{"b":2}]', '"ünï ✓"'.encode()])


@st.composite
def records(draw: st.DrawFn) -> tuple[bytes, str]:
    """(one record's JSON bytes, what it is: ``ok``, ``deep`` or ``big``)."""
    kind = draw(st.sampled_from(["ok", "ok", "deep", "big"]))
    depth = draw(st.integers(DEEP, 2 * DEEP) if kind == "deep" else st.integers(0, SHALLOW))
    opens = draw(st.lists(st.booleans(), max_size=4))
    pad = b"p" * (draw(st.integers(2000, 20_000)) if kind == "big" else draw(st.integers(0, 50)))
    rec = b'{"eventVersion":"1.08","pad":"' + pad + b'","x":' + nested(
        depth, opens, draw(leaves)) + b"}"
    return rec, kind


@SETTINGS
@given(recs=st.lists(records(), max_size=8), key=st.sampled_from(["Records", None]),
       sep=st.sampled_from([b",", b" ,\n ", b",\r\n"]), data=st.data())
def test_json_arrays_any_nesting_any_size_any_cuts(recs: list[tuple[bytes, str]],
                                                    key: str | None, sep: bytes,
                                                    data: st.DataObject) -> None:
    body = b"[" + sep.join(r for r, _ in recs) + b"]"
    doc = b'{"Records":' + body + b"}" if key else body
    cuts = data.draw(st.lists(st.integers(0, len(doc)), max_size=20))
    limit = data.draw(st.sampled_from([1500, 40_000]))
    out = frame_at(JsonArrayFramer(key, max_record_bytes=limit), doc, cuts)
    assert len(out) == len(recs)
    for i, ((rec, kind), got) in enumerate(zip(recs, out, strict=True)):
        event(f"{kind} {'over' if len(rec) > limit else 'under'} the limit")
        if len(rec) > limit:
            assert isinstance(got, UnreadableRecord) and got.code == "record_too_large"
        elif kind == "deep":
            assert isinstance(got, UnreadableRecord) and got.code == "too_deep"
        else:
            assert got == rec
            continue
        assert (got.offset, got.size, got.sample) == (i, len(rec), rec[:got.size][:64 * 1024])


@SETTINGS
@given(recs=st.lists(records(), max_size=8), data=st.data())
def test_lines_any_size_any_cuts(recs: list[tuple[bytes, str]], data: st.DataObject) -> None:
    doc = b"\n".join(r for r, _ in recs)
    cuts = data.draw(st.lists(st.integers(0, len(doc)), max_size=20))
    out = frame_at(LineFramer(max_record_bytes=1500), doc, cuts)
    assert len(out) == len(recs)
    for i, ((rec, _), got) in enumerate(zip(recs, out, strict=True)):
        if len(rec) > 1500:
            assert isinstance(got, UnreadableRecord) and (got.offset, got.size) == (i, len(rec))
        else:
            assert got == rec


junk = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b",", b":", b'"', b"\\", b" ", b"\n",
                                 b'{"Records":[', b"1", b"null", b"\xef\xbb\xbf", b"\xff",
                                 b'{"a":1}', b"},{", b"[" * 1200, b"]" * 1200, b"x" * 300,
                                 b'{"d":' + b"[" * 1200 + b"]" * 1200 + b"}"]),
                max_size=40).map(b"".join)


@SETTINGS
@given(blob=st.binary(max_size=400) | junk, key=st.sampled_from(["Records", None]),
       limit=st.integers(1, 2000), data=st.data())
def test_framers_raise_only_framing_errors(blob: bytes, key: str | None, limit: int,
                                           data: st.DataObject) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(blob)), max_size=10))
    for framer in (JsonArrayFramer(key, max_record_bytes=limit), LineFramer(limit)):
        try:
            out = frame_at(framer, blob, cuts)
        except FramingError as ex:
            assert ex.offset == framer.emitted and ex.offset >= len(ex.records)
            out = ex.records
        offsets = [r.offset for r in out if isinstance(r, UnreadableRecord)]
        assert all(isinstance(r, bytes | UnreadableRecord) for r in out)
        assert offsets == sorted(set(offsets)) and all(out[o].offset == o for o in offsets)
        for r in out:
            if isinstance(r, bytes) and isinstance(framer, JsonArrayFramer):
                msgspec.json.decode(r)  # every element handed on is valid JSON


structured = st.builds(lambda head, elems, end: head + b",".join(elems) + end,
                       st.sampled_from([b"[", b'{"Records":[', b"", b"\n"]),
                       st.lists(records().map(lambda r: r[0]) | junk, max_size=4),
                       st.sampled_from([b"]", b"]}", b"\n", b""]))


def compressed(kind: str, data: bytes) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, 1)
    if kind == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


@SETTINGS
@given(blob=st.binary(max_size=300) | junk | structured,
       fmt=st.sampled_from(["auto", *FORMATS]),
       codec=st.sampled_from(["plain", "gzip", "zstd", "garbage"]), data=st.data())
def test_reading_an_object_raises_only_project_errors(blob: bytes, fmt: str, codec: str,
                                                      data: st.DataObject) -> None:
    stored = compressed(codec, blob) if codec != "garbage" else b"\x28\xb5\x2f\xfd" + blob
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stored)), max_size=6)))
    chunks = [stored[a:b] for a, b in zip([0, *cuts], [*cuts, len(stored)], strict=True)]
    parsers = {f: text_format(f, fields=["a", "b", "c"]) for f in FORMATS}
    try:
        found, it = object_records("logs/x", chunks, fmt, max_bytes=1 << 20,
                                   parser_for=parsers.__getitem__, max_record_bytes=64)
        items = list(it)
    except (FramingError, ObjectReadError, FormatUnknown):
        return
    parser = parsers[found]
    for item in items:
        if parser is not None and not isinstance(item, UnreadableRecord):
            with contextlib.suppress(ParseError):
                parser.parse(item[1], item[2])


@settings(max_examples=200, deadline=None)
@given(line=st.binary(max_size=300) | st.text(max_size=120).map(str.encode),
       header=st.lists(st.binary(max_size=60) | st.sampled_from([
           b"#Version: 1.0", b"#Fields: date time x-edge-location c-ip",
           b"version account-id interface-id srcaddr dstaddr", b"a,b,c"]), max_size=3))
@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_text_parsers_raise_only_parse_errors(fmt: str, line: bytes, header: list[bytes]) -> None:
    parser = text_format(fmt, fields=["a", "b", "c"])
    assert parser is not None
    try:
        parser.is_header(line)
        assert isinstance(parser.parse(line, tuple(header)), dict)
    except ParseError as ex:
        assert ex.reason and ex.code
