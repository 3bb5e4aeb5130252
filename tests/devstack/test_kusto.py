"""Tests for :mod:`devstack.kusto`: real node runs of Microsoft's Kusto language service.

Starting node with the service takes about a second, so the single-query cases run as one
batch (the `analysed` fixture), as callers are meant to use :func:`analyze`.
"""

from __future__ import annotations

import pytest

from devstack.kusto import (
    WORKSPACE_COLUMNS,
    Analysis,
    KustoUnavailable,
    Query,
    analyze,
    check_transform,
)

TABLES = {
    "Events": [
        ("Name", "string"),
        ("Count", "int"),
        ("Bytes", "long"),
        ("Detail", "dynamic"),
        ("Ok", "boolean"),
        *WORKSPACE_COLUMNS,
    ],
}
FUNCTIONS = {"Big": "(n:long) { Events | where Bytes > n }", "Names": "Events | project Name"}
QUERIES = [
    Query(
        "valid",
        "Events | where Count > 3 and _IsBillable == 'true'"
        " | summarize n = count(), size = sum(_BilledSize), ok = take_any(Ok)"
        " by Name, bin(TimeGenerated, 1h)"
        " | extend id = new_guid(), age = now() - TimeGenerated, tags = pack_array(Name)",
    ),
    Query("scalar", "let x = 1; x"),
    Query("unknown column", "Events | project Name, Colour"),
    Query("int > string", 'Events | where Count > "x"'),
    Query("strlen(int)", "Events | extend n = strlen(Count)"),
    Query("join without kind", "Events | join (Events) on Name"),
    Query("functions", "Big(10) | join kind=inner (Names) on Name | project Name, Bytes"),
    Query("transform", "source | extend Id = toguid(IdText)", [("IdText", "string")]),
]


@pytest.fixture(scope="module")
def analysed() -> dict[str, Analysis]:
    return {result.id: result for result in analyze(QUERIES, TABLES, FUNCTIONS)}


def test_valid_query_has_no_errors_and_its_result_columns(analysed: dict[str, Analysis]) -> None:
    result = analysed["valid"]
    assert result.errors == []
    assert result.columns == [
        ("Name", "string"),
        ("TimeGenerated", "datetime"),
        ("n", "long"),
        ("size", "real"),
        ("ok", "bool"),
        ("id", "guid"),
        ("age", "timespan"),
        ("tags", "dynamic"),
    ]


def test_scalar_result_has_no_columns(analysed: dict[str, Analysis]) -> None:
    assert analysed["scalar"].errors == []
    assert analysed["scalar"].columns is None


def test_unknown_column_is_an_error_naming_it(analysed: dict[str, Analysis]) -> None:
    (error,) = analysed["unknown column"].errors
    assert error.severity == "Error"
    assert "'Colour'" in error.message
    assert "Events | project Name, Colour"[error.start : error.end] == "Colour"


@pytest.mark.parametrize(
    ("query_id", "expected"),
    [
        # `where Count == "x"` is not flagged: the service is as lenient as the engine there.
        ("int > string", "The operator '>' is not defined for the operand types int and string"),
        ("strlen(int)", "The expression must have one of the types: string or dynamic"),
    ],
)
def test_type_error_is_reported(
    analysed: dict[str, Analysis], query_id: str, expected: str
) -> None:
    (error,) = analysed[query_id].errors
    assert error.message.startswith(expected)


def test_warnings_are_kept_apart_from_errors(analysed: dict[str, Analysis]) -> None:
    result = analysed["join without kind"]
    assert result.errors == []
    assert [w.code for w in result.warnings] == ["KS508"]


def test_functions_are_in_scope(analysed: dict[str, Analysis]) -> None:
    assert analysed["functions"].errors == []
    assert analysed["functions"].columns == [("Name", "string"), ("Bytes", "long")]


def test_dcr_transform_sees_source(analysed: dict[str, Analysis]) -> None:
    assert analysed["transform"].errors == []
    assert analysed["transform"].columns == [("IdText", "string"), ("Id", "guid")]


def test_check_transform_accepts_a_matching_table() -> None:
    problems = check_transform(
        "source | extend Id = toguid(IdText), Ok = tobool(OkText) | project-away IdText, OkText",
        [("TimeGenerated", "datetime"), ("IdText", "string"), ("OkText", "string")],
        [("TimeGenerated", "dateTime"), ("Id", "guid"), ("Ok", "boolean")],
    )
    assert problems == []


def test_check_transform_reports_errors_missing_columns_and_type_mismatches() -> None:
    problems = check_transform(
        "source | extend Id = toguid(IdText), Size = 1, Extra = 'x', Bad = Nope"
        " | project-away IdText",
        [("TimeGenerated", "datetime"), ("IdText", "string")],
        [("TimeGenerated", "datetime"), ("Id", "guid"), ("Size", "string"), ("Bad", "string")],
    )
    assert problems == [
        "KS142 at 66-70 ('Nope'): The name 'Nope' does not refer to any known column, table,"
        " variable or function.",
        "output column 'Size' is long, the destination table declares string",
        "output column 'Extra' (string) is not in the destination table",
    ]


def test_many_queries_in_one_call_keep_their_order() -> None:
    queries = [
        Query(f"q{i}", f"Events | where Count > {i} | project Name" + (", Nope" * (i % 7 == 0)))
        for i in range(50)
    ]
    results = analyze(queries, TABLES)
    assert [r.id for r in results] == [q.id for q in queries]
    assert [i for i, r in enumerate(results) if r.errors] == list(range(0, 50, 7))
    assert all(r.columns and r.columns[0] == ("Name", "string") for r in results)


def test_bad_type_name_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match='unknown Kusto type "strng"'):
        analyze([Query("q", "T")], {"T": [("A", "strng")]})


def test_missing_node_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    with pytest.raises(KustoUnavailable, match=r"node is not on PATH.*\./run\.sh test"):
        analyze([Query("q", "print 1")], {})
