"""The enrichment step: critical and intel-matching rows go to the fast lane with a
finding; the rest keep their bundle; anomaly/sequence state survives pickling."""

from __future__ import annotations

import pickle
from datetime import UTC
from pathlib import Path

import orjson

from dataflow.config import EnrichConfig
from dataflow.core.messages import Rows
from operators.enrich.operator import Enricher, Observed, score_shard
from operators.schema import load_tables

TRAIL = "Custom-AWSCloudTrail"
FAST = "|fast"  # the lane, as these tests name bundles: (stream, partition + lane)


def lane(b: Rows) -> str:
    """A bundle's partition, with FAST appended in the fast lane."""
    return b.partition + (FAST if b.fast else "")


def ct(event: str, ip: str = "198.51.100.7", **extra) -> bytes:
    return orjson.dumps({"TimeGenerated": "2026-11-28T10:00:00Z", "EventName": event,
                         "EventSource": "cloudtrail.amazonaws.com", "SourceIpAddress": ip,
                         "UserIdentityType": "IAMUser",
                         "UserIdentityArn": "arn:aws:iam::111122223333:user/alice", **extra})


def bundle(*rows: bytes) -> Rows:
    return Rows(TRAIL, "trail:0/1", rows, tuple(f"abcdef0123456789-{i}" for i in range(len(rows))))


def test_critical_and_intel_rows_take_the_fast_lane_with_a_finding(tmp_path: Path) -> None:
    intel = tmp_path / "intel.txt"
    intel.write_text("# bad actors\n203.0.113.0/24\n")
    enricher = Enricher(EnrichConfig(enabled=True, intel_file=str(intel)), load_tables())
    out = enricher.enrich_batch([bundle(ct("DescribeInstances"), ct("StopLogging"),
                                        ct("ListBuckets", ip="203.0.113.50"))])
    by_part = {(b.stream, lane(b)): b for b in out if isinstance(b, Rows)}
    normal = by_part[(TRAIL, "trail:0/1")]
    fast = by_part[(TRAIL, "trail:0/1" + FAST)]
    assert normal.record_ids == ("abcdef0123456789-0",)
    assert fast.record_ids == ("abcdef0123456789-1", "abcdef0123456789-2")
    findings = by_part[(enricher.findings_stream, "trail:0/1" + FAST)]
    docs = [orjson.loads(r) for r in findings.rows]
    assert [(d["SourceRecordId"], d["Priority"], d["Detector"]) for d in docs] == [
        ("abcdef0123456789-1", "critical", "rules"), ("abcdef0123456789-2", "intel", "intel")]
    assert "203.0.113.0/24" in docs[1]["Reasons"][0]
    # Finding ids parse like record ids, so the upload journal can skip them on a replay.
    assert findings.record_ids[0] == "abcdef0123456789.rules-1"
    assert not [x for x in out if isinstance(x, Observed)]  # no side branch unless asked


def test_side_branch_state_survives_a_snapshot() -> None:
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True)
    enricher = Enricher(cfg, load_tables())
    out = enricher.enrich_batch([bundle(ct("CreateUser", RequestParameters='{"userName":"x"}'))])
    (obs,) = [x for x in out if isinstance(x, Observed)]
    state, rows = score_shard(enricher, cfg, None, obs)
    assert rows == []  # warm-up: one event scores nothing
    restored = pickle.loads(pickle.dumps(state))
    assert restored.scorer.snapshot() == state.scorer.snapshot()
    assert restored.detector.snapshot() == state.detector.snapshot()
    # bytewax snapshots with copy.deepcopy, then pickles into the recovery store.
    import copy

    thawed = pickle.loads(pickle.dumps(copy.deepcopy(state)))
    assert thawed.scorer.snapshot() == state.scorer.snapshot()
    assert thawed.detector.snapshot() == state.detector.snapshot()


def test_standard_tables_can_carry_the_results_as_cf_columns(tmp_path: Path) -> None:
    from operators.enrich.columns import with_enrichment_columns

    intel = tmp_path / "intel.txt"
    intel.write_text("203.0.113.0/24\n")
    cfg = EnrichConfig(enabled=True, intel_file=str(intel), standard_tables="columns")
    enricher = Enricher(cfg, with_enrichment_columns(load_tables(), cfg))
    out = enricher.enrich_batch([bundle(ct("DescribeInstances"), ct("StopLogging"),
                                        ct("ListBuckets", ip="203.0.113.50"))])
    by_part = {(b.stream, lane(b)): b for b in out if isinstance(b, Rows)}
    assert set(by_part) == {(TRAIL, "trail:0/1"), (TRAIL, "trail:0/1" + FAST)}  # no findings
    normal = [orjson.loads(r) for r in by_part[(TRAIL, "trail:0/1")].rows]
    fast = [orjson.loads(r) for r in by_part[(TRAIL, "trail:0/1" + FAST)].rows]
    assert normal[0]["EnrichmentPriority_CF"] == "normal"
    assert "EnrichmentReasons_CF" not in normal[0] and "EnrichmentIntel_CF" not in normal[0]
    tamper, listing = fast
    assert tamper["EventName"] == "StopLogging"
    assert tamper["EnrichmentPriority_CF"] == "critical"
    assert tamper["EnrichmentRuleIds_CF"] == ["ct-cloudtrail-tamper"]
    assert any("StopLogging" in r for r in tamper["EnrichmentReasons_CF"])
    assert listing["EnrichmentIntel_CF"][0]["indicator"] == "203.0.113.0/24"
    assert "203.0.113.0/24" in listing["EnrichmentReasons_CF"][-1]
    assert listing["SourceIpAddress"] == "203.0.113.50"  # the mapped row is otherwise intact


def test_custom_tables_carry_columns_from_user_rules(tmp_path: Path) -> None:
    from dataflow.config import TableColumnConfig, TableConfig
    from operators.enrich.columns import with_enrichment_columns

    rules = tmp_path / "app-rules.toml"
    rules.write_text('''
[[rules]]
id = "app-denied"
table = "AppEvents_CL"
priority = "high"
reason = "{UserName} was denied: {Message}"
match = { Status = 403 }
''')
    app = TableConfig(name="AppEvents_CL", columns=[
        TableColumnConfig(name="TimeGenerated", type="datetime", source="ts"),
        TableColumnConfig(name="Message", type="string", source="msg"),
        TableColumnConfig(name="UserName", type="string", source="user"),
        TableColumnConfig(name="Status", type="int", source="status")])
    cfg = EnrichConfig(enabled=True, rule_files=[str(rules)])
    enricher = Enricher(cfg, with_enrichment_columns(load_tables(declared=[app]), cfg))
    rows = (orjson.dumps({"TimeGenerated": "2026-11-28T10:00:00Z", "Message": "ok",
                          "UserName": "bob", "Status": 200}),
            orjson.dumps({"TimeGenerated": "2026-11-28T10:00:01Z", "Message": "no",
                          "UserName": "eve", "Status": 403}))
    out = enricher.enrich_batch([Rows("Custom-AppEvents_CL", "app:0/1", rows, ("a-0", "a-1"))])
    (only,) = out  # one bundle: nothing urgent, no findings rows for a table with columns
    got = [orjson.loads(r) for r in only.rows]
    assert [g["EnrichmentPriority"] for g in got] == ["normal", "high"]
    assert got[1]["EnrichmentReasons"] == ["eve was denied: no"]
    assert got[1]["EnrichmentRuleIds"] == ["app-denied"]
    assert only.record_ids == ("a-0", "a-1")


def test_rows_handed_on_by_the_mapper_enrich_as_decoded_rows_do(tmp_path: Path) -> None:
    """The mapper hands the enrichment step its row dicts (no second decode); the results
    are the same as from the encoded rows, dynamic columns (kept as JSON text) included."""
    import random
    from datetime import datetime

    from dataflow.config import SourceConfig
    from dataflow.core.messages import ObjectRef, RawRecord
    from devstack.samples import cloudtrail_event
    from operators.enrich.columns import with_enrichment_columns
    from operators.parse import RecordMapper

    intel = tmp_path / "intel.txt"
    intel.write_text("0.0.0.0/1\n")  # half of every address
    cfg = EnrichConfig(enabled=True, intel_file=str(intel), standard_tables="columns",
                       anomaly=True, sequences=True)
    tables = with_enrichment_columns(load_tables(), cfg)
    enricher = Enricher(cfg, tables)
    assert "AWSCloudTrail" in enricher.reads and "AWSVPCFlow" in enricher.reads
    rng = random.Random(11)
    when = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    events = [cloudtrail_event(rng, account="111122223333", region="us-east-1", when=when)
              for _ in range(400)]
    obj = ObjectRef("trail", "trail:0/1", "b", "AWSLogs/x.json.gz", "e", 1, "cloudtrail")
    records = [RawRecord(obj, i, orjson.dumps(e)) for i, e in enumerate(events)]
    src = [SourceConfig(name="trail", bucket="b", format="cloudtrail")]
    with_dicts = RecordMapper(src, tables, 1_000_000, keep_parsed=enricher.reads)
    (handed,) = with_dicts.map_batch(records)
    (plain,) = RecordMapper(src, tables, 1_000_000).map_batch(records)
    assert handed.parsed is not None and plain.parsed is None
    assert handed.rows == plain.rows  # the same bytes either way
    dynamic = [c.name for c in tables["AWSCloudTrail"].columns if c.type == "dynamic"]
    assert any(c in d for d in handed.parsed for c in dynamic)  # the Raw path is exercised

    def results(bundle: Rows) -> list:
        out = Enricher(cfg, tables).enrich_batch([bundle])
        return [(x.stream, lane(x), x.rows, x.record_ids) if isinstance(x, Rows) else
                (x.shard, x.rows) for x in out]

    got, want = results(handed), results(plain)
    assert got == want
    assert sum(len(r[2]) for r in got if len(r) == 4 and r[1].endswith(FAST)) > 0  # flagged
    out = Enricher(cfg, tables).enrich_batch([handed])
    assert all(x.parsed is None for x in out if isinstance(x, Rows))  # not carried further


def test_rows_of_a_grouped_sequence_go_to_the_shard_of_their_group() -> None:
    """alb_5xx_burst counts per load balancer: only the 5xx rows reach the side branch, in
    the shard of their Alb, and a count half way survives a snapshot."""
    import copy

    cfg = EnrichConfig(enabled=True, sequences=True)
    enricher = Enricher(cfg, load_tables())

    def alb_rows(lb: str, statuses: list[int], first: int) -> Rows:
        rows = tuple(orjson.dumps({"TimeGenerated": f"2026-11-28T10:00:{(first + i) / 2:06.3f}Z",
                                   "Alb": lb, "ElbStatusCode": s, "TargetStatusCode": s,
                                   "RequestMethod": "GET", "RequestUrl": "/"})
                     for i, s in enumerate(statuses))
        return Rows("Custom-AWSALBAccessLogs_CL", "alb:0/1", rows,
                    tuple(f"0123456789abcdef-{first + i}" for i in range(len(rows))))

    out = enricher.enrich_batch([alb_rows("app/web/1", [502, 200] * 15, 0),
                                 alb_rows("app/api/2", [503] * 5, 30)])
    obs = [x for x in out if isinstance(x, Observed)]
    assert all(o.rows == () for o in obs)
    grouped = {o.shard: [(t, c, r["Alb"], r["ElbStatusCode"]) for t, c, _, _, r in o.grouped]
               for o in obs}
    web = [g for g in grouped.values() if g[0][2] == "app/web/1"]
    assert web == [[("AWSALBAccessLogs_CL", "Alb", "app/web/1", 502)] * 15]
    assert sum(len(g) for g in grouped.values()) == 20  # the 200s stay out
    (web_obs,) = [o for o in obs if o.grouped[0][4]["Alb"] == "app/web/1"]
    state, found = score_shard(enricher, cfg, None, web_obs)
    assert found == []  # 15 of 50
    state = pickle.loads(pickle.dumps(copy.deepcopy(state)))  # as bytewax stores it
    more = enricher.enrich_batch([alb_rows("app/web/1", [502] * 35, 30)])
    (obs2,) = [x for x in more if isinstance(x, Observed)]
    assert obs2.shard == web_obs.shard
    state, found = score_shard(enricher, cfg, state, obs2)
    (findings,) = found
    docs = [orjson.loads(r) for r in findings.rows]
    assert [(d["SequenceId"], d["SourceTable"], d["SourceRecordId"]) for d in docs] == [
        ("alb_5xx_burst", "AWSALBAccessLogs_CL", "0123456789abcdef-64")]
    assert findings.partition == "alb:0/1" and findings.fast


def test_two_sequences_completing_on_one_row_are_two_findings() -> None:
    enricher = Enricher(EnrichConfig(enabled=True, sequences=True), load_tables())
    row = {"TimeGenerated": "2026-11-01T10:00:00Z", "UserIdentityArn": "arn:aws:iam::1:user/a"}
    rid = "0123456789abcdef-42"
    ids = {enricher.finding("AWSCloudTrail", row, rid, "high", ["r"], sequence=seq,
                            detector="sequence")[1]
           for seq in ("privilege_escalation", "recon_then_success", "weird id/ü")}
    assert len(ids) == 3
    # Still <object>...-<offset>: the journal splits ids at the last "-".
    assert all(i.startswith("0123456789abcdef.sequence.") and i.endswith("-42") for i in ids)
    # Deterministic, so a replay gives the same ids and the journal skips them.
    again = enricher.finding("AWSCloudTrail", row, rid, "high", ["r"],
                             sequence="recon_then_success", detector="sequence")[1]
    assert again in ids


def test_a_row_the_enricher_cannot_handle_goes_on_unenriched(monkeypatch) -> None:
    from dataflow.core import metrics

    enricher = Enricher(EnrichConfig(enabled=True), load_tables())
    real = enricher._flag

    def flag(table, row, rid, findings, cols):
        if row.get("EventName") == "Poison":
            msg = "a bug"
            raise TypeError(msg)
        return real(table, row, rid, findings, cols)

    monkeypatch.setattr(enricher, "_flag", flag)
    before = metrics.ERRORS.labels("trail", "enrich", "TypeError")._value.get()
    out = enricher.enrich_batch([bundle(ct("GetObject"), ct("Poison"), ct("StopLogging"))])
    rows = [r for b in out if isinstance(b, Rows) and b.stream == TRAIL for r in b.rows]
    assert sorted(orjson.loads(r)["EventName"] for r in rows) == [
        "GetObject", "Poison", "StopLogging"]
    assert any(b.fast for b in out if isinstance(b, Rows))  # still flagged
    assert metrics.ERRORS.labels("trail", "enrich", "TypeError")._value.get() - before == 1


# -- encryption of the shard state in the recovery store ---------------------------------------

ALICE = "arn:aws:iam::111122223333:user/alice"
SECRET_IP = "198.51.100.77"


def _observed(enricher: Enricher, event: str, i: int = 0) -> Observed:
    row = ct(event, ip=SECRET_IP, UserIdentityAccessKeyId="AKIAEXAMPLESECRET01",
             RequestParameters='{"userName":"x"}')
    rows = Rows(TRAIL, "trail:0/1", (row,), (f"abcdef0123456789-{i}",))
    (obs,) = [x for x in enricher.enrich_batch([rows]) if isinstance(x, Observed)]
    return obs


def test_shard_snapshots_are_sealed_with_a_keyring_and_restore() -> None:
    """What bytewax stores (deepcopy, then pickle) names no principal, address or key id
    when a keyring is configured; it restores with the keyring, refuses without it, and a
    snapshot written before encryption was turned on still restores (and is sealed from
    then on)."""
    import copy

    import pytest

    from connectors.ops.crypto import Keyring

    ring = Keyring({"k1": bytes(range(32))}, "k1")
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True,
                       anomaly_entities=["principal", "ip", "key", "account"])
    enricher = Enricher(cfg, load_tables())
    state, _ = score_shard(enricher, cfg, None, _observed(enricher, "CreateUser"), keyring=ring)
    stored = pickle.dumps(copy.deepcopy(state))
    for secret in (ALICE.encode(), SECRET_IP.encode(), b"AKIAEXAMPLESECRET01", b"alice"):
        assert secret not in stored
    plain = pickle.dumps(copy.deepcopy(
        score_shard(enricher, cfg, None, _observed(enricher, "CreateUser"))[0]))
    assert ALICE.encode() in plain and SECRET_IP.encode() in plain  # the control

    restored, _ = score_shard(enricher, cfg, pickle.loads(stored),
                              _observed(enricher, "ListUsers", 1), keyring=ring)
    before = state.scorer.snapshot()["entities"]
    after = restored.scorer.snapshot()["entities"]
    assert [k for k, _ in after] == [k for k, _ in before]  # the same entities, one more event
    assert [e["n"] for _, e in after] == [e["n"] + 1 for _, e in before]
    with pytest.raises(RuntimeError, match="encrypted enrichment state: configure the keyring"):
        score_shard(enricher, cfg, pickle.loads(stored), _observed(enricher, "ListUsers", 1))
    # An old (plain) snapshot restores with the keyring configured; the next one is sealed.
    old, _ = score_shard(enricher, cfg, pickle.loads(plain), _observed(enricher, "ListUsers", 1),
                         keyring=ring)
    assert old.scorer.snapshot()["entities"] == after
    assert ALICE.encode() not in pickle.dumps(copy.deepcopy(old))


def test_the_recovery_store_of_a_real_flow_holds_no_principal(tmp_path: Path) -> None:
    """The same through bytewax itself: a flow's stateful step with recovery on, run, then
    resumed; the SQLite files hold the ARN only when no keyring is configured."""
    import functools
    from datetime import timedelta

    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.recovery import RecoveryConfig, init_db_dir
    from bytewax.testing import TestingSource, run_main

    from connectors.ops.crypto import Keyring

    cfg = EnrichConfig(enabled=True, anomaly=True, anomaly_entities=["principal", "ip"])
    enricher = Enricher(cfg, load_tables())
    items = [_observed(enricher, "CreateUser", 0), _observed(enricher, "ListUsers", 1)]

    def run(keyring: Keyring | None, n: int, recovery: Path, counts: list[int]) -> None:
        def mapper(state, obs):
            state, out = score_shard(enricher, cfg, state, obs, keyring=keyring)
            counts.append(max(e["n"] for _, e in state.scorer.snapshot()["entities"]))
            return state, out

        flow = Dataflow("sealed")
        s = op.key_on("shard", op.input("in", flow, TestingSource(items[:n])), lambda o: o.shard)
        op.inspect("out", op.stateful_map("score", s, functools.partial(mapper)))
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(recovery))

    def stored(recovery: Path) -> bytes:
        return b"".join(p.read_bytes() for p in recovery.iterdir())

    for keyring in (Keyring({"k1": bytes(32)}, "k1"), None):
        recovery = tmp_path / f"recovery-{keyring is not None}"
        recovery.mkdir()
        init_db_dir(recovery, 1)
        counts: list[int] = []
        run(keyring, 1, recovery, counts)
        run(keyring, 2, recovery, counts)  # resumes after the first item, from the snapshot
        assert counts == [1, 2]  # the second run continued the first one's baseline
        if keyring is None:
            assert ALICE.encode() in stored(recovery)
        else:
            data = stored(recovery)
            assert ALICE.encode() not in data and SECRET_IP.encode() not in data


def test_the_entity_budget_is_per_process_split_over_the_shards() -> None:
    """enrich.max_entities bounds a process (each shard keeps its share); the older
    max_entities_per_shard still works, and setting both is reported."""
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True, shards=64)
    assert cfg.shard_cap() == 2_000  # 128,000 / 64
    assert EnrichConfig(max_entities=1_000, shards=3).shard_cap() == 334
    old = EnrichConfig(enabled=True, anomaly=True, sequences=True, max_entities_per_shard=500)
    assert old.shard_cap() == 500
    from operators.enrich.operator import ShardState

    state = ShardState(old)
    assert state.scorer.config.max_entities == 500 and state.detector.max_principals == 500
    assert ShardState(cfg).scorer.config.max_entities == 2_000
    problems: list[str] = []
    old.validate(problems)
    assert problems == []
    EnrichConfig(max_entities=0).validate(problems)
    EnrichConfig(max_entities_per_shard=-1).validate(problems)
    EnrichConfig(max_entities=10, max_entities_per_shard=5).validate(problems)
    assert len(problems) == 3
    assert "max_entities must be >= 1" in problems[0]
    assert "max_entities_per_shard must be >= 0" in problems[1]
    assert "not both" in problems[2]


def test_state_held_and_evicted_at_the_bound_are_in_the_metrics() -> None:
    """``s3sentinel_enrich_entities`` is what the process's shards hold, and
    ``s3sentinel_enrich_evicted_total`` what they dropped at ``max_entities``: an operator
    sees baselines being lost before detection quietly gets worse."""
    from prometheus_client import REGISTRY

    def sample(name: str, detector: str) -> float:
        return REGISTRY.get_sample_value(name, {"detector": detector}) or 0.0

    names = ("s3sentinel_enrich_entities", "s3sentinel_enrich_evicted_total")
    before = {(n, d): sample(n, d) for n in names for d in ("anomaly", "sequences")}
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True, shards=2, max_entities=16)
    enricher = Enricher(cfg, load_tables())
    states: dict = {}
    for u in range(30):  # each user: a principal entity, and a partial sequence (CreateUser)
        row = ct("CreateUser", RequestParameters='{"userName":"x"}',
                 UserIdentityArn=f"arn:aws:iam::111122223333:user/u{u}")
        out = enricher.enrich_batch([Rows(TRAIL, "trail:0/1", (row,),
                                          (f"abcdef0123456789-{u}",))])
        for obs in out:
            if isinstance(obs, Observed):
                states[obs.shard], _ = score_shard(enricher, cfg, states.get(obs.shard), obs)
    assert len(states) == 2
    for detector, of in (("anomaly", "scorer"), ("sequences", "detector")):
        parts = [getattr(s, of) for s in states.values()]
        held = sum(len(p) for p in parts)
        evicted = sum(p.evicted for p in parts)
        assert 0 < held <= 16 and evicted > 0, (detector, held, evicted)
        assert sample(names[0], detector) - before[(names[0], detector)] == held
        assert sample(names[1], detector) - before[(names[1], detector)] == evicted
