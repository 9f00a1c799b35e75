"""Acceptance rate: POST /v1/workflow under closed-loop load, against a bare ASGI endpoint.

Concurrent keep-alive clients (bench._loadgen, its own process) post a small workflow (one
$text, one #choice) for a fixed time to the gateway of a running suite, and the same body to
bench._bare (Starlette + uvicorn, the gateway's multipart reader, answers 201) on the same
machine, alternating rounds. Each 201 from the suite is a workflow committed to the
scheduler's database before the answer (checked afterwards by counting rows).

Targets: >= 1,000 durable creates/s, and >= 25% of the bare endpoint's rate. A second suite
with the gateway's create batching off (GATEWAY_CREATE_BATCH=1) runs the same load in the
same rounds, for what batching is worth.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import CpuMeter, Fleet, create_body, figure, log
from bench._profile import profiled
from services.devrun import ROOT, free_port, http_ready

CONNECTIONS = 32


def load(url: str, body_file: Path, content_type: str, headers: list[str], duration: float,
         warmup: float) -> dict[str, Any]:
    args = [sys.executable, "-m", "bench._loadgen", "--url", url, "--body-file", str(body_file),
            "--content-type", content_type, "--connections", str(CONNECTIONS),
            "--duration", str(duration), "--warmup", str(warmup)]
    for header in headers:
        args += ["--header", header]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=duration + warmup + 120)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextlib.contextmanager
def bare_endpoint(log_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "bench._bare", "--port", str(port)], cwd=ROOT,
                                stdout=log_file, stderr=log_file, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not http_ready(f"http://127.0.0.1:{port}/healthz"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"bare endpoint did not start; see {log_path}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def suite_round(fleet: Fleet, body_file: Path, content_type: str, duration: float, warmup: float,
                tag: str | None) -> dict[str, Any]:
    """One round of load on `fleet`'s gateway, with the CPU each process spent per create."""
    pids = {"gateway": fleet.pid("gateway"), "scheduler": fleet.pid("scheduler")}
    meter = CpuMeter({**pids, "storage": fleet.pid("storage")})
    with profiled(pids, tag) if tag else contextlib.nullcontext():
        meter.start()
        run = load(f"{fleet.url}/v1/workflow", body_file, content_type, [f"Authorization: Bearer {fleet.token}"],
                   duration, warmup)
        cpu = meter.stop()
    # CPU per create in each process: shows which one (if any) is saturated.
    run["cpu_s"] = cpu
    run["wall_s"] = round(meter.wall, 2)
    run["cpu_ms_per_create"] = {name: round(1000 * used / max(1, run["ok"] * (warmup + duration) / duration), 2)
                                for name, used in cpu.items()}
    log(f"  {run['rate']}/s, statuses {run['statuses']}, CPU s {cpu} in {meter.wall:.1f} s")
    return run


def main(quick: bool) -> dict[str, Any]:
    rounds, duration, warmup = (1, 1.5, 0.3) if quick else (3, 5.0, 1.0)
    body, content_type = create_body()
    # The same suite with the gateway's create batching off (one CreateWorkflow call per
    # create), in the same run: what batching is worth.
    with Fleet() as fleet, Fleet(extra_env={"GATEWAY_CREATE_BATCH": "1"}) as unbatched, \
            tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(body)
        suite_runs: list[dict[str, Any]] = []
        unbatched_runs: list[dict[str, Any]] = []
        bare_runs: list[dict[str, Any]] = []
        with bare_endpoint(Path(tmp) / "bare.log") as (bare_url, _bare_pid):
            for i in range(rounds):
                log(f"submit round {i + 1}/{rounds}: bare endpoint")
                bare_runs.append(load(f"{bare_url}/v1/workflow", body_file, content_type, [], duration, warmup))
                log(f"submit round {i + 1}/{rounds}: suite ({bare_runs[-1]['rate']}/s bare)")
                suite_runs.append(suite_round(fleet, body_file, content_type, duration, warmup,
                                              "submit" if i == rounds - 1 else None))
                log(f"submit round {i + 1}/{rounds}: suite, one call per create")
                unbatched_runs.append(suite_round(unbatched, body_file, content_type, duration, warmup, None))
        with contextlib.closing(sqlite3.connect(fleet.db_path, timeout=30)) as db:
            stored = int(db.execute("SELECT count(*) FROM workflows").fetchone()[0])
    created = sum(int(r["statuses"].get("201", 0)) for r in suite_runs)
    suite_rate = statistics.median(r["rate"] for r in suite_runs)
    unbatched_rate = statistics.median(r["rate"] for r in unbatched_runs)
    bare_rate = statistics.median(r["rate"] for r in bare_runs)
    suite_lat = _median_of(suite_runs)
    bare_lat = _median_of(bare_runs)
    ratio = suite_rate / bare_rate if bare_rate else float("nan")
    rates = [r["rate"] for r in suite_runs]
    return {
        "figures": [
            figure("durable creates/s", suite_rate, "/s", target=">= 1000/s", met=suite_rate >= 1000,
                   note=f"median of {rounds} rounds (min {min(rates)}, max {max(rates)}), {CONNECTIONS} connections"),
            figure("creates/s vs bare endpoint", suite_rate, "/s", baseline=bare_rate, ratio=ratio,
                   target=">= 0.25 of bare", met=ratio >= 0.25),
            figure("creates/s, batched vs one call per create", suite_rate, "/s", baseline=unbatched_rate,
                   ratio=suite_rate / unbatched_rate if unbatched_rate else float("nan")),
            figure("create p50", suite_lat["median"], "ms", baseline=bare_lat["median"]),
            figure("create p99", suite_lat["p99"], "ms", baseline=bare_lat["p99"]),
        ],
        "durable": {"201_answers": created, "rows_in_db": stored, "all_committed": stored >= created},
        "suite_rounds": suite_runs,
        "unbatched_rounds": unbatched_runs,
        "bare_rounds": bare_runs,
        "connections": CONNECTIONS,
        "cpu_ms_per_create": suite_runs[-1]["cpu_ms_per_create"],
        "cpu_ms_per_create_unbatched": unbatched_runs[-1]["cpu_ms_per_create"],
    }


def _median_of(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {key: statistics.median(r["latency_ms"][key] for r in runs) for key in ("median", "p99")}


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv), indent=2))
