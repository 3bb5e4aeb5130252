"""Sequences: the shipped ones (hit, near miss, out of window), bounded state, and
snapshot/restore continuing a partial match."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from operators.enrich.rules import RuleError
from operators.enrich.sequences import (
    SequenceDetector,
    SequenceMatch,
    SequenceSpec,
    event_time,
    load_sequences,
)

CT = "AWSCloudTrail"
T0 = datetime(2026, 11, 28, 14, 30, tzinfo=timezone.utc)
EVE = "arn:aws:iam::111122223333:user/eve"
ADMIN = "arn:aws:iam::aws:policy/AdministratorAccess"


def at(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ev(name: str, minutes: float, who: str = EVE, **cols: Any) -> dict[str, Any]:
    row = {"EventName": name, "EventSource": "iam.amazonaws.com", "TimeGenerated": at(minutes),
           "UserIdentityArn": who, "SourceIpAddress": "198.51.100.23"}
    for k, v in cols.items():
        row[k] = orjson.dumps(v).decode() if isinstance(v, dict) else v
    return row


def create_user(m: float, who: str = EVE) -> dict[str, Any]:
    return ev("CreateUser", m, who, RequestParameters={"userName": "backdoor"})


def attach(m: float, who: str = EVE, arn: str = ADMIN) -> dict[str, Any]:
    return ev("AttachUserPolicy", m, who, RequestParameters={"userName": "backdoor",
                                                             "policyArn": arn})


def create_key(m: float, who: str = EVE) -> dict[str, Any]:
    return ev("CreateAccessKey", m, who, RequestParameters={"userName": "backdoor"})


def denied(m: float, name: str = "ListBuckets", who: str = EVE) -> dict[str, Any]:
    return ev(name, m, who, EventSource="s3.amazonaws.com", ErrorCode="AccessDenied")


def feed(det: SequenceDetector, rows: list[dict[str, Any]]) -> list[SequenceMatch]:
    out = []
    for row in rows:
        out += det.observe(CT, row)
    return out


@pytest.fixture(scope="module")
def specs() -> tuple[SequenceSpec, ...]:
    return load_sequences()


def test_shipped_sequences(specs: tuple[SequenceSpec, ...]) -> None:
    assert {s.id for s in specs} == {"privilege_escalation", "recon_then_success",
                                     "logging_tamper_after_login"}
    assert event_time("2026-11-28T14:30:00Z") == T0.timestamp()
    assert event_time("2026-11-28T14:30:00.250Z") == T0.timestamp() + 0.25
    assert event_time("yesterday") is None and event_time(None) is None


def test_privilege_escalation_within_30_minutes(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    noise = [ev("ListUsers", 1), ev("GetUser", 2, "arn:aws:iam::111122223333:user/bob")]
    got = feed(det, [create_user(0), *noise, attach(10), ev("ListAttachedUserPolicies", 11),
                     create_key(25)])
    assert got == [SequenceMatch(
        "privilege_escalation", EVE,
        f"{EVE} created a user, attached AdministratorAccess and created an access key within "
        "30 minutes (last: CreateAccessKey from 198.51.100.23)",
        (T0.timestamp(), T0.timestamp() + 600, T0.timestamp() + 1500), "critical")]
    assert len(det) == 0  # a completed match leaves no state behind
    assert feed(det, [create_key(26)]) == []


@pytest.mark.parametrize("rows", [
    pytest.param([create_user(0), attach(5, arn="arn:aws:iam::aws:policy/ReadOnlyAccess"),
                  create_key(10)], id="not-admin"),
    pytest.param([create_user(0), create_key(5), attach(10)], id="out-of-order"),
    pytest.param([create_user(0), attach(5), create_key(10, who="arn:aws:iam::1:user/mallory")],
                 id="other-principal"),
    pytest.param([create_user(0), attach(5), ev("CreateAccessKey", 10, ErrorCode="LimitExceeded")],
                 id="failed-last-step"),
    pytest.param([create_user(0), attach(20), create_key(30.5)], id="out-of-window"),
])
def test_privilege_escalation_near_misses(specs: tuple[SequenceSpec, ...],
                                          rows: list[dict[str, Any]]) -> None:
    assert feed(SequenceDetector(specs), rows) == []


def test_partial_matches_expire_with_their_window(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    feed(det, [create_user(0), attach(20)])
    assert len(det) == 1
    assert feed(det, [create_key(31)]) == []
    assert len(det) == 0  # expired and dropped on the principal's next event


def test_a_later_start_rescues_a_match_the_first_start_would_miss(
        specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    got = feed(det, [create_user(0), create_user(25), attach(28), create_key(50)])
    assert [m.record_times for m in got] == [tuple(T0.timestamp() + m * 60 for m in (25, 28, 50))]


def test_recon_then_success(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    rows = [denied(i * 0.5, ("ListBuckets", "DescribeInstances", "GetSecretValue")[i % 3])
            for i in range(10)]
    assert feed(det, rows) == []
    got = feed(det, [ev("ListUsers", 5, ErrorCode=None)])  # no ErrorCode: a success
    assert [(m.sequence_id, m.principal, m.priority, len(m.record_times)) for m in got] == [
        ("recon_then_success", EVE, "high", 11)]
    assert got[0].reason == (f"{EVE} was denied 10 List/Describe/Get calls within 10 minutes, "
                             "then ListUsers succeeded")


@pytest.mark.parametrize("rows", [
    pytest.param([denied(i * 0.5) for i in range(9)] + [ev("ListUsers", 5)], id="only-9"),
    pytest.param([denied(i * 2) for i in range(10)] + [ev("ListUsers", 20)], id="spread-out"),
    pytest.param([denied(i * 0.1) for i in range(10)] + [ev("ListUsers", 10.5)], id="too-late"),
    pytest.param([denied(i * 0.1) for i in range(10)] + [ev("CreateUser", 2)], id="not-recon"),
    pytest.param([denied(i * 0.1, "CreateUser") for i in range(10)] + [ev("ListUsers", 2)],
                 id="denied-writes"),
])
def test_recon_near_misses(specs: tuple[SequenceSpec, ...], rows: list[dict[str, Any]]) -> None:
    assert feed(SequenceDetector(specs), rows) == []


def test_recon_counts_in_a_sliding_window(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    # 5 early denials, then 10 within the last 10 minutes: the early ones have slid out.
    rows = [denied(i) for i in range(5)] + [denied(20 + i * 0.5) for i in range(10)]
    got = feed(det, [*rows, ev("GetCallerIdentity", 26)])
    assert got[0].record_times[0] == T0.timestamp() + 20 * 60


def test_logging_tamper_after_login(specs: tuple[SequenceSpec, ...]) -> None:
    login = ev("ConsoleLogin", 0, EventSource="signin.amazonaws.com",
               ResponseElements={"ConsoleLogin": "Success"})
    stop = ev("StopLogging", 40, EventSource="cloudtrail.amazonaws.com")
    got = feed(SequenceDetector(specs), [login, stop])
    assert [m.sequence_id for m in got] == ["logging_tamper_after_login"]
    failed = dict(login, ResponseElements='{"ConsoleLogin":"Failure"}')
    assert feed(SequenceDetector(specs), [failed, stop]) == []


def test_rows_without_time_or_principal_are_ignored(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    assert det.observe(CT, dict(create_user(0), TimeGenerated=None)) == []
    assert det.observe(CT, dict(create_user(0), UserIdentityArn="")) == []
    assert det.observe("AWSVPCFlow", create_user(0)) == []
    assert len(det) == 0
    det.observe(CT, dict(create_user(0), TimeGenerated=None), ts=T0.timestamp())  # explicit time
    assert len(det) == 1


def test_state_is_bounded_by_max_principals(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs, max_principals=1_000)
    ts = T0.timestamp()
    row = create_user(0)
    for i in range(200_000):
        row["UserIdentityArn"] = f"arn:aws:iam::111122223333:user/u{i}"
        det.observe(CT, row, ts + i * 0.001)
    assert len(det) == 1_000
    assert det.evicted == 199_000
    assert len(det.snapshot()["principals"]) == 1_000
    newest, oldest = "arn:aws:iam::111122223333:user/u199999", "arn:aws:iam::111122223333:user/u0"
    assert [m.principal for m in feed(det, [attach(5, newest), create_key(6, newest)])] == [newest]
    assert feed(det, [attach(5, oldest), create_key(6, oldest)]) == []  # evicted
    assert len(det) == 999


def test_snapshot_and_restore_continue_a_partial_match(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    feed(det, [create_user(0), attach(5)] + [denied(i * 0.1) for i in range(6)])
    snap = orjson.loads(orjson.dumps(det.snapshot()))  # plain JSON
    again = SequenceDetector.restore(specs, snap)
    assert len(again) == 1 and again.snapshot() == snap
    got = feed(again, [create_key(9)])
    assert [(m.sequence_id, m.record_times) for m in got] == [
        ("privilege_escalation", tuple(T0.timestamp() + m * 60 for m in (0, 5, 9)))]
    assert feed(again, [denied(2 + i * 0.1) for i in range(3)] + [ev("ListRoles", 3)]) == []
    got = feed(again, [denied(3.5), ev("ListRoles", 4)])  # 6 before + 4 after the restore
    assert [(m.sequence_id, len(m.record_times)) for m in got] == [("recon_then_success", 11)]


def test_restore_drops_what_cannot_continue(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    feed(det, [create_user(0), denied(1)])
    snap = det.snapshot()
    only_recon = tuple(s for s in specs if s.id == "recon_then_success")
    again = SequenceDetector.restore(only_recon, snap)
    assert list(again.snapshot()["principals"][0][1]) == ["recon_then_success"]
    assert len(SequenceDetector.restore(specs, None)) == 0
    assert len(SequenceDetector.restore(specs, snap, max_principals=1)) == 1
    with pytest.raises(ValueError, match="start without the old state"):
        SequenceDetector.restore(specs, {"version": 99, "principals": []})


def test_a_min_count_step_after_the_first(tmp_path: Path) -> None:
    f = tmp_path / "seq.toml"
    f.write_text('''
[[sequences]]
id = "login_then_downloads"
window_secs = 300
reason = "{principal}: {count} events, last {EventName}"
steps = [
  { match = { EventName = "ConsoleLogin" } },
  { match = { EventName = "GetObject" }, min_count = 3 },
  { match = { EventName = "DeleteBucket" } },
]
''')
    specs = load_sequences([f], include_default=False)
    det = SequenceDetector(specs)
    rows = [ev("ConsoleLogin", 0), ev("GetObject", 1), ev("GetObject", 2), ev("DeleteBucket", 2.5),
            ev("GetObject", 3), ev("DeleteBucket", 4)]
    got = feed(det, rows)
    assert [(m.reason, m.priority) for m in got] == [
        (f"{EVE}: 5 events, last DeleteBucket", "high")]
    assert feed(SequenceDetector(specs), rows[:3] + [ev("GetObject", 6), ev("DeleteBucket", 6)]) \
        == []


def test_user_files_override_and_bad_files_report_every_problem(tmp_path: Path) -> None:
    ok = tmp_path / "ok.toml"
    ok.write_text('''
[[sequences]]
id = "recon_then_success"
enabled = false

[[sequences]]
id = "privilege_escalation"
window_secs = 60
priority = "high"
reason = "fast escalation by {principal}"
steps = [ { match = { EventName = "CreateUser" } }, { match = { EventName = "CreateAccessKey" } } ]
''')
    specs = load_sequences([ok])
    assert [s.id for s in specs] == ["privilege_escalation", "logging_tamper_after_login"]
    assert [m.reason for m in feed(SequenceDetector(specs), [create_user(0), create_key(0.5)])] \
        == [f"fast escalation by {EVE}"]
    bad = tmp_path / "bad.toml"
    bad.write_text('''
[[sequences]]
id = "broken"
principal = "Who"
window_secs = -5
priority = "meh"
reason = "x"
steps = [ { match = { EventName = "A" }, min_count = 0, colour = 1 }, { match = {} } ]

[[sequences]]
id = "no-steps"
window_secs = 10
reason = "y"
''')
    with pytest.raises(RuleError) as err:
        load_sequences([bad])
    text = str(err.value)
    assert text.startswith("sequence files are invalid")
    for e in ["sequence 'broken': principal 'Who' must be a column of AWSCloudTrail",
              "sequence 'broken': window_secs must be a positive number",
              "sequence 'broken': priority 'meh' is not one of",
              "sequence 'broken': steps[0]: unknown key 'colour'",
              "sequence 'broken': steps[0]: min_count must be a whole number from 1 to 1000",
              "sequence 'broken': steps[1]: 'match' must be a non-empty table",
              "sequence 'no-steps': 'steps' must be a non-empty list"]:
        assert f"{bad}: {e}" in text, e
