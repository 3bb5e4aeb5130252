"""Which formats exist, how each is framed, which table each maps onto, and detection.

Detection (``format = "auto"``) looks at the key first — AWS services deliver to
well-known layouts (``AWSLogs/<acct>/CloudTrail/``, ``.../vpcflowlogs/``, ...) — then,
for keys that say nothing, at the first bytes of the decompressed object.
"""

from __future__ import annotations

import importlib
import re

from operators.formats import JSON_FORMATS, TextFormat
from operators.formats.delimited import CsvFormat, DelimitedFormat

__all__ = [
    "DEFAULT_TABLES",
    "FORMATS",
    "detect",
    "framing_of",
    "text_format",
]

_TEXT_FORMATS = {
    "vpcflow": ("operators.formats.vpcflow", "VpcFlowFormat"),
    "s3access": ("operators.formats.s3access", "S3AccessFormat"),
    "alb": ("operators.formats.elb", "AlbFormat"),
    "elb": ("operators.formats.elb", "ClassicElbFormat"),
    "nlb": ("operators.formats.elb", "NlbFormat"),
    "cloudfront": ("operators.formats.cloudfront", "CloudFrontFormat"),
}

FORMATS = tuple(sorted(JSON_FORMATS | set(_TEXT_FORMATS) | {"csv", "delimited"}))
"""Every format name a source may declare (besides ``auto``)."""

DEFAULT_TABLES = {
    "cloudtrail": "AWSCloudTrail",
    "vpcflow": "AWSVPCFlow",
    "guardduty": "AWSGuardDuty",
    "waf": "AWSWAF",
    "route53resolver": "AWSRoute53Resolver",
    "alb": "AWSALBAccessLogs_CL",
    "elb": "AWSELBAccessLogs_CL",
    "nlb": "AWSNLBAccessLogs_CL",
    "cloudfront": "AWSCloudFront_CL",
    "s3access": "AWSS3ServerAccess_CL",
}
"""The table a format maps onto when the source names none."""

_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"/CloudTrail(-Insight)?/"), "cloudtrail"),
    (re.compile(r"/vpcflowlogs/", re.I), "vpcflow"),
    (re.compile(r"/GuardDuty/"), "guardduty"),
    (re.compile(r"/WAFLogs/|aws-waf-logs", re.I), "waf"),
    (re.compile(r"/vpcdnsquerylogs/|route53resolver", re.I), "route53resolver"),
    (re.compile(r"/elasticloadbalancing/.*_app\."), "alb"),
    (re.compile(r"/elasticloadbalancing/.*_net\."), "nlb"),
    (re.compile(r"/elasticloadbalancing/"), "elb"),
    (re.compile(r"(^|/)E[A-Z0-9]{6,}\.\d{4}-\d\d-\d\d-\d\d\.[0-9A-Za-z]+(\.gz)?$"), "cloudfront"),
    (re.compile(r"(^|/)\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-[0-9A-F]{16}$"), "s3access"),
]


def detect(key: str, head: bytes = b"") -> str | None:
    """The format of an object, from its key or else its first decompressed bytes."""
    for pattern, fmt in _KEY_RULES:
        if pattern.search(key):
            return fmt
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if re.match(rb'\{\s*"Records"\s*:', text):
        return "cloudtrail"
    if text.startswith(b"{"):
        return "ndjson"
    if text.startswith(b"["):
        return "json_array"
    if text.startswith(b"#Version:") or text.startswith(b"#Fields:"):
        return "cloudfront"
    if re.match(rb"version account-id interface-id", text):
        return "vpcflow"
    return None


def framing_of(fmt: str) -> str:
    """``records`` (CloudTrail's ``{"Records": [...]}``), ``array`` or ``lines``."""
    if fmt == "cloudtrail":
        return "records"
    if fmt == "json_array":
        return "array"
    return "lines"


def text_format(fmt: str, *, fields: list[str] | None = None, delimiter: str = "") -> TextFormat | None:
    """The parser of a line-oriented format; None for JSON formats.

    :raises ValueError: Unknown format, or options the format needs are missing.
    """
    if fmt in JSON_FORMATS:
        return None
    if fmt == "csv":
        return CsvFormat(fields, delimiter or ",")
    if fmt == "delimited":
        return DelimitedFormat(list(fields or []), delimiter or "|")
    if fmt not in _TEXT_FORMATS:
        msg = f"unknown format {fmt!r}; known: {', '.join(FORMATS)}"
        raise ValueError(msg)
    module, cls = _TEXT_FORMATS[fmt]
    try:
        parser: TextFormat = getattr(importlib.import_module(module), cls)()
    except (ImportError, AttributeError) as ex:
        msg = f"format {fmt!r} is not available in this installation: {ex}"
        raise ValueError(msg) from ex
    return parser
