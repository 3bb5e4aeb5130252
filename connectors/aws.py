"""AWS clients built from the config.

Credentials come from boto3's default chain (keys, a profile, EKS IAM roles for service
accounts, an instance role), or, with ``[aws] web_identity_role_arn``, keyless from Azure:
an Entra token for ``web_identity_audience`` (managed identity or workload identity)
exchanged with STS ``AssumeRoleWithWebIdentity`` (:class:`EntraWebIdentity`). A source's
``role_arn`` is assumed from whichever of the two is the base.
"""

from __future__ import annotations

import email.utils
import functools
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore import UNSIGNED
from botocore.config import Config as BotoConfig
from botocore.credentials import (
    AssumeRoleCredentialFetcher,
    DeferredRefreshableCredentials,
    RefreshableCredentials,
)
from botocore.exceptions import ClientError
from botocore.utils import parse_timestamp

from connectors.s3.config import SourceConfig

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "WEB_IDENTITY_AUDIENCE",
    "AwsConfig",
    "EntraCredential",
    "EntraWebIdentity",
    "client_for",
    "entra_credential",
    "refresh_windows",
    "s3_client",
    "sqs_client",
    "web_identity",
]

log = logging.getLogger(__name__)

WEB_IDENTITY_AUDIENCE = "api://AzureADTokenExchange"
"""Default audience of the Entra token given to STS (the ``aud`` the role trusts)."""

EntraCredential = Literal["default", "managed_identity", "workload_identity"]

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
_ADVISORY_SECS = 15 * 60  # botocore's refresh windows for sessions of an hour or more
_MANDATORY_SECS = 10 * 60


@dataclass(frozen=True)
class AwsConfig:
    """How to reach S3 (and SQS), and with which credentials."""

    region: str = "us-east-1"
    """Default AWS region for clients."""
    endpoint_url: str | None = None
    """Custom S3/SQS/STS endpoint (a local stack, or a VPC endpoint); None uses AWS's."""
    max_pool_connections: int = 16
    """HTTP connections per S3 client; at least fetch_threads."""
    web_identity_role_arn: str = ""
    """IAM role assumed with an Entra token (STS AssumeRoleWithWebIdentity): keyless access
    when the connector runs in Azure. Empty: boto3's default credential chain."""
    web_identity_audience: str = WEB_IDENTITY_AUDIENCE
    """Audience of the Entra token: the ``aud`` the role's IAM OIDC provider lists."""
    web_identity_credential: EntraCredential = "default"
    """Which Entra identity gets the token: ``managed_identity`` (VM, App Service, ...; a
    user-assigned one by ``web_identity_client_id``), ``workload_identity`` (AKS: the
    federated token file, tenant and client from the environment the webhook sets) or
    ``default`` (DefaultAzureCredential: either)."""
    web_identity_client_id: str = ""
    """Client id of the user-assigned managed identity or the workload identity's app;
    empty: the system-assigned identity, or ``$AZURE_CLIENT_ID``."""
    session_name: str = "s3sentinel"
    """RoleSessionName of the STS sessions (web identity and source roles): CloudTrail
    names the connector's calls by it."""
    session_duration_secs: int = 3600
    """Lifetime of web identity credentials (900..43200 and at most the role's maximum
    session duration); refreshed a quarter of it (at most 15 min) before they expire."""

    def validate(self, problems: list[str], where: str = "aws") -> None:
        """Append what is wrong with this section to ``problems``."""
        if self.endpoint_url and not self.endpoint_url.startswith(("https://", "http://")):
            problems.append(f"{where}.endpoint_url: must be an http(s):// URL")
        if self.max_pool_connections < 1:
            problems.append(f"{where}.max_pool_connections: must be at least 1")
        if not _SESSION_NAME.match(self.session_name):
            problems.append(f"{where}.session_name: {self.session_name!r} is not a role session "
                            "name (2-64 of letters, digits and +=,.@_-)")
        if not self.web_identity_role_arn:
            used = [k for k, default in (("web_identity_audience", WEB_IDENTITY_AUDIENCE),
                                         ("web_identity_credential", "default"),
                                         ("web_identity_client_id", ""),
                                         ("session_duration_secs", 3600))
                    if getattr(self, k) != default]
            for key in used:
                problems.append(f"{where}.{key}: only used with {where}.web_identity_role_arn "
                                "(the role the Entra token is exchanged for)")
            return
        if not _ROLE_ARN.match(self.web_identity_role_arn):
            problems.append(f"{where}.web_identity_role_arn: {self.web_identity_role_arn!r} is "
                            "not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
        audience = self.web_identity_audience
        if not audience or audience != audience.strip() or " " in audience:
            problems.append(f"{where}.web_identity_audience: {audience!r} is not an audience (the "
                            f"application ID URI the role trusts, e.g. {WEB_IDENTITY_AUDIENCE})")
        if self.web_identity_client_id and not _GUID.match(self.web_identity_client_id):
            problems.append(f"{where}.web_identity_client_id: {self.web_identity_client_id!r} is "
                            "not a client id (a GUID: the identity's clientId)")
        if not 900 <= self.session_duration_secs <= 43200:
            problems.append(f"{where}.session_duration_secs: must be 900..43200 (STS limits; and "
                            "at most the role's maximum session duration)")


def refresh_windows(duration_secs: float) -> tuple[float, float]:
    """(advisory, mandatory) seconds before expiry at which credentials of ``duration_secs``
    are refreshed: botocore's 15 and 10 minutes, or a quarter and a sixth of a shorter
    session (the defaults would refresh a 15-minute session on every request)."""
    return min(_ADVISORY_SECS, duration_secs / 4), min(_MANDATORY_SECS, duration_secs / 6)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class EntraWebIdentity:
    """AWS credentials from an Entra token: the token for ``aws.web_identity_audience``
    goes to STS ``AssumeRoleWithWebIdentity`` for ``aws.web_identity_role_arn``.

    :attr:`credentials` are botocore's refreshable credentials: nothing is fetched until
    the first request signs with them; then they are refreshed (a new token, a new
    exchange) within :func:`refresh_windows` of their expiry, by one thread while the
    others go on with the current ones (a failed refresh there is logged and tried again
    on the next request; from the mandatory window on, it is raised to the request).

    :arg entra: The Entra credential (``get_token(scope)``), e.g. :func:`entra_credential`.
    :arg clock: Now, as an aware datetime (tests move it).
    """

    METHOD = "assume-role-with-web-identity"

    def __init__(self, aws: AwsConfig, entra: TokenCredential, *,
                 clock: Callable[[], datetime] = _utcnow) -> None:
        self._aws = aws
        self._entra = entra
        self.scope = aws.web_identity_audience.rstrip("/") + "/.default"
        """The Entra scope asked for (a managed identity asks for the audience as resource)."""
        # The exchange is authenticated by the token alone: an unsigned client, which never
        # looks for AWS credentials of its own.
        self._sts = boto3.session.Session().client(
            "sts", region_name=aws.region, endpoint_url=aws.endpoint_url,
            config=BotoConfig(signature_version=UNSIGNED,
                              retries={"mode": "standard", "max_attempts": 3}))
        advisory, mandatory = refresh_windows(aws.session_duration_secs)
        # Born expired, so the first request fetches (botocore's deferred credentials, with
        # refresh windows fitted to the session's length).
        self.credentials = RefreshableCredentials(
            access_key="", secret_key="", token="", expiry_time=datetime.fromtimestamp(0, UTC),
            refresh_using=self._exchange, method=self.METHOD, time_fetcher=clock,
            advisory_timeout=advisory, mandatory_timeout=mandatory)

    def _exchange(self) -> dict[str, Any]:
        """One Entra token, one AssumeRoleWithWebIdentity: the next credentials."""
        aws = self._aws
        token = self._entra.get_token(self.scope).token
        try:
            out = self._sts.assume_role_with_web_identity(
                RoleArn=aws.web_identity_role_arn, RoleSessionName=aws.session_name,
                WebIdentityToken=token, DurationSeconds=aws.session_duration_secs)
        except ClientError as ex:
            raise _with_trust_hint(ex, aws) from ex
        creds = out["Credentials"]
        log.info("aws: assumed %s with an Entra token for %s; credentials expire at %s",
                 aws.web_identity_role_arn, aws.web_identity_audience,
                 creds["Expiration"].isoformat())
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}


def _with_trust_hint(ex: Any, aws: AwsConfig) -> Any:
    """``ex`` (a ClientError of the exchange), its message saying what to check."""
    error = ex.response.get("Error", {})
    code = str(error.get("Code", ""))
    hint = ""
    if code in ("AccessDenied", "InvalidIdentityToken", "IDPRejectedClaim"):
        hint = (f" (aws.web_identity_role_arn: the role's trust policy must allow "
                f"sts:AssumeRoleWithWebIdentity to the IAM OIDC provider of the token's issuer, "
                f"login.microsoftonline.com/<tenant-id>/v2.0 or sts.windows.net/<tenant-id>/ "
                f"by the token's version, for the token's aud (asked for as "
                f"{aws.web_identity_audience!r}) and sub = the identity's object id)")
    elif code == "ValidationError":
        hint = " (aws.session_duration_secs: at most the role's maximum session duration)"
    response = {**ex.response, "Error": {**error, "Message": f"{error.get('Message', '')}{hint}"}}
    return ClientError(response, ex.operation_name)


def entra_credential(aws: AwsConfig) -> TokenCredential:
    """The azure-identity credential ``aws.web_identity_credential`` names."""
    import azure.identity as ai  # only a keyless config pays for importing it

    client_id = aws.web_identity_client_id or None
    if aws.web_identity_credential == "managed_identity":
        return ai.ManagedIdentityCredential(client_id=client_id)
    if aws.web_identity_credential == "workload_identity":
        return ai.WorkloadIdentityCredential(client_id=client_id)
    return ai.DefaultAzureCredential(managed_identity_client_id=client_id,
                                     workload_identity_client_id=client_id)


_web_identity_lock = threading.Lock()


def web_identity(aws: AwsConfig) -> EntraWebIdentity:
    """The one web identity session of a process for ``aws``: every client and every source
    role of the process signs with (or is assumed from) it, one exchange per refresh."""
    with _web_identity_lock:  # workers may build their partitions' clients at once
        return _web_identity(aws)


@functools.lru_cache(maxsize=8)
def _web_identity(aws: AwsConfig) -> EntraWebIdentity:
    return EntraWebIdentity(aws, entra_credential(aws))


def fast_timestamp(value: Any) -> datetime:
    """botocore's response timestamp parser (``botocore.utils.parse_timestamp``), without
    dateutil for the two forms S3 sends: ISO 8601 in UTC in listings
    (``2026-11-28T10:00:00.000Z``, every key's LastModified) and RFC 7231 in headers
    (``Sat, 28 Nov 2026 10:00:00 GMT``, each GET's). dateutil took ~40 µs a timestamp, as
    much CPU as the rest of a listed key, paid by every partition at every listing; these
    take 0.1-5 µs. The same instants, as aware UTC datetimes; anything else (epoch
    numbers, other forms) goes to botocore's parser."""
    if value.__class__ is str:
        if value[-1:] == "Z" and "T" in value:
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        elif value[-4:] == " GMT":
            try:
                return email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                pass
    parsed: datetime = parse_timestamp(value)
    return parsed


def _session(aws: AwsConfig, role_arn: str = "", external_id: str = "") -> Any:
    """A boto3 session: the default credential chain or the web identity, and a role
    assumed from that base when ``role_arn`` is set.

    With ``role_arn``, credentials come from STS AssumeRole (with ``external_id`` when
    set) and are refreshed before they expire, so one deployment reads many accounts.
    """
    session = boto3.session.Session()
    core = session._session  # the botocore session behind boto3's
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=fast_timestamp)
    base = web_identity(aws).credentials if aws.web_identity_role_arn else None
    if base is not None:
        core._credentials = base
    if not role_arn:
        return session

    def sts_client(service: str, **kwargs: Any) -> Any:
        return core.create_client(service, region_name=aws.region,
                                  endpoint_url=aws.endpoint_url, **kwargs)

    extra: dict[str, Any] = {"RoleSessionName": aws.session_name}
    if external_id:
        extra["ExternalId"] = external_id
    fetcher = AssumeRoleCredentialFetcher(sts_client, base or core.get_credentials(), role_arn,
                                          extra_args=extra)
    core._credentials = DeferredRefreshableCredentials(
        method="assume-role", refresh_using=fetcher.fetch_credentials)
    return session


@functools.lru_cache(maxsize=64)
def s3_client(aws: AwsConfig, role_arn: str = "", external_id: str = "") -> Any:
    """A boto3 S3 client for ``aws`` (and a role to assume), one per process.

    boto3 clients are thread-safe, and building one costs ~0.3 s of CPU (it loads the
    service model), so every partition and fetch thread of a process shares it.
    """
    session = _session(aws, role_arn, external_id)
    return session.client(
        "s3",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=BotoConfig(
            max_pool_connections=aws.max_pool_connections,
            retries={"mode": "standard", "max_attempts": 3},
            tcp_keepalive=True,
        ),
    )


@functools.lru_cache(maxsize=64)
def sqs_client(aws: AwsConfig, role_arn: str = "", external_id: str = "") -> Any:
    """A boto3 SQS client for ``aws`` (S3 event notifications), one per process and role."""
    session = _session(aws, role_arn, external_id)
    return session.client(
        "sqs",
        region_name=aws.region,
        endpoint_url=aws.endpoint_url,
        config=BotoConfig(retries={"mode": "standard", "max_attempts": 3}, tcp_keepalive=True),
    )


def client_for(aws: AwsConfig, src: SourceConfig, service: str) -> Any:
    """The ``s3`` or ``sqs`` client a source reads with: through its ``role_arn`` (and
    ``external_id``) when it has one. Every S3 access for a source (the flow, readiness,
    replay, preview) goes through this, so a cross-account source works everywhere."""
    make = s3_client if service == "s3" else sqs_client
    return make(aws, src.role_arn, src.external_id)
