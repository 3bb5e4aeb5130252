"""Sequences: the shipped ones (hit, near miss, out of window), bounded state, and
snapshot/restore continuing a partial match."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
T0 = datetime(2026, 11, 28, 14, 30, tzinfo=UTC)
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


PROBES = ("ListBuckets", "DescribeInstances", "GetSecretValue", "ListUsers", "DescribeVpcs",
          "GetBucketPolicy", "ListRoles", "DescribeKeyPairs", "GetUser", "ListKeys")
"""Ten different discovery APIs, as a recon tool calls them."""


def probe(i: int, m: float, who: str = EVE) -> dict[str, Any]:
    """The i-th call of a recon burst, denied: a different API each time (cycling PROBES)."""
    return denied(m, PROBES[i % len(PROBES)], who)


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
                                     "logging_tamper_after_login", "console_login_failure_burst",
                                     "alb_5xx_burst", "alb_std_5xx_burst", "elb_5xx_burst",
                                     "cloudfront_5xx_burst"}
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
    rows = [probe(i, i * 0.5) for i in range(10)]
    assert feed(det, rows) == []
    got = feed(det, [ev("ListUsers", 5, ErrorCode=None)])  # no ErrorCode: a success
    assert [(m.sequence_id, m.principal, m.priority, len(m.record_times)) for m in got] == [
        ("recon_then_success", EVE, "high", 11)]
    assert got[0].reason == (f"{EVE} was denied 10 List/Describe/Get calls of at least 5 "
                             "different APIs within 10 minutes, then ListUsers succeeded")


@pytest.mark.parametrize("rows", [
    pytest.param([probe(i, i * 0.5) for i in range(9)] + [ev("ListUsers", 5)], id="only-9"),
    pytest.param([probe(i, i * 2) for i in range(10)] + [ev("ListUsers", 20)], id="spread-out"),
    pytest.param([probe(i, i * 0.1) for i in range(10)] + [ev("ListUsers", 10.5)],
                 id="too-late"),
    pytest.param([probe(i, i * 0.1) for i in range(10)] + [ev("CreateUser", 2)], id="not-recon"),
    pytest.param([denied(i * 0.1, ("CreateUser", "DeleteUser", "PutRolePolicy", "CreateRole",
                                   "DeleteRole")[i % 5]) for i in range(10)]
                 + [ev("ListUsers", 2)], id="denied-writes"),
    pytest.param([denied(i * 0.1) for i in range(10)] + [ev("ListUsers", 2)], id="one-api"),
    pytest.param([denied(i * 0.1, PROBES[i % 4]) for i in range(10)] + [ev("ListUsers", 2)],
                 id="4-apis"),
])
def test_recon_near_misses(specs: tuple[SequenceSpec, ...], rows: list[dict[str, Any]]) -> None:
    assert feed(SequenceDetector(specs), rows) == []


def test_recon_counts_in_a_sliding_window(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    # 5 early denials, then 10 within the last 10 minutes: the early ones have slid out.
    rows = [probe(i, i) for i in range(5)] + [probe(i, 20 + i * 0.5) for i in range(10)]
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
    feed(det, [create_user(0), attach(5)] + [probe(i, i * 0.1) for i in range(6)])
    snap = orjson.loads(orjson.dumps(det.snapshot()))  # plain JSON
    again = SequenceDetector.restore(specs, snap)
    assert len(again) == 1 and again.snapshot() == snap
    got = feed(again, [create_key(9)])
    assert [(m.sequence_id, m.record_times) for m in got] == [
        ("privilege_escalation", tuple(T0.timestamp() + m * 60 for m in (0, 5, 9)))]
    assert feed(again, [probe(6 + i, 2 + i * 0.1) for i in range(3)] + [ev("ListRoles", 3)]) \
        == []
    got = feed(again, [probe(9, 3.5), ev("ListRoles", 4)])  # 6 before + 4 after the restore
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
    assert [s.id for s in specs][:2] == ["privilege_escalation", "logging_tamper_after_login"]
    assert "recon_then_success" not in {s.id for s in specs}
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


# ------------------------------------------------------------------------- min_distinct

LAMBDA = "arn:aws:sts::111122223333:assumed-role/lambda-6-role/lambda-fn-6"


def test_a_job_retrying_one_denied_call_is_not_recon(specs: tuple[SequenceSpec, ...]) -> None:
    # A Lambda missing one permission: the same call denied 50 times in 5 minutes, then
    # calls that succeed (the same API once the permission is back, and another one).
    rows = [denied(i * 0.1, "GetParameter", LAMBDA) for i in range(50)]
    rows += [ev("GetParameter", 5.1, LAMBDA), ev("DescribeTable", 5.2, LAMBDA)]
    det = SequenceDetector(specs)
    assert feed(det, rows) == []
    # A few APIs denied in turn (at most 4 different ones among any 10) is no recon either.
    rows = [denied(10 + i * 0.1, PROBES[i % 4], LAMBDA) for i in range(50)]
    assert feed(det, [*rows, ev("ListTables", 16, LAMBDA)]) == []


def test_recon_needs_5_different_apis_among_the_10(specs: tuple[SequenceSpec, ...]) -> None:
    five = [denied(i * 0.2, PROBES[i % 5]) for i in range(10)]  # 10 calls, 5 APIs, 2 each
    got = feed(SequenceDetector(specs), [*five, ev("GetCallerIdentity", 3)])
    assert [(m.sequence_id, len(m.record_times)) for m in got] == [("recon_then_success", 11)]
    # retries first, then the burst: the last 10 denials are what counts
    retries = [denied(i * 0.1, "GetParameter") for i in range(30)]
    burst = [probe(i, 3 + i * 0.1) for i in range(10)]
    got = feed(SequenceDetector(specs), [*retries, *burst, ev("ListUsers", 5)])
    assert [m.record_times[0] for m in got] == [T0.timestamp() + 180]
    # retries of one API, then a few probes: 4 APIs among the last 10 are not enough, 5 are
    retries = [denied(2 + i * 0.1, "GetParameter") for i in range(7)]
    assert feed(SequenceDetector(specs), [*retries, *burst[:3], ev("ListUsers", 5)]) == []
    assert len(feed(SequenceDetector(specs), [*retries, *burst[:4], ev("ListUsers", 5)])) == 1
    # event time, not arrival: retries that happened before the burst do not push it out
    early = [denied(2 + i * 0.1, "GetParameter") for i in range(6)]
    assert len(feed(SequenceDetector(specs), [*burst[:9], *early, ev("ListUsers", 4)])) == 1


def test_restore_mid_match_continues_with_the_values_seen(
        specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    feed(det, [denied(i * 0.1, PROBES[i % 3]) for i in range(6)])  # 6 denials, 3 APIs
    snap = orjson.loads(orjson.dumps(det.snapshot()))
    [[principal, state]] = snap["principals"]
    assert principal == EVE and snap["version"] == 2
    assert state["recon_then_success"][0][3] == [PROBES[i % 3] for i in range(6)]
    # 4 more denials of 2 new APIs: 5 different APIs among the 10, only with the restored ones
    more = [denied(1 + i * 0.1, PROBES[3 + i % 2]) for i in range(4)] + [ev("ListRoles", 2)]
    got = feed(SequenceDetector.restore(specs, snap), more)
    assert [(m.sequence_id, len(m.record_times)) for m in got] == [("recon_then_success", 11)]
    # the same 4, but of APIs already denied: still 3 different, nothing
    same = [denied(1 + i * 0.1, PROBES[i % 3]) for i in range(4)] + [ev("ListRoles", 2)]
    assert feed(SequenceDetector.restore(specs, snap), same) == []


def test_a_version_1_snapshot_restores_without_values(specs: tuple[SequenceSpec, ...]) -> None:
    ts = [T0.timestamp() + i * 6 for i in range(6)]  # 6 denials counted, values not recorded
    v1 = {"version": 1, "principals": [[EVE, {"recon_then_success": [
        [None, None, ts], [None, None, []]]}]]}
    det = SequenceDetector.restore(specs, v1)
    assert det.snapshot()["principals"][0][1]["recon_then_success"][0] == [
        None, None, ts, [None] * 6]
    # the old denials count towards the 10, not as different APIs: 4 new ones are too few
    assert feed(det, [probe(i, 1 + i * 0.1) for i in range(4)] + [ev("ListRoles", 2)]) == []
    got = feed(det, [probe(4, 2.5), ev("ListRoles", 3)])  # 5 old + 5 new different ones
    assert [(m.sequence_id, len(m.record_times)) for m in got] == [("recon_then_success", 11)]


def test_min_distinct_on_a_later_step(tmp_path: Path) -> None:
    f = tmp_path / "seq.toml"
    f.write_text('''
[[sequences]]
id = "login_then_reads"
window_secs = 300
reason = "{principal}: {count} events"
steps = [
  { match = { EventName = "ConsoleLogin" } },
  { match = { EventName = { prefix = "Get" } }, min_count = 3, min_distinct = { EventName = 3 } },
  { match = { EventName = "DeleteBucket" } },
]
''')
    specs = load_sequences([f], include_default=False)
    assert specs[0].distinct == (None, ("EventName", 3), None)
    det = SequenceDetector(specs)
    rows = [ev("ConsoleLogin", 0)] + [ev("GetObject", 0.5 + i * 0.1) for i in range(5)]
    assert feed(det, [*rows, ev("DeleteBucket", 1.5)]) == []  # one API, 5 times
    rows = [ev("GetBucketAcl", 2), ev("GetBucketPolicy", 2.5), ev("DeleteBucket", 3)]
    got = feed(det, rows)  # the last 3 reads: GetObject, GetBucketAcl, GetBucketPolicy
    assert [len(m.record_times) for m in got] == [5]


def test_bad_min_distinct_is_reported_with_file_and_sequence(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('''
[[sequences]]
id = "recon_then_success"
window_secs = 600
reason = "x"
steps = [
  { match = { EventName = "ListUsers" }, min_count = 10, min_distinct = 5 },
  { match = { EventName = "ListRoles" }, min_count = 10, min_distinct = { EventName = 11 } },
  { match = { EventName = "ListKeys" }, min_count = 10, min_distinct = { ApiName = 5 } },
  { match = { EventName = "GetUser" }, min_distinct = { EventName = 2 } },
  { match = { EventName = "GetRole" }, min_count = 4, min_distinct = { EventName = 2, X = 2 } },
  { match = { EventName = "GetPolicy" }, min_count = 4, min_distinct = { EventName = "2" } },
]
''')
    with pytest.raises(RuleError) as err:
        load_sequences([bad])
    text = str(err.value)
    where = f"{bad}: sequence 'recon_then_success'"
    for e in ["steps[0]: min_distinct must be a table of one column and a number, e.g. "
              "min_distinct = { EventName = 5 }; got 5",
              "steps[1]: min_distinct EventName = 11 must be a whole number from 2 to the "
              "step's min_count (10)",
              "steps[2]: min_distinct: the table has no column 'ApiName'",
              "steps[3]: min_distinct EventName = 2 must be a whole number from 2 to the "
              "step's min_count (1)",
              "steps[4]: min_distinct must be a table of one column",
              "steps[5]: min_distinct EventName = '2' must be a whole number"]:
        assert f"{where}: {e}" in text, e


ALB = "AWSALBAccessLogs_CL"


def alb(m: float, lb: str, status: int = 502) -> dict[str, Any]:
    return {"TimeGenerated": at(m), "Alb": lb, "ElbStatusCode": status, "TargetStatusCode": status,
            "RequestMethod": "GET", "RequestUrl": "https://shop.example.com/cart"}


def test_a_burst_is_a_one_step_sequence_counted_per_group(specs: tuple[SequenceSpec, ...]) -> None:
    det = SequenceDetector(specs)
    web, api = "app/web/1", "app/api/2"
    got = []
    for i in range(49):  # 49 5xx of web and 49 of api, 1 s apart, and 200s in between
        got += det.observe(ALB, alb(i / 60, web), group="Alb")
        got += det.observe(ALB, alb(i / 60, api), group="Alb")
        got += det.observe(ALB, alb(i / 60, web, 200), group="Alb")
    assert got == []
    (m,) = det.observe(ALB, alb(49 / 60, web), group="Alb")  # web's 50th within the minute
    assert (m.sequence_id, m.principal, m.priority) == ("alb_5xx_burst", web, "high")
    assert m.reason.startswith(f"load balancer {web} answered 50 requests with 5xx within a "
                               "minute (the last: 502/502 to GET https://shop.example.com/cart)")
    assert len(m.record_times) == 50
    # It counts from zero again: one finding per 50, not one per row after the 50th.
    assert [x for i in range(50, 60) for x in det.observe(ALB, alb(i / 60, web), group="Alb")] == []
    # Spread over more than the window, 50 5xx are no burst.
    slow = SequenceDetector(specs)
    assert [x for i in range(60) for x in slow.observe(ALB, alb(i * 1.5 / 60, web), group="Alb")
            ] == []
    # The group filter: CloudTrail rows fed for the principal leave the per-IP count alone.
    fails = [ev("ConsoleLogin", i * 0.2, who=f"arn:aws:iam::111122223333:user/u{i}",
                SourceIpAddress="203.0.113.9", UserIdentityUserName=f"u{i}",
                ResponseElements='{"ConsoleLogin":"Failure"}') for i in range(10)]
    by_principal = SequenceDetector(specs)
    assert [x for r in fails for x in by_principal.observe(CT, r, group="UserIdentityArn")] == []
    by_ip = SequenceDetector(specs)
    got = [x for r in fails for x in by_ip.observe(CT, r, group="SourceIpAddress")]
    assert [(x.sequence_id, x.principal) for x in got] == [
        ("console_login_failure_burst", "203.0.113.9")]
    assert got[0].reason.startswith("10 failed console logins from 203.0.113.9 within 5 "
                                    "minutes (the last for u9)")


def test_a_burst_counts_rows_that_arrive_out_of_order(specs: tuple[SequenceSpec, ...]) -> None:
    """Two workers read one load balancer's two log files: the later half can reach the
    count first. Each row counts in its place; rows older than the window of the newest
    do not."""
    lb = "app/web/1"
    second = [alb(30 / 60 + i / 120, lb) for i in range(25)]  # 30 s .. 42 s
    first = [alb(i / 120, lb) for i in range(25)]  # 0 s .. 12 s
    det = SequenceDetector(specs)
    got = [m for r in second + first for m in det.observe(ALB, r, group="Alb")]
    assert [(m.sequence_id, m.principal, len(m.record_times)) for m in got] == [
        ("alb_5xx_burst", lb, 50)]
    assert list(got[0].record_times) == sorted(got[0].record_times)
    late = SequenceDetector(specs)  # the late half is older than the newest by > 60 s
    old = [alb(-2 + i / 120, lb) for i in range(25)]  # -120 s .. -108 s
    assert [m for r in second + old for m in late.observe(ALB, r, group="Alb")] == []


def test_steps_are_indexed_by_event_name_whatever_names_them(
        specs: tuple[SequenceSpec, ...]) -> None:
    """A row whose EventName no step can take (a list, a regex, a prefix of names) costs one
    lookup; the others are matched as before."""
    index = SequenceDetector(specs)._build(CT, "UserIdentityArn")
    assert index.of({"EventName": "PutObject"}) == ()
    assert index.of({"EventName": "PutObject"}) is index.of({"EventName": "PutObject"})  # cached
    steps = {(c[4], c[1]) for c in index.of({"EventName": "ListUsers"})}  # the recon regex
    assert steps == {("recon_then_success", 0), ("recon_then_success", 1)}
    assert {(c[4], c[1]) for c in index.of({"EventName": "StopLogging"})} == {
        ("logging_tamper_after_login", 1)}
    assert index.of({}) == ()  # no EventName: no step of these can hold
    assert feed(SequenceDetector(specs), [*[probe(i, i * 0.1) for i in range(10)],
                                          ev("PutObject", 1.5), ev("ListRoles", 2)]) != []


def test_event_name_gates() -> None:
    from operators.enrich.conditions import event_name_gate

    gate = event_name_gate({"EventName": {"regex": "^(List|Get)"}, "ErrorCode": "AccessDenied"})
    assert gate is not None and gate("ListUsers") and not gate("PutObject") and not gate(None)
    either = event_name_gate({"any": [{"EventName": "A"}, {"EventName": {"prefix": "B"}}]})
    assert either is not None and either("A") and either("Bx") and not either("C")
    unless = event_name_gate({"EventName": {"not": {"prefix": "Get"}}})
    assert unless is not None and unless("Put") and not unless("GetUser") and unless(None)
    assert event_name_gate({"ErrorCode": "AccessDenied"}) is None  # takes any name
    assert event_name_gate({"any": [{"EventName": "A"}, {"ErrorCode": "x"}]}) is None
    assert event_name_gate({"EventName": {"equals_column": "Other"}}) is None  # reads more


def test_a_packed_detector_resumes_and_repacks_only_what_changed(
        specs: tuple[SequenceSpec, ...]) -> None:
    import pickle

    mallory = "arn:aws:iam::111122223333:user/mallory"
    det = SequenceDetector(specs)
    feed(det, [probe(i, i * 0.1) for i in range(6)] + [create_user(1, mallory)])
    first = dict(det.pack()["packed"])
    assert set(first) == {EVE, mallory}
    feed(det, [probe(6, 1.2)])  # eve only
    second = dict(det.pack()["packed"])
    assert second[mallory] is first[mallory]  # not pickled again
    assert second[EVE] != first[EVE]
    stored = pickle.loads(pickle.dumps(det.pack()))  # as bytewax stores it
    restored = SequenceDetector.restore(specs, stored)
    assert restored.snapshot() == det.snapshot()
    rest = [probe(i, 1.2 + i * 0.1) for i in range(7, 10)] + [ev("ListRoles", 3),
                                                                attach(4, mallory),
                                                                create_key(5, mallory)]
    assert feed(restored, rest) == feed(det, rest) != []


def test_principals_whose_partial_matches_expired_are_dropped(
        specs: tuple[SequenceSpec, ...]) -> None:
    """A principal seen once (a session name made per run) holds partial matches that
    expire with their window: it is dropped once it is twice the longest window old, as
    new principals come, not kept until max_principals evicts it."""
    det = SequenceDetector(specs, max_principals=100_000)
    longest = max(s.window_secs for s in specs)
    ts = T0.timestamp()
    for i in range(2_000):  # one principal a minute, each starting a partial match
        row = create_user(0, f"arn:aws:sts::111122223333:assumed-role/r/s{i}")
        det.observe(CT, row, ts + i * 60)
    assert det.evicted == 0 and det.expired > 0
    assert len(det) <= 2 * longest / 60 + 2
    assert len(det) + det.expired == 2_000
    # a live partial match is never dropped: the newest principals complete theirs
    who = "arn:aws:sts::111122223333:assumed-role/r/s1999"
    done = feed(det, [attach(2_000, who), create_key(2_000.5, who)])
    assert [m.principal for m in done] == [who]
    # and a restored detector knows how old its principals are
    again = SequenceDetector.restore(specs, det.pack())
    row = create_user(0, "arn:aws:iam::111122223333:user/late")
    again.observe(CT, row, ts + 2_000 * 60 + 10 * longest)
    assert len(again) == 1
