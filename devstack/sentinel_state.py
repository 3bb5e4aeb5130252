"""Recording state and fault script of the Sentinel emulator (see devstack.sentinel)."""


import base64
import logging
import math
import random
import secrets as _secrets
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from devstack.dcrdef import DEFAULT_LIMITS, DcrDef, DcrLimits, IngestResult, is_dcr_spec

__all__ = [
    "CLIENT_ID", "EXCHANGE_AUDIENCE", "EmulatorState", "FaultScript", "IDENTITY_PATH",
    "MAX_BODY_BYTES", "MONITOR_RESOURCE", "RequestLog", "RuleMeter", "TENANT_ID",
    "VAULT_RESOURCE",
]

_log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576  # Logs Ingestion limit, on the wire and uncompressed
_DISCARD_CAP = 64 * MAX_BODY_BYTES  # oversize bodies up to this are drained to keep the connection
IDENTITY_PATH = "/msi/token"
MONITOR_RESOURCE = "https://monitor.azure.com"
VAULT_RESOURCE = "https://vault.azure.net"
TENANT_ID = "7b3b9a1c-5e1d-4f2a-9c3e-5e4d0a1b2c3d"
CLIENT_ID = "2c8f6d1e-0a4b-4c5d-8e7f-9a0b1c2d3e4f"
EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
"""The audience Entra expects of a federated assertion (a federated credential's default)."""
_VAULT_CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", '
    f'resource="{VAULT_RESOURCE}"'
)
_MONITOR_CHALLENGE = (
    f'Bearer authorization_uri="https://login.microsoftonline.com/{TENANT_ID}/oauth2/authorize", '
    f'resource="{MONITOR_RESOURCE}"'
)
_STATUS_CODES = {400: "BadRequest", 408: "RequestTimeout", 429: "TooManyRequests",
                 500: "InternalServerError", 502: "BadGateway", 503: "ServiceUnavailable",
                 504: "GatewayTimeout"}


@dataclass(frozen=True)
class RequestLog:
    """One ingestion request as seen by the emulator.

    ``status`` is 0 when the connection was dropped without a response; ``fault`` names the
    injected fault kind (``status``/``drop``/``delay``/``drop_after_accept``) or is None.
    ``client_request_id`` is the client's ``x-ms-client-request-id`` header (the same for
    every retry of one logical request); ``request_id`` is the ``x-ms-request-id`` the
    emulator answered with (a new one per request; None when no response was sent).
    """

    time: float
    rule: str
    stream: str
    status: int
    error_code: str | None
    client_request_id: str | None
    wire_bytes: int
    uncompressed_bytes: int
    record_count: int
    content_encoding: str | None
    fault: str | None = None
    request_id: str | None = None


_FAULT_KEYS = {"status", "drop", "delay_secs", "drop_after_accept", "count", "retry_after_secs",
               "retry_after_date", "stream", "rule", "probability", "seed", "duration_secs",
               "error_code", "message"}


@dataclass
class _Fault:
    kind: str
    spec: dict[str, Any]
    remaining: float  # math.inf when unlimited
    rng: random.Random | None
    deadline: float | None


class FaultScript:
    """Ordered, thread-safe fault specs applied to ingestion requests.

    Each spec has exactly one action: ``{"status": 503, "retry_after_secs": 2}``,
    ``{"drop": true}`` (close without response), ``{"delay_secs": 1.5}`` (sleep, then handle
    normally) or ``{"drop_after_accept": true}`` (record, then close without response; a
    request that fails validation is answered normally).
    Optional: ``count`` (default 1; unlimited for probabilistic specs; ``null`` = unlimited),
    ``stream`` / ``rule`` filters, ``probability`` with ``seed`` and ``duration_secs`` (counted
    from :meth:`replace`), ``error_code`` / ``message`` for status faults,
    ``retry_after_date: true`` to send ``retry_after_secs`` as an HTTP date (rounded up to
    the next whole second) rather than as seconds. The first live spec
    that matches (and whose probability fires) applies and its count decrements.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    @staticmethod
    def _parse(spec: Mapping[str, Any], now: float) -> _Fault:
        if not isinstance(spec, Mapping):
            raise ValueError(f"fault spec must be an object, got {spec!r}")
        unknown = set(spec) - _FAULT_KEYS
        if unknown:
            raise ValueError(f"unknown fault spec keys {sorted(unknown)} in {dict(spec)!r}")
        kinds = [k for k in ("status", "drop", "delay_secs", "drop_after_accept") if spec.get(k)]
        if len(kinds) != 1:
            raise ValueError(
                "fault spec needs exactly one of status/drop/delay_secs/drop_after_accept: "
                f"{dict(spec)!r}"
            )
        kind = {"delay_secs": "delay"}.get(kinds[0], kinds[0])
        if kind == "status" and not 400 <= int(spec["status"]) <= 599:
            raise ValueError(f"fault status must be 4xx/5xx, got {spec['status']!r}")
        prob = spec.get("probability")
        if prob is not None and not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"fault probability must be within [0, 1], got {prob!r}")
        count: Any = spec.get("count", None if prob is not None else 1)
        count = float("inf") if count is None else int(count)
        duration = spec.get("duration_secs")
        return _Fault(
            kind=kind, spec=dict(spec), remaining=count,
            rng=random.Random(spec.get("seed")) if prob is not None else None,
            deadline=None if duration is None else now + float(duration),
        )

    def replace(self, specs: Sequence[Mapping[str, Any]]) -> None:
        """Validate ``specs`` and make them the new script (ValueError on a bad spec)."""
        if isinstance(specs, (str, bytes, Mapping)):
            raise ValueError("faults must be a list of fault spec objects")
        now = time.monotonic()
        parsed = [self._parse(s, now) for s in specs]
        with self._lock:
            self._faults = parsed

    def pick(self, rule: str, stream: str) -> _Fault | None:
        """The fault to apply to one request to ``rule``/``stream``, consuming one count."""
        now = time.monotonic()
        with self._lock:
            for fault in self._faults:
                spec = fault.spec
                if fault.remaining <= 0 or (fault.deadline is not None and now > fault.deadline):
                    continue
                if spec.get("stream") not in (None, stream) or spec.get("rule") not in (None, rule):
                    continue
                if fault.rng is not None and fault.rng.random() >= float(spec["probability"]):
                    continue
                fault.remaining -= 1
                return fault
        return None


def _num(value: float) -> str:
    return f"{value:g}" if value < 1e15 else f"{value:.0f}"


class RuleMeter:
    """Sliding-window usage of one rule. Enforces its limits (``enforce=True``: rules given as
    DCR definitions) or only measures (legacy rules, which stay unlimited), and keeps the
    rule's counters. Not thread-safe: :class:`EmulatorState` calls it under its lock.

    Only accepted requests use the budget: one refused with 429 (or any other error) does not.
    """

    def __init__(self, limits: DcrLimits, *, enforce: bool) -> None:
        self.limits = limits
        self.enforce = enforce
        self.reset()

    def reset(self) -> None:
        self._window: deque[tuple[float, int]] = deque()  # (monotonic time, bytes)
        self._window_bytes = 0
        self.accepted_requests = 0
        self.accepted_bytes = 0
        self.accepted_records = 0
        self.throttled = 0
        self.max_window_bytes = 0
        self.max_window_requests = 0
        self.first_accept: float | None = None
        self.last_accept: float | None = None

    def _prune(self, now: float) -> None:
        horizon = now - self.limits.window_secs
        while self._window and self._window[0][0] <= horizon:
            self._window_bytes -= self._window.popleft()[1]

    def _refusal(self, nbytes: int, now: float) -> tuple[int, str] | None:
        lim = self.limits
        over_requests = len(self._window) + 1 > lim.window_requests
        over_bytes = self._window_bytes + nbytes > lim.window_bytes
        if not (over_requests or over_bytes):
            return None
        window = f"{_num(lim.window_secs)} s"
        reasons = []
        if over_requests:
            reasons.append(f"the limit of {_num(lim.window_requests)} requests per {window} "
                           f"(requests_per_min={_num(lim.requests_per_min)})")
        if over_bytes:
            reasons.append(f"the limit of {_num(lim.window_bytes)} uncompressed bytes per "
                           f"{window} (bytes_per_min={_num(lim.bytes_per_min)})")
        wait = lim.window_secs  # a request that can never fit: one whole window
        if nbytes > lim.window_bytes:
            reasons[-1] += f"; a request of {nbytes} bytes never fits"
        elif lim.window_requests >= 1:
            count, total = len(self._window), self._window_bytes
            for at, size in self._window:  # the oldest accepts leave the window first
                count, total = count - 1, total - size
                if count + 1 <= lim.window_requests and total + nbytes <= lim.window_bytes:
                    wait = at + lim.window_secs - now
                    break
        return max(1, math.ceil(wait)), " and ".join(reasons)

    def admit(self, nbytes: int, records: int, now: float) -> tuple[int, str] | None:
        """Count an accepted request of ``nbytes`` uncompressed bytes at monotonic ``now``;
        or, when it would exceed a limit, ``(Retry-After seconds, which limit)``."""
        self._prune(now)
        if self.enforce:
            refused = self._refusal(nbytes, now)
            if refused is not None:
                self.throttled += 1
                return refused
        self._window.append((now, nbytes))
        self._window_bytes += nbytes
        self.accepted_requests += 1
        self.accepted_bytes += nbytes
        self.accepted_records += records
        self.max_window_bytes = max(self.max_window_bytes, self._window_bytes)
        self.max_window_requests = max(self.max_window_requests, len(self._window))
        wall = time.time()
        if self.first_accept is None:
            self.first_accept = wall
        self.last_accept = wall
        return None

    def stats(self, now: float) -> dict[str, Any]:
        self._prune(now)
        return {
            "limits": self.limits.as_dict(), "enforced": self.enforce,
            "accepted_requests": self.accepted_requests, "accepted_bytes": self.accepted_bytes,
            "accepted_records": self.accepted_records, "throttled": self.throttled,
            "max_window_bytes": self.max_window_bytes,
            "max_window_requests": self.max_window_requests,
            "window_bytes": self._window_bytes, "window_requests": len(self._window),
            "first_accept": self.first_accept, "last_accept": self.last_accept,
        }


class EmulatorState:
    """Everything the handler threads share, guarded by one lock.

    ``rules`` maps a DCR immutable id to either the legacy form ``{stream: [columns] | None}``
    or a DCR definition (:mod:`devstack.dcrdef`; refused with DcrDefinitionError, a
    ValueError, as Azure Resource Manager would refuse the deployment).
    """

    def __init__(
        self, *, rules: Mapping[str, Mapping[str, Any]], token_ttl_secs: int,
        secrets: Mapping[str, str], store_records: bool,
    ) -> None:
        if not isinstance(rules, Mapping):
            raise ValueError("rules must map DCR immutable ids to {stream: columns or None} "
                             "or to DCR definitions")
        self.rules: dict[str, dict[str, frozenset[str] | None]] = {}
        self.dcrs: dict[str, DcrDef] = {}
        self._meters: dict[str, RuleMeter] = {}
        for rule, streams in rules.items():
            if is_dcr_spec(streams):
                dcr = DcrDef.from_spec(rule, streams)
                self.dcrs[rule] = dcr
                self.rules[rule] = dict(dcr.legacy_columns())
                self._meters[rule] = RuleMeter(dcr.limits, enforce=True)
                continue
            if not isinstance(streams, Mapping) or any(
                isinstance(c, str) for c in streams.values()
            ):
                raise ValueError(f"rules[{rule!r}] must map stream names to column lists or None")
            self.rules[rule] = {
                s: None if cols is None else frozenset(cols) for s, cols in streams.items()
            }
            self._meters[rule] = RuleMeter(DEFAULT_LIMITS, enforce=False)
        self.token_ttl_secs = token_ttl_secs
        self.store_records = store_records
        self.identity_header = _secrets.token_urlsafe(24)
        self.faults = FaultScript()
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float, str | None]] = {}
        self._federated: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
        self._secrets: dict[str, list[tuple[str, str, int]]] = {}
        self._version_seq = 0
        self.reset()
        for name, value in secrets.items():
            self.set_secret(name, value)

    def reset(self) -> None:
        """Clear records, request log, dropped-column and dropped-value counts, the rules'
        windows and counters, and faults."""
        with self._lock:
            self._records: list[tuple[str, str | None, dict[str, Any]]] = []
            self._record_counts: Counter[str] = Counter()
            self._table_counts: Counter[str] = Counter()
            self._requests: list[RequestLog] = []
            self._dropped: dict[str, Counter[str]] = defaultdict(Counter)
            self._dropped_values: dict[str, Counter[str]] = defaultdict(Counter)
            self._table_drops: dict[str, Counter[str]] = defaultdict(Counter)
            self.rejects: tuple[str, ...] = ()
            for meter in self._meters.values():
                meter.reset()
        self.faults.replace([])

    def set_rejects(self, needles: list[str]) -> None:
        """Refuse (400 InvalidPayload) any request with a row whose JSON contains one of these
        strings: a poison record, as the service refuses a request for one bad row."""
        if not isinstance(needles, list) or not all(isinstance(n, str) for n in needles):
            raise ValueError("rejects must be a list of strings")
        with self._lock:
            self.rejects = tuple(needles)

    # tokens
    def issue_token(self, resource: str, client_id: str | None = None) -> tuple[str, int]:
        """A new opaque bearer token for ``resource``, issued to managed identity
        ``client_id`` (None: unknown), and its expiry (epoch seconds)."""
        token = "emu." + _secrets.token_urlsafe(32)
        # Valid for the whole ttl (the client is told the whole seconds, never later): a
        # token issued late in a second with ttl 1 must not expire before its first use.
        expires = time.time() + self.token_ttl_secs
        with self._lock:
            self._tokens[token] = (resource.rstrip("/"), expires, client_id)
        return token, int(expires)

    def token_info(self, token: str) -> tuple[str, str | None] | None:
        """(resource, client id) ``token`` was issued for, or None if unknown or expired."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0], entry[2]

    # federated credentials (Entra workload identity federation)
    def add_federated_credential(self, client_id: str, issuer: str, subject: str,
                                 audience: str = EXCHANGE_AUDIENCE) -> None:
        """Let app ``client_id`` take tokens for a JWT assertion from ``issuer`` about
        ``subject`` (for ``audience``), as a federated credential of an app registration or
        a user-assigned managed identity does."""
        if not (client_id and issuer and subject and audience):
            raise ValueError("a federated credential needs client_id, issuer, subject, audience")
        with self._lock:
            self._federated[client_id].add((issuer, subject, audience))

    def check_assertion(self, client_id: str, assertion: str) -> tuple[str, str] | None:
        """None if ``assertion`` (a JWT) matches a federated credential of ``client_id``;
        else the OAuth error and Entra's description. The signature is not checked (the
        emulator has no issuer keys): the claims are, as Entra matches them."""
        parts = assertion.strip().split(".")
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (IndexError, ValueError):
            claims = None
        if len(parts) != 3 or not isinstance(claims, dict):
            return "invalid_client", "AADSTS50027: JWT token is invalid or malformed."
        now = time.time()
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if (not isinstance(exp, int | float) or exp <= now
                or (isinstance(nbf, int | float) and nbf > now + 300)):
            return "invalid_client", ("AADSTS700024: Client assertion is not within its valid "
                                      "time range.")
        iss, sub, aud = claims.get("iss"), claims.get("sub"), claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        with self._lock:
            records = set(self._federated.get(client_id, ()))
        if not records:
            return "unauthorized_client", (f"AADSTS700016: Application with identifier "
                                           f"'{client_id}' was not found in the directory "
                                           f"'{TENANT_ID}' (or has no federated credential).")
        if not any(i == iss and s == sub and a in auds for i, s, a in records):
            return "invalid_client", (f"AADSTS70021: No matching federated identity record "
                                      f"found for presented assertion. Assertion Issuer: '{iss}'. "
                                      f"Assertion Subject: '{sub}'. Assertion Audience: '{aud}'.")
        return None

    def token_resource(self, token: str) -> str | None:
        """The resource ``token`` was issued for, or None if unknown or expired."""
        info = self.token_info(token)
        return None if info is None else info[0]

    # secrets
    def set_secret(self, name: str, value: str) -> str:
        """Add a new version of secret ``name``; versions sort in creation order."""
        with self._lock:
            self._version_seq += 1
            version = f"{self._version_seq:08x}{_secrets.token_hex(12)}"
            self._secrets.setdefault(name, []).append((version, value, int(time.time())))
        return version

    def get_secret(self, name: str, version: str | None) -> tuple[str, str, int] | None:
        """(version, value, created) of the latest or a given version, or None."""
        with self._lock:
            versions = self._secrets.get(name, [])
            if version is None:
                return versions[-1] if versions else None
            return next((v for v in versions if v[0] == version), None)

    # ingestion
    def admit(self, rule: str, nbytes: int, records: int) -> tuple[int, str] | None:
        """Count an accepted request to ``rule`` against its limits, or refuse it:
        ``(Retry-After seconds, which limit)``."""
        with self._lock:
            return self._meters[rule].admit(nbytes, records, time.monotonic())

    def log_request(
        self, entry: RequestLog, stream_records: list[dict[str, Any]] | None = None,
        dropped: Counter[str] | None = None,
    ) -> None:
        """Append ``entry``; with ``stream_records``, also store the accepted records."""
        with self._lock:
            self._requests.append(entry)
            if stream_records is not None:
                self._record_counts[entry.stream] += len(stream_records)
                if self.store_records:
                    self._records.extend((entry.stream, None, r) for r in stream_records)
            if dropped:
                self._dropped[entry.stream].update(dropped)

    def log_dcr_request(self, entry: RequestLog, result: IngestResult) -> None:
        """Append ``entry`` of a request accepted under a DCR definition and store what its
        rows became (one record per row and data flow) with its drop counts."""
        with self._lock:
            self._requests.append(entry)
            self._record_counts[entry.stream] += len(result.outputs)
            self._table_counts.update(table for table, _ in result.outputs)
            if self.store_records:
                self._records.extend((entry.stream, t, r) for t, r in result.outputs)
            if result.undeclared:
                self._dropped[entry.stream].update(result.undeclared)
            if result.dropped_values:
                self._dropped_values[entry.stream].update(result.dropped_values)
            for table, drops in result.table_drops.items():
                self._table_drops[table].update(drops)

    def records(self, stream: str | None = None, table: str | None = None,
                ) -> list[dict[str, Any]]:
        """Accepted records in arrival order, optionally for one stream and/or one
        destination table (known for rules given as DCR definitions only)."""
        with self._lock:
            return [r for s, t, r in self._records
                    if (stream is None or s == stream) and (table is None or t == table)]

    def requests(self) -> list[RequestLog]:
        """The ingestion request log."""
        with self._lock:
            return list(self._requests)

    def dropped_columns(self, stream: str) -> dict[str, int]:
        """Undeclared column -> number of records it was dropped from."""
        with self._lock:
            return dict(self._dropped.get(stream, {}))

    def dropped_values(self, stream: str) -> dict[str, int]:
        """Declared column -> number of records whose value did not fit the column's type
        and was stored as null (rules given as DCR definitions)."""
        with self._lock:
            return dict(self._dropped_values.get(stream, {}))

    def dropped_table_columns(self, table: str) -> dict[str, int]:
        """Output column -> number of records it was dropped from on the way into destination
        ``table``: the table has no such column, or one of a type the value cannot take."""
        with self._lock:
            return dict(self._table_drops.get(table, {}))

    def rule_stats(self) -> dict[str, dict[str, Any]]:
        """Per rule: definition summary, requests by status, accepted requests/bytes/records,
        throttled count, the most bytes and requests accepted within one window, first and
        last accept times (epoch seconds), and the current window's usage."""
        now = time.monotonic()
        with self._lock:
            requests = list(self._requests)
            stats = {rule: m.stats(now) for rule, m in self._meters.items()}
        by_status: dict[str, Counter[str]] = defaultdict(Counter)
        for req in requests:
            by_status[req.rule][str(req.status)] += 1
        out: dict[str, dict[str, Any]] = {}
        for rule, st in stats.items():
            dcr = self.dcrs.get(rule)
            out[rule] = {
                "name": dcr.name if dcr else rule,
                "form": "definition" if dcr else "legacy",
                "identity": dcr.identity if dcr else None,
                "streams": sorted(self.rules[rule]),
                "tables": sorted({f.table for f in dcr.flows}) if dcr else [],
                "requests": sum(by_status[rule].values()),
                "requests_by_status": dict(by_status[rule]),
                **st,
            }
        return out

    def summary(self) -> dict[str, Any]:
        """Per-stream records, requests by status (0 = dropped), max wire/uncompressed bytes;
        per destination table records and dropped columns; per rule :meth:`rule_stats`."""
        with self._lock:
            requests, counts = list(self._requests), Counter(self._record_counts)
            table_counts = Counter(self._table_counts)
            dropped = {s: dict(c) for s, c in self._dropped.items()}
            dropped_values = {s: dict(c) for s, c in self._dropped_values.items()}
            table_drops = {t: dict(c) for t, c in self._table_drops.items()}
        streams: dict[str, dict[str, Any]] = {}
        for req in requests:
            s = streams.setdefault(req.stream, {
                "records": counts.get(req.stream, 0), "requests": 0, "requests_by_status": {},
                "max_wire_bytes": 0, "max_uncompressed_bytes": 0,
                "dropped_columns": dropped.get(req.stream, {}),
                "dropped_values": dropped_values.get(req.stream, {}),
            })
            s["requests"] += 1
            key = str(req.status)
            s["requests_by_status"][key] = s["requests_by_status"].get(key, 0) + 1
            s["max_wire_bytes"] = max(s["max_wire_bytes"], req.wire_bytes)
            s["max_uncompressed_bytes"] = max(s["max_uncompressed_bytes"], req.uncompressed_bytes)
        tables = {t: {"records": table_counts.get(t, 0), "dropped_columns": table_drops.get(t, {})}
                  for t in sorted(set(table_counts) | set(table_drops))}
        return {"streams": streams, "total_records": sum(counts.values()),
                "total_requests": len(requests), "tables": tables, "rules": self.rule_stats()}
