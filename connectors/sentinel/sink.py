"""SentinelSink: batches of rows delivered to Microsoft Sentinel through the Logs Ingestion API.

Each worker has its own partition with its own client. A batch is sent as one
gzipped request; transient failures (429, 5xx, connection errors, credential
hiccups) are retried with exponential back-off and full jitter, honouring
``Retry-After``, for up to ``retry_max_secs``. A 413 splits the batch in two, and so
does a 400 (the service refuses a whole request for one bad row): halving isolates the
rows it refuses. What still cannot be delivered (a single refused row, or a batch whose
retries ran out) goes to the dead-letter store with the service's status, error code and
request id, to be sent again with ``s3sentinel replay``. Errors that no retry or split
can fix (401, 403, 404: credential, role or rule id) stop the flow with
:class:`DeliveryFailed` instead, so a misconfiguration does not fill the dead-letter store.

The upload journal (see :mod:`connectors.ledger`) keeps records that were
already accepted from being sent twice when a restart replays them.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from typing_extensions import override

from connectors.deadletter import DeadLetterStore, record_dead_letters
from connectors.ledger import DEAD_LETTERED, Ledger
from connectors.sentinel.budget import Budget, pick
from connectors.sentinel.config import DcrConfig, SentinelConfig, TargetConfig
from connectors.sentinel.encoder import MAX_WIRE_BYTES, encode
from connectors.sentinel.errors import DeliveryError, DeliveryFailed
from connectors.sentinel.service import IngestionService, make_credential
from dataflow.core import metrics
from dataflow.core.backoff import delay_secs
from dataflow.core.messages import Batch

__all__ = ["Lane", "SentinelSink"]

log = logging.getLogger(__name__)

Sleep = Callable[[float], None]

STOP_STATUSES = frozenset({401, 403, 404})
"""Refusals that concern every request alike (credential, role, rule): the flow stops."""


def delivery_entries(batch: Batch, ex: DeliveryError, why: str) -> list[dict[str, Any]]:
    """Dead-letter entries for rows the service did not take."""
    now = time.time()
    out = []
    for rid, row in zip(batch.record_ids, batch.rows, strict=True):
        obj, _, off = rid.rpartition("-")
        out.append({"stage": "deliver", "stream": batch.stream, "target": batch.target,
                    "record_id": rid,
                    "object_id": obj, "offset": int(off), "status": ex.status,
                    "code": ex.code or (str(ex.status) if ex.status else "connection"),
                    "request_id": ex.request_id,
                    "service_request_id": ex.service_request_id,
                    "correlation_id": ex.correlation_id,
                    "reason": f"{why}: {ex}", "time": now, "row": row.decode()})
    return out


_TIME_GENERATED = re.compile(rb'"TimeGenerated":"([0-9T:.+-]+Z?)"')


def _event_delay(row: bytes) -> float | None:
    """Seconds from a row's TimeGenerated to now (None when it has none)."""
    m = _TIME_GENERATED.search(row)
    if m is None:
        return None
    try:
        t = datetime.fromisoformat(m.group(1).decode().replace("Z", "+00:00"))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return max(0.0, time.time() - t.timestamp())


def _client_request_id() -> str:
    return str(uuid.uuid4())


def _halves(batch: Batch) -> list[tuple[Batch, str]]:
    """The two halves of a batch, each a new logical request (its own client request id),
    in the order they are popped: the first half first."""
    return [(half, _client_request_id()) for half in reversed(batch.split())]


class Lane:
    """One DCR of a target, as one sink partition sends to it: its service and budget."""

    __slots__ = ("budget", "dcr", "service", "target")

    def __init__(self, target: str, dcr: DcrConfig, service: Any, budget: Budget) -> None:
        self.target = target
        self.dcr = dcr
        self.service = service
        self.budget = budget

    def carries(self, stream: str) -> bool:
        """Whether this DCR declares ``stream`` (the single-DCR form's carries every one)."""
        return not self.dcr.streams or stream in self.dcr.streams


class _SentinelPartition(StatelessSinkPartition[Batch]):
    def __init__(self, lanes: dict[str, list[Lane]], cfg: SentinelConfig, sleep: Sleep,
                 monotonic: Callable[[], float], journal: Ledger | None,
                 dead_letters: DeadLetterStore | None = None,
                 dead_journal: Ledger | None = None, name: str = "deliver") -> None:
        self._lanes = lanes
        self._default = next(iter(lanes))
        self._by_stream: dict[tuple[str, str], list[Lane]] = {}
        self._turn = 0
        self._cfg = cfg
        self._sleep = sleep
        self._monotonic = monotonic
        self._journal = journal
        self._dead_letters = dead_letters
        self._dead_journal = dead_journal
        self._name = name

    @override
    def write_batch(self, items: list[Batch]) -> None:
        for batch in items:
            self._deliver(batch)

    @override
    def close(self) -> None:
        for lanes in self._lanes.values():
            for lane in lanes:
                lane.service.close()
        for journal in (self._journal, self._dead_journal):
            if journal is not None:
                journal.close()

    def _unsent(self, batch: Batch) -> Batch | None:
        """The batch without records the journals say were delivered or dead-lettered (a
        replay after a crash)."""
        journal = self._journal
        if journal is None:
            return batch
        held = set(journal.held(batch.record_ids))
        if self._dead_journal is not None:
            held.update(self._dead_journal.held(batch.record_ids))
        if not held:
            return batch
        keep = [i for i in range(len(batch.record_ids)) if i not in held]
        metrics.RECORDS_SKIPPED.labels(batch.stream, "already_delivered").inc(
            len(batch.rows) - len(keep))
        if not keep:
            return None
        return Batch(batch.stream, tuple(batch.rows[i] for i in keep),
                     tuple(batch.record_ids[i] for i in keep), batch.target)

    def _lanes_for(self, batch: Batch) -> list[Lane]:
        """The DCRs of the batch's target that carry its stream."""
        key = (batch.target or self._default, batch.stream)
        lanes = self._by_stream.get(key)
        if lanes is None:
            lanes = [lane for lane in self._lanes.get(key[0], ()) if lane.carries(batch.stream)]
            self._by_stream[key] = lanes
        return lanes

    def _deliver(self, batch: Batch) -> None:
        unsent = self._unsent(batch)
        if unsent is None:
            return
        batch = unsent
        lanes = self._lanes_for(batch)
        if not lanes:
            target = batch.target or self._default
            why = (f"no DCR of target {target!r} carries stream {batch.stream!r}" if target in
                   self._lanes else f"no target {target!r} is configured")
            self._fail(batch, DeliveryError(why, status=None, code="no_dcr", transient=False),
                       "not deliverable")
            return
        budgets = [lane.budget for lane in lanes]
        cfg = self._cfg
        deadline = self._monotonic() + cfg.retry_max_secs
        # Each logical request (the batch, or a half of it after a split) has one client
        # request id, sent again with every retry of it: DCRLogErrors reports under that id.
        pending = [(batch, _client_request_id())]
        attempt = 0
        while pending:
            part, request_id = pending.pop()
            body = encode(part, cfg.gzip_level)
            if len(body) > MAX_WIRE_BYTES and len(part.rows) > 1:
                pending.extend(_halves(part))
                continue
            size = part.body_bytes
            i, wait = pick(budgets, size, self._turn)
            lane = lanes[i]
            self._turn += 1
            if wait > 0:
                metrics.DCR_WAIT_SECONDS.labels(lane.target, part.stream).inc(wait)
                self._sleep(wait)
            metrics.BATCH_BYTES.labels(part.stream).observe(part.body_bytes)
            lane.budget.take(size)
            started = self._monotonic()
            try:
                lane.service.send(part.stream, body, request_id=request_id)
            except DeliveryError as ex:
                status = str(ex.status or "error")
                metrics.REQUESTS.labels(part.stream, status).inc()
                metrics.DCR_REQUESTS.labels(lane.target, lane.dcr.name, status).inc()
                if (ex.too_large or ex.status == 400) and len(part.rows) > 1:
                    reason = "too_large" if ex.too_large else "isolate_refused"
                    metrics.REQUEST_RETRIES.labels(part.stream, reason).inc()
                    log.info("stream %s: %d rows refused (%s); sending them in two halves",
                             part.stream, len(part.rows), ex)
                    pending.extend(_halves(part))
                    continue
                if not ex.transient:
                    self._fail(part, ex, "the service refused it")
                    continue
                attempt += 1
                delay = self._backoff(attempt, ex.retry_after)
                # The failing DCR rests for the delay; another DCR of the stream may take
                # the request at once.
                lane.budget.pause(delay, throttled=ex.status == 429)
                _, wait = pick(budgets, size)
                if self._monotonic() + wait > deadline:
                    self._fail(part, ex, f"still failing after {cfg.retry_max_secs:.0f}s of retries")
                    attempt = 0
                    deadline = self._monotonic() + cfg.retry_max_secs
                    continue
                reason = {429: "throttled", None: "connection"}.get(ex.status, "server_error")
                metrics.REQUEST_RETRIES.labels(part.stream, reason).inc()
                if ex.status == 429:
                    metrics.THROTTLE_WAIT_SECONDS.labels(part.stream).inc(delay)
                    metrics.DCR_THROTTLED_SECONDS.labels(lane.target, lane.dcr.name).inc(delay)
                log.warning("stream %s: %d rows not delivered by DCR %s (%s); retry %d in %.1fs",
                            part.stream, len(part.rows), lane.dcr.name, ex, attempt, wait)
                pending.append((part, request_id))
                continue
            attempt = 0
            if self._journal is not None:
                self._journal.record(part.record_ids, via=lane.dcr.id)
            self._accepted(lane, part, len(body), self._monotonic() - started)

    def _accepted(self, lane: Lane, part: Batch, wire_bytes: int, secs: float) -> None:
        metrics.REQUEST_SECONDS.labels(part.stream).observe(secs)
        metrics.REQUESTS.labels(part.stream, "204").inc()
        metrics.REQUEST_BYTES.labels(part.stream).inc(wire_bytes)
        metrics.RECORDS_DELIVERED.labels(part.stream).inc(len(part.rows))
        metrics.BATCH_RECORDS.labels(part.stream).observe(len(part.rows))
        dcr = lane.dcr.name
        metrics.DCR_REQUESTS.labels(lane.target, dcr, "204").inc()
        metrics.DCR_BYTES.labels(lane.target, dcr).inc(part.body_bytes)
        left_bytes, left_requests = lane.budget.left()
        metrics.DCR_BUDGET_LEFT.labels(lane.target, dcr, "bytes").set(left_bytes)
        metrics.DCR_BUDGET_LEFT.labels(lane.target, dcr, "requests").set(left_requests)
        event_delay = _event_delay(part.rows[0])
        if event_delay is not None:
            metrics.EVENT_DELAY_SECONDS.labels(part.stream).observe(event_delay)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after + random.uniform(0, 0.25)
        return delay_secs(attempt, self._cfg.retry_base_secs, self._cfg.retry_cap_secs)

    def _fail(self, batch: Batch, ex: DeliveryError, why: str) -> None:
        """Dead-letter rows that cannot be delivered, or stop the flow when nothing could be."""
        first, last = batch.record_ids[0], batch.record_ids[-1]
        if self._dead_letters is None or ex.status in STOP_STATUSES:
            msg = (f"could not deliver {len(batch.rows)} rows to stream {batch.stream} "
                   f"(records {first} .. {last}): {why}: {ex}. The flow stops so that nothing "
                   "is lost; fix the cause and restart it: delivery resumes from the last "
                   "snapshot.")
            raise DeliveryFailed(msg) from ex
        log.error("stream %s: %d rows (records %s .. %s) go to the dead-letter store %s: %s: %s",
                  batch.stream, len(batch.rows), first, last, self._dead_letters.location, why, ex)
        record_dead_letters(self._dead_letters, self._dead_journal,
                            delivery_entries(batch, ex, why), self._name)


class SentinelSink(DynamicSink[Batch]):
    """Delivers :class:`~dataflow.core.messages.Batch` items to their target's DCRs.

    :arg cfg: Retry, timeout and compression settings (and the single-DCR form's target).
    :arg service_factory: Builds the client of one DCR of a target (one per worker and
        DCR): ``service_factory(target, dcr)``; defaults to :class:`IngestionService` with
        the target's credential.
    :arg targets: The targets; the first is the one of batches that name none. Defaults to
        the single-DCR form of ``cfg``.
    :arg credential_for: Builds a target's credential (once per worker and target).
    :arg sleep: Waits between retries (injectable for tests).
    :arg journal_dir: Where the upload journal lives; None turns it off.
    :arg journal_retention_secs: How long delivered ranges are remembered.
    :arg dead_letters: Builds the dead-letter store for rows that cannot be delivered;
        None stops the flow on such rows instead.
    :arg keyring: Authenticates the journal lines (see :mod:`connectors.ledger`);
        by default the dead-letter store's keyring (the same ``runtime.encryption_*``).
    """

    def __init__(self, cfg: SentinelConfig,
                 service_factory: Callable[[TargetConfig, DcrConfig], Any] | None = None,
                 *, targets: Sequence[TargetConfig] | None = None,
                 credential_for: Callable[[TargetConfig], Any] = make_credential,
                 sleep: Sleep = time.sleep, monotonic: Callable[[], float] = time.monotonic,
                 journal_dir: str | None = None,
                 journal_retention_secs: float = 7 * 24 * 3600,
                 dead_letters: Callable[[], DeadLetterStore] | None = None,
                 keyring: Any = None) -> None:
        if targets is None:
            legacy = cfg.legacy_target()
            if legacy is None:
                msg = "no delivery target: configure [[targets]] (or [sentinel] endpoint/rule_id)"
                raise ValueError(msg)
            targets = [legacy]
        self._targets = list(targets)
        self._keyring = keyring
        self._cfg = cfg
        self._factory = service_factory
        self._credential_for = credential_for
        self._sleep = sleep
        self._monotonic = monotonic
        self._journal_dir = journal_dir
        self._retention = journal_retention_secs
        self._dead_letters = dead_letters

    def lanes(self) -> dict[str, list[Lane]]:
        """One lane per DCR of every target, with new clients."""
        out: dict[str, list[Lane]] = {}
        for target in self._targets:
            credential = None if self._factory else self._credential_for(target)
            out[target.name] = [
                Lane(target.name, dcr,
                     self._factory(target, dcr) if self._factory else
                     IngestionService.for_dcr(self._cfg, target, dcr, credential),
                     Budget(dcr.max_bytes_per_min, dcr.max_requests_per_min, self._monotonic))
                for dcr in target.dcrs]
        return out

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SentinelPartition:
        journal = dead_journal = None
        store = self._dead_letters() if self._dead_letters is not None else None
        keyring = self._keyring or (store.keyring if store is not None else None)
        if self._journal_dir is not None:
            journal = Ledger(self._journal_dir, worker_index, self._retention, keyring=keyring)
        if store is not None and self._journal_dir is not None:
            # Its own file, apart from the dead-letter sink's file of the same worker.
            dead_journal = Ledger(self._journal_dir, f"s{worker_index}",
                                  self._retention, name=DEAD_LETTERED, keyring=keyring)
        name = f"undelivered-{socket.gethostname()}-{os.getpid()}-w{worker_index}"
        return _SentinelPartition(self.lanes(), self._cfg, self._sleep, self._monotonic,
                                  journal, store, dead_journal, name)
