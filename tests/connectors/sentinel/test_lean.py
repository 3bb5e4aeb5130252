"""The lean request path (``[sentinel] client = "lean"``) against the HTTPS emulator, with the
real ManagedIdentityCredential: every answer maps to the same DeliveryError as through the
SDK's LogsIngestionClient, tokens are renewed before they expire and once on a 401, TLS
trusts what the SDK's transport trusts, and environment proxies are used."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from isal import igzip

from connectors.sentinel.errors import DeliveryError
from connectors.sentinel.service import SCOPE, IngestionService
from devstack.sentinel import SentinelEmulator
from devstack.tls import make_ca_and_server_cert

RULE = "dcr-0000000000000000000000000000000a"
STREAM = "Custom-Lean_CL"


def _body(n: int, pad: int = 10) -> bytes:
    rows = [orjson.dumps({"TimeGenerated": "2026-01-01T00:00:00Z", "i": i, "pad": "x" * pad})
            for i in range(n)]
    return igzip.compress(b"[" + b",".join(rows) + b"]", compresslevel=1)


def _env(em: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
                "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    for key, value in em.client_env().items():
        monkeypatch.setenv(key, value)


class Counting:
    """A real credential, with the tokens it handed out (and the scopes asked) recorded."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tokens: list[Any] = []
        self.scopes: list[tuple[str, ...]] = []

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        info = self.inner.get_token_info(*scopes, options=options)
        self.tokens.append(info)
        self.scopes.append(scopes)
        return info

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        token = self.inner.get_token(*scopes, **kwargs)
        self.tokens.append(token)
        self.scopes.append(scopes)
        return token

    def close(self) -> None:
        self.inner.close()


def _credential() -> Counting:
    from azure.identity import ManagedIdentityCredential

    return Counting(ManagedIdentityCredential())


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelEmulator]:
    with SentinelEmulator(rules={RULE: {STREAM: None}},
                          workdir=tmp_path_factory.mktemp("lean")) as em:
        yield em


@pytest.fixture
def em(emulator: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> SentinelEmulator:
    _env(emulator, monkeypatch)
    emulator.reset()
    return emulator


def service(em: SentinelEmulator, client: str = "lean", credential: Any = None,
            **kwargs: Any) -> IngestionService:
    kwargs.setdefault("ca_file", em.ca_file)
    return IngestionService(kwargs.pop("endpoint", em.endpoint), kwargs.pop("rule", RULE),
                            credential or _credential(), client=client,  # type: ignore[arg-type]
                            **kwargs)


def refusal(svc: IngestionService, body: bytes, stream: str = STREAM) -> DeliveryError:
    with pytest.raises(DeliveryError) as info:
        svc.send(stream, body, request_id="rid-1")
    return info.value


# -- the same mapping as the SDK's ------------------------------------------------------------

ANSWERS = {
    "429 Retry-After seconds": ([{"status": 429, "retry_after_secs": 3}], _body(2), STREAM),
    "503": ([{"status": 503}], _body(2), STREAM),
    "500 with its own code": ([{"status": 500, "error_code": "Boom", "message": "m"}],
                              _body(2), STREAM),
    "408": ([{"status": 408}], _body(2), STREAM),
    "413 (injected)": ([{"status": 413}], _body(2), STREAM),
    "413 (too large)": ([], _body(3000, pad=1000), STREAM),
    "400 not an array": ([], b'{"not": "an array"}', STREAM),
    "400 bad gzip": ([], b"\x1f\x8bnot gzip at all", STREAM),
    "404 unknown stream": ([], _body(1), "Custom-Nope_CL"),
}


@pytest.mark.parametrize("name", list(ANSWERS))
def test_every_answer_maps_as_through_the_sdk(em: SentinelEmulator, name: str) -> None:
    faults, body, stream = ANSWERS[name]
    got = {}
    for client in ("sdk", "lean"):
        em.set_faults(faults)
        svc = service(em, client)
        got[client] = refusal(svc, body, stream)
        svc.close()
    sdk, lean = got["sdk"], got["lean"]
    assert lean.status is not None and lean.status >= 400
    for attr in ("status", "code", "transient", "too_large", "retry_after", "message",
                 "request_id", "correlation_id"):
        assert getattr(lean, attr) == getattr(sdk, attr), attr
    assert lean.service_request_id and lean.service_request_id != sdk.service_request_id
    assert str(lean).replace(lean.service_request_id, "?") == \
        str(sdk).replace(sdk.service_request_id, "?")
    assert lean.transient == (lean.status in (408, 429) or lean.status >= 500)
    reqs = em.requests()
    assert [r.client_request_id for r in reqs] == ["rid-1", "rid-1"]


def test_retry_after_is_read_in_seconds_and_as_a_date(em: SentinelEmulator) -> None:
    svc = service(em)
    em.set_faults([{"status": 429, "retry_after_secs": 7}])
    ex = refusal(svc, _body(1))
    assert (ex.status, ex.retry_after, ex.transient, ex.code) == (429, 7.0, True, "TooManyRequests")
    em.set_faults([{"status": 503, "retry_after_secs": 30, "retry_after_date": True}])
    ex = refusal(svc, _body(1))
    assert ex.status == 503 and ex.retry_after is not None and 28.5 <= ex.retry_after <= 31
    em.set_faults([{"status": 503}])
    assert refusal(svc, _body(1)).retry_after is None


def test_retry_after_ms_headers_are_honoured_as_the_sdk_retry_policy_does() -> None:
    """The emulator sends only Retry-After: the millisecond forms, read from headers."""
    from requests.structures import CaseInsensitiveDict

    from connectors.sentinel.service import _retry_after

    def h(**kv: str) -> CaseInsensitiveDict[str]:
        return CaseInsensitiveDict({k.replace("_", "-"): v for k, v in kv.items()})

    assert _retry_after(h(retry_after_ms="1500")) == 1.5
    assert _retry_after(h(x_ms_retry_after_ms="250")) == 0.25
    assert _retry_after(h(Retry_After="2", retry_after_ms="1500")) == 2.0  # Retry-After first
    assert _retry_after(h(retry_after_ms="soon")) is None
    assert _retry_after(h()) is None


def test_a_too_large_body_is_too_large(em: SentinelEmulator) -> None:
    ex = refusal(service(em), _body(3000, pad=1000))
    assert ex.too_large and ex.status == 413 and not ex.transient
    assert ex.code == "ContentLengthLimitExceeded"


def test_an_accepted_body_returns_the_request_id_with_the_sdk_headers(em: SentinelEmulator) -> None:
    svc = service(em)
    assert svc.send(STREAM, _body(3), request_id="abc") == "abc"
    rid = svc.send(STREAM, b'[{"i": 9}]')  # not gzipped: sent without Content-Encoding
    reqs = em.requests()
    assert [(r.status, r.client_request_id, r.content_encoding) for r in reqs] == [
        (204, "abc", "gzip"), (204, rid, None)]
    assert [r["i"] for r in em.records(STREAM)] == [0, 1, 2, 9]


# -- tokens -----------------------------------------------------------------------------------


def test_a_token_is_reused_until_it_nears_expiry(em: SentinelEmulator) -> None:
    cred = _credential()
    svc = service(em, credential=cred)
    for _ in range(3):
        svc.send(STREAM, _body(1))
    assert len(cred.tokens) == 1 and cred.scopes == [(SCOPE,)]
    assert SCOPE == "https://monitor.azure.com/.default"


@pytest.fixture
def short_lived(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SentinelEmulator]:
    """An emulator whose tokens live 200 s: always within the 300 s refresh window."""
    with SentinelEmulator(rules={RULE: {STREAM: None}}, workdir=tmp_path,
                          token_ttl_secs=200) as em:
        _env(em, monkeypatch)
        yield em


def test_a_token_within_300s_of_expiry_is_renewed_before_the_request(
        short_lived: SentinelEmulator) -> None:
    cred = _credential()
    svc = service(short_lived, credential=cred)
    for _ in range(3):
        svc.send(STREAM, _body(1))
    assert len(cred.tokens) == 3  # asked again before each request
    assert all(t.expires_on - time.time() < 300 for t in cred.tokens)
    assert [r.status for r in short_lived.requests()] == [204, 204, 204]


def test_an_expired_token_is_never_sent(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with SentinelEmulator(rules={RULE: {STREAM: None}}, workdir=tmp_path,
                          token_ttl_secs=2) as em:
        _env(em, monkeypatch)
        cred = _credential()
        svc = service(em, credential=cred)
        svc.send(STREAM, _body(1))
        time.sleep(2.2)  # the first token has expired at the emulator
        svc.send(STREAM, _body(1))
        assert [r.status for r in em.requests()] == [204, 204]  # no 401 on the way
        assert len({t.token for t in cred.tokens}) == 2


def test_a_401_takes_a_new_token_and_sends_once_more(em: SentinelEmulator) -> None:
    cred = _credential()
    svc = service(em, credential=cred)
    svc.send(STREAM, _body(1), request_id="warm")
    em.reset()
    em.set_faults([{"status": 401, "error_code": "InvalidAuthenticationToken"}])
    assert svc.send(STREAM, _body(2), request_id="r401") == "r401"
    reqs = em.requests()
    assert [(r.status, r.client_request_id) for r in reqs] == [(401, "r401"), (204, "r401")]
    assert len(cred.tokens) == 2  # the refused token was dropped, the credential asked again
    assert [r["i"] for r in em.records(STREAM)] == [0, 1]


def test_a_second_401_is_the_answer(em: SentinelEmulator) -> None:
    cred = _credential()
    svc = service(em, credential=cred)
    em.set_faults([{"status": 401, "error_code": "InvalidAuthenticationToken", "count": 2}])
    ex = refusal(svc, _body(1))
    assert (ex.status, ex.code, ex.transient) == (401, "InvalidAuthenticationToken", False)
    assert [r.status for r in em.requests()] == [401, 401]  # one more try, not a loop
    assert len(cred.tokens) == 2


def test_an_unreachable_identity_endpoint_is_transient_as_through_the_sdk(
        em: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"https://127.0.0.1:{port}/msi/token")
    got = [refusal(service(em, client), _body(1)) for client in ("sdk", "lean")]
    assert got[1].status is None and got[1].transient
    assert [(e.status, e.code, e.transient) for e in got] == [(None, got[1].code, True)] * 2
    assert em.requests() == []


def test_refresh_on_is_honoured_as_azure_core_does() -> None:
    from azure.core.credentials import AccessToken, AccessTokenInfo

    from connectors.sentinel.service import _should_refresh

    now = 1_000_000.0
    assert not _should_refresh(AccessToken("t", int(now) + 301), 0, now)
    assert _should_refresh(AccessToken("t", int(now) + 299), 0, now)
    assert not _should_refresh(AccessToken("t", int(now) + 250), 60, now)  # jitter: later
    assert _should_refresh(AccessToken("t", int(now)), 60, now)  # expired: always
    info = AccessTokenInfo("t", int(now) + 3000, refresh_on=int(now) - 1)
    assert _should_refresh(info, 0, now)  # the credential asked for an early refresh
    assert not _should_refresh(AccessTokenInfo("t", int(now) + 3000, refresh_on=int(now) + 10),
                               0, now)


def test_credential_failures_map_alike(em: SentinelEmulator,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_HEADER", "wrong")  # the identity endpoint refuses it
    got = [refusal(service(em, client), _body(1)) for client in ("sdk", "lean")]
    assert [(e.status, e.code, e.transient) for e in got] == [(None, "credential", True)] * 2
    assert got[0].message == got[1].message


# -- no response ------------------------------------------------------------------------------


def test_a_dropped_connection_is_transient_and_the_next_request_reconnects(
        em: SentinelEmulator) -> None:
    svc = service(em)
    svc.send(STREAM, _body(1))  # a pooled keep-alive connection
    em.set_faults([{"drop": True}])
    ex = refusal(svc, _body(1))
    assert (ex.status, ex.code, ex.transient, ex.request_id) == (None, "connection", True, "rid-1")
    assert svc.send(STREAM, _body(1))
    assert [r.status for r in em.requests()] == [204, 0, 204]


def test_a_closed_port_is_transient(em: SentinelEmulator) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = refusal(service(em, endpoint=f"https://127.0.0.1:{port}"), _body(1))
    assert (ex.status, ex.code, ex.transient) == (None, "connection", True)


def test_the_read_timeout_applies(em: SentinelEmulator) -> None:
    em.set_faults([{"delay_secs": 3}])
    svc = service(em, timeout_secs=0.5)
    t0 = time.monotonic()
    ex = refusal(svc, _body(1))
    assert time.monotonic() - t0 < 2.9  # the emulator answers after 3 s
    assert (ex.status, ex.code, ex.transient) == (None, "connection", True)
    assert "timed out" in ex.message.lower()
    deadline = time.monotonic() + 10  # the emulator finishes the request it was slow on
    while not em.requests() and time.monotonic() < deadline:
        time.sleep(0.05)


# -- TLS --------------------------------------------------------------------------------------


def test_tls_trusts_the_configured_ca_file_only(em: SentinelEmulator, tmp_path: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_ca_and_server_cert(tmp_path / "other")  # a CA that did not sign the emulator
    cred = _credential()
    cred.get_token_info(SCOPE)  # the token first (its endpoint is the emulator's too)
    ex = refusal(service(em, credential=cred, ca_file=str(other.ca_file)), _body(1))
    assert (ex.status, ex.code, ex.transient) == (None, "connection", True)
    assert "certificate verify failed" in ex.message.lower()
    assert em.requests() == []  # refused before anything was sent
    assert service(em, credential=cred).send(STREAM, _body(1))  # the emulator's CA: trusted


def test_tls_without_ca_file_trusts_requests_ca_bundle_like_the_sdk(
        em: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = _credential()
    cred.get_token_info(SCOPE)
    assert service(em, credential=cred, ca_file=None).send(STREAM, _body(1))  # from the env
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    for client in ("sdk", "lean"):  # certifi's bundle: the test CA is not in it
        ex = refusal(service(em, client, credential=cred, ca_file=None), _body(1))
        assert (ex.status, ex.code, ex.transient) == (None, "connection", True), client
        assert "certificate verify failed" in ex.message.lower(), client
    assert [r.status for r in em.requests()] == [204]


# -- proxies ----------------------------------------------------------------------------------


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that records the tunnels it opened."""

    def __init__(self) -> None:
        self.tunnels: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            head += chunk
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            conn.close()
            return
        self.tunnels.append(target)
        host, port = target.rsplit(":", 1)
        up = socket.create_connection((host, int(port)))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        socks = [conn, up]
        try:
            while True:
                ready, _, _ = select.select(socks, [], [], 10)
                if not ready:
                    break
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    (up if s is conn else conn).sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            up.close()

    def close(self) -> None:
        self._sock.close()


def test_the_environment_proxy_is_used_and_no_proxy_bypasses_it(
        em: SentinelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    cred = _credential()
    cred.get_token_info(SCOPE)  # the token fetched directly: only the ingestion is proxied
    proxy = ConnectProxy()
    try:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        assert os.environ.get("NO_PROXY")  # 127.0.0.1 is bypassed, as requests does
        service(em, credential=cred).send(STREAM, _body(1))
        assert proxy.tunnels == []
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv("no_proxy")
        svc = service(em, credential=cred)
        svc.send(STREAM, _body(1))
        svc.send(STREAM, _body(1))
        assert proxy.tunnels == [em.endpoint.removeprefix("https://")]  # one pooled tunnel
        assert [r.status for r in em.requests()] == [204, 204, 204]
    finally:
        proxy.close()


def test_an_unknown_client_is_refused() -> None:
    with pytest.raises(ValueError, match="client must be"):
        IngestionService("https://x.example", RULE, object(), client="curl")  # type: ignore[arg-type]
