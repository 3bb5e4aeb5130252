"""dataflow.core.backoff: the one back-off with jitter the source, the sink and webhooks use."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dataflow.core.backoff import Backoff, delay_secs


def top(lo: float, hi: float) -> float:
    return hi


def bottom(lo: float, hi: float) -> float:
    return lo


@pytest.mark.parametrize(("attempt", "planned"), [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0),
                                                  (40, 30.0)])
def test_the_wait_doubles_per_attempt_up_to_the_cap(attempt: int, planned: float) -> None:
    assert delay_secs(attempt, 0.5, 30.0, uniform=top) == planned
    assert delay_secs(attempt, 0.5, 30.0, uniform=bottom) == 0.0  # full jitter: from 0
    assert delay_secs(attempt, 0.5, 30.0, full_jitter=False, uniform=bottom) == planned / 2


def test_backoff_sets_when_to_look_again_and_starts_over_after_a_success() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    b = Backoff(base_secs=1.0, cap_secs=60.0, uniform=top)
    assert [b.fail(now) for _ in range(3)] == [1.0, 2.0, 4.0] and b.attempts == 3
    assert b.wake_at == now + timedelta(seconds=4)
    b.reset()
    assert b.fail(now) == 1.0
