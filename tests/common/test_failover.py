"""The scheduler channel that follows the active scheduler (services/common/failover.py):
which target an address list becomes, and, against two real grpc.aio servers, that calls go
to the one whose health says SERVING and follow it when that changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.failover import failover_channel, target

pytestmark = pytest.mark.timeout(30)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.mark.parametrize(("addresses", "expected"), [
    ("127.0.0.1:50051", "127.0.0.1:50051"),  # one address: as given, names allowed
    ("scheduler.ns.svc:50051", "scheduler.ns.svc:50051"),
    ("127.0.0.1:1, 127.0.0.1:2", "ipv4:127.0.0.1:1,127.0.0.1:2"),
    ("10.0.0.7:50051,10.0.0.8:50051,", "ipv4:10.0.0.7:50051,10.0.0.8:50051"),
    ("[::1]:1,[::1]:2", "ipv6:[::1]:1,[::1]:2"),
])
def test_target_of_one_or_several_addresses(addresses: str, expected: str) -> None:
    assert target(addresses) == expected


@pytest.mark.parametrize(("addresses", "error"), [
    ("", "no scheduler address"),
    ("scheduler-0:1,scheduler-1:1", "must be IP:port, not host names"),
    ("127.0.0.1:1,[::1]:2", "mix IPv4 and IPv6"),
])
def test_target_refuses_what_grpc_cannot_resolve(addresses: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        target(addresses)


class Scheduler:
    """A server with only gRPC health; it also reports its own name as a SERVING service."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server = grpc.aio.server()
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def start(self, status: int) -> None:
        await self.health.set(self.name, SERVING)
        await self.health.set("", status)
        await self.server.start()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Scheduler, Scheduler]]:
    active, standby = Scheduler("active"), Scheduler("standby")
    await active.start(SERVING)
    await standby.start(NOT_SERVING)
    yield active, standby
    await asyncio.gather(active.server.stop(None), standby.server.stop(None))


async def answered_by(channel: grpc.aio.Channel) -> str:
    """Which server a call reached: only that one knows its own name as a service."""
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ("active", "standby"):
        try:
            await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
            return name
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.NOT_FOUND:
                return err.code().name
    raise AssertionError("unreachable")


async def test_calls_go_to_the_serving_scheduler_and_follow_a_takeover(pair: tuple[Scheduler, Scheduler]) -> None:
    active, standby = pair
    channel = failover_channel(f"127.0.0.1:{standby.port},127.0.0.1:{active.port}")
    try:
        assert [await answered_by(channel) for _ in range(6)] == ["active"] * 6

        # the active one dies, the standby takes over
        await active.server.stop(None)
        await standby.health.set("", SERVING)

        async def first_standby_answer() -> None:
            for _ in range(100):
                if await answered_by(channel) == "standby":
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("the channel never went to the standby")

        await asyncio.wait_for(first_standby_answer(), 10)
        assert [await answered_by(channel) for _ in range(6)] == ["standby"] * 6
    finally:
        await channel.close()


async def test_with_no_serving_scheduler_calls_fail_unavailable_at_once(pair: tuple[Scheduler, Scheduler]) -> None:
    active, standby = pair
    await active.health.set("", NOT_SERVING)
    channel = failover_channel(f"127.0.0.1:{standby.port},127.0.0.1:{active.port}")
    try:
        assert await answered_by(channel) == "UNAVAILABLE"
    finally:
        await channel.close()
