"""A failure is one call: counted, logged, and carried to the dead-letter store.

Every place that gives up on a record or an object calls :func:`failed`, so none can count
without logging or log without counting (Vector's internal events do the same with one
``emit``), and every failure shows in ``s3sentinel_component_errors_total`` with the same
source, stage and code as its dead-letter entry.
"""

from __future__ import annotations

import logging

from dataflow.core import metrics
from dataflow.core.messages import ErrorRecord, ObjectRef

__all__ = ["failed"]

log = logging.getLogger("s3sentinel.failures")


def failed(obj: ObjectRef, offset: int | None, stage: str, reason: str, code: str,
           data: bytes = b"", header: tuple[bytes, ...] = (), *,
           level: int = logging.DEBUG) -> ErrorRecord:
    """Count and log one failure, and return its error record.

    :arg stage: ``read``, ``parse`` or ``map`` (delivery failures are the sink's).
    :arg level: Log level of the line; record-level failures are many (DEBUG by default),
        object-level ones are worth an ERROR.
    """
    metrics.ERRORS.labels(obj.source, stage, code).inc()
    if log.isEnabledFor(level):
        where = "" if offset is None else f" record {offset}"
        log.log(level, "%s%s: %s: %s", obj.uri, where, code, reason)
    return ErrorRecord(obj, offset, stage, reason, data, header, code)
