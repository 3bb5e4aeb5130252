"""What a data collection rule may still take, and which rule a request goes to.

Each DCR ingests at most so many bytes and requests per minute (2 GB and 12,000 by
default). :class:`Budget` keeps one DCR under both, by construction rather than by 429s:

- a sliding window of the last :data:`WINDOW_SECS` (a minute, plus a second of margin for
  the time a request takes to reach the service) holds what was sent, and a request that
  would take the window past a limit waits until enough of it has aged out;
- a token bucket refilled at ``limit / 60`` per second and holding a sixth of a minute paces
  the requests, so a DCR's minute is spread over the minute instead of spent in a burst.

A 429 still happens when something else sends to the same DCR: the rule is then paused
for the ``Retry-After`` the service gave, and its bucket emptied.

:func:`pick` chooses, among the DCRs that carry a stream, the one that can take a request
soonest (most budget left on a tie), so one throttled DCR never stalls the others, and a
storm of 429s on one rule moves work to the others only as far as their own budgets allow.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

__all__ = ["WINDOW_SECS", "Budget", "pick"]

WINDOW_SECS = 61.0
"""The service's limits are per minute; one second more covers the way to the service."""
BURST_SECS = 10.0
"""The bucket holds this many seconds of the per-minute rate."""


class Budget:
    """Pacing of one DCR: bytes and requests per minute, and a pause after a 429.

    :arg bytes_per_min: Uncompressed request bytes the DCR takes per minute.
    :arg requests_per_min: Requests it takes per minute.
    :arg clock: Monotonic seconds.
    """

    def __init__(self, bytes_per_min: float, requests_per_min: float,
                 clock: Callable[[], float]) -> None:
        self.limits = (float(bytes_per_min), float(requests_per_min))
        self._rates = (bytes_per_min / 60.0, requests_per_min / 60.0)
        self._caps = tuple(r * BURST_SECS for r in self._rates)
        self._tokens = list(self._caps)
        self._clock = clock
        self._at = clock()
        self._sent: deque[tuple[float, int]] = deque()  # (time, bytes) within the window
        self._window_bytes = 0
        self.paused_until = 0.0
        """Monotonic time before which the DCR is not sent to (a 429's Retry-After, or the
        back-off after a failure)."""

    def _advance(self, now: float) -> None:
        elapsed = max(0.0, now - self._at)
        self._at = now
        for i, (rate, cap) in enumerate(zip(self._rates, self._caps, strict=True)):
            self._tokens[i] = min(cap, self._tokens[i] + rate * elapsed)
        while self._sent and self._sent[0][0] <= now - WINDOW_SECS:
            self._window_bytes -= self._sent.popleft()[1]

    def wait_secs(self, nbytes: int) -> float:
        """Seconds until a request of ``nbytes`` fits (0: now)."""
        now = self._clock()
        self._advance(now)
        wait = max(0.0, self.paused_until - now)
        # The bucket: a request larger than the bucket waits for a full one and overdraws it.
        for tokens, rate, want in zip(self._tokens, self._rates,
                                      (min(nbytes, self._caps[0]), 1.0), strict=True):
            if tokens < want:
                wait = max(wait, (want - tokens) / rate)
        # The window: wait until the oldest requests have left it.
        max_bytes, max_requests = self.limits
        excess_bytes = self._window_bytes + nbytes - max_bytes
        excess_requests = len(self._sent) + 1 - max_requests
        freed_bytes = 0
        for freed_requests, (t, size) in enumerate(self._sent):
            if freed_bytes >= excess_bytes and freed_requests >= excess_requests:
                break
            freed_bytes += size
            wait = max(wait, t + WINDOW_SECS - now)
        return wait

    def take(self, nbytes: int) -> None:
        """Charge a request of ``nbytes``, sent now."""
        now = self._clock()
        self._advance(now)
        self._tokens[0] -= nbytes
        self._tokens[1] -= 1
        self._sent.append((now, nbytes))
        self._window_bytes += nbytes

    def pause(self, secs: float, *, throttled: bool) -> None:
        """Send nothing to this DCR for ``secs``; a throttle (429) also empties the bucket,
        since the service says the minute's budget is spent."""
        now = self._clock()
        self._advance(now)
        self.paused_until = max(self.paused_until, now + secs)
        if throttled:
            self._tokens = [min(t, 0.0) for t in self._tokens]

    def left(self) -> tuple[float, float]:
        """Fractions of a minute's bytes and requests the window still has room for."""
        self._advance(self._clock())
        return (1.0 - self._window_bytes / self.limits[0], 1.0 - len(self._sent) / self.limits[1])


def pick(budgets: Sequence[Budget], nbytes: int, start: int = 0) -> tuple[int, float]:
    """(index, wait) of the budget that takes a request of ``nbytes`` soonest; on a tie the
    one with most bytes left, then the first from ``start`` (round robin)."""
    best, best_key = 0, (float("inf"), 0.0)
    n = len(budgets)
    for k in range(n):
        i = (start + k) % n
        key = (budgets[i].wait_secs(nbytes), -budgets[i].left()[0])
        if key < best_key:
            best, best_key = i, key
    return best, best_key[0]
