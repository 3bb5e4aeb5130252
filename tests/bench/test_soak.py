"""``bench/soak.py``: its slope, and a short real run (continuous flow, recovery store,
seeder) that must deliver every event once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.soak import main, slope_per_hour, traced


def test_slope_is_mb_per_hour_of_a_least_squares_line() -> None:
    assert slope_per_hour([(0.0, 100.0), (60.0, 101.0), (120.0, 102.0)]) == pytest.approx(60.0)
    assert slope_per_hour([(0.0, 100.0), (60.0, 102.0), (120.0, 100.0)]) == pytest.approx(0.0)
    assert slope_per_hour([(0.0, 100.0)]) == 0.0


def test_traced_growth_names_the_line_that_kept_memory(tmp_path) -> None:
    import tracemalloc

    kept: list[bytes] = []
    tracemalloc.start()
    try:
        for n in range(1, 4):
            kept.extend(bytes(1000 + i) for i in range(500))  # ~0.5 MB a minute, kept
            tracemalloc.take_snapshot().dump(str(tmp_path / f"snap-{n:04d}.tracemalloc"))
    finally:
        tracemalloc.stop()
    got = traced(tmp_path, warm_secs=60.0, every=60.0)
    assert got["traced_from_snapshot"] == 1
    where, kb, blocks = got["traced_growth"][0]
    assert where.endswith("test_soak.py:" + str(_line_of("kept.extend")))
    assert kb > 900 and blocks >= 1000
    assert got["traced_mb_by_snapshot"][2] > got["traced_mb_by_snapshot"][0]


def _line_of(text: str) -> int:
    from pathlib import Path

    lines = Path(__file__).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line and "kept:" not in line)


@pytest.mark.slow
def test_a_short_soak_delivers_every_event_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--minutes", "0.4", "--tick-secs", "2", "--sample-secs", "1", "--json"]) == 0
    out = capsys.readouterr().out
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert figures["events_delivered"] == figures["events_seeded"] > 0
    assert figures["objects"] == 9 * figures["deliveries"]
    assert figures["rss_after_warmup_mb"] > 0 and figures["samples"] >= 10
