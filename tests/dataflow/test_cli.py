"""The s3sentinel command: validate-config reports every problem; run refuses a bad config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dataflow.cli import main
from tests.conftest import ROOT


def test_validate_config_accepts_the_demo_and_its_deployed_targets(tmp_path: Path,
                                                                  capsys) -> None:
    """The demo's single-DCR form is valid with a warning (it may send more streams than one
    DCR declares); with the section `s3sentinel targets` makes of the deployment's outputs in
    its place, it is valid without one."""
    import json

    from dataflow.config import load_config
    from dataflow.dcr import dcr_template
    from dataflow.tables import tables_for
    from devstack.deploy import deploy

    demo = ROOT / "examples" / "demo.toml"
    assert main(["validate-config", "-c", str(demo)]) == 0
    assert "one DCR declares at most 10" in capsys.readouterr().err  # the single-DCR form
    tables = tables_for(load_config(demo, environ={}, need_target=False))
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps(deploy(dcr_template(tables.values()), "https://e.example",
                                         tables).outputs))
    assert main(["targets", str(outputs)]) == 0
    section = capsys.readouterr().out
    config = tmp_path / "demo.toml"
    text = "\n".join(line for line in demo.read_text().splitlines()
                     if not line.startswith(("endpoint =", "rule_id =")))
    config.write_text(text.replace('"examples/', f'"{ROOT}/examples/') + "\n" + section)
    assert main(["validate-config", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "cloudtrail (cloudtrail -> AWSCloudTrail)" in out


def test_validate_config_lists_every_problem_with_its_key(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("""
[sentinel]
endpoint = "https://dce.example"
rule_id = "dcr-1"
colour = "blue"

[batch]
max_age = 5

[[sources]]
name = "trail"
bucket = "b"
format = "cloudtrail"
table = "AWSCloudTrail"
partitions = "two"
""")
    assert main(["validate-config", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "sentinel.colour: unknown key" in err
    assert "batch.max_age: unknown key" in err
    assert "sources[trail].partitions: expected int" in err


def test_validate_config_names_an_undefined_table(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("""
[sentinel]
endpoint = "https://dce.example"
rule_id = "dcr-1"
[[sources]]
name = "app"
bucket = "b"
format = "ndjson"
table = "Missing_CL"
""")
    assert main(["validate-config", "-c", str(cfg)]) == 1
    assert "table 'Missing_CL', which is not defined" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "s3sentinel"
    proc = subprocess.run([str(exe), "deploy", "-c", str(ROOT / "examples/demo.toml")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert '"dataCollectionRules"' in proc.stdout or "dataCollectionRules" in proc.stdout


def _captured_run(monkeypatch, tmp_path: Path, *args: str) -> list[str]:
    import dataflow.cli as cli

    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[sentinel]
endpoint = "https://dce.example"
rule_id = "dcr-1"
[runtime]
recovery_dir = "{tmp_path / 'recovery'}"
snapshot_secs = 7
[[sources]]
name = "trail"
bucket = "b"
format = "cloudtrail"
""")
    seen: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, cmd: seen.append(cmd))
    # run sets both in os.environ (for bytewax.run); monkeypatch removes them afterwards.
    monkeypatch.setenv("S3SENTINEL__RUNTIME__MODE", "continuous")
    monkeypatch.setenv("S3SENTINEL_CONFIG", str(cfg))
    assert main(["run", "-c", str(cfg), *args]) == 0
    return seen[0]


def test_run_turns_recovery_on_in_continuous_mode(monkeypatch, tmp_path: Path) -> None:
    cmd = _captured_run(monkeypatch, tmp_path)
    assert cmd[cmd.index("-r") + 1] == str(tmp_path / "recovery")
    assert cmd[cmd.index("-s") + 1] == "7" and cmd[cmd.index("-b") + 1] == "0"
    assert list((tmp_path / "recovery").glob("part-*.sqlite3"))  # created on first start
    assert "-r" not in _captured_run(monkeypatch, tmp_path, "--no-recovery")
    assert "-r" not in _captured_run(monkeypatch, tmp_path, "--catch-up")


def test_the_config_may_be_given_as_a_positional_path(capsys, monkeypatch) -> None:
    monkeypatch.delenv("S3SENTINEL_CONFIG", raising=False)
    demo = str(ROOT / "examples" / "demo.toml")
    assert main(["validate-config", demo]) == 0
    assert "valid" in capsys.readouterr().out
    assert main(["replay", demo, "--dry-run", "--since", "not-a-time"]) == 2  # got the config
    assert "no config file" not in capsys.readouterr().err
    assert main(["dcr", demo, "--tables", "AWSCloudTrail"]) == 0
    assert '"Custom-AWSCloudTrail"' in capsys.readouterr().out


def test_validate_config_says_what_auto_means(capsys) -> None:
    assert main(["validate-config", "-c", str(ROOT / "examples" / "demo.toml")]) == 0
    out = capsys.readouterr().out
    assert "-> None" not in out
    assert "auto: format detected per object" in out


def test_validate_config_reports_a_missing_ca_file(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[sentinel]
endpoint = "https://dce.example"
rule_id = "dcr-1"
ca_file = "{tmp_path / 'nope.pem'}"
[[sources]]
name = "trail"
bucket = "b"
format = "cloudtrail"
""")
    assert main(["validate-config", str(cfg)]) == 1
    assert "sentinel.ca_file" in capsys.readouterr().err
    (tmp_path / "nope.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    assert main(["validate-config", str(cfg)]) == 0


def test_version_prints_the_installed_version(capsys) -> None:
    import importlib.metadata

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == (
        f"s3sentinel {importlib.metadata.version('s3sentinel')}")


def test_help_says_what_the_tool_is(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "Microsoft Sentinel" in out and "AWS S3" in out
    assert "``" not in out  # no reStructuredText quotes from the module docstring


def test_each_process_creates_its_own_share_of_recovery_partitions(tmp_path: Path) -> None:
    from dataflow.cli import init_recovery
    from dataflow.locality import ClusterShape

    hosts = [tmp_path / f"host-{i}" for i in range(3)]
    for i, host in enumerate(hosts):
        assert init_recovery(host / "recovery", 2, ClusterShape(i, 3, 1), host / "journal")
    parts = [sorted(p.name for p in (h / "recovery").iterdir()) for h in hosts]
    assert parts == [["part-0.sqlite3", "part-3.sqlite3"], ["part-1.sqlite3", "part-4.sqlite3"],
                     ["part-2.sqlite3", "part-5.sqlite3"]]
    # A restart leaves them; a volume that joins a running cluster (it has journals) gets
    # none, but its directory, which bytewax wants.
    assert not init_recovery(hosts[0] / "recovery", 2, ClusterShape(0, 3, 1))
    joined = tmp_path / "host-3"
    (joined / "journal").mkdir(parents=True)
    (joined / "journal" / "journal-w0.jsonl").write_text("")
    assert not init_recovery(joined / "recovery", 2, ClusterShape(3, 4, 1), joined / "journal")
    assert (joined / "recovery").is_dir() and not any((joined / "recovery").iterdir())
