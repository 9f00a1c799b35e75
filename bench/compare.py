"""`python -m bench.compare REV [--runs N]`: this tree against another commit, run by run.

For judging a change on this shared, noisy machine, where two runs of the same tree differ by
±25% in `overhead`. Both trees' fleets run at once (the suite, two ComfyUI doubles, a runner:
bench.overhead's fleet); the same workflow goes through one, then the other, then straight to
a double, one at a time, the order of the two trees swapped every run. Whatever slows the
machine down slows both alike, so the paired difference (this tree's run minus the other's,
same moment) shows a change that the medians of separate runs hide.

REV is a commit (checked out into a temporary git worktree, removed afterwards) or the path
of another checkout. The other tree runs with this tree's generated code (gen/, on the
virtualenv's path): compare commits whose protos differ by additions only.

Prints each tree's median, p99 and added median (against the direct runs), the paired
difference's median with how many runs this tree won, and each process's CPU per run (the
doubles' figure includes the direct runs, served by this tree's doubles).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

import services
from bench._common import CpuMeter, Fleet, log, percentile
from bench.overhead import direct, through_suite

ROOT = Path(__file__).resolve().parent.parent
PROCESSES = ("gateway", "scheduler", "storage", "runner-0", "doubles")
WARMUP = 5

# Run in the other tree (its own bench._common): holds a fleet up until stdin closes.
_HOLD = f"""
import json, sys
from bench._common import Fleet
with Fleet(doubles=2, runners=1) as fleet:
    print(json.dumps({{"url": fleet.url, "token": fleet.token,
                      "pids": {{n: fleet.pid(n) for n in {PROCESSES!r}}}}}), flush=True)
    sys.stdin.read()
"""


@dataclass
class Target:
    url: str
    token: str


@contextmanager
def other_tree(rev: str) -> Iterator[Path]:
    """The checkout to compare with: a path as is, or a commit in a temporary worktree."""
    if Path(rev).is_dir():
        yield Path(rev).resolve()
        return
    path = Path(tempfile.mkdtemp(prefix="comfyfleet-compare-"))
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def held_fleet(tree: Path) -> Iterator[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if not services.GRPC_EXPERIMENTS_GIVEN:
        del env["GRPC_EXPERIMENTS"]  # set by this tree's services package: the other tree chooses its own
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], cwd=tree, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fleet of {tree} did not start")
        yield json.loads(line)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


async def alternate(this: Target, other: Target, double_base: str, runs: int, batch: int = 1) -> dict[str, list[float]]:
    """Seconds per run of each path; a direct run, then both trees in turn, order swapped each run."""
    samples: dict[str, list[float]] = {"direct": [], "this": [], "other": []}
    client_id = uuid.uuid4().hex
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
            session.ws_connect(f"{double_base.replace('http', 'ws')}/ws?clientId={client_id}") as ws:
        for i in range(WARMUP + runs):
            color = 3000 + i
            took = {"direct": await direct(session, double_base, ws, client_id, color, batch)}
            order = [("this", this), ("other", other)]
            for name, target in order if i % 2 == 0 else reversed(order):
                took[name] = await through_suite(session, target.url, target.token, color, batch)
            if i >= WARMUP:
                for name, seconds in took.items():
                    samples[name].append(seconds)
    return samples


def report(samples: dict[str, list[float]], cpu: dict[str, dict[str, float]], runs: int) -> dict[str, Any]:
    ms = {name: [s * 1000 for s in values] for name, values in samples.items()}
    direct_median = statistics.median(ms["direct"])
    result: dict[str, Any] = {"runs": runs, "direct_median_ms": round(direct_median, 2)}
    for name in ("this", "other"):
        median = statistics.median(ms[name])
        result[name] = {"median_ms": round(median, 2), "p99_ms": round(percentile(ms[name], 99), 2),
                        "added_median_ms": round(median - direct_median, 2),
                        "cpu_ms_per_run": {k: round(1000 * v / (runs + WARMUP), 2) for k, v in cpu[name].items()}}
    paired = [a - b for a, b in zip(ms["this"], ms["other"], strict=True)]
    result["paired_difference_median_ms"] = round(statistics.median(paired), 2)
    result["this_faster_in"] = sum(1 for d in paired if d < 0)
    return result


def main(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n")[0])
    parser.add_argument("rev", help="a commit, or the path of another checkout")
    parser.add_argument("--runs", type=int, default=120)
    parser.add_argument("--batch", type=int, default=1, help="images each run makes (output files to copy)")
    args = parser.parse_args(argv)
    with other_tree(args.rev) as tree, held_fleet(tree) as held, Fleet(doubles=2, runners=1) as fleet:
        log(f"compare: {args.runs} runs each, this tree ({ROOT}) and {tree}, alternating")
        meters = {"this": CpuMeter({n: fleet.pid(n) for n in PROCESSES}), "other": CpuMeter(held["pids"])}
        for meter in meters.values():
            meter.start()
        samples = asyncio.run(alternate(Target(fleet.url, fleet.token), Target(held["url"], held["token"]),
                                        f"http://127.0.0.1:{fleet.double_ports[1]}", args.runs, args.batch))
        cpu = {name: meter.stop() for name, meter in meters.items()}
    return {"batch": args.batch, **report(samples, cpu, args.runs)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
