"""Enrichment end to end: a critical CloudTrail record and its finding reach Sentinel through
the fast lane while the object's other records still wait for their (long) batch age."""

from __future__ import annotations

import random
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from devstack.samples import cloudtrail_event, cloudtrail_key, cloudtrail_object
from devstack.stack import LocalStack
from tests.conftest import ROOT, flow_env

TRAIL = "Custom-AWSCloudTrail"
FINDINGS = "Custom-S3SentinelFindings_CL"


def test_critical_records_take_the_fast_lane(clean: LocalStack, tmp_path: Path) -> None:
    bucket = "e2e-fast-lane"
    s3 = clean.s3()
    s3.create_bucket(Bucket=bucket)
    cfg = tmp_path / "flow.toml"
    cfg.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
[batch]
max_age_secs = 8
[runtime]
mode = "continuous"
[enrich]
enabled = true
fast_lane_secs = 0.2
[[sources]]
name = "trail"
bucket = "{bucket}"
prefix = "AWSLogs/"
format = "cloudtrail"
poll_secs = 0.2
""")
    log = (tmp_path / "flow.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                            env=flow_env(clean, cfg, tmp_path / "errors"), cwd=ROOT,
                            stdout=log, stderr=log)
    admin = clean.admin()
    try:
        time.sleep(2.0)  # started and caught up on an empty bucket
        rng = random.Random(3)
        when = datetime(2026, 11, 28, 10, 0, tzinfo=timezone.utc)
        events = [cloudtrail_event(rng, account="111122223333", region="us-east-1", when=when)
                  for _ in range(30)]
        for e in events:
            if e["eventName"] in ("StopLogging", "DeleteTrail"):
                e["eventName"] = "DescribeInstances"
        events[7] = {k: v for k, v in events[7].items() if k not in ("errorCode", "errorMessage")
                     } | {"eventName": "StopLogging", "eventSource": "cloudtrail.amazonaws.com"}
        key = cloudtrail_key("111122223333", "us-east-1", when, rng)
        s3.put_object(Bucket=bucket, Key=key, Body=cloudtrail_object(events))
        t0 = time.monotonic()
        while not admin.records(FINDINGS):
            assert proc.poll() is None, (tmp_path / "flow.log").read_text()[-3000:]
            assert time.monotonic() - t0 < 15, "the finding never arrived"
            time.sleep(0.05)
        latency = time.monotonic() - t0
        trail = admin.records(TRAIL)
        # Only the critical record came through the fast lane; the rest wait for 8 s.
        assert [r["EventName"] for r in trail] == ["StopLogging"]
        (finding,) = admin.records(FINDINGS)
        assert finding["Priority"] == "critical" and finding["Detector"] == "rules"
        assert finding["SourceRecordId"] == trail[0]["RecordId_CF"]
        assert any("StopLogging" in r or "logging" in r.lower() for r in finding["Reasons"])
        print(f"\nfast lane: S3 put -> critical record and finding accepted in {latency:.2f}s "
              "(normal lane batch age 8 s)")
        while len(admin.records(TRAIL)) < 30:
            assert time.monotonic() - t0 < 40, "the normal lane never delivered"
            time.sleep(0.2)
        assert len({r["RecordId_CF"] for r in admin.records(TRAIL)}) == 30  # each once
    finally:
        proc.kill()
        proc.wait()
