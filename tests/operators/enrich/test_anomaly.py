"""Anomaly scoring: warm-up, novelty, rates against the daily rhythm, bounded state, resume,
and detection on the labelled workload of ``bench/workload.py``."""

from __future__ import annotations

import json
import math
import pickle
import random
import re
import time
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bench.detection import evaluate
from bench.workload import SCENARIOS, generate
from operators.enrich.anomaly import (
    _PC,
    _PD,
    ANOMALOUS,
    AnomalyConfig,
    AnomalyScorer,
    EntityState,
    Score,
    agent_family,
    entity_items,
    entity_keys,
    principal_of,
    stateful_mapper,
)

T0 = 1_794_182_400.0  # 2026-11-09T00:00:00Z, a Monday
DAY = 86_400.0
ALICE = "arn:aws:iam::111122223333:user/alice"
CLI = "aws-cli/2.15.30 Python/3.11.8 Darwin/23.4.0 exe/x86_64 prompt/off"
OFFICE = "198.51.100.7"
READS = ["DescribeInstances", "DescribeVpcs", "DescribeSubnets", "DescribeVolumes",
         "DescribeSecurityGroups", "DescribeImages"]


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def row(ts: float, name: str = "DescribeInstances", source: str = "ec2", *, arn: str = ALICE,
        ip: str = OFFICE, ua: str = CLI, error: str | None = None,
        itype: str = "IAMUser") -> dict[str, object]:
    r: dict[str, object] = {
        "TimeGenerated": iso(ts), "EventName": name, "EventSource": f"{source}.amazonaws.com",
        "SourceIpAddress": ip, "UserAgent": ua, "UserIdentityArn": arn,
        "UserIdentityType": itype, "RecipientAccountId": "111122223333",
        "AWSRegion": "us-east-1", "ReadOnly": name.startswith(("Describe", "List", "Get"))}
    if error:
        r["ErrorCode"] = error
    return r


def office_days(scorer: AnomalyScorer, days: int, *, start: float = T0, per_hour: int = 12,
                arn: str = ALICE, seed: int = 0) -> list[Score]:
    """A person's routine: weekdays 08-18 UTC, a few reads per 5 minutes, same IP and CLI."""
    rng = random.Random(seed)
    out = []
    for d in range(days):
        if d % 7 >= 5:
            continue
        for h in range(8, 18):
            for _ in range(per_hour):
                ts = start + d * DAY + h * 3600 + rng.uniform(0, 3600)
                out.append(scorer.score(row(ts, rng.choice(READS), arn=arn)))
    return out


def test_warmup_suppresses_scores() -> None:
    scorer = AnomalyScorer(AnomalyConfig(warmup_events=50, warmup_secs=2 * DAY))
    office_days(scorer, 1)  # 120 events, but only one day of event time
    early = scorer.score(row(T0 + DAY + 3600, "DeleteTrail", "cloudtrail", ip="185.220.101.9",
                             ua="python-requests/2.31.0"))
    assert early.value == 0.0 and early.reasons == ()

    office_days(scorer, 2, start=T0 + DAY)  # now two days of history: warm
    late = scorer.score(row(T0 + 3 * DAY + 3600, "StopLogging", "cloudtrail",
                            ip="185.220.101.10", ua="python-requests/2.31.0"))
    assert late.value >= ANOMALOUS
    assert late.entity == f"principal:{ALICE}"

    # enough time but too few events: still learning
    sparse = AnomalyScorer(AnomalyConfig(warmup_events=50, warmup_secs=DAY))
    for i in range(20):
        sparse.score(row(T0 + i * 3 * 3600))
    assert sparse.score(row(T0 + 3 * DAY, "DeleteTrail", "cloudtrail")).value == 0.0


def test_first_seen_pair_after_warmup_is_scored_with_a_reason() -> None:
    scorer = AnomalyScorer()
    office_days(scorer, 14)
    t = T0 + 14 * DAY + 10 * 3600  # Monday of the third week

    trail = scorer.score(row(t, "DeleteTrail", "cloudtrail"))
    assert trail.value >= ANOMALOUS  # a logging-tamper API is alarming on its own
    assert f"first call of cloudtrail:DeleteTrail by {ALICE} after 14.0 days of history" \
        in trail.reasons

    user = scorer.score(row(t + 60, "CreateUser", "iam"))
    assert 0.5 <= user.value < ANOMALOUS  # one weak signal stays below the threshold
    assert any(r.startswith(f"first call of iam:CreateUser by {ALICE}") for r in user.reasons)
    assert not any("iam:CreateUser" in r for r in scorer.score(row(t + 120, "CreateUser",
                                                                       "iam")).reasons)

    travel = scorer.score(row(t + 600, ip="203.0.113.50"))
    assert 0.5 <= travel.value < ANOMALOUS
    assert any(r.startswith(f"new source IP 203.0.113.50 for {ALICE} (network 203.0.113.0/24 "
                            "never seen before)") for r in travel.reasons)

    stolen = scorer.score(row(t + 900, ip="45.137.21.8", ua="python-requests/2.31.0"))
    assert stolen.value >= ANOMALOUS  # two together do reach it
    assert any("user agent never seen" in r for r in stolen.reasons)

    upgraded = scorer.score(row(t + 1200, ua=CLI.replace("2.15.30", "2.16.2")))
    assert upgraded.value == 0.0  # a new CLI version is not a new tool


def test_rate_spike_detected_and_daily_rhythm_not_flagged() -> None:
    scorer = AnomalyScorer()
    etl = "arn:aws:sts::111122223333:assumed-role/etl-role/job"
    rng = random.Random(1)
    nightly: list[Score] = []
    for d in range(9):
        day = T0 + d * DAY
        for k in range(300):  # the nightly bulk read: 300 GetObject in 02:00-02:04
            sc = scorer.score(row(day + 2 * 3600 + k, "GetObject", "s3", arn=etl, ip="10.0.1.5"))
            if d >= 4:
                nightly.append(sc)
        for m in range(0, 24 * 60, 10):  # and a call every 10 minutes, all day
            if 120 <= m < 130:
                continue
            scorer.score(row(day + m * 60 + rng.uniform(0, 60), "GetParameter", "ssm", arn=etl,
                             ip="10.0.1.5"))
    assert max(s.value for s in nightly) < ANOMALOUS  # the usual bulk at its usual hour

    t = T0 + 9 * DAY + 14 * 3600  # the same volume at 14:00 is not usual
    day_burst = [scorer.score(row(t + k, "GetObject", "s3", arn=etl, ip="10.0.1.5"))
                 for k in range(300)]
    top = max(day_burst, key=lambda s: s.value)
    assert top.value >= ANOMALOUS
    assert re.fullmatch(rf"\d+ data reads \(GetObject\) in 5 min by {re.escape(etl)} vs "
                        r"baseline \d+±\d+ \(peak \d+\)", top.reasons[0]), top.reasons

    people = AnomalyScorer()
    routine = office_days(people, 14)
    assert max(s.value for s in routine[len(routine) // 3:]) < ANOMALOUS
    t = T0 + 14 * DAY + 11 * 3600
    burst = [people.score(row(t + k * 0.5, rng.choice(READS))) for k in range(400)]
    assert any(any(f"calls in 5 min by {ALICE} vs baseline" in r for r in s.reasons)
               for s in burst)
    assert max(s.value for s in burst) < ANOMALOUS  # a script alone is not an incident


def test_failed_calls_across_new_apis_flagged_but_a_denied_loop_is_not() -> None:
    scorer = AnomalyScorer()
    office_days(scorer, 14)
    t = T0 + 14 * DAY + 10 * 3600
    loop = [scorer.score(row(t + k * 3, "DescribeInstances", error="AccessDenied"))
            for k in range(40)]  # a script without the right role, retrying
    assert any(any("calls failed (AccessDenied)" in r for r in s.reasons) for s in loop)
    assert max(s.value for s in loop) < ANOMALOUS

    apis = [f"List{n}" for n in ("Users", "Roles", "Policies", "Secrets", "Keys", "Functions",
                                 "Buckets", "Clusters", "Stacks", "Topics")]
    t += 3600
    recon = [scorer.score(row(t + k * 3, apis[k % 10], "iam", error="AccessDenied"))
             for k in range(40)]
    top = max(recon, key=lambda s: s.value)
    assert top.value >= ANOMALOUS
    assert any("APIs never called before" in r for r in top.reasons)
    assert any("calls failed (AccessDenied)" in r for r in top.reasons)


def test_state_is_bounded() -> None:
    cfg = AnomalyConfig(max_entities=10_000, entity_kinds=("principal",))
    scorer = AnomalyScorer(cfg)
    r: dict[str, object] = {"EventName": "GetCallerIdentity", "EventSource": "sts.amazonaws.com"}
    t0 = time.perf_counter()
    for i in range(1_000_000):
        r["UserIdentityArn"] = f"arn:aws:iam::111122223333:user/u{i}"
        scorer.score(r, T0 + i)
        if i % 100_000 == 0:
            assert len(scorer) <= 10_000
    assert len(scorer) == 10_000
    assert scorer.evicted == 990_000
    assert scorer.entity("principal:arn:aws:iam::111122223333:user/u999999") is not None
    assert scorer.entity("principal:arn:aws:iam::111122223333:user/u0") is None
    elapsed = time.perf_counter() - t0

    # pair tables keep counts and evict the least used beyond their caps
    one = AnomalyScorer(AnomalyConfig(entity_kinds=("principal",)))
    for i in range(5_000):
        one.score(row(T0 + i, f"Describe{i}", ip=f"10.{i // 250}.{i % 250}.1",
                      ua=f"tool{i}/1.0"))
    st = one.entity(f"principal:{ALICE}")
    assert st is not None
    cfg1 = one.config
    # evicted in bulk: a table grows a quarter over its cap, then goes down to 3/4 of it
    assert cfg1.max_ips * 3 // 4 <= len(st.pairs["ip"]) <= cfg1.max_ips * 5 // 4
    assert len(st.pairs["net"]) <= cfg1.max_networks * 5 // 4
    assert len(st.pairs["agent"]) <= cfg1.max_agents * 5 // 4
    assert len(st.pairs["api"]) <= cfg1.max_apis * 5 // 4
    assert elapsed < 60  # a generous bound: it takes a few seconds


def test_snapshot_restore_gives_identical_scores() -> None:
    wl = generate(6_000, seed=4)
    half = len(wl.rows) * 2 // 3
    a = AnomalyScorer()
    for r in wl.rows[:half]:
        a.score(r)
    snap = json.loads(json.dumps(a.snapshot()))  # plain JSON, through text
    b = AnomalyScorer()
    b.restore(snap)
    assert len(b) == len(a)
    rest_a = [a.score(r) for r in wl.rows[half:]]
    rest_b = [b.score(r) for r in wl.rows[half:]]
    assert rest_a == rest_b
    assert any(s.value >= ANOMALOUS for s in rest_a)  # the comparison covers real scores

    with pytest.raises(ValueError, match="bucket_secs"):
        AnomalyScorer(AnomalyConfig(bucket_secs=60)).restore(snap)
    with pytest.raises(ValueError, match="version"):
        AnomalyScorer().restore({**snap, "version": 99})


def test_a_snapshot_is_made_again_only_for_entities_that_changed() -> None:
    scorer = AnomalyScorer()
    bob = "arn:aws:iam::111122223333:user/bob"
    for i in range(50):
        scorer.score(row(T0 + i * 60))
        scorer.score(row(T0 + i * 60, arn=bob))
    first = {k: v for k, v in scorer.snapshot()["entities"]}
    scorer.score(row(T0 + 3600, "ListBuckets", "s3"))  # alice (and the account) only
    second = {k: v for k, v in scorer.snapshot()["entities"]}
    assert second[f"principal:{bob}"] is first[f"principal:{bob}"]  # reused, not copied
    assert second[f"principal:{ALICE}"] is not first[f"principal:{ALICE}"]
    assert second[f"principal:{ALICE}"]["n"] == first[f"principal:{ALICE}"]["n"] + 1
    assert "s3:ListBuckets" in second[f"principal:{ALICE}"]["pairs"]["api"]
    assert "s3:ListBuckets" not in first[f"principal:{ALICE}"]["pairs"]["api"]  # not mutated
    again = AnomalyScorer()
    again.restore(json.loads(json.dumps(scorer.snapshot())))
    assert again.snapshot() == scorer.snapshot()


def test_a_packed_snapshot_resumes_identically_and_is_repacked_only_when_changed() -> None:
    wl = generate(6_000, seed=4)
    half = len(wl.rows) * 2 // 3
    a = AnomalyScorer()
    for r in wl.rows[:half]:
        a.score(r)
    packed = pickle.loads(pickle.dumps(a.pack()))  # as bytewax stores it
    assert "entities" not in packed and all(isinstance(b, bytes) for _, b in packed["packed"])
    b = AnomalyScorer()
    b.restore(packed)
    assert b.snapshot() == a.snapshot()
    rest_a = [a.score(r) for r in wl.rows[half:]]
    rest_b = [b.score(r) for r in wl.rows[half:]]
    assert rest_a == rest_b
    assert any(s.value >= ANOMALOUS for s in rest_a)

    scorer = AnomalyScorer()
    bob = "arn:aws:iam::111122223333:user/bob"
    for i in range(20):
        scorer.score(row(T0 + i * 60))
        scorer.score(row(T0 + i * 60, arn=bob))
    first = dict(scorer.pack()["packed"])
    scorer.score(row(T0 + 3600, "ListBuckets", "s3"))  # alice (and the account) only
    second = dict(scorer.pack()["packed"])
    assert second[f"principal:{bob}"] is first[f"principal:{bob}"]
    assert second[f"principal:{ALICE}"] != first[f"principal:{ALICE}"]

    with pytest.raises(ValueError, match="unreadable"):
        AnomalyScorer().restore({**packed, "packed": [(f"principal:{ALICE}", b"not a pickle")]})


def test_entity_state_pickles_small_and_resumes() -> None:
    state = EntityState(f"principal:{ALICE}")
    rows = [row(T0 + DAY * d + 3600 * h + m * 60, READS[m % 6])
            for d in range(5) for h in range(9, 17) for m in range(0, 60, 7)]
    for r in rows[:-50]:
        state.update_and_score(r)
    copy = pickle.loads(pickle.dumps(state))
    assert copy.snapshot() == state.snapshot()
    tail = rows[-50:] + [row(T0 + 5 * DAY + 36_000, "StopLogging", "cloudtrail")]
    assert [copy.update_and_score(r) for r in tail] == [state.update_and_score(r) for r in tail]


def test_stateful_map_in_a_bytewax_flow() -> None:
    cfg = AnomalyConfig(warmup_events=20, warmup_secs=DAY)
    rows = [row(T0 + i * 600) for i in range(300)]
    rows.append(row(T0 + 300 * 600, "DeleteTrail", "cloudtrail"))
    out: list[tuple[str, Score]] = []
    flow = Dataflow("anomaly")
    keyed = op.flat_map("entities", op.input("in", flow, TestingSource(rows)),
                        lambda r: entity_items(r, cfg))
    op.output("out", op.stateful_map("score", keyed, stateful_mapper(cfg)), TestingSink(out))
    run_main(flow)
    assert len(out) == sum(len(entity_keys(r, cfg)) for r in rows)
    key, last = [kv for kv in out if kv[0].startswith("principal:")][-1]
    assert key == f"principal:{ALICE}" and last.value >= ANOMALOUS


def test_small_workload_detects_every_scenario_class() -> None:
    wl = generate(20_000, seed=5)
    assert {s.name for s in wl.scenarios} == set(SCENARIOS)
    report = evaluate(wl)  # the anomaly scorer alone, without rules or sequences
    missed = [name for name, d in report["scenarios"].items() if not d["detected"]]
    assert not missed, report["scenarios"]
    assert report["precision"] >= 0.8
    assert report["fp_per_million"] < 200  # a handful at most on 20k normal events


def test_row_views() -> None:
    app = "arn:aws:sts::1:assumed-role/app/i-0abc123def4567890"
    assert principal_of({"UserIdentityArn": app}) \
        == "arn:aws:sts::1:assumed-role/app/*"
    assert principal_of({"UserIdentityArn": "arn:aws:sts::1:assumed-role/sso/alice@example.com"}) \
        == "arn:aws:sts::1:assumed-role/sso/alice@example.com"
    assert principal_of({"UserIdentityAccessKeyId": "AKIA1"}) == "key:AKIA1"
    assert principal_of({}) is None
    assert agent_family(CLI) == agent_family(CLI.replace("2.15.30", "2.16.2"))
    assert agent_family(CLI) != agent_family("aws-cli/2.13.4 Python/3.11.4 "
                                             "Linux/6.3.0-kali1-amd64 exe/x86_64.kali.2023")
    assert entity_keys(row(T0)) == [f"principal:{ALICE}", f"ip:{OFFICE}",
                                    "account:111122223333/us-east-1"]
    assert "ip:ec2.amazonaws.com" not in entity_keys(row(T0, ip="ec2.amazonaws.com"))


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown anomaly config key.*bucket_sec"):
        AnomalyConfig.from_mapping({"bucket_sec": 60})
    with pytest.raises(ValueError, match="weight_rate must be from 0 to 1"):
        AnomalyConfig(weight_rate=2.0)
    with pytest.raises(ValueError, match="warmup_events must be positive"):
        AnomalyConfig(warmup_events=0)
    cfg = AnomalyConfig.from_mapping({"bucket_secs": 60, "entity_kinds": ["principal"],
                                      "data_apis": ["GetObject"]})
    assert cfg.entity_kinds == ("principal",) and cfg.data_apis == frozenset({"GetObject"})


def test_a_long_term_access_key_is_an_entity_of_its_own() -> None:
    """Alice works with key K1 from the office; K2 is her CI runner's. K2 used from the
    office with the CLI is nothing new for Alice, but new for K2: only the key entity sees
    it. Temporary keys (ASIA...) are no entities."""
    k1, k2 = "AKIAEXAMPLEKEY000001", "AKIAEXAMPLEKEY000002"
    ci_ip, ci_ua = "192.0.2.50", "Boto3/1.35.0 md/Botocore#1.35.0 ua/2.0 os/linux"
    kinds = ("principal", "account", "key")

    def history(scorer: AnomalyScorer) -> None:
        rng = random.Random(4)
        for d in range(14):
            for h in range(8, 18):
                for _ in range(12):
                    ts = T0 + d * DAY + h * 3600 + rng.uniform(0, 3600)
                    scorer.score(row(ts, rng.choice(READS)) | {"UserIdentityAccessKeyId": k1})
                ts = T0 + d * DAY + h * 3600 + rng.uniform(0, 3600)
                scorer.score(row(ts, "GetObject", "s3", ip=ci_ip, ua=ci_ua)
                             | {"UserIdentityAccessKeyId": k2})

    t = T0 + 14 * DAY + 10 * 3600
    odd = row(t, "DescribeInstances") | {"UserIdentityAccessKeyId": k2}
    without = AnomalyScorer(AnomalyConfig(entity_kinds=("principal", "account")))
    history(without)
    assert without.score(odd).reasons == ()
    with_keys = AnomalyScorer(AnomalyConfig(entity_kinds=kinds))
    history(with_keys)
    assert with_keys.entity(f"key:{k1}") is not None and with_keys.entity(f"key:{k2}") is not None
    got = with_keys.score(odd)
    assert got.entity == f"key:{k2}" and got.value > 0
    assert any(f"new source IP {OFFICE} for access key {k2}" in r for r in got.reasons)
    assert any(f"user agent never seen for access key {k2}" in r for r in got.reasons)
    assert entity_keys(odd, AnomalyConfig(entity_kinds=kinds))[-1] == f"key:{k2}"
    temp = row(t + 60) | {"UserIdentityAccessKeyId": "ASIAEXAMPLETEMP00001"}
    assert not [k for k in entity_keys(temp, AnomalyConfig(entity_kinds=kinds))
                if k.startswith("key:")]
    with_keys.score(temp)
    assert with_keys.entity("key:ASIAEXAMPLETEMP00001") is None


@pytest.mark.parametrize("half_lives", [0.5, 1, 2, 3])
def test_the_remembered_peak_halves_every_peak_halflife_of_event_time(half_lives: float) -> None:
    # The default peak_halflife_secs: a week of event time.
    gap = half_lives * 7 * DAY
    st = EntityState("principal:" + ALICE)
    for _ in range(100):  # one bucket of 100 calls, all of them data reads
        st.update_and_score(row(T0, "GetObject", "s3"))
    st.update_and_score(row(T0 + gap, "GetObject", "s3"))  # closes it: the peak is 100
    assert st.snapshot()["base"][_PC] == st.snapshot()["base"][_PD] == 100
    st.update_and_score(row(T0 + gap + 300, "GetObject", "s3"))  # closes the one `gap` later
    base = st.snapshot()["base"]
    assert base[_PC] == pytest.approx(100 * 0.5 ** half_lives, rel=1e-9)
    assert base[_PD] == pytest.approx(100 * 0.5 ** half_lives, rel=1e-9)


def test_a_novelty_counts_half_after_novelty_memory_events_events() -> None:
    # The default novelty_memory_events: 1000 events. The first event brings a new network,
    # IP, user agent and (read) API; the 1000 after it bring nothing new.
    st = EntityState("principal:" + ALICE)
    for i in range(1001):
        st.update_and_score(row(T0 + i))
    nov = st.snapshot()["nov"]
    assert nov[1:5] == pytest.approx([0.5] * 4, rel=1e-9)
    assert nov[5] == 0.0  # never a new write


def test_a_batch_scores_as_its_rows_do_one_by_one() -> None:
    """score_many groups a batch's rows by entity: the scores and the state are those of
    score() row by row, whatever the batch sizes; at the cap, score_many evicts the least
    recently seen entities in bulk before a batch (the state stays within the cap)."""
    wl = generate(6_000, seed=4)
    every = ("principal", "ip", "account", "key")
    for cfg in (AnomalyConfig(), AnomalyConfig(entity_kinds=every),
                AnomalyConfig(entity_kinds=every, max_entities=40)):
        one, many = AnomalyScorer(cfg), AnomalyScorer(cfg)
        singly = [one.score(r) for r in wl.rows]
        rng, batched, i = random.Random(1), [], 0
        while i < len(wl.rows):
            k = rng.choice((1, 3, 8, 64, 500))
            batched += many.score_many(wl.rows[i:i + k])
            i += k
        assert batched == singly
        assert len(many) <= cfg.max_entities and len(one) <= cfg.max_entities
        if one.evicted:  # bulk eviction: other entities may have gone, never more than needed
            assert many.evicted >= one.evicted
            kept = dict(many.snapshot()["entities"])
            assert all(kept[k] == v for k, v in one.snapshot()["entities"] if k in kept)
        else:
            assert many.snapshot() == one.snapshot()
            assert many.evicted == 0
            assert any(s.value >= ANOMALOUS for s in singly)  # real scores are compared
    assert one.evicted > 0  # the last config evicts on the way
    lost = AnomalyScorer().score_many([{"EventName": "ListUsers"}, row(T0)])
    assert lost[0].reasons == ("no usable TimeGenerated: not scored",) and lost[1].value == 0


def test_state_packed_by_pickle_before_still_restores() -> None:
    from operators.enrich import packing

    wl = generate(3_000, seed=4)
    a = AnomalyScorer()
    a.score_many(wl.rows)
    now = a.pack()
    assert all(b[:1] == b"M" for _, b in now["packed"])  # marshal, twice as fast as pickle
    old = {**now, "packed": [(k, pickle.dumps(packing.unpack(b), protocol=5))
                             for k, b in now["packed"]]}
    b = AnomalyScorer()
    b.restore(old)
    assert b.snapshot() == a.snapshot()


def test_entities_idle_since_the_last_pack_are_kept_packed_and_score_as_before() -> None:
    """pack() keeps an entity that learnt nothing since the previous pack as its bytes only;
    it is unpacked when it next sees a row, and scores exactly as if it had stayed live."""
    wl = generate(6_000, seed=4)
    live, packed = AnomalyScorer(), AnomalyScorer()
    rng, i = random.Random(2), 0
    singly: list = []
    batched: list = []
    while i < len(wl.rows):
        k = rng.choice((1, 8, 64, 300))
        batched += packed.score_many(wl.rows[i:i + k])
        singly += [live.score(r) for r in wl.rows[i:i + k]]
        snap = packed.pack()
        i += k
    assert batched == singly
    assert any(s.value >= ANOMALOUS for s in singly)
    assert packed.snapshot() == live.snapshot()
    kept = packed._entities
    assert any(isinstance(v, bytes) for v in kept.values())  # idle ones: bytes only
    assert dict(packed.pack()["packed"]) == dict(snap["packed"])  # nothing learnt since
    again = AnomalyScorer()
    again.restore(pickle.loads(pickle.dumps(packed.pack())))
    assert again.snapshot() == live.snapshot()
    key = next(k for k, v in kept.items() if isinstance(v, bytes))
    st = packed.entity(key)
    assert st is not None and st.key == key


def test_score_many_evicts_in_bulk_at_the_cap() -> None:
    """At the cap, a batch evicts the least recently seen entities in bulk first (a
    sixteenth of the cap below what the batch may add), not one per new entity."""
    scorer = AnomalyScorer(AnomalyConfig(max_entities=1_600, entity_kinds=("principal",)))
    for b in range(100):
        rows = [row(T0 + b * 60 + j, arn=f"arn:aws:iam::111122223333:user/u{b}-{j}")
                for j in range(50)]
        scorer.score_many(rows)
        assert len(scorer) <= 1_600
    assert scorer.evicted == 5_000 - len(scorer)
    assert scorer.entity("principal:arn:aws:iam::111122223333:user/u99-49") is not None
    assert scorer.entity("principal:arn:aws:iam::111122223333:user/u0-0") is None


def test_flag_many_learns_as_score_many_and_returns_its_anomalous_rows() -> None:
    """flag_many is score_many (same state, same scores) that returns only the rows at or
    above the threshold: what the flow's side step needs, without a Score per row."""
    wl = generate(20_000, seed=5)
    founds = []
    for cfg in (AnomalyConfig(), AnomalyConfig(max_entities=40)):  # the second evicts
        full, flags = AnomalyScorer(cfg), AnomalyScorer(cfg)
        rng, i, found = random.Random(3), 0, 0
        while i < len(wl.rows):
            k = rng.choice((1, 8, 64, 500))
            rows = wl.rows[i:i + k]
            threshold = ANOMALOUS if i < len(wl.rows) // 2 else 0.3  # the second half: lower
            want = [(j, s) for j, s in enumerate(full.score_many(rows)) if s.value >= threshold]
            assert flags.flag_many(rows, threshold) == want
            found += len(want)
            i += k
        founds.append(found)
        assert flags.snapshot() == full.snapshot()
        assert flags.evicted == full.evicted
    assert founds[0] > 100 and founds[1] > 0  # real findings are compared
    with pytest.raises(ValueError, match="threshold"):
        AnomalyScorer().flag_many(wl.rows[:1], 0.0)


def test_volume_limits_per_bucket_score_as_the_full_check_on_every_row(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy entity's counts are compared with limits worked out once per bucket; a row
    passing none skips the feature arithmetic. Scoring every row the long way (the full
    check on each) gives the same scores and state."""
    # Bursts of every size around the limits: calls, data reads and failed calls of one
    # principal after a week of routine, each burst in a bucket of its own.
    # The routine: 40 calls and 2 data reads per 5 minutes, so that bulk reads can pass
    # their limit while the calls stay under theirs.
    burst_rows = [row(T0 + d * DAY + h * 3600 + m * 300 + s * 7,
                      "GetObject" if s < 2 else READS[s % 6], "s3" if s < 2 else "ec2")
                  for d in range(7) for h in range(9, 17) for m in range(12) for s in range(42)]
    t = T0 + 8 * DAY
    for size in range(20, 400, 3):
        kind = size % 3
        burst_rows += [row(t + j * 200 / size, "GetObject" if kind == 0 else READS[j % 6],
                           "s3" if kind == 0 else "ec2",
                           error="AccessDenied" if kind == 2 and j % 2 else None)
                       for j in range(size)]
        t += 1800
    wl = generate(20_000, seed=5)
    cfg = AnomalyConfig(entity_kinds=("principal", "ip", "account", "key"))
    fast = AnomalyScorer(cfg)
    fast_scores = fast.score_many(wl.rows) + fast.score_many(burst_rows)
    monkeypatch.setattr(EntityState, "_volume", EntityState._volume_parts)
    slow = AnomalyScorer(cfg)
    assert slow.score_many(wl.rows) + slow.score_many(burst_rows) == fast_scores
    assert slow.snapshot() == fast.snapshot()
    for what in (" calls in ", " data reads ", " calls failed "):  # each feature fires
        assert sum(any(what in r for r in s.reasons) for s in fast_scores) > 20, what


class _DividingState(EntityState):
    """An entity that forgets where the next bucket starts after each roll: its _tick
    divides every event time, as it did before the edge was kept."""

    __slots__ = ()

    def _roll(self, b: int) -> None:
        super()._roll(b)
        self.edge = -math.inf


@settings(max_examples=300, deadline=None)
@example([(0, 0.0), (1, 0.0), (1, 299.999999), (2, 0.0), (1, 0.5), (3, 1e-6)], 300, False)
@given(st.lists(st.tuples(st.integers(-3, 40), st.sampled_from([0.0, 1e-6, 0.5, 299.999999])),
                min_size=1, max_size=60),
       st.sampled_from([300, 60, 7]), st.booleans())
def test_a_bucket_is_rolled_on_as_by_dividing_every_event_time(
        steps: list[tuple[int, float]], bucket_secs: int, restore: bool) -> None:
    """An event before the next bucket's start is counted without a division: the same
    buckets as dividing each event time, at the edges, out of order and after a restore."""
    cfg = AnomalyConfig(bucket_secs=bucket_secs)
    mine, ref = EntityState("ip:192.0.2.1", cfg), _DividingState("ip:192.0.2.1", cfg)
    for j, (b, frac) in enumerate(steps):
        ts = T0 + b * bucket_secs + frac * bucket_secs / 300
        mine.update_and_score({"TimeGenerated": None}, ts)
        ref.update_and_score({"TimeGenerated": None}, ts)
        if restore and j % 7 == 3:
            mine = EntityState.unpack(mine.key, mine.pack(), cfg)
        assert (mine.bucket, mine.cur, mine.prev, mine.base) == (
            ref.bucket, ref.cur, ref.prev, ref.base)


def test_the_volume_limits_skip_only_rows_the_full_check_scores_nothing() -> None:
    """Whatever the baselines and counts, a row the limits let through gets the features
    of the full check, and one they stop would have got none (random states: ~1% of them
    sit between a feature's limit and a fifth above it)."""
    cfg = AnomalyConfig()
    rng = random.Random(7)
    bucket = int(T0 // cfg.bucket_secs) + 500
    h = int(bucket * cfg.bucket_secs // 3600 % 24) * 4
    skipped = 0
    for _ in range(20_000):
        state = EntityState(rng.choice(("principal:", "account:")) + ALICE, cfg)
        cur = [rng.randint(0, 400) for _ in range(3)]
        state.n, state.first_ts, state.bucket = 10_000, T0, bucket
        state.cur = [max(cur), cur[1], cur[2], 0]  # failed calls and data reads are calls
        if rng.random() < 0.5:
            prev = [rng.randint(0, 400) for _ in range(3)]
            state.prev = [max(prev), prev[1], prev[2], 0]
        state.base = [rng.uniform(0, 300) for _ in range(8)] + [100.0, float(bucket - 1)]
        if rng.random() < 0.3:
            state.hours = [-1.0] * 96
            state.hours[h:h + 4] = [rng.uniform(-1, 300) for _ in range(4)]
        ts = (bucket + rng.uniform(-0.3, 1.2)) * cfg.bucket_secs  # late rows too
        ev: Any = (ts, ALICE, OFFICE, "198.51.100.0/24", True, "aws-cli/", CLI, "s3:GetObject",
                   "GetObject", 0, rng.random() < 0.7, "AccessDenied", "111122223333/us-east-1",
                   False)
        fast: list[tuple[float, str]] = []
        slow: list[tuple[float, str]] = []
        state._volume(ev, fast)
        state._volume_parts(ev, slow)
        assert fast == slow, (state.cur, state.prev, state.base, state.hours, ev)
        skipped += not slow
    assert 1_000 < skipped < 19_000  # both ways are taken
