"""EventService: the fleet-wide watch, every event of the caller's workflows in user_seq order
(services.scheduler.db.event_numbers), stored then live, without gap or duplicate.

The shape of Workflows.watch, keyed by user: subscribe to the hub first, then read the log
after the cursor in pages, then take live events, skipping those already sent and reading the
log for any number that arrived out of order (two changes may publish in another order than
they committed). A watcher that falls too far behind is ended; it resumes with its cursor.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from comfyfleet.scheduler.v1 import event_service_pb2, event_service_pb2_grpc, workflow_pb2

from services.common.grpc_server import maps_domain_errors
from services.scheduler.db.event_numbers import UserEventLog
from services.scheduler.db.identity_store import IdentityStore
from services.scheduler.errors import InvalidArgument
from services.scheduler.hub import OVERFLOW, EventHub
from services.scheduler.workflow_servicer import caller

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
Response = event_service_pb2.WatchEventsResponse

PAGE = 500


async def watch_user_events(log: UserEventLog, hub: EventHub, user_id: str,
                            req: event_service_pb2.WatchEventsRequest) -> AsyncIterator[Response]:
    """`started_at_user_seq` (the user's last number as the watch starts), then events."""
    if req.after_user_seq < 0 or req.max_replay < 0:
        raise InvalidArgument("after_user_seq and max_replay must not be negative")
    with hub.watch_user(user_id) as watcher:
        newest = await log.last_number(user_id)
        yield Response(started_at_user_seq=newest)
        if not req.replay:
            last = newest
        else:
            last = req.after_user_seq
            if req.max_replay:
                last = max(last, newest - req.max_replay)
            while True:
                batch = await log.events_after(user_id, last, PAGE)
                for event in batch:
                    yield Response(event=event)
                    last = event.user_seq
                if len(batch) < PAGE:
                    break
        while True:
            live = await watcher.queue.get()
            if live is OVERFLOW:
                return  # too far behind: the client resumes with its cursor
            if live.user_seq <= last:
                continue
            pending: list[workflow_pb2.WorkflowEvent] = [live]
            if live.user_seq != last + 1:  # published out of order: the log has the ones between
                pending = await log.events_after(user_id, last, int(live.user_seq - last))
            for event in pending:
                yield Response(event=event)
                last = event.user_seq


class EventServicer(event_service_pb2_grpc.EventServiceServicer):
    def __init__(self, identity: IdentityStore, log: UserEventLog, hub: EventHub) -> None:
        self.identity = identity
        self.log = log
        self.hub = hub

    @maps_domain_errors
    async def WatchEvents(
        self, request: event_service_pb2.WatchEventsRequest, context: Context
    ) -> AsyncIterator[Response]:
        user = await caller(self.identity, context)
        async for item in watch_user_events(self.log, self.hub, user.id, request):
            yield item
