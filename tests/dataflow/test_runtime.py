"""The ops runtime in-process against the local stack: a sustained Sentinel failure posts
exactly one alert to a real local webhook receiver, and one when it resolves; health
rows carry what the metrics counted. Then, offline, how it feeds the ops server's
credentials (Key Vault references, weak values, revocation lists) and readiness."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import dataflow.runtime as runtime_mod
from connectors.ops.auth import sign_jwt
from connectors.ops.secrets import SecretResolver
from dataflow.config import parse_config
from devstack.stack import LocalStack
from tests.conftest import TRAIL_BUCKET, wait_for
from tests.connectors.ops.test_server import ADMIN, JWT_KEY, http


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
        "sentinel": {"ca_file": stack.info["ca_file"]},
        "targets": stack.targets(),
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
        wait_for(lambda: len(got) >= 1, 30, "the alert")
        time.sleep(2.0)  # sustained: many more failing checks, still one alert
        firing = [g for g in got if "RESOLVED" not in json.dumps(g).upper()]
        assert len(firing) == 1 and "sentinel" in json.dumps(firing[0])
        clean.admin().set_faults([])
        wait_for(lambda: len(got) >= 2, 30, "the recovery")
        time.sleep(0.5)
        assert len(got) == 2 and "resolved" in json.dumps(got[1]).lower()
    finally:
        rt.stop()
        clean.admin().set_faults([])


def test_health_rows_count_the_interval(clean: LocalStack, tmp_path: Path, monkeypatch) -> None:
    from dataflow.core import metrics
    from dataflow.healthtable import HealthReporter

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


# ----------------------------------------------------- credentials and readiness wiring


class FakeVault:
    """A ``SecretClient``-like Key Vault: ``values`` by name; a name set to an exception
    raises it (Key Vault down, no such secret)."""

    def __init__(self, values: dict[str, object]) -> None:
        self.values = values
        self.version = 0

    def get_secret(self, name: str):
        value = self.values[name]
        if isinstance(value, Exception):
            raise value
        self.version += 1
        return types.SimpleNamespace(value=value,
                                     properties=types.SimpleNamespace(version=str(self.version)))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _offline_cfg(tmp_path: Path, **ops):
    return parse_config({
        "sentinel": {"endpoint": "https://dce.example", "rule_id": "dcr-1"},
        "sources": [{"name": "trail", "bucket": "trail-bucket", "format": "cloudtrail"}],
        "ops": {"port": 0, "audit_log": str(tmp_path / "audit.jsonl"),
                "keyvault_url": "https://vault.example", **ops},
    })


@contextlib.contextmanager
def _runtime(cfg, vault: FakeVault | None = None, clock: Clock | None = None):
    """The real OpsRuntime and its server; Key Vault replaced by ``vault`` (no network)."""
    rt = runtime_mod.OpsRuntime(cfg, port=0)
    rt.secrets = SecretResolver(client=vault or FakeVault({}), ttl_secs=60,
                                clock=clock or Clock())
    rt.start()
    try:
        yield rt, rt.server.url
    finally:
        rt.stop()


def _audit(cfg) -> list[dict]:
    return [json.loads(line) for line in Path(cfg.ops.audit_log).read_text().splitlines()]


def test_key_vault_down_while_the_jwt_key_is_read_is_a_503_and_audited(tmp_path: Path) -> None:
    cfg = _offline_cfg(tmp_path, jwt_key="keyvault:jwt-key", admin_tokens=[ADMIN])
    vault = FakeVault({"jwt-key": ConnectionError("vault unreachable")})
    with _runtime(cfg, vault) as (_, url):
        jwt = sign_jwt({"sub": "alice", "role": "admin", "exp": time.time() + 60}, JWT_KEY)
        assert http(url + "/admin/status", token=jwt)[0] == 503
        assert http(url + "/admin/status", token=ADMIN)[0] == 200  # static tokens still work
        vault.values["jwt-key"] = JWT_KEY  # back (the breaker is half-open after 30 s)
    statuses = [(a["status"], a.get("reason")) for a in _audit(cfg)]
    assert statuses == [(503, "unavailable"), (200, None)]


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_weak_secret_from_key_vault_is_refused(tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cfg = _offline_cfg(tmp_path, reader_tokens=["keyvault:reader"], jwt_key="keyvault:jwt-key")
    vault = FakeVault({"reader": "short-token", "jwt-key": "short-key"})
    with _runtime(cfg, vault) as (_, url):
        assert http(url + "/admin/status", token="short-token")[0] == 503
        weak_jwt = sign_jwt({"role": "admin", "exp": time.time() + 60}, "short-key")
        assert http(url + "/admin/status", token=weak_jwt)[0] == 503
    text = caplog.text
    assert "ops.reader_tokens[0] (keyvault:reader) is refused: too weak: 11 characters" in text
    assert "ops.jwt_key[0] (keyvault:jwt-key) is refused: too weak: 9 bytes" in text
    assert "short-token" not in text and "short-key" not in text


def test_the_revocation_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    revoked = tmp_path / "revoked.txt"
    cfg = _offline_cfg(tmp_path, jwt_key=JWT_KEY, revoked_file=str(revoked))
    jwt = sign_jwt({"sub": "alice", "role": "admin", "exp": time.time() + 600, "jti": "j-1"},
                   JWT_KEY)
    with _runtime(cfg) as (_, url):
        assert http(url + "/admin/status", token=jwt)[0] == 503  # never read: refuse all
        revoked.write_text("# revoked tokens\n")
        assert http(url + "/admin/status", token=jwt)[0] == 200
        revoked.write_text("# revoked tokens\nj-1  # leaked in a ticket\n")
        assert http(url + "/admin/status", token=jwt)[0] == 401
        revoked.write_text(f"{jwt}\n")  # the full token, as old configs listed it
        assert http(url + "/admin/status", token=jwt + "==")[0] == 401
        revoked.write_text("")
        assert http(url + "/admin/status", token=jwt)[0] == 200
        revoked.unlink()  # gone after it was read: the last entries are kept
        assert http(url + "/admin/status", token=jwt)[0] == 200


def test_revocations_from_key_vault_follow_the_secret_ttl(tmp_path: Path) -> None:
    cfg = _offline_cfg(tmp_path, jwt_key=JWT_KEY, revoked=["keyvault:revoked", "j-0"])
    vault = FakeVault({"revoked": ""})
    clock = Clock()
    jwt = sign_jwt({"sub": "alice", "role": "admin", "exp": time.time() + 600, "jti": "j-1"},
                   JWT_KEY)
    with _runtime(cfg, vault, clock) as (_, url):
        assert http(url + "/admin/status", token=jwt)[0] == 200
        vault.values["revoked"] = "j-9\nj-1"
        assert http(url + "/admin/status", token=jwt)[0] == 200  # cached for the TTL
        clock.now += 61
        assert http(url + "/admin/status", token=jwt)[0] == 401  # no restart needed


def test_readiness_checks_a_bucket_with_its_sources_role(tmp_path: Path, monkeypatch) -> None:
    role = "arn:aws:iam::123456789012:role/trail-reader"
    cfg = parse_config({
        "sentinel": {"endpoint": "https://dce.example", "rule_id": "dcr-1"},
        "sources": [{"name": "trail", "bucket": "cross-bucket", "format": "cloudtrail",
                     "role_arn": role, "external_id": "ext-9"}],
        "ops": {"port": 0, "check_cache_secs": 0}})
    made: list[tuple[str, str]] = []

    class S3:
        def head_bucket(self, Bucket: str) -> None:  # noqa: N803 (boto3's name)
            pass

    def s3_client(aws, role_arn: str = "", external_id: str = "") -> S3:
        made.append((role_arn, external_id))
        return S3()

    import connectors.aws as aws_mod

    monkeypatch.setattr(aws_mod, "s3_client", s3_client)  # what client_for builds with
    monkeypatch.setattr(runtime_mod, "Probe", lambda cfg: None)
    rt = runtime_mod.OpsRuntime(cfg, port=None)
    assert rt.readiness.run()["s3"].ok
    rt.readiness.run()
    assert made == [(role, "ext-9")]  # the source's role, built once
