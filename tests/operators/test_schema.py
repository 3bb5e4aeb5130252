"""operators.schema: table definitions, and records mapped onto rows (fast and generic paths agree)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflow.config import TableColumnConfig, TableConfig
from devstack.samples import cloudtrail_event
from operators.schema import COLUMN_TYPES, Mapper, MappingError, TableDef, TableError, load_tables

TG = {"name": "TimeGenerated", "type": "datetime", "source": "time"}


def table(columns: list[dict[str, Any]], name: str = "T_CL", **extra: Any) -> TableDef:
    return TableDef.from_mapping({"table": name, "columns": columns, **extra}, "test")


def table_error(data: dict[str, Any]) -> str:
    with pytest.raises(TableError) as ei:
        TableDef.from_mapping(data, "tables/X.toml")
    msg = str(ei.value)
    assert msg.startswith("table definition tables/X.toml is invalid:")
    return msg


# --------------------------------------------------------------------------- TableDef


def test_valid_custom_and_standard_tables() -> None:
    t = table([TG, {"name": "Msg", "type": "string", "source": "m.text", "required": True}],
              description="d")
    assert (t.name, t.kind, t.stream, t.output_stream) == ("T_CL", "custom", "Custom-T_CL",
                                                           "Custom-T_CL")
    assert t.record_id_column == "RecordId"
    assert t.columns[1].source == ("m", "text") and t.columns[1].required
    assert t.columns[0].source == ("time",)
    assert table([{"name": "TimeGenerated", "type": "datetime"}]).columns[0].source == \
        ("TimeGenerated",)  # the source defaults to the column name
    s = TableDef.from_mapping({"table": "AWSThing", "kind": "standard", "columns": [TG]}, "t")
    assert (s.stream, s.output_stream, s.record_id_column) == (
        "Custom-AWSThing", "Microsoft-AWSThing", "RecordId_CF")
    named = TableDef.from_mapping({"name": "N_CL", "stream": "Custom-Other", "columns": [TG]}, "t")
    assert named.name == "N_CL" and named.stream == "Custom-Other"


def test_column_name_rules_all_reported_at_once() -> None:
    ok45 = "A" + "b" * 44
    msg = table_error({"table": "Custom", "columns": [
        {"name": "1abc", "type": "string"},
        {"name": "_under", "type": "string"},
        {"name": "has-dash", "type": "string"},
        {"name": ok45, "type": "string"},
        {"name": ok45 + "c", "type": "string"},
        {"name": "TenantId", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "Dup", "type": "string"},
        {"name": "Dup", "type": "int"},
        {"name": "Bad", "type": "text"},
        {"name": "NoType"},
    ]})
    lines = msg.splitlines()[1:]
    expected = [
        "columns[1abc]: column names start with a letter",
        "columns[_under]: column names start with a letter",
        "columns[has-dash]: column names start with a letter",
        f"columns[{ok45}c]: column names start with a letter",
        "columns[TenantId]: 'TenantId' is a reserved column name",
        "columns[type]: 'type' is a reserved column name",
        "columns[Dup]: duplicate column",
        "columns[Bad]: type 'text' is not one of string, int, long, real, bool, datetime, dynamic",
        "columns[NoType]: type None is not one of",
        "custom table name 'Custom' must end with '_CL'",
        "a table needs a TimeGenerated column (type datetime)",
    ]
    for e in expected:
        assert any(e in line for line in lines), (e, lines)
    assert not any(f"columns[{ok45}]:" in line for line in lines)  # 45 characters are fine
    assert len(lines) == len(expected)


def test_table_level_problems() -> None:
    msg = table_error({"kind": "builtin", "columns": []})
    assert "'table' (the table name) is missing" in msg
    assert "kind 'builtin' must be 'standard' or 'custom'" in msg
    assert "a table needs at least one column" in msg
    # A standard table need not end with _CL.
    assert TableDef.from_mapping({"table": "Syslog", "kind": "standard", "columns": [TG]},
                                 "t").name == "Syslog"


@pytest.mark.parametrize("reserved", ["TenantId", "Type", "_ResourceId", "SourceSystem", "MG",
                                      "tenantid", "TYPE"])
def test_reserved_names(reserved: str) -> None:
    msg = table_error({"table": "X_CL", "columns": [TG, {"name": reserved, "type": "string"}]})
    assert f"columns[{reserved}]" in msg


# --------------------------------------------------------------------------- load_tables


def test_shipped_tables() -> None:
    tables = load_tables()
    ct = tables["AWSCloudTrail"]
    assert ct.stream == "Custom-AWSCloudTrail"
    assert ct.output_stream == "Microsoft-AWSCloudTrail"
    assert ct.kind == "standard" and ct.record_id_column == "RecordId_CF"
    cols = {c.name: c for c in ct.columns}
    assert cols["TimeGenerated"].type == "datetime" and cols["TimeGenerated"].required
    assert cols["TimeGenerated"].source == ("eventTime",)
    assert cols["EventName"].required and cols["EventSource"].required
    assert cols["RequestParameters"].json
    assert all(c.type in COLUMN_TYPES for c in ct.columns)
    for t in tables.values():
        assert t.stream.startswith("Custom-")


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


def test_extra_dir_and_declared_tables(tmp_path: Path) -> None:
    (tmp_path / "Mine_CL.toml").write_text(
        'table = "Mine_CL"\n[[columns]]\nname = "TimeGenerated"\ntype = "datetime"\n')
    declared = [TableConfig(name="Cfg_CL", columns=[
        TableColumnConfig(name="TimeGenerated", type="datetime", source="ts", required=True),
        TableColumnConfig(name="Msg", type="string", source="m")])]
    tables = load_tables(tmp_path, declared)
    assert {"AWSCloudTrail", "Mine_CL", "Cfg_CL"} <= set(tables)
    assert tables["Cfg_CL"].stream == "Custom-Cfg_CL"
    assert tables["Cfg_CL"].columns[0].source == ("ts",)
    assert tables["Cfg_CL"].columns[0].required
    # A declared table replaces a file's table of the same name.
    again = load_tables(tmp_path, [TableConfig(name="Mine_CL", columns=[
        TableColumnConfig(name="TimeGenerated", type="datetime"),
        TableColumnConfig(name="Extra", type="dynamic")])])
    assert [c.name for c in again["Mine_CL"].columns] == ["TimeGenerated", "Extra"]


def test_extra_dir_with_bad_files(tmp_path: Path) -> None:
    (tmp_path / "Bad.toml").write_text("table = \n")
    with pytest.raises(TableError, match="Bad.toml is not valid TOML"):
        load_tables(tmp_path)
    (tmp_path / "Bad.toml").write_text('table = "Bad"\n[[columns]]\nname = "X"\ntype = "int"\n')
    with pytest.raises(TableError, match="Bad.toml is invalid"):
        load_tables(tmp_path)
    with pytest.raises(TableError, match=r"config tables\[Nope\] is invalid"):
        load_tables(None, [TableConfig(name="Nope", columns=[TableColumnConfig("A", "int")])])


# --------------------------------------------------------------------------- mapping helpers

PROP = table([
    {"name": "TimeGenerated", "type": "datetime", "source": "time", "required": True},
    {"name": "Name", "type": "string", "source": "name", "required": True},
    {"name": "User", "type": "string", "source": "user"},          # also a parent: kept raw
    {"name": "Arn", "type": "string", "source": "user.arn"},
    {"name": "Mfa", "type": "bool", "source": "user.ctx.mfa"},
    {"name": "Params", "type": "string", "source": "params", "json": True},
    {"name": "Port", "type": "string", "source": "params.perms.0.port"},
    {"name": "Proto", "type": "int", "source": "params.perms.0.proto"},
    {"name": "Count", "type": "long", "source": "count"},
    {"name": "Small", "type": "int", "source": "small"},
    {"name": "Ratio", "type": "real", "source": "ratio"},
    {"name": "Flag", "type": "bool", "source": "flag"},
    {"name": "When", "type": "datetime", "source": "when"},
    {"name": "Extra", "type": "dynamic", "source": "extra"},
    # Not under a raw parent: see test_dynamic_column_under_a_list_index for that case.
    {"name": "Deep", "type": "dynamic", "source": "deep.x.extra"},
], name="Prop_CL")
PROP_MAPPER = Mapper(PROP)


def outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "row", orjson.loads(fn())
    except MappingError as ex:
        return "error", ex.code


def both(mapper: Mapper, rec: Any, raw: bytes | None = None, rid: str = "obj-0") -> Any:
    """The row (as parsed JSON) or the MappingError code; both paths must agree."""
    raw = orjson.dumps(rec) if raw is None else raw
    fast = outcome(lambda: mapper.map_json(raw, rid))
    generic = outcome(lambda: mapper.map_dict(rec, rid))
    assert fast == generic, (raw, fast, generic)
    return fast[1]


def col(rec: Any, column: str, mapper: Mapper = PROP_MAPPER) -> Any:
    base = {"time": "2024-01-01T00:00:00Z", "name": "n"}
    row = both(mapper, {**base, **rec})
    assert isinstance(row, dict), row
    return row.get(column, "<absent>")


def error(rec: Any, mapper: Mapper = PROP_MAPPER) -> MappingError:
    raw = orjson.dumps(rec)
    with pytest.raises(MappingError) as fast:
        mapper.map_json(raw, "r")
    with pytest.raises(MappingError) as generic:
        mapper.map_dict(rec, "r")
    assert fast.value.code == generic.value.code
    assert fast.value.reason == generic.value.reason
    return fast.value


# --------------------------------------------------------------------------- property

scalars = (st.none() | st.booleans() | st.integers(-10**12, 10**12)
           | st.floats(allow_nan=False, allow_infinity=False, width=64)
           | st.sampled_from(["", "x", "42", " -7 ", "4.5", "true", "False", "yes", "0",
                              "2024-05-06T07:08:09Z", "2024-05-06T07:08:09.123+02:00",
                              "2024-05-06 07:08:09", "not a date", "ünï", "a\"b\\c"]))
nested = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["a", "b", "port", "proto"]), inner,
                                        max_size=3), max_leaves=6)
absent = st.just(...)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return absent | st.none() | strategy | nested


def obj(**kw: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A record with these fields (a field whose strategy gives ``...`` is left out)."""
    return st.fixed_dictionaries(kw).map(lambda d: {k: v for k, v in d.items() if v is not ...})


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A good value 70% of the time; otherwise absent, null, good, or any other type."""
    return st.integers(0, 9).flatmap(lambda n: good if n < 7 else maybe(good))


times = st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T01:00:00+01:00",
                         "2024-01-01 01:00:00"]) | st.integers(0, 2 * 10**12)
ints = st.integers(-(2**40), 2**40) | st.integers(-99, 99).map(str)
flags = st.booleans() | st.sampled_from(["true", "false", "1", "0"])
perm = obj(port=mostly(ints), proto=mostly(ints))
records = obj(
    time=mostly(times),
    name=mostly(st.text(max_size=5)),
    user=mostly(obj(arn=mostly(st.text(max_size=5)),
                    ctx=mostly(obj(mfa=mostly(flags), extra=mostly(nested))))),
    deep=mostly(obj(x=mostly(obj(extra=mostly(nested))))),
    params=mostly(obj(perms=mostly(st.lists(perm, max_size=2)))),
    count=mostly(ints), small=mostly(ints), ratio=mostly(st.floats(-1e9, 1e9) | ints),
    flag=mostly(flags), when=mostly(times), extra=mostly(nested), other=maybe(nested),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rec=st.one_of(records, nested))
def test_property_map_json_and_map_dict_agree(rec: Any) -> None:
    result = both(PROP_MAPPER, rec)
    if isinstance(result, dict):
        assert result["RecordId"] == "obj-0"
        assert "TimeGenerated" in result and "Name" in result
        for v in result.values():
            assert v is not None  # nulls are left out


def test_a_full_record_fills_every_column_and_nothing_else() -> None:
    user = {"arn": "a\"b", "ctx": {"mfa": "true"}}
    params = {"perms": [{"port": 22, "proto": "6"}], "k": [1, {"b": 2}]}
    row = both(PROP_MAPPER, {
        "time": "2026-01-01T00:00:00Z", "name": "X", "user": user, "params": params,
        "count": "5", "small": 7, "ratio": 1, "flag": "no", "when": 0,
        "extra": {"z": [1]}, "deep": {"x": {"extra": [1]}}, "ignored": 1})
    assert row == {
        "TimeGenerated": "2026-01-01T00:00:00Z", "Name": "X",
        "User": '{"arn":"a\\"b","ctx":{"mfa":"true"}}', "Arn": 'a"b', "Mfa": True,
        "Params": '{"perms":[{"port":22,"proto":"6"}],"k":[1,{"b":2}]}', "Port": "22",
        "Proto": 6, "Count": 5, "Small": 7, "Ratio": 1.0, "Flag": False,
        "When": "1970-01-01T00:00:00Z", "Extra": {"z": [1]}, "Deep": [1], "RecordId": "obj-0"}
    assert {c.name for c in PROP.columns} | {"RecordId"} == row.keys()


# --------------------------------------------------------------------------- coercions


@pytest.mark.parametrize("value,expected", [
    ("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"),
    ("2024-01-01T00:00:00.123456789Z", "2024-01-01T00:00:00.123456789Z"),
    ("2024-01-01T02:30:00+02:00", "2024-01-01T00:30:00Z"),
    ("2024-01-01T00:00:00-05:00", "2024-01-01T05:00:00Z"),
    ("2024-01-01T00:00:00.5+01:00", "2023-12-31T23:00:00.500000Z"),
    ("2024-01-01T10:00:00", "2024-01-01T10:00:00Z"),          # naive: UTC
    ("2024-01-01 10:00:00", "2024-01-01T10:00:00Z"),
    (" 2024-01-01T10:00:00+00:00 ", "2024-01-01T10:00:00Z"),
    (1700000000, "2023-11-14T22:13:20Z"),                     # epoch seconds
    (1700000000.25, "2023-11-14T22:13:20.250000Z"),
    (1700000000123, "2023-11-14T22:13:20.123000Z"),           # epoch milliseconds
    (0, "1970-01-01T00:00:00Z"),
])
def test_datetime(value: Any, expected: str) -> None:
    assert col({"when": value}, "When") == expected


@pytest.mark.parametrize("value", ["yesterday", "2024-13-01T00:00:00", True, [1], {"a": 1}, ""])
def test_datetime_wrong_type(value: Any) -> None:
    err = error({"time": "2024-01-01T00:00:00Z", "name": "n", "when": value})
    assert err.code == "wrong_type"
    assert "field 'when'" in err.reason and "column When (datetime)" in err.reason


@pytest.mark.parametrize("value,expected", [
    (True, True), (False, False), ("true", True), ("false", False), ("TRUE", True),
    (" False ", False), ("yes", True), ("no", False), ("1", True), ("0", False), (1, True),
    (0, False),
])
def test_bool(value: Any, expected: bool) -> None:
    assert col({"flag": value}, "Flag") is expected


@pytest.mark.parametrize("value", ["maybe", 2, -1, 0.5, [True], {}])
def test_bool_wrong_type(value: Any) -> None:
    assert error({"time": 0, "name": "n", "flag": value}).code == "wrong_type"


@pytest.mark.parametrize("value,expected", [
    (42, 42), ("42", 42), (" -7 ", -7), (42.0, 42), (-(2**62), -(2**62)), (True, 1),
])
def test_int(value: Any, expected: int) -> None:
    assert col({"count": value}, "Count") == expected
    assert col({"small": value}, "Small") == expected


@pytest.mark.parametrize("value", [4.5, "4.5", "x", "", [1], {"a": 1}])
def test_int_wrong_type(value: Any) -> None:
    err = error({"time": 0, "name": "n", "count": value})
    assert err.code == "wrong_type" and "column Count (long)" in err.reason


@pytest.mark.parametrize("value,expected", [(1, 1.0), (2.5, 2.5), ("2.5", 2.5), (" -1e3", -1000.0)])
def test_real(value: Any, expected: float) -> None:
    got = col({"ratio": value}, "Ratio")
    assert got == expected and isinstance(got, float)


@pytest.mark.parametrize("value", ["x", True, [1.0], {"v": 1}])
def test_real_wrong_type(value: Any) -> None:
    assert error({"time": 0, "name": "n", "ratio": value}).code == "wrong_type"


@pytest.mark.parametrize("value,expected", [
    ("plain", "plain"), ("with \"quotes\" and \\", "with \"quotes\" and \\"), ("ünï ✓", "ünï ✓"),
    (5, "5"), (-1.5, "-1.5"), (True, "true"), (False, "false"),
    ({"b": 1, "a": [1, "x", None]}, '{"b":1,"a":[1,"x",null]}'),
    ([1, {"k": "v"}], '[1,{"k":"v"}]'),
])
@pytest.mark.parametrize("column,field", [("Name", "name"), ("Params", "params"),
                                          ("User", "user")])
def test_string_columns(column: str, field: str, value: Any, expected: str) -> None:
    rec = {"time": 0, "name": "n", field: value}
    assert both(PROP_MAPPER, rec)[column] == expected


@pytest.mark.parametrize("value", [
    {"a": [1, {"b": None}], "c": "ü"}, [1, 2, [3]], "text", 5, 2.5, True, {},
])
def test_dynamic_passes_values_through(value: Any) -> None:
    assert col({"extra": value}, "Extra") == value
    assert col({"deep": {"x": {"extra": value}}}, "Deep") == value


def test_nulls_and_absent_values_are_left_out() -> None:
    row = both(PROP_MAPPER, {"time": 0, "name": "n", "count": None, "extra": None,
                             "user": None, "params": None})
    assert row == {"TimeGenerated": "1970-01-01T00:00:00Z", "Name": "n", "RecordId": "obj-0"}


def test_nested_paths() -> None:
    rec = {"time": 0, "name": "n",
           "user": {"arn": "arn:aws:iam::1:user/u", "ctx": {"mfa": "true"}},
           "params": {"perms": [{"port": 443, "proto": "6"}, {"port": 80}]}}
    row = both(PROP_MAPPER, rec)
    assert row["Arn"] == "arn:aws:iam::1:user/u"
    assert row["Mfa"] is True
    assert row["Port"] == "443" and row["Proto"] == 6
    assert row["User"] == orjson.dumps(rec["user"]).decode()
    assert row["Params"] == orjson.dumps(rec["params"]).decode()
    # Parents missing, null or of the wrong type: the columns under them are just absent.
    for user in ("a string", 5, [1, 2], None, {"ctx": "x"}, {"ctx": [True]}):
        row = both(PROP_MAPPER, {"time": 0, "name": "n", "user": user})
        assert "Arn" not in row and "Mfa" not in row
    for params in ({"perms": []}, {"perms": [None]}, {"perms": "x"}, []):
        row = both(PROP_MAPPER, {"time": 0, "name": "n", "params": params})
        assert "Port" not in row
    # A digit walks a list index, or a dict key that is a digit.
    assert col({"params": {"perms": {"0": {"port": 1}}}}, "Port") == "1"


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("rec", [
    {"name": "n"},                                   # absent
    {"name": "n", "time": None},                     # null
])
def test_missing_required(rec: dict[str, Any]) -> None:
    err = error(rec)
    assert err.code == "missing_required"
    assert err.reason == "required field 'time' (column TimeGenerated) is missing or null"


def test_missing_required_nested() -> None:
    m = Mapper(table([TG, {"name": "Who", "type": "string", "source": "a.b.c",
                           "required": True}]))
    for rec in ({"time": 0}, {"time": 0, "a": None}, {"time": 0, "a": {"b": 5}},
                {"time": 0, "a": "x"}, {"time": 0, "a": {"b": {"c": None}}}):
        err = error(rec, m)
        assert err.code == "missing_required" and "'a.b.c' (column Who)" in err.reason
    assert col({"a": {"b": {"c": "me"}}}, "Who", m) == "me"


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"time": 1', b'{"a":1} trailing',
                                 b"\xff\xfe"])
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(MappingError) as ei:
        PROP_MAPPER.map_json(raw, "r")
    assert ei.value.code == "invalid_json"
    assert "not valid JSON" in ei.value.reason


@pytest.mark.parametrize("rec", [[1, 2], "text", 5, None, True, [{"time": 0}]])
def test_not_an_object(rec: Any) -> None:
    err = error(rec)
    assert err.code == "not_an_object"
    assert err.reason.startswith("expected a JSON object, got ")


def test_wrong_type_names_field_and_column() -> None:
    err = error({"time": 0, "name": "n", "user": {"ctx": {"mfa": "perhaps"}}})
    assert err.code == "wrong_type"
    assert err.reason == "field 'user.ctx.mfa' = \"perhaps\" does not fit column Mfa (bool)"
    err = error({"time": 0, "name": "n", "params": {"perms": [{"proto": "tcp"}]}})
    assert "field 'params.perms.0.proto'" in err.reason and "column Proto (int)" in err.reason


def test_mapping_error_pickles() -> None:
    import pickle

    back = pickle.loads(pickle.dumps(MappingError("why", "wrong_type")))
    assert (back.reason, back.code) == ("why", "wrong_type")


# --------------------------------------------------------------------------- column options


def test_long_strings_are_cut_to_64_kb_with_a_marker_and_counted() -> None:
    from dataflow.core import metrics
    from operators.schema import MAX_FIELD_BYTES

    counter = metrics.FIELDS_TRUNCATED.labels("Prop_CL", "Name")
    before = counter._value.get()
    for value in ("é" * 40_000, "x" * 70_000):  # 80,000 and 70,000 bytes of UTF-8
        row = both(PROP_MAPPER, {"time": "2026-01-01T00:00:00Z", "name": value, "params": {"p": value}})
        assert len(row["Name"].encode()) <= MAX_FIELD_BYTES
        assert row["Name"].endswith("[truncated by s3sentinel]")
        assert len(row["Params"].encode()) <= MAX_FIELD_BYTES
    assert counter._value.get() - before == 4  # both paths, both values
    short = both(PROP_MAPPER, {"time": "2026-01-01T00:00:00Z", "name": "é" * 16_000})
    assert short["Name"] == "é" * 16_000


def test_a_star_column_keeps_every_unmapped_field() -> None:
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
    # user.id: a member of an object a column reads from, kept under its dotted path
    assert fast["AdditionalFields"] == {"new": {"x": [1]}, "flag": True, "user.id": 1}
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


# --------------------------------------------------------------------------- record id


def test_record_id_column() -> None:
    custom = Mapper(table([TG]))
    assert orjson.loads(custom.map_json(b'{"time":0}', "abc-1")) == {
        "TimeGenerated": "1970-01-01T00:00:00Z", "RecordId": "abc-1"}
    assert orjson.loads(custom.map_dict({"time": 0}, "abc-1"))["RecordId"] == "abc-1"
    ct = Mapper(load_tables()["AWSCloudTrail"])
    rec = {"eventTime": "2024-03-04T05:06:07Z", "eventName": "PutObject",
           "eventSource": "s3.amazonaws.com", "readOnly": False,
           "userIdentity": {"type": "AssumedRole", "sessionContext": {
               "attributes": {"mfaAuthenticated": "true",
                              "creationDate": "2024-03-04T04:00:00Z"}}},
           "requestParameters": {"ipPermissions": {"items": [
               {"ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
                "ipRanges": {"items": [{"cidrIp": "10.0.0.0/8"}]}}]}},
           "unmapped": {"big": [1, 2, 3]}}
    row = both(ct, rec, rid="obj-7")
    assert row["RecordId_CF"] == "obj-7" and "RecordId" not in row
    assert row["EventName"] == "PutObject" and row["TimeGenerated"] == "2024-03-04T05:06:07Z"
    assert row["ReadOnly"] is False and row["SessionMfaAuthenticated"] is True
    assert row["CidrIp"] == "10.0.0.0/8" and row["SourcePort"] == "22"
    assert row["IpProtocol"] == "tcp"
    assert row["RequestParameters"] == orjson.dumps(rec["requestParameters"]).decode()
    assert row["UserIdentityType"] == "AssumedRole"
    assert row["AdditionalFields_CF"] == {"unmapped": {"big": [1, 2, 3]}}  # kept, not lost


# --------------------------------------------------------------------------- bugs


@pytest.mark.parametrize("value", [{"a": 1}, "s", 1.5, -1, [{"a": 1}]])
def test_dynamic_column_under_a_list_index(value: Any) -> None:
    m = Mapper(table([TG, {"name": "First", "type": "dynamic", "source": "items.0"}]))
    assert col({"items": [value]}, "First", m) == value


def test_dynamic_column_under_a_raw_parent() -> None:
    m = Mapper(table([TG, {"name": "User", "type": "string", "source": "user"},
                      {"name": "Ctx", "type": "dynamic", "source": "user.ctx"}]))
    assert col({"user": {"ctx": {"mfa": True}}}, "Ctx", m) == {"mfa": True}


def test_required_raw_string_column_null() -> None:
    m = Mapper(table([TG, {"name": "User", "type": "string", "source": "user", "required": True},
                      {"name": "UserName", "type": "string", "source": "user.name"}]))
    assert error({"time": 0, "user": None}, m).code == "missing_required"


def test_json_string_column_holds_the_same_json_value_on_both_paths() -> None:
    raw = b'{"time": 0, "name": "n", "params": {"a": 1, "b": [1, 2], "s": "caf\\u00e9"}}'
    fast = orjson.loads(PROP_MAPPER.map_json(raw, "r"))["Params"]
    generic = orjson.loads(PROP_MAPPER.map_dict(orjson.loads(raw), "r"))["Params"]
    assert generic == '{"a":1,"b":[1,2],"s":"café"}'
    # The fast path passes nested JSON text through as written (documented): same JSON value.
    assert orjson.loads(fast) == orjson.loads(generic)


@pytest.mark.parametrize("value", [1e20, -(2**63)])
def test_datetime_out_of_range_epoch_is_wrong_type(value: Any) -> None:
    assert error({"time": 0, "name": "n", "when": value}).code == "wrong_type"
