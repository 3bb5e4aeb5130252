"""Readiness: can this process do its job right now, and if not, which part fails and why.

Checks: every source bucket answers (``HeadBucket``), an Azure token can be obtained and
the data collection rule's stream answers (an empty upload), the oldest undelivered object
is younger than ``ops.max_lag_secs``, and no partition with work in hand has been stuck
for ``ops.stuck_secs``. Checks that call S3 or Azure are cached for ``check_cache_secs``,
so a scraper polling ``/readyz`` does not turn into load.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dataflow import metrics
from dataflow.config import Config
from ops import status

__all__ = ["Check", "Readiness"]


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


class Readiness:
    """Runs the checks of one process.

    :arg s3_factory: Builds the S3 client.
    :arg service_factory: Builds the Logs Ingestion service client (``send(stream, body)``).
    """

    def __init__(self, cfg: Config, s3_factory: Callable[[], Any],
                 service_factory: Callable[[], Any], streams: list[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._s3_factory = s3_factory
        self._service_factory = service_factory
        self._streams = streams
        self._clock = clock
        self._cache: dict[str, tuple[float, Check]] = {}
        self._lock = threading.Lock()

    def run(self) -> dict[str, Check]:
        """Every check, by name."""
        out = {"s3": self._cached("s3", self._s3), "sentinel": self._cached("sentinel", self._sentinel)}
        out["lag"] = self._lag()
        out["partitions"] = self._partitions()
        return out

    def _cached(self, name: str, fn: Callable[[], Check]) -> Check:
        with self._lock:
            hit = self._cache.get(name)
            now = self._clock()
            if hit is not None and now - hit[0] < self._cfg.ops.check_cache_secs:
                return hit[1]
        try:
            result = fn()
        except Exception as ex:  # a check must report, never raise
            result = Check(False, f"{type(ex).__name__}: {(str(ex).splitlines() or [''])[0]}")
        with self._lock:
            self._cache[name] = (self._clock(), result)
        return result

    def _s3(self) -> Check:
        s3 = self._s3_factory()
        for bucket in sorted({s.bucket for s in self._cfg.sources}):
            try:
                s3.head_bucket(Bucket=bucket)
            except Exception as ex:
                return Check(False, f"s3://{bucket}: {(str(ex).splitlines() or [''])[0]}; check "
                                    "the bucket name, region, network and s3:ListBucket")
        return Check(True, f"{len({s.bucket for s in self._cfg.sources})} bucket(s) answer")

    def _sentinel(self) -> Check:
        from connectors.sentinel.errors import DeliveryError

        service = self._service_factory()
        try:
            for stream in self._streams[:1]:
                service.send(stream, _EMPTY)
        except DeliveryError as ex:
            return Check(False, str(ex))
        finally:
            service.close()
        return Check(True, "token obtained; stream answers")

    def _lag(self) -> Check:
        worst, source = 0.0, ""
        for metric in metrics.OLDEST_UNDELIVERED_SECONDS.collect():
            for s in metric.samples:
                if s.value > worst:
                    worst, source = s.value, s.labels.get("source", "")
        limit = self._cfg.ops.max_lag_secs
        if worst > limit:
            return Check(False, f"source {source}: oldest undelivered object is {worst:.0f}s old "
                                f"(limit {limit:.0f}s)")
        return Check(True, f"oldest undelivered {worst:.0f}s")

    def _partitions(self) -> Check:
        now = time.time()
        limit = self._cfg.ops.stuck_secs
        stuck = [f"{name} (no progress for {now - p['last_progress']:.0f}s at "
                 f"{p.get('object') or 'listing'})"
                 for name, p in status.partitions().items()
                 if p.get("busy") and not p.get("paused") and now - p["last_progress"] > limit]
        if stuck:
            return Check(False, "stuck: " + ", ".join(sorted(stuck)))
        return Check(True, f"{len(status.partitions())} partition(s) moving")


def _gzip_empty() -> bytes:
    import gzip

    return gzip.compress(b"[]")


_EMPTY = _gzip_empty()
