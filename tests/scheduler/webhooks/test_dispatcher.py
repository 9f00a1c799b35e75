"""The dispatcher on a real SQLite database with the real workflow store and hub: deliveries
are made once per (event, target) whatever crashes between reading and committing, a restart
resumes from the durable cursor, a hub notification wakes it at once, and a user with nothing
left to deliver to stops being tailed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from comfyfleet.scheduler.v1 import workflow_pb2

from services.scheduler.core.state import Status
from services.scheduler.db.engine import Database
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.db.models import WebhookEndpointRow, WebhookUserSecretRow, WorkflowRow, WorkflowWebhookRow
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.hub import EventHub
from services.scheduler.records import utcnow
from services.scheduler.webhooks.dispatcher import Dispatcher
from services.scheduler.webhooks.store import WebhookStore


@dataclass
class World:
    db: Database
    workflows: WorkflowStore
    webhooks: WebhookStore
    hub: EventHub
    user_id: str


@contextlib.asynccontextmanager
async def world_on(url: str) -> AsyncIterator[World]:
    """The stores on the database at `url` (tests/postgres runs these tests on Postgres too)."""
    db = Database(url)
    await db.migrate()
    user = await IdentityStore(db).create_user("hooked")
    try:
        yield World(db, WorkflowStore(db), WebhookStore(db), EventHub(), user.id)
    finally:
        await db.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async with world_on(f"sqlite+aiosqlite:///{tmp_path}/s.db") as w:
        yield w


async def new_workflow(w: World) -> str:
    now = utcnow()
    row = WorkflowRow(id=str(uuid.uuid4()), user_id=w.user_id, name="w", status=Status.ACCEPTED.value,
                      workflow_json="{}", created_at=now, updated_at=now)
    w.hub.publish((await w.workflows.create(row)).events)
    return row.id


async def set_status(w: World, workflow_id: str, status: Status) -> None:
    def mutate(row: WorkflowRow, _outputs: object) -> list[workflow_pb2.WorkflowEvent]:
        row.status = status.value
        return [workflow_pb2.WorkflowEvent(status=workflow_pb2.StatusEvent())]  # the store fills it in

    w.hub.publish((await w.workflows.change(workflow_id, mutate)).events)


async def endpoint(w: World, events: list[str]) -> WebhookEndpointRow:
    now = utcnow()
    row = WebhookEndpointRow(id=str(uuid.uuid4()), user_id=w.user_id, url="https://example.com/h",
                             events_json=json.dumps(events), secret_sealed="x", created_at=now, updated_at=now)
    return await w.webhooks.create_endpoint(row)


async def logged(w: World, endpoint_id: str = "", workflow_id: str = "") -> list[tuple[str, int]]:
    found, _ = await w.webhooks.deliveries_page(w.user_id, endpoint_id=endpoint_id, workflow_id=workflow_id,
                                                page=1, per_page=100)
    return sorted((d.row.workflow_id, d.row.event_seq) for d in found)


async def test_no_backfill_no_loss_no_duplicate_across_a_crash_and_a_restart(world: World) -> None:
    before = await new_workflow(world)  # before any endpoint: never delivered
    hook = await endpoint(world, ["*"])
    made: list[int] = []
    dispatcher = Dispatcher(world.webhooks, world.hub, lambda: made.append(1), sweep_seconds=60)
    first = await new_workflow(world)

    real_commit = world.webhooks.commit_batch

    async def crash(*args: object, **kwargs: object) -> bool:
        raise RuntimeError("the process died before the commit")

    world.webhooks.commit_batch = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await dispatcher.catch_up(world.user_id)
    assert await logged(world, hook.id) == [] and not made  # nothing half-made
    world.webhooks.commit_batch = real_commit  # type: ignore[method-assign]

    assert await dispatcher.catch_up(world.user_id) == 1
    assert await dispatcher.catch_up(world.user_id) == 0  # read again: nothing twice
    assert await logged(world, hook.id) == [(first, 1)] and made == [1]

    second = await new_workflow(world)
    restarted = Dispatcher(world.webhooks, world.hub, lambda: None, sweep_seconds=60)
    await restarted.start()  # rebuilt from the cursors table
    assert await restarted.catch_up(world.user_id) == 1
    assert await logged(world, hook.id) == sorted([(first, 1), (second, 1)])
    assert before not in {wf for wf, _ in await logged(world, hook.id)}
    await restarted.close()


async def test_a_hub_notification_wakes_it_and_filters_apply(world: World) -> None:
    done = await endpoint(world, ["status.completed"])
    everything = await endpoint(world, ["*"])
    dispatcher = Dispatcher(world.webhooks, world.hub, lambda: None, sweep_seconds=60)
    await dispatcher.start()
    running = asyncio.create_task(dispatcher.run())
    try:
        workflow_id = await new_workflow(world)
        await set_status(world, workflow_id, Status.QUEUED)
        await set_status(world, workflow_id, Status.COMPLETED)
        deadline = time.monotonic() + 5  # far less than the 60 s sweep: woken by the hub
        while len(await logged(world, everything.id)) < 3:
            assert time.monotonic() < deadline, await logged(world, everything.id)
            await asyncio.sleep(0.02)
        assert await logged(world, done.id) == [(workflow_id, 3)]
        assert await logged(world, everything.id) == [(workflow_id, 1), (workflow_id, 2), (workflow_id, 3)]
    finally:
        running.cancel()
        await dispatcher.close()


async def test_workflow_urls_get_status_events_and_finished_users_are_untailed(world: World) -> None:
    dispatcher = Dispatcher(world.webhooks, world.hub, lambda: None, sweep_seconds=60)
    workflow_id = str(uuid.uuid4())
    await world.webhooks.put_workflow_url(
        WorkflowWebhookRow(workflow_id=workflow_id, user_id=world.user_id, url="https://example.com/own",
                           created_at=utcnow()),
        lambda: WebhookUserSecretRow(user_id=world.user_id, secret_sealed="sealed", created_at=utcnow()))
    dispatcher.tail(world.user_id)
    now = utcnow()
    row = WorkflowRow(id=workflow_id, user_id=world.user_id, name="w", status=Status.ACCEPTED.value,
                      workflow_json="{}", created_at=now, updated_at=now)
    await world.workflows.create(row)
    await set_status(world, workflow_id, Status.FAILED)
    assert await dispatcher.catch_up(world.user_id) == 2
    assert await logged(world, workflow_id=workflow_id) == [(workflow_id, 1), (workflow_id, 2)]
    assert await world.webhooks.workflow_urls([workflow_id]) == {}  # finished: its URL is dropped
    dispatcher._dirty.clear()
    await dispatcher._untail_if_idle(world.user_id)
    assert world.user_id not in await world.webhooks.cursors() and world.user_id not in dispatcher._follows
    await dispatcher.close()
