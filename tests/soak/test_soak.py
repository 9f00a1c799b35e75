"""Load and soak (issue 11, item 4): the suite as processes, two runners on ComfyUI doubles,
steady submissions and subscribers (tests/soak/load.py) for SOAK_SECONDS (60 in `make test`,
300 in `make soak`), while every service's RSS and open fds are sampled once a second.

    warm-up (load, then a burst of concurrent reads that fills the database pool)
      ->  idle: fd baseline  ->  load, sampled  ->  idle: fds back?

It checks that nothing failed (every create 201, every workflow completed, every SSE stream
well formed and closed after the terminal status), that RSS and fds stayed flat under load
(tests/soak/flat.py: median of the last third against the second, within the margins below),
and that each process's open fds came back to the idle baseline once the load stopped.
It prints the figures.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fleet import Fleet, fleet_suite, start_double
from tests.soak.flat import Margin, Verdict, returned, verdict
from tests.soak.load import TAGS, Load, Tally, burst
from tests.soak.probe import Sampler

SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
WARMUP = min(30.0, max(15.0, SECONDS / 10))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "0.25"))  # seconds between submissions
NODE_DELAY_MS = 60
SERVICES = ("storage", "scheduler", "gateway", "runner-one", "runner-two")
# Flat: RSS may grow from the middle third to the last by 3 MiB or 4 %, whichever is more;
# open fds under load by 5 or 10 % (connections come and go with the load); once the load
# has stopped, fds must be back within 3 of the idle count after the warm-up.
RSS_MARGIN = Margin(absolute=3.0, relative=0.04)
FD_MARGIN = Margin(absolute=5.0, relative=0.10)
FD_SLACK = 3
SETTLE_SECONDS = 20.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with fleet_suite(tmp_path / "var") as f:
        f.add_runner("one", start_double(tmp_path / "one", NODE_DELAY_MS), TAGS)
        f.add_runner("two", start_double(tmp_path / "two", NODE_DELAY_MS), TAGS)
        yield f


def settled_fds(sampler: Sampler, names: list[str]) -> dict[str, int]:
    """Open fds once they stop moving (the same two reads 1 s apart), within SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    last = {name: sampler.fds_now()[name] for name in names}
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = {name: sampler.fds_now()[name] for name in names}
        if now == last:
            break
        last = now
    return last


def fds_back(sampler: Sampler, baseline: dict[str, int]) -> dict[str, int]:
    """Open fds after the load, once every process is back to `baseline` or its count stops
    moving (the same two reads 1 s apart; closing a connection takes each side a moment), or
    as they are after SETTLE_SECONDS."""
    deadline = time.monotonic() + SETTLE_SECONDS
    last: dict[str, int] = {}
    while True:
        now = {name: sampler.fds_now()[name] for name in baseline}
        if all(now[n] <= baseline[n] for n in baseline) or now == last or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(1.0)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def report(tally: Tally, rss: dict[str, Verdict], fds: dict[str, Verdict], idle: dict[str, int],
           after: dict[str, int]) -> str:
    ms = [s * 1000 for s in tally.create_seconds]
    lines = [
        f"soak: {tally.seconds:.0f}s of load after a {WARMUP:.0f}s warm-up, on 2 runners",
        f"  submissions {tally.submitted} ({tally.submitted / max(tally.seconds, 1e-9):.2f}/s), "
        f"accepted {len(tally.accepted)}, completed {tally.completed}, problems {len(tally.problems)}",
        f"  create latency p50 {quantile(ms, 0.5):.0f} ms, p99 {quantile(ms, 0.99):.0f} ms, "
        f"max {max(ms, default=float('nan')):.0f} ms",
        f"  SSE frames {tally.frames}, subscriptions {dict(tally.modes)}, mid-stream reconnects "
        f"{tally.reconnects}; list/get/outputs calls {tally.reads}",
        f"  {'process':<11} {'RSS MiB start/mid/end':>24} {'MiB/min':>8} {'fds start/mid/end':>18} "
        f"{'fds/min':>8} {'idle fds before/after':>22}",
    ]
    for name in rss:
        r, f = rss[name], fds[name]
        lines.append(f"  {name:<11} {r.start:>8.1f}{r.middle:>8.1f}{r.end:>8.1f} {r.slope_per_minute:>+8.2f} "
                     f"{f.start:>6.0f}{f.middle:>6.0f}{f.end:>6.0f} {f.slope_per_minute:>+8.2f} "
                     f"{idle.get(name, 0):>11}{after.get(name, 0):>11}")
    lines.append(f"  flat: last-third median <= second-third median + max({RSS_MARGIN.absolute:g} MiB, "
                 f"{RSS_MARGIN.relative:.0%}) RSS, + max({FD_MARGIN.absolute:g}, {FD_MARGIN.relative:.0%}) fds; "
                 f"idle fds after <= before + {FD_SLACK}")
    return "\n".join(lines)


@pytest.mark.soak
@pytest.mark.timeout(int(SECONDS + WARMUP) + 240)
def test_steady_load_fails_nothing_and_leaks_no_memory_or_fds(fleet: Fleet, capsys: pytest.CaptureFixture[str]) \
        -> None:
    pids = {name: fleet.suite.procs[name].pid for name in SERVICES}
    pids |= {f"double-{name}": double.proc.pid for name, double in fleet.doubles.items()}
    pids["client"] = os.getpid()
    checked = [*SERVICES, "client"]
    url, token = fleet.suite.gateway_url, fleet.suite.token

    with Sampler(pids, interval=1.0) as sampler:
        sampler.phase = "warmup"
        warm = asyncio.run(Load(url, token, "warm", interval=INTERVAL).run(WARMUP))
        warm.problems += asyncio.run(burst(url, token))
        assert warm.problems == [], f"{len(warm.problems)} problems in the warm-up: {warm.problems[:5]}"
        sampler.phase = "idle"
        idle = settled_fds(sampler, checked)
        idle_kinds = sampler.kinds_now()

        sampler.phase = "load"
        tally = asyncio.run(Load(url, token, "soak", interval=INTERVAL, seed=12).run(SECONDS))
        sampler.phase = "after"
        after = fds_back(sampler, idle)
        after_kinds = sampler.kinds_now()

    rss = {name: verdict(sampler.series(name, "load", "rss"), RSS_MARGIN) for name in pids}
    fds = {name: verdict(sampler.series(name, "load", "fds"), FD_MARGIN) for name in pids}
    figures = report(tally, rss, fds, idle, after)
    new = {n: dict(d) for n in checked if (d := after_kinds[n] - idle_kinds[n])}
    figures += f"\n  fds open after the load that were not before: {new or 'none'}"
    with capsys.disabled():
        print("\n" + figures, flush=True)

    assert sampler.gone == set(), f"processes exited under load: {sampler.gone}"
    assert tally.problems == [], f"{len(tally.problems)} problems, the first: {tally.problems[:8]}"
    assert len(tally.accepted) == tally.submitted == tally.completed
    # Not a figure to meet, a guard against a run that judged nothing: at least 1/8 of the pace.
    assert tally.submitted >= SECONDS / INTERVAL / 8, f"only {tally.submitted} submissions in {SECONDS:.0f}s"
    assert statistics.median(tally.create_seconds) < 5.0
    grew = {n: f"RSS {rss[n].middle:.1f} -> {rss[n].end:.1f} MiB (allowed +{rss[n].allowed:.1f})"
            for n in SERVICES if not rss[n].flat}
    assert grew == {}, f"memory grew under steady load:\n{figures}"
    grew = {n: f"fds {fds[n].middle:.0f} -> {fds[n].end:.0f} (allowed +{fds[n].allowed:.0f})"
            for n in SERVICES if not fds[n].flat}
    assert grew == {}, f"open fds grew under steady load:\n{figures}"
    kept = {n: (idle[n], after[n]) for n in checked if not returned(idle[n], after[n], FD_SLACK)}
    assert kept == {}, f"open fds (idle before, after) did not come back once the load stopped: {kept}\n{figures}"
