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
    :arg retry_after: Seconds the service asked to wait (429 ``Retry-After``).
    """

    def __init__(self, message: str, *, status: int | None, code: str = "",
                 transient: bool, retry_after: float | None = None, request_id: str = "") -> None:
        self.message = message
        self.status = status
        self.code = code
        self.transient = transient
        self.retry_after = retry_after
        self.request_id = request_id
        hint = _HINTS.get(status or 0, "")
        text = f"HTTP {status or '-'} {code}: {message}".strip()
        super().__init__(f"{text} (request id {request_id}){'; ' + hint if hint else ''}")


    @property
    def too_large(self) -> bool:
        return self.status == 413


class DeliveryFailed(RuntimeError):
    """A batch could not be delivered; the flow stops rather than lose it."""
