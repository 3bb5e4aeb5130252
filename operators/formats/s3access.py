"""Amazon S3 server access logs: one request per line, space-separated, no header.

A record (wrapped here)::

    79a59df9...ef2be amzn-s3-demo-bucket1 [06/Feb/2019:00:00:38 +0000] 192.0.2.3 79a59df9...ef2be
    3E57427F3EXAMPLE REST.GET.VERSIONING - "GET /amzn-s3-demo-bucket1?versioning HTTP/1.1" 200 -
    113 - 7 - "-" "S3Console/0.4" - s9lzHYrF...1234= SigV4 ECDHE-RSA-AES128-GCM-SHA256 AuthHeader
    amzn-s3-demo-bucket1.s3.us-west-1.amazonaws.com TLSV1.2
    arn:aws:s3:us-west-1:123456789012:accesspoint/example-AP Yes

Fields are bare tokens, the request time in brackets, or the request line, referrer and
user agent in double quotes (a ``"`` inside is written ``\\"``); ``-`` means no value.
AWS has appended fields over the years (host id; signature version, cipher suite,
authentication type, host header and TLS version in 2019; access point ARN; aclRequired)
and says more may follow, so a line needs the 17 fields through the user agent, takes
the later ones when present, and ignores any beyond the 26 known here.

Checks that catch a line read out of step (which would put values in the wrong columns):
the time must be bracketed and parse; the request line, referrer and user agent must be
quoted (or a bare ``-``); every other field must be a bare token without ``"``; the
status, byte counts and times must be numbers. A closing quote is one followed by a space
or the end of the line, so a stray unescaped quote inside a user agent stays in it.

``Bytes Sent`` is ``-`` when zero bytes were sent (AWS's definition): it is parsed as 0.
The time becomes ISO 8601 UTC (``2019-02-06T00:00:38Z``). Bytes that are not UTF-8 (user
agents are set by the client) are kept as ``\\xNN`` escapes rather than failing the line,
so a crafted user agent cannot keep a request out of Sentinel.

Source: "Amazon S3 server access log format" in the Amazon S3 User Guide
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/LogFormat.html).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from operators.formats import ParseError

__all__ = ["FIELDS", "MIN_FIELDS", "S3AccessFormat"]

FIELDS = ("bucket_owner", "bucket", "time", "remote_ip", "requester", "request_id", "operation",
          "key", "request_uri", "http_status", "error_code", "bytes_sent", "object_size",
          "total_time", "turn_around_time", "referer", "user_agent", "version_id", "host_id",
          "signature_version", "cipher_suite", "authentication_type", "host_header",
          "tls_version", "access_point_arn", "acl_required")
"""Field names, in the order of a line (the AWS names in snake case)."""

MIN_FIELDS = 17
"""Fields every line has: through the user agent (version id and later were added since)."""

_TIME, _REQUEST_URI, _REFERER, _USER_AGENT = 2, 8, 15, 16
_QUOTED = frozenset({_REQUEST_URI, _REFERER, _USER_AGENT})
_NUMBERS = frozenset({9, 11, 12, 13, 14})
_BYTES_SENT = 11

_TOKEN = re.compile(r"""
    \[(?P<b>[^\]]*)\](?=\s|$)                       # [06/Feb/2019:00:00:38 +0000]
  | "(?P<q>(?:[^"\\]|\\.|"(?!\s|$))*)"(?=\s|$)      # "quoted", \-escapes, a stray " kept
  | (?P<w>\S+)                                      # bare
""", re.X | re.S | re.A)
_UNESCAPE = re.compile(r'\\(["\\])')
_HTTP_TIME = re.compile(
    r"(\d\d)/([A-Z][a-z]{2})/(\d{4}):(\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)", re.A)
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}


def _iso_utc(text: str) -> str:
    """``06/Feb/2019:00:00:38 +0000`` as ``2019-02-06T00:00:38Z``."""
    m = _HTTP_TIME.fullmatch(text)
    month = _MONTHS.get(m.group(2)) if m else None
    if m is None or month is None:
        msg = f"request time [{text[:40]}] is not like [06/Feb/2019:00:00:38 +0000]"
        raise ParseError(msg, "bad_time")
    day, year, hh, mm, ss = (int(m.group(i)) for i in (1, 3, 4, 5, 6))
    sign, oh, om = m.group(7), int(m.group(8)), int(m.group(9))
    if not oh and not om:  # S3 writes UTC; the usual case needs no datetime
        if 1 <= day <= 31 and hh < 24 and mm < 60 and ss < 60:
            return f"{year:04d}-{month:02d}-{day:02d}T{hh:02d}:{mm:02d}:{ss:02d}Z"
    try:
        dt = datetime(year, month, day, hh, mm, min(ss, 59), tzinfo=timezone(
            (-1 if sign == "-" else 1) * timedelta(hours=oh, minutes=om)))
    except ValueError:
        msg = f"request time [{text[:40]}] is not a valid date and time"
        raise ParseError(msg, "bad_time") from None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class S3AccessFormat:
    """Amazon S3 server access log records (every field list AWS has written)."""

    name = "s3access"

    def is_header(self, line: bytes) -> bool:
        """Never: S3 server access log objects have no header lines."""
        return False

    def parse(self, line: bytes, header: tuple[bytes, ...]) -> dict[str, Any]:
        """The fields of one record (see the module docstring).

        :raises ParseError: Fewer than 17 fields, or a field of the wrong shape.
        """
        text = line.decode("utf-8", "backslashreplace")
        tokens = list(_TOKEN.finditer(text))
        if len(tokens) < MIN_FIELDS:
            msg = (f"expected at least {MIN_FIELDS} fields (bucket owner through user agent), "
                   f"got {len(tokens)}")
            raise ParseError(msg, "field_count")
        rec: dict[str, Any] = {}
        for i, (name, tok) in enumerate(zip(FIELDS, tokens, strict=False)):
            bare, quoted, bracketed = tok.group("w"), tok.group("q"), tok.group("b")
            if i == _TIME:
                if bracketed is None:
                    msg = f"field 3 (time) should be [bracketed], got {tok.group()[:40]!r}"
                    raise ParseError(msg, "malformed")
                rec[name] = _iso_utc(bracketed)
                continue
            if bracketed is not None and not any(c.isspace() for c in bracketed):
                bare, bracketed = tok.group(), None  # e.g. a key "[1]": a bare value after all
            if bracketed is not None or (quoted is not None and i not in _QUOTED):
                msg = f"field {i + 1} ({name}) should be a bare value, got {tok.group()[:40]!r}"
                raise ParseError(msg, "malformed")
            if bare is not None and '"' in bare:
                msg = (f"field {i + 1} ({name}) = {bare[:40]!r} has an unbalanced quote; "
                       "the line cannot be split into fields reliably")
                raise ParseError(msg, "malformed")
            if quoted is not None:
                value = _UNESCAPE.sub(r"\1", quoted) if "\\" in quoted else quoted
            elif i in _QUOTED and bare != "-":
                assert bare is not None  # neither quoted nor bracketed: the bare group matched
                msg = f"field {i + 1} ({name}) should be \"quoted\", got {bare[:40]!r}"
                raise ParseError(msg, "malformed")
            else:
                value = bare
            if value == "-" or value == "":
                if i == _BYTES_SENT:
                    rec[name] = 0
                continue
            if i in _NUMBERS:
                if not (value.isdigit() and value.isascii()):
                    msg = f"field {i + 1} ({name}) = {value[:40]!r} is not a number"
                    raise ParseError(msg, "not_a_number")
                rec[name] = int(value)
            else:
                rec[name] = value
        return rec
