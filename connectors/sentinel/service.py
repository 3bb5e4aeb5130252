"""The Logs Ingestion API, through the official client, one request per call.

The client's own retry policy is turned off (``retry_total=0``): it retries only
some statuses and never connection errors, and its waits would be invisible. The
sink retries instead, with metrics, jitter and a deadline.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.monitor.ingestion import LogsIngestionClient

from connectors.sentinel.config import DcrConfig, SentinelConfig, TargetConfig
from connectors.sentinel.errors import DeliveryError
from dataflow.core.backoff import retry_after_secs

__all__ = ["IngestionService", "make_credential", "retry_after_secs"]


def make_credential(target: TargetConfig | SentinelConfig,
                    secret: Callable[[str], str] | None = None) -> Any:
    """The Azure credential a target (or the single-DCR ``[sentinel]`` section) names.

    :arg secret: Resolves a ``keyvault:`` reference (a service principal's secret).
    """
    import azure.identity as ai

    kind = target.credential
    client_id = getattr(target, "client_id", "") or None
    if kind == "managed_identity":
        return ai.ManagedIdentityCredential(client_id=client_id)
    if isinstance(target, TargetConfig) and kind == "workload_identity":
        return ai.WorkloadIdentityCredential(
            tenant_id=target.tenant_id, client_id=target.client_id,
            token_file_path=target.token_file or os.environ.get("AZURE_FEDERATED_TOKEN_FILE"))
    if isinstance(target, TargetConfig) and kind == "service_principal":
        if secret is None:
            msg = f"target {target.name!r}: a service principal needs its Key Vault secret resolved"
            raise ValueError(msg)
        return ai.ClientSecretCredential(target.tenant_id, target.client_id,
                                         secret(target.client_secret))
    return ai.DefaultAzureCredential(managed_identity_client_id=client_id)


class IngestionService:
    """Sends pre-encoded (gzipped JSON array) bodies to one data collection rule.

    :arg endpoint: The rule's logs ingestion endpoint (its own, or a DCE's).
    :arg rule_id: The rule's immutable id.
    :arg credential: An Azure token credential (shared by a target's rules).
    """

    def __init__(self, endpoint: str, rule_id: str, credential: Any, *,
                 ca_file: str | None = None, timeout_secs: float = 30.0) -> None:
        self._rule_id = rule_id
        kwargs: dict[str, Any] = {"retry_total": 0, "connection_timeout": timeout_secs,
                                  "read_timeout": timeout_secs}
        if ca_file:
            kwargs["connection_verify"] = ca_file
        self._client = LogsIngestionClient(endpoint, credential, **kwargs)

    @classmethod
    def from_config(cls, cfg: SentinelConfig, credential: Any = None) -> IngestionService:
        """The service of the single-DCR ``[sentinel]`` form."""
        return cls(cfg.endpoint, cfg.rule_id, credential or make_credential(cfg),
                   ca_file=cfg.ca_file, timeout_secs=cfg.timeout_secs)

    @classmethod
    def for_dcr(cls, settings: SentinelConfig, target: TargetConfig, dcr: DcrConfig,
                credential: Any) -> IngestionService:
        """The service of one DCR of a target."""
        return cls(dcr.endpoint or target.endpoint, dcr.id, credential,
                   ca_file=target.ca_file or settings.ca_file,
                   timeout_secs=settings.timeout_secs)

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
    url = str(getattr(getattr(ex.response, "request", None), "url", "") or "")
    if status is None or (isinstance(ex, ClientAuthenticationError)
                          and "/dataCollectionRules/" not in url):
        # The credential failed before any request was sent (its token endpoint answered,
        # e.g. Entra's AADSTS70021 with a 400: that is no verdict on the rows).
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
