"""Runners as rows: create, read (scoped to their owner), page, update, delete.

Self-registered agents are created by `IdentityStore.upsert_runner` on their first hello;
both kinds live in the same table and the same list.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func
from sqlmodel import col, select

from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import RunnerRow
from services.scheduler.errors import RunnerNotFound
from services.scheduler.records import utcnow


class RunnerStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @runs_to_completion
    async def create(self, row: RunnerRow) -> RunnerRow:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            s.add(row)
        return row

    @runs_to_completion
    async def get(self, runner_id: str, user_id: str) -> RunnerRow:
        async with self.db.sessions() as s:
            row = await s.get(RunnerRow, runner_id)
            if row is None or row.user_id != user_id:
                raise RunnerNotFound(runner_id)
            return row

    @runs_to_completion
    async def count(self, user_id: str) -> int:
        async with self.db.sessions() as s:
            query = select(func.count()).select_from(RunnerRow).where(RunnerRow.user_id == user_id)
            return int((await s.exec(query)).one())

    @runs_to_completion
    async def list_page(
        self, user_id: str, *, page: int, per_page: int, status: str | None
    ) -> tuple[list[RunnerRow], int]:
        query = select(RunnerRow).where(RunnerRow.user_id == user_id)
        if status:
            query = query.where(RunnerRow.status == status)
        async with self.db.sessions() as s:
            total = (await s.exec(select(func.count()).select_from(query.subquery()))).one()
            rows = await s.exec(
                query.order_by(col(RunnerRow.created_at).desc(), col(RunnerRow.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
            return list(rows.all()), int(total)

    @runs_to_completion
    async def registered(self) -> list[RunnerRow]:
        """Every runner registered through the API (with an endpoint), of every user: a runner pool's."""
        async with self.db.sessions() as s:
            rows = await s.exec(select(RunnerRow).where(RunnerRow.endpoint != "").order_by(col(RunnerRow.created_at)))
            return list(rows.all())

    @runs_to_completion
    async def update(self, runner_id: str, user_id: str, mutate: Callable[[RunnerRow], None]) -> RunnerRow:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(RunnerRow, runner_id, with_for_update=True)
            if row is None or row.user_id != user_id:
                raise RunnerNotFound(runner_id)
            mutate(row)
            row.updated_at = utcnow()
            s.add(row)
        return row

    @runs_to_completion
    async def delete(self, runner_id: str, user_id: str) -> None:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(RunnerRow, runner_id)
            if row is None or row.user_id != user_id:
                raise RunnerNotFound(runner_id)
            await s.delete(row)
