"""RunnerSessionService: one bidirectional stream per runner; the stream is the lease.

Up: Hello, then Heartbeat and Event or Events. Down: Welcome, then Assignment, Cancel, Drain.
The Welcome says `takes_event_batches`: a runner then writes the events it has queued together
as one Events message (they apply as that many Event messages in order, and so commit together);
a runner that does not see the flag (an older scheduler's Welcome) sends one Event per message.
A stream that breaks gives the runner `lease` seconds to come back and claim what it holds;
a stream on which nothing arrives for `lease` seconds is closed and its work requeued at once.
A heartbeat that says `draining` (the runner is shutting down) stops new assignments to it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from comfyfleet.runner.v1 import runner_event_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as session_grpc
from google.protobuf.duration_pb2 import Duration

from services.common.errors import ComfyfleetError, InvalidArgument, abort
from services.scheduler.config import Settings
from services.scheduler.core.graph import normalise_tags
from services.scheduler.db.identity_store import RUNNER, IdentityStore
from services.scheduler.db.workflow_store import WorkflowStore
from services.scheduler.execution import Execution
from services.scheduler.fleet import Fleet, Session
from services.scheduler.pool_servicer import pool_user

log = logging.getLogger(__name__)

HELLO_TIMEOUT_SECONDS = 10.0
# Events of one session queued and not yet committed, at most.
EVENTS_IN_FLIGHT = 256


class RunnerSessionServicer(session_grpc.RunnerSessionServiceServicer):
    def __init__(
        self, settings: Settings, identity: IdentityStore, store: WorkflowStore, fleet: Fleet, execution: Execution
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.store = store
        self.fleet = fleet
        self.execution = execution
        self._expiry: dict[str, asyncio.Task[None]] = {}

    # -- lease expiry ----------------------------------------------------------------------

    def expire_later(self, runner_id: str, delay: float) -> None:
        """Requeues the runner's work after `delay` unless it has reconnected by then."""
        self._cancel_expiry(runner_id)
        self._expiry[runner_id] = asyncio.create_task(self._expire(runner_id, delay))

    async def _expire(self, runner_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._expiry.pop(runner_id, None)
        if self.fleet.connected(runner_id) is None:
            n = await self.execution.requeue(runner_id, why="runner lease expired")
            if n:
                log.warning("runner %s did not come back: %d workflows requeued", runner_id, n)

    def _cancel_expiry(self, runner_id: str) -> None:
        task = self._expiry.pop(runner_id, None)
        if task is not None:
            task.cancel()

    async def expire_orphans_after_start(self) -> None:
        """After a restart, runners get one lease to reconnect and claim their work."""
        for runner_id in (await self.store.open_on_runners()):
            if self.fleet.connected(runner_id) is None:
                self.expire_later(runner_id, self.settings.lease_seconds)

    async def close(self) -> None:
        for task in self._expiry.values():
            task.cancel()
        self._expiry.clear()
        for session in list(self.fleet.sessions.values()):
            session.close()

    # -- the stream ------------------------------------------------------------------------

    async def Connect(
        self, request_iterator: AsyncIterator[session_pb2.ConnectRequest], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[session_pb2.ConnectResponse]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), HELLO_TIMEOUT_SECONDS)
            if first.WhichOneof("message") != "hello":
                raise InvalidArgument("the first message of a runner session must be a Hello", reason="HELLO_FIRST")
            session, welcome = await self._open(first.hello)
        except ComfyfleetError as err:
            await abort(context, err)
            return
        except (StopAsyncIteration, TimeoutError):
            return
        log.info("runner %s (%s) connected, slots=%d tags=%s", session.name, session.runner_id, session.slots,
                 sorted(session.tags))
        yield session_pb2.ConnectResponse(welcome=welcome)
        self.execution.kick()

        reader = asyncio.create_task(self._read(session, request_iterator))
        lease_lapsed = False
        try:
            while True:
                try:
                    message = await asyncio.wait_for(session.outbox.get(), self.settings.heartbeat_seconds)
                except TimeoutError:
                    if time.monotonic() - session.last_heard > self.settings.lease_seconds:
                        lease_lapsed = True
                        log.warning("runner %s lease lapsed", session.name)
                        break
                    continue
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            session.close()
            if self.fleet.detach(session):
                log.info("runner %s disconnected", session.name)
                if lease_lapsed:
                    await self.execution.requeue(session.runner_id, why="runner lease lapsed")
                else:
                    self.expire_later(session.runner_id, self.settings.lease_seconds)

    async def _open(self, hello: session_pb2.Hello) -> tuple[Session, session_pb2.Welcome]:
        tags = normalise_tags(list(hello.tags))
        slots = max(1, hello.slots or 1)
        if hello.runner_id:  # a runner pool's session for a runner registered through the API
            await pool_user(self.identity, hello.runner_token)
            runner = await self.identity.hello_registered_runner(
                hello.runner_id, slots=slots, comfyui_version=hello.comfyui_version, digest=hello.object_info_digest)
            tags = normalise_tags(json.loads(runner.tags_json))  # as registered, not as the pool says
        else:
            user = await self.identity.authenticate(hello.runner_token, RUNNER)
            runner = await self.identity.upsert_runner(
                user.id, hello.name or "runner", tags=tags, slots=slots,
                comfyui_version=hello.comfyui_version, digest=hello.object_info_digest,
            )
        self._cancel_expiry(runner.id)
        session = Session(runner.id, runner.user_id, runner.name, frozenset(tags), slots,
                          enabled=runner.status == "active",
                          shared=bool(getattr(runner, "shared", False)))
        previous = self.fleet.attach(session)
        if previous is not None:
            previous.close()  # the same runner reconnected before its old stream noticed

        open_rows = {r.id: r for r in (await self.store.open_on_runners()).get(runner.id, [])}
        welcome = session_pb2.Welcome(
            runner_id=runner.id,
            lease=Duration(seconds=int(self.settings.lease_seconds),
                           nanos=int(self.settings.lease_seconds % 1 * 1e9)),
            heartbeat_interval=Duration(seconds=int(self.settings.heartbeat_seconds),
                                        nanos=int(self.settings.heartbeat_seconds % 1 * 1e9)),
            takes_event_batches=True,
        )
        for held in hello.held:
            row = open_rows.get(held.workflow_id)
            if row is not None and row.attempt == held.attempt:
                session.held[row.id] = row.attempt
            else:
                welcome.abandon.append(held)
        # Work the scheduler thinks this runner has but the runner does not: run it again.
        await self.execution.requeue(runner.id, keep=frozenset(session.held), why="runner came back without it")
        return session, welcome

    async def _read(self, session: Session, requests: AsyncIterator[session_pb2.ConnectRequest]) -> None:
        """Events are queued for the group commit as they arrive, without waiting for the one
        before to commit (so a burst, and every batch, shares a transaction); they apply in
        arrival order. At most EVENTS_IN_FLIGHT wait at a time: then reading waits too, and gRPC
        flow control holds the runner back."""
        last_touch = 0.0
        applying: collections.deque[asyncio.Future[None]] = collections.deque()
        try:
            async for message in requests:
                now = time.monotonic()
                session.last_heard = now
                kind = message.WhichOneof("message")
                if kind == "event":
                    await self._event(session, message.event, applying)
                elif kind == "events":
                    for event in message.events.events:
                        await self._event(session, event, applying)
                elif kind == "heartbeat":
                    if message.heartbeat.draining and not session.draining:
                        session.draining = True  # shutting down: nothing new for it (Fleet.snapshot)
                        log.info("runner %s is draining", session.name)
                    if now - last_touch > 30:
                        last_touch = now
                        await self.identity.touch_runner(session.runner_id)
            # The runner closed its side: the stream ends once what it sent is in.
            await asyncio.shield(asyncio.gather(*applying))
        finally:
            for pending in applying:
                if not pending.done():
                    self.store.db.adopt(pending)  # Database.close waits for them
        session.close()  # the runner closed its side

    async def _event(self, session: Session, event: runner_event_pb2.RunnerEvent,
                     applying: collections.deque[asyncio.Future[None]]) -> None:
        """Queues one event's change (`applying`: those queued and not yet committed); waits
        only for a `handed_back` (after the events before it) or when EVENTS_IN_FLIGHT wait."""
        while applying and applying[0].done():
            applying.popleft()
        if event.WhichOneof("kind") == "handed_back":
            # A requeue reads the rows: the events before it must be in first.
            await asyncio.shield(asyncio.gather(*applying))
            handing = asyncio.ensure_future(self.execution.on_event(session, event))
            try:
                await asyncio.shield(handing)
            except asyncio.CancelledError:
                self.store.db.adopt(handing)
                raise
            except Exception:
                log.exception("event from runner %s could not be applied", session.name)
        else:
            # An event that arrived is applied and published whole, even if the session
            # ends meanwhile: a change committed but never published would leave
            # watchers waiting for a terminal event they never get. (Never raises.)
            applying.append(self.execution.event_arrived(session, event))
        if len(applying) >= EVENTS_IN_FLIGHT:
            await asyncio.shield(applying[0])
