"""Logs: plain text or JSON lines, with secrets and personal data redacted either way.

The connector logs object keys, reasons and counts, not record contents; still, an
exception text can carry a token, a signed URL, an access key or an e-mail address. A
filter on the root handler rewrites every record's message before any formatter sees it.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import orjson

__all__ = ["JsonFormatter", "RedactingFilter", "configure", "one_line", "redact"]

# A key name that says its value is a secret, in any casing or separator style, as
# ``key=value``, ``key: value``, ``"key": "value"`` (JSON) or ``'key': 'value'`` (a dict repr).
_SECRET_NAME = (r"[\w-]*(?:secret|token|password|passwd|credential|api[_-]?key|private[_-]?key|"
                r"signature|jwt[_-]?key)[\w-]*|authorization|x-identity-header|sig")
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1[REDACTED]"),
    # A list value (``admin_tokens=['a', 'b']``) is masked whole.
    (re.compile(rf"(?i)(?<![\w-])(['\"]?(?:{_SECRET_NAME})['\"]?\s*[=:]\s*)\[[^\]]*\]"),
     r"\1[REDACTED]"),
    (re.compile(rf"(?i)(?<![\w-])(['\"]?(?:{_SECRET_NAME})['\"]?\s*[=:]\s*)(['\"])"
                r"(?:\\.|(?!\2).)*\2"), r"\1\2[REDACTED]\2"),
    (re.compile(rf"(?i)(?<![\w-])(['\"]?(?:{_SECRET_NAME})['\"]?\s*[=:]\s*)"
                r"(?!\[REDACTED|bearer\s)[^\s\"'&,;}\])]+"),
     r"\1[REDACTED]"),
    (re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"), "[AWS-KEY-ID]"),
    # AWS secret access keys: 40 characters of mixed-case base64 (not hex digests).
    (re.compile(r"(?<![A-Za-z0-9/+=])(?=.{0,39}[a-z])(?=.{0,39}[A-Z])(?=.{0,39}[0-9/+])"
                r"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"), "[REDACTED-40]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\b"), "[JWT]"),
    (re.compile(r"https://hooks\.slack\.com/\S+|https://[\w.-]+\.webhook\.office\.com/\S+|"
                r"https://[\w.-]+\.logic\.azure\.com\S*"), "[WEBHOOK-URL]"),
    (re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
]

# s3:// URIs name the object an error is about: an operator must be able to read them, so
# the patterns above that could match inside a key (40-character runs, name@host.tld) skip
# them. An access key id in a key is still masked.
_S3_URI = re.compile(r"s3://[^\s'\",]+")
_IN_URI = [p for p in _PATTERNS if p[1] == "[AWS-KEY-ID]"]
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\n]")


def redact(text: str) -> str:
    """``text`` with tokens, keys, signed-URL signatures, webhook URLs and e-mails masked;
    ``s3://`` URIs are kept readable."""
    out: list[str] = []
    pos = 0
    for m in _S3_URI.finditer(text):
        out.append(_redact(text[pos:m.start()], _PATTERNS))
        out.append(_redact(m.group(), _IN_URI))
        pos = m.end()
    out.append(_redact(text[pos:], _PATTERNS))
    return "".join(out)


def _redact(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> str:
    for pattern, repl in patterns:
        text = pattern.sub(repl, text)
    return text


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped, so that a value from
    outside (an object key with a newline) cannot forge a log line of its own."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and exception text) through :func:`redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = one_line(redact(record.getMessage()))
        record.args = None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname,
               "logger": record.name, "message": record.getMessage(), "pid": record.process}
        if record.exc_text:
            doc["exception"] = record.exc_text
        return orjson.dumps(doc).decode()


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Route the root logger to stderr in ``fmt`` (``text`` or ``json``), redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_s3sentinel", False):
            root.removeHandler(h)
    handler._s3sentinel = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Client libraries log every HTTP request at INFO: keep them to warnings.
    for name in ("azure", "botocore", "boto3", "urllib3", "s3transfer"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
