"""``bench/soak.py``: its slope, and a short real run (continuous flow, recovery store,
seeder) that must deliver every event once."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench.soak import main, slope_per_hour


def test_slope_is_mb_per_hour_of_a_least_squares_line() -> None:
    assert slope_per_hour([(0.0, 100.0), (60.0, 101.0), (120.0, 102.0)]) == pytest.approx(60.0)
    assert slope_per_hour([(0.0, 100.0), (60.0, 102.0), (120.0, 100.0)]) == pytest.approx(0.0)
    assert slope_per_hour([(0.0, 100.0)]) == 0.0


@pytest.mark.slow
def test_a_short_soak_delivers_every_event_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--minutes", "0.4", "--tick-secs", "2", "--sample-secs", "1", "--json"]) == 0
    out = capsys.readouterr().out
    figures: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert figures["events_delivered"] == figures["events_seeded"] > 0
    assert figures["objects"] == 9 * figures["deliveries"]
    assert figures["rss_after_warmup_mb"] > 0 and figures["samples"] >= 10
