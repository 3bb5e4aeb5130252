"""Per-DCR limits and per-DCR identity of the Sentinel emulator, through the real Azure SDK.

The rules here are DCR definitions (devstack/dcrdef.py) with tiny limits and short windows,
so that throttling and recovery happen within seconds.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.exceptions import HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.monitor.ingestion import LogsIngestionClient

from devstack.sentinel import EmulatorAdmin, SentinelEmulator, wait_for_info_file

REPO = Path(__file__).resolve().parents[2]
STREAM = "Custom-Events_CL"
COLUMNS = {"TimeGenerated": "datetime", "Message": "string"}
LEGACY = "dcr-00000000000000000000000000000001"
BY_REQUESTS = "dcr-" + "1" * 32   # 2 requests a second
BY_BYTES = "dcr-" + "2" * 32      # 1,000 uncompressed bytes a second
SLOW = "dcr-" + "3" * 32          # 1 request per 3-second window
GUARDED = "dcr-" + "4" * 32       # only managed identity "client-id-x" may ingest
OPEN = "dcr-" + "5" * 32          # anyone may ingest (and default limits)


def definition(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "streams": {STREAM: COLUMNS},
            "flows": [{"streams": [STREAM], "transformKql": "source",
                       "outputStream": STREAM}], **extra}


RULES = {
    LEGACY: {STREAM: None},
    BY_REQUESTS: definition("by-requests", limits={"requests_per_min": 120, "window_secs": 1}),
    BY_BYTES: definition("by-bytes", limits={"bytes_per_min": 60_000, "window_secs": 1}),
    SLOW: definition("slow", limits={"requests_per_min": 20, "window_secs": 3}),
    GUARDED: definition("guarded", identity="client-id-x"),
    OPEN: definition("open"),
}


def rows(n: int, size: int = 10) -> list[dict[str, Any]]:
    return [{"TimeGenerated": "2024-05-01T12:00:00Z", "Message": f"{i:04d}" + "m" * size}
            for i in range(n)]


pytestmark = pytest.mark.usefixtures("emulator_env")

@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    with SentinelEmulator(rules=RULES, workdir=tmp_path_factory.mktemp("limits")) as em:
        yield em




def client(em: SentinelEmulator, *, client_id: str | None = None,
           **kwargs: Any) -> LogsIngestionClient:
    kwargs.setdefault("retry_backoff_factor", 0.01)
    return LogsIngestionClient(em.endpoint, credential=ManagedIdentityCredential(client_id=client_id),
                               connection_verify=em.ca_file, **kwargs)


# -- limits ------------------------------------------------------------------------------------
def test_request_limit_answers_429_with_retry_after_then_accepts(emulator: SentinelEmulator) -> None:
    c = client(emulator, retry_total=0)
    c.upload(BY_REQUESTS, STREAM, rows(1))
    c.upload(BY_REQUESTS, STREAM, rows(1))
    with pytest.raises(HttpResponseError) as info:
        c.upload(BY_REQUESTS, STREAM, rows(1))
    err = info.value
    assert err.status_code == 429 and err.error.code == "TooManyRequests"
    assert "2 requests per 1 s" in err.error.message and "by-requests" in err.error.message
    retry_after = int(err.response.headers["Retry-After"])
    assert retry_after == 1
    time.sleep(retry_after)
    c.upload(BY_REQUESTS, STREAM, rows(1))
    assert [r.status for r in emulator.requests()] == [204, 204, 429, 204]
    assert len(emulator.records(STREAM)) == 3

    stats = emulator.rule_stats()[BY_REQUESTS]
    assert stats["requests_by_status"] == {"204": 3, "429": 1} and stats["throttled"] == 1
    assert stats["accepted_requests"] == 3 and stats["max_window_requests"] == 2
    accepted = [r for r in emulator.requests() if r.status == 204]
    assert stats["accepted_bytes"] == sum(r.uncompressed_bytes for r in accepted)
    assert accepted[0].time <= stats["first_accept"] < stats["last_accept"]
    assert stats["last_accept"] - stats["first_accept"] >= 1.0
    assert stats["enforced"] and stats["limits"]["window_requests"] == 2


def test_the_sdk_waits_out_retry_after_and_succeeds(emulator: SentinelEmulator) -> None:
    c = client(emulator)  # default retry policy: a 429 with Retry-After is retried after it
    started = time.monotonic()
    for _ in range(3):
        c.upload(BY_REQUESTS, STREAM, rows(2))
    assert time.monotonic() - started >= 1.0
    assert [r.status for r in emulator.requests()] == [204, 204, 429, 204]
    assert len(emulator.records(STREAM)) == 6


def test_byte_limit_counts_uncompressed_bytes(emulator: SentinelEmulator) -> None:
    c = client(emulator, retry_total=0)
    batch = rows(5, size=80)  # ~600 bytes of JSON: one fits in a 1,000-byte window, two don't
    assert 500 < len(json.dumps(batch)) < 1000
    c.upload(BY_BYTES, STREAM, batch)
    with pytest.raises(HttpResponseError) as info:
        c.upload(BY_BYTES, STREAM, batch)
    assert info.value.status_code == 429
    assert "1000 uncompressed bytes per 1 s" in info.value.error.message
    assert "requests per" not in info.value.error.message
    sent = emulator.requests()
    assert sent[0].wire_bytes < 500 < sent[0].uncompressed_bytes  # gzip on the wire
    time.sleep(int(info.value.response.headers["Retry-After"]))
    c.upload(BY_BYTES, STREAM, batch)
    stats = emulator.rule_stats()[BY_BYTES]
    assert (stats["throttled"], stats["accepted_requests"]) == (1, 2)
    assert stats["max_window_bytes"] == sent[0].uncompressed_bytes  # refused bytes not counted


def test_a_request_larger_than_the_window_is_always_refused(emulator: SentinelEmulator) -> None:
    with pytest.raises(HttpResponseError) as info:
        client(emulator, retry_total=0).upload(BY_BYTES, STREAM, rows(12, size=80))
    assert info.value.status_code == 429 and info.value.response.headers["Retry-After"] == "1"
    assert emulator.rule_stats()[BY_BYTES]["accepted_requests"] == 0


def test_retry_after_is_the_time_until_the_window_has_room(emulator: SentinelEmulator) -> None:
    c = client(emulator, retry_total=0)
    t0 = time.monotonic()
    c.upload(SLOW, STREAM, rows(1))
    t1 = time.monotonic()
    time.sleep(1.2)
    t2 = time.monotonic()
    with pytest.raises(HttpResponseError) as info:
        c.upload(SLOW, STREAM, rows(1))
    t3 = time.monotonic()
    # ceil(3 - 1.2) = 2 on time; the service saw between t2 - t1 and t3 - t0 pass (a loaded
    # machine may stretch it).
    assert math.ceil(3 - (t3 - t0)) <= int(info.value.response.headers["Retry-After"]) \
        <= math.ceil(3 - (t2 - t1))
    with pytest.raises(HttpResponseError):  # refused requests did not use the budget...
        c.upload(SLOW, STREAM, rows(1))
    time.sleep(1.9)
    c.upload(SLOW, STREAM, rows(1))  # ...so the window has room once the first accept left it
    assert [r.status for r in emulator.requests()] == [204, 429, 429, 204]


def test_limits_are_per_rule_and_legacy_rules_are_unlimited(emulator: SentinelEmulator) -> None:
    c = client(emulator, retry_total=0)
    for rule in (BY_REQUESTS, BY_REQUESTS, LEGACY, LEGACY, LEGACY, OPEN, OPEN, OPEN):
        c.upload(rule, STREAM, rows(1))
    assert {r.status for r in emulator.requests()} == {204}
    stats = emulator.rule_stats()
    assert not stats[LEGACY]["enforced"] and stats[LEGACY]["form"] == "legacy"
    assert stats[LEGACY]["accepted_requests"] == 3
    assert stats[OPEN]["limits"]["requests_per_min"] == 12_000
    assert stats[OPEN]["limits"]["bytes_per_min"] == 2_000_000_000


def test_rule_stats_through_the_admin_api_summary_and_reset(emulator: SentinelEmulator) -> None:
    c = client(emulator, retry_total=0)
    c.upload(BY_REQUESTS, STREAM, rows(1))
    c.upload(BY_REQUESTS, STREAM, rows(1))
    with pytest.raises(HttpResponseError):
        c.upload(BY_REQUESTS, STREAM, rows(1))
    admin = EmulatorAdmin(emulator.endpoint, emulator.ca_file)
    remote = admin.rule_stats()
    assert set(remote) == set(RULES)
    assert remote[BY_REQUESTS]["throttled"] == 1
    assert remote[BY_REQUESTS]["requests_by_status"] == {"204": 2, "429": 1}
    assert remote[BY_REQUESTS]["name"] == "by-requests"
    summary = admin.summary()
    assert summary["rules"][BY_REQUESTS]["accepted_requests"] == 2
    assert summary["streams"][STREAM]["requests_by_status"] == {"204": 2, "429": 1}
    admin.reset()  # the window is cleared with everything else
    c.upload(BY_REQUESTS, STREAM, rows(1))
    assert emulator.rule_stats()[BY_REQUESTS]["throttled"] == 0


# -- identity ----------------------------------------------------------------------------------
def test_a_rule_with_an_identity_refuses_other_identities(emulator: SentinelEmulator) -> None:
    for client_id in ("client-id-y", None):  # another user-assigned one, the system-assigned one
        with pytest.raises(HttpResponseError) as info:
            client(emulator, client_id=client_id, retry_total=0).upload(GUARDED, STREAM, rows(1))
        err = info.value
        assert err.status_code == 403 and err.error.code == "OperationFailed"
        assert err.error.message.startswith(
            "The authentication token provided does not have access to ingest data for the "
            f"data collection rule with immutable Id '{GUARDED}'")
        assert "client-id-x" in err.error.message
    client(emulator, client_id="client-id-x").upload(GUARDED, STREAM, rows(2))
    assert [r.status for r in emulator.requests()] == [403, 403, 204]
    assert emulator.records(STREAM) == rows(2)


def test_a_rule_without_an_identity_accepts_any(emulator: SentinelEmulator) -> None:
    client(emulator, client_id="client-id-y").upload(OPEN, STREAM, rows(1))
    client(emulator).upload(OPEN, STREAM, rows(1))
    client(emulator, client_id="client-id-y").upload(LEGACY, STREAM, rows(1))
    assert [r.status for r in emulator.requests()] == [204, 204, 204]


def test_the_identity_endpoint_reports_the_client_id(emulator: SentinelEmulator) -> None:
    resp = requests.get(
        emulator.identity_endpoint, verify=emulator.ca_file, timeout=5,
        params={"api-version": "2019-08-01", "resource": "https://monitor.azure.com",
                "client_id": "client-id-x"},
        headers={"X-IDENTITY-HEADER": emulator.identity_header})
    assert resp.status_code == 200 and resp.json()["client_id"] == "client-id-x"
    token = resp.json()["access_token"]
    resp = requests.post(
        f"{emulator.endpoint}/dataCollectionRules/{GUARDED}/streams/{STREAM}",
        params={"api-version": "2023-01-01"}, data=json.dumps(rows(1)), timeout=5,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        verify=emulator.ca_file)
    assert resp.status_code == 204


# -- CLI ---------------------------------------------------------------------------------------
def test_cli_serves_dcr_definitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.sentinel", "--workdir", str(tmp_path),
         "--rules-json", json.dumps({BY_REQUESTS: RULES[BY_REQUESTS], GUARDED: RULES[GUARDED]})],
        cwd=REPO, env=env, stderr=subprocess.PIPE)
    try:
        info = wait_for_info_file(tmp_path / "sentinel.json", wait_secs=20)
        monkeypatch.setenv("IDENTITY_ENDPOINT", info["identity_endpoint"])
        monkeypatch.setenv("IDENTITY_HEADER", info["identity_header"])
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", info["ca_file"])
        c = LogsIngestionClient(info["endpoint"], ManagedIdentityCredential(client_id="client-id-x"),
                                retry_total=0)
        c.upload(GUARDED, STREAM, rows(1))
        c.upload(BY_REQUESTS, STREAM, rows(1))
        c.upload(BY_REQUESTS, STREAM, rows(1))
        with pytest.raises(HttpResponseError) as err:
            c.upload(BY_REQUESTS, STREAM, rows(1))
        assert err.value.status_code == 429
        stats = EmulatorAdmin(info["endpoint"], info["ca_file"]).rule_stats()
        assert stats[BY_REQUESTS]["throttled"] == 1 and stats[GUARDED]["identity"] == "client-id-x"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err_text = proc.communicate(timeout=10)
    assert proc.returncode == 0, err_text.decode()


def test_cli_refuses_an_invalid_definition(tmp_path: Path) -> None:
    bad = definition("too-many-flows")
    bad["flows"] = bad["flows"] * 11
    proc = subprocess.run(
        [sys.executable, "-m", "devstack.sentinel", "--workdir", str(tmp_path),
         "--rules-json", json.dumps({OPEN: bad})],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=30, check=False)
    assert proc.returncode == 2
    assert "too-many-flows" in proc.stderr and "11 dataFlows" in proc.stderr
    assert not (tmp_path / "sentinel.json").exists()
