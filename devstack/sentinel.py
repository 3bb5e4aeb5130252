"""HTTPS emulator of Azure Monitor's Logs Ingestion API, the App Service managed-identity
token endpoint, Entra ID's token endpoint for workload identity federation and Key Vault
``get_secret``, for tests, benchmarks and the demo.

Everything is served by one TLS ``ThreadingHTTPServer`` on 127.0.0.1 (azure-identity accepts an
https ``IDENTITY_ENDPOINT``; the CA is trusted through ``REQUESTS_CA_BUNDLE``). The wire
behaviour, the shared state and the fault script live in :mod:`devstack.sentinel_handler`.

Run standalone (for subprocess tests)::

    python -m devstack.sentinel --workdir DIR --rules-json '{"dcr-1": {"Custom-X": null}}'

(``--rules-json`` also takes DCR definitions, see :mod:`devstack.dcrdef`), which writes
``DIR/sentinel.json`` once listening and serves until SIGTERM/SIGINT. Other
processes drive it through :class:`EmulatorAdmin` or the ``/_emulator/*`` HTTP API.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from devstack.dcrdef import DcrDefinitionError
from devstack.sentinel_handler import EmulatorServer, SentinelRequestHandler
from devstack.sentinel_state import (
    EXCHANGE_AUDIENCE,
    IDENTITY_PATH,
    TENANT_ID,
    EmulatorState,
    FaultScript,
    RequestLog,
)
from devstack.tls import TlsFiles, client_ssl_context, make_ca_and_server_cert, server_ssl_context

__all__ = [
    "SentinelEmulator",
    "RequestLog",
    "FaultScript",
    "EmulatorAdmin",
    "DcrDefinitionError",
    "wait_for_info_file",
    "INFO_FILE_NAME",
    "main",
]

INFO_FILE_NAME = "sentinel.json"


class SentinelEmulator:
    """In-process Sentinel (Logs Ingestion + managed identity + Key Vault) emulator.

    ``rules`` maps a DCR immutable id to its streams; each stream maps to its declared column
    names, or ``None`` to accept any columns. Undeclared columns are dropped like the real
    service does and counted in :meth:`dropped_columns`.

    A rule may instead be a DCR definition (:mod:`devstack.dcrdef`: stream declarations with
    column types, data flows with their transformation and output stream, destination table
    schemas, per-DCR limits and the one managed identity allowed to ingest). Such a rule is
    validated like Azure Resource Manager validates a deployment (:class:`DcrDefinitionError`
    here), enforces its limits (429 with ``Retry-After``; see :meth:`rule_stats`), refuses
    other identities (403) and stores what the service would: values that do not fit their
    column's type become null (:meth:`dropped_values`), the transformation is applied, and
    output columns the destination table cannot take are dropped
    (:meth:`dropped_table_columns`). Legacy rules stay unlimited.

    Use as a context manager or call
    :meth:`start` / :meth:`stop`; ``stop`` then ``start`` again reuses the same port and state
    (handy to simulate an outage).
    """

    def __init__(
        self,
        *,
        rules: Mapping[str, Mapping[str, Any]],
        host: str = "127.0.0.1",
        port: int = 0,
        workdir: Path | None = None,
        token_ttl_secs: int = 3600,
        secrets: Mapping[str, str] | None = None,
        store_records: bool = True,
    ) -> None:
        self._state = EmulatorState(
            rules=rules, token_ttl_secs=token_ttl_secs, secrets=secrets or {},
            store_records=store_records,
        )
        self._host = host
        self._port = port
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="sentinel-emulator-"))
            weakref.finalize(self, shutil.rmtree, workdir, ignore_errors=True)
        self._workdir = Path(workdir)
        self._tls: TlsFiles | None = None
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> SentinelEmulator:
        """Bind, start serving in a daemon thread and return ``self``."""
        if self._server is not None:
            raise RuntimeError("SentinelEmulator is already running")
        if self._tls is None:
            self._tls = make_ca_and_server_cert(
                self._workdir / "tls", hosts=(self._host, "localhost")
            )
        server = EmulatorServer(
            (self._host, self._port), SentinelRequestHandler, self._state,
            server_ssl_context(self._tls),
        )
        self._port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"sentinel-emulator:{self._port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open (keep-alive) connection. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SentinelEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the server accepts connections."""
        return self._server is not None

    # -- connection details ------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The bound TCP port (0 before the first :meth:`start` when created with port=0)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """The Logs Ingestion (data collection) endpoint, e.g. ``https://127.0.0.1:PORT``."""
        if self._port == 0:
            raise RuntimeError("SentinelEmulator has no port yet: call start() first")
        return f"https://{self._host}:{self._port}"

    @property
    def identity_endpoint(self) -> str:
        """Value for ``IDENTITY_ENDPOINT`` (App Service managed identity, 2019-08-01)."""
        return self.endpoint + IDENTITY_PATH

    @property
    def identity_header(self) -> str:
        """Value for ``IDENTITY_HEADER`` (the secret sent back as ``X-IDENTITY-HEADER``)."""
        return self._state.identity_header

    @property
    def authority_host(self) -> str:
        """Value for ``AZURE_AUTHORITY_HOST``: Entra's token endpoint is
        ``{authority_host}/{tenant_id}/oauth2/v2.0/token`` (workload identity federation)."""
        return self.endpoint

    @property
    def tenant_id(self) -> str:
        """The one tenant the emulator's Entra endpoint knows."""
        return TENANT_ID

    @property
    def vault_url(self) -> str:
        """Key Vault URL for ``SecretClient(vault_url, cred, verify_challenge_resource=False)``."""
        return self.endpoint

    @property
    def ca_file(self) -> str:
        """PEM file of the test CA that clients must trust."""
        if self._tls is None:
            raise RuntimeError("SentinelEmulator has no certificate yet: call start() first")
        return str(self._tls.ca_file)

    def client_env(self) -> dict[str, str]:
        """Environment for a client process using ``ManagedIdentityCredential``.

        The client must NOT also have ``IDENTITY_SERVER_THUMBPRINT`` (Service Fabric),
        ``IMDS_ENDPOINT`` (Azure Arc) or ``MSI_ENDPOINT`` set, or azure-identity picks another
        managed-identity flavour.
        """
        no_proxy = ",".join(
            x for x in (os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost") if x
        )
        return {
            "IDENTITY_ENDPOINT": self.identity_endpoint,
            "IDENTITY_HEADER": self.identity_header,
            "REQUESTS_CA_BUNDLE": self.ca_file,
            "SSL_CERT_FILE": self.ca_file,
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    def info(self) -> dict[str, Any]:
        """Connection details as written to ``sentinel.json`` by the CLI."""
        return {
            "endpoint": self.endpoint,
            "identity_endpoint": self.identity_endpoint,
            "identity_header": self.identity_header,
            "vault_url": self.vault_url,
            "authority_host": self.authority_host,
            "tenant_id": self.tenant_id,
            "ca_file": self.ca_file,
            "admin_url": self.endpoint + "/_emulator",
            "pid": os.getpid(),
        }

    # -- inspection and control --------------------------------------------------------------
    def records(self, stream: str | None = None, table: str | None = None,
                ) -> list[dict[str, Any]]:
        """Every accepted record (declared columns only), in arrival order, optionally for one
        stream and/or destination table (rules given as DCR definitions store one record per
        row and data flow, as processed by it). Do not mutate."""
        return self._state.records(stream, table)

    def requests(self) -> list[RequestLog]:
        """One entry per ingestion request, accepted or not, in arrival order."""
        return self._state.requests()

    def dropped_columns(self, stream: str) -> dict[str, int]:
        """Undeclared column name -> number of records it was dropped from, for ``stream``."""
        return self._state.dropped_columns(stream)

    def dropped_values(self, stream: str) -> dict[str, int]:
        """Declared column -> number of records of ``stream`` whose value did not fit the
        column's type and was stored as null (DCR definitions only)."""
        return self._state.dropped_values(stream)

    def dropped_table_columns(self, table: str) -> dict[str, int]:
        """Output column -> number of records it was dropped from on the way into destination
        ``table`` (not a column of the table, or of a type it cannot take)."""
        return self._state.dropped_table_columns(table)

    def rule_stats(self) -> dict[str, dict[str, Any]]:
        """Per-rule counters and limits, as served by ``GET /_emulator/rules``."""
        return self._state.rule_stats()

    def summary(self) -> dict[str, Any]:
        """Per-stream counters, as served by ``GET /_emulator/summary``."""
        return self._state.summary()

    def set_faults(self, faults: Sequence[Mapping[str, Any]]) -> None:
        """Replace the fault script (see :class:`FaultScript` for the spec format)."""
        self._state.faults.replace(faults)

    def set_rejects(self, needles: list[str]) -> None:
        """Refuse requests with a row containing one of these strings (HTTP 400)."""
        self._state.set_rejects(needles)

    def set_secret(self, name: str, value: str) -> str:
        """Add or rotate a Key Vault secret; returns the new version id."""
        return self._state.set_secret(name, value)

    def add_federated_credential(self, client_id: str, issuer: str, subject: str,
                                 audience: str = EXCHANGE_AUDIENCE) -> None:
        """Let app ``client_id`` exchange a JWT from ``issuer`` about ``subject`` for tokens
        at the Entra endpoint (a federated identity credential)."""
        self._state.add_federated_credential(client_id, issuer, subject, audience)

    def token_info(self, token: str) -> dict[str, str | None] | None:
        """``{"resource", "client_id"}`` a live token was issued for, or None."""
        info = self._state.token_info(token)
        return None if info is None else {"resource": info[0], "client_id": info[1]}

    def reset(self) -> None:
        """Clear records, request log, dropped-column and dropped-value counts, the rules'
        limit windows and counters, and faults (not tokens/secrets)."""
        self._state.reset()


class EmulatorAdmin:
    """Client for the ``/_emulator`` admin API of an emulator running in another process."""

    def __init__(self, endpoint: str, ca_file: str, *, timeout: float = 10.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._ctx = client_ssl_context(ca_file)
        self._timeout = timeout

    @classmethod
    def from_info_file(cls, path: Path, *, wait_secs: float = 30.0) -> EmulatorAdmin:
        """Wait for a CLI-written ``sentinel.json`` and connect to that emulator."""
        info = wait_for_info_file(path, wait_secs=wait_secs)
        return cls(info["endpoint"], info["ca_file"])

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            self.endpoint + "/_emulator/" + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ctx)
        )
        with opener.open(req, timeout=self._timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def records(self, stream: str | None = None, table: str | None = None,
                ) -> list[dict[str, Any]]:
        """Accepted records, optionally for one stream and/or destination table."""
        params = {k: v for k, v in (("stream", stream), ("table", table)) if v is not None}
        query = "?" + urllib.parse.urlencode(params) if params else ""
        return self._call("GET", "records" + query)

    def requests(self) -> list[dict[str, Any]]:
        """The ingestion request log (``RequestLog`` fields as JSON objects)."""
        return self._call("GET", "requests")

    def summary(self) -> dict[str, Any]:
        """Per-stream counters."""
        return self._call("GET", "summary")

    def rule_stats(self) -> dict[str, dict[str, Any]]:
        """Per-rule counters and limits (see :meth:`SentinelEmulator.rule_stats`)."""
        return self._call("GET", "rules")

    def set_faults(self, faults: Sequence[Mapping[str, Any]]) -> None:
        """Replace the fault script."""
        self._call("POST", "faults", list(faults))

    def set_rejects(self, needles: list[str]) -> None:
        """Refuse requests with a row containing one of these strings (HTTP 400)."""
        self._call("POST", "rejects", list(needles))

    def set_secret(self, name: str, value: str) -> str:
        """Add or rotate a secret; returns the new version id."""
        return self._call("POST", "secrets", {"name": name, "value": value})["version"]

    def add_federated_credential(self, client_id: str, issuer: str, subject: str,
                                 audience: str = EXCHANGE_AUDIENCE) -> None:
        """Add a federated identity credential to app ``client_id``."""
        self._call("POST", "federated", {"client_id": client_id, "issuer": issuer,
                                         "subject": subject, "audience": audience})

    def token_info(self, token: str) -> dict[str, str | None] | None:
        """``{"resource", "client_id"}`` a live token was issued for, or None (what a relying
        party, e.g. AWS STS for a web identity, learns by validating it)."""
        try:
            return self._call("POST", "token-info", {"token": token})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def reset(self) -> None:
        """Clear records, requests, drop counts, rule windows and counters, and faults."""
        self._call("POST", "reset", {})


def wait_for_info_file(path: Path, *, wait_secs: float = 30.0) -> dict[str, Any]:
    """Poll until the CLI has written ``path`` (atomically) and return its content."""
    deadline = time.monotonic() + wait_secs
    while True:
        try:
            return json.loads(Path(path).read_text())
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"sentinel emulator did not write {path} within {wait_secs}s") from None
            time.sleep(0.05)


def _write_json_atomically(path: Path, content: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.sentinel", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--workdir", type=Path, required=True, help="where TLS files and sentinel.json go"
    )
    parser.add_argument(
        "--rules-json", required=True,
        help='DCR rules: {"dcr-id": {"Custom-Stream": null | ["Col", ...]}} or DCR '
             'definitions {"dcr-id": {"streams": {...}, "flows": [...], ...}} '
             "(see devstack/dcrdef.py)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--token-ttl-secs", type=int, default=3600)
    parser.add_argument(
        "--secrets-json", default="{}", help='initial Key Vault secrets {"name": "value"}'
    )
    parser.add_argument(
        "--no-store-records", action="store_true",
        help="count records without keeping them (long benchmarks)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: serve until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    try:
        rules = json.loads(args.rules_json)
        secrets = json.loads(args.secrets_json)
    except json.JSONDecodeError as exc:
        print(f"sentinel emulator: invalid JSON argument: {exc}", file=sys.stderr)
        return 2
    workdir: Path = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    info_path = workdir / INFO_FILE_NAME
    info_path.unlink(missing_ok=True)  # never let a reader see a stale file from a previous run
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        emulator = SentinelEmulator(
            rules=rules, host=args.host, port=args.port, workdir=workdir,
            token_ttl_secs=args.token_ttl_secs, secrets=secrets,
            store_records=not args.no_store_records,
        )
    except ValueError as exc:  # DcrDefinitionError included: the "deployment" is refused
        print(f"sentinel emulator: invalid rules: {exc}", file=sys.stderr)
        return 2
    with emulator:
        _write_json_atomically(info_path, emulator.info())
        print(f"sentinel emulator listening on {emulator.endpoint}", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
    info_path.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
