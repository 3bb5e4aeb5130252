"""Admin API tokens against the real ops server on 127.0.0.1: strict JWTs (canonical
base64url, a numeric exp, a lifetime limit), revocation that no re-spelling of a token
escapes, and refusals that are answered and audited, never dropped."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

import orjson
import pytest

from connectors.ops.auth import Authorizer, Credentials, canonical_jwt, revocation_id, sign_jwt
from connectors.ops.secrets import SecretError
from tests.connectors.ops.test_server import (
    ADMIN,
    JWT_KEY,
    READER,
    audit_lines,
    http,
    ops_config,
    raw,
    serving,
)

SUFFIXES = ["", "=", "==", "$$$"]


def creds(revoked: tuple[str, ...] = ()) -> Credentials:
    return Credentials((READER,), (ADMIN,), JWT_KEY, revoked)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(claims: bytes, key: str = JWT_KEY) -> str:
    """A correctly signed HS256 JWT around any payload bytes (PyJWT would refuse to make
    some of them)."""
    head = b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = b64(claims)
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def admin_jwt(**claims: object) -> str:
    return sign_jwt({"sub": "alice", "role": "admin", "exp": time.time() + 600, **claims},
                    JWT_KEY)


@pytest.mark.parametrize("by", ["full token", "jti", "sha256 id"])
def test_a_revoked_jwt_stays_revoked_whatever_is_appended(tmp_path: Path, by: str) -> None:
    token = admin_jwt(jti="jti-7")
    entry = {"full token": token, "jti": "jti-7", "sha256 id": revocation_id(token)}[by]
    other = admin_jwt(jti="jti-8")
    with serving(ops_config(tmp_path), lambda: creds((entry,))) as server:
        assert http(server.url + "/admin/status", token=other)[0] == 200
        for suffix in SUFFIXES:
            status, _ = http(server.url + "/admin/status", token=token + suffix)
            assert status == 401, f"revoked by {by}, suffix {suffix!r}: {status}"
    reasons = [a["reason"] for a in audit_lines(ops_config(tmp_path)) if a["status"] == 401]
    assert reasons[0] == "revoked" and len(reasons) == len(SUFFIXES)


@pytest.mark.parametrize("suffix", SUFFIXES[1:])
def test_a_valid_jwt_is_refused_with_anything_appended(tmp_path: Path, suffix: str) -> None:
    token = admin_jwt()
    with serving(ops_config(tmp_path), creds) as server:
        assert http(server.url + "/admin/status", token=token)[0] == 200
        assert http(server.url + "/admin/status", token=token + suffix)[0] == 401


def test_each_segment_must_be_canonical_base64url(tmp_path: Path) -> None:
    token = admin_jwt()
    head, body, sig = token.split(".")
    # The last character of a 32-byte signature carries 2 unused bits: another letter with
    # the same top bits decodes to the same bytes, so a lenient decoder takes it.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(sig[-1])
    twin = f"{head}.{body}.{sig[:-1]}{alphabet[last ^ 1]}"
    assert base64.urlsafe_b64decode(twin.split(".")[2] + "=") == \
        base64.urlsafe_b64decode(sig + "=")
    assert canonical_jwt(token) and not canonical_jwt(twin)
    with serving(ops_config(tmp_path), lambda: creds((token,))) as server:
        assert http(server.url + "/admin/status", token=twin)[0] == 401
    with serving(ops_config(tmp_path), creds) as server:
        assert http(server.url + "/admin/status", token=twin)[0] == 401


@pytest.mark.parametrize("claims", [
    b'{"sub":"x","role":"admin"}',                      # no exp: would never expire
    b'{"sub":"x","role":"admin","exp":"nan"}',
    b'{"sub":"x","role":"admin","exp":NaN}',
    b'{"sub":"x","role":"admin","exp":"99999999999"}',  # a string, not a NumericDate
    b'{"sub":"x","role":"admin","exp":null}',
    b'{"sub":"x","role":"root","exp":99999999999}',     # no such role
])
def test_a_jwt_needs_a_numeric_exp_and_a_known_role(tmp_path: Path, claims: bytes) -> None:
    with serving(ops_config(tmp_path), creds) as server:
        assert http(server.url + "/admin/status",
                    token=forge(b'{"sub":"x","role":"admin","exp":99999999999}'))[0] == 200
        assert http(server.url + "/admin/status", token=forge(claims))[0] == 401


def test_a_jwt_may_not_outlive_the_maximum_lifetime(tmp_path: Path) -> None:
    now = time.time()
    cfg = ops_config(tmp_path)
    with serving(cfg, authorizer=Authorizer(creds, max_lifetime_secs=3600)) as server:
        def status(**claims: float) -> int:
            return http(server.url + "/admin/status", token=admin_jwt(**claims))[0]

        assert status(iat=now, exp=now + 3000) == 200
        assert status(iat=now, exp=now + 7200) == 401
        assert status(exp=now + 3000) == 200          # no iat: exp - now
        assert status(exp=now + 7200) == 401
        assert status(iat=now - 7000, exp=now + 600) == 401  # issued for too long
    assert [a["reason"] for a in audit_lines(cfg) if a["status"] == 401] == ["lifetime"] * 3


def test_revocation_ids_name_a_token_and_not_its_spelling() -> None:
    token = admin_jwt()
    assert {revocation_id(token + s) for s in SUFFIXES} == {revocation_id(token)}
    assert revocation_id(token).startswith("sha256:") and token not in revocation_id(token)
    assert revocation_id(READER) != revocation_id(ADMIN)


def test_a_non_ascii_token_is_refused_and_audited(tmp_path: Path) -> None:
    cfg = ops_config(tmp_path)
    with serving(cfg, creds) as server:
        got = raw(server, b"GET /admin/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Authorization: Bearer t\xc3\xa9st-\xff-token\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 401 ")
        assert http(server.url + "/admin/status", token=READER)[0] == 200  # still serving
    (refused, ok) = audit_lines(cfg)
    assert (refused["status"], refused["reason"], refused["principal"]) == (401, "malformed",
                                                                             None)
    assert ok["status"] == 200


def test_credentials_that_cannot_be_read_are_a_503_with_an_audit_line(tmp_path: Path) -> None:
    def down() -> Credentials:
        msg = "Key Vault secret 'jwt' cannot be read (ServiceRequestError: connection refused)"
        raise SecretError(msg)

    cfg = ops_config(tmp_path)
    with serving(cfg, down) as server:
        status, body = http(server.url + "/admin/status", token=admin_jwt())
        assert status == 503 and b"cannot be checked" in body
        assert b"connection refused" not in body  # details go to the log, not to the caller
    (line,) = audit_lines(cfg)
    assert (line["status"], line["reason"]) == (503, "unavailable")


def test_an_unreadable_credential_makes_an_unknown_token_a_503(tmp_path: Path) -> None:
    partial = Credentials((READER,), (ADMIN,), "", (), unavailable=("ops.jwt_key[0]",))
    with serving(ops_config(tmp_path), lambda: partial) as server:
        assert http(server.url + "/admin/status", token=READER)[0] == 200
        assert http(server.url + "/admin/status", token=admin_jwt())[0] == 503
    unknown = Credentials((READER,), (ADMIN,), "", (), unavailable=("ops.revoked[0]",),
                          revocations_known=False)
    with serving(ops_config(tmp_path / "2"), lambda: unknown) as server:
        # The revocation list is unknown: nothing is accepted, not even a static token.
        assert http(server.url + "/admin/status", token=READER)[0] == 503
