"""One workflow's watch stream (WatchWorkflow): a snapshot unless resuming, the stored events
after the cursor, then live ones from the hub, ending after the terminal status event.

With `batch`, the events that are ready together go in one message: the stored events of a
page, or the live ones that arrived while the last message was being sent (a runner's events
of one run usually reach the scheduler together and are committed together). Each message of
a gRPC stream costs both sides a round of their own, so a run's ~8 events in one message reach
an SSE subscriber a few milliseconds sooner than in eight. A message holds at most
`MESSAGE_EVENTS` events and about `MESSAGE_BYTES` bytes (a log event can be long).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.scheduler.core.state import Status
from services.scheduler.db.workflow_store import EVENTS_PAGE, WorkflowStore
from services.scheduler.hub import EventHub, Watcher
from services.scheduler.records import PB_TO_STATUS, workflow_pb

Message = workflow_service_pb2.WatchWorkflowResponse

MESSAGE_EVENTS = 256
MESSAGE_BYTES = 1 << 20


def is_terminal_event(event: workflow_pb2.WorkflowEvent) -> bool:
    return event.WhichOneof("kind") == "status" and PB_TO_STATUS[event.status.workflow.status].terminal


def upto_terminal(events: list[workflow_pb2.WorkflowEvent]) -> tuple[list[workflow_pb2.WorkflowEvent], bool]:
    """The events up to and including the first terminal status event, and whether there was one."""
    for i, event in enumerate(events):
        if is_terminal_event(event):
            return events[:i + 1], True
    return events, False


def messages(events: list[workflow_pb2.WorkflowEvent], batch: bool) -> Iterator[Message]:
    """`events` as watch messages: one each, or with `batch` as few as the bounds allow."""
    if not batch:
        for event in events:
            yield Message(event=event)
        return
    chunk: list[workflow_pb2.WorkflowEvent] = []
    size = 0
    for event in events:
        event_size = event.ByteSize()
        if chunk and (len(chunk) >= MESSAGE_EVENTS or size + event_size > MESSAGE_BYTES):
            yield Message(events=workflow_service_pb2.WorkflowEvents(events=chunk))
            chunk, size = [], 0
        chunk.append(event)
        size += event_size
    if chunk:
        yield Message(events=workflow_service_pb2.WorkflowEvents(events=chunk))


def _arrived(
    watcher: Watcher, first: workflow_pb2.WorkflowEvent | None
) -> tuple[list[workflow_pb2.WorkflowEvent], bool]:
    """`first` and every event already waiting behind it; and whether the watcher overflowed
    (OVERFLOW is always the last thing in its queue)."""
    if first is None:  # OVERFLOW
        return [], True
    arrived = [first]
    queue = watcher.queue
    while not queue.empty():
        item = queue.get_nowait()
        if item is None:  # OVERFLOW
            return arrived, True
        arrived.append(item)
    return arrived, False


async def watch(
    store: WorkflowStore, hub: EventHub, user_id: str, req: workflow_service_pb2.WatchWorkflowRequest,
    checked: Callable[[], Awaitable[None]] | None = None,
) -> AsyncIterator[Message]:
    """Snapshot (unless resuming), stored events after the cursor, then live ones;
    `checked()` is awaited once the workflow is found, before anything is yielded.

    One read of the row (with the log after the cursor when resuming), after the watcher is
    registered: every event committed after it reaches the watcher, every one before it is
    in the row or in the log. A snapshot is the row as of its last_seq: what follows it can
    only come through the watcher. A live event that does not follow the last one sent (the
    watcher joined while it was being committed, or events were skipped) is read from the log
    with what came before it, so nothing is sent twice or missed."""
    snapshot = req.after_seq == 0 and not req.from_start
    with hub.watch(req.id) as watcher:
        # NotFound before anything is sent
        row, outputs, stored = await store.watch_start(req.id, user_id, None if snapshot else req.after_seq)
        if checked is not None:
            await checked()
        last = req.after_seq
        if snapshot:
            yield Message(snapshot=workflow_pb(row, outputs))
            if Status(row.status).terminal:
                return
            last = row.last_seq
        while stored:
            page, ended = upto_terminal(stored)
            for message in messages(page, req.batch):
                yield message
            last = page[-1].seq
            if ended:
                return
            if len(stored) < EVENTS_PAGE:
                break
            stored = await store.events_after(req.id, last)
        # Resuming at or past the end of a finished workflow: nothing more will come.
        if Status(row.status).terminal and row.last_seq <= last:
            return
        while True:
            arrived, overflowed = _arrived(watcher, await watcher.queue.get())
            pending = [event for event in arrived if event.seq > last]
            if pending and any(event.seq != last + 1 + i for i, event in enumerate(pending)):
                pending = await _read_through(store, req.id, last, max(event.seq for event in pending))
            if pending:
                pending, ended = upto_terminal(pending)
                for message in messages(pending, req.batch):
                    yield message
                last = pending[-1].seq
                if ended:
                    return
            if overflowed:
                return  # too far behind: the client resumes with Last-Event-ID


async def _read_through(
    store: WorkflowStore, workflow_id: str, after: int, through: int
) -> list[workflow_pb2.WorkflowEvent]:
    """The stored events after `after` up to at least `through` (committed: they were published)."""
    events: list[workflow_pb2.WorkflowEvent] = []
    while True:
        page = await store.events_after(workflow_id, after)
        events += page
        if not page or page[-1].seq >= through:
            return events
        after = page[-1].seq
