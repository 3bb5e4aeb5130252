"""Logs: JSON lines and redaction of secrets and personal data."""

from __future__ import annotations

import json
import logging

from ops.logs import JsonFormatter, RedactingFilter, redact


def test_redaction_masks_secrets_but_keeps_what_an_operator_needs() -> None:
    text = ("GET s3://org-trail/AWSLogs/1/x.json.gz failed: Authorization: Bearer eyJabcde.fghijk.lmnopq "
            "key AKIAIOSFODNN7EXAMPLE secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY "
            "etag 356a192b7913b04c54574d18c28d46e6395428ab to alice@example.com via "
            "https://hooks.slack.com/services/T0/B0/abc ?X-Amz-Signature=deadbeef01")
    out = redact(text)
    for secret in ("eyJabcde", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "alice@example.com",
                   "hooks.slack.com", "deadbeef01"):
        assert secret not in out, secret
    assert "s3://org-trail/AWSLogs/1/x.json.gz" in out
    assert "356a192b7913b04c54574d18c28d46e6395428ab" in out  # a hex digest is no secret


def test_json_lines_are_redacted(capsys) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("s3sentinel-test-json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise ValueError("token=hunter2hunter2")
    except ValueError:
        logger.exception("upload for %s failed", "bob@example.org")
    finally:
        logger.removeHandler(handler)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    doc = json.loads(line)
    assert doc["level"] == "ERROR" and doc["logger"] == "s3sentinel-test-json"
    assert "bob@example.org" not in line and "hunter2" not in line
    assert "[EMAIL]" in doc["message"] and "ValueError" in doc["exception"]
