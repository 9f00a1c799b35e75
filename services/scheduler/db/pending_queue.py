"""The placement batch: which waiting workflows a placement pass considers, read fairly.

A pass never reads every waiting row. For each priority (high, normal, low) it walks the
distinct users with waiting work through the `ix_workflows_pending` index (a loose index
scan: one index seek per user, never a scan of a user's backlog), at most `limit` users per
priority, starting after the user where the previous pass stopped (so with more users than
`limit`, every user comes round), and takes each user's oldest `ceil(limit / users)`
workflows, again by index. The pure core then orders the batch (priority, round-robin across
users, FIFO): a user with 10,000 waiting workflows contributes a bounded share, and another
user's single workflow is in the batch of every pass that reaches that user.

A batch holds only what placement needs (`Waiting`); the full row of a bound workflow is read
by the change that assigns it (its prompt is filled there). Cost per pass: O((users + rows in the batch) * log N)
index work, in at most 4 statements per priority, independent of the number waiting.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import column, text
from sqlalchemy.engine import Connection

from services.scheduler.core.placement import Priority
from services.scheduler.core.state import Status
from services.scheduler.db.driver_statements import DriverStatement
from services.scheduler.db.engine import Database, runs_to_completion

# Reads through ix_workflows_pending (status, runner_id, priority, user_id, created_at, id),
# created by migration 2 in db/engine.py.

_WAITING = "{t}.status = :status AND {t}.runner_id IS NULL AND {t}.priority = :priority"
# Distinct users with waiting work at one priority, in user id order after :after, by one
# index seek each (`n` bounds the recursion: LIMIT is not allowed in a recursive CTE on
# Postgres).
_HEADS = f"""
WITH RECURSIVE heads(user_id, n) AS (
    SELECT (SELECT MIN(w.user_id) FROM workflows w WHERE {_WAITING.format(t="w")} AND w.user_id > :after), 1
    UNION ALL
    SELECT (SELECT MIN(w.user_id) FROM workflows w WHERE {_WAITING.format(t="w")} AND w.user_id > heads.user_id),
           heads.n + 1
    FROM heads WHERE heads.user_id IS NOT NULL AND heads.n < :max_users
)"""
_USERS = text(f"{_HEADS}\nSELECT h.user_id FROM heads h WHERE h.user_id IS NOT NULL")
# The same users, each with their oldest :per_user waiting workflows.
_OLDEST = text(f"""{_HEADS}
SELECT w.id, w.user_id, w.tags_json, w.priority, w.created_at
FROM heads h JOIN workflows w ON w.id IN (
    SELECT x.id FROM workflows x WHERE {_WAITING.format(t="x")} AND x.user_id = h.user_id
    ORDER BY x.created_at, x.id LIMIT :per_user)
WHERE h.user_id IS NOT NULL
""")
# Both run on the driver's cursor (db/driver_statements.py): a pass runs 3 to 12 statements.
_USERS_READ = DriverStatement(lambda: _USERS.columns(column("user_id")))
_OLDEST_READ = DriverStatement(lambda: _OLDEST.columns(*(column(c) for c in (
    "id", "user_id", "tags_json", "priority", "created_at"))))


# A batch of at most this many per priority is read on the event loop (Database.read_short):
# at most this many users' heads and rows, about 1 ms with 32 users waiting, far less with a
# few (the hop to the reader thread alone costs ~0.3-1 ms of wall time under load).
SHORT_READ_LIMIT = 32


@dataclass(frozen=True)
class Waiting:
    """A waiting workflow, as far as placement is concerned."""

    id: str
    user_id: str
    tags: frozenset[str]
    priority: int
    created_at: datetime


class PendingQueue:
    """Reads placement batches; remembers per priority where the last one stopped."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._after: dict[int, str] = {}
        # Whether the last batch held every workflow that was waiting when it was read (no
        # priority had `limit` users or more, no user as many as their share).
        self.read_all = False

    @runs_to_completion
    async def batch(self, limit: int) -> list[Waiting]:
        """Up to `limit` waiting workflows per priority, fairly spread across their users."""
        # A read: a small one on the loop (a pass for a few free slots: a few index seeks,
        # less than a hop to the reader thread), a larger one off it, all its statements at once.
        read = self.db.read_short if limit <= SHORT_READ_LIMIT else self.db.read
        batch, self.read_all = await read(lambda conn: self._batch(conn, limit))
        return batch

    def _batch(self, conn: Connection, limit: int) -> tuple[list[Waiting], bool]:
        batch: list[Waiting] = []
        read_all = True
        for priority in (Priority.HIGH, Priority.NORMAL, Priority.LOW):
            params: dict[str, Any] = {"status": Status.ACCEPTED.value, "priority": int(priority)}
            after = self._after.get(priority, "")
            users = [r["user_id"] for r in _USERS_READ.rows(conn, {**params, "after": after, "max_users": limit})]
            segments = [(after, len(users))]
            if len(users) < limit and after:
                # Wrapped round: the users at the start of the id order, up to where this one began.
                more = [u for r in _USERS_READ.rows(conn, {**params, "after": "", "max_users": limit - len(users)})
                        if (u := r["user_id"]) <= after]
                users += more
                segments.append(("", len(more)))
            # The next pass starts after the last user read when the batch was cut short.
            self._after[priority] = users[-1] if len(users) >= limit else ""
            read_all = read_all and len(users) < limit
            if not users:
                continue
            per_user = -(-limit // len(users))
            for start, count in segments:
                if count:
                    rows = _OLDEST_READ.rows(conn, {**params, "after": start, "max_users": count, "per_user": per_user})
                    batch.extend(Waiting(r["id"], r["user_id"], frozenset(json.loads(r["tags_json"])), r["priority"],
                                         _datetime(r["created_at"])) for r in rows)
                    read_all = read_all and max(Counter(r["user_id"] for r in rows).values(), default=0) < per_user
        return batch, read_all


def _datetime(value: Any) -> datetime:
    """SQLite hands a text() query's timestamps back as text; Postgres as datetime."""
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
