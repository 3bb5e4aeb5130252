"""A fault-injecting HTTP proxy in front of moto: S3 and SQS as a bad day looks.

moto answers every request correctly; real S3 does not always: ``503 SlowDown`` under
load, ``500 InternalError`` now and then, connections that drop. The proxy forwards
requests to moto and, with the configured probabilities, answers with such an error
instead (or closes the connection), so the connector's retries are tested against the
real client (boto3) reading a real error response.

    proxy = FaultProxy(moto_endpoint, slowdown=0.1, internal=0.05, drop=0.02).start()
    ... endpoint_url=proxy.endpoint ...
    proxy.stop()
"""

from __future__ import annotations

import http.client
import random
import threading
import urllib.parse
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FaultProxy"]

_SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
_INTERNAL = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
             b"<Message>We encountered an internal error. Please try again.</Message></Error>")


class FaultProxy:
    """Forwards to ``upstream`` (``http://host:port``), injecting faults at random.

    :arg slowdown: Probability of a ``503 SlowDown`` answer.
    :arg internal: Probability of a ``500 InternalError`` answer.
    :arg drop: Probability of closing the connection without an answer.
    :arg seed: For a repeatable run.
    """

    def __init__(self, upstream: str, *, slowdown: float = 0.0, internal: float = 0.0,
                 drop: float = 0.0, seed: int | None = None) -> None:
        parsed = urllib.parse.urlsplit(upstream)
        self._host, self._port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.slowdown, self.internal, self.drop = slowdown, internal, drop
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.injected: Counter[str] = Counter()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def set(self, *, slowdown: float = 0.0, internal: float = 0.0, drop: float = 0.0) -> None:
        """Change the fault probabilities (all 0: a plain proxy)."""
        with self._lock:
            self.slowdown, self.internal, self.drop = slowdown, internal, drop

    def _pick(self) -> str | None:
        with self._lock:
            r = self._rng.random()
            for kind, p in (("slowdown", self.slowdown), ("internal", self.internal),
                            ("drop", self.drop)):
                if r < p:
                    self.injected[kind] += 1
                    return kind
                r -= p
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy._pick()
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault is not None:
                    payload = _SLOWDOWN if fault == "slowdown" else _INTERNAL
                    self.send_response(503 if fault == "slowdown" else 500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in ("connection", "keep-alive")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "keep-alive", "transfer-encoding",
                                         "content-length", "server", "date"):
                        self.send_header(k, v)
                head = self.command == "HEAD"
                self.send_header("Content-Length", (resp.getheader("Content-Length") or "0")
                                 if head else str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _serve(self) -> None:
                try:
                    self._forward()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client gave up (a killed flow)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        return Handler
