"""operators.parse.RecordMapper: raw records to rows, or error records with the reason."""

from __future__ import annotations

import orjson
import pytest

from dataflow.config import SourceConfig, TableColumnConfig, TableConfig
from dataflow.core import metrics
from dataflow.core.messages import ErrorRecord, ObjectRef, RawRecord, Row, Rows
from operators.parse import ERROR_SAMPLE_BYTES, RecordMapper
from operators.schema import load_tables

APP = TableConfig(name="App_CL", columns=[
    TableColumnConfig(name="TimeGenerated", type="datetime", source="ts", required=True),
    TableColumnConfig(name="Msg", type="string", source="msg", required=True),
    TableColumnConfig(name="Status", type="int", source="status"),
])
SOURCES = [
    SourceConfig(name="trail", bucket="b1", format="cloudtrail", table="AWSCloudTrail"),
    SourceConfig(name="app", bucket="b2", format="ndjson", table="App_CL"),
]
TABLES = load_tables(None, [APP])
TRAIL = ObjectRef("trail", "trail:0/2", "b1", "AWSLogs/1.json.gz", "etag1", 100)
APP_OBJ = ObjectRef("app", "app:0/1", "b2", "app/1.ndjson", "etag2", 50)
APP_OBJ2 = ObjectRef("app", "app:1/2", "b2", "app/2.ndjson", "etag3", 50)

CT = {"eventTime": "2024-01-02T03:04:05Z", "eventName": "GetObject",
      "eventSource": "s3.amazonaws.com", "awsRegion": "eu-west-1"}


def app_rec(obj: ObjectRef, offset: int, **fields: object) -> RawRecord:
    return RawRecord(obj, offset, orjson.dumps({"ts": 1700000000, "msg": "hi", **fields}))


def errors_count(source: str, code: str) -> float:
    return metrics.ERRORS.labels(source, "map", code)._value.get()


@pytest.fixture(scope="module")
def mapper() -> RecordMapper:
    return RecordMapper(SOURCES, TABLES, max_row_bytes=1_000_000)


def test_good_records_become_rows_on_their_tables_stream(mapper: RecordMapper) -> None:
    rec = RawRecord(TRAIL, 3, orjson.dumps(CT))
    row = mapper(rec)
    assert type(row) is Row
    assert row.stream == "Custom-AWSCloudTrail"
    assert row.partition == "trail:0/2"
    assert row.record_id == f"{TRAIL.id}-3" == rec.record_id
    data = orjson.loads(row.data)
    assert data["EventName"] == "GetObject" and data["AWSRegion"] == "eu-west-1"
    assert data["TimeGenerated"] == "2024-01-02T03:04:05Z"
    assert data["RecordId_CF"] == rec.record_id

    row = mapper(app_rec(APP_OBJ, 0, status="200"))
    assert type(row) is Row and row.stream == "Custom-App_CL"
    assert orjson.loads(row.data) == {"TimeGenerated": "2023-11-14T22:13:20Z", "Msg": "hi",
                                      "Status": 200, "RecordId": f"{APP_OBJ.id}-0"}


@pytest.mark.parametrize("data,code,fragment", [
    (b"{not json", "invalid_json", "not valid JSON"),
    (b"[1, 2]", "not_an_object", "expected a JSON object, got list"),
    (orjson.dumps({"ts": 1700000000}), "missing_required", "'msg' (column Msg)"),
    (orjson.dumps({"ts": 1700000000, "msg": "m", "status": "ok"}), "wrong_type",
     "field 'status' = \"ok\" does not fit column Status (int)"),
])
def test_bad_records_become_error_records(mapper: RecordMapper, data: bytes, code: str,
                                          fragment: str) -> None:
    before = errors_count("app", code)
    err = mapper(RawRecord(APP_OBJ, 17, data))
    assert type(err) is ErrorRecord
    assert (err.obj, err.offset, err.stage, err.data) == (APP_OBJ, 17, "map", data)
    assert fragment in err.reason
    assert err.describe().startswith("s3://b2/app/1.ndjson record 17: map: ")
    assert errors_count("app", code) == before + 1


def test_error_sample_is_truncated(mapper: RecordMapper) -> None:
    data = b'{"msg": "' + b"x" * (2 * ERROR_SAMPLE_BYTES)  # not valid JSON, and long
    err = mapper(RawRecord(APP_OBJ, 0, data))
    assert type(err) is ErrorRecord
    assert err.data == data[:ERROR_SAMPLE_BYTES]


def test_row_too_large() -> None:
    small = RecordMapper(SOURCES, TABLES, max_row_bytes=200)
    fits = app_rec(APP_OBJ, 0, msg="x" * 50)
    row = small(fits)
    assert type(row) is Row and len(row.data) <= 198
    # The largest row that fits: 198 bytes (200 minus the array's brackets).
    pad = 198 - len(row.data) + 50
    exact = small(app_rec(APP_OBJ, 0, msg="x" * pad))
    assert type(exact) is Row and len(exact.data) == 198
    before = errors_count("app", "row_too_large")
    err = small(app_rec(APP_OBJ, 1, msg="x" * (pad + 1)))
    assert type(err) is ErrorRecord and err.stage == "map" and err.offset == 1
    assert err.reason == "row is 199 bytes, more than fits in one request (198 bytes)"
    assert errors_count("app", "row_too_large") == before + 1


def test_map_batch_bundles_rows_per_partition_in_order(mapper: RecordMapper) -> None:
    recs = [
        app_rec(APP_OBJ, 0), app_rec(APP_OBJ2, 0), RawRecord(APP_OBJ, 1, b"oops"),
        app_rec(APP_OBJ, 2, status=5), RawRecord(TRAIL, 0, orjson.dumps(CT)),
        app_rec(APP_OBJ2, 4),
    ]
    out = mapper.map_batch(recs)
    errors = [x for x in out if isinstance(x, ErrorRecord)]
    bundles = [x for x in out if isinstance(x, Rows)]
    assert [(e.obj, e.offset) for e in errors] == [(APP_OBJ, 1)]
    by_part = {b.partition: b for b in bundles}
    assert set(by_part) == {"app:0/1", "app:1/2", "trail:0/2"}
    assert by_part["app:0/1"].record_ids == (f"{APP_OBJ.id}-0", f"{APP_OBJ.id}-2")
    assert by_part["app:1/2"].record_ids == (f"{APP_OBJ2.id}-0", f"{APP_OBJ2.id}-4")
    assert by_part["trail:0/2"].stream == "Custom-AWSCloudTrail"
    assert by_part["app:0/1"].stream == "Custom-App_CL"
    for b in bundles:
        assert len(b.rows) == len(b.record_ids)
        for data, rid in zip(b.rows, b.record_ids, strict=False):   # each id is paired with its own row
            id_col = "RecordId_CF" if b.stream == "Custom-AWSCloudTrail" else "RecordId"
            assert orjson.loads(data)[id_col] == rid
    # The same records one at a time give the same rows.
    singles = [mapper(r) for r in recs]
    assert [r.data for r in singles if isinstance(r, Row) and r.partition == "app:0/1"] == \
        list(by_part["app:0/1"].rows)
    assert mapper.map_batch([]) == []


def test_an_epoch_out_of_range_is_a_wrong_type_error(mapper: RecordMapper) -> None:
    # datetime.fromtimestamp raises OSError far out of range: reported as the value not
    # fitting its column, like any other bad value, and the flow goes on.
    before = errors_count("app", "wrong_type")
    err = mapper(app_rec(APP_OBJ, 9, ts=-(2**63)))
    assert type(err) is ErrorRecord and err.stage == "map" and err.offset == 9
    assert "does not fit column TimeGenerated" in err.reason
    assert errors_count("app", "wrong_type") == before + 1


def test_a_source_naming_an_undefined_table() -> None:
    sources = [*SOURCES, SourceConfig(name="fw", bucket="b", format="ndjson", table="Firewall_CL")]
    with pytest.raises(KeyError) as ei:
        RecordMapper(sources, TABLES, max_row_bytes=1_000_000)
    msg = ei.value.args[0]
    assert msg.startswith("source 'fw' maps ")
    assert "onto table 'Firewall_CL', which is not defined" in msg
    assert "AWSCloudTrail" in msg and "App_CL" in msg       # the tables that are defined
    assert "[[tables]]" in msg and "runtime.tables_dir" in msg


def test_an_object_of_many_bad_records_becomes_a_bounded_number_of_dead_letters() -> None:
    from connectors.deadletter import entry_ranges, error_entry
    from connectors.ledger import REST

    src = SourceConfig(name="app", bucket="b2", format="ndjson", table="App_CL",
                       max_dead_letters_per_object=3)
    mapper = RecordMapper([src], TABLES, max_row_bytes=1_000_000)
    obj = ObjectRef("app", "app:0/1", "b2", "app/bomb.ndjson", "e", 618)
    before = metrics.ERRORS.labels("app", "read", "too_many_bad_records")._value.get()
    recs = [RawRecord(obj, i, b"not json") for i in range(6)]
    recs.insert(3, app_rec(obj, 100))  # a good record among them still becomes a row
    out = mapper.map_batch(recs)
    errs = [x for x in out if isinstance(x, ErrorRecord)]
    assert [(e.offset, e.stage) for e in errs] == [(0, "map"), (1, "map"), (2, "map"),
                                                   (3, "read")]
    assert errs[-1].code == "too_many_bad_records" and "offset 3" in errs[-1].reason
    assert [r.record_ids for r in out if isinstance(r, Rows)] == [(f"{obj.id}-100",)]
    # Later bad records of the object are counted, not kept; the summary accounts for them.
    assert mapper.map_batch([RawRecord(obj, i, b"{") for i in range(6, 5000)]) == []
    assert entry_ranges([error_entry(errs[-1])]) == {obj.id: [[3, REST]]}
    assert metrics.ERRORS.labels("app", "read", "too_many_bad_records")._value.get() - before == 1
    # Another object has its own count.
    other = ObjectRef("app", "app:0/1", "b2", "app/ok.ndjson", "e", 9)
    assert isinstance(mapper(RawRecord(other, 0, b"x")), ErrorRecord)


def test_the_bound_counts_bytes_too() -> None:
    src = SourceConfig(name="app", bucket="b2", format="ndjson", table="App_CL",
                       max_dead_letter_bytes_per_object=1000)
    mapper = RecordMapper([src], TABLES, max_row_bytes=1_000_000)
    obj = ObjectRef("app", "app:0/1", "b2", "app/big.ndjson", "e", 618)
    out = mapper.map_batch([RawRecord(obj, i, b"x" * 400) for i in range(5)])
    assert [(e.offset, e.stage) for e in out] == [(0, "map"), (1, "map"), (2, "read")]


def test_a_format_an_auto_source_cannot_read_is_a_dead_letter_not_an_exception() -> None:
    # fields that are no valid VPC field list: validate-config refuses them, but a mapper
    # built without it must still not raise out of the flow.
    src = SourceConfig(name="any", bucket="b", format="auto", fields=["a a"])
    mapper = RecordMapper([src], TABLES, max_row_bytes=1_000_000)
    obj = ObjectRef("any", "any:0/1", "b", "AWSLogs/1/vpcflowlogs/x.log", "e", 9, "vpcflow")
    err = mapper(RawRecord(obj, 0, b"2 1 eni-1 - - - - - - - 1 2 NODATA"))
    assert isinstance(err, ErrorRecord) and "cannot read format 'vpcflow'" in err.reason
