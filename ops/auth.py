"""Who may use the admin API: bearer tokens with a role, or HS256-signed JWTs.

Two roles: ``reader`` (status, dead-letter listing) and ``admin`` (also replay, pause,
resume). Tokens come from the config (each may be a Key Vault reference, resolved on
every check through the resolver's cache, so a rotated token works without a restart).
A JWT signed with ``ops.jwt_key`` (HS256) carries its role in the ``role`` claim and is
refused when expired (``exp``), not yet valid (``nbf``) or revoked (its ``jti`` listed in
``ops.revoked``). Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson

__all__ = ["ROLES", "Authorizer", "Principal", "sign_jwt"]

ROLES = ("reader", "admin")


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``name`` goes to the audit log (never the token itself)."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_jwt(claims: dict, key: str) -> str:
    """An HS256 JWT (for tests and for issuing operator tokens)."""
    head = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT"}))
    body = _b64(orjson.dumps(claims))
    sig = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(sig)}"


def _fingerprint(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


class Authorizer:
    """Checks ``Authorization: Bearer ...`` headers.

    :arg tokens: Returns the current (reader tokens, admin tokens, jwt key, revoked).
    """

    def __init__(self, tokens: Callable[[], tuple[list[str], list[str], str, list[str]]],
                 clock: Callable[[], float] = time.time) -> None:
        self._tokens = tokens
        self._clock = clock

    def check(self, header: str | None) -> Principal | None:
        """The principal of a valid token, or None."""
        if not header or not header.startswith("Bearer "):
            return None
        token = header[len("Bearer "):].strip()
        readers, admins, jwt_key, revoked = self._tokens()
        if any(hmac.compare_digest(token, r) for r in revoked if r):
            return None
        for role, known in (("admin", admins), ("reader", readers)):
            if any(hmac.compare_digest(token, t) for t in known if t):
                return Principal(_fingerprint(token), role)
        if jwt_key and token.count(".") == 2:
            return self._jwt(token, jwt_key, revoked)
        return None

    def _jwt(self, token: str, key: str, revoked: list[str]) -> Principal | None:
        head, body, sig = token.split(".")
        want = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
        try:
            if not hmac.compare_digest(_unb64(sig), want):
                return None
            header, claims = orjson.loads(_unb64(head)), orjson.loads(_unb64(body))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if header.get("alg") != "HS256" or claims.get("role") not in ROLES:
            return None
        now = self._clock()
        if "exp" in claims and now >= float(claims["exp"]):
            return None
        if "nbf" in claims and now < float(claims["nbf"]):
            return None
        if claims.get("jti") and claims["jti"] in revoked:
            return None
        return Principal(str(claims.get("sub") or _fingerprint(token)), claims["role"])
