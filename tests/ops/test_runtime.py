"""The ops runtime in-process against the local stack: a sustained Sentinel failure posts
exactly one alert to a real local webhook receiver, and one when it resolves; health
rows carry what the metrics counted."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import ops.runtime as runtime_mod
from dataflow.config import parse_config
from devstack.stack import LocalStack
from tests.conftest import TRAIL_BUCKET


@pytest.fixture
def receiver():
    got: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/hook", got
    srv.shutdown()


def _cfg(stack: LocalStack, tmp_path: Path, hook: str):
    return parse_config({
        "sentinel": {"endpoint": stack.info["endpoint"], "ca_file": stack.info["ca_file"],
                     "rule_id": "dcr-00000000000000000000000000000000",
                     "credential": "managed_identity"},
        "aws": {"endpoint_url": stack.s3_endpoint},
        "sources": [{"name": "trail", "bucket": TRAIL_BUCKET, "format": "cloudtrail"}],
        "runtime": {"errors_dir": str(tmp_path / "errors")},
        "ops": {"port": 0, "check_cache_secs": 0, "alert_for_secs": 0.6,
                "webhooks": [{"kind": "slack", "url": hook}],
                "health_table": "S3SentinelHealth_CL"},
    })


def test_a_sustained_failure_alerts_once_and_resolves_once(
        clean: LocalStack, seeded, tmp_path: Path, receiver, monkeypatch) -> None:
    hook, got = receiver
    for key, value in clean.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(runtime_mod, "ALERT_EVERY_SECS", 0.1)
    rt = runtime_mod.OpsRuntime(_cfg(clean, tmp_path, hook)).start()
    try:
        time.sleep(1.0)
        assert got == []  # healthy: nothing posted
        clean.admin().set_faults([{"status": 401, "count": None}])
        time.sleep(3.0)  # sustained: many failing checks, one alert
        firing = [g for g in got if "RESOLVED" not in json.dumps(g).upper()]
        assert len(firing) == 1 and "sentinel" in json.dumps(firing[0])
        clean.admin().set_faults([])
        time.sleep(2.0)
        assert len(got) == 2 and "resolved" in json.dumps(got[1]).lower()
    finally:
        rt.stop()
        clean.admin().set_faults([])


def test_health_rows_count_the_interval(clean: LocalStack, tmp_path: Path, monkeypatch) -> None:
    from dataflow import metrics
    from ops.healthtable import HealthReporter

    for key, value in clean.env().items():
        monkeypatch.setenv(key, value)
    cfg = _cfg(clean, tmp_path, "http://127.0.0.1:1/none")
    reporter = HealthReporter(cfg)
    reporter.rows(now=1000.0)
    metrics.RECORDS_READ.labels("trail").inc(7)
    metrics.ERRORS.labels("trail", "parse", "invalid_json").inc(2)
    metrics.RECORDS_DELIVERED.labels("Custom-AWSCloudTrail").inc(5)
    (row,) = reporter.rows(now=1060.0)
    assert row["RecordsRead"] == 7 and row["RecordsQuarantined"] == 2
    assert row["RecordsDelivered"] == 5 and row["IntervalSeconds"] == 60.0
    assert row["ErrorsByCode"] == {"parse/invalid_json": 2} and row["Status"] == "Warning"
    reporter.send(reporter.rows(now=1120.0))
    (sent,) = clean.admin().records("Custom-S3SentinelHealth_CL")
    assert sent["Source"] == "trail" and sent["RecordsRead"] == 0 and sent["Status"] == "Success"
