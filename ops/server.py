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

\\* open unless ``ops.open_metrics = false`` (then they need a reader token). Every
``/admin`` request, allowed or not, is appended to the audit log: time, principal (a
token fingerprint or the JWT subject, never the token), role, method, path, status.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from dataflow.config import Config
from ops import status
from ops.auth import Authorizer, Principal
from ops.health import Readiness

__all__ = ["OpsServer"]

log = logging.getLogger(__name__)


class OpsServer:
    """Serves the routes above on ``bind:port`` from a daemon thread.

    :arg replay: Runs a replay (``dry_run`` flag) and returns its summary text.
    :arg dead_letters: Returns the dead-letter store (``names()``, ``read(name)``).
    """

    def __init__(self, cfg: Config, port: int, authorizer: Authorizer, readiness: Readiness,
                 replay: Callable[[bool], str], dead_letters: Callable[[], Any]) -> None:
        self._cfg = cfg
        self._auth = authorizer
        self._ready = readiness
        self._replay = replay
        self._dead_letters = dead_letters
        self._replay_lock = threading.Lock()
        self._audit_lock = threading.Lock()
        self._started = time.time()
        self._audit = Path(cfg.ops.audit_log)
        self._httpd = ThreadingHTTPServer((cfg.ops.bind, port), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="s3sentinel-ops",
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> OpsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # -- routes -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str],
               principal: Principal | None) -> tuple[int, bytes, str]:
        open_ = self._cfg.ops.open_metrics or (principal is not None)
        if method == "GET" and path in ("/metrics", "/healthz", "/readyz") and not open_:
            return _json(401, {"error": "a reader token is needed (ops.open_metrics = false)"})
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
        if not path.startswith("/admin/"):
            return _json(404, {"error": f"no route {method} {path}"})
        need = "reader" if method == "GET" else "admin"
        if principal is None:
            return _json(401, {"error": "missing or invalid bearer token"})
        if not principal.may(need):
            return _json(403, {"error": f"{method} {path} needs the {need} role; "
                                        f"this token has {principal.role}"})
        if (method, path) == ("GET", "/admin/status"):
            return _json(200, {"partitions": status.partitions(),
                               "paused": status.paused_sources()})
        if (method, path) == ("GET", "/admin/deadletters"):
            store = self._dead_letters()
            files = [{"name": n, "entries": len(store.read(n))} for n in store.names()]
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
        if method == "POST" and len(parts) == 4 and parts[1] == "sources" \
                and parts[3] in ("pause", "resume"):
            name = parts[2]
            if name not in {s.name for s in self._cfg.sources}:
                return _json(404, {"error": f"no source {name!r}"})
            (status.pause if parts[3] == "pause" else status.resume)(name)
            return _json(200, {"source": name, "paused": status.is_paused(name)})
        return _json(404, {"error": f"no route {method} {path}"})

    def _audit_write(self, principal: Principal | None, method: str, path: str, code: int,
                     remote: str) -> None:
        entry = {"time": time.time(), "principal": principal.name if principal else None,
                 "role": principal.role if principal else None, "method": method, "path": path,
                 "status": code, "remote": remote, "pid": os.getpid()}
        with self._audit_lock:
            self._audit.parent.mkdir(parents=True, exist_ok=True)
            with self._audit.open("ab") as f:
                f.write(orjson.dumps(entry) + b"\n")
                f.flush()
                os.fsync(f.fileno())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self, method: str) -> None:
                url = urllib.parse.urlsplit(self.path)
                query = dict(urllib.parse.parse_qsl(url.query))
                principal = server._auth.check(self.headers.get("Authorization"))
                try:
                    code, body, ctype = server._route(method, url.path, query, principal)
                except Exception as ex:
                    log.exception("ops server: %s %s failed", method, url.path)
                    code, body, ctype = _json(500, {"error": f"{type(ex).__name__}: {ex}"})
                if url.path.startswith("/admin/"):
                    server._audit_write(principal, method, url.path, code, self.client_address[0])
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                self._serve("POST")

        return Handler


def _json(code: int, doc: Any) -> tuple[int, bytes, str]:
    return code, orjson.dumps(doc, option=orjson.OPT_INDENT_2), "application/json"
