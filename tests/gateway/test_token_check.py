"""The create's token pre-check (GrpcScheduler.check_token): asked once per token for a few
seconds, never in place of the scheduler's own check of the create itself."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from services.common.errors import Unauthenticated
from tests.gateway.conftest import AUTH, Stack
from tests.gateway.forms import CONTENT_TYPE, body
from tests.gateway.test_create import good_fields

MakeStack = Callable[..., AbstractAsyncContextManager[Stack]]


async def create(stack: Stack, token_header: dict[str, str]) -> int:
    reply = await stack.client.post("/v1/workflow", content=body(good_fields()),
                                    headers={"Content-Type": CONTENT_TYPE, **token_header})
    return reply.status_code


async def test_an_accepted_token_is_not_asked_about_again_right_away(make_stack: MakeStack) -> None:
    async with make_stack() as stack:
        assert [await create(stack, AUTH) for _ in range(3)] == [201, 201, 201]
        assert stack.scheduler.get_user_calls == 1
        assert len(stack.scheduler.created) == 3  # each create still authenticated by the scheduler


async def test_a_refused_token_is_asked_about_every_time(make_stack: MakeStack) -> None:
    async with make_stack() as stack:
        wrong = {"Authorization": "Bearer wrong"}
        assert [await create(stack, wrong) for _ in range(2)] == [401, 401]
        assert stack.scheduler.get_user_calls == 2
        assert stack.storage.objects == {} and stack.scheduler.created == []


async def test_a_token_revoked_after_its_pre_check_still_gets_401_and_nothing_is_kept(make_stack: MakeStack) -> None:
    async with make_stack() as stack:
        assert await create(stack, AUTH) == 201
        stack.storage.objects.clear()
        stack.scheduler.create_error = Unauthenticated("token revoked", reason="INVALID_TOKEN")
        reply = await stack.client.post("/v1/workflow", content=body(good_fields()),
                                        headers={"Content-Type": CONTENT_TYPE, **AUTH})
        assert reply.status_code == 401
        assert reply.json()["reason"] == "INVALID_TOKEN"
        assert stack.scheduler.get_user_calls == 1  # the pre-check was skipped: the create said no
        assert stack.storage.objects == {}  # the inputs streamed before the refusal are deleted
