"""Readiness: can this process do its job right now, and if not, which part fails and why.

Checks: every source bucket answers (``HeadBucket``, with the client of that source, so a
bucket read through an assumed role is checked through that role), an Azure token can be
obtained and the data collection rule's stream answers (an empty upload), the oldest
undelivered object is younger than ``ops.max_lag_secs``, and no partition with work in
hand has been stuck for ``ops.stuck_secs``.

Checks that call S3 or Azure are cached for ``check_cache_secs``, and run once however
many callers ask at the same time: callers that arrive while a check is running wait for
that run's result. Their clients are built once and reused, so a scraper polling
``/readyz`` does not turn into load (nor into new credentials per call).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from connectors.ops.config import OpsConfig
from connectors.s3.config import SourceConfig
from connectors.sentinel.errors import DeliveryError
from dataflow.core import metrics, status

__all__ = ["Check", "Readiness"]

_EMPTY = gzip.compress(b"[]")


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


class Readiness:
    """Runs the checks of one process.

    :arg client_for: Returns the client of a source for a service (``client_for(src,
        "s3")``): the one the source reads with (its ``role_arn``/``external_id``).
    :arg service_factory: Builds the Logs Ingestion service client (``send(stream, body)``);
        called once, and again only after the check failed with an unexpected error.
    """

    def __init__(self, ops: OpsConfig, sources: Sequence[SourceConfig],
                 client_for: Callable[[SourceConfig, str], Any],
                 service_factory: Callable[[], Any], streams: list[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ops = ops
        self._sources = tuple(sources)
        self._client_for = client_for
        self._service_factory = service_factory
        self._streams = streams
        self._clock = clock
        self._cache: dict[str, tuple[float, Check]] = {}
        self._in_flight: dict[str, Future[Check]] = {}
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._service: Any = None

    def run(self) -> dict[str, Check]:
        """Every check, by name."""
        out = {"s3": self._cached("s3", self._s3),
               "sentinel": self._cached("sentinel", self._sentinel)}
        out["lag"] = self._lag()
        out["partitions"] = self._partitions()
        return out

    def _cached(self, name: str, fn: Callable[[], Check]) -> Check:
        with self._lock:
            hit = self._cache.get(name)
            if hit is not None and self._clock() - hit[0] < self._ops.check_cache_secs:
                return hit[1]
            running = self._in_flight.get(name)
            if running is None:
                running = self._in_flight[name] = Future()
                owner = True
            else:
                owner = False
        if not owner:
            return running.result()
        result = Check(False, "the check was interrupted")
        try:
            result = fn()
        except Exception as ex:  # a check must report, never raise
            result = Check(False, f"{type(ex).__name__}: {_first_line(ex)}")
        finally:  # waiters always get an answer
            with self._lock:
                self._cache[name] = (self._clock(), result)
                del self._in_flight[name]
            running.set_result(result)
        return result

    def _s3(self) -> Check:
        # One HeadBucket per bucket and identity: the same bucket read through two roles is
        # checked through both.
        seen: dict[tuple[str, str, str], SourceConfig] = {}
        for src in self._sources:
            seen.setdefault((src.bucket, src.role_arn, src.external_id), src)
        for (bucket, role, _), src in sorted(seen.items(), key=lambda kv: kv[0]):
            try:
                self._s3_client(src).head_bucket(Bucket=bucket)
            except Exception as ex:
                via = f" as {role}" if role else ""
                return Check(False, f"s3://{bucket}{via} (source {src.name}): {_first_line(ex)}; "
                                    "check the bucket name, region, network, s3:ListBucket"
                                    + (" and the role's trust policy" if role else ""))
        buckets = len({b for b, _, _ in seen})
        return Check(True, f"{buckets} bucket(s) answer")

    def _s3_client(self, src: SourceConfig) -> Any:
        client = self._clients.get(src.name)
        if client is None:
            client = self._clients[src.name] = self._client_for(src, "s3")
        return client

    def _sentinel(self) -> Check:

        if self._service is None:
            self._service = self._service_factory()
        try:
            for stream in self._streams[:1]:
                self._service.send(stream, _EMPTY)
        except DeliveryError as ex:
            return Check(False, str(ex))
        except Exception:
            service, self._service = self._service, None  # built again on the next run
            service.close()
            raise
        return Check(True, "token obtained; stream answers")

    def _lag(self) -> Check:
        worst, source = 0.0, ""
        for metric in metrics.OLDEST_UNDELIVERED_SECONDS.collect():
            for s in metric.samples:
                if s.value > worst:
                    worst, source = s.value, s.labels.get("source", "")
        limit = self._ops.max_lag_secs
        if worst > limit:
            return Check(False, f"source {source}: oldest undelivered object is {worst:.0f}s old "
                                f"(limit {limit:.0f}s)")
        return Check(True, f"oldest undelivered {worst:.0f}s")

    def _partitions(self) -> Check:
        now = time.time()
        limit = self._ops.stuck_secs
        stuck = [f"{name} (no progress for {now - p['last_progress']:.0f}s at "
                 f"{p.get('object') or 'listing'})"
                 for name, p in status.partitions().items()
                 if p.get("busy") and not p.get("paused") and now - p["last_progress"] > limit]
        if stuck:
            return Check(False, "stuck: " + ", ".join(sorted(stuck)))
        return Check(True, f"{len(status.partitions())} partition(s) moving")


def _first_line(ex: BaseException) -> str:
    return (str(ex).splitlines() or [""])[0]
