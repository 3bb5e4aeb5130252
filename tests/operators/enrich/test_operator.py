"""The enrichment step: critical and intel-matching rows go to the fast lane with a
finding; the rest keep their bundle; anomaly/sequence state survives pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import orjson

from dataflow.config import EnrichConfig
from dataflow.messages import Rows
from operators.enrich.operator import FAST, Enricher, Observed, score_shard
from operators.schema import load_tables

TRAIL = "Custom-AWSCloudTrail"


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
    by_part = {(b.stream, b.partition): b for b in out if isinstance(b, Rows)}
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
