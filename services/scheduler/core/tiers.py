"""Tier limits: the defaults per tier and the parsing of a limits file. Pure: no I/O.

A limits file (TOML, SCHEDULER_LIMITS_FILE) overrides any of the defaults:

    [free]
    parameters_per_workflow = 10
    runners = 2
    templates = 5
    concurrent_workflows = 2

    [pro]
    runners = 20

A tier or a key that is not known is an error at start, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass

TIERS = ("free", "pro", "plus", "enterprise")


@dataclass(frozen=True)
class TierLimits:
    """What one tier allows (counts; concurrent = workflows not yet finished)."""

    parameters_per_workflow: int
    runners: int
    templates: int
    concurrent_workflows: int


DEFAULT_LIMITS: Mapping[str, TierLimits] = {
    "free": TierLimits(parameters_per_workflow=10, runners=2, templates=5, concurrent_workflows=2),
    "pro": TierLimits(parameters_per_workflow=50, runners=10, templates=50, concurrent_workflows=10),
    "plus": TierLimits(parameters_per_workflow=100, runners=25, templates=200, concurrent_workflows=25),
    "enterprise": TierLimits(parameters_per_workflow=1000, runners=1000, templates=10000, concurrent_workflows=1000),
}

# The 403 messages (API.md, and ComfyControl's own wording for runners and templates).
MESSAGES = {
    "parameters_per_workflow": "workflow parameter limit exceeded for your tier",
    "runners": "Runner limit exceeded for your tier",
    "templates": "template limit exceeded for your tier",
    "concurrent_workflows": "concurrent workflow limit exceeded for your tier",
}


class LimitsFileError(ValueError):
    """The limits file is not valid TOML or names an unknown tier or key."""


def parse_limits(text: str) -> dict[str, TierLimits]:
    """The defaults with the file's overrides applied."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise LimitsFileError(f"the limits file is not valid TOML: {err}") from None
    keys = {f.name for f in dataclasses.fields(TierLimits)}
    limits = dict(DEFAULT_LIMITS)
    for tier, values in data.items():
        if tier not in TIERS or not isinstance(values, dict):
            raise LimitsFileError(f"unknown tier {tier!r} in the limits file: expected {', '.join(TIERS)}")
        for key, value in values.items():
            if key not in keys:
                raise LimitsFileError(f"unknown limit {key!r} for tier {tier}: expected {', '.join(sorted(keys))}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise LimitsFileError(f"limit {tier}.{key} must be an integer >= 0, got {value!r}")
        limits[tier] = dataclasses.replace(limits[tier], **values)
    return limits


def for_tier(limits: Mapping[str, TierLimits], tier: str) -> TierLimits:
    """An unknown tier gets the free tier's limits."""
    return limits.get(tier, limits["free"])
