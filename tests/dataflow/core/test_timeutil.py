"""dataflow.core.timeutil.event_time: one reading of event times for every detector."""

from __future__ import annotations

from datetime import UTC, datetime

from dataflow.core.timeutil import event_time

T0 = datetime(2026, 11, 28, 14, 30, tzinfo=UTC).timestamp()


def test_iso_times_numbers_and_garbage() -> None:
    assert event_time("2026-11-28T14:30:00Z") == T0
    assert event_time("2026-11-28T14:30:00.250+00:00") == T0 + 0.25
    assert event_time("2026-11-28T15:30:00+01:00") == T0
    assert event_time(T0) == T0 and event_time(7) == 7.0
    assert event_time("yesterday") is None and event_time(None) is None
    assert event_time(True) is None and event_time(["2026"]) is None


def test_a_time_without_a_zone_is_utc_whatever_the_machine_says(monkeypatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert event_time("2026-11-28T14:30:00") == T0
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
