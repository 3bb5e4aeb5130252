"""Streaming anomaly scores for CloudTrail rows, each entity against its own history.

Rules catch what is bad by definition (StopLogging, a root login); much of an intrusion is
made of calls that are fine on their own and wrong only for *this* principal: a known key
used from a network and a tool it never used, an API it never called, ten times its usual
volume of GetObject, a burst of AccessDenied across APIs it never touched. So every entity
keeps a small baseline of its own, by event time (the row's TimeGenerated, never the clock,
so a replay scores the same):

- a **principal** (UserIdentityArn, with machine-made assumed-role session names such as
  ``i-0abc...`` folded to ``*``; else the access key): calls and data reads per
  ``bucket_secs`` against an EWMA with variance, overall and per UTC hour of day (the daily
  rhythm: 24 slots), and a peak decaying over ``peak_halflife_secs``; its usual share of
  failed calls; the source IPs (and their /24 networks), user-agent families (versions
  stripped, so upgrades are not news) and APIs it used, with counts;
- a **source IP**: calls and failed-call share;
- an **account and region**: calls, failed-call share, and the principals seen there (the
  root user is news while it is rare);
- a long-term **access key** (``AKIA...``; off by default): what a principal has, per key, so
  a user's second key used from somewhere new stands out even where the user has been.
  Temporary keys (``ASIA...``) change with every session and are not entities.

Each feature gives a score in [0, 1] with a reason a person can act on ("312 data reads
(GetObject) in 5 min by arn:... vs baseline 4±2 (peak 20)"); an entity's score is their
noisy-OR (1 - Π(1 - s)), and a row's score the highest of its entities'. Weights are set so
that one weak signal stays below :data:`ANOMALOUS` (a new IP, a new user agent, a
never-called API, a call-rate or failed-call spike: one burst counts once), two together
reach it, and the strong ones reach it alone: a rare call of a logging-tamper API, bulk data
reads far above baseline, root activity. A novelty counts less for an entity that meets new
values all the time (a Lambda role on ever-changing AWS addresses, a CI runner): its weight
is scaled down by how often that entity saw something new lately (a Good-Turing-like rate),
and a new address counts little when it is itself a warm IP entity (an office NAT other
principals use; known to :class:`AnomalyScorer` only, not to entities keyed apart).

Until an entity has more than ``warmup_events`` events *and* ``warmup_secs`` of event time
behind it, it learns but scores 0. Baselines learn only from buckets in which the entity was
active, so they describe its bursts rather than its idle time, and need no catch-up after a
quiet week.

State is bounded: pair tables keep counts and evict the least used beyond their caps, and
:class:`AnomalyScorer` keeps at most ``max_entities`` entities (least recently seen
evicted). :meth:`AnomalyScorer.snapshot` gives plain JSON-able data and
:meth:`AnomalyScorer.restore` continues from it, so a restart keeps the baselines. In a
bytewax flow, :class:`EntityState` is the state of ``op.stateful_map`` keyed by entity::

    keyed = op.flat_map("entities", rows, entity_items)            # (key, (key, row))
    scores = op.stateful_map("anomaly", keyed, stateful_mapper())  # (key, Score)

Only the standard library is used: a row costs a few dozen dict lookups and float updates
(~8 µs for its two default entities on one core once warm, ~6 while they learn: see
``bench/sidestep.py`` and ``bench/detection.py``). :meth:`AnomalyScorer.score_many` scores a
batch with the same results as row by row, for one pass over its rows and one call per
entity; :meth:`AnomalyScorer.flag_many` learns the same and returns only the rows worth
raising (the flow's side branch scores each shard's rows so). Tuned against
``bench/workload.py``; the thresholds are :class:`AnomalyConfig` fields.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from dataflow.core.timeutil import event_time
from operators.enrich import packing

__all__ = [
    "ANOMALOUS",
    "AnomalyConfig",
    "AnomalyScorer",
    "EntityState",
    "Score",
    "agent_family",
    "entity_items",
    "entity_keys",
    "event_time",
    "principal_of",
    "stateful_mapper",
]

ANOMALOUS = 0.8
"""A row (or entity) scoring at least this is anomalous enough to raise."""
SNAPSHOT_VERSION = 1
KINDS = ("principal", "ip", "account", "key")

_CRITICAL = frozenset([
    "cloudtrail:StopLogging", "cloudtrail:DeleteTrail", "cloudtrail:UpdateTrail",
    "cloudtrail:PutEventSelectors", "cloudtrail:DeleteEventDataStore", "guardduty:DeleteDetector",
    "guardduty:UpdateDetector", "guardduty:DisassociateFromMasterAccount",
    "guardduty:DisassociateFromAdministratorAccount", "ec2:DeleteFlowLogs",
    "config:StopConfigurationRecorder", "config:DeleteConfigurationRecorder",
    "config:DeleteDeliveryChannel", "kms:ScheduleKeyDeletion", "kms:DisableKey",
    "organizations:LeaveOrganization", "iam:DeleteAccountPasswordPolicy",
    "securityhub:DisableSecurityHub", "access-analyzer:DeleteAnalyzer"
])
_SENSITIVE = frozenset([
    "CreateUser", "CreateAccessKey", "CreateLoginProfile", "UpdateLoginProfile",
    "AttachUserPolicy", "AttachRolePolicy", "AttachGroupPolicy", "PutUserPolicy", "PutRolePolicy",
    "PutGroupPolicy", "AddUserToGroup", "UpdateAssumeRolePolicy", "CreatePolicyVersion",
    "SetDefaultPolicyVersion", "GetSecretValue", "BatchGetSecretValue", "GetFederationToken",
    "GetPasswordData", "AuthorizeSecurityGroupIngress", "CreateKeyPair", "ImportKeyPair",
    "ModifyInstanceAttribute", "ModifySnapshotAttribute", "ModifyImageAttribute",
    "PutBucketPolicy", "PutBucketAcl", "DeletePublicAccessBlock", "DeleteBucketPublicAccessBlock",
    "ConsoleLogin"
])
_SENSITIVE_SOURCES = frozenset(
    ["iam", "organizations", "kms", "cloudtrail", "guardduty", "config", "securityhub", "sso"])
_DATA = frozenset([
    "GetObject", "SelectObjectContent", "RestoreObject", "GetSecretValue", "BatchGetSecretValue",
    "GetParametersByPath", "Scan", "BatchGetItem", "ExportTableToPointInTime"
])
_READ_PREFIXES = ("Get", "List", "Describe", "Head", "Lookup", "BatchGet", "Search", "Scan",
                  "Query", "Select")


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """Thresholds and weights of the scorer; every duration is in event-time seconds."""

    bucket_secs: int = 300
    """Length of the windows calls are counted in (rates, errors, bursts of new APIs)."""
    warmup_events: int = 50
    """An entity scores 0 until it has more events than this ..."""
    warmup_secs: float = 3 * 86_400.0
    """... and this much event time since its first event."""
    novelty_secs: float = 3_600.0
    """A source IP or user agent first seen stays news this long (every call in it scores)."""
    novelty_memory_events: float = 1_000.0
    """Half-life, in events, of the estimate of how often an entity meets something new."""
    rate_alpha: float = 0.02
    """EWMA weight of each active bucket in the overall baseline."""
    hourly_alpha: float = 0.05
    """EWMA weight of each active bucket in its hour-of-day baseline."""
    hourly_min_secs: float = 2 * 86_400.0
    """History needed before the hour-of-day baselines are used."""
    peak_halflife_secs: float = 7 * 86_400.0
    """Half-life of the remembered peak bucket."""
    spike_z: float = 6.0
    """A count is a spike above baseline mean + spike_z standard deviations ..."""
    spike_full_ratio: float = 1.6
    """... scoring its full weight at this multiple of the threshold."""
    rate_min_count: int = 60
    """Fewest calls in a bucket that can be a rate spike."""
    rate_peak_frac: float = 1.0
    """A rate spike must also exceed this fraction of the remembered peak."""
    data_min_count: int = 60
    """Fewest data reads (``data_apis``) in a bucket that can be bulk access."""
    data_peak_frac: float = 0.6
    """Bulk access must also exceed this fraction of the remembered data-read peak."""
    error_min_count: int = 10
    """Fewest failed calls in a bucket that can be an error spike."""
    error_min_excess: float = 0.4
    """Share of calls failing beyond the entity's usual share needed for an error spike."""
    new_api_burst_min: int = 4
    """Fewest never-called APIs in a bucket that make a burst of new APIs."""
    weight_new_ip: float = 0.6
    weight_new_ip_known_network: float = 0.15
    weight_new_agent: float = 0.6
    weight_new_api_read: float = 0.3
    weight_new_api_write: float = 0.45
    weight_new_api_sensitive: float = 0.7
    weight_new_api_critical: float = 0.9
    critical_rare_events: int = 5
    """A ``critical_apis`` call scores ``weight_new_api_critical`` while the principal has made
    no more calls of it than this."""
    weight_new_api_burst: float = 0.6
    weight_new_principal: float = 0.2
    weight_root: float = 0.9
    root_rare_events: int = 50
    """The root user scores ``weight_root`` while it has made no more calls than this in an
    account (every root call matters, not only the first)."""
    weight_rate: float = 0.6
    weight_data: float = 0.95
    weight_errors: float = 0.65
    reason_min: float = 0.1
    """Features scoring less than this add no reason."""
    max_entities: int = 100_000
    max_ips: int = 32
    max_networks: int = 16
    max_agents: int = 16
    max_apis: int = 160
    max_principals: int = 256
    """Pair-table caps per entity: a table may grow a quarter over its cap, then its least
    used entries are evicted down to three quarters of it (in bulk, so rarely)."""
    entity_kinds: tuple[str, ...] = KINDS
    critical_apis: frozenset[str] = _CRITICAL
    """``source:EventName`` (source without .amazonaws.com) alarming alone while rare."""
    sensitive_apis: frozenset[str] = _SENSITIVE
    sensitive_sources: frozenset[str] = _SENSITIVE_SOURCES
    """EventNames, and services whose writes, are sensitive."""
    data_apis: frozenset[str] = _DATA
    """EventNames that read data (bulk access is counted on these)."""
    views: dict[Any, Any] = field(default_factory=dict, init=False, repr=False, compare=False)
    """A cache of what this config makes of recurring row values (not configuration)."""

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            if f.name.startswith("weight_") or f.name == "reason_min":
                if not 0.0 <= v <= 1.0:
                    problems.append(f"{f.name} must be from 0 to 1, got {v!r}")
            elif f.type in ("int", "float") and not v > 0:
                problems.append(f"{f.name} must be positive, got {v!r}")
        if self.spike_full_ratio <= 1.0:
            problems.append(f"spike_full_ratio must be above 1, got {self.spike_full_ratio!r}")
        problems += [f"entity kind {k!r} is not one of {', '.join(KINDS)}"
                     for k in self.entity_kinds if k not in KINDS]
        if problems:
            msg = "anomaly config is invalid; fix: " + "; ".join(problems)
            raise ValueError(msg)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> AnomalyConfig:
        """A config from a TOML/JSON table; unknown keys are rejected, naming the known ones."""
        known = {f.name for f in fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            msg = (f"unknown anomaly config key(s) {', '.join(unknown)}; known keys: "
                   f"{', '.join(sorted(known))}")
            raise ValueError(msg)
        sets = ("critical_apis", "sensitive_apis", "sensitive_sources", "data_apis")
        conv: dict[str, Any] = {
            k: frozenset(v) if k in sets else tuple(v) if k == "entity_kinds" else v
            for k, v in values.items()}
        return cls(**conv)


DEFAULT_CONFIG = AnomalyConfig()


@dataclass(frozen=True, slots=True)
class Score:
    """How anomalous a row is for an entity (or, from :meth:`AnomalyScorer.score`, overall)."""

    value: float
    """In [0, 1]; :data:`ANOMALOUS` and above is worth raising."""
    reasons: tuple[str, ...] = ()
    """What stood out, strongest first."""
    entity: str = ""
    """The entity key (``principal:...``, ``ip:...``, ``account:.../region``) scoring highest."""


_NOTHING = Score(0.0)


# ---------------------------------------------------------------------------------- row views
_MACHINE = re.compile(r"\d{6,}|[0-9a-fA-F]{12,}")
_VERSION = re.compile(r"[\d._+#-]+")
_CACHE_MAX = 8192
_family_cache: dict[str, str] = {}
_principal_cache: dict[str, str] = {}




def agent_family(ua: str) -> str:
    """A user agent without its version numbers: ``aws-cli/ Python/ Darwin/ exe/x``."""
    fam = _family_cache.get(ua)
    if fam is None:
        fam = " ".join(_VERSION.sub("", t) for t in ua.split()[:4])[:80]
        if len(_family_cache) >= _CACHE_MAX:
            _family_cache.clear()
        _family_cache[ua] = fam
    return fam


def principal_of(row: Mapping[str, Any]) -> str | None:
    """Who made the call: the ARN (an assumed role's machine-made session name as ``*``),
    else ``key:<access key>``, else ``service:<invokedBy>``; None when the row says nobody."""
    arn = row.get("UserIdentityArn")
    if arn:
        if ":assumed-role/" not in arn:
            return arn
        p = _principal_cache.get(arn)
        if p is None:
            head, _, session = arn.rpartition("/")
            p = head + "/*" if session.startswith("i-") or _MACHINE.search(session) else arn
            if len(_principal_cache) >= _CACHE_MAX:
                _principal_cache.clear()
            _principal_cache[arn] = p
        return p
    key = row.get("UserIdentityAccessKeyId")
    if key:
        return f"key:{key}"
    by = row.get("UserIdentityInvokedBy")
    return f"service:{by}" if by else None


def _is_ip(s: str) -> bool:
    return ":" in s or (s[:1].isdigit() and s.count(".") == 3)


def _api_view(source: Any, name: Any, ro: Any, cfg: AnomalyConfig) -> tuple[str, str, int, bool]:
    """(``source:EventName``, EventName, tier, is a data read) of a call; tiers: 0 read,
    1 write, 2 sensitive, 3 critical."""
    name = name or "?"
    src = (source or "?").removesuffix(".amazonaws.com")
    api = f"{src}:{name}"
    if isinstance(ro, str):
        ro = ro.lower() == "true"
    elif ro is None:
        ro = name.startswith(_READ_PREFIXES)
    tier = (3 if api in cfg.critical_apis
            else 2 if name in cfg.sensitive_apis or (not ro and src in cfg.sensitive_sources)
            else 0 if ro else 1)
    return api, name, tier, name in cfg.data_apis


def _ip_view(ip: str) -> tuple[str, bool]:
    """(network, is an address) of a SourceIpAddress: the /48 of an IPv6 address, the /24
    of an IPv4 one (cached, though most addresses are seen once)."""
    v = _ip_cache.get(ip)
    if v is None:
        if ":" in ip:
            v = (":".join(ip.split(":")[:3]) + "::/48", True)
        elif ip[:1].isdigit() and ip.count(".") == 3:
            v = (ip[:ip.rfind(".")] + ".0/24", True)
        else:  # a service name ("ec2.amazonaws.com", "AWS Internal") is its own network
            v = (ip, False)
        if len(_ip_cache) >= _CACHE_MAX:
            _ip_cache.clear()
        _ip_cache[ip] = v
    return v


_ip_cache: dict[str, tuple[str, bool]] = {}
_time_cache: dict[str, float] = {}
"""Epoch seconds of TimeGenerated values recently read."""


def _row_time(row: Mapping[str, Any]) -> float | None:
    """The row's event time (TimeGenerated) in epoch seconds, or None."""
    tg = row.get("TimeGenerated")
    if tg.__class__ is not str:
        return event_time(tg)
    ts = _time_cache.get(tg)
    if ts is None:
        ts = event_time(tg)
        if ts is not None:  # the rows of one delivery share a few thousand times
            if len(_time_cache) >= _CACHE_MAX:
                _time_cache.clear()
            _time_cache[tg] = ts
    return ts


# What the features need from one row, made once for all its entities (a tuple: rows are many):
# (event time, principal, source IP, its network, whether it is an address, user-agent family,
#  user agent, source:EventName, EventName, tier, whether it reads data, error code,
#  account/region, whether the caller is the root user).
_View = tuple[float, str | None, str, str, bool, str, str, str, str, int, bool, Any, str, bool]
_KIND_RANK = {"ip": 0, "principal": 1, "account": 2, "key": 3}
"""Order of an entity's kind among a row's entities: ties between entity scores go to
the first (the IP, then the principal, the account, the access key)."""


def _view(row: Mapping[str, Any], ts: float, cfg: AnomalyConfig,
          who: str | None = None) -> _View:
    """The view of one row at event time ``ts`` (``who``: its :func:`principal_of`, when
    the caller made it already)."""
    g = row.get
    ip = g("SourceIpAddress") or ""
    net, is_ip = _ip_view(ip) if ip else ("", False)
    ua = g("UserAgent") or ""
    views = cfg.views
    key = (g("EventSource"), g("EventName"), g("ReadOnly"))
    api_view: tuple[str, str, int, bool] | None = views.get(key)
    if api_view is None:
        api_view = _api_view(*key, cfg)
        if len(views) < _CACHE_MAX:
            views[key] = api_view
    acct, region = g("RecipientAccountId") or g("UserIdentityAccountId") or "?", g("AWSRegion")
    account: str | None = views.get((acct, region))
    if account is None:
        account = f"{acct}/{region or '?'}"
        if len(views) < _CACHE_MAX:
            views[(acct, region)] = account
    api, name, tier, data = api_view
    if who is None:
        arn = g("UserIdentityArn")
        who = arn if arn and ":assumed-role/" not in arn else principal_of(row)
    return (ts, who, ip, net, is_ip, agent_family(ua) if ua else "", ua, api, name,
            tier, data, g("ErrorCode") or None, account, g("UserIdentityType") == "Root")


def entity_keys(row: Mapping[str, Any], config: AnomalyConfig = DEFAULT_CONFIG) -> list[str]:
    """The keys of the entities a row updates, e.g. ``principal:arn:...``, ``ip:1.2.3.4``,
    ``account:111122223333/us-east-1`` (service names as source are no IP entity)."""
    out = []
    kinds = config.entity_kinds
    if "principal" in kinds and (p := principal_of(row)):
        out.append("principal:" + p)
    ip = row.get("SourceIpAddress")
    if "ip" in kinds and ip and _is_ip(ip):
        out.append("ip:" + ip)
    if "account" in kinds:
        acct = row.get("RecipientAccountId") or row.get("UserIdentityAccountId") or "?"
        out.append(f"account:{acct}/{row.get('AWSRegion') or '?'}")
    ak = row.get("UserIdentityAccessKeyId")
    if "key" in kinds and isinstance(ak, str) and ak.startswith("AKIA"):
        out.append("key:" + ak)
    return out


# ------------------------------------------------------------------------------ entity state
def _ew(a: list[float], i: int, x: float, alpha: float) -> None:
    """EWMA of mean ``a[i]`` and variance ``a[i + 1]`` (West's update) with sample ``x``."""
    diff = x - a[i]
    incr = alpha * diff
    a[i] += incr
    a[i + 1] = (1.0 - alpha) * (a[i + 1] + diff * incr)


@functools.lru_cache(maxsize=16)
def _decay(half_life: float) -> float:
    return 0.5 ** (1.0 / half_life)


def _m(p_new: float) -> float:
    """How much a novelty counts, from how often the entity met something new lately:
    fully at 2% of its events or less, not at all at 20% or more (log-linear between)."""
    return 1.0 if p_new <= 0.02 else 0.0 if p_new >= 0.2 else math.log10(0.2 / p_new)


def _limit(mean: float, var: float, floor: float, cfg: AnomalyConfig) -> tuple[float, float]:
    """(the count above which a spike fires, standard deviation) of a baseline."""
    sd = math.sqrt(max(var, mean, 1.0))  # never tighter than Poisson
    return max(mean + cfg.spike_z * sd, floor), sd


def _spike(count: float, mean: float, var: float, floor: float,
           cfg: AnomalyConfig) -> tuple[float, float]:
    """(strength in [0, 1], standard deviation) of ``count`` over its baseline."""
    thresh, sd = _limit(mean, var, floor, cfg)
    if count <= thresh:
        return 0.0, sd
    return min(1.0, math.log(count / thresh) / math.log(cfg.spike_full_ratio)), sd


def _noisy_or(parts: list[tuple[float, str]]) -> float:
    """1 - Π(1 - s) over the feature scores, in their order."""
    keep = 1.0
    for s, _ in parts:
        keep *= 1.0 - s
    return 1.0 - keep


def _score(parts: list[tuple[float, str]] | None, key: str, cfg: AnomalyConfig) -> Score:
    """Noisy-OR of the feature scores, reasons strongest first."""
    if not parts:
        return Score(0.0, (), key)
    value = _noisy_or(parts)
    parts.sort(key=lambda p: -p[0])
    return Score(round(value, 4), tuple(r for s, r in parts if s >= cfg.reason_min), key)


_NONE = (0, 0, 0, 0)  # counts of a bucket without calls

# base[] slots: mean/var of calls and of data reads per active bucket, their peaks, decayed
# failed and total calls, active buckets closed, index of the last one closed.
_MC, _VC, _MD, _VD, _PC, _PD, _FE, _FN, _NB, _LB = range(10)


class EntityState:
    """One entity's baselines and pair tables; the state of a stateful operator keyed by it.

    :arg key: ``principal:<arn>``, ``ip:<address>`` or ``account:<id>/<region>`` (as
        :func:`entity_keys` makes them); the kind decides which features apply.
    """

    __slots__ = ("key", "kind", "label", "config", "n", "first_ts", "last_ts", "bucket", "edge",
                 "lim", "cur", "prev", "base", "hours", "pairs", "nov", "zero", "snap", "packed")

    def __init__(self, key: str, config: AnomalyConfig | None = None) -> None:
        kind, _, label = key.partition(":")
        if kind not in KINDS or not label:
            msg = f"entity key {key!r} must be '<kind>:<id>' with kind one of {', '.join(KINDS)}"
            raise ValueError(msg)
        self.key, self.kind = key, kind
        self.label = f"access key {label}" if kind == "key" else label  # who, in reasons
        self.config = config or DEFAULT_CONFIG
        self.n = 0
        self.first_ts = self.last_ts = 0.0
        self.bucket = -1
        # Where the bucket after ``bucket`` starts, once a roll set it: an event before it
        # is counted without dividing its time (-inf: unknown, as after a restore).
        self.edge = -math.inf
        self.lim: tuple[int, bool, float, float, float] | None = None  # see _limits
        self.cur = [0, 0, 0, 0]  # calls, failed calls, data reads, never-called APIs: this bucket
        self.prev: list[int] | None = None  # the same for the bucket just before, if active
        self.base = [0.0] * 10
        self.hours: list[float] | None = None  # per UTC hour: mean/var of calls, of data reads
        # value -> (count, first seen, last seen, flag); tuples, replaced on each update: the
        # garbage collector stops tracking them, and then their tables (most of the state)
        self.pairs: dict[str, dict[str, tuple[Any, ...]]] = {}
        # How often this entity meets something new lately (Good-Turing-like): the decayed
        # count of events and, per pair table, of events that brought a value never seen.
        self.nov: list[float] = []
        self.zero: Score | None = None  # this entity's "nothing to see" Score, made once
        self.snap: dict[str, Any] | None = None  # the last snapshot, until the state changes
        self.packed: bytes | None = None  # the last packed snapshot, likewise

    def update_and_score(self, row: Mapping[str, Any], ts: float | None = None) -> Score:
        """Learn from one row of this entity and score it (0 during warm-up).

        :arg ts: The row's event time in epoch seconds; by default its TimeGenerated. A row
            without a usable time is not learnt from and scores 0.
        """
        if ts is None:
            ts = event_time(row.get("TimeGenerated"))
            if ts is None:
                return Score(0.0, ("no usable TimeGenerated: not scored",), self.key)
        return self.observe(_view(row, ts, self.config))

    def observe(self, ev: _View) -> Score:
        """Learn from one event and score it (the row view :meth:`update_and_score` makes)."""
        found: list[tuple[int, list[tuple[float, str]]]] = []
        self.learn((0,), (ev,), None, found)
        return _score(found[0][1] if found else None, self.key, self.config)

    def learn(self, idx: Iterable[int], views: Sequence[_View], known: Sequence[bool] | None,
              found: list[tuple[int, list[tuple[float, str]]]]) -> None:
        """Learn from this entity's events, in order: the views at ``idx`` (row indexes),
        with, in ``known`` at the same index, whether the row's source address is a warm
        IP entity of its own (None: no IP entities). Appends (row index, (score, reason) of
        every feature that fired) to ``found`` for each row on which one fired.

        One call per entity and batch: the entity's tables and the config's thresholds are
        looked up once, not once per row."""
        self.snap = self.packed = None
        if self.kind == "principal" or self.kind == "key":
            self._learn_principal(idx, views, known, found)
        elif self.kind == "account":
            self._learn_account(idx, views, found)
        else:
            self._learn_ip(idx, views, None, found)

    def learn_address(self, idx: Iterable[int], views: Sequence[_View], known: list[bool],
                      found: list[tuple[int, list[tuple[float, str]]]]) -> None:
        """:meth:`learn` for an IP entity, setting ``known[i]`` for each of its rows
        ``i``: whether the address was a warm entity before the row (in use for days: an
        office NAT other principals use, not a stranger's), which the row's principal is
        told."""
        self.snap = self.packed = None
        self._learn_ip(idx, views, known, found)

    def _learn_ip(self, idx: Iterable[int], views: Sequence[_View], known: list[bool] | None,
                  found: list[tuple[int, list[tuple[float, str]]]]) -> None:
        cfg = self.config
        bs, warm_n, warm_secs = cfg.bucket_secs, cfg.warmup_events, cfg.warmup_secs
        for i in idx:
            ev = views[i]
            if known is not None:
                known[i] = self.n > warm_n and ev[0] - self.first_ts >= warm_secs
            _, warm = self._tick(ev, bs, warm_n, warm_secs)
            if warm and self.base[_NB]:
                parts: list[tuple[float, str]] = []
                self._volume_check(ev, parts)
                if parts:
                    found.append((i, parts))

    def _volume_check(self, ev: _View, parts: list[tuple[float, str]]) -> None:
        """The volume features, when the counts of the last ``bucket_secs`` could make one."""
        cfg, cur, prev = self.config, self.cur, self.prev or _NONE
        if (cur[0] + prev[0] >= cfg.rate_min_count or cur[1] + prev[1] >= cfg.error_min_count
                or (ev[10] and cur[2] + prev[2] >= cfg.data_min_count)):
            self._volume(ev, parts)

    def _learn_principal(self, idx: Iterable[int], views: Sequence[_View],
                         known: Sequence[bool] | None,
                         found: list[tuple[int, list[tuple[float, str]]]]) -> None:
        """:meth:`learn` for a principal or access key: novelty of networks, addresses,
        user agents and APIs, bursts of new APIs, and the volume features."""
        cfg, who, pairs, base = self.config, self.label, self.pairs, self.base
        fresh, bs = cfg.novelty_secs, cfg.bucket_secs
        warm_n, warm_secs = cfg.warmup_events, cfg.warmup_secs
        max_net, max_ip, max_agent, max_api = (cfg.max_networks, cfg.max_ips, cfg.max_agents,
                                               cfg.max_apis)
        d = _decay(cfg.novelty_memory_events)
        t_net, t_ip, t_agent, t_api = (pairs.get("net"), pairs.get("ip"), pairs.get("agent"),
                                       pairs.get("api"))
        nov = self.nov
        if not nov:
            nov = self.nov = [0.0] * 6
        for i in idx:
            ev = views[i]
            ts = ev[0]
            n, warm = self._tick(ev, bs, warm_n, warm_secs)
            cur = self.cur
            _, _, ip, net, _, agent, ua, api, _, tier, _, _, _, _ = ev
            ie = ae = None
            net_new = ip_new = agent_new = False
            if ip:
                if t_net is None:
                    t_net = pairs["net"] = {}
                e = t_net.get(net)
                if e is None:
                    if len(t_net) >= max_net + (max_net >> 2):  # amortised: a quarter over, then half go
                        _evict(t_net, max_net)
                    t_net[net] = (1, ts, ts, 0)
                    net_new = True
                else:
                    t_net[net] = (e[0] + 1, e[1], ts, e[3])
                if t_ip is None:
                    t_ip = pairs["ip"] = {}
                ie = t_ip.get(ip)
                if ie is None:
                    if len(t_ip) >= max_ip + (max_ip >> 2):  # amortised: a quarter over, then half go
                        _evict(t_ip, max_ip)
                    # 2: its network was new too; 1: new, but a known address elsewhere
                    ie = t_ip[ip] = (1, ts, ts, 0 if not net_new else 1 if known and known[i]
                                     else 2)
                    ip_new = True
                else:
                    ie = t_ip[ip] = (ie[0] + 1, ie[1], ts, ie[3])
            if agent:
                if t_agent is None:
                    t_agent = pairs["agent"] = {}
                ae = t_agent.get(agent)
                if ae is None:
                    if len(t_agent) >= max_agent + (max_agent >> 2):  # amortised, as above
                        _evict(t_agent, max_agent)
                    ae = t_agent[agent] = (1, ts, ts, 0)
                    agent_new = True
                else:
                    ae = t_agent[agent] = (ae[0] + 1, ae[1], ts, ae[3])
            if t_api is None:
                t_api = pairs["api"] = {}
            pe = t_api.get(api)
            if pe is None:
                if len(t_api) >= max_api + (max_api >> 2):  # amortised: a quarter over, then half go
                    _evict(t_api, max_api)
                pe = t_api[api] = (1, ts, ts, 0)
                api_new = True
            else:
                pe = t_api[api] = (pe[0] + 1, pe[1], ts, pe[3])
                api_new = False
            api_i = 4 if tier == 0 else 5  # never-called reads are common; new writes are not
            if warm:  # p(new) per table before this event; then count it in
                seen = nov[0] + 1.0
                p_net, p_ip, p_agent, p_api = ((nov[1] + 0.5) / seen, (nov[2] + 0.5) / seen,
                                               (nov[3] + 0.5) / seen, (nov[api_i] + 0.5) / seen)
            nov[0] = nov[0] * d + 1.0
            nov[1] = nov[1] * d + net_new
            nov[2] = nov[2] * d + ip_new
            nov[3] = nov[3] * d + agent_new
            nov[4] *= d
            nov[5] *= d
            if api_new:
                nov[api_i] += 1.0
                cur[3] += 1
            if not warm:
                continue
            parts: list[tuple[float, str]] = []
            days = (ts - self.first_ts) / 86_400
            if ie is not None and ts - ie[1] < fresh:
                if ie[3] == 2:
                    s = cfg.weight_new_ip * _m(p_net)
                    why = f"network {net} never seen before"
                else:
                    s = cfg.weight_new_ip_known_network * _m(p_ip)
                    why = ("an address other principals have used for days" if ie[3] else
                           f"in known network {net}")
                if s:
                    parts.append((s, f"new source IP {ip} for {who} ({why}) after {days:.1f} "
                                     "days of history"))
            if ae is not None and ts - ae[1] < fresh and (s := cfg.weight_new_agent * _m(p_agent)):
                parts.append((s, f"user agent never seen for {who} in {days:.1f} days: "
                                 f"{ua[:100]}"))
            if tier == 3 and pe[0] <= cfg.critical_rare_events:
                # a logging-tamper API stays alarming while it is rare, not only the first time
                nth = "first call" if api_new else f"call {pe[0]} (rare)"
                parts.append((cfg.weight_new_api_critical, f"{nth} of {api} by {who} after "
                                                           f"{days:.1f} days of history"))
            elif api_new:
                w = (cfg.weight_new_api_read, cfg.weight_new_api_write,
                     cfg.weight_new_api_sensitive)[tier]
                if s := w * _m(p_api):
                    parts.append((s, f"first call of {api} by {who} after {days:.1f} days "
                                     "of history"))
            prev = self.prev
            if prev and prev[3]:  # never-called APIs of the bucket before, fading out
                k = cur[3] + prev[3] * (1.0 - min(1.0, (ts - self.bucket * bs) / bs))
            else:
                k = cur[3]
            if k >= cfg.new_api_burst_min:
                s = min(1.0, (k - cfg.new_api_burst_min + 1) / cfg.new_api_burst_min)
                if s := cfg.weight_new_api_burst * s * _m(p_api):
                    parts.append((s, f"{k:.0f} APIs never called before by {who} within "
                                     f"{bs / 60:g} min"))
            if base[_NB]:
                self._volume_check(ev, parts)
            if parts:
                found.append((i, parts))

    def _learn_account(self, idx: Iterable[int], views: Sequence[_View],
                       found: list[tuple[int, list[tuple[float, str]]]]) -> None:
        """:meth:`learn` for an account and region: its principals (the root user above
        all), and the volume features."""
        cfg, pairs, base = self.config, self.pairs, self.base
        cap, bs = cfg.max_principals, cfg.bucket_secs
        warm_n, warm_secs = cfg.warmup_events, cfg.warmup_secs
        d = _decay(cfg.novelty_memory_events)
        t = pairs.get("principal")
        for i in idx:
            ev = views[i]
            ts = ev[0]
            n, warm = self._tick(ev, bs, warm_n, warm_secs)
            principal = ev[1]
            parts: list[tuple[float, str]] = []
            if principal:
                if t is None:
                    t = pairs["principal"] = {}
                e = t.get(principal)
                if e is None:
                    if len(t) >= cap + (cap >> 2):
                        _evict(t, cap)
                    e = t[principal] = (1, ts, ts, int(ev[13]))
                    new = True
                else:
                    e = t[principal] = (e[0] + 1, e[1], ts, e[3])
                    new = False
                nov = self.nov
                if not nov:
                    nov = self.nov = [0.0, 0.0]
                p = (nov[1] + 0.5) / (nov[0] + 1.0) if warm and new else 0.0
                nov[0] = nov[0] * d + 1.0
                nov[1] = nov[1] * d + new
                if warm:
                    days = (ts - self.first_ts) / 86_400
                    if e[3] and e[0] <= cfg.root_rare_events:
                        first = ("first activity" if ts - e[1] < cfg.novelty_secs else
                                 f"rare activity ({e[0]} events in {days:.1f} days)")
                        parts.append((cfg.weight_root, f"{first} of the root user in account "
                                                       f"{self.label} after {days:.1f} days of "
                                                       "history"))
                    elif new and (s := cfg.weight_new_principal * _m(p)):
                        parts.append((s, f"first activity of {principal} in {self.label} after "
                                         f"{days:.1f} days"))
            if warm and base[_NB]:
                self._volume_check(ev, parts)
            if parts:
                found.append((i, parts))

    # ------------------------------------------------------------------------- baselines
    def _tick(self, ev: _View, bs: float, warm_n: int, warm_secs: float) -> tuple[int, bool]:
        """Count one event in the volume buckets (rolling them on); (events seen, whether
        the entity is past its warm-up)."""
        ts = ev[0]
        if self.n == 0:
            self.first_ts = self.last_ts = ts
        if ts >= self.edge:  # not before the next bucket's start: it may have begun
            b = int(ts // bs)
            if b > self.bucket:
                self._roll(b)
        cur = self.cur
        cur[0] += 1
        if ev[11]:
            cur[1] += 1
        if ev[10]:
            cur[2] += 1
        n = self.n = self.n + 1
        if ts > self.last_ts:
            self.last_ts = ts
        return n, n > warm_n and ts - self.first_ts >= warm_secs

    def _roll(self, b: int) -> None:
        """Close the current bucket into the baselines and start bucket ``b``."""
        cur, cfg = self.cur, self.config
        c = cur[0]
        if c:
            base, d, old = self.base, cur[2], self.bucket
            a = cfg.rate_alpha
            if base[_NB]:
                _ew(base, _MC, c, a)
                _ew(base, _MD, d, a)
                decay = 0.5 ** ((old - base[_LB]) * cfg.bucket_secs / cfg.peak_halflife_secs)
            else:
                base[_MC] = base[_VC] = c
                base[_MD] = base[_VD] = d
                decay = 0.0
            base[_PC] = max(base[_PC] * decay, c)
            base[_PD] = max(base[_PD] * decay, d)
            base[_FE] = base[_FE] * (1.0 - a) + cur[1]
            base[_FN] = base[_FN] * (1.0 - a) + c
            base[_NB] += 1
            base[_LB] = old
            h = self.hours
            if h is None:
                h = self.hours = [-1.0] * 96
            i = int(old * cfg.bucket_secs // 3600 % 24) * 4
            if h[i] < 0:
                h[i] = h[i + 1] = c
                h[i + 2] = h[i + 3] = d
            else:
                _ew(h, i, c, cfg.hourly_alpha)
                _ew(h, i + 2, d, cfg.hourly_alpha)
            self.prev = cur if b == old + 1 else None
        else:
            self.prev = None
        self.cur = [0, 0, 0, 0]
        self.bucket = b
        self.edge = (b + 1) * cfg.bucket_secs

    def _volume(self, ev: _View, parts: list[tuple[float, str]]) -> None:
        """Call-rate, bulk-read and failed-call spikes over the last ``bucket_secs``.

        A busy entity is past the minimum counts on most of its rows, and its baselines
        change only when a bucket closes: the counts each feature must pass are worked out
        once per bucket (:meth:`_limits`), and a row that passes none costs a few float
        comparisons. One that may passes to :meth:`_volume_parts`, which scores it."""
        cfg = self.config
        hourly = self.hours is not None and ev[0] - self.first_ts >= cfg.hourly_min_secs
        lim = self.lim
        if lim is None or lim[0] != self.bucket or lim[1] is not hourly:
            lim = self.lim = self._limits(hourly)
        cur, prev = self.cur, self.prev
        if prev:  # the bucket before, fading out as this one goes by
            x = (ev[0] - self.bucket * cfg.bucket_secs) / cfg.bucket_secs
            keep = 0.0 if x >= 1.0 else 1.0 if x <= 0.0 else 1.0 - x
            c, e = cur[0] + prev[0] * keep, cur[1] + prev[1] * keep
        else:
            keep, c, e = 0.0, cur[0], cur[1]
        if ((c >= cfg.rate_min_count and c > lim[2])
                or (e >= cfg.error_min_count and (e / c - lim[4]) / (1.0 - lim[4])
                    >= cfg.error_min_excess)
                or (ev[10] and (self.kind == "principal" or self.kind == "key")
                    and (d := cur[2] + (prev[2] * keep if prev else 0.0)) >= cfg.data_min_count
                    and d > lim[3])):
            self._volume_parts(ev, parts)

    def _limits(self, hourly: bool) -> tuple[int, bool, float, float, float]:
        """(bucket, whether the hour-of-day baselines apply, the call count and the data
        reads above which :func:`_spike` fires, the usual share of failed calls): what
        :meth:`_volume_parts` compares the counts with, for the current bucket."""
        cfg, base = self.config, self.base
        mc, vc, md, vd = self._baselines(hourly)
        rate, _ = _limit(mc, vc, max(base[_PC] * cfg.rate_peak_frac, cfg.rate_min_count), cfg)
        data, _ = _limit(md, vd, max(base[_PD] * cfg.data_peak_frac, cfg.data_min_count), cfg)
        return self.bucket, hourly, rate, data, (base[_FE] + 1.0) / (base[_FN] + 50.0)

    def _baselines(self, hourly: bool) -> tuple[float, float, float, float]:
        """Mean and variance of calls, then of data reads, per active bucket: with
        ``hourly`` (enough history), the busier of the overall and this hour's baseline."""
        base, h = self.base, self.hours
        mc, vc, md, vd = base[_MC], base[_VC], base[_MD], base[_VD]
        if hourly and h is not None:
            i = int(self.bucket * self.config.bucket_secs // 3600 % 24) * 4
            if h[i] >= 0:
                mc, vc = max(mc, h[i]), max(vc, h[i + 1])
                md, vd = max(md, h[i + 2]), max(vd, h[i + 3])
        return mc, vc, md, vd

    def _volume_parts(self, ev: _View, parts: list[tuple[float, str]]) -> None:
        """:meth:`_volume` for a row whose counts may make a feature fire."""
        cfg, cur, prev, base, who = self.config, self.cur, self.prev, self.base, self.label
        bs = cfg.bucket_secs
        keep = 1.0 - min(1.0, max(0.0, (ev[0] - self.bucket * bs) / bs)) if prev else 0.0
        c = cur[0] + (prev[0] * keep if prev else 0.0)
        mins = f"{bs / 60:g} min"
        mc, vc, md, vd = self._baselines(ev[0] - self.first_ts >= cfg.hourly_min_secs)
        # A call-rate spike and a failed-call spike are mostly one burst seen twice: they
        # count once (the stronger), so a script looping on AccessDenied is not two signals.
        burst: tuple[float, str] | None = None
        if c >= cfg.rate_min_count:
            s, sd = _spike(c, mc, vc, max(base[_PC] * cfg.rate_peak_frac, cfg.rate_min_count), cfg)
            if s:
                burst = (cfg.weight_rate * s,
                         f"{c:.0f} calls in {mins} by {who} vs baseline {mc:.0f}±{sd:.0f}")
        e = cur[1] + (prev[1] * keep if prev else 0.0)
        if e >= cfg.error_min_count:
            p = (base[_FE] + 1.0) / (base[_FN] + 50.0)  # a 2% prior
            excess = (e / c - p) / (1.0 - p)
            if excess >= cfg.error_min_excess:
                s = cfg.weight_errors * min(1.0, excess) * min(1.0, e / (2 * cfg.error_min_count))
                why = (f"{e:.0f} of {c:.0f} calls failed ({ev[11] or 'errors'}) in {mins} "
                       f"for {who} vs usually {p:.1%}")
                burst = ((s, why) if burst is None else
                         (max(s, burst[0]), f"{burst[1]}; {why}" if burst[0] >= s else
                          f"{why}; {burst[1]}"))
        if burst is not None:
            parts.append(burst)
        if ev[10] and (self.kind == "principal" or self.kind == "key"):
            d = cur[2] + (prev[2] * keep if prev else 0.0)
            if d >= cfg.data_min_count:
                s, sd = _spike(d, md, vd, max(base[_PD] * cfg.data_peak_frac, cfg.data_min_count),
                               cfg)
                if s:
                    parts.append((cfg.weight_data * s,
                                  f"{d:.0f} data reads ({ev[8]}) in {mins} by {who} vs baseline "
                                  f"{md:.0f}±{sd:.0f} (peak {base[_PD]:.0f})"))

    # ------------------------------------------------------------------------ persistence
    def snapshot(self) -> dict[str, Any]:
        """The state as plain JSON-able data: a copy, made again only once the entity has
        learnt something since, so snapshotting a scorer costs what changed, not what it
        holds (bytewax snapshots state every epoch). Treat it as read-only."""
        if self.snap is None:
            self.snap = self._snapshot()
        return self.snap

    def _snapshot(self) -> dict[str, Any]:
        return {"n": self.n, "first_ts": self.first_ts, "last_ts": self.last_ts,
                "bucket": self.bucket, "cur": list(self.cur),
                "prev": None if self.prev is None else list(self.prev), "base": list(self.base),
                "hours": None if self.hours is None else list(self.hours),
                "pairs": {t: {k: list(e) for k, e in tab.items()} for t, tab in self.pairs.items()},
                "nov": list(self.nov)}

    @classmethod
    def from_snapshot(cls, key: str, data: Mapping[str, Any],
                      config: AnomalyConfig | None = None) -> EntityState:
        """An entity continuing from :meth:`snapshot` data."""
        st = cls(key, config)
        try:
            st.n, st.first_ts, st.last_ts = int(data["n"]), data["first_ts"], data["last_ts"]
            st.bucket, st.cur = int(data["bucket"]), list(data["cur"])
            st.prev = None if data["prev"] is None else list(data["prev"])
            st.base = list(data["base"])
            st.hours = None if data["hours"] is None else list(data["hours"])
            st.pairs = {t: {k: tuple(e) for k, e in tab.items()}
                        for t, tab in data["pairs"].items()}
            st.nov = [float(v) for v in data["nov"]]
        except (KeyError, TypeError, ValueError) as exc:
            msg = (f"anomaly state of {key!r} is unreadable ({exc!r}); start without the old "
                   "state (the baselines are relearnt)")
            raise ValueError(msg) from exc
        return st

    def pack(self) -> bytes:
        """The state as bytes (:func:`operators.enrich.packing.pack`), made again only once
        the entity has learnt something since: what recovery snapshots hold. Packing copies
        the live lists and dicts in C, where :meth:`snapshot` copies them in Python; in the
        flow that was most of the cost of a snapshot."""
        if self.packed is None:
            self.packed = packing.pack((self.n, self.first_ts, self.last_ts, self.bucket,
                                        self.cur, self.prev, self.base, self.hours, self.pairs,
                                        self.nov))
        return self.packed

    @classmethod
    def unpack(cls, key: str, packed: bytes, config: AnomalyConfig | None = None) -> EntityState:
        """An entity continuing from :meth:`pack`."""
        st = cls(key, config)
        try:
            (st.n, st.first_ts, st.last_ts, st.bucket, st.cur, st.prev, st.base, st.hours,
             st.pairs, st.nov) = packing.unpack(packed)
        except (TypeError, ValueError) as exc:
            msg = (f"anomaly state of {key!r} is unreadable ({exc!r}); start without the old "
                   "state (the baselines are relearnt)")
            raise ValueError(msg) from exc
        st.packed = packed
        return st

    def __getstate__(self) -> tuple[str, dict[str, Any]]:  # small pickles for bytewax snapshots
        return self.key, self.snapshot()

    def __setstate__(self, state: tuple[str, dict[str, Any]]) -> None:
        st = EntityState.from_snapshot(state[0], state[1])
        for name in EntityState.__slots__:  # zero included: None
            setattr(self, name, getattr(st, name))


def _evict(t: dict[str, Any], cap: int) -> None:
    """Drop the least used entries of a pair table down to three quarters of its cap (ties:
    the least recently seen, then the first inserted). Tables are let grow a quarter over
    their cap first, so that each eviction drops half the cap: one sort per cap / 2 new
    values, not per cap / 4 (tables of new addresses fill up all the time)."""
    entries, keys = t.values(), list(t)
    counts, lasts = list(map(_COUNT, entries)), list(map(_LAST, entries))
    # (count, last seen, position) order as two stable sorts on plain numbers: compared in
    # C without building a tuple per entry (tables of new addresses fill up all the time)
    order = sorted(range(len(keys)), key=lasts.__getitem__)
    order.sort(key=counts.__getitem__)
    for j in order[: max(1, len(keys) - cap * 3 // 4)]:
        del t[keys[j]]


_COUNT, _LAST = operator.itemgetter(0), operator.itemgetter(2)


def _keys(ev: _View, row: Mapping[str, Any], kinds: tuple[str, ...]) -> list[str]:
    """The keys of a row's entities (from its view), in the order of :data:`_KIND_RANK`;
    service names as source are no IP entity."""
    keys = []
    if ev[4] and "ip" in kinds:
        keys.append("ip:" + ev[2])
    if ev[1] and "principal" in kinds:
        keys.append("principal:" + ev[1])
    if "account" in kinds:
        keys.append("account:" + ev[12])
    if "key" in kinds:  # read only when asked for: off by default
        ak = row.get("UserIdentityAccessKeyId")
        if ak.__class__ is str and ak.startswith("AKIA"):
            keys.append("key:" + ak)
    return keys


def _combine(hits: list[tuple[int, str, list[tuple[float, str]]]], cfg: AnomalyConfig) -> Score:
    """A row's score from the features that fired for each of its entities, (kind rank, key,
    parts): the highest entity's, with the reasons of every entity (strongest first)."""
    if len(hits) > 1:
        hits.sort(key=lambda x: x[0])
    best: tuple[float, list[tuple[float, str]], str] | None = None
    more: list[tuple[float, list[tuple[float, str]], str]] = []
    for _, key, parts in hits:
        value = _noisy_or(parts)
        if best is None or value > best[0]:
            if best is not None:
                more.append(best)
            best = (value, parts, key)
        else:
            more.append((value, parts, key))
    assert best is not None
    sc = _score(best[1], best[2], cfg)
    if not more:
        return sc
    more.sort(key=lambda m: -m[0])
    extra = (r for m in more for r in _score(m[1], m[2], cfg).reasons)
    return Score(sc.value, tuple(dict.fromkeys((*sc.reasons, *extra))), sc.entity)


# ------------------------------------------------------------------------------------ scorer


class AnomalyScorer:
    """Scores rows against every entity they touch, keeping at most ``max_entities``.

    :arg config: Thresholds and weights (:class:`AnomalyConfig`); the defaults by default.
    """

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or DEFAULT_CONFIG
        self.evicted = 0
        """Entities dropped (with their baselines) to stay within ``max_entities``."""
        self._entities: OrderedDict[str, EntityState | bytes] = OrderedDict()
        """Live entities, and those idle since the last :meth:`pack` as its bytes."""

    def __len__(self) -> int:
        """Entities with state."""
        return len(self._entities)

    def score(self, row: Mapping[str, Any], ts: float | None = None) -> Score:
        """Update every entity of ``row`` and score it: the highest entity score, with the
        reasons of every entity that scored (strongest entity first).

        :arg ts: Event time in epoch seconds; by default the row's TimeGenerated.
        """
        if ts is None:
            ts = _row_time(row)
            if ts is None:
                return Score(0.0, ("no usable TimeGenerated: not scored",), "")
        return self._score_one(row, _view(row, ts, self.config))

    def score_many(self, rows: Sequence[Mapping[str, Any]],
                   times: Sequence[float | None] | None = None,
                   principals: Sequence[str | None] | None = None) -> list[Score]:
        """:meth:`score` for each of ``rows`` in order, with the same results, for the cost of
        one pass over the rows and one call per entity: the rows are grouped by entity, and
        each entity learns from its rows in one go.

        At the ``max_entities`` cap, the least recently seen entities are evicted in bulk
        before the batch (down to a sixteenth of the cap below what the batch may add), not
        one per new entity: which entities go may then differ from :meth:`score` row by row,
        never the scores of the entities kept.

        :arg times: Event times in epoch seconds, one per row (None: the row's TimeGenerated).
        :arg principals: Each row's :func:`principal_of` (``""`` for none), when the caller
            made it already (the flow shards rows by it).
        """
        batch = self._learn_batch(rows, times, principals)
        if batch is None:  # a batch of the order of the cap: row by row
            return [self.score(row, None if times is None else times[i])
                    for i, row in enumerate(rows)]
        out, views, states, hits = batch
        cfg = self.config
        kinds = cfg.entity_kinds
        for i, ev in enumerate(views):
            if out[i] is not None:
                continue
            h = hits.get(i) if hits else None
            if h is not None:
                out[i] = _combine(h, cfg)
                continue
            keys = _keys(ev, rows[i], kinds)
            if not keys:
                out[i] = _NOTHING
                continue
            st = states[keys[0]]  # most rows: one shared Score per entity, not one per row
            z = st.zero
            if z is None:
                z = st.zero = Score(0.0, (), st.key)
            out[i] = z
        return out  # type: ignore[return-value]

    def flag_many(self, rows: Sequence[Mapping[str, Any]], threshold: float = ANOMALOUS, *,
                  principals: Sequence[str | None] | None = None) -> list[tuple[int, Score]]:
        """(row index, score) of the rows scoring at least ``threshold``, in row order, having
        learnt from every row: :meth:`score_many` (the same state, the same scores) without
        a :class:`Score` for each of the many rows that score nothing (what the flow needs).

        :raises ValueError: ``threshold`` is not above 0 and at most 1.
        """
        if not 0.0 < threshold <= 1.0:
            msg = f"threshold must be above 0 and at most 1, got {threshold!r}"
            raise ValueError(msg)
        batch = self._learn_batch(rows, None, principals)
        if batch is None:
            return [(i, s) for i, s in enumerate(self.score_many(rows, principals=principals))
                    if s.value >= threshold]
        cfg = self.config
        hits = batch[3]
        out = []
        for i in sorted(hits):  # most rows with features score low: no Score made for them
            h = hits[i]
            if round(max(_noisy_or(parts) for _, _, parts in h), 4) >= threshold:
                out.append((i, _combine(h, cfg)))  # its value: the same, rounded as _score
        return out

    def _learn_batch(self, rows: Sequence[Mapping[str, Any]],
                     times: Sequence[float | None] | None,
                     principals: Sequence[str | None] | None
                     ) -> tuple[list[Score | None], list[Any], dict[str, EntityState],
                                dict[int, list[tuple[int, str, list[tuple[float, str]]]]]] | None:
        """Every entity of ``rows`` learns from its rows, in row order: (the scores of rows
        without a usable time, else None; each row's view; the states by key; (kind rank,
        key, features that fired) per row on which one fired). None, learning nothing, when
        the batch is of the order of ``max_entities``."""
        cfg = self.config
        kinds = cfg.entity_kinds
        want_ip, want_who, want_acct = "ip" in kinds, "principal" in kinds, "account" in kinds
        want_key = "key" in kinds
        n = len(rows)
        ents = self._entities
        cap = cfg.max_entities
        if len(ents) + 4 * n > cap:  # four entities a row at most
            keep = cap - 4 * n - cap // 16
            if keep < cap // 2:
                return None
            self._evict_to(keep)
        out: list[Score | None] = [None] * n
        views: list[Any] = [None] * n
        # The rows of each entity, in order, per kind and by the value its key is made of:
        # the key string is made once per entity, not once per row.
        by_ip: dict[str, list[int]] = {}
        by_who: dict[str, list[int]] = {}
        by_acct: dict[str, list[int]] = {}
        by_key: dict[str, list[int]] = {}
        tcache = _time_cache
        for i, row in enumerate(rows):
            ts = times[i] if times is not None else None
            if ts is None:
                tg = row.get("TimeGenerated")  # _row_time, its cache read here
                ts = tcache.get(tg) if tg.__class__ is str else None
                if ts is None and (ts := _row_time(row)) is None:
                    out[i] = Score(0.0, ("no usable TimeGenerated: not scored",), "")
                    continue
            ev = views[i] = _view(row, ts, cfg, None if principals is None else principals[i])
            if ev[4] and want_ip:
                by_ip.setdefault(ev[2], []).append(i)
            if ev[1] and want_who:
                by_who.setdefault(ev[1], []).append(i)
            if want_acct:
                by_acct.setdefault(ev[12], []).append(i)
            if want_key:  # read only when asked for: off by default
                ak = row.get("UserIdentityAccessKeyId")
                if ak.__class__ is str and ak.startswith("AKIA"):
                    by_key.setdefault(ak, []).append(i)
        states: dict[str, EntityState] = {}
        hits: dict[int, list[tuple[int, str, list[tuple[float, str]]]]] = {}
        known = [False] * n  # per row: its address is a warm IP entity (set by the IPs)
        found: list[tuple[int, list[tuple[float, str]]]] = []
        order: list[tuple[int, int, str]] = []  # (last row, kind rank, key) of each entity
        # IP entities first: whether an address is in use for days tells the principals.
        for prefix, rank, groups in (("ip:", 0, by_ip), ("principal:", 1, by_who),
                                     ("account:", 2, by_acct), ("key:", 3, by_key)):
            for value, idx in groups.items():
                key = prefix + value
                got = ents.get(key)
                if got is None:  # no eviction: there is room for every entity of the batch
                    st = ents[key] = EntityState(key, cfg)
                else:
                    if isinstance(got, bytes):  # idle since the last snapshot: kept packed
                        st = ents[key] = EntityState.unpack(key, got, cfg)
                    else:
                        st = got
                    ents.move_to_end(key)
                states[key] = st
                order.append((idx[-1], rank, key))
                if rank:
                    st.learn(idx, views, known, found)
                else:
                    st.learn_address(idx, views, known, found)
                if found:
                    for i, parts in found:
                        h = hits.get(i)
                        if h is None:
                            hits[i] = [(rank, key, parts)]
                        else:
                            h.append((rank, key, parts))
                    found = []
        if n > 1 and len(order) > 1:  # least recently seen first, as row by row
            order.sort()
            for *_, key in order:
                ents.move_to_end(key)
        return out, views, states, hits

    def _score_one(self, row: Mapping[str, Any], ev: _View) -> Score:
        """:meth:`score_many` for one row (its view made): each entity is created, evicting
        the least recently seen beyond ``max_entities``, and refreshed in the row's order."""
        cfg = self.config
        keys = _keys(ev, row, cfg.entity_kinds)
        ents = self._entities
        known = [False]
        first: EntityState | None = None
        hits: list[tuple[int, str, list[tuple[float, str]]]] = []
        found: list[tuple[int, list[tuple[float, str]]]] = []
        for key in keys:
            got = ents.get(key)
            if got is None:
                st = ents[key] = EntityState(key, cfg)
                if len(ents) > cfg.max_entities:
                    ents.popitem(last=False)
                    self.evicted += 1
            else:
                if isinstance(got, bytes):  # idle since the last snapshot: kept packed
                    st = ents[key] = EntityState.unpack(key, got, cfg)
                else:
                    st = got
                ents.move_to_end(key)
            if first is None:
                first = st
            if st.kind == "ip":  # an address in use for days is not a stranger's
                st.learn_address((0,), (ev,), known, found)
            else:
                st.learn((0,), (ev,), known, found)
            if found:
                hits.append((_KIND_RANK[st.kind], key, found[0][1]))
                found = []
        if hits:
            return _combine(hits, cfg)
        if first is None:
            return _NOTHING
        z = first.zero
        if z is None:
            z = first.zero = Score(0.0, (), first.key)
        return z

    def _evict_to(self, keep: int) -> None:
        """Evict the least recently seen entities down to ``keep`` (at least 0)."""
        ents = self._entities
        gone = len(ents) - max(0, keep)
        if gone > 0:
            pop = ents.popitem
            for _ in range(gone):
                pop(last=False)
            self.evicted += gone

    def _live(self, key: str) -> EntityState | None:
        got = self._entities.get(key)
        if isinstance(got, bytes):
            st = self._entities[key] = EntityState.unpack(key, got, self.config)
            return st
        return got

    def entity(self, key: str) -> EntityState | None:
        """The state of one entity (without refreshing its recency), or None."""
        return self._live(key)

    def snapshot(self) -> dict[str, Any]:
        """Every entity's state as plain JSON-able data, least recently seen first."""
        cfg = self.config
        return {"version": SNAPSHOT_VERSION, "bucket_secs": cfg.bucket_secs,
                "evicted": self.evicted,
                "entities": [[k, (EntityState.unpack(k, st, cfg) if isinstance(st, bytes)
                                  else st).snapshot()]
                             for k, st in self._entities.items()]}

    def pack(self) -> dict[str, Any]:
        """What recovery snapshots hold: :meth:`snapshot` with each entity as
        :meth:`EntityState.pack` bytes (``packed`` instead of ``entities``); :meth:`restore`
        takes either.

        An entity that learnt nothing since the previous pack is from then on kept as these
        bytes only (unpacked again when it next sees a row): entities seen once, or long ago,
        cost the few hundred bytes of their packed state in memory, not the kilobytes of
        their live tables."""
        ents = self._entities
        out = []
        for k, st in ents.items():
            if isinstance(st, bytes):
                out.append((k, st))
                continue
            b = st.packed
            if b is not None:  # unchanged since the last pack: keep the bytes only
                ents[k] = b
            else:
                b = st.pack()
            out.append((k, b))
        return {"version": SNAPSHOT_VERSION, "bucket_secs": self.config.bucket_secs,
                "evicted": self.evicted, "packed": out}

    def restore(self, snapshot: Mapping[str, Any] | None) -> None:
        """Replace the state with a :meth:`snapshot` or :meth:`pack` (None: start empty).

        :raises ValueError: The snapshot is of another format or bucket length, or unreadable.
        """
        self._entities.clear()
        self.evicted = 0
        if not snapshot:
            return
        if snapshot.get("version") != SNAPSHOT_VERSION:
            msg = (f"anomaly snapshot version {snapshot.get('version')!r} is not "
                   f"{SNAPSHOT_VERSION}; start without the old state (it cannot be read)")
            raise ValueError(msg)
        if snapshot.get("bucket_secs") != self.config.bucket_secs:
            msg = (f"anomaly snapshot was taken with bucket_secs={snapshot.get('bucket_secs')}, "
                   f"the config says {self.config.bucket_secs}; set it back or start without "
                   "the old state")
            raise ValueError(msg)
        self.evicted = int(snapshot.get("evicted", 0))
        for key, data in list(snapshot.get("entities", ()))[-self.config.max_entities:]:
            self._entities[key] = EntityState.from_snapshot(key, data, self.config)
        for key, packed in list(snapshot.get("packed", ()))[-self.config.max_entities:]:
            self._entities[key] = EntityState.unpack(key, packed, self.config)


def entity_items(row: Mapping[str, Any], config: AnomalyConfig = DEFAULT_CONFIG
                 ) -> list[tuple[str, tuple[str, Mapping[str, Any]]]]:
    """``(key, (key, row))`` for each entity of ``row``: the keyed input of
    ``op.stateful_map`` with :func:`stateful_mapper` (the mapper is not told the key)."""
    return [(k, (k, row)) for k in entity_keys(row, config)]


def stateful_mapper(config: AnomalyConfig | None = None) -> Callable[
        [EntityState | None, tuple[str, Mapping[str, Any]]], tuple[EntityState, Score]]:
    """The mapper of ``op.stateful_map`` over :func:`entity_items`: one
    :class:`EntityState` per key, emitting a :class:`Score` per row. bytewax keeps one
    state per key for good (``max_entities`` does not apply); states pickle as their
    :meth:`EntityState.snapshot`, and take ``config`` again when resumed."""
    cfg = config or DEFAULT_CONFIG

    def mapper(state: EntityState | None, item: tuple[str, Mapping[str, Any]]
               ) -> tuple[EntityState, Score]:
        key, row = item
        if state is None:
            state = EntityState(key, cfg)
        else:
            state.config, state.lim = cfg, None  # limits of another config, maybe
        return state, state.update_and_score(row)

    return mapper
