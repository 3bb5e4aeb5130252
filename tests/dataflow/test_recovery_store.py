"""``s3sentinel run`` makes the recovery store private: bytewax writes its SQLite files with
the process umask, and they hold pending rows and enrichment state (principals, addresses)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dataflow.cli import main


@pytest.fixture(autouse=True)
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _run(monkeypatch, tmp_path: Path, recovery: Path) -> list[str]:
    import dataflow.cli as cli

    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
[sentinel]
endpoint = "https://dce.example"
rule_id = "dcr-1"
[runtime]
mode = "continuous"
recovery_dir = "{recovery}"
recovery_partitions = 2
[[sources]]
name = "trail"
bucket = "b"
format = "cloudtrail"
""")
    seen: list[list[str]] = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, cmd: seen.append(cmd))
    monkeypatch.setenv("S3SENTINEL_CONFIG", str(cfg))
    assert main(["run", "-c", str(cfg)]) == 0
    return seen[0]


def modes(directory: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in sorted(directory.iterdir())}


def test_a_new_recovery_store_is_0700_with_0600_files(monkeypatch, tmp_path: Path) -> None:
    recovery = tmp_path / "state" / "recovery"
    cmd = _run(monkeypatch, tmp_path, recovery)
    assert cmd[cmd.index("-r") + 1] == str(recovery)
    assert stat.S_IMODE(recovery.stat().st_mode) == 0o700
    assert stat.S_IMODE(recovery.parent.stat().st_mode) == 0o700
    assert modes(recovery) == {"part-0.sqlite3": 0o600, "part-1.sqlite3": 0o600}


def test_an_existing_recovery_store_is_tightened(monkeypatch, tmp_path: Path) -> None:
    """A store created by an earlier version (0755, files 0644, a -wal file of a run)."""
    from bytewax.recovery import init_db_dir

    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)
    (recovery / "part-0.sqlite3-wal").write_bytes(b"")
    os.chmod(recovery, 0o755)
    assert set(modes(recovery).values()) == {0o644}
    _run(monkeypatch, tmp_path, recovery)
    assert stat.S_IMODE(recovery.stat().st_mode) == 0o700
    assert modes(recovery) == {"part-0.sqlite3": 0o600, "part-0.sqlite3-wal": 0o600}
