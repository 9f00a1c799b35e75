"""Growth: create and list latency with 1,000, 100,000 and 1,000,000 stored workflows.

One suite; the stored workflows (the caller's own, completed, older than anything created
through the API) are written straight into the scheduler's database between stages
(bench._seed, one transaction each). At each size, one request at a time over a kept-alive
connection: creates (POST /v1/workflow, one $text, one #choice), GET /v1/workflow?page=1,
and the last page (GET /v1/workflow?page=<total/10>). --quick stops at 20,000.

Target: create and first-page list at 1,000,000 rows at most 1.5x their cost at 1,000.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench._common import Fleet, create_body, dev_user_id, figure, log, summary_ms
from bench._profile import profiled
from bench._seed import seed

PER_PAGE = 10
_OPEN = "('accepted', 'uploaded', 'queued', 'running')"
# The statements behind create and list, as services/scheduler/db/creates.py (a group-commit
# batch of creates: ids taken, open workflows per user) and workflow_store.py (list_page's total
# and page) issue them, timed straight on the database and explained, to tell a query that
# scans all rows from one that does not.
QUERIES = {
    "count_open (create)": f"SELECT user_id, count(*) FROM workflows WHERE user_id IN (:user) AND status IN {_OPEN} "
                           "GROUP BY user_id",
    "ids taken (create)": "SELECT id FROM workflows WHERE id IN (:id)",
    "list total": "SELECT total FROM workflow_counts WHERE user_id = :user",
    "list page 1": "SELECT * FROM workflows WHERE id IN (SELECT id FROM workflows WHERE user_id = :user "
                   "ORDER BY created_at DESC, id DESC LIMIT 10) ORDER BY created_at DESC, id DESC",
    # A page in the older half is read from the oldest end (WorkflowStore.list_page).
    "list last page": "SELECT * FROM workflows WHERE id IN (SELECT id FROM workflows WHERE user_id = :user "
                      "ORDER BY created_at ASC, id ASC LIMIT :last_n OFFSET 0) ORDER BY created_at DESC, id DESC",
}


def explain(db_path: Path, user_id: str, total: int) -> dict[str, Any]:
    """Each statement's plan and its time (median of 3, ms) on the database as it is now."""
    params = {"user": user_id, "id": "00000000-0000-0000-0000-000000000000",
              "last_n": total % PER_PAGE or PER_PAGE}
    out: dict[str, Any] = {}
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        for name, sql in QUERIES.items():
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            times = []
            for _ in range(3):
                start = time.perf_counter()
                db.execute(sql, params).fetchall()
                times.append((time.perf_counter() - start) * 1000)
            out[name] = {"ms": round(statistics.median(times), 2), "plan": plan}
    return out


def timed(client: httpx.Client, method: str, url: str, runs: int, *, budget_s: float = 15.0,
          **kwargs: Any) -> list[float]:
    """Up to `runs` requests one after another; fewer (at least 3) once `budget_s` is spent."""
    out: list[float] = []
    deadline = time.perf_counter() + budget_s
    for _ in range(runs):
        if len(out) >= 3 and time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        reply = client.request(method, url, **kwargs)
        out.append(time.perf_counter() - start)
        assert reply.status_code in (200, 201), reply.text
    return out


def main(quick: bool) -> dict[str, Any]:
    sizes = [1_000, 20_000] if quick else [1_000, 100_000, 1_000_000]
    runs, last_runs = (15, 3) if quick else (40, 5)
    body, content_type = create_body()
    stages: dict[int, dict[str, Any]] = {}
    with Fleet() as fleet, httpx.Client(base_url=fleet.url, timeout=120,
                                        headers={"Authorization": f"Bearer {fleet.token}"}) as client:
        user_id = dev_user_id(fleet.db_path)
        stored = 0
        for size in sizes:
            started = time.perf_counter()
            # Each stage's rows are older than the previous stage's, so the newest stay on page 1.
            oldest = datetime.now(UTC) - timedelta(days=30 * len(stages) + 30)
            seed(fleet.db_path, user_id, size - stored, oldest=oldest)
            log(f"scale: {size} stored workflows (+{size - stored} in {time.perf_counter() - started:.1f} s)")
            stored = size
            create: dict[str, Any] = {"content": body, "headers": {"Content-Type": content_type}}
            timed(client, "POST", "/v1/workflow", 3, **create)  # warm caches after the insert
            timed(client, "GET", "/v1/workflow?page=1", 3)
            profile = size == sizes[-1]
            pids = {"scheduler": fleet.pid("scheduler")} if profile else {}
            with profiled(pids, f"scale-{size}"):
                creates = timed(client, "POST", "/v1/workflow", runs, **create)
                first = timed(client, "GET", f"/v1/workflow?page=1&per_page={PER_PAGE}", runs)
                total = client.get("/v1/workflow?per_page=1").json()["total"]
                last_page = max(1, -(-total // PER_PAGE))
                last = timed(client, "GET", f"/v1/workflow?page={last_page}&per_page={PER_PAGE}", last_runs)
            stages[size] = {"create_ms": summary_ms(creates), "list_first_ms": summary_ms(first),
                            "list_last_ms": summary_ms(last), "total": total, "last_page": last_page,
                            "queries": explain(fleet.db_path, user_id, total)}
            log("  queries: " + ", ".join(f"{k} {v['ms']} ms" for k, v in stages[size]["queries"].items()))
            log(f"  create {stages[size]['create_ms']['median']} ms, page 1 {stages[size]['list_first_ms']['median']}"
                f" ms, last page {stages[size]['list_last_ms']['median']} ms")
    base = stages[sizes[0]]
    figures = []
    for size in sizes[1:]:
        top = size == sizes[-1] and size >= 1_000_000
        for key, label in (("create_ms", "create"), ("list_first_ms", "list page=1"),
                           ("list_last_ms", "list last page")):
            value, ref = stages[size][key]["median"], base[key]["median"]
            ratio = value / ref
            has_target = top and key != "list_last_ms"
            figures.append(figure(
                f"{label} at {size:,} vs 1,000", value, "ms", baseline=ref, ratio=ratio,
                target="<= 1.5x" if has_target else None, met=(ratio <= 1.5) if has_target else None,
                note=f"median of {stages[size][key]['n']} (min {stages[size][key]['min']}, "
                     f"max {stages[size][key]['max']})"))
    return {"figures": figures, "stages": {str(k): v for k, v in stages.items()},
            "ratios": {str(size): {key: round(stages[size][key]["median"] / base[key]["median"], 2)
                                   for key in ("create_ms", "list_first_ms", "list_last_ms")} for size in sizes}}


if __name__ == "__main__":
    print(json.dumps(main("--quick" in sys.argv), indent=2))
