"""The ops server of a real flow process: metrics that match what the emulator received,
readiness that flips when Sentinel refuses tokens or S3 goes away, the admin API's roles,
revocation and audit log, pausing a source, and the health table."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from devstack.faultproxy import FaultProxy
from devstack.stack import LocalStack, free_port
from ops.auth import sign_jwt
from tests.conftest import ROOT, Seeded, flow_env, write_config

TRAIL = "Custom-AWSCloudTrail"
HEALTH = "Custom-S3SentinelHealth_CL"


def http(url: str, method: str = "GET", token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 (127.0.0.1)
            return resp.status, resp.read()
    except urllib.error.HTTPError as ex:
        return ex.code, ex.read()


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    _, body = http(base + "/metrics")
    out: dict[tuple[str, tuple], float] = {}
    for line in body.decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name_labels, value = line.rsplit(" ", 1)
        name, _, labels = name_labels.partition("{")
        pairs = tuple(sorted(p.split("=", 1)[0] + "=" + p.split("=", 1)[1].strip('"')
                             for p in labels.rstrip("}").split(",") if p)) if labels else ()
        out[(name, pairs)] = float(value)
    return out


def wait_for(cond, secs: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + secs
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_ops_server_of_a_running_flow(clean: LocalStack, seeded: Seeded, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flow.toml", mode="continuous", partitions=2)
    port = free_port()
    proxy = FaultProxy(clean.s3_endpoint, seed=1).start()
    env = flow_env(clean, cfg, tmp_path / "errors") | {
        "S3SENTINEL__OPS__PORT": str(port),
        "S3SENTINEL__OPS__CHECK_CACHE_SECS": "0",
        "S3SENTINEL__OPS__READER_TOKENS": '["reader-secret-1"]',
        "S3SENTINEL__OPS__ADMIN_TOKENS": '["admin-secret-1"]',
        "S3SENTINEL__OPS__JWT_KEY": '"jwt-signing-key"',
        "S3SENTINEL__OPS__REVOKED": '["revoked-jti"]',
        "S3SENTINEL__OPS__AUDIT_LOG": str(tmp_path / "audit.jsonl"),
        "S3SENTINEL__OPS__HEALTH_TABLE": '"S3SentinelHealth_CL"',
        "S3SENTINEL__OPS__HEALTH_INTERVAL_SECS": "1",
        "S3SENTINEL__AWS__ENDPOINT_URL": proxy.endpoint,
    }
    log = (tmp_path / "flow.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "bytewax.run", "dataflow.flow:flow", "-w", "2"],
                            env=env, cwd=ROOT, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    admin = clean.admin()
    total = seeded.trail.record_count
    def delivered() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the flow exited ({proc.returncode}):\n"
                        f"{(tmp_path / 'flow.log').read_text()[-3000:]}")
        return admin.summary()["streams"].get(TRAIL, {}).get("records", 0) >= total

    try:
        wait_for(delivered, what="every record delivered")
        time.sleep(1.5)
        # Metrics match what the emulator received.
        got = scrape(base)
        accepted = sum(1 for _ in admin.records(TRAIL))
        assert accepted == total
        assert got[("s3sentinel_records_delivered_total", (f"stream={TRAIL}",))] == total
        ok_requests = sum(1 for r in admin.requests() if r["stream"] == TRAIL and r["status"] == 204
                          and r["record_count"] > 0)
        assert got[("s3sentinel_requests_total", ("status=204", f"stream={TRAIL}"))] >= ok_requests
        objects = len(seeded.trail.objects)
        assert got[("s3sentinel_objects_total", ("outcome=completed", "source=trail"))] == objects
        assert got[("s3sentinel_records_read_total", ("source=trail",))] == total
        assert ("s3sentinel_request_seconds_bucket", ("le=+Inf", f"stream={TRAIL}")) in got
        # Freshness: every object accounted for, so nothing is waiting; a lag was measured
        # (the seeded objects arrived before the flow started, so it is positive).
        for part in ("trail:0/2", "trail:1/2"):
            labels = (f"partition={part}", "source=trail")
            assert got[("s3sentinel_oldest_undelivered_seconds", labels)] == 0
            assert got[("s3sentinel_lag_seconds", labels)] > 0
        assert got[("s3sentinel_event_delay_seconds_count", (f"stream={TRAIL}",))] >= ok_requests
        assert got[("s3sentinel_objects_listed_total", ("source=trail",))] == objects

        status, body = http(base + "/healthz")
        assert status == 200 and json.loads(body)["alive"] is True
        status, body = http(base + "/readyz")
        assert status == 200, body
        # Sentinel refuses tokens: not ready, and the body says which check and why.
        admin.set_faults([{"status": 401, "count": None}])
        status, body = http(base + "/readyz")
        doc = json.loads(body)
        assert status == 503 and doc["failed"] == ["sentinel"]
        assert "401" in doc["checks"]["sentinel"]["detail"]
        admin.set_faults([])
        assert http(base + "/readyz")[0] == 200
        # S3 goes away.
        proxy.set(drop=1.0)
        status, body = http(base + "/readyz")
        assert status == 503 and json.loads(body)["failed"] == ["s3"]
        proxy.set()
        assert http(base + "/readyz")[0] == 200

        # Admin API: roles, JWTs, revocation.
        assert http(base + "/admin/status")[0] == 401
        assert http(base + "/admin/status", token="wrong")[0] == 401
        status, body = http(base + "/admin/status", token="reader-secret-1")
        assert status == 200 and "trail:0/2" in json.loads(body)["partitions"]
        assert http(base + "/admin/deadletters", token="reader-secret-1")[0] == 200
        status, body = http(base + "/admin/replay?dry_run=1", "POST", token="reader-secret-1")
        assert status == 403 and b"needs the admin role" in body
        status, body = http(base + "/admin/replay?dry_run=1", "POST", token="admin-secret-1")
        assert status == 200 and b"would send 0 records" in body
        jwt_admin = sign_jwt({"sub": "alice", "role": "admin", "exp": time.time() + 60},
                             "jwt-signing-key")
        assert http(base + "/admin/sources/trail/pause", "POST", token=jwt_admin)[0] == 200
        status, body = http(base + "/admin/status", token=jwt_admin)
        assert json.loads(body)["paused"] == ["trail"]
        assert http(base + "/admin/sources/trail/resume", "POST", token=jwt_admin)[0] == 200
        revoked = sign_jwt({"sub": "mallory", "role": "admin", "jti": "revoked-jti"},
                           "jwt-signing-key")
        assert http(base + "/admin/status", token=revoked)[0] == 401
        expired = sign_jwt({"sub": "bob", "role": "admin", "exp": time.time() - 1},
                           "jwt-signing-key")
        assert http(base + "/admin/status", token=expired)[0] == 401
        forged = sign_jwt({"sub": "eve", "role": "admin"}, "another-key")
        assert http(base + "/admin/status", token=forged)[0] == 401

        # Health rows in Sentinel, through the same ingestion path.
        wait_for(lambda: admin.records(HEALTH), secs=20, what="health rows")
        row = admin.records(HEALTH)[-1]
        assert row["Source"] == "trail" and row["Stream"] == TRAIL
        assert row["Status"] in ("Success", "Warning", "Failure") and row["ProcessId"] == proc.pid
    finally:
        proc.kill()
        proc.wait()
        proxy.stop()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    by_status = collections.Counter((a["path"], a["status"]) for a in audit)
    assert by_status[("/admin/replay", 403)] == 1 and by_status[("/admin/replay", 200)] == 1
    assert {a["principal"] for a in audit if a["status"] == 200} >= {"alice"}
    assert not any("secret" in json.dumps(a) for a in audit)  # fingerprints, never tokens
