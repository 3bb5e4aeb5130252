"""Which formats exist, how each is framed, which table each maps onto, and detection:
all of it in one :class:`FormatSpec` per format (:data:`SPECS`).

Detection (``format = "auto"``) looks at the key first — AWS services deliver to
well-known layouts (``AWSLogs/<acct>/CloudTrail/``, ``.../vpcflowlogs/``, ...) — then,
for keys that say nothing, at the first bytes of the decompressed object. Firehose writes
under a prefix of the user's choosing (``YYYY/MM/DD/HH/<stream>-...``), so what it delivers
(CloudWatch Logs subscription data, EventBridge events of Security Hub findings, EKS audit
events) is recognised by its first bytes.

Default tables: the Azure Monitor standard table where one exists that the Logs Ingestion
API accepts and whose schema the table file could be checked against (its header names the
reference); a ``_CL`` table otherwise. The ``_CL`` table of a format that now defaults to a
standard one stays defined: ``table = "AWSALBAccessLogs_CL"`` in a source keeps it.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast

from operators.formats import JSON_FORMATS, Expand, TextFormat
from operators.formats.delimited import CsvFormat, DelimitedFormat

__all__ = [
    "DEFAULT_TABLES",
    "FORMATS",
    "SPECS",
    "FormatSpec",
    "detect",
    "expander_of",
    "framing_of",
    "lines_of",
    "text_format",
]

@dataclass(frozen=True)
class FormatSpec:
    """Everything about one format, in one place."""

    name: str
    framing: Literal["records", "array", "lines", "documents", "parquet"] = "lines"
    """``records`` (CloudTrail's ``{"Records": [...]}``), ``array`` (``[...]``), ``lines``,
    ``documents``: concatenated JSON documents (``{...}{...}``, whitespace between them or
    none), each turned into its records by ``expand``, or ``parquet``: an Apache Parquet
    file, each row a record (as a JSON object of the file's columns, see
    :mod:`connectors.s3.parquet`)."""
    table: str | None = None
    """The table it maps onto when the source names none (None: the source must name one)."""
    parser: tuple[str, str] | None = None
    """(module, class) of its text parser; None for JSON formats (and csv/delimited, which
    take options)."""
    key: str | None = None
    """A regex that recognises its objects by their S3 key (for ``format = "auto"``)."""
    key_flags: int = 0
    expand: tuple[str, str] | None = None
    """(module, function) of its :data:`~operators.formats.Expand` (``documents`` framing)."""
    lines: tuple[str, str] | None = None
    """(module, function) turning a slice of a ``parquet`` format's rows into its text
    records: ``(header line, lines)``; None: each row is a record as a JSON object."""


SPECS: tuple[FormatSpec, ...] = (
    # In the order the key rules are tried (the classic ELB rule last: it matches all ELBs).
    # Parquet first: a .parquet object is never text, whichever layout its key follows (VPC
    # flow logs in Parquet share the text ones' /vpcflowlogs/ layout, or use Hive-compatible
    # prefixes: aws-service=vpcflowlogs/).
    FormatSpec("vpcflow_parquet", "parquet", "AWSVPCFlow",
               parser=("operators.formats.vpcflow", "VpcFlowFormat"),
               lines=("operators.formats.vpcflow", "parquet_lines"),
               key=r"vpcflowlogs.*\.parquet(\.gz|\.zst)?$", key_flags=re.I),
    FormatSpec("parquet", "parquet", key=r"\.parquet(\.gz|\.zst)?$", key_flags=re.I),
    FormatSpec("cloudtrail", "records", "AWSCloudTrail", key=r"/CloudTrail(-Insight)?/"),
    FormatSpec("vpcflow", table="AWSVPCFlow", parser=("operators.formats.vpcflow", "VpcFlowFormat"),
               key=r"/vpcflowlogs/", key_flags=re.I),
    FormatSpec("guardduty", table="AWSGuardDuty", key=r"/GuardDuty/"),
    FormatSpec("waf", table="AWSWAF", key=r"/WAFLogs/|aws-waf-logs", key_flags=re.I),
    FormatSpec("route53resolver", table="AWSRoute53Resolver",
               key=r"/vpcdnsquerylogs/|route53resolver", key_flags=re.I),
    FormatSpec("albconn", table="AWSALBConnectionLogs_CL",
               parser=("operators.formats.elb", "AlbConnectionFormat"),
               key=r"/elasticloadbalancing/.*/conn_[^/]*_app\."),
    FormatSpec("alb", table="AWSALBAccessLogs", parser=("operators.formats.elb", "AlbFormat"),
               key=r"/elasticloadbalancing/.*_app\."),
    FormatSpec("nlb", table="AWSNLBAccessLogs", parser=("operators.formats.elb", "NlbFormat"),
               key=r"/elasticloadbalancing/.*_net\."),
    FormatSpec("elb", table="AWSELBAccessLogs_CL",
               parser=("operators.formats.elb", "ClassicElbFormat"),
               key=r"/elasticloadbalancing/"),
    FormatSpec("cloudfront", table="AWSCloudFront_CL",
               parser=("operators.formats.cloudfront", "CloudFrontFormat"),
               key=r"(^|/)E[A-Z0-9]{6,}\.\d{4}-\d\d-\d\d-\d\d\.[0-9A-Za-z]+(\.gz)?$"),
    FormatSpec("s3access", table="AWSS3ServerAccess_CL",
               parser=("operators.formats.s3access", "S3AccessFormat"),
               key=r"(^|/)\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d-[0-9A-F]{16}$"),
    FormatSpec("nfwflow", table="AWSNetworkFirewallFlow", key=r"/network-firewall/flow/"),
    FormatSpec("nfwalert", table="AWSNetworkFirewallAlert",
               parser=("operators.formats.networkfirewall", "NetworkFirewallFormat"),
               key=r"/network-firewall/alert/"),
    # Delivered by Firehose under a prefix of the user's choosing: recognised by content.
    FormatSpec("cloudwatchlogs", "documents", "AWSCloudWatch",
               expand=("operators.formats.envelopes", "cloudwatch_events")),
    FormatSpec("securityhub", "documents", "AWSSecurityHubFindings",
               expand=("operators.formats.envelopes", "securityhub_findings")),
    FormatSpec("eksaudit", table="AWSEKSLogs_CL"),
    FormatSpec("ndjson"),
    FormatSpec("json_array", "array"),
    FormatSpec("csv"),
    FormatSpec("delimited"),
)
"""Every format: the tables below are derived from this one."""

_BY_NAME = {f.name: f for f in SPECS}
assert {f.name for f in SPECS if f.parser is None} - {"csv", "delimited"} == JSON_FORMATS

FORMATS = tuple(sorted(_BY_NAME))
"""Every format name a source may declare (besides ``auto``)."""

DEFAULT_TABLES = {f.name: f.table for f in SPECS if f.table is not None}
"""The table a format maps onto when the source names none."""

_KEY_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(f.key, f.key_flags), f.name) for f in SPECS if f.key is not None]


# What the first JSON document of an object says about its format (all must be found in
# the first 4 KB; the first line for EKS, whose objects are JSON lines).
_HEAD_RULES: tuple[tuple[str, tuple[re.Pattern[bytes], ...], bool], ...] = (
    ("cloudwatchlogs", (re.compile(rb'"messageType"\s*:\s*"(?:DATA|CONTROL)_MESSAGE"'),), False),
    ("securityhub", (re.compile(rb'"detail-type"\s*:\s*"Security Hub Findings - '),
                     re.compile(rb'"source"\s*:\s*"aws\.securityhub"')), False),
    ("eksaudit", (re.compile(rb'"kind"\s*:\s*"Event"'),
                  re.compile(rb'"apiVersion"\s*:\s*"audit\.k8s\.io/v1"')), True),
)


def detect(key: str, head: bytes = b"") -> str | None:
    """The format of an object, from its key or else its first decompressed bytes."""
    for pattern, fmt in _KEY_RULES:
        if pattern.search(key):
            return fmt
    if head.startswith(b"PAR1"):  # the magic number of Apache Parquet
        return "parquet"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if re.match(rb'\{\s*"Records"\s*:', text):
        return "cloudtrail"
    if text.startswith(b"{"):
        line = text.split(b"\n", 1)[0]
        for fmt, patterns, first_line in _HEAD_RULES:
            if all(p.search(line if first_line else text) for p in patterns):
                return fmt
        return "ndjson"
    if text.startswith(b"["):
        return "json_array"
    if text.startswith(b"#Version:") or text.startswith(b"#Fields:"):
        return "cloudfront"
    if re.match(rb"version account-id interface-id", text):
        return "vpcflow"
    return None


def framing_of(fmt: str) -> str:
    """``records`` (CloudTrail's ``{"Records": [...]}``), ``array``, ``lines``, ``documents``
    or ``parquet``."""
    spec = _BY_NAME.get(fmt)
    return spec.framing if spec is not None else "lines"


def lines_of(fmt: str) -> Callable[[Any], tuple[bytes, list[bytes]]] | None:
    """The function that turns a slice of a ``parquet`` format's rows into text records
    (see :attr:`FormatSpec.lines`); None when its rows are JSON records."""
    spec = _BY_NAME.get(fmt)
    if spec is None or spec.lines is None:
        return None
    module, func = spec.lines
    return cast("Callable[[Any], tuple[bytes, list[bytes]]]",
                getattr(importlib.import_module(module), func))


def expander_of(fmt: str) -> Expand:
    """The function that turns one document of a ``documents`` format into its records.

    :raises ValueError: The format has no ``documents`` framing.
    """
    spec = _BY_NAME.get(fmt)
    if spec is None or spec.expand is None:
        msg = f"format {fmt!r} is not made of JSON documents that hold records"
        raise ValueError(msg)
    module, func = spec.expand
    return cast("Expand", getattr(importlib.import_module(module), func))


def text_format(fmt: str, *, fields: list[str] | None = None, delimiter: str = "",
                table: str | None = None) -> TextFormat | None:
    """The parser of a line-oriented format; None for JSON formats.

    :arg fields: Field names (csv, delimited; vpcflow: for objects without a header line).
    :arg table: The table the records map onto, for the parser's metrics (default: the
        format's own table).
    :raises ValueError: Unknown format, or options the format needs are missing (or, for
        vpcflow, a field list that names nothing).
    """
    if fmt in JSON_FORMATS:
        return None
    if fmt == "csv":
        return CsvFormat(fields, delimiter or ",")
    if fmt == "delimited":
        return DelimitedFormat(list(fields or []), delimiter or "|")
    spec = _BY_NAME.get(fmt)
    if spec is None or spec.parser is None:
        msg = f"unknown format {fmt!r}; known: {', '.join(FORMATS)}"
        raise ValueError(msg)
    module, cls = spec.parser
    try:
        factory = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as ex:
        msg = f"format {fmt!r} is not available in this installation: {ex}"
        raise ValueError(msg) from ex
    parser: TextFormat = factory(fields) if fmt == "vpcflow" and fields else factory()
    if hasattr(parser, "table"):
        parser.table = table or spec.table or ""
    return parser
