"""The delivery worker: what an answer makes of a delivery (table), and a real run against a
local aiohttp receiver: signed attempts, the retry after a 500, the log, and its pruning."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web

from services.scheduler.db.models import WebhookDeliveryRow, WebhookEndpointRow
from services.scheduler.records import utcnow
from services.scheduler.webhooks import signing
from services.scheduler.webhooks.backoff import RetryPolicy
from services.scheduler.webhooks.dispatcher import Dispatcher
from services.scheduler.webhooks.sealing import SecretBox
from services.scheduler.webhooks.sender import Answer, Sender
from services.scheduler.webhooks.store import FAILED, PENDING, SUCCEEDED
from services.scheduler.webhooks.targets import TargetPolicy, parse_nets
from services.scheduler.webhooks.worker import DeliveryWorker, outcome_of
from tests.scheduler.webhooks.test_dispatcher import World, new_workflow, world  # noqa: F401  (fixture)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(base_seconds=10, cap_seconds=100, max_age_seconds=60, jitter=0.0)


def pending(failures: int = 0) -> WebhookDeliveryRow:
    return WebhookDeliveryRow(id="d", user_id="u", workflow_id="w", event_seq=1, event_type="x", url="u",
                              payload="{}", failures=failures, window_start=T0, created_at=T0, updated_at=T0)


@pytest.mark.parametrize(("status", "failures", "now_s", "state", "next_s"), [
    (200, 0, 0, SUCCEEDED, None),
    (204, 3, 0, SUCCEEDED, None),
    (500, 0, 0, PENDING, 10),      # first failure: wait base (10 s)
    (0, 1, 15, PENDING, 35),       # second: wait 20 s
    (302, 2, 30, FAILED, None),    # a redirect is not followed, and 30 + 40 > 60 s window
    (429, 0, 55, FAILED, None),    # 55 + 10 > 60
])
def test_outcomes(status: int, failures: int, now_s: int, state: str, next_s: int | None) -> None:
    now = T0 + timedelta(seconds=now_s)
    outcome = outcome_of(Answer(status, "" if status else "refused", 5), pending(failures), POLICY, now, 0.5, now)
    assert outcome.state == state and outcome.attempt.status_code == status
    assert outcome.next_attempt_at == (None if next_s is None else T0 + timedelta(seconds=next_s))
    assert outcome.failures == failures + (0 if state == SUCCEEDED else 1)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]], list[int]]]:
    seen: list[tuple[dict[str, str], bytes]] = []
    answers = [500, 200]

    async def handle(request: web.Request) -> web.Response:
        seen.append(({k.lower(): v for k, v in request.headers.items()}, await request.read()))
        return web.Response(status=answers.pop(0) if len(answers) > 1 else answers[0])

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", seen, answers
    await runner.cleanup()


async def test_attempts_are_signed_retried_logged_and_pruned(
    world: World, receiver: tuple[str, list[tuple[dict[str, str], bytes]], list[int]],  # noqa: F811
) -> None:
    url, seen, _ = receiver
    box, secret, endpoint_id = SecretBox(b"k" * 32), signing.new_secret(), str(uuid.uuid4())
    now = utcnow()
    await world.webhooks.create_endpoint(WebhookEndpointRow(
        id=endpoint_id, user_id=world.user_id, url=url, events_json='["*"]',
        secret_sealed=box.seal(secret, endpoint_id), created_at=now, updated_at=now))
    workflow_id = await new_workflow(world)
    assert await Dispatcher(world.webhooks, world.hub, lambda: None, sweep_seconds=60).catch_up(world.user_id) == 1

    sender = Sender(TargetPolicy(allow_http=True, allow_nets=parse_nets("127.0.0.0/8")), timeout_seconds=2)
    worker = DeliveryWorker(world.webhooks, sender, box, RetryPolicy(0.05, 1, 60, 0.0), concurrency=4)
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        while True:
            found, _ = await world.webhooks.deliveries_page(world.user_id, endpoint_id=endpoint_id, page=1,
                                                            per_page=10)
            if found and found[0].row.state == SUCCEEDED:
                break
            assert time.monotonic() < deadline, found
            await asyncio.sleep(0.02)
    finally:
        running.cancel()
        await worker.close()
        await sender.close()
    assert [a.status_code for a in found[0].attempts] == [200, 500]
    assert len(seen) == 2 and seen[0][0]["webhook-id"] == seen[1][0]["webhook-id"] == found[0].row.id
    for headers, body in seen:
        assert signing.verify(secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body,
                              headers["webhook-signature"])
        assert json.loads(body)["data"]["workflow_id"] == workflow_id
        assert headers["content-type"] == "application/json"

    assert await world.webhooks.forget_before(utcnow() - timedelta(days=1)) == 0  # recent: kept
    assert await world.webhooks.forget_before(utcnow() + timedelta(seconds=1)) == 1
    assert (await world.webhooks.deliveries_page(world.user_id, endpoint_id=endpoint_id, page=1, per_page=10))[1] == 0


async def test_a_secret_sealed_under_another_key_fails_the_delivery_once(
    world: World, receiver: tuple[str, list[tuple[dict[str, str], bytes]], list[int]],  # noqa: F811
) -> None:
    url, seen, _ = receiver
    endpoint_id, now = str(uuid.uuid4()), utcnow()
    await world.webhooks.create_endpoint(WebhookEndpointRow(
        id=endpoint_id, user_id=world.user_id, url=url, events_json='["*"]',
        secret_sealed=SecretBox(b"o" * 32).seal(signing.new_secret(), endpoint_id), created_at=now, updated_at=now))
    await new_workflow(world)
    assert await Dispatcher(world.webhooks, world.hub, lambda: None, sweep_seconds=60).catch_up(world.user_id) == 1
    sender = Sender(TargetPolicy(allow_http=True, allow_nets=parse_nets("127.0.0.0/8")), timeout_seconds=2)
    worker = DeliveryWorker(world.webhooks, sender, SecretBox(b"k" * 32), RetryPolicy(0.05, 1, 60), concurrency=4)
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 10
        while not (found := (await world.webhooks.deliveries_page(world.user_id, endpoint_id=endpoint_id, page=1,
                                                                  per_page=10))[0]) or found[0].row.state != FAILED:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        running.cancel()
        await worker.close()
        await sender.close()
    assert [a.error for a in found[0].attempts] == ["its secret does not open with this server's webhook key"]
    assert seen == []  # nothing unsigned or wrongly signed was sent
