"""The Logs Ingestion API, one request per call: through the official client, or a lean path.

``[sentinel] client`` picks how a request is sent:

- ``sdk`` (the default): ``azure.monitor.ingestion.LogsIngestionClient``, the official client.
- ``lean``: the official credential still acquires and refreshes the token
  (``get_token_info``/``get_token`` for the scope the SDK asks for), and the request is one
  POST on a pooled urllib3 connection (what the SDK's ``requests`` transport sits on).
  The SDK's pipeline (request id, headers, user agent, proxy, redirect, retry, bearer
  token, logging and tracing policies, the ``requests`` session and azure-core's request
  and response objects) costs ~0.65-0.9 ms of CPU per request on top of the POST itself,
  2-7% of the flow's CPU at ~600-1,000 rows per request (``bench/ingest_client.py``). In
  the flow the gain was within the machine's noise (+0.5-2% events per CPU-second), so the
  official client stays the default and ``lean`` is for a fleet that counts its CPU.

Both have the same semantics: one attempt per call (the client's own retry policy is
turned off, ``retry_total=0``: it retries only some statuses and never connection errors,
and its waits would be invisible; the sink retries instead, with metrics, jitter and a
deadline), the same request headers (the User-Agent names the lean path), timeouts, TLS
trust (``ca_file``, else ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi's
bundle), environment proxies (``HTTPS_PROXY``, ``NO_PROXY``) and the same mapping of every
failure to :class:`DeliveryError`.

Tokens on the lean path are renewed as the SDK's ``BearerTokenCredentialPolicy`` does
(at the credential's ``refresh_on``, else within 300 s of expiry, less up to 60 s of
jitter); a 401 from the service drops the token, takes a new one from the credential and
sends the request once more (the SDK drops it too, but sends again only for a claims
challenge). Redirects are not followed (the SDK follows a 307/308; the service sends none):
a 3xx is a refusal like any other status but 204.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import platform
import random
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.monitor.ingestion import LogsIngestionClient

from connectors.sentinel.config import Client, DcrConfig, SentinelConfig, TargetConfig
from connectors.sentinel.errors import DeliveryError
from dataflow.core.backoff import retry_after_secs

__all__ = ["SCOPE", "IngestionService", "make_credential", "retry_after_secs"]

SCOPE = "https://monitor.azure.com/.default"
"""The token scope ``LogsIngestionClient`` asks for (its configuration's ``credential_scopes``)."""
API_VERSION = "2023-01-01"
"""The Logs Ingestion API version ``LogsIngestionClient`` 1.1.0 sends."""
REFRESH_WINDOW_SECS = 300
"""A token this close to its expiry is renewed (azure-core's ``DEFAULT_REFRESH_WINDOW_SECONDS``)."""
MAX_REFRESH_JITTER_SECS = 60
"""Up to this much later, at random per token (azure-core's ``MAX_REFRESH_JITTER_SECONDS``)."""
_GZIP_MAGIC = b"\x1f\x8b"


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
                 ca_file: str | None = None, timeout_secs: float = 30.0,
                 client: Client = "sdk") -> None:
        self._rule_id = rule_id
        self.client = client
        self._lean: _LeanClient | None = None
        self._client: LogsIngestionClient | None = None
        if client == "lean":
            self._lean = _LeanClient(endpoint, rule_id, credential, ca_file=ca_file,
                                     timeout_secs=timeout_secs)
            return
        if client != "sdk":
            msg = f"client must be 'sdk' or 'lean', not {client!r}"
            raise ValueError(msg)
        kwargs: dict[str, Any] = {"retry_total": 0, "connection_timeout": timeout_secs,
                                  "read_timeout": timeout_secs}
        if ca_file:
            kwargs["connection_verify"] = ca_file
        self._client = LogsIngestionClient(endpoint, credential, **kwargs)

    @classmethod
    def from_config(cls, cfg: SentinelConfig, credential: Any = None) -> IngestionService:
        """The service of the single-DCR ``[sentinel]`` form."""
        return cls(cfg.endpoint, cfg.rule_id, credential or make_credential(cfg),
                   ca_file=cfg.ca_file, timeout_secs=cfg.timeout_secs, client=cfg.client)

    @classmethod
    def for_dcr(cls, settings: SentinelConfig, target: TargetConfig, dcr: DcrConfig,
                credential: Any) -> IngestionService:
        """The service of one DCR of a target."""
        return cls(dcr.endpoint or target.endpoint, dcr.id, credential,
                   ca_file=target.ca_file or settings.ca_file,
                   timeout_secs=settings.timeout_secs, client=settings.client)

    def send(self, stream: str, body: bytes, request_id: str | None = None) -> str:
        """POST one gzipped body; returns the client request id.

        :arg request_id: The ``x-ms-client-request-id`` to send: the caller passes the same
            one for every retry of a logical request (a new one when None).
        :raises DeliveryError: Classified as transient or terminal.
        """
        rid = request_id or str(uuid.uuid4())
        if self._lean is not None:
            self._lean.send(stream, body, rid)
            return rid
        assert self._client is not None
        with _azure_failures(rid):
            self._client.upload(self._rule_id, stream, io.BytesIO(body), request_id=rid)
        return rid

    def close(self) -> None:
        if self._lean is not None:
            self._lean.close()
        if self._client is not None:
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
                         retry_after=_retry_after(headers),
                         request_id=request_id,
                         service_request_id=headers.get("x-ms-request-id") or "",
                         correlation_id=headers.get("x-ms-correlation-request-id") or "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the service asked to wait, read as azure-core's retry policy reads them:
    ``Retry-After`` (seconds or an HTTP date), else ``retry-after-ms`` or
    ``x-ms-retry-after-ms`` (milliseconds)."""
    value = headers.get("Retry-After")
    if value:
        return retry_after_secs(value)
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value)) / 1000.0
            except ValueError:
                return None
    return None


def _odata_error(body: bytes) -> tuple[str | None, str | None] | None:
    """``(code, message)`` of a JSON error body (``{"error": {"code", "message"}}``), as
    azure-core's ``ODataV4Format`` reads it; None when the body is no such thing."""
    if not body:
        return None
    try:
        obj = json.loads(body.decode("utf-8-sig"))
        if "error" in obj:
            obj = obj["error"]
        code, message = obj.get("code"), obj.get("message")
    except Exception:  # noqa: BLE001 - azure-core ignores any body it cannot read alike
        return None
    if not (code or message):
        return None
    return code, message


def _refusal(resp: urllib3.BaseHTTPResponse, request_id: str) -> DeliveryError:
    """The :class:`DeliveryError` of an answer other than 204, as :func:`_classify` maps the
    SDK's ``HttpResponseError`` of the same answer."""
    headers = resp.headers
    status = resp.status
    error = _odata_error(resp.data)
    code = headers.get("x-ms-error-code") or (error[0] if error else "") or ""
    message = ((error[1] if error else None) or resp.reason
               or f"Operation returned an invalid status '{resp.reason}'")
    return DeliveryError(message, status=status, code=code,
                         transient=status in (408, 429) or status >= 500,
                         retry_after=_retry_after(headers), request_id=request_id,
                         service_request_id=headers.get("x-ms-request-id") or "",
                         correlation_id=headers.get("x-ms-correlation-request-id") or "")


@contextlib.contextmanager
def _azure_failures(request_id: str) -> Iterator[None]:
    """What the SDK (or the credential) raises, as the :class:`DeliveryError` the sink acts
    on: a refusal by its status, no response as a transient connection failure."""
    try:
        yield
    except HttpResponseError as ex:
        raise _classify(ex, request_id) from ex
    except (ServiceRequestError, ServiceResponseError) as ex:
        msg = f"no response: {ex}"
        raise DeliveryError(msg, status=None, code="connection", transient=True,
                            request_id=request_id) from ex


def _should_refresh(token: Any, jitter: int, now: float) -> bool:
    """azure-core's ``_should_refresh_token``: at ``refresh_on`` (plus jitter, never past
    expiry) when the credential gives one, else within the refresh window (less jitter)."""
    if token.expires_on <= now:
        return True
    refresh_on = getattr(token, "refresh_on", None)
    if refresh_on:
        return bool(min(refresh_on + jitter, token.expires_on) <= now)
    return bool(token.expires_on - now < REFRESH_WINDOW_SECS - jitter)


def _user_agent() -> str:
    from azure.monitor.ingestion._version import VERSION

    agent = (f"s3sentinel-lean azsdk-python-monitor-ingestion/{VERSION} "
             f"Python/{platform.python_version()} ({platform.platform()})")
    extra = os.environ.get("AZURE_HTTP_USER_AGENT")  # as azure-core's UserAgentPolicy
    return f"{agent} {extra}" if extra else agent


class _LeanClient:
    """One DCR's requests as single POSTs on pooled urllib3 connections, authorized with a
    token from the official credential (see the module's docstring for the semantics)."""

    def __init__(self, endpoint: str, rule_id: str, credential: Any, *,
                 ca_file: str | None, timeout_secs: float) -> None:
        from requests.utils import DEFAULT_CA_BUNDLE_PATH, get_environ_proxies, select_proxy

        base = endpoint.rstrip("/")
        self._https = base.lower().startswith("https")
        self._credential = credential
        self._token: Any = None  # AccessToken or AccessTokenInfo
        self._jitter = 0
        self._lock = threading.Lock()
        self._prefix = (urllib.parse.urlsplit(base).path + "/dataCollectionRules/"
                        + urllib.parse.quote(rule_id, safe="") + "/streams/")
        self._paths: dict[str, str] = {}
        self._static = {"Content-Type": "application/json", "Accept": "application/json",
                        "User-Agent": _user_agent()}
        self._timeout = urllib3.Timeout(connect=timeout_secs, read=timeout_secs)
        # Trust and proxies as the SDK's requests session (trust_env) settles them.
        verify = (ca_file or os.environ.get("REQUESTS_CA_BUNDLE")
                  or os.environ.get("CURL_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH)
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED",
                               ("ca_cert_dir" if os.path.isdir(verify) else "ca_certs"): verify}
        proxy = select_proxy(base, get_environ_proxies(base)) if self._https else None
        manager: urllib3.PoolManager
        if proxy:
            if not proxy.lower().startswith(("http://", "https://")):
                msg = (f"proxy {proxy!r}: the lean client speaks to HTTP(S) proxies only; use "
                       "[sentinel] client = \"sdk\"")
                raise ValueError(msg)
            auth = urllib3.util.parse_url(proxy).auth
            proxy_headers = (urllib3.util.make_headers(proxy_basic_auth=urllib.parse.unquote(auth))
                             if auth else None)
            manager = urllib3.ProxyManager(proxy, proxy_headers=proxy_headers, num_pools=1,
                                           maxsize=10, **tls)
        else:
            manager = urllib3.PoolManager(num_pools=1, maxsize=10, **tls)
        self._manager = manager
        self._pool = manager.connection_from_url(base) if self._https else None

    def send(self, stream: str, body: bytes, request_id: str) -> None:
        path = self._paths.get(stream)
        if path is None:
            path = self._paths[stream] = (self._prefix + urllib.parse.quote(stream, safe="")
                                          + f"?api-version={API_VERSION}")
        headers = {**self._static, "x-ms-client-request-id": request_id}
        if body[:2] == _GZIP_MAGIC:  # as the SDK's upload() sniffs a stream
            headers["Content-Encoding"] = "gzip"
        token = self._authorize(headers, request_id)
        resp = self._post(path, body, headers, request_id)
        if resp.status == 401:
            # The token was refused: drop it, take a new one, and send once more.
            self._forget(token)
            self._authorize(headers, request_id)
            resp = self._post(path, body, headers, request_id)
        if resp.status != 204:
            raise _refusal(resp, request_id)

    def _authorize(self, headers: dict[str, str], request_id: str) -> str:
        """Put a bearer token on ``headers`` (a new one when due) and return it; credential
        failures map as the SDK's do."""
        with _azure_failures(request_id):
            if not self._https:
                msg = ("Bearer token authentication is not permitted for non-TLS protected "
                       "(non-https) URLs.")
                raise ServiceRequestError(msg)
            token = self._bearer()
        headers["Authorization"] = f"Bearer {token}"
        return token

    def _bearer(self) -> str:
        token = self._token
        if token is None or _should_refresh(token, self._jitter, time.time()):
            with self._lock:  # one refresh, should several threads send at once
                token = self._token
                if token is None or _should_refresh(token, self._jitter, time.time()):
                    get_info = getattr(self._credential, "get_token_info", None)
                    token = get_info(SCOPE) if get_info else self._credential.get_token(SCOPE)
                    self._token = token
                    self._jitter = random.randint(0, MAX_REFRESH_JITTER_SECS)
        return str(token.token)

    def _forget(self, token: str) -> None:
        with self._lock:
            if self._token is not None and self._token.token == token:
                self._token = None

    def _post(self, path: str, body: bytes, headers: dict[str, str],
              request_id: str) -> urllib3.BaseHTTPResponse:
        assert self._pool is not None
        try:
            return self._pool.urlopen("POST", path, body=body, headers=headers, retries=False,
                                      redirect=False, timeout=self._timeout,
                                      preload_content=True, release_conn=True)
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as ex:
            msg = f"no response: {type(ex).__name__}: {ex}"
            raise DeliveryError(msg, status=None, code="connection",
                                transient=True, request_id=request_id) from ex

    def close(self) -> None:
        self._manager.clear()
