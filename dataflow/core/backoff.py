"""Exponential back-off with jitter: one implementation for every retry of the project.

The S3 source, the Sentinel sink and the webhooks retry at different paces but the same
way: the n-th retry waits ``base * 2**(n-1)`` capped at ``cap``, with jitter so that many
workers do not retry in step. The source never sleeps (it sets when to look again through
bytewax's ``next_awake``); :class:`Backoff` keeps that state, :func:`delay_secs` is the wait.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

__all__ = ["Backoff", "delay_secs", "retry_after_secs"]


def delay_secs(attempt: int, base_secs: float, cap_secs: float, *, full_jitter: bool = True,
               uniform: Callable[[float, float], float] = random.uniform) -> float:
    """The wait before retry ``attempt`` (1 for the first): ``base * 2**(attempt-1)`` capped
    at ``cap``, then jittered: anywhere in ``[0, d]`` (full jitter, the default) or in
    ``[d/2, d]`` (equal jitter: never much shorter than planned)."""
    d = min(cap_secs, base_secs * 2 ** max(0, attempt - 1))
    return uniform(0.0, d) if full_jitter else uniform(d / 2, d)


class Backoff:
    """The attempts of one retried operation and when to try again (never a sleep).

    :arg base_secs: The first wait; it doubles per attempt.
    :arg cap_secs: The longest wait.
    """

    def __init__(self, base_secs: float = 1.0, cap_secs: float = 60.0, *,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.base_secs = base_secs
        self.cap_secs = cap_secs
        self._uniform = uniform
        self.attempts = 0
        self.wake_at: datetime | None = None
        self.last_delay_secs = 0.0

    def fail(self, now: datetime) -> float:
        """One more failure: set ``wake_at`` (equal jitter) and return the wait in seconds."""
        self.attempts += 1
        self.last_delay_secs = delay_secs(self.attempts, self.base_secs, self.cap_secs,
                                          full_jitter=False, uniform=self._uniform)
        self.wake_at = now + timedelta(seconds=self.last_delay_secs)
        return self.last_delay_secs

    def reset(self) -> None:
        """The operation succeeded: the next failure starts from the first wait again."""
        self.attempts = 0


def retry_after_secs(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date (RFC 9110
    allows both); None when absent or unreadable. A date in the past means no wait."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about the local zone
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
