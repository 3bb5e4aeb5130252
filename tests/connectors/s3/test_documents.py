"""connectors.s3.documents: concatenated JSON documents (as Firehose writes them), each expanded
into its records by the format's expander; offsets count records, so resume and dead-letter
positions stay exact."""

from __future__ import annotations

import gzip
import time
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.s3.documents import JsonDocumentsFramer
from connectors.s3.framing import FramingError, UnreadableRecord
from connectors.s3.records import framer_for, object_records
from operators.formats.envelopes import cloudwatch_events, securityhub_findings

WHOLE = 1 << 30
CHUNKS = [1, 2, 7, 64, WHOLE]


def doc(n: int, first: int = 0, group: str = "g") -> dict[str, Any]:
    return {"owner": "1", "logGroup": group, "logStream": "s", "subscriptionFilters": ["f"],
            "messageType": "DATA_MESSAGE",
            "logEvents": [{"id": str(first + i), "timestamp": 1432826855000 + first + i,
                           "message": f'm{first + i} }}{{ "]["'} for i in range(n)]}


CONTROL = {"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "",
           "logStream": "", "subscriptionFilters": [], "logEvents": [
               {"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE"}]}


def frame(framer: Any, data: bytes, chunk: int) -> list[Any]:
    out: list[Any] = []
    for i in range(0, len(data), chunk):
        out += framer.feed(data[i:i + chunk])
    return out + framer.finish()


def events(records: list[Any]) -> list[str]:
    return [orjson.loads(r)["logEvent"]["id"] for r in records]


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("sep", [b"", b"\n", b" \r\n\t"])
def test_concatenated_documents_for_every_chunking(chunk: int, sep: bytes) -> None:
    data = sep.join(orjson.dumps(d) for d in (doc(2), CONTROL, doc(3, first=2)))
    framer = JsonDocumentsFramer(cloudwatch_events)
    records = frame(framer, data, chunk)
    assert events(records) == ["0", "1", "2", "3", "4"]  # the control message gives none
    assert framer.emitted == 5


@pytest.mark.parametrize("chunk", CHUNKS)
def test_a_bad_document_is_one_unreadable_record_in_its_place(chunk: int) -> None:
    data = (orjson.dumps(doc(2)) + b'{"no":"events"}' + b'{"logEvents": [1 2]}'
            + orjson.dumps(doc(1, first=2)))
    records = frame(JsonDocumentsFramer(cloudwatch_events), data, chunk)
    bad = [r for r in records if isinstance(r, UnreadableRecord)]
    assert [(b.offset, b.code) for b in bad] == [(2, "not_cloudwatch"), (3, "invalid_json")]
    assert bad[0].sample == b'{"no":"events"}' and "no logEvents" in bad[0].reason
    assert events([r for r in records if isinstance(r, bytes)]) == ["0", "1", "2"]
    assert records[4] == cloudwatch_events(orjson.dumps(doc(1, first=2)))[0]


def test_a_record_over_the_bound_is_unreadable_and_the_rest_follows() -> None:
    big = {**doc(1), "logEvents": [{"id": "0", "timestamp": 1, "message": "x" * 5000},
                                   {"id": "1", "timestamp": 2, "message": "y"}]}
    records = frame(JsonDocumentsFramer(cloudwatch_events, max_record_bytes=1000),
                    orjson.dumps(big), 64)
    assert isinstance(records[0], UnreadableRecord) and records[0].code == "record_too_large"
    assert records[0].offset == 0 and records[0].size > 5000
    assert orjson.loads(records[1])["logEvent"]["id"] == "1"


@pytest.mark.parametrize("chunk", [7, 4096, WHOLE])
def test_a_document_over_its_bound_is_walked_past_holding_its_head(chunk: int) -> None:
    data = orjson.dumps(doc(500)) + orjson.dumps(doc(1, first=500))
    framer = JsonDocumentsFramer(cloudwatch_events, max_record_bytes=300,
                                 max_document_bytes=1000)
    records = frame(framer, data, chunk)
    assert isinstance(records[0], UnreadableRecord) and records[0].code == "document_too_large"
    assert records[0].size == len(orjson.dumps(doc(500)))
    assert events(records[1:]) == ["500"] and framer.emitted == 2


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize(("data", "offset"), [
    (b'{"logEvents": []}' + b'[1]', 0), (b"garbage", 0),
    (orjson.dumps(doc(2)) + b"null", 2),
    (orjson.dumps(doc(2)) + orjson.dumps(doc(1))[:-3], 2)])
def test_a_broken_stream_fails_from_its_offset(chunk: int, data: bytes, offset: int) -> None:
    framer = JsonDocumentsFramer(cloudwatch_events)
    with pytest.raises(FramingError) as ex:
        frame(framer, data, chunk)
    assert ex.value.offset == offset


def test_gzip_inside_gzip_says_what_to_change_in_firehose() -> None:
    """CloudWatch Logs gzips each batch; a Firehose stream that compresses again stores gzip in
    gzip, which no JSON document starts with."""
    body = gzip.compress(gzip.compress(orjson.dumps(doc(1))))
    with pytest.raises(FramingError, match="must not compress it again") as ex:
        _, items = object_records("k", [body], "cloudwatchlogs", max_bytes=1 << 30,
                                  parser_for=lambda f: None)
        list(items)
    assert ex.value.offset == 0


def test_bom_and_nothing() -> None:
    for chunk in (1, 2, WHOLE):
        data = b"\xef\xbb\xbf" + orjson.dumps(doc(1))
        assert events(frame(JsonDocumentsFramer(cloudwatch_events), data, chunk)) == ["0"]
    assert frame(JsonDocumentsFramer(cloudwatch_events), b"", 1) == []
    assert frame(JsonDocumentsFramer(cloudwatch_events), b" \n ", 1) == []


def test_objects_of_gzip_members_resume_at_the_exact_event() -> None:
    """Firehose object of CloudWatch Logs documents, each gzip'd: offsets count events across
    documents; reading from any offset gives the same records from there on."""
    docs = [doc(3), CONTROL, doc(2, first=3, group="h"), doc(4, first=5)]
    body = b"".join(gzip.compress(orjson.dumps(d)) for d in docs)
    fmt, items = object_records("firehose/2026/x", [body], "auto", max_bytes=1 << 30,
                                parser_for=lambda f: None)
    whole = list(items)
    assert fmt == "cloudwatchlogs" and [o for o, *_ in whole] == list(range(9))
    assert events([r for _, r, _ in whole]) == [str(i) for i in range(9)]
    for skip in range(10):
        _, again = object_records("k", [body], "cloudwatchlogs", max_bytes=1 << 30,
                                  parser_for=lambda f: None, skip=skip)
        assert list(again) == whole[skip:]


def test_security_hub_events_through_object_records() -> None:
    finding = {"Id": "f", "AwsAccountId": "1"}
    event = {"version": "0", "id": "e", "detail-type": "Security Hub Findings - Imported",
             "source": "aws.securityhub", "time": "2019-04-11T21:52:17Z",
             "detail": {"findings": [finding, {**finding, "Id": "g"}]}}
    body = gzip.compress(orjson.dumps(event) + orjson.dumps(event))
    fmt, items = object_records("firehose/k.gz", [body], "auto", max_bytes=1 << 30,
                                parser_for=lambda f: None)
    out = list(items)
    assert fmt == "securityhub"
    assert [(o, orjson.loads(r)["finding"]["Id"]) for o, r, _ in out] == [
        (0, "f"), (1, "g"), (2, "f"), (3, "g")]


def test_framer_for_documents() -> None:
    assert isinstance(framer_for("cloudwatchlogs"), JsonDocumentsFramer)
    assert isinstance(framer_for("securityhub"), JsonDocumentsFramer)


json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=6)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(st.dictionaries(st.text(max_size=5), json_value, max_size=4), max_size=5),
       seps=st.lists(st.sampled_from([b"", b"\n", b" "]), min_size=5, max_size=5),
       chunk=st.integers(1, 50))
def test_property_any_documents_any_split(docs: list[dict[str, Any]], seps: list[bytes],
                                          chunk: int) -> None:
    """Whatever the documents: one item per document, in order, at its own offset (records for
    envelopes, an unreadable record for the rest), whatever the chunking."""
    data = b"".join(orjson.dumps(d) + s for d, s in zip(docs, seps, strict=False))
    framer = JsonDocumentsFramer(securityhub_findings)
    out = frame(framer, data, chunk)
    expected: list[Any] = []
    for d in docs:
        try:
            expected += securityhub_findings(orjson.dumps(d))
        except Exception as ex:  # noqa: BLE001 (what the framer must report in its place)
            expected.append(type(ex).__name__)
    assert [type(o).__name__ if isinstance(o, UnreadableRecord) and o.code != "record_too_large"
            else o for o in out] == [
        "UnreadableRecord" if isinstance(e, str) else e for e in expected]
    assert framer.emitted == len(out)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), chunk=st.integers(1, 64))
def test_property_arbitrary_bytes_only_records_unreadable_or_framing_errors(data: bytes,
                                                                             chunk: int) -> None:
    framer = JsonDocumentsFramer(cloudwatch_events)
    try:
        out = frame(framer, data, chunk)
    except FramingError as ex:
        assert ex.offset <= framer.emitted
        return
    assert all(isinstance(o, (bytes, UnreadableRecord)) for o in out)


def test_deep_nesting_is_one_unreadable_record() -> None:
    deep = b'{"logEvents": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    out = frame(JsonDocumentsFramer(cloudwatch_events), deep + orjson.dumps(doc(1)), 4096)
    assert isinstance(out[0], UnreadableRecord) and out[0].code == "too_deep"
    assert events(out[1:]) == ["0"]


def test_a_long_stream_frames_in_linear_time() -> None:
    def data(n: int) -> bytes:
        return b"".join(orjson.dumps(doc(50, first=i * 50)) for i in range(n))

    small, large = data(200), data(2000)
    t0 = time.perf_counter()
    assert len(frame(JsonDocumentsFramer(cloudwatch_events), small, 65536)) == 10_000
    t1 = time.perf_counter()
    assert len(frame(JsonDocumentsFramer(cloudwatch_events), large, 65536)) == 100_000
    assert time.perf_counter() - t1 < max(20 * (t1 - t0), 2.0)
