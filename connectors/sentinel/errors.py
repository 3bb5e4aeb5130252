"""Delivery errors, split into transient (retry) and terminal (stop, or dead-letter later)."""

from __future__ import annotations

from dataflow.core.errors import S3SentinelError

__all__ = ["DeliveryError", "DeliveryFailed"]

_HINTS = {
    400: "the service rejected the body; check that the rows match the DCR's stream declaration",
    401: "the token was refused; check the credential (managed identity, service principal)",
    403: ("the credential is not allowed to ingest; grant it the 'Monitoring Metrics Publisher' "
          "role on the data collection rule"),
    404: "unknown rule or stream; check sentinel.rule_id (the DCR's immutable id) and the "
         "table's stream name against the DCR's streamDeclarations",
    413: "the request is larger than the service accepts (1 MiB)",
}


class DeliveryError(S3SentinelError):
    """One request to the Logs Ingestion API failed.

    :arg status: HTTP status, or None when no response came (connection, credential).
    :arg code: The service's error code (``x-ms-error-code`` or the JSON error body).
    :arg transient: Whether the same request may succeed later (429, 5xx, network).
    :arg retry_after: Seconds the service asked to wait (``Retry-After``, as seconds or as
        an HTTP date).
    :arg request_id: The ``x-ms-client-request-id`` sent: one per logical request, the same
        for all its retries; ``DCRLogErrors`` reports schema errors under it.
    :arg service_request_id: The service's ``x-ms-request-id`` for this attempt ("" when no
        response came).
    :arg correlation_id: The service's ``x-ms-correlation-request-id``, when it sent one.
    """

    def __init__(self, message: str, *, status: int | None, code: str = "",
                 transient: bool, retry_after: float | None = None, request_id: str = "",
                 service_request_id: str = "", correlation_id: str = "") -> None:
        self.message = message
        self.status = status
        self.code = code
        self.transient = transient
        self.retry_after = retry_after
        self.request_id = request_id
        self.service_request_id = service_request_id
        self.correlation_id = correlation_id
        hint = _HINTS.get(status or 0, "")
        text = f"HTTP {status or '-'} {code}: {message}".strip()
        ids = f"client request id {request_id}"
        if service_request_id:
            ids += f", service request id {service_request_id}"
        if correlation_id:
            ids += f", correlation id {correlation_id}"
        super().__init__(f"{text} ({ids}){'; ' + hint if hint else ''}")

    @property
    def too_large(self) -> bool:
        return self.status == 413


class DeliveryFailed(RuntimeError):
    """A batch could not be delivered; the flow stops rather than lose it."""
