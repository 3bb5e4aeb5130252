"""The ``[enrich]`` section: priority rules, threat intel, anomaly scores and sequences."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["DEFAULT_MAX_ENTITIES", "EnrichConfig"]

DEFAULT_MAX_ENTITIES = 128_000
"""Entities kept per flow process by default (a few hundred MB of state at most)."""


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
    max_entities: int = DEFAULT_MAX_ENTITIES
    """Anomaly entities, and principals with partial sequence matches, kept per flow process
    (each bounded on its own): the budget is split over the shards, a shard keeping
    ``max_entities / shards`` (rounded up; 2,000 with 64 shards), the least recently seen
    going first. A process holds at most ``shards`` shards, so at most this many."""
    max_entities_per_shard: int = 0
    """The bound of old configs, per shard: when set (> 0) it replaces ``max_entities /
    shards``, and a process may hold ``shards`` times as many."""
    standard_tables: Literal["findings", "columns"] = "findings"
    """Where rule and intel results on Azure's own tables (AWSCloudTrail, ...) go: rows in
    S3SentinelFindings_CL (the tables keep their schema), or ``_CF`` columns on the row
    itself (EnrichmentPriority_CF, ...; the DCR export adds them to the tables). Custom
    ``_CL`` tables always get the columns (without the suffix)."""
    anomaly_entities: list[str] = field(default_factory=lambda: ["principal", "account"])
    """Entity kinds with their own baselines (principal, ip, account, key: long-term access
    keys). Source IPs are left out by default: one state per address makes the snapshots grow
    with every new address; keys mostly repeat their principal's baseline."""

    def validate(self, problems: list[str], where: str = "enrich") -> None:
        """Append what is wrong with this section to ``problems``."""
        bad = sorted(set(self.anomaly_entities) - {"principal", "ip", "account", "key"})
        if bad or not self.anomaly_entities:
            problems.append(f"{where}.anomaly_entities: {bad or 'empty'}; use principal, ip, "
                            "account, key")
        if self.fast_lane_secs <= 0 or self.shards < 1:
            problems.append(f"{where}: fast_lane_secs must be > 0 and shards >= 1")
        if self.max_entities < 1:
            problems.append(f"{where}.max_entities must be >= 1 (entities kept per process), "
                            f"got {self.max_entities}")
        if self.max_entities_per_shard < 0:
            problems.append(f"{where}.max_entities_per_shard must be >= 0 (0: max_entities / "
                            f"shards), got {self.max_entities_per_shard}")
        elif self.max_entities_per_shard and self.max_entities != DEFAULT_MAX_ENTITIES:
            problems.append(f"{where}: set max_entities (per process) or the older "
                            "max_entities_per_shard, not both")

    def shard_cap(self) -> int:
        """Entities (and principals) one shard keeps."""
        if self.max_entities_per_shard > 0:
            return self.max_entities_per_shard
        return max(1, -(-self.max_entities // max(1, self.shards)))
