"""TLS server and HTTP handler behind :class:`devstack.sentinel.SentinelEmulator`.

Routes (one TLS server): ``POST /dataCollectionRules/{rule}/streams/{stream}`` (Logs
Ingestion), ``GET /msi/token`` (App Service managed identity 2019-08-01),
``POST /{tenant}/oauth2/v2.0/token`` (Entra ID: client credentials with a federated JWT
assertion, what ``WorkloadIdentityCredential`` sends when ``AZURE_AUTHORITY_HOST`` names the
emulator), ``GET /secrets/{name}[/{version}]`` (Key Vault) and ``/_emulator/*`` (admin, no
auth).
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import socket
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from devstack.sentinel_state import (  # noqa: F401 (re-exported)
    _DISCARD_CAP,
    _MONITOR_CHALLENGE,
    _STATUS_CODES,
    _VAULT_CHALLENGE,
    CLIENT_ID,
    IDENTITY_PATH,
    MAX_BODY_BYTES,
    MONITOR_RESOURCE,
    TENANT_ID,
    VAULT_RESOURCE,
    EmulatorState,
    RequestLog,
)

try:  # isal inflates several times faster than zlib; same API
    from isal import isal_zlib as _zlib
except ImportError:  # pragma: no cover
    import zlib as _zlib  # type: ignore[no-redef]

__all__ = [
    "EmulatorServer", "SentinelRequestHandler", "gunzip_limited",
]

_log = logging.getLogger(__name__)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

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
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        _log.debug("sentinel emulator: error serving %s", client_address, exc_info=True)


class _Drop(Exception):
    """Abort the request and close the connection without any response."""


def _http_date(epoch: float) -> str:
    """``epoch`` rounded up to a whole second, as an HTTP date (``Retry-After`` may be one)."""
    return email.utils.formatdate(math.ceil(epoch), usegmt=True)


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
        headers = dict(headers or {})
        self.send_header("x-ms-request-id", headers.pop("x-ms-request-id", None)
                         or str(uuid.uuid4()))
        for name, value in headers.items():
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
            elif len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"] and method == "POST":
                self._entra_token(parts[0])
            elif parts[:1] == ["secrets"] and len(parts) in (2, 3) and method == "GET":
                self._vault(parts[1], parts[2] if len(parts) == 3 else None, query)
            else:
                self.close_connection = True  # any request body was left unread
                self._error(404, "NotFound", f"no route for {method} {url.path}")
        except _Drop:
            self.close_connection = True
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802 (http.server's name)
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802 (http.server's name)
        self._route("DELETE")

    # -- Logs Ingestion ----------------------------------------------------------------------
    def _ingest(self, rule: str, stream: str, query: Mapping[str, str]) -> None:
        state = self.server.state
        started = time.time()
        encoding = self.headers.get("Content-Encoding")
        request_id = str(uuid.uuid4())  # x-ms-request-id of the answer, logged with it
        base = dict(time=started, rule=rule, stream=stream,
                    client_request_id=self.headers.get("x-ms-client-request-id"),
                    content_encoding=encoding)
        uncompressed = 0

        def finish(status: int, code: str | None, message: str = "", *, records: int = 0,
                   fault: str | None = None, headers: Mapping[str, str] | None = None) -> None:
            answered = code is not None
            state.log_request(RequestLog(**base, status=status, error_code=code,
                                         wire_bytes=wire, uncompressed_bytes=uncompressed,
                                         record_count=records, fault=fault,
                                         request_id=request_id if answered else None))
            if answered:
                self._error(status, code, message,
                            {"x-ms-request-id": request_id, **(headers or {})})

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
        token_info = state.token_info(token) if token else None
        resource, token_client = token_info if token_info else (None, None)
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
        dcr = state.dcrs.get(rule)
        if dcr is not None and dcr.identity is not None and token_client != dcr.identity:
            # What the service answers when the caller lacks 'Monitoring Metrics Publisher'
            # on the DCR (azure-monitor-ingestion's TROUBLESHOOTING.md quotes it).
            arm_id = (f"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/"
                      f"emulator/providers/Microsoft.Insights/dataCollectionRules/{dcr.name}")
            return finish(403, "OperationFailed",
                          "The authentication token provided does not have access to ingest "
                          f"data for the data collection rule with immutable Id '{rule}' "
                          "PipelineAccessResult: AccessGranted: False, IsRbacPresent: False, "
                          f"IsDcrDceBindingValid: , DcrArmId: {arm_id}, Message: Required "
                          f"authorization action was not found for tenantId {TENANT_ID} "
                          f"objectId {token_client or 'unknown'} on resourceId {arm_id} "
                          f"ConfigurationId: {rule}.. (emulator: only the identity (managed or "
                          f"workload) with client id '{dcr.identity}' has 'Monitoring Metrics "
                          "Publisher' on this DCR; "
                          f"the token was issued to {token_client or 'no known client id'})")
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
                secs = fault.spec["retry_after_secs"]
                headers["Retry-After"] = (_http_date(time.time() + float(secs))
                                          if fault.spec.get("retry_after_date") else str(secs))
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
        for needle in state.rejects:
            for i, row in enumerate(rows):
                if needle in orjson.dumps(row).decode():
                    return finish(400, "InvalidPayload", f"Row {i} of the request was refused: "
                                  f"it contains {needle!r}.", fault=kind)
        throttled = state.admit(rule, uncompressed, len(rows))
        if throttled is not None:
            retry_after, which = throttled
            label = dcr.label if dcr is not None else f"DCR {rule!r}"
            return finish(429, "TooManyRequests",
                          f"{label}: the request would exceed {which}. Retry after "
                          f"{retry_after} seconds.", fault=kind,
                          headers={"Retry-After": str(retry_after)})
        accepted = kind != "drop_after_accept"
        entry = RequestLog(**base, status=204, error_code=None, wire_bytes=wire,
                           uncompressed_bytes=uncompressed, record_count=len(rows),
                           fault=kind, request_id=request_id if accepted else None)
        if dcr is not None:
            state.log_dcr_request(entry, dcr.ingest(stream, rows))
            if not accepted:
                raise _Drop()
            return self._send(204, headers={"x-ms-request-id": request_id})
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
        state.log_request(entry, rows, dropped)
        if not accepted:
            raise _Drop()
        self._send(204, headers={"x-ms-request-id": request_id})

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
        # Which identity the token is for: the user-assigned one named by client_id, the
        # system-assigned one (CLIENT_ID) when none is named, unknown when named otherwise.
        client_id = query.get("client_id") or (
            None if query.get("mi_res_id") or query.get("object_id") else CLIENT_ID)
        token, expires_on = state.issue_token(resource, client_id)
        self._json(200, {"access_token": token, "expires_on": str(expires_on),
                         "resource": resource, "token_type": "Bearer",
                         "client_id": query.get("client_id") or CLIENT_ID})

    # -- Entra ID token endpoint (workload identity federation) -----------------------------
    def _entra_token(self, tenant: str) -> None:
        """``grant_type=client_credentials`` with ``client_assertion`` (the federated token
        file's JWT), as azure-identity's ClientAssertionCredential posts it (its own HTTP
        client, no MSAL instance or tenant discovery). The token remembers ``client_id``."""
        state = self.server.state
        try:
            body, _ = self._read_body(256 * 1024)
        except ValueError as exc:
            self.close_connection = True
            return self._oauth_error(400, "invalid_request", f"AADSTS900144: {exc}")
        form = {k: v[-1] for k, v in parse_qs((body or b"").decode("utf-8", "replace"),
                                               keep_blank_values=True).items()}
        if tenant != TENANT_ID:
            return self._oauth_error(400, "invalid_tenant", f"AADSTS90002: Tenant '{tenant}' "
                                     "not found. Check to make sure you have the correct tenant ID")
        for key in ("grant_type", "client_id", "scope", "client_assertion_type",
                    "client_assertion"):
            if not form.get(key):
                return self._oauth_error(400, "invalid_request", "AADSTS900144: The request body "
                                         f"must contain the following parameter: '{key}'.")
        if form["grant_type"] != "client_credentials":
            return self._oauth_error(400, "unsupported_grant_type", "AADSTS70003: The app "
                                     "requested an unsupported grant type (emulator: "
                                     "client_credentials only).")
        if form["client_assertion_type"] != JWT_BEARER:
            return self._oauth_error(400, "invalid_request", "AADSTS700025: client_assertion_type "
                                     f"must be {JWT_BEARER}.")
        scope = form["scope"]
        if " " in scope.strip() or not scope.endswith("/.default"):
            return self._oauth_error(400, "invalid_scope", f"AADSTS1002012: The provided value "
                                     f"for scope {scope} is not valid. Client credential flows "
                                     "must have a scope value with /.default suffixed to the "
                                     "resource identifier (application ID URI).")
        refused = state.check_assertion(form["client_id"], form["client_assertion"])
        if refused is not None:
            return self._oauth_error(400, *refused)  # Entra answers these with 400
        token, expires_on = state.issue_token(scope[: -len("/.default")], form["client_id"])
        ttl = max(0, expires_on - int(time.time()))
        self._json(200, {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl,
                         "access_token": token})

    def _oauth_error(self, status: int, error: str, description: str) -> None:
        self._json(status, {"error": error, "error_description": description,
                            "error_codes": [int(description[6:].split(":")[0] or 0)],
                            "timestamp": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
                            "trace_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4())})

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
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
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
            return self._json(200, state.records(query.get("stream"), query.get("table")))
        if (method, action) == ("GET", "requests"):
            return self._json(200, state.requests())
        if (method, action) == ("GET", "summary"):
            return self._json(200, state.summary())
        if (method, action) == ("GET", "rules"):
            return self._json(200, state.rule_stats())
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
        if (method, action) == ("POST", "rejects"):
            try:
                state.set_rejects(payload if payload is not None else [])
            except ValueError as exc:
                return self._error(400, "InvalidPayload", str(exc))
            return self._json(200, {"ok": True})
        if (method, action) == ("POST", "federated"):
            try:
                state.add_federated_credential(**(payload or {}))
            except (ValueError, TypeError) as exc:
                return self._error(400, "InvalidPayload", 'expected {"client_id", "issuer", '
                                   f'"subject"[, "audience"]}}: {exc}')
            return self._json(200, {"ok": True})
        if (method, action) == ("POST", "token-info"):
            token = payload.get("token") if isinstance(payload, dict) else None
            info = state.token_info(token) if isinstance(token, str) else None
            if info is None:
                return self._error(404, "TokenNotFound", "no such token, or it has expired")
            return self._json(200, {"resource": info[0], "client_id": info[1]})
        if (method, action) == ("POST", "secrets"):
            if not (isinstance(payload, dict) and isinstance(payload.get("name"), str)
                    and isinstance(payload.get("value"), str)):
                return self._error(400, "InvalidPayload", 'expected {"name": str, "value": str}')
            return self._json(200, {"version": state.set_secret(payload["name"], payload["value"])})
        self._error(404, "NotFound", f"no admin route {method} /_emulator/{action}")
