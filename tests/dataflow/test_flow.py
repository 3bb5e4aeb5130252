"""End to end: the real dataflow under ``python -m bytewax.run``, moto S3, the HTTPS emulator.

Each test counts what the emulator accepted against what was seeded: every record
exactly once (or, after a crash, at least once with the duplicates reported).
"""

from __future__ import annotations

import collections
import gzip
import os
import signal
import subprocess
import sys
import time
from datetime import UTC
from pathlib import Path

import orjson
import pytest

from connectors.deadletter import read_entries
from devstack.stack import LocalStack, free_port
from tests.conftest import ROOT, Seeded, flow_env, run_flow, write_config

TRAIL = "Custom-AWSCloudTrail"
APP = "Custom-AppEvents_CL"
LIMIT = 1_048_576


def _check_trail(stack: LocalStack, seeded: Seeded) -> int:
    """Assert every seeded CloudTrail record arrived, mapped; return the number of duplicates."""
    records = stack.admin().records(TRAIL)
    counts = collections.Counter(r["AwsEventId"] for r in records)
    expected = seeded.trail.event_ids
    missing = expected - counts.keys()
    assert not missing, f"{len(missing)} of {len(expected)} records missing"
    assert counts.keys() == expected, "records that were never seeded arrived"
    # Same record id for the same record: ids are deterministic.
    ids = {}
    for r in records:
        assert ids.setdefault(r["AwsEventId"], r["RecordId_CF"]) == r["RecordId_CF"]
    return sum(counts.values()) - len(expected)


def _check_requests(stack: LocalStack) -> None:
    summary = stack.admin().summary()
    for name, s in summary["streams"].items():
        assert s["max_wire_bytes"] <= LIMIT, name
        assert s["max_uncompressed_bytes"] <= 1_000_000, name
        assert s["dropped_columns"] == {}, f"{name}: columns the DCR does not declare were sent"


def test_catch_up_delivers_every_record_exactly_once(clean: LocalStack, seeded: Seeded,
                                                     tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flow.toml", app=True)
    proc = run_flow(clean, cfg, tmp_path / "errors")

    assert _check_trail(clean, seeded) == 0
    _check_requests(clean)
    # Through the DCRs `s3sentinel deploy` plans, the emulator typed every value as the
    # service would: nothing was dropped (a value that did not fit its column would be).
    summary = clean.admin().summary()
    for stream, st in summary["streams"].items():
        assert st["dropped_columns"] == {} and st["dropped_values"] == {}, (stream, st)
    assert all(t["dropped_columns"] == {} for t in summary["tables"].values()), summary["tables"]
    # Columns and TimeGenerated from the event's own time, checked against the source objects.
    s3 = clean.s3()
    obj = seeded.trail.objects[0]
    body = gzip.decompress(s3.get_object(Bucket=seeded.trail.bucket, Key=obj.key)["Body"].read())
    source = {r["eventID"]: r for r in orjson.loads(body)["Records"]}
    rows = {r["AwsEventId"]: r for r in clean.admin().records(TRAIL) if r["AwsEventId"] in source}
    assert len(rows) == obj.records
    for event_id, row in rows.items():
        src = source[event_id]
        assert row["TimeGenerated"] == src["eventTime"]
        assert row["EventName"] == src["eventName"]
        assert row["EventSource"] == src["eventSource"]
        assert row["AWSRegion"] == src["awsRegion"]
        assert row["SourceIpAddress"] == src["sourceIPAddress"]
        if src.get("requestParameters") is not None:
            assert orjson.loads(row["RequestParameters"]) == src["requestParameters"]
        if "userIdentity" in src and "arn" in src["userIdentity"]:
            assert row["UserIdentityArn"] == src["userIdentity"]["arn"]
        offset = int(row["RecordId_CF"].rsplit("-", 1)[1])
        assert list(source)[offset] == event_id  # the id names the record's offset

    # The NDJSON app log: good lines in the custom table, bad ones in the dead-letter store.
    app = clean.admin().records(APP)
    assert len(app) == seeded.app.good
    assert len({r["RecordId"] for r in app}) == seeded.app.good
    errors = read_entries(tmp_path / "errors")
    assert len(errors) == seeded.app.bad
    assert all(e["key"].startswith("app/") and e["offset"] is not None and e["reason"]
               for e in errors)
    # The process ends with its one-line summary.
    last = proc.stderr.strip().splitlines()[-1]
    assert f"delivered {seeded.trail.record_count + seeded.app.good} records" in last
    assert f"failed: {seeded.app.bad}" in last


def test_two_workers_deliver_the_same_records_once(clean: LocalStack, seeded: Seeded,
                                                   tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flow.toml", partitions=4)
    run_flow(clean, cfg, tmp_path / "errors", "-w", "2")
    assert _check_trail(clean, seeded) == 0
    _check_requests(clean)


def test_two_processes_deliver_the_same_records_once(clean: LocalStack, seeded: Seeded,
                                                     tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flow.toml", partitions=4)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    env = flow_env(clean, cfg, tmp_path / "errors")
    procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow",
                               "-i", str(i), "-a", addresses], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=240)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert _check_trail(clean, seeded) == 0
    _check_requests(clean)


def test_faults_are_retried_and_nothing_is_lost(clean: LocalStack, seeded: Seeded,
                                                tmp_path: Path) -> None:
    clean.admin().set_faults([
        {"status": 429, "retry_after_secs": 1, "count": 2},
        {"status": 503, "count": 2},
        {"drop": True, "count": 2},
        {"status": 500, "count": 1},
        {"delay_secs": 1.5, "count": 1},
    ])
    cfg = write_config(tmp_path / "flow.toml", max_bytes=200_000)
    run_flow(clean, cfg, tmp_path / "errors", "-w", "2")
    assert _check_trail(clean, seeded) == 0
    requests = clean.admin().requests()
    statuses = collections.Counter(r["status"] for r in requests)
    assert statuses[429] == 2 and statuses[503] == 2 and statuses[500] == 1
    # A retry keeps its request's x-ms-client-request-id (what DCRLogErrors reports): every
    # id that failed was accepted later under the same id, and no id was accepted twice.
    by_id: dict[str, list[int | None]] = collections.defaultdict(list)
    for r in requests:
        by_id[r["client_request_id"]].append(r["status"])
    failed = [cid for cid, seen in by_id.items() if any(s != 204 for s in seen)]
    assert failed and all(by_id[cid][-1] == 204 for cid in failed), by_id
    assert all(seen.count(204) <= 1 for seen in by_id.values())
    _check_requests(clean)


def test_terminal_error_stops_the_flow_with_a_clear_message(clean: LocalStack, seeded: Seeded,
                                                            tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flow.toml")
    env = flow_env(clean, cfg, tmp_path / "errors")
    del env["S3SENTINEL__TARGETS"]  # the single-DCR [sentinel] form, with a rule that is not there
    env["S3SENTINEL__SENTINEL__ENDPOINT"] = clean.info["endpoint"]
    env["S3SENTINEL__SENTINEL__RULE_ID"] = "dcr-unknown"
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "could not deliver" in proc.stderr and "HTTP 404" in proc.stderr
    assert "sentinel.rule_id" in proc.stderr  # says what to check


def test_resume_after_kill_loses_nothing(clean: LocalStack, seeded: Seeded,
                                         tmp_path: Path) -> None:
    """kill -9 mid-run with recovery on, restart: no record missing; duplicates are counted."""
    from bytewax.recovery import init_db_dir

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    cfg = write_config(tmp_path / "flow.toml", max_bytes=100_000, partitions=3)
    env = flow_env(clean, cfg, tmp_path / "errors")
    cmd = [sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", "2",
           "-r", str(recovery), "-s", "1", "-b", "0"]
    clean.admin().set_faults([{"delay_secs": 0.05, "count": 10_000}])  # slow enough to interrupt
    total = seeded.trail.record_count
    kills = 0
    for target in (0.25, 0.6):
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while clean.admin().summary()["total_records"] < target * total:
            assert proc.poll() is None, "the flow ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    clean.admin().set_faults([])
    run_flow(clean, cfg, tmp_path / "errors", "-w", "2", "-r", str(recovery), "-s", "1", "-b", "0")
    duplicates = _check_trail(clean, seeded)
    skipped = sum(r["record_count"] for r in clean.admin().requests() if r["status"] == 204)
    print(f"\nresume after {kills} kills: {total} records, {duplicates} duplicates "
          f"({skipped - total} records sent twice)")
    # bytewax replays what followed the last snapshot; the upload journal keeps the records
    # already accepted from being sent again. What remains is the window between a 204 and
    # its journal line: at most one request per worker per kill.
    largest = max(r["record_count"] for r in clean.admin().requests())
    assert duplicates <= kills * 2 * largest


@pytest.mark.parametrize("fmt", ["cloudtrail"])
def test_digest_files_are_skipped(clean: LocalStack, seeded: Seeded, tmp_path: Path,
                                  fmt: str) -> None:
    assert seeded.trail.digests, "the seed should include digest files"
    cfg = write_config(tmp_path / "flow.toml")
    run_flow(clean, cfg, tmp_path / "errors")
    assert not (tmp_path / "errors").exists() or read_entries(tmp_path / "errors") == []


def test_continuous_mode_delivers_objects_as_they_land(clean: LocalStack, tmp_path: Path) -> None:
    """The flow keeps polling: objects written while it runs arrive within seconds."""
    import random
    from datetime import datetime

    from devstack.samples import cloudtrail_event, cloudtrail_key, cloudtrail_object

    bucket = "e2e-live"
    s3 = clean.s3()
    s3.create_bucket(Bucket=bucket)
    cfg = tmp_path / "flow.toml"
    cfg.write_text(write_config(tmp_path / "base.toml", mode="continuous", partitions=2,
                                max_age_secs=0.5).read_text()
                   .replace('bucket = "e2e-trail"', f'bucket = "{bucket}"')
                   .replace("partitions = 2", "partitions = 2\npoll_secs = 0.5"))
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow"],
                            env=flow_env(clean, cfg, tmp_path / "errors"), cwd=ROOT,
                            stderr=subprocess.PIPE, text=True)
    rng = random.Random(5)
    latencies = []
    try:
        for i in range(4):
            when = datetime(2026, 11, 28, 10, i * 5, tzinfo=UTC)
            events = [cloudtrail_event(rng, account="111122223333", region="us-east-1", when=when)
                      for _ in range(50)]
            key = cloudtrail_key("111122223333", "us-east-1", when, rng)
            s3.put_object(Bucket=bucket, Key=key, Body=cloudtrail_object(events))
            t0 = time.monotonic()
            want = {e["eventID"] for e in events}
            while want - {r["AwsEventId"] for r in clean.admin().records(TRAIL)}:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() - t0 < 30, "an object written while running never arrived"
                time.sleep(0.1)
            latencies.append(time.monotonic() - t0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert len(clean.admin().records(TRAIL)) == 200
    print(f"\ncontinuous mode: S3 put -> accepted in {', '.join(f'{x:.1f}s' for x in latencies)}")


def test_mixed_formats_are_detected_mapped_and_bad_input_accounted(clean: LocalStack,
                                                                    tmp_path: Path) -> None:
    """One bucket, every format in its AWS key layout, format = "auto", errors to S3."""
    from devstack.formatsamples import seed_mixed
    from operators.formats.registry import DEFAULT_TABLES
    from operators.schema import load_tables

    s3 = clean.s3()
    seed = seed_mixed(s3, "e2e-mixed")
    s3.create_bucket(Bucket="e2e-dead-letter")
    cfg = tmp_path / "flow.toml"
    cfg.write_text(f"""
[sentinel]
endpoint = "https://127.0.0.1:1"
rule_id = "dcr-00000000000000000000000000000000"
credential = "managed_identity"
[batch]
max_age_secs = 0.5
[runtime]
mode = "catch_up"
errors_s3_uri = "s3://e2e-dead-letter/s3sentinel/"
[[sources]]
name = "all"
bucket = "{seed.bucket}"
format = "auto"
partitions = 2
""")
    run_flow(clean, cfg, tmp_path / "errors", "-w", "2")
    tables = load_tables()
    summary = clean.admin().summary()["streams"]
    got = {fmt: summary.get(tables[DEFAULT_TABLES[fmt]].stream, {}).get("records", 0)
           for fmt in seed.expected}
    assert got == seed.expected
    _check_requests(clean)  # includes: no column the DCR does not declare
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="e2e-dead-letter").get("Contents", [])]
    entries = [orjson.loads(line) for k in keys
               for line in s3.get_object(Bucket="e2e-dead-letter", Key=k)["Body"].read().splitlines()]
    assert len(entries) == seed.bad_records + seed.bad_objects
    by_stage = collections.Counter(e["stage"] for e in entries)
    assert by_stage == {"parse": seed.bad_records, "read": seed.bad_objects}
    assert all(e["key"] and e["reason"] for e in entries)
