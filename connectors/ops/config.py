"""The ``[ops]`` section: metrics, health, admin API, alerts, secrets and logs."""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["OpsConfig", "WebhookConfig"]


@dataclass(frozen=True)
class WebhookConfig:
    """Where alerts are posted (for teams without Alertmanager)."""

    kind: Literal["teams", "slack"]
    url: str
    """Incoming-webhook URL; may be a ``keyvault:<secret-name>`` reference."""


@dataclass(frozen=True)
class OpsConfig:
    """Metrics, health, admin API, alerts, secrets and logs."""

    port: int = 9464
    """Port of the ops HTTP server (/metrics, /healthz, /readyz, /admin/*); process i of a
    multi-process flow listens on port + i (see port_per_process). 0 turns the server off."""
    port_per_process: bool = True
    """Process i serves on port + i, so processes sharing a host do not collide; false when
    each process has a network namespace of its own (Kubernetes pods: every pod's probes
    and scrape target name the same port)."""
    bind: str = "127.0.0.1"
    """Address the ops server listens on (0.0.0.0 to be scraped from elsewhere)."""
    open_metrics: bool = True
    """Serve /metrics, /healthz and /readyz without a token (admin routes always need one)."""
    reader_tokens: list[str] = field(default_factory=list)
    """Bearer tokens for read-only admin routes (each may be ``keyvault:<name>``); a literal
    token has at least 24 printable ASCII characters."""
    admin_tokens: list[str] = field(default_factory=list)
    """Bearer tokens for admin routes that change something (replay, pause, resume)."""
    jwt_key: str = ""
    """HS256 key (at least 32 bytes; may be ``keyvault:<name>``): signed JWTs with a ``role``
    claim (reader/admin) and a numeric ``exp`` are accepted too."""
    jwt_max_lifetime_secs: float = 0.0
    """A JWT's ``exp - iat`` (``exp - now`` without ``iat``) may not exceed this; 0: no limit."""
    revoked: list[str] = field(default_factory=list)
    """Revoked JWT ``jti`` values, ``sha256:<hex>`` ids (of a JWT's ``header.payload``, or of a
    static token), or full tokens (turned into their id when read). An entry may be
    ``keyvault:<name>`` (a secret holding entries separated by white space), read again
    every ``secret_ttl_secs``."""
    revoked_file: str = ""
    """A file of more revocation entries, one a line (``#`` comments), read again whenever it
    changes; while it has never been readable, admin requests are refused with 503."""
    audit_log: str = ".s3sentinel/audit.jsonl"
    """Every admin request (who, what, outcome) is appended here (0600, in a 0700 directory)."""
    audit_denied_max_lines: int = 20
    """Refused admin requests (401, 403, 503) audited per ``audit_denied_window_secs``; the rest
    are counted in one summary line (and all in s3sentinel_ops_auth_failures_total)."""
    audit_denied_window_secs: float = 10.0
    max_body_bytes: int = 65536
    """Largest request body the ops server reads (admin requests carry none); larger: 413."""
    read_timeout_secs: float = 10.0
    """A connection of the ops server that sends nothing for this long is closed (whole
    seconds, at least 1)."""
    max_connections: int = 200
    """Open connections the ops server holds; more wait in the listen queue until one closes."""
    max_lag_secs: float = 900.0
    """/readyz fails when the oldest undelivered object is older than this."""
    stuck_secs: float = 600.0
    """/readyz fails when a partition with work has made no progress for this long."""
    check_cache_secs: float = 15.0
    """Readiness checks that call S3 or Azure are cached this long."""
    keyvault_url: str = ""
    """Azure Key Vault for ``keyvault:`` references (https://<vault>.vault.azure.net)."""
    keyvault_verify_challenge_resource: bool = True
    """Check that Key Vault's auth challenge names a vault domain; turn off only for a
    private test stack served from another host name."""
    secret_ttl_secs: float = 300.0
    """Secrets are fetched again after this long, so a rotation is picked up."""
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per log line; secrets and PII patterns redacted either way."""
    health_table: str = ""
    """Write connector health rows to this table once a minute (e.g. S3SentinelHealth_CL); empty
    turns it off."""
    health_interval_secs: float = 60.0
    webhooks: list[WebhookConfig] = field(default_factory=list)
    alert_for_secs: float = 120.0
    """A failing readiness check alerts after it has failed this long (and resolves likewise)."""

    MIN_TOKEN_CHARS: typing.ClassVar[int] = 24
    MIN_JWT_KEY_BYTES: typing.ClassVar[int] = 32
    _SECRET_FIELDS: typing.ClassVar[tuple[str, ...]] = (
        "reader_tokens", "admin_tokens", "jwt_key", "revoked", "webhooks")

    def __repr__(self) -> str:
        # Tokens, the JWT key, revocation entries and webhook URLs are secrets: a repr (in a
        # log line, a traceback, a debugger) shows only how many there are.
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in self._SECRET_FIELDS:
                shown = (f"<{len(value)} redacted>" if isinstance(value, list)
                         else "<redacted>" if value else "''")
                parts.append(f"{f.name}={shown}")
            else:
                parts.append(f"{f.name}={value!r}")
        return f"OpsConfig({', '.join(parts)})"

    @staticmethod
    def secret_weakness(value: str, *, key: bool = False) -> str:
        """Why ``value`` is too weak for a bearer token (``key``: an HS256 key), or ''.

        Checked at config validation for literal values and when a ``keyvault:`` reference
        is resolved; the message never contains the value.
        """
        if key:
            n = len(value.encode())
            if n < OpsConfig.MIN_JWT_KEY_BYTES:
                return (f"{n} bytes; an HS256 key needs at least {OpsConfig.MIN_JWT_KEY_BYTES} "
                        "random bytes (e.g. python -c 'import secrets; "
                        "print(secrets.token_urlsafe(48))')")
            return ""
        if not (value.isascii() and value.isprintable()) or " " in value:
            return "not printable ASCII without spaces (it cannot be sent as a bearer token)"
        if len(value) < OpsConfig.MIN_TOKEN_CHARS:
            return (f"{len(value)} characters; a token needs at least "
                    f"{OpsConfig.MIN_TOKEN_CHARS} random ones (e.g. python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')")
        return ""

    def validate(self, problems: list[str]) -> None:
        """Append what is wrong with this section to ``problems``: the server's limits, and
        the strength of literal credentials (a ``keyvault:`` reference is checked when it is
        resolved)."""
        if not 0 <= self.port <= 65535:
            problems.append("ops.port: 0..65535 (0 turns the ops server off)")
        if self.keyvault_url and not self.keyvault_url.startswith("https://"):
            problems.append("ops.keyvault_url: must be https://<vault>.vault.azure.net")
        refs = [*self.reader_tokens, *self.admin_tokens, self.jwt_key, *self.revoked,
                *(w.url for w in self.webhooks)]
        if any(r.startswith("keyvault:") for r in refs) and not self.keyvault_url:
            problems.append("ops: keyvault: references need ops.keyvault_url")
        for name in ("reader_tokens", "admin_tokens"):
            for i, token in enumerate(getattr(self, name)):
                weak = "" if token.startswith("keyvault:") else self.secret_weakness(token)
                if weak:
                    problems.append(f"ops.{name}[{i}]: too weak: {weak}")
        if self.jwt_key and not self.jwt_key.startswith("keyvault:"):
            weak = self.secret_weakness(self.jwt_key, key=True)
            if weak:
                problems.append(f"ops.jwt_key: too weak: {weak}")
        for i, entry in enumerate(self.revoked):
            if entry.lower().startswith("sha256:") and not re.match(r"^sha256:[0-9a-f]{64}$",
                                                                     entry.lower()):
                problems.append(f"ops.revoked[{i}]: a sha256: id is 'sha256:' and 64 hex digits")
        if self.jwt_max_lifetime_secs < 0:
            problems.append("ops.jwt_max_lifetime_secs: must be >= 0 (0: no limit)")
        if not 1024 <= self.max_body_bytes <= 16 * 1024 * 1024:
            problems.append("ops.max_body_bytes: 1024..16777216 (admin requests carry no body)")
        if self.read_timeout_secs < 1:
            problems.append("ops.read_timeout_secs: must be >= 1")
        if not 1 <= self.max_connections <= 10_000:
            problems.append("ops.max_connections: 1..10000")
        if self.audit_denied_max_lines < 0 or self.audit_denied_window_secs <= 0:
            problems.append("ops: audit_denied_max_lines must be >= 0 and audit_denied_window_secs "
                            "> 0")
