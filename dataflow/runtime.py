"""Starts the ops side of one flow process: logs, the ops server, alerts, the health table.

Called once per process when ``python -m bytewax.run dataflow.flow:flow`` builds the flow.
Process ``i`` of a multi-process flow serves on ``ops.port + i`` (its index comes from
bytewax.run's ``-i`` or ``BYTEWAX_PROCESS_ID``), so processes on one host do not collide.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import threading
import time
from typing import Any

from connectors.aws import client_for, s3_client
from connectors.deadletter import DeadLetterStore
from connectors.ops.auth import Authorizer, Credentials, RevocationFile
from connectors.ops.health import Readiness
from connectors.ops.logs import configure
from connectors.ops.secrets import SecretError, SecretResolver
from connectors.ops.server import OpsServer
from connectors.ops.webhooks import AlertState, WebhookNotifier, WebhookTarget
from dataflow.config import Config, OpsConfig
from dataflow.healthtable import HealthReporter
from dataflow.keys import keyring_for
from dataflow.replay import replay
from dataflow.tables import tables_for
from dataflow.targets import Probe
from operators.parse import RecordMapper

__all__ = ["OpsRuntime", "process_index", "start"]

log = logging.getLogger(__name__)

ALERT_EVERY_SECS = 15.0
LOG_EVERY_SECS = 60.0


def process_index(argv: list[str] | None = None) -> int:
    """This process's index in a multi-process flow (0 when alone)."""
    argv = sys.argv if argv is None else argv
    for i, a in enumerate(argv):
        if a in ("-i", "--process-id") and i + 1 < len(argv):
            return int(argv[i + 1])
        if a.startswith("--process-id="):
            return int(a.split("=", 1)[1])
    return int(os.environ.get("BYTEWAX_PROCESS_ID", "0") or 0)


class OpsRuntime:
    """The running ops parts of one process (stop() for tests)."""

    def __init__(self, cfg: Config, *, port: int | None = None) -> None:
        self.cfg = cfg
        ops = cfg.ops
        kwargs: dict[str, Any] = {"verify_challenge_resource": ops.keyvault_verify_challenge_resource}
        if cfg.sentinel.ca_file:
            kwargs["connection_verify"] = cfg.sentinel.ca_file
        self.secrets = SecretResolver(ops.keyvault_url, ttl_secs=ops.secret_ttl_secs, **kwargs)
        self._revoked_file = RevocationFile(ops.revoked_file) if ops.revoked_file else None
        self._logged: dict[str, float] = {}
        self.authorizer = Authorizer(self.credentials, max_lifetime_secs=ops.jwt_max_lifetime_secs)
        tables = _streams(cfg)
        self.readiness = Readiness(cfg.ops, cfg.sources, functools.partial(client_for, cfg.aws),
                                   functools.partial(Probe, cfg), tables)
        self.server: OpsServer | None = None
        if ops.port or port is not None:
            offset = process_index() if ops.port_per_process else 0
            where = ops.port + offset if port is None else port
            try:
                self.server = OpsServer(cfg.ops, [s.name for s in cfg.sources], where,
                                        self.authorizer, self.readiness,
                                        self._replay, self._dead_letters)
            except OSError as ex:
                # Loud, but not fatal: delivering the data matters more than serving metrics.
                log.error("ops server: cannot listen on %s:%d (%s); no /metrics or /readyz in "
                          "this process. Set ops.port to a free port (process i uses port + i).",
                          ops.bind, where, ex)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> OpsRuntime:
        if self.server is not None:
            self.server.start()
            log.info("ops server on %s (/metrics, /healthz, /readyz, /admin)", self.server.url)
        if self.cfg.ops.webhooks:
            self._spawn(self._alert_loop, "s3sentinel-alerts")
        if self.cfg.ops.health_table:

            reporter = HealthReporter(self.cfg, self.readiness)
            self._spawn(lambda: reporter.run(self._stop), "s3sentinel-health")
        return self

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            self.server.stop()

    def _spawn(self, target: Any, name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def credentials(self) -> Credentials:
        """The admin API's credentials as of now: ``keyvault:`` references resolved (through
        the resolver's TTL cache), weak resolved values refused, the revocation file read
        again if it changed. What cannot be read is named in ``unavailable``."""
        ops = self.cfg.ops
        unavailable: list[str] = []
        readers = self._resolve(ops.reader_tokens, "ops.reader_tokens", unavailable)
        admins = self._resolve(ops.admin_tokens, "ops.admin_tokens", unavailable)
        key = self._resolve([ops.jwt_key] if ops.jwt_key else [], "ops.jwt_key", unavailable,
                            key=True)
        known = len(unavailable)
        revoked = [entry for value in self._resolve(ops.revoked, "ops.revoked", unavailable,
                                                    check=False)
                   for entry in value.split()]
        revocations_known = len(unavailable) == known
        if self._revoked_file is not None:
            try:
                revoked.extend(self._revoked_file.entries())
            except OSError as ex:
                self._log_error("ops.revoked_file", "ops: %s; admin requests are refused (503) "
                                "until it can be read", ex)
                unavailable.append("ops.revoked_file")
                revocations_known = False
        return Credentials(tuple(readers), tuple(admins), key[0] if key else "", tuple(revoked),
                           tuple(unavailable), revocations_known)

    def _resolve(self, values: list[str], where: str, unavailable: list[str], *,
                 key: bool = False, check: bool = True) -> list[str]:
        out = []
        for i, v in enumerate(values):
            try:
                value = self.secrets.resolve(v)
            except SecretError as ex:
                self._log_error(f"{where}[{i}]", "ops: %s[%d]: %s", where, i, ex)
                unavailable.append(f"{where}[{i}]")
                continue
            weak = OpsConfig.secret_weakness(value, key=key) if check else ""
            if weak:
                self._log_error(f"{where}[{i}]", "ops: %s[%d] (%s) is refused: too weak: %s",
                                where, i, v if v.startswith("keyvault:") else "literal", weak)
                unavailable.append(f"{where}[{i}]")
                continue
            out.append(value)
        return out

    def _log_error(self, key: str, fmt: str, *args: Any) -> None:
        # Credentials are read per request: say what is wrong once a minute, not per request.
        now = time.monotonic()
        if now - self._logged.get(key, -LOG_EVERY_SECS) >= LOG_EVERY_SECS:
            self._logged[key] = now
            log.error(fmt, *args)

    def _dead_letters(self) -> DeadLetterStore:
        rt = self.cfg.runtime

        return DeadLetterStore(rt.errors_dir, rt.errors_s3_uri,
                               functools.partial(s3_client, self.cfg.aws),
                               keyring_for(self.cfg, self.secrets))

    def _replay(self, dry_run: bool) -> str:

        return str(replay(self.cfg, dry_run=dry_run))

    def _alert_loop(self) -> None:

        ops = self.cfg.ops
        state = AlertState(ops.alert_for_secs)
        notifier = None
        while not self._stop.wait(ALERT_EVERY_SECS):
            try:
                if notifier is None:
                    targets = [WebhookTarget(w.kind, self.secrets.resolve(w.url))
                               for w in ops.webhooks]
                    notifier = WebhookNotifier(targets)
                for name, check in self.readiness.run().items():
                    alert = state.observe(f"s3sentinel_{name}", not check.ok,
                                          severity="critical" if name == "sentinel" else "warning",
                                          summary=f"s3sentinel readiness check '{name}': "
                                                  f"{check.detail}",
                                          details={"pid": str(os.getpid()), "check": name})
                    if alert is not None:
                        notifier.notify(alert)
                for alert in state.active():  # reminders, at most every min_interval_secs
                    notifier.notify(alert)
            except Exception:
                log.exception("ops: alert loop failed; trying again in %.0fs", ALERT_EVERY_SECS)


def _streams(cfg: Config) -> list[str]:

    tables = tables_for(cfg)
    mapper = RecordMapper(cfg.sources, tables, cfg.batch.max_bytes)
    out: list[str] = []
    for src in cfg.sources:
        if src.format != "auto":
            try:
                out.append(mapper.stream_of(src.name, src.format))
            except Exception:  # noqa: S112 (reported by validate-config)
                continue
    return list(dict.fromkeys(out)) or [t.stream for t in tables.values()]


_runtime: OpsRuntime | None = None


def start(cfg: Config) -> OpsRuntime:
    """Configure logging and start the ops parts of this process (once)."""
    global _runtime
    if _runtime is None:
        configure(cfg.ops.log_format)
        _runtime = OpsRuntime(cfg).start()
    return _runtime
