"""dataflow.config: validation, every problem at once with its key path, env overrides; the
operations plane's credentials and limits."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any

import pytest

import dataflow
from dataflow.config import (
    BatchConfig,
    Config,
    ConfigError,
    SourceConfig,
    load_config,
    parse_config,
)

DEMO = Path(dataflow.__file__).resolve().parents[1] / "examples" / "demo.toml"


def minimal() -> dict[str, Any]:
    return {
        "sentinel": {"endpoint": "https://dce.example.com", "rule_id": "dcr-1"},
        "sources": [
            {"name": "trail", "bucket": "org-trail", "format": "cloudtrail",
             "table": "AWSCloudTrail"},
            {"name": "app", "bucket": "app-logs", "format": "ndjson", "table": "App_CL"},
        ],
    }


def problems_of(raw: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(raw, environ=environ)
    # The message lists every problem, one per line.
    for p in ei.value.problems:
        assert p in str(ei.value)
    assert f"({len(ei.value.problems)} problem(s))" in str(ei.value)
    return ei.value.problems


# --------------------------------------------------------------------------- valid configs


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config(minimal())
    assert isinstance(cfg, Config)
    assert cfg.sentinel.endpoint == "https://dce.example.com"
    assert cfg.sentinel.credential == "default"
    assert cfg.batch == BatchConfig() and cfg.batch.max_bytes == 1_000_000
    assert cfg.aws.region == "us-east-1"
    assert cfg.runtime.mode == "continuous"
    assert [s.name for s in cfg.sources] == ["trail", "app"]
    assert cfg.source("app") == SourceConfig(name="app", bucket="app-logs", format="ndjson",
                                             table="App_CL")
    assert cfg.source("app").partitions == 1
    with pytest.raises(KeyError, match="no source named 'nope'"):
        cfg.source("nope")


def test_int_accepted_for_float_but_bool_is_not_an_int() -> None:
    raw = minimal()
    raw["batch"] = {"max_age_secs": 3}
    cfg = parse_config(raw)
    assert cfg.batch.max_age_secs == 3.0 and isinstance(cfg.batch.max_age_secs, float)
    raw["batch"] = {"max_records": True}
    assert problems_of(raw) == ["batch.max_records: expected int, got True"]


def test_demo_config_loads() -> None:
    cfg = load_config(DEMO, environ={})
    assert {s.name for s in cfg.sources} == {"cloudtrail", "aws", "app"}
    assert cfg.source("aws").format == "auto" and cfg.source("aws").table is None
    assert cfg.source("cloudtrail").partitions == 2 and cfg.source("app").format == "ndjson"
    assert cfg.runtime.mode == "catch_up"
    assert cfg.sentinel.credential == "managed_identity"
    assert cfg.batch.max_age_secs == 2.0
    (table,) = cfg.tables
    assert table.name == "AppEvents_CL"
    assert table.columns[0].name == "TimeGenerated" and table.columns[0].required


def test_load_config_path_from_environment_and_file_errors(tmp_path: Path) -> None:
    cfg = load_config(environ={"S3SENTINEL_CONFIG": str(DEMO)})
    assert cfg.source("app").table == "AppEvents_CL"
    with pytest.raises(ConfigError, match="S3SENTINEL_CONFIG"):
        load_config(environ={})
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="file not found"):
        load_config(missing, environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[sentinel\n")
    with pytest.raises(ConfigError, match="not valid TOML") as ei:
        load_config(bad, environ={})
    assert str(bad) in str(ei.value)


# --------------------------------------------------------------------------- problems


def test_every_problem_reported_at_once_with_its_key_path() -> None:
    raw = minimal()
    raw["colour"] = "blue"                                   # unknown, top level
    raw["sentinel"]["retries"] = 3                           # unknown, one level down
    raw["sources"][0]["buckett"] = "typo"                    # unknown, inside a list item
    raw["sentinel"]["timeout_secs"] = "30"                   # wrong type
    raw["runtime"] = {"mode": "forever"}                     # bad Literal
    raw["sources"][1]["format"] = "orc"                      # bad Literal in a list item
    raw["targets"] = [{"name": "t", "dcrs": [{"name": "d", "id": "dcr-" + "0" * 32}]}]
    del raw["sources"][1]["bucket"]                          # missing required in a list item
    raw["tables"] = [{"name": "X_CL", "columns": [{"name": "C", "type": "text"}]}]
    problems = problems_of(raw)
    assert len(problems) == 9, problems
    joined = "\n".join(problems)
    assert ("colour: unknown key (known keys: aws, batch, enrich, ops, runtime, sentinel, "
            "sources, tables, targets, transforms)") in problems
    assert any(p.startswith("sentinel.retries: unknown key") for p in problems)
    assert any(p.startswith("sources[trail].buckett: unknown key") for p in problems)
    assert "sentinel.timeout_secs: expected float, got '30'" in problems
    assert "runtime.mode: 'forever' is not one of 'continuous', 'catch_up'" in problems
    (fmt,) = [p for p in problems if p.startswith("sources[app].format:")]
    assert fmt.startswith("sources[app].format: 'orc' is not one of ")
    assert "'cloudtrail'" in fmt and "'ndjson'" in fmt and "'json_array'" in fmt
    assert "targets[t].dcrs[d].streams: required key is missing" in problems
    assert "sources[app].bucket: required key is missing" in problems
    assert "tables[X_CL].columns[C].type: 'text' is not one of" in joined


def test_wrong_shapes() -> None:
    raw = minimal()
    raw["sentinel"] = "https://x"
    raw["sources"] = {"name": "x"}
    assert problems_of(raw) == [
        "sources: expected a list, got dict",
        "sentinel: expected a table, got str",
    ]
    assert problems_of({}) == ["sources: required key is missing"]
    raw = minimal()
    raw["sources"][0] = "trail"
    assert problems_of(raw) == ["sources[0]: expected a table, got str"]


# --------------------------------------------------------------------------- env overrides


def test_env_overrides_are_toml_typed_or_plain_strings() -> None:
    env = {
        "S3SENTINEL__BATCH__MAX_RECORDS": "500",                 # TOML int
        "S3SENTINEL__BATCH__MAX_AGE_SECS": "0.5",                # TOML float
        "S3SENTINEL__SENTINEL__ENDPOINT": "https://dce.eastus-1.ingest.monitor.azure.com",
        "S3SENTINEL__SENTINEL__CREDENTIAL": '"managed_identity"',  # a quoted TOML string
        "S3SENTINEL__RUNTIME__MODE": "catch_up",                 # a bare word: plain string
        "S3SENTINEL__AWS__ENDPOINT_URL": "http://127.0.0.1:5000",
        "OTHER__BATCH__MAX_RECORDS": "1",                        # not our prefix
    }
    cfg = parse_config(minimal(), environ=env)
    assert cfg.batch.max_records == 500
    assert cfg.batch.max_age_secs == 0.5
    assert cfg.sentinel.endpoint == "https://dce.eastus-1.ingest.monitor.azure.com"
    assert cfg.sentinel.credential == "managed_identity"
    assert cfg.runtime.mode == "catch_up"
    assert cfg.aws.endpoint_url == "http://127.0.0.1:5000"


def test_env_override_of_a_source_by_name_and_by_index() -> None:
    env = {
        "S3SENTINEL__SOURCES__app__BUCKET": "other-bucket",
        "S3SENTINEL__SOURCES__0__PARTITIONS": "4",
        "S3SENTINEL__SOURCES__trail__EXCLUDE": '["\\\\.digest$", "^tmp/"]',
    }
    cfg = parse_config(minimal(), environ=env)
    assert cfg.source("app").bucket == "other-bucket"
    assert cfg.source("trail").partitions == 4
    assert cfg.source("trail").exclude == ["\\.digest$", "^tmp/"]
    assert cfg.source("trail").bucket == "org-trail"


def test_env_override_can_add_a_section_missing_from_the_file() -> None:
    cfg = parse_config(minimal(), environ={"S3SENTINEL__RUNTIME__TABLES_DIR": "/etc/tables"})
    assert cfg.runtime.tables_dir == "/etc/tables"


def test_env_override_with_a_bad_list_item_or_a_bad_value() -> None:
    problems = problems_of(minimal(), {
        "S3SENTINEL__SOURCES__nope__BUCKET": "x",
        "S3SENTINEL__SOURCES__7__BUCKET": "x",
        "S3SENTINEL__BATCH__MAX_BYTES": "lots",
        "S3SENTINEL__BATCH__MAX_BYTE": "1",
    })
    assert "S3SENTINEL__SOURCES__nope__BUCKET: no list item 'nope' (use an index or a name)" \
        in problems
    assert "S3SENTINEL__SOURCES__7__BUCKET: no list item '7' (use an index or a name)" \
        in problems
    assert "batch.max_bytes: expected int, got 'lots'" in problems
    assert any(p.startswith("batch.max_byte: unknown key") for p in problems)
    assert len(problems) == 4


def test_env_value_that_parses_as_toml_is_typed_even_for_a_string_key() -> None:
    # Documented ("read as a TOML value when it parses as one"), but an all-digit bucket
    # name -- valid in S3 -- then has to be quoted: S3SENTINEL__...__BUCKET='"123"'.
    assert problems_of(minimal(), {"S3SENTINEL__SOURCES__app__BUCKET": "123"}) == [
        "sources[app].bucket: expected str, got 123"]
    cfg = parse_config(minimal(), environ={"S3SENTINEL__SOURCES__app__BUCKET": '"123"'})
    assert cfg.source("app").bucket == "123"


def test_env_override_of_a_whole_list_item_is_not_silently_dropped() -> None:
    env = {"S3SENTINEL__SOURCES__0":
           '{name = "trail", bucket = "new-bucket", format = "cloudtrail", table = "AWSCloudTrail"}'}
    try:
        cfg = parse_config(minimal(), environ=env)
    except ConfigError:
        return  # refusing it with a problem would be fine too
    assert cfg.source("trail").bucket == "new-bucket"


def test_env_override_through_a_scalar_is_a_config_problem() -> None:
    # sentinel.endpoint is a string in the file; the override tries to index into it.
    with pytest.raises(ConfigError, match="sentinel.endpoint"):
        parse_config(minimal(), environ={"S3SENTINEL__SENTINEL__ENDPOINT__X": "1"})


def test_parse_config_does_not_mutate_its_input() -> None:
    raw = minimal()
    before = copy.deepcopy(raw)
    parse_config(raw, environ={"S3SENTINEL__SENTINEL__ENDPOINT": "https://other.example.com",
                               "S3SENTINEL__SOURCES__app__BUCKET": "b2"})
    assert raw == before


# --------------------------------------------------------------------------- cross-field checks


def test_http_endpoint_refused() -> None:
    raw = minimal()
    raw["sentinel"]["endpoint"] = "http://dce.example.com"
    assert problems_of(raw) == [
        "sentinel.endpoint: must be an https:// URL (bearer tokens need TLS)"]


@pytest.mark.parametrize("max_bytes,ok", [(1, True), (1_048_576, True), (1_048_577, False),
                                          (0, False)])
def test_batch_max_bytes_limit(max_bytes: int, ok: bool) -> None:
    raw = minimal()
    raw["batch"] = {"max_bytes": max_bytes}
    if ok:
        assert parse_config(raw).batch.max_bytes == max_bytes
    else:
        assert problems_of(raw) == [
            "batch.max_bytes: must be between 1 and 1048576 (the service's limit)"]


def test_duplicate_source_names_and_bad_exclude_regex_and_bad_name() -> None:
    raw = minimal()
    raw["sources"][1]["name"] = "trail"
    raw["sources"][0]["exclude"] = ["ok$", "([unclosed"]
    raw["sources"].append({"name": "9lives", "bucket": "b", "format": "json_array",
                           "table": "T_CL", "partitions": 0})
    problems = problems_of(raw)
    assert "sources[trail].name: duplicate source name" in problems
    assert sum("duplicate" in p for p in problems) == 1
    (bad_re,) = [p for p in problems if ".exclude:" in p]
    assert bad_re.startswith("sources[trail].exclude: '([unclosed' is not a valid regex:")
    assert "sources[9lives].name: use letters, digits, '_' or '-', starting with a letter" \
        in problems
    assert ("sources[9lives]: partitions and fetch_threads must be >= 1, poll_secs > 0"
            in problems)
    assert len(problems) == 4


def test_cross_field_checks_all_reported_together() -> None:
    raw = minimal()
    raw["sentinel"]["endpoint"] = "http://x"
    raw["sentinel"]["gzip_level"] = 10
    raw["batch"] = {"max_bytes": 2_000_000, "max_records": 0}
    raw["sources"] = []
    raw["tables"] = [{"name": "Empty_CL", "columns": []}]
    problems = problems_of(raw)
    assert problems == [
        "sentinel.endpoint: must be an https:// URL (bearer tokens need TLS)",
        "sentinel.gzip_level: must be 0..9",
        "batch.max_bytes: must be between 1 and 1048576 (the service's limit)",
        "batch: max_records must be >= 1 and max_age_secs > 0",
        "sources: at least one [[sources]] entry is needed",
        "tables[Empty_CL].columns: a table needs at least one column",
    ]


def test_cross_field_checks_wait_for_types() -> None:
    # With a type problem, the http endpoint is not (yet) reported: only the type problem.
    raw = minimal()
    raw["sentinel"]["endpoint"] = "http://x"
    raw["batch"] = {"max_bytes": "big"}
    assert problems_of(raw) == ["batch.max_bytes: expected int, got 'big'"]


# --------------------------------------------------------------------------- pickling


def test_config_error_pickles_with_its_problems() -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"sentinel": {}, "sources": []})
    err = ei.value
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is ConfigError
    assert back.problems == err.problems
    assert str(back) == str(err)


def test_config_error_pickle_keeps_the_origin() -> None:
    err = ConfigError(["a: bad"], origin="/etc/s3sentinel.toml")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err)


# --------------------------------------------------------------------------- enrich, ops


def test_anomaly_entity_kinds_are_checked() -> None:
    ok = parse_config(minimal() | {"enrich": {"anomaly_entities": ["principal", "key"]}})
    assert ok.enrich.anomaly_entities == ["principal", "key"]
    (msg,) = problems_of(minimal() | {"enrich": {"anomaly_entities": ["principal", "user"]}})
    assert msg == "enrich.anomaly_entities: ['user']; use principal, ip, account, key"


STRONG = "t0k3n-" + "a1b2c3d4" * 3
KEY = "k3y-" + "0123456789abcdef" * 2


def with_ops(**ops: object) -> dict:
    return {**minimal(), "ops": ops}


def test_weak_literal_credentials_are_refused_without_echoing_them() -> None:
    got = problems_of(with_ops(reader_tokens=[STRONG, "reader-1"],
                               admin_tokens=["adm in" + "x" * 30], jwt_key="jwt-signing-key"))
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
    assert any(text in p for p in problems_of(with_ops(**ops)))


def test_ops_server_limits_have_defaults() -> None:
    ops = parse_config(minimal()).ops
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


def test_a_vpcflow_field_list_is_checked_at_start() -> None:
    raw = minimal()
    raw["sources"].append({"name": "flows", "bucket": "b", "format": "vpcflow",
                           "fields": ["${version} ${srcaddr} ${srcaddr}"]})
    assert any(p.startswith("sources[flows].fields:") for p in problems_of(raw))
    raw["sources"][-1]["fields"] = ["${version} ${account-id} ${srcaddr}"]
    assert parse_config(raw).source("flows").fields == ["${version} ${account-id} ${srcaddr}"]


def test_the_aws_section_is_checked_with_its_key_paths() -> None:
    problems = problems_of({**minimal(), "aws": {
        "web_identity_role_arn": "arn:aws:iam::123456789012:role/r", "session_duration_secs": 60}})
    assert any(p.startswith("aws.session_duration_secs: must be 900..43200") for p in problems)
