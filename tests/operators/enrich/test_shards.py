"""The side branch's shard key is the principal entity the anomaly scorer keeps baselines
for: the sessions of one role, folded to ``role/*`` by the scorer, share one shard, so one
shard (one worker) holds the role's whole baseline, and it survives a snapshot."""

from __future__ import annotations

import copy
import pickle
import zlib

import orjson

from dataflow.config import EnrichConfig
from dataflow.core.messages import Rows
from operators.enrich.anomaly import entity_keys
from operators.enrich.operator import Enricher, Observed, principal_shard, score_shard
from operators.schema import load_tables

TRAIL = "Custom-AWSCloudTrail"
ROLE = "arn:aws:sts::111122223333:assumed-role/etl-lambda/"
SESSIONS = ("i-0abc123456789def0", "i-0fedcba987654321f", "1733912345678901",
            "botocore-session-1733912345")
"""Machine-made session names: the scorer folds them all to ``etl-lambda/*``."""
FOLDED = "principal:" + ROLE + "*"


def ct(arn: str | None, minute: int, event: str = "DescribeInstances", **extra) -> bytes:
    who = {"UserIdentityArn": arn} if arn else {}
    return orjson.dumps({"TimeGenerated": f"2026-11-28T10:{minute:02d}:00Z", "EventName": event,
                         "EventSource": "ec2.amazonaws.com", "SourceIpAddress": "198.51.100.7",
                         "UserIdentityType": "AssumedRole", **who, **extra})


def observed(enricher: Enricher, rows: list[bytes], start: int = 0) -> list[Observed]:
    bundle = Rows(TRAIL, "trail:0/1", tuple(rows),
                  tuple(f"abcdef0123456789-{start + i}" for i in range(len(rows))))
    return [x for x in enricher.enrich_batch([bundle]) if isinstance(x, Observed)]


def test_sessions_of_one_role_share_a_shard() -> None:
    # The raw ARNs hash apart (the shards they went to before the fix) ...
    assert len({zlib.crc32((ROLE + s).encode()) % 64 for s in SESSIONS}) == len(SESSIONS)
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True)
    enricher = Enricher(cfg, load_tables())
    obs = observed(enricher, [ct(ROLE + s, i) for i, s in enumerate(SESSIONS)])
    # ... but the scorer's entity is one: so is the shard, with every row, in order.
    (one,) = obs
    assert [row["UserIdentityArn"] for _, _, row in one.rows] == [ROLE + s for s in SESSIONS]
    assert one.shard == principal_shard(orjson.loads(ct(ROLE + SESSIONS[0], 0)), cfg.shards)


def test_the_shard_key_is_the_scorers_principal_entity() -> None:
    """Whatever identifies the caller (a user, a human session kept apart, machine sessions,
    an access key alone, an invoking service alone, nobody), rows go to the shard of the
    principal entity the scorer makes of them, and rows of one entity to one shard."""
    n = 64
    rows = [orjson.loads(r) for r in (
        ct("arn:aws:iam::111122223333:user/alice", 0),
        ct("arn:aws:sts::111122223333:assumed-role/admin/alice", 1),  # a person: kept apart
        ct("arn:aws:sts::111122223333:assumed-role/admin/bob", 2),
        *(ct(ROLE + s, 3 + i) for i, s in enumerate(SESSIONS)),
        ct(None, 9, UserIdentityAccessKeyId="ASIAEXAMPLE0000001"),
        ct(None, 10, UserIdentityInvokedBy="ec2.amazonaws.com"),
        ct(None, 11))]
    by_entity: dict[str, set[str]] = {}
    for row in rows:
        keys = [k for k in entity_keys(row) if k.startswith("principal:")]
        entity = keys[0].removeprefix("principal:") if keys else ""
        shard = principal_shard(row, n)
        assert shard == str(zlib.crc32(entity.encode()) % n), (row, entity)
        by_entity.setdefault(entity, set()).add(shard)
    assert all(len(s) == 1 for s in by_entity.values())
    assert len(by_entity) == 7  # 4 sessions fold into one entity; alice and bob stay apart
    # The enrichment step (with its cache of shards by principal) agrees, row by row.
    enricher = Enricher(EnrichConfig(enabled=True, anomaly=True), load_tables())
    for ob in observed(enricher, [orjson.dumps(r) for r in rows] * 2):
        assert {principal_shard(row, n) for _, _, row in ob.rows} == {ob.shard}


def test_one_shard_holds_the_roles_whole_baseline_and_it_survives_a_snapshot() -> None:
    """Batches of rows from ever-new sessions of one role, scored as the flow does (a state
    per shard): one shard learns from every row; a snapshot restores it whole."""
    cfg = EnrichConfig(enabled=True, anomaly=True, sequences=True)
    enricher = Enricher(cfg, load_tables())
    states: dict[str, object] = {}
    total = 0
    for batch in range(6):
        rows = [ct(f"{ROLE}i-{batch:04x}{k:013x}", batch * 8 + k) for k in range(8)]
        total += len(rows)
        for ob in observed(enricher, rows, start=total):
            state = states.get(ob.shard)
            if state is not None:  # what bytewax keeps between epochs: a snapshot, restored
                state = pickle.loads(pickle.dumps(copy.deepcopy(state)))
            states[ob.shard], _ = score_shard(enricher, cfg, state, ob)
    holders = {shard: st.scorer.entity(FOLDED) for shard, st in states.items()
               if st.scorer.entity(FOLDED) is not None}
    assert list(holders) == [principal_shard({"UserIdentityArn": ROLE + "i-0"}, cfg.shards)]
    (entity,) = holders.values()
    assert entity.n == total  # no partial baseline elsewhere: all 48 rows in one
