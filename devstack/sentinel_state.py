"""Recording state and fault script of the Sentinel emulator (see devstack.sentinel)."""


import logging
import random
import secrets as _secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLIENT_ID", "EmulatorState", "FaultScript", "IDENTITY_PATH", "MAX_BODY_BYTES",
    "MONITOR_RESOURCE", "RequestLog", "TENANT_ID", "VAULT_RESOURCE",
]

_log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_048_576  # Logs Ingestion limit, on the wire and uncompressed
_DISCARD_CAP = 64 * MAX_BODY_BYTES  # oversize bodies up to this are drained to keep the connection
IDENTITY_PATH = "/msi/token"
MONITOR_RESOURCE = "https://monitor.azure.com"
VAULT_RESOURCE = "https://vault.azure.net"
TENANT_ID = "7b3b9a1c-5e1d-4f2a-9c3e-5e4d0a1b2c3d"
CLIENT_ID = "2c8f6d1e-0a4b-4c5d-8e7f-9a0b1c2d3e4f"
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


class EmulatorState:
    """Everything the handler threads share, guarded by one lock."""

    def __init__(
        self, *, rules: Mapping[str, Mapping[str, Sequence[str] | None]], token_ttl_secs: int,
        secrets: Mapping[str, str], store_records: bool,
    ) -> None:
        if not isinstance(rules, Mapping):
            raise ValueError("rules must map DCR immutable ids to {stream: columns or None}")
        self.rules: dict[str, dict[str, frozenset[str] | None]] = {}
        for rule, streams in rules.items():
            if not isinstance(streams, Mapping) or any(
                isinstance(c, str) for c in streams.values()
            ):
                raise ValueError(f"rules[{rule!r}] must map stream names to column lists or None")
            self.rules[rule] = {
                s: None if cols is None else frozenset(cols) for s, cols in streams.items()
            }
        self.token_ttl_secs = token_ttl_secs
        self.store_records = store_records
        self.identity_header = _secrets.token_urlsafe(24)
        self.faults = FaultScript()
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._secrets: dict[str, list[tuple[str, str, int]]] = {}
        self._version_seq = 0
        self.reset()
        for name, value in secrets.items():
            self.set_secret(name, value)

    def reset(self) -> None:
        """Clear records, request log, dropped-column counts and faults."""
        with self._lock:
            self._records: list[tuple[str, dict[str, Any]]] = []
            self._record_counts: Counter[str] = Counter()
            self._requests: list[RequestLog] = []
            self._dropped: dict[str, Counter[str]] = defaultdict(Counter)
            self.rejects: tuple[str, ...] = ()
        self.faults.replace([])

    def set_rejects(self, needles: list[str]) -> None:
        """Refuse (400 InvalidPayload) any request with a row whose JSON contains one of these
        strings: a poison record, as the service refuses a request for one bad row."""
        if not isinstance(needles, list) or not all(isinstance(n, str) for n in needles):
            raise ValueError("rejects must be a list of strings")
        with self._lock:
            self.rejects = tuple(needles)

    # tokens
    def issue_token(self, resource: str) -> tuple[str, int]:
        """A new opaque bearer token for ``resource`` and its expiry (epoch seconds)."""
        token = "emu." + _secrets.token_urlsafe(32)
        expires_on = int(time.time()) + self.token_ttl_secs
        with self._lock:
            self._tokens[token] = (resource.rstrip("/"), expires_on)
        return token, expires_on

    def token_resource(self, token: str) -> str | None:
        """The resource ``token`` was issued for, or None if unknown or expired."""
        with self._lock:
            entry = self._tokens.get(token)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

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
                    self._records.extend((entry.stream, r) for r in stream_records)
            if dropped:
                self._dropped[entry.stream].update(dropped)

    def records(self, stream: str | None = None) -> list[dict[str, Any]]:
        """Accepted records in arrival order, optionally for one stream."""
        with self._lock:
            return [r for s, r in self._records if stream is None or s == stream]

    def requests(self) -> list[RequestLog]:
        """The ingestion request log."""
        with self._lock:
            return list(self._requests)

    def dropped_columns(self, stream: str) -> dict[str, int]:
        """Undeclared column -> number of records it was dropped from."""
        with self._lock:
            return dict(self._dropped.get(stream, {}))

    def summary(self) -> dict[str, Any]:
        """Per-stream records, requests by status (0 = dropped), max wire/uncompressed bytes."""
        with self._lock:
            requests, counts = list(self._requests), Counter(self._record_counts)
            dropped = {s: dict(c) for s, c in self._dropped.items()}
        streams: dict[str, dict[str, Any]] = {}
        for req in requests:
            s = streams.setdefault(req.stream, {
                "records": counts.get(req.stream, 0), "requests": 0, "requests_by_status": {},
                "max_wire_bytes": 0, "max_uncompressed_bytes": 0,
                "dropped_columns": dropped.get(req.stream, {}),
            })
            s["requests"] += 1
            key = str(req.status)
            s["requests_by_status"][key] = s["requests_by_status"].get(key, 0) + 1
            s["max_wire_bytes"] = max(s["max_wire_bytes"], req.wire_bytes)
            s["max_uncompressed_bytes"] = max(s["max_uncompressed_bytes"], req.uncompressed_bytes)
        return {"streams": streams, "total_records": sum(counts.values()),
                "total_requests": len(requests)}
