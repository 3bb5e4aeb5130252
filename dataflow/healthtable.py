"""Connector health inside Sentinel: one row per source per interval in S3SentinelHealth_CL.

Like the native connectors' ``SentinelHealth`` rows, so the SOC sees the connector's
health beside its data and can alert on it in KQL, e.g.::

    S3SentinelHealth_CL
    | summarize arg_max(TimeGenerated, *) by Source, Computer
    | where Status != "Success" or TimeGenerated < ago(10m)

Each row also carries what the ``[[transforms]]`` did in the interval (``Transforms``: per
table, rows by outcome and bytes in and out: what they saved); transforms act per table, so
these are the process's figures, repeated on each of its sources' rows.

Rows are built from this process's metrics (deltas since the last row) and readiness,
mapped through the table definition like any other row, and sent with the same
Logs Ingestion client (its own, with its own retries off: a lost health row is
replaced by the next one a minute later).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from isal import igzip

from connectors.ops.health import Readiness
from dataflow.config import Config
from dataflow.core import metrics
from dataflow.tables import tables_for
from dataflow.targets import service_for
from operators.parse import RecordMapper
from operators.schema import Mapper

__all__ = ["HealthReporter"]

log = logging.getLogger(__name__)


def _samples(metric: Any) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for m in metric.collect() for s in m.samples
            if s.name.endswith("_total") or not s.name.endswith(("_created", "_bucket", "_sum",
                                                                  "_count"))]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class HealthReporter:
    """Builds and sends health rows; ``rows()`` is separate so it can be tested."""

    def __init__(self, cfg: Config, readiness: Readiness | None = None,
                 service: Any = None) -> None:
        self._cfg = cfg
        self._readiness = readiness
        self._service = service
        tables = self._tables = tables_for(cfg)
        table = tables[cfg.ops.health_table]
        self._mapper = Mapper(table)
        self.stream = table.stream
        mapper = RecordMapper(cfg.sources, tables, cfg.batch.max_bytes)
        self._streams: dict[str, str] = {}
        for src in cfg.sources:
            try:
                self._streams[src.name] = (mapper.stream_of(src.name, src.format)
                                           if src.format != "auto" else "")
            except Exception:
                self._streams[src.name] = ""
        self._last: dict[str, float] = {}
        self._last_time = time.time()
        self._last_success: dict[str, float] = {}
        self._host = socket.gethostname()
        self._seq = 0

    def _delta(self, key: str, value: float) -> float:
        prev = self._last.get(key, 0.0)
        self._last[key] = value
        return max(0.0, value - prev)

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """One row per source for the interval since the last call (updates the baselines)."""
        now = time.time() if now is None else now
        interval = now - self._last_time
        self._last_time = now
        per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        errors: dict[str, dict[str, float]] = defaultdict(dict)
        for labels, v in _samples(metrics.OBJECTS):
            per[labels["source"]][f"objects_{labels['outcome']}"] += self._delta(
                f"obj|{labels['source']}|{labels['outcome']}", v)
        for labels, v in _samples(metrics.RECORDS_READ):
            per[labels["source"]]["read"] += self._delta(f"read|{labels['source']}", v)
        for labels, v in _samples(metrics.ERRORS):
            d = self._delta(f"err|{labels['source']}|{labels['stage']}|{labels['error_code']}", v)
            if d:
                errors[labels["source"]][f"{labels['stage']}/{labels['error_code']}"] = d
            if labels["stage"] in ("parse", "map"):
                per[labels["source"]]["quarantined"] += d
        by_stream: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for labels, v in _samples(metrics.RECORDS_DELIVERED):
            by_stream[labels["stream"]]["delivered"] += self._delta(f"del|{labels['stream']}", v)
        requests: dict[str, dict[str, float]] = defaultdict(dict)
        for labels, v in _samples(metrics.REQUESTS):
            d = self._delta(f"req|{labels['stream']}|{labels['status']}", v)
            if d:
                requests[labels["stream"]][labels["status"]] = d
            if labels["status"] == "204" and d:
                self._last_success[labels["stream"]] = now
        dead = sum(self._delta(f"dead|{lb['stage']}|{lb['reason']}", v)
                   for lb, v in _samples(metrics.DEADLETTER_RECORDS))
        lag: dict[str, float] = {}
        for lb, v in _samples(metrics.LAG_SECONDS):
            lag[lb["source"]] = max(v, lag.get(lb["source"], 0.0))
        oldest: dict[str, float] = {}
        for lb, v in _samples(metrics.OLDEST_UNDELIVERED_SECONDS):
            oldest[lb["source"]] = max(v, oldest.get(lb["source"], 0.0))
        transforms = self._transforms()
        failed = []
        if self._readiness is not None:
            failed = [f"{n}: {c.detail}" for n, c in self._readiness.run().items() if not c.ok]
        out = []
        for src in self._cfg.sources:
            stream = self._streams.get(src.name, "")
            p = per[src.name]
            status, desc = "Success", ""
            if failed:
                status, desc = "Failure", "; ".join(failed)
            elif p["objects_failed"] or p["quarantined"]:
                status = "Warning"
                desc = f"{int(p['objects_failed'])} objects failed, {int(p['quarantined'])} " \
                       "records quarantined (see the dead-letter store)"
            last = self._last_success.get(stream)
            out.append({
                "TimeGenerated": _iso(now), "Computer": self._host, "ProcessId": os.getpid(),
                "Source": src.name, "Stream": stream, "Status": status, "Description": desc,
                "IntervalSeconds": round(interval, 3),
                "ObjectsCompleted": int(p["objects_completed"]),
                "ObjectsFailed": int(p["objects_failed"]), "RecordsRead": int(p["read"]),
                "RecordsQuarantined": int(p["quarantined"]),
                "RecordsDelivered": int(by_stream[stream]["delivered"]) if stream else 0,
                "RecordsDeadLettered": int(dead),
                "ErrorsByCode": errors.get(src.name, {}),
                "RequestsByStatus": requests.get(stream, {}),
                "LagSeconds": lag.get(src.name), "OldestUndeliveredSeconds": oldest.get(src.name),
                "LastSuccess": _iso(last) if last else None,
                "Transforms": transforms,
            })
        return out

    def _transforms(self) -> dict[str, dict[str, int]]:
        """What ``[[transforms]]`` did in the interval, per table: rows by outcome (``in``,
        ``kept``, ``dropped``, ``sampled_out``, ``routed``, ... whatever outcomes the metric
        has) and ``bytes_in``/``bytes_out``; tables with nothing in the interval left out.

        Transforms act per table, not per source: these are the process's figures,
        repeated on each of its sources' rows (as ``RecordsDeadLettered``)."""
        per: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        for lb, v in _samples(metrics.TRANSFORM_ROWS):
            per[lb["table"]][lb["outcome"]] += self._delta(
                f"tr|{lb['table']}|{lb['outcome']}", v)
        for lb, v in _samples(metrics.TRANSFORM_BYTES):
            per[lb["table"]][f"bytes_{lb['direction']}"] += self._delta(
                f"tb|{lb['table']}|{lb['direction']}", v)
        return {table: {k: int(v) for k, v in sorted(counts.items())}
                for table, counts in sorted(per.items()) if any(counts.values())}

    def send(self, rows: list[dict[str, Any]]) -> None:
        if self._service is None:
            self._service = service_for(self._cfg, self._tables, self.stream)
        body = []
        for row in rows:
            self._seq += 1
            body.append(self._mapper.map_dict(row, f"health-{self._host}-{os.getpid()}-{self._seq}"))
        self._service.send(self.stream, igzip.compress(b"[" + b",".join(body) + b"]", 1))

    def run(self, stop: threading.Event) -> None:
        self.rows()  # baseline: the first row covers a whole interval
        while not stop.wait(self._cfg.ops.health_interval_secs):
            try:
                self.send(self.rows())
            except Exception as ex:
                log.warning("health row not sent (%s); the next one follows in %.0fs",
                            (str(ex).splitlines() or [""])[0], self._cfg.ops.health_interval_secs)
