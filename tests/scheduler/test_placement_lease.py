"""Lease settings: defaults (heartbeat 5 s, lease 15 s, 3 attempts), the environment, bad values."""

from __future__ import annotations

import pytest

from services.scheduler.config import Settings


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.heartbeat_seconds, s.lease_seconds, s.max_attempts) == (5.0, 15.0, 3)


def test_from_the_environment() -> None:
    s = Settings.from_env({"SCHEDULER_HEARTBEAT_SECONDS": "0.5", "SCHEDULER_LEASE_SECONDS": "2",
                           "SCHEDULER_MAX_ATTEMPTS": "5"})
    assert (s.heartbeat_seconds, s.lease_seconds, s.max_attempts) == (0.5, 2.0, 5)


@pytest.mark.parametrize("env", [
    {"SCHEDULER_HEARTBEAT_SECONDS": "15"},  # not below the 15 s lease: every beat would be late
    {"SCHEDULER_HEARTBEAT_SECONDS": "0"},
    {"SCHEDULER_LEASE_SECONDS": "4"},  # below the 5 s heartbeat
    {"SCHEDULER_MAX_ATTEMPTS": "0"},
])
def test_settings_that_cannot_work_are_refused_at_start(env: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="SCHEDULER_"):
        Settings.from_env(env)
