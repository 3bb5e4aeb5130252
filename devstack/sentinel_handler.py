"""State, fault script and HTTP handler behind :class:`devstack.sentinel.SentinelEmulator`.

Routes (one TLS server): ``POST /dataCollectionRules/{rule}/streams/{stream}`` (Logs
Ingestion), ``GET /msi/token`` (App Service managed identity 2019-08-01),
``GET /secrets/{name}[/{version}]`` (Key Vault) and ``/_emulator/*`` (admin, no auth).
"""

from __future__ import annotations

import logging
import random
import secrets as _secrets
import socket
import ssl
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

try:  # isal inflates several times faster than zlib; same API
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover
    import zlib as _zlib  # type: ignore[no-redef]

__all__ = [
    "EmulatorServer", "EmulatorState", "FaultScript", "RequestLog", "SentinelRequestHandler",
    "IDENTITY_PATH", "MAX_BODY_BYTES", "MONITOR_RESOURCE", "VAULT_RESOURCE", "TENANT_ID",
    "gunzip_limited",
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


_FAULT_KEYS = {"status", "drop", "delay_secs", "drop_after_accept", "count", "retry_after_secs",
               "stream", "rule", "probability", "seed", "duration_secs", "error_code", "message"}


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
    from :meth:`replace`), ``error_code`` / ``message`` for status faults. The first live spec
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
        self.faults.replace([])

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


class EmulatorServer(ThreadingHTTPServer):
    """Threading HTTP server doing the TLS handshake in the per-connection thread."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 state: EmulatorState, ssl_context: ssl.SSLContext) -> None:
        self.state = state
        self.ssl_context = ssl_context
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)  # handshake; the handler then applies its own timeout
        # Responses are small writes: without NODELAY, Nagle + delayed ACK add ~40 ms each.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        with self._conns_lock:
            self._conns.add(conn)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            conn.close()

    def close_all_connections(self) -> None:
        """Cut every open connection (keep-alive clients would otherwise still be served)."""
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("sentinel emulator: error serving %s", client_address, exc_info=True)


class _Drop(Exception):
    """Abort the request and close the connection without any response."""


def gunzip_limited(data: bytes, limit: int) -> bytes | None:
    """Inflate (possibly multi-member) gzip ``data``; None once output exceeds ``limit``.

    Never holds more than ``limit + 1`` bytes of output, so a gzip bomb cannot eat memory.
    Raises ValueError for a corrupt or truncated stream.
    """
    out = bytearray()
    d = _zlib.decompressobj(16 + _zlib.MAX_WBITS)
    buf = data
    try:
        while True:
            chunk = d.decompress(buf, limit + 1 - len(out))
            out += chunk
            if len(out) > limit:
                return None
            if d.eof:
                buf = d.unused_data
                if not buf:
                    return bytes(out)
                d = _zlib.decompressobj(16 + _zlib.MAX_WBITS)
                continue
            buf = d.unconsumed_tail
            if not buf and not chunk:
                raise ValueError("truncated gzip body")
    except _zlib.error as exc:
        raise ValueError(f"invalid gzip body: {exc}") from exc


class SentinelRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler for all emulator routes."""

    protocol_version = "HTTP/1.1"
    server_version = "SentinelEmulator/1.0"
    sys_version = ""
    timeout = 240  # idle keep-alive connections close after this, like Azure's front ends
    wbufsize = 65536  # one TLS record per response instead of headers and body apart
    server: EmulatorServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Quiet: no per-request stderr lines."""

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if status != 204 and body:
            self.wfile.write(body)  # buffered (wbufsize): flushed with the headers in one go

    def _json(self, status: int, obj: Any, headers: Mapping[str, str] | None = None) -> None:
        self._send(status, orjson.dumps(obj), headers)

    def _error(self, status: int, code: str, message: str,
               headers: Mapping[str, str] | None = None) -> None:
        self._json(status, {"error": {"code": code, "message": message}},
                   {"x-ms-error-code": code, **(headers or {})})

    def _read_body(self, keep: int) -> tuple[bytes | None, int]:
        """Read the whole request body; keep at most ``keep`` bytes (None if it was longer).

        Bodies beyond ``_DISCARD_CAP`` are not drained: the connection is closed instead.
        Raises ValueError for broken framing.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked(keep)
        raw = self.headers.get("Content-Length", "0") or "0"
        if not raw.isdigit():
            raise ValueError(f"invalid Content-Length {raw!r}")
        length = int(raw)
        if length <= keep:
            body = self.rfile.read(length)
            if len(body) != length:
                raise ValueError("connection closed before the end of the body")
            return body, length
        if length > _DISCARD_CAP:
            self.close_connection = True
            return None, length
        left = length
        while left:
            got = self.rfile.read(min(left, 65536))
            if not got:
                raise ValueError("connection closed before the end of the body")
            left -= len(got)
        return None, length

    def _read_chunked(self, keep: int) -> tuple[bytes | None, int]:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ValueError(f"invalid chunk size line {line[:40]!r}") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return (b"".join(parts) if total <= keep else None), total
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise ValueError("connection closed inside a chunk")
            self.rfile.readline(3)
            total += size
            if total > _DISCARD_CAP:
                self.close_connection = True
                return None, total
            if total <= keep:
                parts.append(chunk)
            else:
                parts.clear()

    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    # -- routing -----------------------------------------------------------------------------
    def _route(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            if parts[:1] == ["_emulator"]:
                self._admin(method, parts[1:], query)
            elif len(parts) == 4 and parts[0] == "dataCollectionRules" and parts[2] == "streams":
                if method != "POST":
                    self.close_connection = True
                    self._error(405, "MethodNotAllowed", f"{method} is not supported here")
                else:
                    self._ingest(parts[1], parts[3], query)
            elif url.path == IDENTITY_PATH and method == "GET":
                self._identity(query)
            elif parts[:1] == ["secrets"] and len(parts) in (2, 3) and method == "GET":
                self._vault(parts[1], parts[2] if len(parts) == 3 else None, query)
            else:
                self.close_connection = True  # any request body was left unread
                self._error(404, "NotFound", f"no route for {method} {url.path}")
        except _Drop:
            self.close_connection = True
        except (ConnectionError, ssl.SSLError, TimeoutError, socket.timeout):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    # -- Logs Ingestion ----------------------------------------------------------------------
    def _ingest(self, rule: str, stream: str, query: Mapping[str, str]) -> None:
        state = self.server.state
        started = time.time()
        encoding = self.headers.get("Content-Encoding")
        base = dict(time=started, rule=rule, stream=stream,
                    client_request_id=self.headers.get("x-ms-client-request-id"),
                    content_encoding=encoding)
        uncompressed = 0

        def finish(status: int, code: str | None, message: str = "", *, records: int = 0,
                   fault: str | None = None, headers: Mapping[str, str] | None = None) -> None:
            state.log_request(RequestLog(**base, status=status, error_code=code,
                                         wire_bytes=wire, uncompressed_bytes=uncompressed,
                                         record_count=records, fault=fault))
            if code is not None:
                self._error(status, code, message, headers)

        try:
            body, wire = self._read_body(MAX_BODY_BYTES)
        except ValueError as exc:
            self.close_connection = True
            wire = 0
            return finish(400, "InvalidRequestBody", str(exc))
        if not query.get("api-version"):
            return finish(400, "MissingApiVersionParameter",
                          "The api-version query parameter is required for all requests.")
        token = self._bearer()
        resource = state.token_resource(token) if token else None
        if resource is None:
            reason = "missing" if token is None else "invalid or expired"
            return finish(401, "InvalidAuthenticationToken",
                          f"Authentication failed: the bearer token is {reason}.",
                          headers={"WWW-Authenticate": _MONITOR_CHALLENGE})
        if resource != MONITOR_RESOURCE:
            return finish(403, "InvalidAuthenticationTokenAudience",
                          f"The access token was issued for '{resource}'; it must be issued "
                          f"for '{MONITOR_RESOURCE}'.")
        if rule not in state.rules:
            return finish(404, "InvalidDataCollectionRule",
                          f"Data collection rule with immutable Id '{rule}' not found.")
        columns = state.rules[rule].get(stream, ...)
        if columns is ...:
            return finish(404, "InvalidStream", f"Stream '{stream}' is not declared in data "
                          f"collection rule '{rule}'.")

        fault = state.faults.pick(rule, stream)
        kind = fault.kind if fault else None
        if fault is not None and kind == "status":
            status = int(fault.spec["status"])
            headers = {}
            if fault.spec.get("retry_after_secs") is not None:
                headers["Retry-After"] = str(fault.spec["retry_after_secs"])
            code = fault.spec.get("error_code") or _STATUS_CODES.get(status, "Error")
            return finish(status, code,
                          fault.spec.get("message") or f"Injected fault: HTTP {status}.",
                          fault=kind, headers=headers)
        if fault is not None and kind == "drop":
            finish(0, None, fault=kind)
            raise _Drop()
        if fault is not None and kind == "delay":
            time.sleep(float(fault.spec["delay_secs"]))

        too_big = (f"Maximum allowed content length: {MAX_BODY_BYTES} bytes (1 MB). "
                   "Provided content length: {} bytes.")
        if body is None:
            return finish(413, "ContentLengthLimitExceeded", too_big.format(wire), fault=kind)
        if encoding and encoding.strip().lower() == "gzip":
            try:
                data = gunzip_limited(body, MAX_BODY_BYTES)
            except ValueError as exc:
                return finish(400, "InvalidContentEncoding", str(exc), fault=kind)
            if data is None:
                uncompressed = MAX_BODY_BYTES + 1
                return finish(413, "ContentLengthLimitExceeded",
                              too_big.format(f"more than {MAX_BODY_BYTES} (uncompressed)"),
                              fault=kind)
        elif encoding and encoding.strip().lower() != "identity":
            return finish(415, "UnsupportedContentEncoding",
                          f"Content-Encoding '{encoding}' is not supported; use gzip.", fault=kind)
        else:
            data = body
        uncompressed = len(data)
        try:
            rows = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            return finish(400, "InvalidPayload", f"The request body is not valid JSON: {exc}",
                          fault=kind)
        if not isinstance(rows, list):
            return finish(400, "InvalidPayload", "The request body must be a JSON array of "
                          f"objects, got a JSON {type(rows).__name__}.", fault=kind)
        if not all(isinstance(r, dict) for r in rows):
            return finish(400, "InvalidPayload", "Every element of the JSON array must be an "
                          "object.", fault=kind)
        dropped: Counter[str] = Counter()
        if columns is not None:
            kept = []
            for row in rows:
                extra = [k for k in row if k not in columns]
                if extra:
                    dropped.update(extra)
                    row = {k: v for k, v in row.items() if k in columns}
                kept.append(row)
            rows = kept
        state.log_request(RequestLog(**base, status=204, error_code=None, wire_bytes=wire,
                                     uncompressed_bytes=uncompressed, record_count=len(rows),
                                     fault=kind), rows, dropped)
        if kind == "drop_after_accept":
            raise _Drop()
        self._send(204)

    # -- managed identity (App Service 2019-08-01) -------------------------------------------
    def _identity(self, query: Mapping[str, str]) -> None:
        state = self.server.state
        if self.headers.get("X-IDENTITY-HEADER") != state.identity_header:
            return self._json(401, {"statusCode": 401, "message":
                                    "Unauthorized: missing or wrong X-IDENTITY-HEADER."})
        if not query.get("api-version"):
            return self._json(400, {"statusCode": 400, "message": "api-version is required."})
        resource = query.get("resource", "")
        if not resource:
            return self._json(400, {"statusCode": 400, "message": "resource is required."})
        token, expires_on = state.issue_token(resource)
        self._json(200, {"access_token": token, "expires_on": str(expires_on),
                         "resource": resource, "token_type": "Bearer",
                         "client_id": query.get("client_id") or CLIENT_ID})

    # -- Key Vault ---------------------------------------------------------------------------
    def _vault(self, name: str, version: str | None, query: Mapping[str, str]) -> None:
        state = self.server.state
        if not query.get("api-version"):
            return self._error(400, "BadParameter", "The api-version query parameter is required.")
        token = self._bearer()
        resource = state.token_resource(token) if token else None
        if resource != VAULT_RESOURCE:
            if token is None:
                msg = "AKV10000: Request is missing a Bearer or PoP token."
            elif resource is None:
                msg = "AKV10032: Invalid or expired token."
            else:
                msg = f"AKV10022: Invalid audience. Expected {VAULT_RESOURCE}, found: {resource}."
            return self._json(401, {"error": {"code": "Unauthorized", "message": msg}},
                              {"WWW-Authenticate": _VAULT_CHALLENGE})
        found = state.get_secret(name, version)
        if found is None:
            what = f"{name}/{version}" if version else name
            return self._error(404, "SecretNotFound",
                               f"A secret with (name/id) {what} was not found in this key vault.")
        ver, value, created = found
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        self._json(200, {
            "value": value, "id": f"https://{host}/secrets/{name}/{ver}",
            "attributes": {"enabled": True, "created": created, "updated": created,
                           "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
            "tags": {},
        })

    # -- admin -------------------------------------------------------------------------------
    def _admin(self, method: str, parts: list[str], query: Mapping[str, str]) -> None:
        state = self.server.state
        action = "/".join(parts)
        payload: Any = None
        if method == "POST":
            try:
                body, _ = self._read_body(64 * MAX_BODY_BYTES)
                payload = orjson.loads(body or b"null")
            except (ValueError, orjson.JSONDecodeError) as exc:
                return self._error(400, "InvalidPayload", f"admin body is not valid JSON: {exc}")
        if (method, action) == ("GET", "records"):
            return self._json(200, state.records(query.get("stream")))
        if (method, action) == ("GET", "requests"):
            return self._json(200, state.requests())
        if (method, action) == ("GET", "summary"):
            return self._json(200, state.summary())
        if (method, action) == ("GET", "health"):
            return self._json(200, {"ok": True})
        if (method, action) == ("POST", "reset"):
            state.reset()
            return self._json(200, {"ok": True})
        if (method, action) == ("POST", "faults"):
            try:
                state.faults.replace(payload if payload is not None else [])
            except (ValueError, TypeError) as exc:
                return self._error(400, "InvalidFaultSpec", str(exc))
            return self._json(200, {"ok": True, "faults": len(payload or [])})
        if (method, action) == ("POST", "secrets"):
            if not (isinstance(payload, dict) and isinstance(payload.get("name"), str)
                    and isinstance(payload.get("value"), str)):
                return self._error(400, "InvalidPayload", 'expected {"name": str, "value": str}')
            return self._json(200, {"version": state.set_secret(payload["name"], payload["value"])})
        self._error(404, "NotFound", f"no admin route {method} /_emulator/{action}")
