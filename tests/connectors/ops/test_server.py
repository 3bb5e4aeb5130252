"""The ops server of a real flow process: metrics that match what the emulator received,
readiness that flips when Sentinel refuses tokens or S3 goes away, the admin API's roles,
revocation and audit log, pausing a source, and the health table.

Then the server in-process, over real sockets on 127.0.0.1, with fake S3 and Sentinel
clients: what a client can make it hold before authentication (bodies, idle connections,
audit lines), and /readyz under concurrent callers and cross-account sources."""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connectors.ops.auth import Authorizer, Credentials, sign_jwt
from connectors.ops.health import Readiness
from connectors.ops.server import OpsServer
from dataflow.config import Config, SourceConfig, parse_config
from devstack.faultproxy import FaultProxy
from devstack.stack import LocalStack, free_port
from tests.conftest import ROOT, Seeded, flow_env, wait_for, write_config

TRAIL = "Custom-AWSCloudTrail"
HEALTH = "Custom-S3SentinelHealth_CL"
READER = "reader-secret-2b7f0c9e41d6a8"
ADMIN = "admin-secret-93c1e5f07a2d4b"
JWT_KEY = "jwt-signing-key-5d1e9a07c3b84f62e0a1"


def http(url: str, method: str = "GET", token: str | None = None,
         timeout: float = 30) -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (127.0.0.1)
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


def test_ops_server_of_a_running_flow(clean: LocalStack, seeded: Seeded, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "flow.toml", mode="continuous", partitions=2)
    port = free_port()
    proxy = FaultProxy(clean.s3_endpoint, seed=1).start()
    env = flow_env(clean, cfg, tmp_path / "errors") | {
        "S3SENTINEL__OPS__PORT": str(port),
        "S3SENTINEL__OPS__CHECK_CACHE_SECS": "0",
        "S3SENTINEL__OPS__READER_TOKENS": f'["{READER}"]',
        "S3SENTINEL__OPS__ADMIN_TOKENS": f'["{ADMIN}"]',
        "S3SENTINEL__OPS__JWT_KEY": f'"{JWT_KEY}"',
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
        status, body = http(base + "/admin/status", token=READER)
        assert status == 200 and "trail:0/2" in json.loads(body)["partitions"]
        assert http(base + "/admin/deadletters", token=READER)[0] == 200
        status, body = http(base + "/admin/replay?dry_run=1", "POST", token=READER)
        assert status == 403 and b"needs the admin role" in body
        status, body = http(base + "/admin/replay?dry_run=1", "POST", token=ADMIN)
        assert status == 200 and b"would send 0 records" in body
        jwt_admin = sign_jwt({"sub": "alice", "role": "admin", "exp": time.time() + 60},
                             JWT_KEY)
        assert http(base + "/admin/sources/trail/pause", "POST", token=jwt_admin)[0] == 200
        status, body = http(base + "/admin/status", token=jwt_admin)
        assert json.loads(body)["paused"] == ["trail"]
        assert http(base + "/admin/sources/trail/resume", "POST", token=jwt_admin)[0] == 200
        revoked = sign_jwt({"sub": "mallory", "role": "admin", "jti": "revoked-jti",
                            "exp": time.time() + 60}, JWT_KEY)
        assert http(base + "/admin/status", token=revoked)[0] == 401
        expired = sign_jwt({"sub": "bob", "role": "admin", "exp": time.time() - 1}, JWT_KEY)
        assert http(base + "/admin/status", token=expired)[0] == 401
        forged = sign_jwt({"sub": "eve", "role": "admin", "exp": time.time() + 60},
                          "another-key-" + "x" * 32)
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


# --------------------------------------------------------------------------- in-process


def ops_config(tmp_path: Path, sources: list[dict] | None = None, **ops: Any) -> Config:
    """A config whose ops server writes its audit log under ``tmp_path``."""
    return parse_config({
        "sentinel": {"endpoint": "https://dce.example", "rule_id": "dcr-1"},
        "sources": sources or [{"name": "trail", "bucket": "trail-bucket",
                                "format": "cloudtrail"}],
        "ops": {"audit_log": str(tmp_path / "audit" / "audit.jsonl"), **ops}})


class FakeS3:
    """``head_bucket`` that takes ``delay`` seconds and refuses the ``denied`` buckets."""

    def __init__(self, delay: float = 0.0, denied: frozenset[str] = frozenset()) -> None:
        self.delay = delay
        self.denied = denied
        self.heads: list[str] = []

    def head_bucket(self, Bucket: str) -> dict:  # noqa: N803 (boto3's name)
        self.heads.append(Bucket)
        time.sleep(self.delay)
        if Bucket in self.denied:
            msg = f"An error occurred (403) when calling the HeadBucket operation: {Bucket}"
            raise PermissionError(msg)
        return {}


class FakeService:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, stream: str, body: bytes) -> str:
        self.sent += 1
        return "rid"

    def close(self) -> None:
        pass


@contextlib.contextmanager
def serving(cfg: Config, credentials: Callable[[], Credentials] | None = None, *,
            client_for: Callable[[SourceConfig, str], Any] | None = None,
            service_factory: Callable[[], Any] = FakeService,
            authorizer: Authorizer | None = None,
            replay: Callable[[bool], str] = lambda dry_run: "replayed",
            dead_letters: Callable[[], Any] = lambda: None,
            clock: Callable[[], float] = time.monotonic) -> Iterator[OpsServer]:
    """A real OpsServer on a free port of 127.0.0.1, stopped at the end."""
    s3 = FakeS3()
    auth = authorizer or Authorizer(credentials or (lambda: Credentials((READER,), (ADMIN,),
                                                                        JWT_KEY)))
    readiness = Readiness(cfg.ops, cfg.sources, client_for or (lambda src, service: s3),
                          service_factory,
                          ["Custom-AWSCloudTrail"])
    server = OpsServer(cfg.ops, [s.name for s in cfg.sources], 0, auth, readiness, replay,
                       dead_letters, clock=clock).start()
    try:
        yield server
    finally:
        server.stop()


def raw(server: OpsServer, request: bytes, timeout: float = 5.0) -> bytes:
    """Send ``request`` bytes as they are; what came back until the server closed or paused."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        out = b""
        with contextlib.suppress(socket.timeout, ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
        return out


def audit_lines(cfg: Config) -> list[dict]:
    path = Path(cfg.ops.audit_log)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_large_body_is_refused_before_it_is_read(tmp_path: Path) -> None:
    cfg = ops_config(tmp_path, max_body_bytes=65536)
    replays: list[bool] = []
    with serving(cfg, replay=lambda dry: replays.append(dry) or "ran") as server:
        # A declared 400 MiB body: refused at once, with no byte of the body sent.
        head = (b"POST /admin/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + ADMIN.encode() + b"\r\nContent-Length: 419430400\r\n\r\n")
        assert raw(server, head).startswith(b"HTTP/1.1 413 ")
        # A chunked body that grows past the limit: refused once it passes it.
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        chunked = (b"POST /admin/replay HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                   + ADMIN.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 2)
        assert raw(server, chunked).startswith(b"HTTP/1.1 413 ")
        # A small body is fine.
        small = (b"POST /admin/replay HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                 b"Authorization: Bearer " + ADMIN.encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
        assert raw(server, small).startswith(b"HTTP/1.1 200 ")
    assert replays == [False]


def open_idle(server: OpsServer, n: int) -> list[socket.socket]:
    """``n`` connections that send half a request line, or nothing at all."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    idle = []
    for i in range(n):
        sock = socket.create_connection((host, int(port)), timeout=10)
        if i % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        idle.append(sock)
    return idle


@pytest.mark.parametrize(("idle", "cap"), [(150, 200), (40, 20)])
def test_idle_connections_are_closed_and_do_not_starve_healthz(tmp_path: Path, idle: int,
                                                               cap: int) -> None:
    cfg = ops_config(tmp_path, read_timeout_secs=1, max_connections=cap)
    with serving(cfg) as server:
        socks = open_idle(server, idle)
        try:
            # Liveness stays answerable: at once below the cap; past it, once the idle
            # connections ahead of it in the listen queue have timed out.
            status, body = http(server.url + "/healthz", timeout=10)
            assert status == 200 and json.loads(body)["alive"] is True
            # Idle connections are closed by the server (EOF), not held forever.
            for sock in (socks[0], socks[-1]):
                sock.settimeout(10)
                assert sock.recv(1) == b""
        finally:
            for sock in socks:
                sock.close()


def test_refused_admin_requests_are_counted_and_rate_limited_in_the_audit_log(
        tmp_path: Path) -> None:
    cfg = ops_config(tmp_path, audit_denied_max_lines=5, audit_denied_window_secs=10.0)
    now = [0.0]
    with serving(cfg, clock=lambda: now[0]) as server:
        before = scrape(server.url).get(("s3sentinel_ops_auth_failures_total",
                                         ("reason=invalid",)), 0.0)
        for _ in range(60):
            assert http(server.url + "/admin/status", token="x" * 30)[0] == 401
        assert http(server.url + "/admin/replay", "POST", token=READER)[0] == 403
        got = scrape(server.url)
        assert got[("s3sentinel_ops_auth_failures_total", ("reason=invalid",))] == before + 60
        assert got[("s3sentinel_ops_auth_failures_total", ("reason=forbidden",))] >= 1
        lines = audit_lines(cfg)
        assert len(lines) == 5 and all(a["status"] == 401 for a in lines)
        now[0] += 10  # the window ends: the next entry brings the summary with it
        assert http(server.url + "/admin/status", token=READER)[0] == 200
    lines = audit_lines(cfg)
    (summary,) = [a for a in lines if a.get("event") == "suppressed"]
    assert summary["suppressed"] == 56  # 55 refused with 401, one with 403
    assert summary["by_status_reason"] == {"401 invalid": 55, "403 forbidden": 1}
    assert lines[-1]["status"] == 200 and lines[-1]["role"] == "reader"  # always audited
    audit = Path(cfg.ops.audit_log)
    assert stat.S_IMODE(audit.stat().st_mode) == 0o600
    assert stat.S_IMODE(audit.parent.stat().st_mode) == 0o700


def test_concurrent_readyz_calls_share_one_run_of_each_check(tmp_path: Path) -> None:
    cfg = ops_config(tmp_path)
    s3 = FakeS3(delay=0.5)
    built: list[str] = []
    services: list[FakeService] = []

    def client_for(src: SourceConfig, service: str) -> FakeS3:
        built.append(f"{src.name}/{service}")
        return s3

    def service_factory() -> FakeService:
        services.append(FakeService())
        return services[-1]

    with serving(cfg, client_for=client_for, service_factory=service_factory) as server:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(
            http(server.url + "/readyz", timeout=30)[0])) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [200] * 50
    assert built == ["trail/s3"] and s3.heads == ["trail-bucket"]
    assert len(services) == 1 and services[0].sent == 1


def test_readyz_checks_each_bucket_with_the_client_of_its_source(tmp_path: Path) -> None:
    role = "arn:aws:iam::123456789012:role/reader"
    cfg = ops_config(tmp_path, sources=[
        {"name": "trail", "bucket": "home-bucket", "format": "cloudtrail"},
        {"name": "other", "bucket": "cross-bucket", "format": "cloudtrail", "role_arn": role,
         "external_id": "ext-1"}])
    home = FakeS3(denied=frozenset({"cross-bucket"}))  # the default identity cannot read it
    assumed = FakeS3()
    asked: list[tuple[str, str, str]] = []

    def client_for(src: SourceConfig, service: str) -> FakeS3:
        asked.append((src.name, src.role_arn, src.external_id))
        return assumed if src.role_arn else home

    with serving(cfg, client_for=client_for) as server:
        status, body = http(server.url + "/readyz")
    assert status == 200, body
    assert sorted(asked) == [("other", role, "ext-1"), ("trail", "", "")]
    assert home.heads == ["home-bucket"] and assumed.heads == ["cross-bucket"]


def test_a_tampered_dead_letter_file_shows_its_issues_in_the_listing(tmp_path: Path) -> None:
    import os

    from connectors.deadletter import DeadLetterStore
    from connectors.ops.crypto import Keyring

    store = DeadLetterStore(tmp_path / "errors", keyring=Keyring({"k1": os.urandom(32)}, "k1"))
    x = store.write([{"stage": "parse", "reason": "a"}, {"stage": "parse", "reason": "b"}], "x")
    y = store.write([{"stage": "parse", "reason": "c"}], "y")
    with (tmp_path / "errors" / x).open("ab") as f:  # a forged plain line
        f.write(b'{"stage": "deliver", "stream": "Custom-X", "row": "{}"}\n')
    cfg = ops_config(tmp_path)
    with serving(cfg, dead_letters=lambda: store) as server:
        status, body = http(server.url + "/admin/deadletters", token=READER)
    assert status == 200, body
    files = {f["name"]: f for f in json.loads(body)["files"]}
    assert files[y]["intact"] and files[y]["entries"] == 1
    assert not files[x]["intact"] and files[x]["entries"] == 2
    assert [i["kind"] for i in files[x]["issues"]] == ["plain"]


def test_stop_closes_the_server_even_when_its_loop_closed_its_trigger(tmp_path: Path) -> None:
    """stop() wakes the server's loop through its trigger (a pipe). If the loop closed the
    trigger already (it is ending), stop() closed nothing and raised EBADF; it now closes
    the sockets itself."""
    with serving(ops_config(tmp_path)) as server:
        host, port = server._server.effective_host, server._server.effective_port
        server._server.trigger.close()
    server._thread.join(5)
    assert not server._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=1).close()
