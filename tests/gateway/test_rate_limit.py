"""The rate limiter's arithmetic (a sliding log per key), with the clock passed in."""

from __future__ import annotations

import pytest

from services.gateway.rate_limit import RateLimiter


@pytest.mark.parametrize(("hits", "expected"), [
    # limit 2 per 10 s: the third hit at t=1 waits until the first (t=0) leaves the window: 10 - 1 = 9 s
    ([0, 0.5, 1], [None, None, 9.0]),
    # at t=10 the hit at t=0 has left the window (it is exactly 10 s old)
    ([0, 5, 10], [None, None, None]),
    # refused hits do not count: at t=10.5 only t=5 is in the window
    ([0, 5, 6, 10.5], [None, None, 4.0, None]),
])
def test_hits_within_the_window_are_counted(hits: list[float], expected: list[float | None]) -> None:
    limiter = RateLimiter(limit=2, window_seconds=10)
    assert [limiter.hit("token", t) for t in hits] == expected


def test_keys_have_their_own_budgets() -> None:
    limiter = RateLimiter(limit=1, window_seconds=10)
    assert limiter.hit("a", 0) is None and limiter.hit("b", 0) is None
    assert limiter.hit("a", 1) == 9.0
