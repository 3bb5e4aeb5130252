"""One validated configuration for the whole connector.

The file is TOML. Every key is checked when the connector starts: unknown keys, wrong
types and bad values are all reported at once, each with its key path, before any
work begins. Environment variables override file values::

    S3SENTINEL__SENTINEL__ENDPOINT=https://my-dce.eastus-1.ingest.monitor.azure.com
    S3SENTINEL__SOURCES__cloudtrail__BUCKET=org-trail      # a source by name (or index)

A value from the environment is read as a TOML value when it parses as one
(``10``, ``true``, ``[1, 2]``) and as a plain string otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from operators.formats.registry import DEFAULT_TABLES, FORMATS

__all__ = [
    "AwsConfig",
    "BatchConfig",
    "Config",
    "ConfigError",
    "ENV_CONFIG_PATH",
    "ENV_PREFIX",
    "EnrichConfig",
    "OpsConfig",
    "RuntimeConfig",
    "SentinelConfig",
    "SourceConfig",
    "TableColumnConfig",
    "TableConfig",
    "WebhookConfig",
    "load_config",
    "parse_config",
]

ENV_CONFIG_PATH = "S3SENTINEL_CONFIG"
"""Environment variable holding the config file path (used by ``python -m bytewax.run``)."""

ENV_PREFIX = "S3SENTINEL__"
"""Prefix of environment overrides; ``__`` separates the key path."""

Mode = Literal["continuous", "catch_up"]
Format = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")


class ConfigError(ValueError):
    """The configuration is invalid; ``problems`` lists every problem with its key path."""

    def __init__(self, problems: list[str], origin: str = "configuration") -> None:
        self.problems = problems
        self.origin = origin
        lines = "\n".join(f"  - {p}" for p in problems)
        msg = f"{origin} is invalid ({len(problems)} problem(s)):\n{lines}"
        super().__init__(msg)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.problems, self.origin))


@dataclass(frozen=True)
class AwsConfig:
    """How to reach S3 (and SQS)."""

    region: str = "us-east-1"
    """Default AWS region for clients."""
    endpoint_url: str | None = None
    """Custom S3/SQS endpoint (a local stack, or a VPC endpoint); None uses AWS's."""
    max_pool_connections: int = 16
    """HTTP connections per S3 client; at least fetch_threads."""


@dataclass(frozen=True)
class SentinelConfig:
    """Where and how records are delivered: the Azure Monitor Logs Ingestion API."""

    endpoint: str
    """Data collection endpoint (DCE) or DCR ingestion endpoint, https://..."""
    rule_id: str
    """Immutable id of the data collection rule (``dcr-...``)."""
    credential: Literal["default", "managed_identity"] = "default"
    """``default`` uses DefaultAzureCredential; ``managed_identity`` only ManagedIdentityCredential."""
    ca_file: str | None = None
    """PEM bundle to trust instead of the system store (private CA, test stacks)."""
    timeout_secs: float = 30.0
    """Per-request timeout."""
    retry_max_secs: float = 600.0
    """How long one batch is retried (429, 5xx, connection errors) before the flow stops."""
    retry_base_secs: float = 0.5
    """First back-off; doubled per attempt with full jitter, capped at retry_cap_secs."""
    retry_cap_secs: float = 30.0
    """Longest single back-off (a Retry-After from the service is honoured even if longer)."""
    gzip_level: int = 1
    """Request body gzip level (1 is ~10x faster than 6 at ~30% more bytes)."""


@dataclass(frozen=True)
class BatchConfig:
    """How records are grouped into requests."""

    max_bytes: int = 1_000_000
    """Largest request body, as uncompressed JSON (the service limit is 1 MiB)."""
    max_records: int = 20_000
    """Most records in one request."""
    max_age_secs: float = 5.0
    """Oldest a record may wait in a batch before the batch is sent."""


@dataclass(frozen=True)
class SourceConfig:
    """One stream of log objects: a bucket prefix in one format, bound for one table."""

    name: str
    """Stable name; partition names and resume state derive from it."""
    bucket: str
    """S3 bucket."""
    format: Format
    """Record format of the objects (see operators.formats.registry.FORMATS), or ``auto`` to
    detect it per object from the key layout or the first bytes."""
    table: str | None = None
    """Table the records are mapped onto (shipped, or declared under [[tables]]); defaults to
    the format's standard table (CloudTrail -> AWSCloudTrail, ...)."""
    prefix: str = ""
    """Only keys under this prefix."""
    partitions: int = 1
    """Keys are split by hash over this many partitions (spread across workers)."""
    start_after: str = ""
    """Start listing after this key (skip older objects)."""
    lookback_secs: float = 900.0
    """Listing: objects whose LastModified is within this many seconds of the newest object
    read are still picked up when they arrive late or under a key that sorts earlier (see
    connectors.s3.discovery). 0 lists by key from a watermark instead (only for prefixes
    where new keys always sort last)."""
    start_time: str = ""
    """Listing: only objects modified at or after this ISO-8601 time (e.g. 2026-11-01T00:00:00Z)."""
    ignore_older_secs: float = 0.0
    """Listing: skip objects modified more than this many seconds before the partition
    started (0: read everything)."""
    role_arn: str = ""
    """IAM role to assume (STS AssumeRole, refreshed before expiry) to read this source, e.g.
    in another account; empty uses the default credential chain."""
    external_id: str = ""
    """ExternalId for the AssumeRole call (the role's trust policy may require one)."""
    discovery: Literal["list", "sqs"] = "list"
    """How new objects are found: ``list`` the prefix every ``poll_secs`` (no AWS set-up), or
    ``sqs``: S3 event notifications (direct, through SNS, or EventBridge) on ``queue_url``."""
    queue_url: str = ""
    """SQS queue of the bucket's ObjectCreated notifications (``discovery = "sqs"``)."""
    queue_poll_secs: float = 1.0
    """How long a partition waits before asking an empty queue again."""
    visibility_timeout_secs: int = 300
    """A received message stays invisible this long, extended while its object is in work."""
    max_receive_count: int = 5
    """A message received more often than this (its object keeps failing) sends its object to
    the dead-letter store and is deleted."""
    max_in_flight_messages: int = 2000
    """Messages a partition holds until their records are delivered; more waits."""
    exclude: list[str] = field(default_factory=list)
    """Regular expressions; matching keys are skipped."""
    poll_secs: float = 30.0
    """How often a caught-up partition lists the bucket again (continuous mode)."""
    fetch_threads: int = 4
    """Objects fetched ahead, in parallel, per partition."""
    prefetch_max_bytes: int = 8 * 1024 * 1024
    """Objects up to this (compressed) size are fetched whole ahead of time; larger ones stream."""
    max_object_bytes: int = 8 * 1024**3
    """Largest decompressed object accepted; larger ones are reported as errors."""
    max_compression_ratio: float = 1000.0
    """Objects that decompress to more than this many times their stored size (past 16 MiB)
    are reported as decompression bombs; 0 turns the check off."""
    max_record_bytes: int = 1024 * 1024
    """Largest record (one line, one JSON array element) accepted; a larger one can never be
    sent (the Logs Ingestion API takes 1 MB per request) and goes to the dead-letter store
    with its size, keeping its first bytes."""
    max_dead_letters_per_object: int = 1000
    """Bad records of one object kept one by one in the dead-letter store; past this (or
    ``max_dead_letter_bytes_per_object``) the rest of the object becomes one entry naming
    the offset it starts from, which ``s3sentinel replay`` reads again from S3."""
    max_dead_letter_bytes_per_object: int = 64 * 1024 * 1024
    """Bytes of bad records of one object kept in the dead-letter store (see above)."""
    fields: list[str] = field(default_factory=list)
    """Field names of ``delimited`` lines (and of ``csv`` objects without a header line)."""
    delimiter: str = ""
    """Field separator of ``delimited`` (default ``|``) and ``csv`` (default ``,``)."""


@dataclass(frozen=True)
class TableColumnConfig:
    """A column of a custom table."""

    name: str
    type: Literal["string", "int", "long", "real", "bool", "datetime", "dynamic"]
    source: str | None = None
    """Dotted path of the value in the source record; defaults to the column name."""
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class TableConfig:
    """A custom ``_CL`` table declared in config (shipped tables live in operators/tables/)."""

    name: str
    """Table name; custom tables end in ``_CL``."""
    columns: list[TableColumnConfig]
    stream: str | None = None
    """DCR input stream; defaults to ``Custom-<name>``."""
    description: str = ""


@dataclass(frozen=True)
class RuntimeConfig:
    """How the flow runs."""

    mode: Mode = "continuous"
    """``continuous`` polls forever; ``catch_up`` drains what is there and exits."""
    errors_dir: str = ".s3sentinel/errors"
    """Records and objects that could not be parsed or mapped are written here (JSON lines)."""
    errors_s3_uri: str | None = None
    """``s3://bucket/prefix/``: write the error records there instead of errors_dir."""
    tables_dir: str | None = None
    """Extra directory of table definition files (*.toml)."""
    journal_dir: str = ".s3sentinel/journal"
    """The upload journal (records already accepted; keep it beside the recovery store)."""
    journal_retention_secs: float = 7 * 24 * 3600.0
    """How long delivered ranges are remembered after an object's last delivery."""
    encryption_key_file: str = ""
    """Encrypt dead-letter entries (AES-256-GCM) with the keys of this file (mode 0600:
    ``{"current": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}``)."""
    encryption_keyvault_keys: list[str] = field(default_factory=list)
    """Or: Key Vault secret names holding base64 keys (needs ops.keyvault_url); the key id is
    the secret name."""
    encryption_current_key: str = ""
    """Key id that encrypts (with encryption_keyvault_keys); the others only decrypt."""
    recovery_dir: str = ".s3sentinel/recovery"
    """bytewax recovery store, used by ``s3sentinel run`` in continuous mode (created on first
    start). Keep it, the journal and the dead-letter directory on durable storage."""
    snapshot_secs: int = 10
    """How often state is snapshotted to the recovery store."""
    recovery_partitions: int = 1
    """Partitions of a new recovery store (one SQLite file each)."""


@dataclass(frozen=True)
class EnrichConfig:
    """Priority rules, threat intel, anomaly scores and sequences (see operators/enrich)."""

    enabled: bool = False
    """Turn enrichment on: findings go to S3SentinelFindings_CL (declare it in the DCR)."""
    rules: bool = True
    """Classify rows with the shipped priority rules (and rule_files)."""
    rule_files: list[str] = field(default_factory=list)
    """Your own rule files (TOML); a rule with a shipped rule's id replaces it."""
    intel_file: str = ""
    """Threat-intel indicators (IPs/CIDRs, domains, access key ids): a path or s3://bucket/key,
    reloaded when it changes."""
    intel_check_secs: float = 30.0
    anomaly: bool = False
    """Score CloudTrail rows against per-entity baselines (stateful, in the snapshots)."""
    sequences: bool = False
    """Detect multi-step patterns per principal (stateful, in the snapshots)."""
    fast_lane_secs: float = 0.5
    """Batch age of critical, intel-matching and anomalous rows and of findings."""
    shards: int = 64
    """Principal hash shards of the stateful anomaly/sequence step."""
    max_entities_per_shard: int = 20_000
    """Entities (and principals) kept per shard; the least recently seen go first."""
    standard_tables: Literal["findings", "columns"] = "findings"
    """Where rule and intel results on Azure's own tables (AWSCloudTrail, ...) go: rows in
    S3SentinelFindings_CL (the tables keep their schema), or ``_CF`` columns on the row
    itself (EnrichmentPriority_CF, ...; the DCR export adds them to the tables). Custom
    ``_CL`` tables always get the columns (without the suffix)."""
    anomaly_entities: list[str] = field(default_factory=lambda: ["principal", "account"])
    """Entity kinds with their own baselines (principal, ip, account, key: long-term access
    keys). Source IPs are left out by default: one state per address makes the snapshots grow
    with every new address; keys mostly repeat their principal's baseline."""


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
    multi-process flow listens on port + i. 0 turns the server off."""
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


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    sentinel: SentinelConfig
    sources: list[SourceConfig]
    aws: AwsConfig = field(default_factory=AwsConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    tables: list[TableConfig] = field(default_factory=list)
    ops: OpsConfig = field(default_factory=OpsConfig)
    enrich: EnrichConfig = field(default_factory=EnrichConfig)

    def source(self, name: str) -> SourceConfig:
        """The source named ``name``."""
        for src in self.sources:
            if src.name == name:
                return src
        msg = f"no source named {name!r}; configured: {[s.name for s in self.sources]}"
        raise KeyError(msg)


# --------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str] | None = None,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate the config file.

    :arg path: The TOML file; defaults to ``$S3SENTINEL_CONFIG``.
    :arg environ: Environment for overrides; defaults to ``os.environ``.
    :raises ConfigError: Listing every problem found.
    """
    environ = os.environ if environ is None else environ
    if path is None:
        path = environ.get(ENV_CONFIG_PATH)
        if not path:
            msg = f"no config file: pass a path or set {ENV_CONFIG_PATH}"
            raise ConfigError([msg])
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"file not found: {p}"], origin=str(p)) from None
    except tomllib.TOMLDecodeError as ex:
        raise ConfigError([f"not valid TOML: {ex}"], origin=str(p)) from None
    return parse_config(raw, environ=environ, origin=str(p))


def parse_config(raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None,
                 origin: str = "configuration") -> Config:
    """Validate an already-parsed config mapping (after applying env overrides)."""
    problems: list[str] = []
    data = _apply_env(copy.deepcopy(dict(raw)), environ or {}, problems)
    cfg = _build(Config, data, "", problems)
    if cfg is not None and not problems:  # cross-field checks need the types right
        _check(cfg, problems)
    if problems:
        raise ConfigError(problems, origin=origin)
    assert isinstance(cfg, Config)
    return cfg


def _apply_env(data: dict[str, Any], environ: Mapping[str, str], problems: list[str]) -> dict:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].split("__")
        try:
            parsed: Any = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            parsed = value
        node: Any = data
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if isinstance(node, list):
                index = _list_index(node, part)
                if index is None:
                    problems.append(f"{name}: no list item {part!r} (use an index or a name)")
                    break
                if last:
                    node[index] = parsed
                node = node[index]
                continue
            if not isinstance(node, dict):
                problems.append(f"{name}: {'.'.join(path[:i]).lower()} is a value, not a table")
                break
            key = part.lower()
            if last:
                node[key] = parsed
            else:
                node = node.setdefault(key, {})
    return data


_SECRET_KEY = re.compile(r"(?i)(token|secret|password|jwt_key|revoked|webhooks|url|key_file|"
                         r"keyvault_keys)")


def _shown(path: str, value: Any) -> str:
    """``value`` for a problem message; for a key that may hold a secret only its type (a
    numeric token set through the environment must not be echoed into the logs)."""
    if _SECRET_KEY.search(path.rsplit(".", 1)[-1]):
        return f"a {type(value).__name__} (value not shown)"
    return repr(value)


def _list_index(items: list[Any], part: str) -> int | None:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return i
    return None


def _build(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Convert ``value`` to type ``tp``, appending problems instead of raising."""
    origin = typing.get_origin(tp)
    where = path or "(top level)"
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a table, got {type(value).__name__}")
            return None
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in value:
            if key not in fields:
                known = ", ".join(sorted(fields))
                problems.append(f"{_join(path, key)}: unknown key (known keys: {known})")
        kwargs = {}
        for name, f in fields.items():
            if name in value:
                kwargs[name] = _build(hints[name], value[name], _join(path, name), problems)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{_join(path, name)}: required key is missing")
        try:
            return tp(**kwargs)
        except TypeError:
            return None
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{where}: expected a list, got {type(value).__name__}")
            return []
        label = "name" if dataclasses.is_dataclass(item_tp) else None
        out = []
        for i, item in enumerate(value):
            tag = item.get(label) if label and isinstance(item, dict) else None
            out.append(_build(item_tp, item, f"{path}[{tag or i}]", problems))
        return out
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            problems.append(f"{where}: {_shown(path, value)} is not one of "
                            f"{', '.join(map(repr, allowed))}")
        return value
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, path, problems)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (str, int, float, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            problems.append(f"{where}: expected {tp.__name__}, got {_shown(path, value)}")
        return value
    problems.append(f"{where}: unsupported type {tp}")
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check(cfg: Config, problems: list[str]) -> None:
    """Checks across fields, after types are right."""
    if not cfg.sentinel.endpoint.startswith("https://"):
        problems.append("sentinel.endpoint: must be an https:// URL (bearer tokens need TLS)")
    if cfg.sentinel.ca_file and not Path(cfg.sentinel.ca_file).is_file():
        problems.append(f"sentinel.ca_file: {cfg.sentinel.ca_file!r} is not a readable file (a "
                        "PEM bundle of the CAs that sign the endpoint's certificate)")
    if not (1 <= cfg.batch.max_bytes <= 1_048_576):
        problems.append("batch.max_bytes: must be between 1 and 1048576 (the service's limit)")
    if cfg.batch.max_records < 1 or cfg.batch.max_age_secs <= 0:
        problems.append("batch: max_records must be >= 1 and max_age_secs > 0")
    if not 0 <= cfg.sentinel.gzip_level <= 9:
        problems.append("sentinel.gzip_level: must be 0..9")
    if not cfg.sources:
        problems.append("sources: at least one [[sources]] entry is needed")
    seen: set[str] = set()
    for src in cfg.sources:
        where = f"sources[{src.name}]"
        if not _NAME_RE.match(src.name):
            problems.append(f"{where}.name: use letters, digits, '_' or '-', starting with a letter")
        if src.name in seen:
            problems.append(f"{where}.name: duplicate source name")
        seen.add(src.name)
        if src.max_record_bytes < 1024 or src.max_dead_letters_per_object < 1 \
                or src.max_dead_letter_bytes_per_object < 1:
            problems.append(f"{where}: max_record_bytes must be >= 1024, "
                            "max_dead_letters_per_object and max_dead_letter_bytes_per_object "
                            ">= 1")
        if src.partitions < 1 or src.fetch_threads < 1 or src.poll_secs <= 0:
            problems.append(f"{where}: partitions and fetch_threads must be >= 1, poll_secs > 0")
        if src.table is None and src.format not in DEFAULT_TABLES and src.format != "auto":
            problems.append(f"{where}.table: required for format {src.format!r} "
                            "(it has no standard table)")
        if src.start_time:
            try:
                datetime.fromisoformat(src.start_time.replace("Z", "+00:00"))
            except ValueError:
                problems.append(f"{where}.start_time: {src.start_time!r} is not an ISO-8601 "
                                "time such as 2026-11-01T00:00:00Z")
        if src.lookback_secs < 0 or src.ignore_older_secs < 0:
            problems.append(f"{where}: lookback_secs and ignore_older_secs must be >= 0")
        if src.role_arn and not re.match(r"^arn:aws[\w-]*:iam::\d{12}:role/.+$", src.role_arn):
            problems.append(f"{where}.role_arn: {src.role_arn!r} is not an IAM role ARN "
                            "(arn:aws:iam::<account>:role/<name>)")
        if src.external_id and not src.role_arn:
            problems.append(f"{where}.external_id: only used with role_arn")
        if src.discovery == "sqs":
            if not src.queue_url.startswith(("https://", "http://")):
                problems.append(f"{where}.queue_url: discovery = \"sqs\" needs the queue's URL "
                                "(https://sqs.<region>.amazonaws.com/<account>/<name>)")
            if not 5 <= src.visibility_timeout_secs <= 43200:
                problems.append(f"{where}.visibility_timeout_secs: 5..43200 (within SQS's "
                                "range, and long enough to be extended before it runs out)")
            if src.max_receive_count < 1 or src.max_in_flight_messages < 1:
                problems.append(f"{where}: max_receive_count and max_in_flight_messages >= 1")
            if src.queue_poll_secs <= 0:
                problems.append(f"{where}.queue_poll_secs: must be > 0")
        elif src.queue_url:
            problems.append(f"{where}.queue_url: set discovery = \"sqs\" to use the queue")
        if src.format == "delimited" and not src.fields:
            problems.append(f"{where}.fields: the delimited format needs the field names")
        if len(src.delimiter) > 1:
            problems.append(f"{where}.delimiter: one character")
        for pattern in src.exclude:
            try:
                re.compile(pattern)
            except re.error as ex:
                problems.append(f"{where}.exclude: {pattern!r} is not a valid regex: {ex}")
    bad = sorted(set(cfg.enrich.anomaly_entities) - {"principal", "ip", "account", "key"})
    if bad or not cfg.enrich.anomaly_entities:
        problems.append(f"enrich.anomaly_entities: {bad or 'empty'}; use principal, ip, "
                        "account, key")
    if cfg.enrich.fast_lane_secs <= 0 or cfg.enrich.shards < 1:
        problems.append("enrich: fast_lane_secs must be > 0 and shards >= 1")
    ops = cfg.ops
    if not 0 <= ops.port <= 65535:
        problems.append("ops.port: 0..65535 (0 turns the ops server off)")
    if ops.keyvault_url and not ops.keyvault_url.startswith("https://"):
        problems.append("ops.keyvault_url: must be https://<vault>.vault.azure.net")
    refs = [*ops.reader_tokens, *ops.admin_tokens, ops.jwt_key, *ops.revoked,
            *(w.url for w in ops.webhooks)]
    if any(r.startswith("keyvault:") for r in refs) and not ops.keyvault_url:
        problems.append("ops: keyvault: references need ops.keyvault_url")
    _check_ops_server(ops, problems)
    uri = cfg.runtime.errors_s3_uri
    if uri is not None and not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", uri):
        problems.append(f"runtime.errors_s3_uri: {uri!r} is not an s3://bucket/prefix/ URI")
    for table in cfg.tables:
        if not table.columns:
            problems.append(f"tables[{table.name}].columns: a table needs at least one column")


def _check_ops_server(ops: OpsConfig, problems: list[str]) -> None:
    """The ops server's limits and the strength of literal credentials (a ``keyvault:``
    reference is checked when it is resolved)."""
    for name in ("reader_tokens", "admin_tokens"):
        for i, token in enumerate(getattr(ops, name)):
            weak = "" if token.startswith("keyvault:") else OpsConfig.secret_weakness(token)
            if weak:
                problems.append(f"ops.{name}[{i}]: too weak: {weak}")
    if ops.jwt_key and not ops.jwt_key.startswith("keyvault:"):
        weak = OpsConfig.secret_weakness(ops.jwt_key, key=True)
        if weak:
            problems.append(f"ops.jwt_key: too weak: {weak}")
    for i, entry in enumerate(ops.revoked):
        if entry.lower().startswith("sha256:") and not re.match(r"^sha256:[0-9a-f]{64}$",
                                                                 entry.lower()):
            problems.append(f"ops.revoked[{i}]: a sha256: id is 'sha256:' and 64 hex digits")
    if ops.jwt_max_lifetime_secs < 0:
        problems.append("ops.jwt_max_lifetime_secs: must be >= 0 (0: no limit)")
    if not 1024 <= ops.max_body_bytes <= 16 * 1024 * 1024:
        problems.append("ops.max_body_bytes: 1024..16777216 (admin requests carry no body)")
    if ops.read_timeout_secs < 1:
        problems.append("ops.read_timeout_secs: must be >= 1")
    if not 1 <= ops.max_connections <= 10_000:
        problems.append("ops.max_connections: 1..10000")
    if ops.audit_denied_max_lines < 0 or ops.audit_denied_window_secs <= 0:
        problems.append("ops: audit_denied_max_lines must be >= 0 and audit_denied_window_secs "
                        "> 0")
