"""Targets in the config: routing, and every DCR limit `validate-config` enforces, each
refused with its key path before the service would refuse it."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.sentinel.budget import WINDOW_SECS, Budget
from connectors.sentinel.config import TargetConfig
from connectors.sentinel.service import make_credential
from dataflow.cli import main
from dataflow.config import ConfigError, parse_config
from dataflow.core.messages import Rows
from dataflow.tables import tables_for
from dataflow.targets import Routing, check_targets

ID = {k: f"dcr-{k * 32}" for k in "abcdef"}


def _raw(**over: object) -> dict:
    raw: dict = {
        "sources": [{"name": "trail", "bucket": "b", "format": "cloudtrail", "target": "acme"},
                    {"name": "app", "bucket": "a", "format": "ndjson", "table": "App_CL",
                     "target": "globex"}],
        "tables": [{"name": "App_CL", "columns": [{"name": "TimeGenerated", "type": "datetime"}]}],
        "targets": [
            {"name": "acme", "endpoint": "https://acme.example", "credential": "managed_identity",
             "client_id": "c-acme", "dcrs": [
                 {"name": "acme-1", "id": ID["a"], "streams": ["Custom-AWSCloudTrail"]},
                 {"name": "acme-2", "id": ID["b"], "streams": ["Custom-AWSCloudTrail"]}]},
            {"name": "globex", "endpoint": "https://globex.example",
             "credential": "workload_identity", "client_id": "c-globex", "tenant_id": "t-g",
             "dcrs": [{"name": "globex-1", "id": ID["c"], "streams": ["Custom-App_CL"]}]},
        ],
    }
    raw.update(over)
    return raw


def _problems(raw: dict) -> list[str]:
    try:
        cfg = parse_config(raw)
    except ConfigError as ex:
        return ex.problems
    return check_targets(cfg, tables_for(cfg))


def test_a_valid_two_tenant_config_routes_each_source_to_its_target() -> None:
    raw = _raw()
    cfg = parse_config(raw)
    tables = tables_for(cfg)
    assert check_targets(cfg, tables) == []
    routing = Routing(cfg, tables)
    stamped = routing.stamp(Rows("Custom-AWSCloudTrail", "trail:0/1", (), ()))
    assert stamped.target == "acme"
    assert routing.stamp(Rows("Custom-App_CL", "app:0/1", (), ())).target == "globex"
    # A table pinned to a target goes there whatever its source.
    raw["targets"][1]["tables"] = ["AWSCloudTrail"]
    raw["targets"][1]["dcrs"][0]["streams"].append("Custom-AWSCloudTrail")
    cfg = parse_config(raw)
    pinned = Routing(cfg, tables_for(cfg)).stamp(Rows("Custom-AWSCloudTrail", "trail:0/1", (), ()))
    assert pinned.target == "globex"


def test_a_stream_on_no_dcr_is_refused_with_its_key_path() -> None:
    raw = _raw()
    raw["targets"][1]["dcrs"][0]["streams"] = ["Custom-AWSVPCFlow"]
    (problem,) = _problems(raw)
    assert problem.startswith("targets[globex].dcrs: stream Custom-App_CL (source 'app' -> "
                              "App_CL) is on no DCR")


def test_tables_transforms_write_must_be_on_a_dcr_of_the_target() -> None:
    """Routed and summary tables are sent streams too, for every transform of a table."""
    raw = _raw(tables=[
        {"name": "App_CL", "columns": [{"name": "TimeGenerated", "type": "datetime"}]},
        {"name": "Aux_CL", "columns": [{"name": "TimeGenerated", "type": "datetime"}]},
        {"name": "Sum_CL", "columns": [{"name": "TimeGenerated", "type": "datetime"},
                                       {"name": "EventName", "type": "string"},
                                       {"name": "Events", "type": "long"}]}],
        transforms=[{"table": "AWSCloudTrail", "route": [{"table": "Aux_CL", "where": "true"}]},
                    {"table": "AWSCloudTrail", "aggregate": [{
                        "table": "Sum_CL", "by": ["EventName"],
                        "values": ["count(*) AS Events"]}]}])
    problems = _problems(raw)
    assert any("stream Custom-Aux_CL (source 'trail' -> AWSCloudTrail -> routed to Aux_CL)"
               in p for p in problems), problems
    assert any("stream Custom-Sum_CL (source 'trail' -> AWSCloudTrail -> summarised into "
               "Sum_CL)" in p for p in problems), problems
    raw["targets"][0]["dcrs"][0]["streams"] += ["Custom-Aux_CL", "Custom-Sum_CL"]
    assert _problems(raw) == []


def test_a_dcr_with_eleven_streams_is_refused() -> None:
    raw = _raw()
    raw["targets"][0]["dcrs"][0]["streams"] = [f"Custom-T{i}_CL" for i in range(11)]
    problems = _problems(raw)
    assert any(p.startswith("targets[acme].dcrs[acme-1].streams: 11 streams; a DCR declares at "
                            "most 10") for p in problems), problems


def test_two_targets_sharing_a_dcr_under_different_credentials_are_refused() -> None:
    raw = _raw()
    raw["targets"][1]["dcrs"].append({"name": "stolen", "id": ID["a"],
                                      "streams": ["Custom-App_CL"]})
    problems = _problems(raw)
    assert any(p.startswith("targets[globex].dcrs[stolen].id: DCR " + ID["a"] + " is also in "
                            "target 'acme' under another credential") for p in problems), problems


def test_an_unknown_plan_and_other_bad_keys_are_refused_with_their_key_paths() -> None:
    raw = _raw()
    raw["tables"][0]["plan"] = "Premium"  # a type problem: reported before the others
    assert _problems(raw) == [
        "tables[App_CL].plan: 'Premium' is not one of 'Analytics', 'Basic', 'Auxiliary'"]
    raw = _raw()
    raw["sources"][0]["target"] = "nobody"
    raw["targets"][0]["dcrs"][1]["id"] = "dcr-1"
    raw["targets"][1]["client_secret"] = "hunter2"
    raw["targets"][0]["dcrs"][1]["max_bytes_per_min"] = 3_000_000_000
    problems = _problems(raw)
    expected = [
        "sources[trail].target: no target 'nobody' (targets: acme, globex)",
        "targets[acme].dcrs[acme-2].id: 'dcr-1' is not a DCR immutable id",
        "targets[globex].client_secret: only used with credential = 'service_principal'",
        "targets[acme].dcrs[acme-2].max_bytes_per_min: must be 1..2000000000",
    ]
    for want in expected:
        assert any(p.startswith(want) for p in problems), (want, problems)


def test_a_service_principal_needs_a_keyvault_secret_and_its_ids() -> None:
    raw = _raw()
    raw["targets"][1].update(credential="service_principal", client_secret="s3cret",
                             tenant_id="")
    problems = _problems(raw)
    assert "targets[globex].tenant_id: required with credential = 'service_principal'" in problems
    assert any(p.startswith("targets[globex].client_secret: must be a keyvault:") for p in problems)


def test_validate_config_prints_the_problems(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[[sources]]
name = "trail"
bucket = "b"
format = "cloudtrail"

[[targets]]
name = "main"
endpoint = "https://x.example"

[[targets.dcrs]]
name = "one"
id = "dcr-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
streams = ["Custom-AWSVPCFlow"]
""")
    assert main(["validate-config", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "targets[main].dcrs: stream Custom-AWSCloudTrail (source 'trail' -> AWSCloudTrail) " \
           "is on no DCR" in err


def test_credentials_per_kind(tmp_path: Path) -> None:
    import azure.identity as ai

    token = tmp_path / "token"
    token.write_text("eyJ.fake.jwt")

    def target(kind: str, **kw: str) -> TargetConfig:
        return TargetConfig("t", [], credential=kind, **kw)  # type: ignore[arg-type]

    assert isinstance(make_credential(target("managed_identity", client_id="c")),
                      ai.ManagedIdentityCredential)
    assert isinstance(make_credential(target("workload_identity", client_id="c", tenant_id="t",
                                             token_file=str(token))),
                      ai.WorkloadIdentityCredential)
    secrets = {"keyvault:sp": "the-secret"}
    sp = make_credential(target("service_principal", client_id="c", tenant_id="t",
                                client_secret="keyvault:sp"), secrets.__getitem__)
    assert isinstance(sp, ai.ClientSecretCredential)
    with pytest.raises(ValueError, match="Key Vault"):
        make_credential(target("service_principal", client_id="c", tenant_id="t",
                               client_secret="keyvault:sp"))


def test_a_budget_never_lets_a_minute_take_more_than_the_limit() -> None:
    """Simulated time: a sender that always sends as soon as the budget allows never puts
    more than the limit into any 60-second window, and sends at the limit's rate."""
    now = [0.0]
    budget = Budget(1_000_000, 100, lambda: now[0])
    sent: list[tuple[float, int]] = []
    size = 30_000
    while now[0] < 600:
        wait = budget.wait_secs(size)
        now[0] += wait
        budget.take(size)
        sent.append((now[0], size))
        now[0] += 0.001
    for i, (t, _) in enumerate(sent):
        window = sum(s for u, s in sent[i:] if u < t + WINDOW_SECS - 1)
        assert window <= 1_000_000, (t, window)
    rate = sum(s for t, s in sent if t > 60) / (sent[-1][0] - 60)
    assert 0.9 * 1_000_000 / 60 <= rate <= 1_000_000 / 60 * 1.01
    # A 429 pauses it for the Retry-After, and empties the bucket.
    budget.pause(5.0, throttled=True)
    assert budget.wait_secs(size) >= 5.0
