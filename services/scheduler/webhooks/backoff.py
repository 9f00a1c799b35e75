"""The retry schedule of a delivery: exponential backoff with jitter, within a window.

After the n-th failed attempt (n >= 1) the next one waits
    ceiling(n) = min(cap, base * 2 ** (n - 1))
less a random part of it: `jitter` 1.0 is "full jitter" (a uniform wait in [0, ceiling]),
0.0 none; in between, a wait in [(1 - jitter) * ceiling, ceiling]. A delivery whose next
attempt would fall after `window_start + max_age` has failed for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 5.0
    cap_seconds: float = 3600.0
    max_age_seconds: float = 24 * 3600.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.base_seconds <= self.cap_seconds:
            raise ValueError("the webhook retry base must be above 0 and at most the cap")
        if self.max_age_seconds <= 0:
            raise ValueError("the webhook retry window must be above 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("the webhook retry jitter must be between 0 and 1")

    def ceiling(self, failures: int) -> float:
        """The longest wait after `failures` failed attempts (1, 2, ...)."""
        exponent = min(max(failures, 1) - 1, 62)
        return min(self.cap_seconds, self.base_seconds * 2.0 ** exponent)

    def delay(self, failures: int, rand: float) -> float:
        """The wait after `failures` failed attempts, for `rand` uniform in [0, 1)."""
        ceiling = self.ceiling(failures)
        return ceiling * (1.0 - self.jitter * rand)

    def next_attempt(self, window_start: datetime, now: datetime, failures: int, rand: float) -> datetime | None:
        """When to try again after `failures` failed attempts; None when the window is over."""
        at = now + timedelta(seconds=self.delay(failures, rand))
        if at > window_start + timedelta(seconds=self.max_age_seconds):
            return None
        return at
