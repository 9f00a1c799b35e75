"""Is a resource series flat? The soak test's verdicts, pure (no I/O, no clock).

A series is (seconds, value) samples of one process's RSS or open fds taken while the load
ran, after a warm-up phase. On a shared, noisy machine a single sample means little, and a
Python process's RSS moves in steps (arenas, GC, caches filled on first use), so:

- the samples are cut into three thirds by time; `start`, `middle`, `end` are each third's
  median (a few spikes do not move a median);
- the series is flat when `end - middle <= max(absolute, relative * middle)`: growth in the
  last third over the second is what a leak shows and a warm-up step does not (the first
  third may still hold a step, so it is reported, not judged);
- the least-squares slope over all samples is reported per minute, to read, not judged.

Open fds also have to come back once the load stops: `returned(baseline, after, slack)`,
the idle count after the load against the idle count after the warm-up.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

Series = Sequence[tuple[float, float]]  # (seconds, value), in time order


@dataclass(frozen=True)
class Margin:
    """Growth allowed from the middle third to the last: the larger of the two."""

    absolute: float
    relative: float

    def allowed(self, middle: float) -> float:
        return max(self.absolute, self.relative * abs(middle))


@dataclass(frozen=True)
class Verdict:
    start: float  # medians of the three thirds
    middle: float
    end: float
    slope_per_minute: float  # least squares over every sample
    allowed: float  # growth allowed from middle to end
    samples: int

    @property
    def growth(self) -> float:
        return self.end - self.middle

    @property
    def flat(self) -> bool:
        return self.growth <= self.allowed


MIN_SAMPLES = 6  # two per third at least


def thirds(series: Series) -> tuple[list[float], list[float], list[float]]:
    """The values of the first, second and last third of the series' time span."""
    if len(series) < MIN_SAMPLES:
        raise ValueError(f"{len(series)} samples: at least {MIN_SAMPLES} are needed to judge")
    t0, t1 = series[0][0], series[-1][0]
    span = t1 - t0
    if span <= 0:
        raise ValueError("the samples span no time")
    parts: tuple[list[float], list[float], list[float]] = ([], [], [])
    for t, value in series:
        parts[min(2, int(3 * (t - t0) / span))].append(value)
    if not all(parts):
        raise ValueError("a third of the span holds no sample")
    return parts


def slope(series: Series) -> float:
    """Least-squares slope of value over seconds."""
    n = len(series)
    mean_t = sum(t for t, _ in series) / n
    mean_v = sum(v for _, v in series) / n
    var = sum((t - mean_t) ** 2 for t, _ in series)
    if var == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in series) / var


def verdict(series: Series, margin: Margin) -> Verdict:
    first, second, last = thirds(series)
    middle = statistics.median(second)
    return Verdict(start=statistics.median(first), middle=middle, end=statistics.median(last),
                   slope_per_minute=60 * slope(series), allowed=margin.allowed(middle), samples=len(series))


def returned(baseline: float, after: float, slack: float) -> bool:
    """Whether a count (open fds) came back to within `slack` of its idle baseline."""
    return after <= baseline + slack
