"""Templates as rows: create, read (scoped to their owner), page, update, delete."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import func
from sqlmodel import col, select

from services.scheduler.db.engine import Database, runs_to_completion
from services.scheduler.db.models import TemplateRow
from services.scheduler.errors import TemplateNotFound
from services.scheduler.records import utcnow


class TemplateStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @runs_to_completion
    async def create(self, row: TemplateRow) -> TemplateRow:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            s.add(row)
        return row

    @runs_to_completion
    async def get(self, template_id: str, user_id: str) -> TemplateRow:
        async with self.db.sessions() as s:
            row = await s.get(TemplateRow, template_id)
            if row is None or row.user_id != user_id:
                raise TemplateNotFound(template_id)
            return row

    @runs_to_completion
    async def count(self, user_id: str) -> int:
        async with self.db.sessions() as s:
            query = select(func.count()).select_from(TemplateRow).where(TemplateRow.user_id == user_id)
            return int((await s.exec(query)).one())

    @runs_to_completion
    async def list_page(self, user_id: str, *, page: int, per_page: int) -> tuple[list[TemplateRow], int]:
        query = select(TemplateRow).where(TemplateRow.user_id == user_id)
        async with self.db.sessions() as s:
            total = (await s.exec(select(func.count()).select_from(query.subquery()))).one()
            rows = await s.exec(
                query.order_by(col(TemplateRow.created_at).desc(), col(TemplateRow.id).desc())
                .offset((page - 1) * per_page)
                .limit(per_page)
            )
            return list(rows.all()), int(total)

    @runs_to_completion
    async def update(self, template_id: str, user_id: str, mutate: Callable[[TemplateRow], None]) -> TemplateRow:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(TemplateRow, template_id, with_for_update=True)
            if row is None or row.user_id != user_id:
                raise TemplateNotFound(template_id)
            mutate(row)
            row.updated_at = utcnow()
            s.add(row)
        return row

    @runs_to_completion
    async def delete(self, template_id: str, user_id: str) -> None:
        async with self.db.write_lock, self.db.sessions() as s, s.begin():
            row = await s.get(TemplateRow, template_id)
            if row is None or row.user_id != user_id:
                raise TemplateNotFound(template_id)
            await s.delete(row)
