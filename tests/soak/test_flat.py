"""The soak test's "is it flat" verdicts (tests/soak/flat.py) on made-up series: flat ones,
noisy or stepping, must pass; leaking ones, even slow or hidden in noise, must fail. This is
what shows the soak test's checks can fail."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from tests.soak.flat import Margin, returned, slope, thirds, verdict
from tests.soak.test_soak import FD_MARGIN, FD_SLACK, RSS_MARGIN

SECONDS = 60  # the short soak: one sample a second


def series(value: Callable[[int], float], seconds: int = SECONDS) -> list[tuple[float, float]]:
    return [(float(t), float(value(t))) for t in range(seconds + 1)]


def noisy(base: float, spread: float, seed: int = 1) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return series(lambda _t: base + rng.uniform(-spread, spread))


# (what, RSS MiB series, flat?)
RSS_CASES = [
    ("constant", series(lambda _t: 80.0), True),
    ("noise of +-3 MiB", noisy(80.0, 3.0), True),
    ("a warm-up step in the first third", series(lambda t: 70.0 if t < 15 else 82.0), True),
    ("GC sawtooth of 4 MiB", series(lambda t: 80.0 + (t % 7) * 4 / 6), True),
    ("a few 40 MiB spikes near the end", series(lambda t: 120.0 if t in (50, 55, 58) else 80.0), True),
    ("slowly shrinking", series(lambda t: 90.0 - t / 10), True),
    ("1.5 MiB more per third, in noise", [(t, v + t * 0.075) for t, v in noisy(80.0, 1.0)], True),
    ("leaking 1 MiB/s", series(lambda t: 80.0 + t), False),
    ("leaking 12 MiB/min (200 kB/s)", series(lambda t: 50.0 + t * 0.2), False),
    ("leaking 0.5 MiB/s in +-3 MiB noise", [(t, v + t / 2) for t, v in noisy(80.0, 3.0, seed=2)], False),
    ("a step up of 20 MiB in the last third", series(lambda t: 80.0 if t < 45 else 100.0), False),
    ("large process leaking 8 %", series(lambda t: 400.0 + t * 32 / 20), False),
]


@pytest.mark.parametrize(("what", "samples", "flat"), RSS_CASES, ids=[c[0] for c in RSS_CASES])
def test_rss_verdicts(what: str, samples: list[tuple[float, float]], flat: bool) -> None:
    judged = verdict(samples, RSS_MARGIN)
    assert judged.flat is flat, (what, judged)


FD_CASES = [
    ("connections coming and going", [(t, 30 + (t * 7) % 9) for t, _ in series(lambda _t: 0)], True),
    ("one fd per 2 s kept open", series(lambda t: 30 + t // 2), False),
    ("one fd per request kept (4/s)", series(lambda t: 30 + 4 * t), False),
]


@pytest.mark.parametrize(("what", "samples", "flat"), FD_CASES, ids=[c[0] for c in FD_CASES])
def test_fd_verdicts(what: str, samples: list[tuple[float, float]], flat: bool) -> None:
    assert verdict(samples, FD_MARGIN).flat is flat, what


def test_the_figures_are_the_medians_of_each_third_and_the_slope_per_minute() -> None:
    judged = verdict(series(lambda t: 10.0 + 2 * t), Margin(absolute=1.0, relative=0.0))
    # thirds of 0..60 s: t in [0, 20), [20, 40), [40, 60]; medians at t = 9.5, 29.5, 50
    assert (judged.start, judged.middle, judged.end) == (29.0, 69.0, 110.0)
    assert judged.slope_per_minute == pytest.approx(120.0)
    assert judged.growth == 41.0 and judged.allowed == 1.0 and not judged.flat
    assert slope([(0.0, 5.0), (1.0, 5.0)]) == 0.0


def test_the_margin_is_the_larger_of_absolute_and_relative() -> None:
    assert Margin(absolute=3.0, relative=0.04).allowed(40.0) == 3.0
    assert Margin(absolute=3.0, relative=0.04).allowed(400.0) == 16.0


def test_thirds_are_cut_by_time_and_too_few_samples_cannot_be_judged() -> None:
    first, second, last = thirds([(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (6, 3)])
    assert (first, second, last) == ([1, 1], [2, 2], [3, 3])
    with pytest.raises(ValueError, match="at least 6"):
        thirds([(0, 1), (1, 1), (2, 1)])
    with pytest.raises(ValueError, match="no time"):
        thirds([(0, 1)] * 6)


@pytest.mark.parametrize(("baseline", "after", "back"), [(40, 40, True), (40, 43, True), (40, 12, True),
                                                         (40, 44, False), (40, 90, False)])
def test_fds_must_come_back_to_within_the_slack(baseline: int, after: int, back: bool) -> None:
    assert returned(baseline, after, FD_SLACK) is back
