"""Config: every problem at once with its key path; environment overrides."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from dataflow.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT

MINIMAL = {"sentinel": {"endpoint": "https://dce.example", "rule_id": "dcr-1"},
           "sources": [{"name": "ct", "bucket": "b", "format": "cloudtrail",
                        "table": "AWSCloudTrail"}]}


def problems(raw: dict, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, environ=env or {})
    return info.value.problems


def test_minimal_and_demo_configs_load() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.batch.max_bytes == 1_000_000 and cfg.source("ct").partitions == 1
    assert load_config(ROOT / "examples" / "demo.toml", environ={}).source("app").format == "ndjson"


def test_every_problem_is_reported_with_its_path() -> None:
    raw = {"sentinel": {"endpoint": "https://x", "rule_id": "dcr-1", "bogus": 1},
           "sources": [{"name": "ct", "bucket": "b", "format": "xml", "table": "T",
                        "partitions": "2", "extra": True}],
           "runtime": {"mode": "sometimes"}, "nope": {}}
    got = problems(raw)
    assert any(p.startswith("sentinel.bogus: unknown key") for p in got)
    assert any(p.startswith("sources[ct].format: 'xml' is not one of") for p in got)
    assert any(p.startswith("sources[ct].partitions: expected int") for p in got)
    assert any(p.startswith("sources[ct].extra: unknown key") for p in got)
    assert any(p.startswith("runtime.mode:") for p in got)
    assert any(p.startswith("nope: unknown key") for p in got)
    assert len(got) == 6


def test_missing_required_keys() -> None:
    got = problems({"sentinel": {"endpoint": "https://x"}, "sources": [{"name": "a"}]})
    assert "sentinel.rule_id: required key is missing" in got
    assert "sources[a].bucket: required key is missing" in got


@pytest.mark.parametrize(("change", "text"), [
    ({"sentinel": {"endpoint": "http://dce", "rule_id": "r"}}, "must be an https:// URL"),
    ({"batch": {"max_bytes": 2_000_000}}, "1048576"),
    ({"sources": MINIMAL["sources"] * 2}, "duplicate source name"),
    ({"sources": [{**MINIMAL["sources"][0], "exclude": ["("]}]}, "not a valid regex"),
    ({"sources": []}, "at least one"),
])
def test_cross_field_checks(change: dict, text: str) -> None:
    assert any(text in p for p in problems({**MINIMAL, **change}))


def test_environment_overrides() -> None:
    env = {"S3SENTINEL__SENTINEL__ENDPOINT": "https://other.example",
           "S3SENTINEL__BATCH__MAX_AGE_SECS": "2",
           "S3SENTINEL__SOURCES__ct__PARTITIONS": "4",
           "S3SENTINEL__SOURCES__0__PREFIX": "AWSLogs/",
           "UNRELATED": "x"}
    cfg = parse_config(MINIMAL, environ=env)
    assert cfg.sentinel.endpoint == "https://other.example"
    assert cfg.batch.max_age_secs == 2.0
    assert cfg.source("ct").partitions == 4 and cfg.source("ct").prefix == "AWSLogs/"
    assert "S3SENTINEL__SOURCES__nosuch__BUCKET: no list item 'nosuch'" in " ".join(
        problems(MINIMAL, {"S3SENTINEL__SOURCES__nosuch__BUCKET": "x"}))


def test_file_errors_and_pickling(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[sentinel\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    err = ConfigError(["a: b"])
    assert pickle.loads(pickle.dumps(err)).problems == ["a: b"]


def test_anomaly_entity_kinds_are_checked() -> None:
    ok = parse_config(MINIMAL | {"enrich": {"anomaly_entities": ["principal", "key"]}})
    assert ok.enrich.anomaly_entities == ["principal", "key"]
    (msg,) = problems(MINIMAL | {"enrich": {"anomaly_entities": ["principal", "user"]}})
    assert msg == "enrich.anomaly_entities: ['user']; use principal, ip, account, key"


STRONG = "t0k3n-" + "a1b2c3d4" * 3
KEY = "k3y-" + "0123456789abcdef" * 2


def with_ops(**ops: object) -> dict:
    return {**MINIMAL, "ops": ops}


def test_weak_literal_credentials_are_refused_without_echoing_them() -> None:
    got = problems(with_ops(reader_tokens=[STRONG, "reader-1"], admin_tokens=["adm in" + "x" * 30],
                            jwt_key="jwt-signing-key"))
    assert any(p.startswith("ops.reader_tokens[1]: too weak: 8 characters") for p in got)
    assert any(p.startswith("ops.admin_tokens[0]: too weak: not printable ASCII") for p in got)
    assert any(p.startswith("ops.jwt_key: too weak: 15 bytes") for p in got)
    assert len(got) == 3 and not any("reader-1" in p or "jwt-signing" in p for p in got)
    # Strong literals pass; a keyvault: reference is checked when it is read.
    cfg = parse_config(with_ops(reader_tokens=[STRONG], admin_tokens=["keyvault:admin"],
                                jwt_key=KEY, keyvault_url="https://v.vault.azure.net"))
    assert cfg.ops.reader_tokens == [STRONG] and cfg.ops.jwt_key == KEY


@pytest.mark.parametrize(("ops", "text"), [
    ({"max_body_bytes": 100}, "ops.max_body_bytes: 1024..16777216"),
    ({"read_timeout_secs": 0.5}, "ops.read_timeout_secs: must be >= 1"),
    ({"max_connections": 0}, "ops.max_connections: 1..10000"),
    ({"jwt_max_lifetime_secs": -1}, "ops.jwt_max_lifetime_secs: must be >= 0"),
    ({"audit_denied_window_secs": 0}, "audit_denied_window_secs"),
    ({"revoked": ["sha256:abc"]}, "ops.revoked[0]: a sha256: id is"),
    ({"revoked": ["keyvault:revoked"]}, "keyvault: references need ops.keyvault_url"),
])
def test_ops_server_limits_are_checked(ops: dict, text: str) -> None:
    assert any(text in p for p in problems(with_ops(**ops)))


def test_ops_server_limits_have_defaults() -> None:
    ops = parse_config(MINIMAL).ops
    assert (ops.max_body_bytes, ops.read_timeout_secs, ops.max_connections) == (65536, 10.0, 200)
    assert (ops.jwt_max_lifetime_secs, ops.revoked_file) == (0.0, "")
    assert (ops.audit_denied_max_lines, ops.audit_denied_window_secs) == (20, 10.0)


def test_the_repr_of_the_ops_config_shows_no_secret() -> None:
    cfg = parse_config(with_ops(reader_tokens=[STRONG], admin_tokens=[STRONG + "x"], jwt_key=KEY,
                                revoked=["leaked-jti"],
                                webhooks=[{"kind": "slack", "url": "https://hooks/T0/B0/s3cr3t"}]))
    for text in (repr(cfg.ops), repr(cfg), str(cfg)):
        assert STRONG not in text and KEY not in text and "leaked-jti" not in text
        assert "s3cr3t" not in text
        assert "reader_tokens=<1 redacted>" in text and "port=9464" in text
    assert cfg.ops.reader_tokens == [STRONG]  # the values themselves are untouched
