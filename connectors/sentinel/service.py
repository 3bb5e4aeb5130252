"""The Logs Ingestion API, through the official client, one request per call.

The client's own retry policy is turned off (``retry_total=0``): it retries only
some statuses and never connection errors, and its waits would be invisible. The
sink retries instead, with metrics, jitter and a deadline.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Mapping
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.monitor.ingestion import LogsIngestionClient

from connectors.sentinel.config import SentinelConfig
from connectors.sentinel.errors import DeliveryError
from dataflow.core.backoff import retry_after_secs

__all__ = ["IngestionService", "make_credential", "retry_after_secs"]


def make_credential(cfg: SentinelConfig) -> Any:
    """The Azure credential named by the config."""
    if cfg.credential == "managed_identity":
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


class IngestionService:
    """Sends pre-encoded (gzipped JSON array) bodies to one data collection rule."""

    def __init__(self, cfg: SentinelConfig, credential: Any = None) -> None:
        self._rule_id = cfg.rule_id
        kwargs: dict[str, Any] = {"retry_total": 0, "connection_timeout": cfg.timeout_secs,
                                  "read_timeout": cfg.timeout_secs}
        if cfg.ca_file:
            kwargs["connection_verify"] = cfg.ca_file
        self._client = LogsIngestionClient(cfg.endpoint, credential or make_credential(cfg),
                                           **kwargs)

    def send(self, stream: str, body: bytes, request_id: str | None = None) -> str:
        """POST one gzipped body; returns the client request id.

        :arg request_id: The ``x-ms-client-request-id`` to send: the caller passes the same
            one for every retry of a logical request (a new one when None).
        :raises DeliveryError: Classified as transient or terminal.
        """
        rid = request_id or str(uuid.uuid4())
        try:
            self._client.upload(self._rule_id, stream, io.BytesIO(body), request_id=rid)
        except HttpResponseError as ex:
            raise _classify(ex, rid) from ex
        except (ServiceRequestError, ServiceResponseError) as ex:
            msg = f"no response: {ex}"
            raise DeliveryError(msg, status=None, code="connection",
                                transient=True, request_id=rid) from ex
        return rid

    def close(self) -> None:
        self._client.close()


def _classify(ex: HttpResponseError, request_id: str) -> DeliveryError:
    status = ex.status_code
    if status is None:  # the credential failed before any request was sent
        kind = "credential" if isinstance(ex, ClientAuthenticationError) else "no_response"
        return DeliveryError(str(ex.message or ex), status=None, code=kind, transient=True,
                             request_id=request_id)
    headers: Mapping[str, str] = {}
    if ex.response is not None:
        # azure-core types the response with a protocol that leaves out `headers`, which every
        # response the client raises with (azure.core.rest / pipeline.transport) has.
        headers = ex.response.headers  # type: ignore[attr-defined]  # protocol omits headers
    code = headers.get("x-ms-error-code") or (ex.error.code if ex.error else "") or ""
    transient = status in (408, 429) or status >= 500
    message = (ex.error.message if ex.error else None) or ex.reason or str(ex)
    return DeliveryError(message, status=status, code=code, transient=transient,
                         retry_after=retry_after_secs(headers.get("Retry-After")),
                         request_id=request_id,
                         service_request_id=headers.get("x-ms-request-id") or "",
                         correlation_id=headers.get("x-ms-correlation-request-id") or "")
