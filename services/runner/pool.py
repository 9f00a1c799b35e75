"""Pool mode (`python -m services.runner --pool`): one agent per runner registered through the API.

    RunnerPoolService.WatchPool ──> RunnerPool.apply ──> one agent per registered runner
    (the scheduler)                 (this module)       (server.start_runner, as for one ComfyUI)

The pool token is an administrator's (services/scheduler/pool_servicer.py): it reads every
registered runner with its headers in clear, and each agent says Hello with it and
`runner_id`, so the scheduler binds the session to that registration (its owner, name and
tags) instead of creating a runner by name. Each agent sends the runner's headers with every
HTTP and websocket request to its ComfyUI. The pool follows the registry:

    a new runner                          start an agent
    endpoint, headers or tags changed     stop its agent (held work gets the drain timeout),
                                          start one with the new values
    name or status changed                nothing: the scheduler applies them (a disabled
                                          runner keeps its session and gets no new work)
    deleted                               stop its agent at once (the scheduler has already
                                          closed its session and requeued its work)

A broken watch is reopened with backoff and jitter; the agents keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
from comfyfleet.runner.v1 import pool_runner_pb2, runner_pool_service_pb2, runner_pool_service_pb2_grpc

from services.common.failover import failover_channel
from services.runner.config import RunnerSettings

log = logging.getLogger(__name__)


class Agent(Protocol):
    """A running agent (server.RunningRunner)."""

    async def shutdown(self, drain_timeout_s: float | None = None) -> None: ...


StartAgent = Callable[[RunnerSettings], Awaitable[Agent]]


@dataclass(frozen=True)
class Registration:
    """What an agent is started from; a change to any of it restarts the agent."""

    endpoint: str
    headers: tuple[tuple[str, str], ...]
    tags: tuple[str, ...]
    name: str

    @classmethod
    def of(cls, runner: pool_runner_pb2.PoolRunner) -> Registration:
        return cls(runner.endpoint.rstrip("/"), tuple(sorted(runner.headers.items())), tuple(runner.tags),
                   runner.name)

    def restarts(self, new: Registration) -> bool:
        """The name only labels logs: the scheduler takes it from the registration."""
        return dataclasses.replace(self, name=new.name) != new


class RunnerPool:
    """The agents, by runner id; `apply` makes them match a WatchPool snapshot."""

    def __init__(self, settings: RunnerSettings, start: StartAgent) -> None:
        self._settings = settings
        self._start = start
        self.agents: dict[str, tuple[Registration, Agent]] = {}
        self.snapshots_applied = 0
        # Agents being stopped; a stop outlives the cancellation of whoever asked for it.
        self._stopping: set[asyncio.Future[None]] = set()

    def agent_settings(self, runner_id: str, registration: Registration) -> RunnerSettings:
        return dataclasses.replace(
            self._settings, pool=False, runner_id=runner_id, comfyui_url=registration.endpoint,
            comfyui_headers=registration.headers, tags=registration.tags, name=registration.name,
        )

    async def apply(self, runners: list[pool_runner_pb2.PoolRunner]) -> None:
        wanted = {r.id: Registration.of(r) for r in runners}
        gone = [rid for rid in self.agents if rid not in wanted]
        changed = [rid for rid, reg in wanted.items() if rid in self.agents and self.agents[rid][0].restarts(reg)]
        if gone or changed:
            await asyncio.gather(
                *(self._stop(rid, "deleted", drain_timeout_s=0.0) for rid in gone),
                *(self._stop(rid, "changed") for rid in changed),
            )
        for rid, registration in wanted.items():
            if rid not in self.agents:
                log.info("pool: starting runner %s (%s) for %s", registration.name, rid, registration.endpoint)
                agent = await self._start(self.agent_settings(rid, registration))
                self.agents[rid] = (registration, agent)
        self.snapshots_applied += 1

    async def _stop(self, runner_id: str, why: str, drain_timeout_s: float | None = None) -> None:
        registration, agent = self.agents.pop(runner_id)
        log.info("pool: stopping runner %s (%s): %s", registration.name, runner_id, why)
        stopping = asyncio.ensure_future(agent.shutdown(drain_timeout_s))
        self._stopping.add(stopping)
        stopping.add_done_callback(self._stopping.discard)
        await asyncio.shield(stopping)

    async def close(self) -> None:
        """Stops every agent, and waits for the stops already under way."""
        await asyncio.gather(*(self._stop(rid, "pool stopping") for rid in list(self.agents)), *self._stopping,
                             return_exceptions=True)


@dataclass
class RunningPool:
    pool: RunnerPool
    channel: grpc.aio.Channel
    task: asyncio.Task[None]

    async def shutdown(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.pool.close()
        await self.channel.close()
        log.info("pool stopped")


async def _watch(settings: RunnerSettings, channel: grpc.aio.Channel, pool: RunnerPool) -> None:
    stub = runner_pool_service_pb2_grpc.RunnerPoolServiceStub(channel)
    attempt = 0
    while True:
        try:
            call = stub.WatchPool(runner_pool_service_pb2.WatchPoolRequest(),
                                  metadata=(("authorization", f"Bearer {settings.token}"),))
            async for snapshot in call:
                attempt = 0
                await pool.apply(list(snapshot.runners))
            log.warning("pool: the scheduler ended the watch")
        except grpc.aio.AioRpcError as err:
            denied = err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            log.log(logging.ERROR if denied else logging.WARNING, "pool: watch: %s %s", err.code().name,
                    err.details())
        except Exception:  # never let the watch die: the pool would stop following the registry
            log.exception("pool: watch failed unexpectedly")
        attempt += 1
        await asyncio.sleep(settings.scheduler_backoff.delay(attempt, random.random()))


async def start_pool(settings: RunnerSettings, start: StartAgent) -> RunningPool:
    """Starts watching the registered runners; returns once the watch task is running."""
    channel = failover_channel(settings.scheduler, settings.security)  # like the sessions: follows a standby's takeover
    pool = RunnerPool(settings, start)
    task = asyncio.create_task(_watch(settings, channel, pool), name="runner pool watch")
    log.info("runner pool: scheduler %s, storage %s, %d slot(s) per runner", settings.scheduler, settings.storage,
             settings.slots)
    return RunningPool(pool, channel, task)
