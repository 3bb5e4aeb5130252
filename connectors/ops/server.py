"""The ops HTTP server of one process: metrics, health, and the admin API.

=====================================  ======  ===========================================
route                                  role    what
=====================================  ======  ===========================================
``GET /metrics``                       open*   Prometheus text format (this process)
``GET /healthz``                       open*   the process is alive
``GET /readyz``                        open*   200 or 503, JSON naming each check's result
``GET /admin/status``                  reader  partitions: position, progress, paused
``GET /admin/deadletters``             reader  dead-letter files and entry counts
``POST /admin/replay[?dry_run=1]``     admin   ``s3sentinel replay`` in this process
``POST /admin/sources/<name>/pause``   admin   stop reading a source (this process)
``POST /admin/sources/<name>/resume``  admin   read it again
=====================================  ======  ===========================================

\\* open unless ``ops.open_metrics = false`` (then they need a reader token).

Served by waitress, which bounds what a client can make the process hold before any
route or token is looked at: a request body larger than ``ops.max_body_bytes`` is refused
with 413 unread, a connection that sends nothing for ``ops.read_timeout_secs`` is closed,
and past ``ops.max_connections`` open connections new ones wait in the listen queue.

Every authorised ``/admin`` request is appended to the audit log (0600): time, principal
(a token fingerprint or the JWT subject, never the token), role, method, path, status.
Refused ones (401, 403, 503) are counted in ``s3sentinel_ops_auth_failures_total`` and
audited up to ``ops.audit_denied_max_lines`` per ``ops.audit_denied_window_secs``; the rest
of a window is one ``suppressed`` line, written with the next audit entry or at stop.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import orjson
import waitress
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from waitress import wasyncore

from connectors.ops.auth import Authorizer, Denial, Principal
from connectors.ops.config import OpsConfig
from connectors.ops.health import Readiness
from dataflow.core import metrics, status
from dataflow.core.files import append_durable, private_dir

__all__ = ["OpsServer"]

log = logging.getLogger(__name__)

_THREADS = 8
"""Requests served at once (a slow /readyz waits on one shared check, not on a thread each)."""
_MAX_HEADER_BYTES = 16 * 1024
_OPEN_ROUTES = ("/metrics", "/healthz", "/readyz")


class OpsServer:
    """Serves the routes above on ``bind:port`` from a daemon thread.

    :arg replay: Runs a replay (``dry_run`` flag) and returns its summary text.
    :arg dead_letters: Returns the dead-letter store (``names()``, ``read(name)``).
    :arg clock: Monotonic clock of the audit log's rate limit.
    :raises OSError: The port cannot be bound.
    """

    def __init__(self, ops: OpsConfig, sources: Iterable[str], port: int, authorizer: Authorizer,
                 readiness: Readiness, replay: Callable[[bool], str],
                 dead_letters: Callable[[], Any], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ops = ops
        self._source_names = frozenset(sources)
        self._auth = authorizer
        self._ready = readiness
        self._replay = replay
        self._dead_letters = dead_letters
        self._replay_lock = threading.Lock()
        self._started = time.time()
        self._audit = _AuditLog(ops.audit_log, ops.audit_denied_max_lines,
                                ops.audit_denied_window_secs, clock)
        family = socket.AF_INET6 if ":" in ops.bind else socket.AF_INET
        sock = socket.create_server((ops.bind, port), family=family)
        timeout = max(1, math.ceil(ops.read_timeout_secs))
        self._map: dict[int, Any] = {}
        try:
            self._server = waitress.create_server(
                self._app, map=self._map, sockets=[sock], threads=_THREADS,
                max_request_body_size=ops.max_body_bytes,
                max_request_header_size=_MAX_HEADER_BYTES, channel_timeout=timeout,
                cleanup_interval=max(1, timeout // 2), connection_limit=ops.max_connections,
                asyncore_use_poll=True, ident="s3sentinel", expose_tracebacks=False)
        except BaseException:
            sock.close()
            raise
        self._thread = threading.Thread(target=self._server.run, name="s3sentinel-ops",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.effective_host, self._server.effective_port
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close every connection, stop the request threads, write the audit summary."""
        if self._thread.is_alive():
            # Sockets belong to the server's loop: close them from inside it.
            try:
                self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._map))
            except OSError:  # the loop closed its trigger (it is ending): close them here
                wasyncore.close_all(self._map)
            self._thread.join(5)
        else:
            wasyncore.close_all(self._map)
        self._server.task_dispatcher.shutdown(timeout=5)
        self._audit.flush()

    # -- requests -----------------------------------------------------------------------

    def _app(self, environ: dict[str, Any],
             start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        path = environ.get("PATH_INFO") or "/"
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        try:
            code, body, ctype = self._serve(method, path, query,
                                            environ.get("HTTP_AUTHORIZATION"),
                                            environ.get("REMOTE_ADDR", ""))
        except Exception as ex:  # answered, never dropped
            log.exception("ops server: %s %s failed", method, path)
            code, body, ctype = _json(500, {"error": f"{type(ex).__name__}: {ex}"})
        start_response(f"{code} {HTTPStatus(code).phrase}",
                       [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]

    def _serve(self, method: str, path: str, query: dict[str, str], header: str | None,
               remote: str) -> tuple[int, bytes, str]:
        admin = path.startswith("/admin/")
        if not admin and (self._ops.open_metrics or path not in _OPEN_ROUTES):
            return self._route(method, path, query)
        verdict = self._authenticate(header)
        if isinstance(verdict, Denial):
            metrics.OPS_AUTH_FAILURES.labels(verdict.reason).inc()
            if verdict.status == 503:
                refusal = _json(503, {"error": "credentials cannot be checked right now (Key "
                                               "Vault or the revocation file); see the log"})
            elif admin:
                refusal = _json(401, {"error": "missing or invalid bearer token"})
            else:
                refusal = _json(401, {"error": "a reader token is needed "
                                               "(ops.open_metrics = false)"})
            if admin:
                self._audit.denied(None, method, path, refusal[0], remote, verdict.reason)
            return refusal
        need = "admin" if admin and method != "GET" else "reader"
        if not verdict.may(need):
            metrics.OPS_AUTH_FAILURES.labels("forbidden").inc()
            refusal = _json(403, {"error": f"{method} {path} needs the {need} role; "
                                           f"this token has {verdict.role}"})
            self._audit.denied(verdict, method, path, 403, remote, "forbidden")
            return refusal
        try:
            out = self._route(method, path, query)
        except Exception as ex:
            log.exception("ops server: %s %s failed", method, path)
            out = _json(500, {"error": f"{type(ex).__name__}: {ex}"})
        if admin:
            self._audit.allowed(verdict, method, path, out[0], remote)
        return out

    def _authenticate(self, header: str | None) -> Principal | Denial:
        try:
            return self._auth.check(header)
        except Exception:
            log.exception("ops server: checking a token failed")
            return Denial("unavailable", 503)

    # -- routes -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str]) -> tuple[int, bytes, str]:
        if (method, path) == ("GET", "/metrics"):
            return 200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST
        if (method, path) == ("GET", "/healthz"):
            return _json(200, {"alive": True, "pid": os.getpid(),
                               "uptime_secs": round(time.time() - self._started, 1)})
        if (method, path) == ("GET", "/readyz"):
            checks = self._ready.run()
            ready = all(c.ok for c in checks.values())
            failed = [name for name, c in checks.items() if not c.ok]
            return _json(200 if ready else 503, {
                "ready": ready, "failed": failed,
                "checks": {n: {"ok": c.ok, "detail": c.detail} for n, c in checks.items()}})
        if (method, path) == ("GET", "/admin/status"):
            return _json(200, {"partitions": status.partitions(),
                               "paused": status.paused_sources()})
        if (method, path) == ("GET", "/admin/deadletters"):
            # load(), not read(): one tampered or undecryptable file must show its issues,
            # not turn the whole listing into a 500.
            store = self._dead_letters()
            files = []
            for n in store.names():
                f = store.load(n)
                files.append({"name": n, "entries": len(f.entries), "intact": f.intact,
                              "issues": [{"line": i.line, "kind": i.kind, "detail": i.detail}
                                         for i in f.issues]})
            return _json(200, {"location": store.location, "files": files,
                               "entries": sum(f["entries"] for f in files)})
        if (method, path) == ("POST", "/admin/replay"):
            if not self._replay_lock.acquire(blocking=False):
                return _json(409, {"error": "a replay is already running"})
            try:
                summary = self._replay(query.get("dry_run") in ("1", "true", "yes"))
            finally:
                self._replay_lock.release()
            return _json(200, {"summary": summary})
        parts = path.strip("/").split("/")
        if method == "POST" and len(parts) == 4 and parts[:2] == ["admin", "sources"] \
                and parts[3] in ("pause", "resume"):
            name = parts[2]
            if name not in self._source_names:
                return _json(404, {"error": f"no source {name!r}"})
            (status.pause if parts[3] == "pause" else status.resume)(name)
            return _json(200, {"source": name, "paused": status.is_paused(name)})
        return _json(404, {"error": f"no route {method} {path}"})


class _AuditLog:
    """The audit log: allowed requests always, refused ones at most ``max_denied`` per
    ``window_secs`` (then one summary line for the rest of the window)."""

    def __init__(self, path: str, max_denied: int, window_secs: float,
                 clock: Callable[[], float]) -> None:
        self._path = Path(path)
        self._max = max_denied
        self._window = window_secs
        self._clock = clock
        self._lock = threading.Lock()
        self._dir_ready = False
        self._window_start = clock()
        self._denied = 0
        self._suppressed: Counter[str] = Counter()

    def allowed(self, principal: Principal, method: str, path: str, code: int,
                remote: str) -> None:
        self._write(_entry(principal, method, path, code, remote), denied=False)

    def denied(self, principal: Principal | None, method: str, path: str, code: int,
               remote: str, reason: str) -> None:
        entry = _entry(principal, method, path, code, remote) | {"reason": reason}
        self._write(entry, denied=True)

    def flush(self) -> None:
        """Write the summary of what was suppressed so far."""
        with self._lock:
            self._append(self._roll(force=True))

    def _write(self, entry: dict[str, Any], *, denied: bool) -> None:
        with self._lock:
            lines = self._roll()
            if not denied or self._denied < self._max:
                if denied:
                    self._denied += 1
                lines.append(entry)
            else:
                self._suppressed[f"{entry['status']} {entry['reason']}"] += 1
            self._append(lines)

    def _roll(self, *, force: bool = False) -> list[dict[str, Any]]:
        now = self._clock()
        if not force and now - self._window_start < self._window:
            return []
        lines = []
        if self._suppressed:
            lines.append({"time": time.time(), "event": "suppressed",
                          "suppressed": sum(self._suppressed.values()),
                          "by_status_reason": dict(self._suppressed),
                          "window_secs": self._window, "pid": os.getpid()})
            log.warning("ops server: %d refused admin requests not audited one by one "
                        "(rate limit); see s3sentinel_ops_auth_failures_total",
                        sum(self._suppressed.values()))
        self._window_start, self._denied = now, 0
        self._suppressed = Counter()
        return lines

    def _append(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        try:
            if not self._dir_ready:
                private_dir(self._path.parent)
                self._dir_ready = True
            with append_durable(self._path) as f:
                f.write(b"".join(orjson.dumps(e) + b"\n" for e in entries))
        except OSError:
            log.exception("ops server: cannot append to the audit log %s", self._path)


def _entry(principal: Principal | None, method: str, path: str, code: int,
           remote: str) -> dict[str, Any]:
    return {"time": time.time(), "principal": principal.name if principal else None,
            "role": principal.role if principal else None, "method": method, "path": path,
            "status": code, "remote": remote, "pid": os.getpid()}


def _json(code: int, doc: Any) -> tuple[int, bytes, str]:
    return code, orjson.dumps(doc, option=orjson.OPT_INDENT_2), "application/json"
