"""Enrichment end to end: a critical CloudTrail record and its finding reach Sentinel through
the fast lane while the object's other records still wait for their (long) batch age."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from devstack.samples import cloudtrail_event, cloudtrail_key, cloudtrail_object
from devstack.stack import LocalStack
from tests.conftest import ROOT, flow_env, wait_for

TRAIL = "Custom-AWSCloudTrail"
FINDINGS = "Custom-S3SentinelFindings_CL"
SENTINEL = """[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
"""  # endpoints come from the environment (flow_env)


def test_critical_records_take_the_fast_lane(clean: LocalStack, tmp_path: Path) -> None:
    bucket = "e2e-fast-lane"
    s3 = clean.s3()
    s3.create_bucket(Bucket=bucket)
    cfg = tmp_path / "flow.toml"
    cfg.write_text(f"""
{SENTINEL}[batch]
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
        when = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
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


def test_enrichment_columns_reach_the_tables_the_dcr_declares(tmp_path: Path) -> None:
    """Standard tables with ``standard_tables = "columns"`` and a custom table: every row
    carries its priority, flagged rows their reasons, on streams declared exactly as
    ``s3sentinel dcr`` exports them (the emulator drops undeclared columns, as the service
    does)."""
    from dataflow.config import load_config
    from dataflow.dcr import dcr_template
    from dataflow.tables import tables_for

    rules = tmp_path / "app-rules.toml"
    rules.write_text('[[rules]]\nid = "app-denied"\ntable = "AppEvents_CL"\npriority = "high"\n'
                     'reason = "{UserName} was denied"\nmatch = { Status = 403 }\n')
    cfg = tmp_path / "flow.toml"
    cfg.write_text(f"""
{SENTINEL}[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
[enrich]
enabled = true
standard_tables = "columns"
rule_files = ["{rules}"]
[[sources]]
name = "trail"
bucket = "cols-trail"
prefix = "AWSLogs/"
format = "cloudtrail"
[[sources]]
name = "app"
bucket = "cols-app"
format = "ndjson"
table = "AppEvents_CL"
[[tables]]
name = "AppEvents_CL"
columns = [
  {{ name = "TimeGenerated", type = "datetime", source = "ts", required = true }},
  {{ name = "UserName", type = "string", source = "user" }},
  {{ name = "Status", type = "int", source = "status" }},
]
""")
    tables = tables_for(load_config(cfg, environ={}))
    arm = dcr_template(tables.values())
    with LocalStack(tmp_path / "stack", template=arm, tables=tables) as stack:
        s3 = stack.s3()
        for b in ("cols-trail", "cols-app"):
            s3.create_bucket(Bucket=b)
        rng = random.Random(5)
        when = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
        events = [cloudtrail_event(rng, account="111122223333", region="us-east-1", when=when)
                  for _ in range(40)]
        for e in events:
            if e["eventSource"] == "cloudtrail.amazonaws.com":
                e["eventName"] = "LookupEvents"
        events[3] = {k: v for k, v in events[3].items() if k not in ("errorCode", "errorMessage")
                     } | {"eventName": "StopLogging", "eventSource": "cloudtrail.amazonaws.com"}
        s3.put_object(Bucket="cols-trail", Key=cloudtrail_key("111122223333", "us-east-1", when, rng),
                      Body=cloudtrail_object(events))
        lines = [{"ts": "2026-11-28T10:00:00Z", "user": f"u{i}", "status": 403 if i % 5 == 0
                  else 200} for i in range(20)]
        s3.put_object(Bucket="cols-app", Key="app/1.ndjson",
                      Body=b"\n".join(json.dumps(x).encode() for x in lines))
        subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                       env=flow_env(stack, cfg, tmp_path / "errors"), cwd=ROOT, check=True,
                       capture_output=True, timeout=120)
        admin = stack.admin()
        trail = admin.records(TRAIL)
        assert len(trail) == 40
        assert all(r["EnrichmentPriority_CF"] for r in trail)
        (tamper,) = [r for r in trail if r["EventName"] == "StopLogging"]
        assert tamper["EnrichmentPriority_CF"] == "critical"
        assert tamper["EnrichmentRuleIds_CF"] == ["ct-cloudtrail-tamper"]
        app = admin.records("Custom-AppEvents_CL")
        assert sorted(r["EnrichmentPriority"] for r in app) == ["high"] * 4 + ["normal"] * 16
        assert {r["UserName"] for r in app if r["EnrichmentPriority"] == "high"} == {
            "u0", "u5", "u10", "u15"}
        assert all(r["EnrichmentReasons"] == [f"{r['UserName']} was denied"]
                   for r in app if r["EnrichmentPriority"] == "high")
        assert admin.records(FINDINGS) == []  # the columns carry it: no findings rows
        streams = admin.summary()["streams"]
        assert streams[TRAIL]["dropped_columns"] == {}
        assert streams["Custom-AppEvents_CL"]["dropped_columns"] == {}


def _trail(ts: datetime, name: str, source: str, ip: str, ua: str) -> dict:
    return {"eventVersion": "1.09", "eventTime": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventName": name, "eventSource": f"{source}.amazonaws.com",
            "awsRegion": "us-east-1", "sourceIPAddress": ip, "userAgent": ua,
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/alice",
                             "accountId": "111122223333", "principalId": "AIDAEXAMPLE"},
            "recipientAccountId": "111122223333", "readOnly": name.startswith("Describe"),
            "eventID": f"{ts.timestamp():.0f}-{name}", "eventType": "AwsApiCall"}


def _anomaly_findings(admin) -> list[dict]:  # noqa: ANN001 - the emulator's admin client
    return [f for f in admin.records(FINDINGS) if f["Detector"] == "anomaly"]


def _committed(recovery: Path) -> int:
    """The epoch bytewax's recovery store (one partition) has committed; -1: none yet."""
    import contextlib
    import sqlite3

    with contextlib.closing(sqlite3.connect(recovery / "part-0.sqlite3")) as db:
        row = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()
    return -1 if row is None or row[0] is None else int(row[0])


def _run_until(cmd: list[str], env: dict, log: Path, done) -> subprocess.Popen:  # noqa: ANN001 (the emulator's admin client)
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("a"),
                            stderr=subprocess.STDOUT)
    t0 = time.monotonic()
    while not done():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 60, "timed out: " + log.read_text()[-3000:]
        time.sleep(0.2)
    return proc


def test_anomaly_baselines_survive_a_kill(clean: LocalStack, tmp_path: Path) -> None:
    """Four days of alice's routine, a kill -9 once it is delivered, her objects deleted:
    after the restart, her first StopLogging from a new network is scored anomalous, which
    only a baseline restored from the recovery snapshot can do (a fresh flow shown only the
    last object keeps her in warm-up and scores nothing)."""
    from bytewax.recovery import init_db_dir

    s3 = clean.s3()
    admin = clean.admin()
    office, cli = "198.51.100.7", "aws-cli/2.15.30 Python/3.11.8 Linux/6.1 exe/x86_64"
    start = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
    history = [_trail(start + timedelta(hours=2 * i), ["DescribeInstances", "DescribeVpcs"][i % 2],
                      "ec2", office, cli) for i in range(60)]  # 5 days, 60 events
    attack = [_trail(start + timedelta(days=5, hours=1), "StopLogging", "cloudtrail",
                     "203.0.113.9", "Boto3/1.34.0 Python/3.12.1 Linux/5.10")]

    def run(name: str, bucket: str, objects: list[list[dict]], recovery: Path,
            restart_with: list[dict] | None = None) -> None:
        s3.create_bucket(Bucket=bucket)
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text(f"""
{SENTINEL}[batch]
max_age_secs = 0.3
[runtime]
mode = "continuous"
[enrich]
enabled = true
anomaly = true
fast_lane_secs = 0.2
[[sources]]
name = "trail"
bucket = "{bucket}"
prefix = "AWSLogs/"
format = "cloudtrail"
poll_secs = 0.2
""")
        keys = [f"AWSLogs/111122223333/CloudTrail/us-east-1/2026/11/2{i}/obj{i}.json.gz"
                for i in range(len(objects))]
        for key, events in zip(keys, objects, strict=True):
            s3.put_object(Bucket=bucket, Key=key, Body=cloudtrail_object(events))
        env = flow_env(clean, cfg, tmp_path / f"{name}-errors")
        cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow",
               "-r", str(recovery), "-s", "1", "-b", "0"]
        want = sum(map(len, objects))
        proc = _run_until(cmd, env, tmp_path / f"{name}.log",
                          lambda: len(admin.records(TRAIL)) >= want)
        if restart_with is None:
            time.sleep(1.0)  # delivered; the check below is on a settled flow
            proc.kill()
            proc.wait()
            return
        # A snapshot after the last row was scored: three epochs (1 s) committed past the
        # one committed when its delivery was seen (a loaded machine may lag behind).
        epoch = _committed(recovery) + 3
        wait_for(lambda: _committed(recovery) >= epoch, 30, f"epoch {epoch} committed")
        proc.kill()  # SIGKILL: no shutdown hook runs
        proc.wait()
        for key in keys:  # the history is gone from S3: only the snapshot holds it
            s3.delete_object(Bucket=bucket, Key=key)
        s3.put_object(Bucket=bucket, Key=keys[-1].replace("obj", "late"),
                      Body=cloudtrail_object(restart_with))
        proc = _run_until(cmd, env, tmp_path / f"{name}.log",
                          lambda: len(admin.records(TRAIL)) >= want + len(restart_with))
        try:
            t0 = time.monotonic()
            while not _anomaly_findings(admin) and time.monotonic() - t0 < 5:
                time.sleep(0.1)
        finally:
            proc.kill()
            proc.wait()

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    run("restart", "baselines-restart", [history[:30], history[30:]], recovery,
        restart_with=attack)
    assert len(admin.records(TRAIL)) == 61
    findings = _anomaly_findings(admin)
    assert [f["EventName"] for f in findings] == ["StopLogging"], findings
    assert findings[0]["AnomalyScore"] >= 0.8
    assert any("first call of cloudtrail:StopLogging" in r for r in findings[0]["Reasons"])

    admin.reset()  # control: the same row to a flow with no history scores nothing
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    init_db_dir(fresh, 1)
    run("control", "baselines-control", [attack], fresh)
    assert [r["EventName"] for r in admin.records(TRAIL)] == ["StopLogging"]
    assert _anomaly_findings(admin) == []


def _alb_line(ts: datetime, alb: str, status: int, path: str) -> bytes:
    from devstack.formatsamples import ALB_LINES

    line = ALB_LINES[0].replace(b"2026-11-01T22:23:00.186641Z",
                                ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode(), 1)
    line = line.replace(b"app/my-loadbalancer/50dc6c495c0c9188", alb.encode(), 1)
    line = line.replace(b" 200 200 34 366 ", f" {status} {status} 34 366 ".encode(), 1)
    return line.replace(b"http://www.example.com:80/ ", f"http://www.example.com:80/{path} "
                        .encode(), 1)


def test_a_5xx_burst_of_one_load_balancer_is_counted_across_workers(
        clean: LocalStack, tmp_path: Path) -> None:
    """alb_5xx_burst (a sequence grouped by the Alb column): 60 5xx answers of one load
    balancer within a minute, in two objects that two workers read, make one finding; 40 of
    another make none. Only a count kept per load balancer, whichever worker read the rows,
    gets there."""
    import gzip

    from connectors.s3.discovery import shard_of

    bucket = "e2e-alb-burst"
    s3 = clean.s3()
    s3.create_bucket(Bucket=bucket)
    t0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
    web, api = "app/web/1111111111111111", "app/api/2222222222222222"

    def obj(alb: str, start: int, fives: int, oks: int) -> bytes:
        lines = [_alb_line(t0 + timedelta(seconds=(start + i) * 0.4), alb,
                           502 if i < fives else 200, f"p{i}") for i in range(fives + oks)]
        return gzip.compress(b"\n".join(lines) + b"\n")

    # Keys that the two source partitions split between them.
    keys = [f"alb/{n}.log.gz" for n in range(40)]
    even = [k for k in keys if shard_of(k, 2) == 0]
    odd = [k for k in keys if shard_of(k, 2) == 1]
    s3.put_object(Bucket=bucket, Key=even[0], Body=obj(web, 0, 30, 10))
    s3.put_object(Bucket=bucket, Key=odd[0], Body=obj(web, 40, 30, 10))
    s3.put_object(Bucket=bucket, Key=even[1], Body=obj(api, 0, 40, 5))
    cfg = tmp_path / "flow.toml"
    cfg.write_text(f"""
{SENTINEL}[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
[enrich]
enabled = true
sequences = true
[[sources]]
name = "alb"
bucket = "{bucket}"
prefix = "alb/"
format = "alb"
table = "AWSALBAccessLogs_CL"
partitions = 2
""")
    subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", "2"],
                   env=flow_env(clean, cfg, tmp_path / "errors"), cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    admin = clean.admin()
    assert len(admin.records("Custom-AWSALBAccessLogs_CL")) == 125
    bursts = [f for f in admin.records(FINDINGS) if f["SequenceId"] == "alb_5xx_burst"]
    assert len(bursts) == 1, bursts
    (burst,) = bursts
    assert burst["SourceTable"] == "AWSALBAccessLogs_CL" and burst["Priority"] == "high"
    assert burst["Detector"] == "sequence"
    assert burst["Reasons"] and web in burst["Reasons"][0] and "50 requests" in burst["Reasons"][0]
