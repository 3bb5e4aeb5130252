"""Table definitions and the mapping of records onto rows (fast and generic paths agree)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack.samples import cloudtrail_event
from operators.schema import Mapper, MappingError, TableDef, TableError, load_tables

TABLE = TableDef.from_mapping({"table": "T_CL", "columns": [
    {"name": "TimeGenerated", "type": "datetime", "source": "time", "required": True},
    {"name": "Name", "type": "string", "source": "name", "required": True},
    {"name": "Arn", "type": "string", "source": "user.arn"},
    {"name": "Mfa", "type": "bool", "source": "user.ctx.mfa"},
    {"name": "Params", "type": "string", "source": "params", "json": True},
    {"name": "Port", "type": "string", "source": "params.perms.0.port"},
    {"name": "Count", "type": "long", "source": "count"},
    {"name": "Ratio", "type": "real", "source": "ratio"},
    {"name": "Extra", "type": "dynamic", "source": "extra"},
]}, "test")


def both(rec: Any) -> dict:
    """Map through both paths; they must agree (rows or error codes)."""
    m = Mapper(TABLE)
    fast = generic = None
    try:
        fast = orjson.loads(m.map_json(orjson.dumps(rec), "rid"))
    except MappingError as ex:
        fast = ("error", ex.code)
    try:
        generic = orjson.loads(m.map_dict(rec, "rid"))
    except MappingError as ex:
        generic = ("error", ex.code)
    assert fast == generic
    return fast


def test_a_full_record() -> None:
    row = both({"time": "2026-01-01T00:00:00Z", "name": "X", "user": {"arn": "a\"b",
                "ctx": {"mfa": "true"}}, "params": {"perms": [{"port": 22}], "k": [1, {"b": 2}]},
                "count": "5", "ratio": 1, "extra": {"z": [1]}, "ignored": 1})
    assert row == {"TimeGenerated": "2026-01-01T00:00:00Z", "Name": "X", "Arn": 'a"b', "Mfa": True,
                   "Params": '{"perms":[{"port":22}],"k":[1,{"b":2}]}', "Port": "22", "Count": 5,
                   "Ratio": 1.0, "Extra": {"z": [1]}, "RecordId": "rid"}


@pytest.mark.parametrize(("value", "expected"), [
    ("2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
    ("2026-01-01T00:00:00.123Z", "2026-01-01T00:00:00.123Z"),
    ("2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z"),
    ("2026-01-01 00:00:00", "2026-01-01T00:00:00Z"),  # naive: UTC
    (1767225600, "2026-01-01T00:00:00Z"),  # epoch seconds
    (1767225600000, "2026-01-01T00:00:00Z"),  # epoch milliseconds
])
def test_time_generated_is_iso_utc(value: Any, expected: str) -> None:
    assert both({"time": value, "name": "x"})["TimeGenerated"] == expected


@pytest.mark.parametrize(("rec", "code"), [
    ({"name": "x"}, "missing_required"),
    ({"time": None, "name": "x"}, "missing_required"),
    ({"time": "yesterday", "name": "x"}, "wrong_type"),
    ({"time": "2026-01-01T00:00:00Z", "name": "x", "count": "many"}, "wrong_type"),
    ({"time": "2026-01-01T00:00:00Z", "name": "x", "user": {"ctx": {"mfa": "maybe"}}}, "wrong_type"),
    ([1, 2], "not_an_object"),
])
def test_bad_records_are_rejected_with_a_code(rec: Any, code: str) -> None:
    assert both(rec) == ("error", code)


def test_messages_name_the_field_and_column() -> None:
    with pytest.raises(MappingError, match=r"field 'count' = \"many\" does not fit column Count"):
        Mapper(TABLE).map_json(b'{"time": "2026-01-01T00:00:00Z", "name": "x", "count": "many"}', "r")
    with pytest.raises(MappingError, match="not valid JSON") as info:
        Mapper(TABLE).map_json(b'{"time": ', "r")
    assert info.value.code == "invalid_json"


def test_nested_values_in_string_columns_become_json_text() -> None:
    row = both({"time": "2026-01-01T00:00:00Z", "name": {"first": "a"}, "user": {"arn": 7}})
    assert row["Name"] == '{"first":"a"}' and row["Arn"] == "7"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False, width=32),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(time=st.sampled_from(["2026-01-01T00:00:00Z", None, 5, "x"]) | json_values,
       name=json_values, user=json_values, params=json_values, count=json_values,
       extra=json_values, drop=st.sets(st.sampled_from(["time", "name", "user", "params"])))
def test_fast_and_generic_paths_agree_on_anything(time: Any, name: Any, user: Any, params: Any,
                                                  count: Any, extra: Any, drop: set) -> None:
    rec = {"time": time, "name": name, "user": user, "params": params, "count": count,
           "extra": extra}
    for k in drop:
        rec.pop(k)
    both(rec)


def test_shipped_cloudtrail_table_maps_generated_events() -> None:
    tables = load_tables()
    ct = tables["AWSCloudTrail"]
    assert ct.stream == "Custom-AWSCloudTrail" and ct.record_id_column == "RecordId_CF"
    m = Mapper(ct)
    rng = random.Random(3)
    seen: set[str] = set()
    for _ in range(2000):
        ev = cloudtrail_event(rng, account="111122223333", region="eu-west-1",
                              when=datetime(2026, 1, 1, tzinfo=UTC))
        row = orjson.loads(m.map_json(orjson.dumps(ev), "x-1"))
        assert row == orjson.loads(m.map_dict(ev, "x-1"))
        assert row["TimeGenerated"] == ev["eventTime"] and row["EventName"] == ev["eventName"]
        seen |= row.keys()
    assert seen == {c.name for c in ct.columns} | {"RecordId_CF"}  # every column gets filled


@pytest.mark.parametrize(("columns", "problem"), [
    ([{"name": "1bad", "type": "string"}], "start with a letter"),
    ([{"name": "x" * 46, "type": "string"}], "at most 45"),
    ([{"name": "TenantId", "type": "string"}], "reserved"),
    ([{"name": "A", "type": "text"}], "is not one of"),
    ([{"name": "A", "type": "string"}, {"name": "A", "type": "string"}], "duplicate"),
    ([{"name": "A", "type": "string"}], "needs a TimeGenerated"),
])
def test_invalid_table_definitions_are_refused(columns: list, problem: str) -> None:
    with pytest.raises(TableError, match=problem):
        TableDef.from_mapping({"table": "T_CL", "columns": columns}, "t.toml")


def test_custom_tables_end_in_cl() -> None:
    with pytest.raises(TableError, match="must end with '_CL'"):
        TableDef.from_mapping({"table": "T", "columns": [
            {"name": "TimeGenerated", "type": "datetime"}]}, "t.toml")


def test_long_strings_are_cut_to_64_kb_with_a_marker_and_counted() -> None:
    from dataflow.core import metrics
    from operators.schema import MAX_FIELD_BYTES

    counter = metrics.FIELDS_TRUNCATED.labels("T_CL", "Name")
    before = counter._value.get()
    for value in ("é" * 40_000, "x" * 70_000):  # 80,000 and 70,000 bytes of UTF-8
        row = both({"time": "2026-01-01T00:00:00Z", "name": value, "params": {"p": value}})
        assert len(row["Name"].encode()) <= MAX_FIELD_BYTES
        assert row["Name"].endswith("[truncated by s3sentinel]")
        assert len(row["Params"].encode()) <= MAX_FIELD_BYTES
    assert counter._value.get() - before == 4  # both paths, both values
    short = both({"time": "2026-01-01T00:00:00Z", "name": "é" * 16_000})
    assert short["Name"] == "é" * 16_000


def test_a_star_column_keeps_every_unmapped_top_level_field() -> None:
    table = TableDef.from_mapping({"table": "R_CL", "columns": [
        {"name": "TimeGenerated", "type": "datetime", "source": "time", "required": True},
        {"name": "Name", "type": "string", "source": "user.name"},
        {"name": "AdditionalFields", "type": "dynamic", "source": "*"},
    ]}, "t")
    m = Mapper(table)
    rec = {"time": "2026-01-01T00:00:00Z", "user": {"name": "a", "id": 1}, "new": {"x": [1]},
           "flag": True}
    fast = orjson.loads(m.map_json(orjson.dumps(rec), "r"))
    assert fast == orjson.loads(m.map_dict(rec, "r"))
    assert fast["AdditionalFields"] == {"new": {"x": [1]}, "flag": True}
    with pytest.raises(TableError, match="needs type dynamic"):
        TableDef.from_mapping({"table": "R_CL", "columns": [
            {"name": "TimeGenerated", "type": "datetime"},
            {"name": "Rest", "type": "string", "source": "*"}]}, "t")


def test_values_outside_allowed_are_quarantined() -> None:
    table = TableDef.from_mapping({"table": "A_CL", "columns": [
        {"name": "TimeGenerated", "type": "datetime", "source": "t", "required": True},
        {"name": "Action", "type": "string", "source": "a", "allowed": ["ACCEPT", "REJECT"]},
        {"name": "Code", "type": "int", "source": "c", "allowed": [1, 2]},
    ]}, "t")
    m = Mapper(table)
    ok = {"t": "2026-01-01T00:00:00Z", "a": "ACCEPT", "c": "2"}
    assert orjson.loads(m.map_json(orjson.dumps(ok), "r"))["Code"] == 2
    for bad in ({**ok, "a": "DROP"}, {**ok, "c": 3}):
        for call in (lambda r: m.map_json(orjson.dumps(r), "r"), lambda r: m.map_dict(r, "r")):
            with pytest.raises(MappingError, match="not an allowed value") as info:
                call(bad)
            assert info.value.code == "not_allowed"


def test_known_extra_fields_are_gathered_on_the_fast_path() -> None:
    table = TableDef.from_mapping({"table": "K_CL", "columns": [
        {"name": "TimeGenerated", "type": "datetime", "source": "time", "required": True},
        {"name": "AdditionalFields", "type": "dynamic", "source": "*", "known": ["extra"]},
    ]}, "t")
    m = Mapper(table)
    for rec in ({"time": "2026-01-01T00:00:00Z", "extra": {"a": 1}},
                {"time": "2026-01-01T00:00:00Z", "extra": {"a": 1}, "surprise": [2]},
                {"time": "2026-01-01T00:00:00Z"}):
        fast = orjson.loads(m.map_json(orjson.dumps(rec), "r"))
        assert fast == orjson.loads(m.map_dict(rec, "r"))
        assert fast.get("AdditionalFields", {}) == {k: v for k, v in rec.items() if k != "time"}
