"""The local stack says which server died at start, with its last lines and the fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devstack.stack import LocalStack


def test_a_server_that_exits_at_start_is_named_with_its_last_lines(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = LocalStack._spawn

    def spawn(self: LocalStack, name: str, cmd: list[str], env: object = None) -> None:
        if name == "moto":  # as when only `pip install -e .` was run: moto is not installed
            cmd = [sys.executable, "-m", "moto_is_not_installed_here"]
        real(self, name, cmd, env)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalStack, "_spawn", spawn)
    with pytest.raises(RuntimeError) as ex:
        LocalStack(tmp_path).start()
    text = str(ex.value)
    assert "moto exited with status 1 while starting" in text
    assert "No module named moto_is_not_installed_here" in text
    assert "pip install -e '.[devstack]'" in text
