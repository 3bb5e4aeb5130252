"""Who may use the admin API: bearer tokens with a role, or HS256-signed JWTs.

Two roles: ``reader`` (status, dead-letter listing) and ``admin`` (also replay, pause,
resume). Tokens come from the config (each may be a Key Vault reference, resolved on
every check through the resolver's cache, so a rotated token works without a restart).

A JWT signed with ``ops.jwt_key`` (HS256, verified by PyJWT with the algorithm pinned)
carries its role in the ``role`` claim and must carry a numeric ``exp``. It is refused
when any of its three segments is not canonical unpadded base64url (so ``=``, ``==`` or
``$$$`` appended to a revoked token gives no new token), when expired, not yet valid
(``nbf``, ``iat``), issued for longer than ``ops.jwt_max_lifetime_secs``, or revoked.

Revocation entries (``ops.revoked``, ``ops.revoked_file``) are a JWT's ``jti``, or a
:func:`revocation_id`: ``sha256:<hex>`` of a JWT's ``header.payload`` (or of a static
token). A full token listed as such is turned into its revocation id when the list is
read, and a presented token is looked up by its own id, never by its raw string, so no
re-spelling escapes. ``python -c "from connectors.ops.auth import revocation_id;
print(revocation_id('<token>'))"`` prints the id to list. Comparisons of static tokens
are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

__all__ = [
    "ROLES",
    "Authorizer",
    "Credentials",
    "Denial",
    "Principal",
    "RevocationFile",
    "canonical_jwt",
    "revocation_id",
    "revocation_ids",
    "sign_jwt",
]

log = logging.getLogger(__name__)

ROLES = ("reader", "admin")

_JWT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
_SHA_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``name`` goes to the audit log (never the token itself)."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this principal's role includes ``role`` (admin includes reader)."""
        return ROLES.index(self.role) >= ROLES.index(role)


@dataclass(frozen=True)
class Denial:
    """Why a request has no principal.

    ``reason`` is a short label (metrics, audit log): ``missing``, ``malformed``,
    ``invalid``, ``expired``, ``revoked``, ``lifetime`` (401) or ``unavailable`` (503: a
    credential could not be read, so the token cannot be judged).
    """

    reason: str
    status: int = 401


@dataclass(frozen=True)
class Credentials:
    """What tokens are checked against, as of now.

    :arg revoked: Revocation entries as configured (jti values, ``sha256:`` ids or full
        tokens); normalised by :func:`revocation_ids` when checked.
    :arg unavailable: Credentials that could not be read (Key Vault down, a weak value, an
        unreadable revocation file); a token that matches nothing else is then refused with
        503 instead of 401, and nothing is accepted while the revocation list is unknown.
    :arg revocations_known: False when the revocation list could not be read at all.
    """

    readers: tuple[str, ...] = ()
    admins: tuple[str, ...] = ()
    jwt_key: str = ""
    revoked: tuple[str, ...] = ()
    unavailable: tuple[str, ...] = ()
    revocations_known: bool = True


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def canonical_jwt(token: str) -> bool:
    """Whether ``token`` is three canonical, unpadded base64url segments.

    Canonical: decoding and encoding each segment again gives it back, so no two strings
    carry the same header, payload and signature.
    """
    if not _JWT_RE.match(token):
        return False
    for segment in token.split("."):
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        except (binascii.Error, ValueError):
            return False
        if _b64(raw) != segment:
            return False
    return True


def _sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def revocation_id(token: str) -> str:
    """The id that revokes ``token``: ``sha256:<hex>`` of a JWT's ``header.payload`` (so any
    spelling of its signature is revoked too), or of the whole token when it is no JWT."""
    token = token.strip()
    parts = token.split(".")
    if len(parts) == 3 and all(parts[:2]):
        return _sha(f"{parts[0]}.{parts[1]}")
    return _sha(token)


@functools.lru_cache(maxsize=16)
def revocation_ids(entries: tuple[str, ...]) -> frozenset[str]:
    """Normalise revocation entries: ``sha256:`` ids as they are (lower case); every other
    entry counts both as a ``jti`` and, through :func:`revocation_id`, as a token."""
    out: set[str] = set()
    for entry in entries:
        e = entry.strip()
        if not e:
            continue
        if _SHA_RE.match(e.lower()):
            out.add(e.lower())
            continue
        out.add(e)
        out.add(revocation_id(e))
    return frozenset(out)


def sign_jwt(claims: dict[str, Any], key: str) -> str:
    """An HS256 JWT (for tests and for issuing operator tokens)."""
    return jwt.encode(claims, key, algorithm="HS256")


def _fingerprint(token: str) -> str:
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


class Authorizer:
    """Checks ``Authorization: Bearer ...`` headers.

    :arg credentials: Returns the current :class:`Credentials` (called per check; may
        raise, which refuses the request with 503).
    :arg max_lifetime_secs: A JWT's ``exp - iat`` (``exp - now`` without ``iat``) may not
        exceed this; 0 turns the limit off.
    :arg leeway_secs: Clock skew allowed on ``exp``, ``nbf`` and ``iat`` (checked against
        the wall clock, as PyJWT does).
    """

    def __init__(self, credentials: Callable[[], Credentials], *,
                 max_lifetime_secs: float = 0.0, leeway_secs: float = 0.0) -> None:
        self._credentials = credentials
        self._max_lifetime = max_lifetime_secs
        self._leeway = leeway_secs
        self._logged_at = -math.inf

    def check(self, header: str | None) -> Principal | Denial:
        """The principal of a valid token, or why there is none."""
        if not header or not header.startswith("Bearer "):
            return Denial("missing")
        token = header[len("Bearer "):].strip()
        if not token or not token.isascii() or not token.isprintable() or " " in token:
            return Denial("malformed")
        try:
            creds = self._credentials()
        except Exception as ex:  # a request is answered, never dropped
            if time.monotonic() - self._logged_at >= 60:  # once a minute, not per request
                self._logged_at = time.monotonic()
                log.error("ops auth: credentials cannot be read (%s: %s)", type(ex).__name__,
                          (str(ex).splitlines() or [""])[0])
            return Denial("unavailable", 503)
        if not creds.revocations_known:
            return Denial("unavailable", 503)
        revoked = revocation_ids(tuple(creds.revoked))
        if revocation_id(token) in revoked:
            return Denial("revoked")
        raw = token.encode()
        for role, known in (("admin", creds.admins), ("reader", creds.readers)):
            if any(hmac.compare_digest(raw, t.encode()) for t in known if t):
                return Principal(_fingerprint(token), role)
        if creds.jwt_key and token.count(".") == 2:
            return self._jwt(token, creds.jwt_key, revoked)
        return Denial("unavailable", 503) if creds.unavailable else Denial("invalid")

    def _jwt(self, token: str, key: str, revoked: frozenset[str]) -> Principal | Denial:
        if not canonical_jwt(token):
            return Denial("malformed")
        try:
            claims = jwt.decode(token, key, algorithms=["HS256"], leeway=self._leeway,
                                options={"require": ["exp", "role"]})
        except jwt.ExpiredSignatureError:
            return Denial("expired")
        except jwt.InvalidTokenError:
            return Denial("invalid")
        exp = claims["exp"]
        if not _numeric(exp) or claims["role"] not in ROLES:
            return Denial("invalid")
        if claims.get("jti") is not None and str(claims["jti"]) in revoked:
            return Denial("revoked")
        if self._max_lifetime > 0:
            iat = claims.get("iat")
            start = iat if _numeric(iat) else time.time()
            if exp - start > self._max_lifetime:
                return Denial("lifetime")
        return Principal(str(claims.get("sub") or _fingerprint(token)), claims["role"])


class RevocationFile:
    """Revocation entries from a file, one a line (``#`` starts a comment), read again
    whenever the file changes (modification time, size or inode), so a token is revoked
    without a restart.

    While the file cannot be read, the entries read before are kept (and a warning
    logged); a file never read at all raises ``OSError``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._stamp: tuple[int, int, int, int] | None = None
        self._entries: tuple[str, ...] | None = None
        self._warned = False
        self._lock = threading.Lock()

    def entries(self) -> tuple[str, ...]:
        """The current entries.

        :raises OSError: The file cannot be read and never could.
        """
        with self._lock:
            try:
                st = self._path.stat()
                stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
                if stamp != self._stamp:
                    text = self._path.read_text(encoding="utf-8")
                    self._entries = tuple(_entries(text.splitlines()))
                    self._stamp = stamp
                    self._warned = False
                    log.info("ops auth: %d revocation entries read from %s",
                             len(self._entries), self._path)
            except (OSError, UnicodeDecodeError) as ex:
                if self._entries is None:
                    msg = f"revocation file {self._path} cannot be read: {ex}"
                    raise OSError(msg) from ex
                if not self._warned:  # once, not per request
                    self._warned = True
                    log.warning("ops auth: revocation file %s cannot be read (%s); keeping "
                                "the %d entries read before", self._path, ex,
                                len(self._entries))
            assert self._entries is not None, "read above, or the first failure raised"
            return self._entries


def _entries(lines: Iterable[str]) -> Iterable[str]:
    for line in lines:
        entry = line.split("#", 1)[0].strip()
        if entry:
            yield entry
