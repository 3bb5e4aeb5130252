"""Logs: JSON lines and redaction of secrets and personal data."""

from __future__ import annotations

import json
import logging

from connectors.ops.logs import JsonFormatter, RedactingFilter, redact


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


def test_secrets_in_json_and_dict_form_and_aws_key_names_are_masked() -> None:
    cases = {
        '{"token": "abc123secretvalue", "n": 1}': "abc123secretvalue",
        "{'jwt_key': 'supersecretvalue', 'x': 2}": "supersecretvalue",
        'creds {"aws_secret_access_key": "wJalrXUtnFEMIK7MDENG"}': "wJalrXUtnFEMIK7MDENG",
        "aws_secret_access_key=wJalrXUtnFEMIK7MDENG": "wJalrXUtnFEMIK7MDENG",
        "aws_session_token=FwoGZXIvYXdzEJrSESSION": "FwoGZXIvYXdzEJrSESSION",
        "OpsConfig(admin_tokens=['first-admin-token-value', 'second'], port=9464)":
            "first-admin-token-value",
        'client_secret: "quoted value with spaces"': "quoted value with spaces",
    }
    for text, secret in cases.items():
        out = redact(text)
        assert secret not in out, (text, out)
        assert "[REDACTED]" in out


def test_s3_paths_stay_readable() -> None:
    uri = ("s3://org-logs/app/AppServerCluster/2026/11/01/eventsPartOne0000abcd/"
           "x.json.gz@0123abcd.json")
    assert uri in redact(f"{uri} record 7: not valid JSON")
    assert "[AWS-KEY-ID]" in redact("s3://b/AKIAIOSFODNN7EXAMPLE/x")


def test_a_key_with_a_newline_cannot_forge_a_log_line(capsys) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("s3sentinel-test-forge")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("%s: giving up", "s3://b/evil\nCRITICAL forged: all good\r")
    finally:
        logger.removeHandler(handler)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR s3://b/evil\\nCRITICAL forged")


def test_a_numeric_secret_from_the_environment_is_not_echoed_in_config_errors() -> None:
    import pytest

    from dataflow.config import ConfigError, parse_config

    raw = {"sentinel": {"endpoint": "https://dce.example", "rule_id": "dcr-1"},
           "sources": [{"name": "a", "bucket": "b", "format": "cloudtrail"}]}
    env = {"S3SENTINEL__OPS__JWT_KEY": "31415926535897932384626433832795",
           "S3SENTINEL__OPS__ADMIN_TOKENS": "[27182818284590452353602874713527]"}
    with pytest.raises(ConfigError) as ex:
        parse_config(raw, environ=env)
    text = str(ex.value)
    assert "ops.jwt_key" in text and "value not shown" in text
    assert "31415926535897932384626433832795" not in text
    assert "27182818284590452353602874713527" not in text
