"""The retry schedule: exponential ceilings, full jitter by default, the 24 h window."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.scheduler.webhooks.backoff import RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(("failures", "ceiling"), [
    (1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0),  # 5 * 2 ** (n - 1)
    (10, 2560.0), (11, 3600.0), (500, 3600.0),  # capped at an hour
])
def test_ceilings_double_up_to_the_cap(failures: int, ceiling: float) -> None:
    assert RetryPolicy().ceiling(failures) == ceiling


def test_full_jitter_spreads_waits_over_zero_to_the_ceiling() -> None:
    policy, rng = RetryPolicy(), random.Random(7)
    waits = [policy.delay(3, rng.random()) for _ in range(2000)]
    assert 0 <= min(waits) < 1.0 and 19.0 < max(waits) <= 20.0
    assert 8.5 < sum(waits) / len(waits) < 11.5  # uniform over [0, 20]: mean 10


def test_partial_jitter_keeps_gaps_growing() -> None:
    policy = RetryPolicy(base_seconds=0.3, cap_seconds=10, max_age_seconds=60, jitter=0.25)
    for n in range(1, 5):
        assert policy.delay(n, 0.999) <= policy.ceiling(n) < policy.delay(n + 1, 0.999) < policy.delay(n + 1, 0.0)


def test_the_window_ends_retries() -> None:
    policy = RetryPolicy(jitter=0.0)
    assert policy.next_attempt(T0, T0, 1, 0.5) == T0 + timedelta(seconds=5)
    late = T0 + timedelta(hours=23, minutes=59)
    assert policy.next_attempt(T0, late, 12, 0.0) is None  # an hour more would pass 24 h
    assert policy.next_attempt(T0, late, 1, 0.0) == late + timedelta(seconds=5)


def test_a_day_of_full_retries_is_about_thirty_attempts() -> None:
    policy, now, count = RetryPolicy(jitter=0.0), T0, 0
    while (at := policy.next_attempt(T0, now, count + 1, 0.0)) is not None:
        now, count = at, count + 1
    assert 25 <= count <= 35 and now <= T0 + timedelta(days=1)


@pytest.mark.parametrize("bad", [dict(base_seconds=0), dict(base_seconds=10, cap_seconds=5),
                                 dict(max_age_seconds=0), dict(jitter=1.5)])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**bad)
