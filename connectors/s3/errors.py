"""Errors reading from S3, split into transient (retry later) and terminal (report and move on)."""

from __future__ import annotations

from dataflow.core.errors import S3SentinelError

__all__ = ["ObjectReadError", "is_transient"]

_TRANSIENT_CODES = {
    "SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling",
    "ThrottlingException", "RequestTimeTooSkewed", "503", "500", "502", "504",
}
_GONE_CODES = {"NoSuchKey", "404", "PreconditionFailed", "412"}


_CREDENTIAL_OPERATIONS = frozenset({"AssumeRole", "AssumeRoleWithWebIdentity"})
"""STS calls a credential refresh makes inside an S3 or SQS request."""


def is_transient(ex: BaseException) -> bool:
    """Whether ``ex`` is a failure that may succeed if tried again (throttling, 5xx, network,
    and credentials that could not be refreshed: that says nothing about the object, and a
    fixed trust policy or a recovered identity endpoint lets it be read)."""
    from azure.core.exceptions import AzureError
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        CredentialRetrievalError,
        EndpointConnectionError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(ex, ClientError):
        if getattr(ex, "operation_name", "") in _CREDENTIAL_OPERATIONS:
            return True
        return str(ex.response.get("Error", {}).get("Code")) in _TRANSIENT_CODES
    if isinstance(ex, (AzureError, CredentialRetrievalError)):  # the Entra token of web identity
        return True
    return isinstance(ex, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError,
                           ResponseStreamingError, Urllib3Error, ConnectionError, TimeoutError))


class ObjectReadError(S3SentinelError):
    """An object could not be read.

    :arg transient: True when trying again later may succeed.
    :arg gone: True when the object (or that version of it) no longer exists.
    """

    def __init__(self, reason: str, *, transient: bool, gone: bool = False) -> None:
        self.reason = reason
        self.transient = transient
        self.gone = gone
        super().__init__(reason)


    @classmethod
    def from_exception(cls, bucket: str, key: str, ex: BaseException) -> ObjectReadError:
        """Classify an exception raised by boto3 while reading ``s3://bucket/key``."""
        from botocore.exceptions import ClientError

        code = ""
        if isinstance(ex, ClientError):
            code = str(ex.response.get("Error", {}).get("Code"))
        transient = is_transient(ex)
        gone = code in _GONE_CODES
        hint = ""
        if code in ("AccessDenied", "403"):
            hint = " (grant s3:GetObject on the bucket to the connector's AWS role)"
        elif gone:
            hint = " (deleted or overwritten since it was listed)"
        reason = f"GET s3://{bucket}/{key} failed: {type(ex).__name__}: {ex}{hint}"
        return cls(reason, transient=transient, gone=gone)
