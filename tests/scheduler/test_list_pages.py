"""List pages: a page in the older half is read from the oldest end of the index, and every
page, from either end, is the slice of the newest-first order it should be."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from services.scheduler.core.state import Status
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WorkflowRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.records import utcnow

pytestmark = pytest.mark.timeout(30)


async def test_every_page_from_either_end_is_its_slice_of_newest_first(db: Database) -> None:
    store = WorkflowStore(db)
    user = (await IdentityStore(db).create_user("dev")).id
    other = (await IdentityStore(db).create_user("other")).id
    start = utcnow() - timedelta(days=1)
    rows = []
    for n in range(23):
        at = start + timedelta(seconds=n // 3)  # three at a time share a created_at: the id breaks ties
        status = Status.COMPLETED.value if n % 4 else Status.ACCEPTED.value
        rows.append(WorkflowRow(id=str(uuid.uuid4()), user_id=user, name=f"w{n}", status=status,
                                workflow_json="{}", created_at=at, updated_at=at))
    await asyncio.gather(*(store.create(r) for r in rows))
    await store.create(WorkflowRow(id=str(uuid.uuid4()), user_id=other, name="x", status="accepted",
                                   workflow_json="{}", created_at=start, updated_at=start))
    for status in (None, Status.COMPLETED.value):
        chosen = [r for r in rows if status is None or r.status == status]
        expected = [r.id for r in sorted(chosen, key=lambda r: (r.created_at, r.id), reverse=True)]
        for per_page in (1, 4, 10, 100):
            pages = -(-len(expected) // per_page)
            for page in range(1, pages + 2):  # and one past the end: empty
                got, total = await store.list_page(user, page=page, per_page=per_page, status=status, tag=None)
                assert total == len(expected)
                assert [r.id for r in got] == expected[(page - 1) * per_page:page * per_page], (status, per_page, page)
