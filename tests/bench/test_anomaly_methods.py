"""``bench/anomaly_methods.py``: our scorer's figures without river, and river's path when
river is importable (it is kept out of the project venv, so that test is usually skipped)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from bench.anomaly_methods import RIVER_VERSION, main
from bench.workload import SCENARIOS


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, dict[str, Any]]:
    assert main(["--events", "20000", "--seed", "1", "--json", *args]) == 0
    out = capsys.readouterr().out
    return out, json.loads(out.strip().splitlines()[-1])


def test_ours_without_river(capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "river", None)  # import river raises ImportError
    out, r = _run(capsys)
    assert f"pip install river=={RIVER_VERSION}" in out
    assert r["river_version"] is None
    assert not any(k.startswith("river_hst") for k in r)
    assert r["ours_classes_detected"] == len(SCENARIOS)
    for name in SCENARIOS:
        assert r[f"ours_{name}_detected"] >= 1, name
        assert r["ours"]["scenarios"][name]["record_recall"] > 0, name
    assert r["ours_recall"] == 1.0
    assert 0.8 <= r["ours_precision"] <= 1.0
    assert 0 <= r["ours_fp_per_million"] < 50
    assert r["ours_threshold"] == 0.8
    assert r["ours_events_per_cpu_sec"] > 1000
    assert r["ours_state_bytes"] > 0
    assert r["ours"]["reasons"]["detected"], "detected records carry reasons"


def test_river_path(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("river.anomaly")
    out, r = _run(capsys, "--no-per-principal", "--window", "1000")
    assert r["river_version"]
    assert "river_hst_pp_recall_at_our_fp" not in r
    for suffix in ("at_our_fp", "at_50_fp_per_million", "best_f1"):
        assert 0.0 <= r[f"river_hst_recall_{suffix}"] <= 1.0
        assert 0.0 <= r[f"river_hst_precision_{suffix}"] <= 1.0
        assert r[f"river_hst_fp_per_million_{suffix}"] >= 0
    # the matched threshold never makes more false positives than ours
    assert r["river_hst_false_positives_at_our_fp"] <= r["ours_false_positives"]
    assert r["river_hst_events_per_cpu_sec"] > 0 and r["river_hst_state_bytes"] > 0
    assert "HalfSpaceTrees" in out
