"""Workflows inserted straight into the scheduler's SQLite database, for speed.

Rows follow the scheduler's own schema (read from the database the scheduler migrated), one
`workflows` row plus its first `workflow_events` row (seq 1, a status event) each, the way
WorkflowStore.create writes them; a million rows go in with executemany in one transaction.
The scheduler keeps no cache of workflows, so it sees them on its next query; placement
runs only when something kicks it (a runner connecting or set active; not a create that a
free slot takes at once, which the scheduler does when it believes nothing waits).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from comfyfleet.scheduler.v1 import workflow_pb2

from bench._common import SMALL

_STATUS_PB: dict[str, workflow_pb2.WorkflowStatus.ValueType] = {
    "accepted": workflow_pb2.WORKFLOW_STATUS_ACCEPTED, "completed": workflow_pb2.WORKFLOW_STATUS_COMPLETED}
BATCH = 50_000


def _stamp(value: datetime) -> str:
    """SQLAlchemy's DATETIME text on SQLite."""
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def seed(db_path: Path, user_id: str, count: int, *, status: str = "completed",
         workflow: dict[str, Any] = SMALL, inputs: list[dict[str, Any]] | None = None,
         oldest: datetime | None = None, step: timedelta = timedelta(milliseconds=1)) -> None:
    """Inserts `count` workflows of `user_id`, created one `step` apart from `oldest` on."""
    workflow_json = json.dumps(workflow)
    inputs_json = json.dumps(inputs if inputs is not None else
                             [{"field": "$prefix", "value": "bench_out", "is_file": False},
                              {"field": "#method", "value": "bilinear", "is_file": False}])
    params_json = json.dumps([["$text(prefix, bench)", "bench_out"]])
    start = oldest or (datetime.now(UTC) - timedelta(days=30))
    terminal = status == "completed"
    with contextlib.closing(sqlite3.connect(db_path, timeout=60)) as db:
        db.execute("PRAGMA busy_timeout=60000")
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB: the random-UUID primary keys stay in memory
        db.execute("PRAGMA synchronous=OFF")  # this connection's bulk load only; the scheduler's is unchanged
        columns = [row[1] for row in db.execute("PRAGMA table_info(workflows)")]
        defaults: dict[str, Any] = {
            "user_id": user_id, "name": "seeded", "status": status, "tags_json": "[]", "priority": 2,
            "workflow_json": workflow_json, "inputs_json": inputs_json, "params_json": params_json,
            "prompt_json": "", "runner_id": None, "attempt": 1 if terminal else 0, "prompt_id": "",
            "queue_number": None, "failure_json": "", "node_errors_json": "[]", "cancel_requested": 0,
            "last_seq": 1, "last_runner_seq": 0, "started_at": None, "completed_at": None,
        }
        missing = [c for c in columns if c not in defaults and c not in ("id", "created_at", "updated_at")]
        if missing:
            raise RuntimeError(f"the workflows table has columns bench._seed does not know: {missing}")
        insert_workflow = (f"INSERT INTO workflows ({', '.join(columns)}) "
                           f"VALUES ({', '.join(':' + c for c in columns)})")
        insert_event = "INSERT INTO workflow_events (workflow_id, seq, payload, created_at) VALUES (?, 1, ?, ?)"
        # Per-user event numbers (services/scheduler/db/event_numbers.py), when the schema has them.
        numbered = "user_seq" in [row[1] for row in db.execute("PRAGMA table_info(workflow_events)")]
        last_number = 0
        if numbered:
            insert_event = ("INSERT INTO workflow_events (workflow_id, seq, payload, created_at, user_id, user_seq) "
                            "VALUES (?, 1, ?, ?, ?, ?)")
            found = db.execute("SELECT last_user_seq FROM event_numbers WHERE user_id = ?", (user_id,)).fetchone()
            last_number = int(found[0]) if found else 0
        # The first event's snapshot leaves out workflow_json (the store puts it in): nothing measured
        # reads these payloads, and it halves what a million rows write.
        proto = workflow_pb2.WorkflowEvent(seq=1, status=workflow_pb2.StatusEvent(workflow=workflow_pb2.Workflow(
            user_id=user_id, name="seeded", status=_STATUS_PB.get(status, workflow_pb2.WORKFLOW_STATUS_UNSPECIFIED),
            priority=workflow_pb2.PRIORITY_NORMAL, last_seq=1)))
        db.execute("BEGIN")
        for batch in _batches(count):
            rows = []
            events: list[tuple[Any, ...]] = []
            for i in batch:
                workflow_id = str(uuid.uuid4())
                created = _stamp(start + step * i)
                row = dict(defaults, id=workflow_id, created_at=created, updated_at=created)
                if terminal:
                    row["started_at"] = row["completed_at"] = created
                rows.append(row)
                proto.workflow_id = workflow_id
                proto.status.workflow.id = workflow_id
                payload = proto.SerializeToString()
                if numbered:
                    last_number += 1
                    events.append((workflow_id, payload, created, user_id, last_number))
                else:
                    events.append((workflow_id, payload, created))
            db.executemany(insert_workflow, rows)
            db.executemany(insert_event, events)
        if numbered:
            db.execute("INSERT INTO event_numbers (user_id, last_user_seq) VALUES (?, ?) ON CONFLICT (user_id) "
                       "DO UPDATE SET last_user_seq = excluded.last_user_seq", (user_id, last_number))
        db.execute("COMMIT")
        # Fold the WAL back into the database, as a long-running database would have it; a WAL of a
        # million rows left behind makes every later commit of the scheduler pay for checkpointing.
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _batches(count: int) -> Iterator[range]:
    for first in range(0, count, BATCH):
        yield range(first, min(count, first + BATCH))


def count_by_status(db_path: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as db:
        return {status: n for status, n in db.execute("SELECT status, count(*) FROM workflows GROUP BY status")}
