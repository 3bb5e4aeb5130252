"""Tests of the Sentinel emulator, driven by the real Azure SDK clients (no mocks)."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.identity import ManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
from azure.monitor.ingestion import LogsIngestionClient

from devstack.sentinel import EmulatorAdmin, SentinelEmulator, wait_for_info_file
from devstack.sentinel_handler import MAX_BODY_BYTES, gunzip_limited

RULE = "dcr-00000000000000000000000000000001"
ANY = "Custom-Any_CL"
TYPED = "Custom-Typed_CL"
RULES = {RULE: {ANY: None, TYPED: ["TimeGenerated", "Message", "Level"]}}
REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("emulator_env")

@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    with SentinelEmulator(
        rules=RULES, workdir=tmp_path_factory.mktemp("sentinel"), secrets={"api-key": "v1"}
    ) as em:
        yield em




def ingestion_client(em: SentinelEmulator, **kwargs: object) -> LogsIngestionClient:
    kwargs.setdefault("retry_backoff_factor", 0.01)
    return LogsIngestionClient(
        em.endpoint, credential=ManagedIdentityCredential(), connection_verify=em.ca_file, **kwargs
    )


def get_token(em: SentinelEmulator, resource: str) -> str:
    resp = requests.get(
        em.identity_endpoint, params={"api-version": "2019-08-01", "resource": resource},
        headers={"X-IDENTITY-HEADER": em.identity_header}, verify=em.ca_file, timeout=5,
    )
    resp.raise_for_status()
    return resp.json()["access_token"]


def post_raw(em: SentinelEmulator, body: bytes | Iterator[bytes], *, stream: str = ANY,
             token: str | None = "monitor", gzip_body: bool = False) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if token == "monitor":
        token = get_token(em, "https://monitor.azure.com")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if gzip_body:
        headers["Content-Encoding"] = "gzip"
    return requests.post(
        f"{em.endpoint}/dataCollectionRules/{RULE}/streams/{stream}",
        params={"api-version": "2023-01-01"}, data=body, headers=headers,
        verify=em.ca_file, timeout=10,
    )


ROWS = [{"TimeGenerated": "2024-01-01T00:00:00Z", "Message": f"m{i}", "n": i, "nested": {"a": [i]}}
        for i in range(50)]


# -- happy paths ------------------------------------------------------------------------------
def test_upload_list_stores_records_exactly(emulator: SentinelEmulator) -> None:
    ingestion_client(emulator).upload(RULE, ANY, ROWS)
    assert emulator.records(ANY) == ROWS
    (req,) = emulator.requests()
    assert (req.rule, req.stream, req.status, req.record_count) == (RULE, ANY, 204, 50)
    assert req.content_encoding == "gzip" and req.client_request_id
    assert 0 < req.wire_bytes < req.uncompressed_bytes == len(json.dumps(ROWS).encode())


def test_upload_pregzipped_and_plain_streams(emulator: SentinelEmulator) -> None:
    client = ingestion_client(emulator)
    client.upload(RULE, ANY, io.BytesIO(gzip.compress(json.dumps(ROWS[:3]).encode())))
    client.upload(RULE, ANY, io.BytesIO(json.dumps(ROWS[3:5]).encode()))
    assert emulator.records(ANY) == ROWS[:5]
    assert [r.content_encoding for r in emulator.requests()] == ["gzip", None]


def test_chunked_transfer_encoding_is_accepted(emulator: SentinelEmulator) -> None:
    payload = json.dumps(ROWS).encode()
    resp = post_raw(emulator, iter([payload[:100], payload[100:]]))
    assert resp.status_code == 204, resp.text
    assert emulator.records(ANY) == ROWS


def test_undeclared_columns_are_dropped_and_counted(emulator: SentinelEmulator) -> None:
    ingestion_client(emulator).upload(RULE, TYPED, ROWS[:4])
    assert emulator.records(TYPED) == [
        {"TimeGenerated": r["TimeGenerated"], "Message": r["Message"]} for r in ROWS[:4]
    ]
    assert emulator.dropped_columns(TYPED) == {"n": 4, "nested": 4}
    assert emulator.dropped_columns(ANY) == {}


# -- rejections ------------------------------------------------------------------------------
def test_401_without_or_with_invalid_token(emulator: SentinelEmulator) -> None:
    for token in (None, "not-a-token"):
        resp = post_raw(emulator, b"[]", token=token)
        assert resp.status_code == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer ")
        assert resp.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert emulator.records() == [] and [r.status for r in emulator.requests()] == [401, 401]


def test_403_for_token_of_another_resource(emulator: SentinelEmulator) -> None:
    resp = post_raw(emulator, b"[{}]", token=get_token(emulator, "https://vault.azure.net"))
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "InvalidAuthenticationTokenAudience"


def test_expired_token_is_rejected(tmp_path: Path) -> None:
    with SentinelEmulator(rules=RULES, workdir=tmp_path, token_ttl_secs=1) as em:
        token = get_token(em, "https://monitor.azure.com")
        assert post_raw(em, b"[]", token=token).status_code == 204
        time.sleep(1.1)
        assert post_raw(em, b"[]", token=token).status_code == 401


def test_a_token_lives_its_whole_ttl_when_issued_late_in_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A token with a 1 s ttl issued at x.999 s is still valid 10 ms later (it was expired at
    once when the expiry was rounded down to the second: test_expired_token_is_rejected then
    failed about one run in a hundred); the client is told the whole seconds."""
    from devstack import sentinel_state

    state = sentinel_state.EmulatorState(rules={}, token_ttl_secs=1, secrets={},
                                         store_records=False)
    now = [1_800_000_000.999]

    class Clock:  # the module's view of time alone: other threads keep the real clock
        def __getattr__(self, name: str) -> object:
            return getattr(time, name)

        def time(self) -> float:
            return now[0]

    monkeypatch.setattr(sentinel_state, "time", Clock())
    token, expires_on = state.issue_token("https://monitor.azure.com")
    assert expires_on == 1_800_000_001
    now[0] += 0.01
    assert state.token_info(token) == ("https://monitor.azure.com", None)
    now[0] += 1.0
    assert state.token_info(token) is None


def test_413_when_wire_body_exceeds_limit(emulator: SentinelEmulator) -> None:
    exact = b'[{"p":"' + b"a" * (MAX_BODY_BYTES - 10) + b'"}]'
    assert len(exact) == MAX_BODY_BYTES
    assert post_raw(emulator, exact).status_code == 204
    resp = post_raw(emulator, exact + b" ")
    assert resp.status_code == 413
    assert resp.headers["x-ms-error-code"] == "ContentLengthLimitExceeded"
    assert resp.json()["error"]["code"] == "ContentLengthLimitExceeded"
    assert post_raw(emulator, b"[{}]").status_code == 204  # connection still usable
    assert [r.status for r in emulator.requests()] == [204, 413, 204]
    assert emulator.requests()[1].wire_bytes == MAX_BODY_BYTES + 1


def test_413_when_uncompressed_body_exceeds_limit(emulator: SentinelEmulator) -> None:
    body = gzip.compress(b'[{"p":"' + b"a" * MAX_BODY_BYTES + b'"}]')
    assert len(body) < 10_000
    resp = post_raw(emulator, body, gzip_body=True)
    assert resp.status_code == 413
    assert resp.headers["x-ms-error-code"] == "ContentLengthLimitExceeded"
    with pytest.raises(HttpResponseError) as info:  # and through the SDK
        ingestion_client(emulator).upload(RULE, ANY, io.BytesIO(body))
    assert info.value.status_code == 413 and info.value.error.code == "ContentLengthLimitExceeded"
    assert emulator.records() == []


def test_gunzip_limited_guards_against_bombs_and_garbage() -> None:
    bomb = gzip.compress(bytes(64 * MAX_BODY_BYTES), compresslevel=1)  # 64 MiB of zeros
    started = time.process_time()  # CPU time: a loaded machine does not stretch it
    assert gunzip_limited(bomb, MAX_BODY_BYTES) is None
    assert time.process_time() - started < 0.03  # ~2 ms; all 64 MiB would take ~100 ms
    assert gunzip_limited(gzip.compress(b"[1,") + gzip.compress(b"2]"), 100) == b"[1,2]"
    with pytest.raises(ValueError):
        gunzip_limited(gzip.compress(b"[1,2,3]")[:-12], 100)
    with pytest.raises(ValueError):
        gunzip_limited(b"not gzip at all", 100)


@pytest.mark.parametrize("body", [b'{"a": 1}', b"[1, 2]", b'[{"a": 1}, "x"]', b"[{", b""])
def test_400_for_bodies_that_are_not_arrays_of_objects(emulator: SentinelEmulator,
                                                       body: bytes) -> None:
    resp = post_raw(emulator, body)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "InvalidPayload"
    assert emulator.records() == []


def test_404_for_unknown_stream_or_rule(emulator: SentinelEmulator) -> None:
    client = ingestion_client(emulator)
    with pytest.raises(ResourceNotFoundError) as info:
        client.upload(RULE, "Custom-Nope_CL", ROWS[:1])
    assert info.value.error.code == "InvalidStream"
    with pytest.raises(ResourceNotFoundError) as info:
        client.upload("dcr-unknown", ANY, ROWS[:1])
    assert info.value.error.code == "InvalidDataCollectionRule"


# -- faults ----------------------------------------------------------------------------------
def test_429_with_retry_after_is_retried_by_the_sdk(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 429, "count": 1, "retry_after_secs": 1}])
    started = time.monotonic()
    ingestion_client(emulator).upload(RULE, ANY, ROWS[:2])
    assert time.monotonic() - started >= 1.0
    assert [r.status for r in emulator.requests()] == [429, 204]
    assert emulator.records() == ROWS[:2]


def test_raw_429_and_503_without_sdk_retries(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 429, "count": 1, "retry_after_secs": 7},
                         {"status": 503, "count": 1, "stream": ANY}])
    client = ingestion_client(emulator, retry_total=0)
    with pytest.raises(HttpResponseError) as info:
        client.upload(RULE, ANY, ROWS[:1])
    assert info.value.status_code == 429
    assert info.value.response.headers["Retry-After"] == "7"
    with pytest.raises(HttpResponseError) as info:
        client.upload(RULE, ANY, ROWS[:1])
    assert info.value.status_code == 503
    client.upload(RULE, ANY, ROWS[:1])
    assert [(r.status, r.fault) for r in emulator.requests()] == [
        (429, "status"), (503, "status"), (204, None)]
    assert emulator.records() == ROWS[:1]


def test_stream_filter_only_faults_matching_stream(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 500, "count": 5, "stream": TYPED}])
    ingestion_client(emulator, retry_total=0).upload(RULE, ANY, ROWS[:1])
    assert [r.status for r in emulator.requests()] == [204]


def test_drop_closes_connection_without_response(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"drop": True, "count": 1}])
    client = ingestion_client(emulator)
    # azure-core never retries a POST after a transport error: the caller sees it at once.
    with pytest.raises((ServiceResponseError, ServiceRequestError)):
        client.upload(RULE, ANY, ROWS[:1])
    assert emulator.records() == []
    client.upload(RULE, ANY, ROWS[:1])  # the caller's own retry goes through
    assert [(r.status, r.fault) for r in emulator.requests()] == [(0, "drop"), (204, None)]
    assert emulator.records() == ROWS[:1]


def test_drop_after_accept_records_then_fails(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"drop_after_accept": True, "count": 1}])
    client = ingestion_client(emulator)
    with pytest.raises((ServiceResponseError, ServiceRequestError)):
        client.upload(RULE, ANY, ROWS[:2])
    assert emulator.records() == ROWS[:2]
    client.upload(RULE, ANY, ROWS[:2])  # a caller retry of a lost 204 duplicates, like prod
    assert emulator.records() == ROWS[:2] * 2
    assert [(r.status, r.fault) for r in emulator.requests()] == [
        (204, "drop_after_accept"), (204, None)]


def test_sdk_retries_post_only_on_500_503_504_or_retry_after(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"status": 503, "count": 2}])
    client = ingestion_client(emulator)
    client.upload(RULE, ANY, ROWS[:1])  # two 503s retried with backoff
    emulator.set_faults([{"status": 429, "count": 1}])
    with pytest.raises(HttpResponseError) as info:  # 429 without Retry-After: not retried
        client.upload(RULE, ANY, ROWS[:1])
    assert info.value.status_code == 429 and info.value.error.code == "TooManyRequests"
    assert [r.status for r in emulator.requests()] == [503, 503, 204, 429]


def test_delay_then_normal_handling(emulator: SentinelEmulator) -> None:
    emulator.set_faults([{"delay_secs": 0.3, "count": 1}])
    started = time.monotonic()
    ingestion_client(emulator).upload(RULE, ANY, ROWS[:1])
    assert time.monotonic() - started >= 0.3
    assert [(r.status, r.fault) for r in emulator.requests()] == [(204, "delay")]


def test_probabilistic_faults_are_reproducible(emulator: SentinelEmulator) -> None:
    def run() -> list[int]:
        emulator.reset()
        emulator.set_faults([{"status": 503, "probability": 0.5, "seed": 7}])
        token = get_token(emulator, "https://monitor.azure.com")
        return [post_raw(emulator, b"[{}]", token=token).status_code for _ in range(30)]

    first = run()
    assert set(first) == {204, 503}
    assert run() == first


def test_invalid_fault_specs_are_rejected(emulator: SentinelEmulator) -> None:
    for spec in ({"count": 1}, {"status": 503, "drop": True}, {"status": 200},
                 {"status": 503, "cuont": 2}, {"drop": True, "probability": 2}):
        with pytest.raises(ValueError):
            emulator.set_faults([spec])


# -- admin API, lifecycle, CLI ---------------------------------------------------------------
def test_admin_api_summary_faults_and_reset(emulator: SentinelEmulator) -> None:
    admin = EmulatorAdmin(emulator.endpoint, emulator.ca_file)
    admin.set_faults([{"status": 503, "count": 1}])
    ingestion_client(emulator).upload(RULE, TYPED, ROWS[:3])
    summary = admin.summary()
    typed = summary["streams"][TYPED]
    assert typed["records"] == 3 and typed["requests_by_status"] == {"503": 1, "204": 1}
    assert typed["max_uncompressed_bytes"] > typed["max_wire_bytes"] > 0
    assert typed["dropped_columns"] == {"n": 3, "nested": 3}
    assert summary["total_records"] == 3 and summary["total_requests"] == 2
    assert admin.records(TYPED) == emulator.records(TYPED)
    assert [r["status"] for r in admin.requests()] == [503, 204]
    with pytest.raises(Exception, match="400"):
        admin.set_faults([{"bogus": 1}])
    admin.reset()
    assert emulator.records() == [] and admin.summary()["total_requests"] == 0


def test_the_request_log_has_both_request_ids(emulator: SentinelEmulator) -> None:
    admin = EmulatorAdmin(emulator.endpoint, emulator.ca_file)
    admin.set_faults([{"status": 503, "count": 1}])
    client = ingestion_client(emulator, retry_total=0)
    with pytest.raises(HttpResponseError) as info:
        client.upload(RULE, ANY, ROWS[:1], request_id="logical-1")
    answered = info.value.response.headers["x-ms-request-id"]
    client.upload(RULE, ANY, ROWS[:1], request_id="logical-1")
    logged = admin.requests()
    assert [(r["status"], r["client_request_id"]) for r in logged] == [
        (503, "logical-1"), (204, "logical-1")]
    assert logged[0]["request_id"] == answered  # the x-ms-request-id it answered with
    assert logged[1]["request_id"] not in (None, answered)
    assert [r.request_id for r in emulator.requests()] == [r["request_id"] for r in logged]


def test_retry_after_may_be_sent_as_an_http_date(emulator: SentinelEmulator) -> None:
    import email.utils

    emulator.set_faults([{"status": 429, "count": 1, "retry_after_secs": 5,
                          "retry_after_date": True}])
    started = time.time()
    with pytest.raises(HttpResponseError) as info:
        ingestion_client(emulator, retry_total=0).upload(RULE, ANY, ROWS[:1])
    when = email.utils.parsedate_to_datetime(info.value.response.headers["Retry-After"])
    assert started + 5 <= when.timestamp() <= time.time() + 6  # + 1: the date has whole seconds


def test_stop_cuts_connections_and_restart_keeps_port(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    em = SentinelEmulator(rules=RULES, workdir=tmp_path).start()
    try:
        for key, value in em.client_env().items():
            monkeypatch.setenv(key, value)
        client = ingestion_client(em, retry_total=0)
        client.upload(RULE, ANY, ROWS[:1])
        port = em.port
        em.stop()
        with pytest.raises((ServiceRequestError, ServiceResponseError)):
            client.upload(RULE, ANY, ROWS[:1])
        em.start()
        assert em.port == port
        client.upload(RULE, ANY, ROWS[1:2])
        assert em.records() == ROWS[:2]
    finally:
        em.stop()


def test_cli_writes_info_file_and_serves_until_sigterm(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "devstack.sentinel", "--workdir", str(tmp_path),
         "--rules-json", json.dumps(RULES), "--secrets-json", '{"k": "v"}'],
        cwd=REPO, env=env, stderr=subprocess.PIPE,
    )
    try:
        info = wait_for_info_file(tmp_path / "sentinel.json", wait_secs=20)
        assert set(info) >= {"endpoint", "identity_endpoint", "identity_header", "vault_url",
                             "ca_file"}
        monkeypatch.setenv("IDENTITY_ENDPOINT", info["identity_endpoint"])
        monkeypatch.setenv("IDENTITY_HEADER", info["identity_header"])
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", info["ca_file"])
        LogsIngestionClient(info["endpoint"], ManagedIdentityCredential()).upload(
            RULE, ANY, ROWS[:3])
        admin = EmulatorAdmin(info["endpoint"], info["ca_file"])
        assert admin.records(ANY) == ROWS[:3]
        assert admin.set_secret("k", "v2")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()
    assert not (tmp_path / "sentinel.json").exists()


# -- managed identity and Key Vault ----------------------------------------------------------
def test_identity_endpoint_rejects_wrong_header(emulator: SentinelEmulator,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    resp = requests.get(emulator.identity_endpoint, verify=emulator.ca_file, timeout=5,
                        params={"api-version": "2019-08-01",
                                "resource": "https://monitor.azure.com"},
                        headers={"X-IDENTITY-HEADER": "wrong"})
    assert resp.status_code == 401
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")
    with pytest.raises(ClientAuthenticationError):  # CredentialUnavailableError subclasses it
        ManagedIdentityCredential().get_token("https://monitor.azure.com/.default")


def test_key_vault_get_secret_through_challenge_and_rotation(emulator: SentinelEmulator) -> None:
    client = SecretClient(emulator.vault_url, ManagedIdentityCredential(),
                          verify_challenge_resource=False)
    first = client.get_secret("api-key")
    assert first.value == "v1"
    assert first.id.startswith(f"{emulator.vault_url}/secrets/api-key/")
    new_version = emulator.set_secret("api-key", "v2")
    assert client.get_secret("api-key").value == "v2"
    assert client.get_secret("api-key", version=first.properties.version).value == "v1"
    assert client.get_secret("api-key").properties.version == new_version > first.properties.version
    with pytest.raises(ResourceNotFoundError) as info:
        client.get_secret("missing")
    assert info.value.error.code == "SecretNotFound"


def test_key_vault_challenge_and_audience(emulator: SentinelEmulator) -> None:
    emulator.set_secret("raw-key", "raw-value")
    url = f"{emulator.vault_url}/secrets/raw-key"
    params = {"api-version": "7.5"}
    resp = requests.get(url, params=params, verify=emulator.ca_file, timeout=5)
    assert resp.status_code == 401
    assert 'resource="https://vault.azure.net"' in resp.headers["WWW-Authenticate"]
    monitor = get_token(emulator, "https://monitor.azure.com")
    resp = requests.get(url, params=params, verify=emulator.ca_file, timeout=5,
                        headers={"Authorization": f"Bearer {monitor}"})
    assert resp.status_code == 401
    assert socket.gethostbyname("localhost")  # the cert also covers DNS:localhost
    vault = get_token(emulator, "https://vault.azure.net")
    resp = requests.get(url.replace("127.0.0.1", "localhost"), params=params, timeout=5,
                        verify=emulator.ca_file, headers={"Authorization": f"Bearer {vault}"})
    assert resp.status_code == 200 and resp.json()["value"] == "raw-value"
