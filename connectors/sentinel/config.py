"""Where rows are delivered: the ``[sentinel]`` delivery settings and the ``[[targets]]``.

A *target* is one workspace-side destination: an identity (its credential) and the data
collection rules (DCRs) it may send to, each with the streams it declares. A stream may be
carried by several DCRs of a target: the sink spreads requests over them by the budget each
has left (see :mod:`connectors.sentinel.budget`), past one DCR's throughput ceiling.

Azure Monitor's documented limits of a DCR are checked here, where the DCRs are declared:
at most :data:`MAX_STREAMS_PER_DCR` stream declarations (and as many data flows, one per
stream), 2 GB of data and 12,000 requests per minute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "DEFAULT_TARGET",
    "MAX_BYTES_PER_MIN",
    "MAX_REQUESTS_PER_MIN",
    "MAX_STREAMS_PER_DCR",
    "Client",
    "Credential",
    "DcrConfig",
    "SentinelConfig",
    "TargetConfig",
]

MAX_STREAMS_PER_DCR = 10
"""Stream declarations (and data flows) one DCR may have (Azure Monitor service limits)."""
MAX_BYTES_PER_MIN = 2_000_000_000
"""Data one DCR ingests per minute (Logs Ingestion API limit: 2 GB)."""
MAX_REQUESTS_PER_MIN = 12_000
"""Requests one DCR takes per minute (Logs Ingestion API limit)."""
DEFAULT_TARGET = "default"
"""The target of a config with no ``[[targets]]`` (the ``[sentinel]`` endpoint and rule)."""

Credential = Literal["default", "managed_identity", "workload_identity", "service_principal"]
Client = Literal["lean", "sdk"]
"""How requests are sent (see :mod:`connectors.sentinel.service`)."""
CLIENTS: tuple[Client, ...] = ("lean", "sdk")

_DCR_ID = re.compile(r"^dcr-[0-9a-f]{32}$")
_STREAM = re.compile(r"^Custom-[A-Za-z0-9_]{1,100}$")


@dataclass(frozen=True)
class DcrConfig:
    """One data collection rule of a target."""

    name: str
    """Its resource name (what the deployment template creates); metrics and messages use it."""
    id: str
    """Its immutable id (``dcr-`` and 32 hex digits), from the deployment's outputs."""
    streams: list[str]
    """The streams it declares (``Custom-...``): rows of these streams may be sent to it."""
    endpoint: str = ""
    """Its logs ingestion endpoint (a DCR's own, or a DCE's); the target's when empty."""
    max_bytes_per_min: int = MAX_BYTES_PER_MIN
    """The data it may take per minute (uncompressed bytes); lower it to leave headroom."""
    max_requests_per_min: int = MAX_REQUESTS_PER_MIN
    """The requests it may take per minute."""

    def validate(self, problems: list[str], where: str) -> None:
        """Append what is wrong with this DCR to ``problems``."""
        if not _DCR_ID.match(self.id):
            problems.append(f"{where}.id: {self.id!r} is not a DCR immutable id (dcr- and 32 "
                            "hex digits: the deployment's output, or the DCR's JSON view)")
        if not self.streams:
            problems.append(f"{where}.streams: a DCR carries at least one stream")
        if len(self.streams) > MAX_STREAMS_PER_DCR:
            problems.append(f"{where}.streams: {len(self.streams)} streams; a DCR declares at most "
                            f"{MAX_STREAMS_PER_DCR} streams and {MAX_STREAMS_PER_DCR} data flows "
                            "(Azure Monitor limit): split them over more DCRs")
        for s in self.streams:
            if not _STREAM.match(s):
                problems.append(f"{where}.streams: {s!r} is not a stream name (Custom-<name>)")
        if len(set(self.streams)) != len(self.streams):
            problems.append(f"{where}.streams: a stream is listed twice")
        if self.endpoint and not self.endpoint.startswith("https://"):
            problems.append(f"{where}.endpoint: must be an https:// URL")
        if not 0 < self.max_bytes_per_min <= MAX_BYTES_PER_MIN:
            problems.append(f"{where}.max_bytes_per_min: must be 1..{MAX_BYTES_PER_MIN} "
                            "(the service's limit per DCR)")
        if not 0 < self.max_requests_per_min <= MAX_REQUESTS_PER_MIN:
            problems.append(f"{where}.max_requests_per_min: must be 1..{MAX_REQUESTS_PER_MIN} "
                            "(the service's limit per DCR)")


@dataclass(frozen=True)
class TargetConfig:
    """A workspace-side destination: one identity and the DCRs it sends to.

    Targets never share data: a row goes to exactly one target (its source's, or the one
    its table is pinned to), under that target's credential.
    """

    name: str
    """Sources and tables name their target by this."""
    dcrs: list[DcrConfig]
    """Its data collection rules (``[[targets.dcrs]]``)."""
    endpoint: str = ""
    """Logs ingestion endpoint of DCRs that name none (a data collection endpoint)."""
    credential: Credential = "default"
    """``default`` (DefaultAzureCredential), ``managed_identity`` (VM/App identity; a
    user-assigned one with ``client_id``), ``workload_identity`` (federated token file, as
    AKS workload identity or any OIDC issuer) or ``service_principal`` (``client_secret``
    from Key Vault)."""
    client_id: str = ""
    """Application (client) id of the identity; required for workload_identity and
    service_principal, selects a user-assigned managed identity otherwise."""
    tenant_id: str = ""
    """Entra tenant of the identity (workload_identity, service_principal): the tenant
    whose workspace this target writes to."""
    client_secret: str = ""
    """``keyvault:<secret-name>`` holding the service principal's secret (never a literal)."""
    token_file: str = ""
    """Federated token file for workload_identity (default: $AZURE_FEDERATED_TOKEN_FILE)."""
    ca_file: str | None = None
    """PEM bundle to trust instead of the system store (private CA, test stacks)."""
    tables: list[str] = field(default_factory=list)
    """Tables pinned to this target whatever their source (e.g. findings for a central SOC)."""

    def validate(self, problems: list[str], where: str) -> None:
        """Append what is wrong with this target to ``problems``."""
        if not self.dcrs:
            problems.append(f"{where}.dcrs: a target needs at least one [[targets.dcrs]]")
        names: set[str] = set()
        for dcr in self.dcrs:
            dwhere = f"{where}.dcrs[{dcr.name}]"
            dcr.validate(problems, dwhere)
            if dcr.name in names:
                problems.append(f"{dwhere}.name: duplicate DCR name in this target")
            names.add(dcr.name)
            if not dcr.endpoint and not self.endpoint:
                problems.append(f"{dwhere}.endpoint: no endpoint (set it, or {where}.endpoint)")
        if self.endpoint and not self.endpoint.startswith("https://"):
            problems.append(f"{where}.endpoint: must be an https:// URL (bearer tokens need TLS)")
        if self.credential in ("workload_identity", "service_principal"):
            for key in ("client_id", "tenant_id"):
                if not getattr(self, key):
                    problems.append(f"{where}.{key}: required with credential = "
                                    f"{self.credential!r}")
        if self.credential == "service_principal" and not self.client_secret.startswith(
                "keyvault:"):
            problems.append(f"{where}.client_secret: must be a keyvault:<secret-name> reference "
                            "(a secret is never written in the config)")
        if self.client_secret and self.credential != "service_principal":
            problems.append(f"{where}.client_secret: only used with credential = "
                            "'service_principal'")
        if self.ca_file and not Path(self.ca_file).is_file():
            problems.append(f"{where}.ca_file: {self.ca_file!r} is not a readable file")

    def identity(self) -> tuple[str, str, str, str, str]:
        """What authenticates this target: targets sharing a DCR must agree on it."""
        return (self.credential, self.client_id, self.tenant_id, self.client_secret,
                self.token_file)


@dataclass(frozen=True)
class SentinelConfig:
    """How rows are delivered: retries, timeouts, compression.

    ``endpoint`` and ``rule_id`` are the single-DCR form of earlier versions: without
    ``[[targets]]`` they make one target, ``default``, whose one DCR carries every stream.
    """

    endpoint: str = ""
    """Data collection endpoint (DCE) or DCR ingestion endpoint, https://... (single-DCR form)."""
    rule_id: str = ""
    """Immutable id of the data collection rule (``dcr-...``) (single-DCR form)."""
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
    client: Client = "sdk"
    """``sdk``: through the official ``LogsIngestionClient``; ``lean``: the official
    credential gives the token, the request is one POST on a pooled connection (~0.65-0.9 ms
    less CPU per request).
    The same retries, timeouts, TLS trust, proxies and error mapping either way."""

    def validate(self, problems: list[str], where: str = "sentinel") -> None:
        """Append what is wrong with this section to ``problems``."""
        if self.endpoint and not self.endpoint.startswith("https://"):
            problems.append(f"{where}.endpoint: must be an https:// URL (bearer tokens need TLS)")
        if bool(self.endpoint) != bool(self.rule_id):
            problems.append(f"{where}: endpoint and rule_id go together (or declare "
                            "[[targets]] instead)")
        if self.ca_file and not Path(self.ca_file).is_file():
            problems.append(f"{where}.ca_file: {self.ca_file!r} is not a readable file (a PEM "
                            "bundle of the CAs that sign the endpoint's certificate)")
        if not 0 <= self.gzip_level <= 9:
            problems.append(f"{where}.gzip_level: must be 0..9")
        if self.client not in CLIENTS:
            problems.append(f"{where}.client: {self.client!r} is not one of "
                            f"{', '.join(map(repr, CLIENTS))}")

    def legacy_target(self) -> TargetConfig | None:
        """The one target of the single-DCR form (its DCR carries every stream: ``streams``
        is empty), or None when ``endpoint``/``rule_id`` are not set."""
        if not (self.endpoint and self.rule_id):
            return None
        return TargetConfig(DEFAULT_TARGET, [DcrConfig(self.rule_id, self.rule_id, [])],
                            endpoint=self.endpoint, credential=self.credential,
                            ca_file=self.ca_file)
