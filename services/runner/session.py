"""The runner's session with the scheduler: `RunnerSessionService.Connect`, kept alive.

One stream at a time:

    up    Hello{token, name, tags, slots, comfyui_version, object_info_digest, node_classes, held}
    down  Welcome{runner_id, lease, heartbeat_interval, abandon, takes_event_batches}
          -> abandon what it lists, resend the outbox (events possibly lost with the last
             stream first, then the ones queued while disconnected)
    up    Heartbeat{in_flight} every heartbeat_interval, and the outbox's events as it fills:
          what is queued together goes as one Events message (at most MAX_BATCH_EVENTS,
          about MAX_BATCH_BYTES) when the Welcome says takes_event_batches, a lone event
          (or every event, to a scheduler without the flag) as an Event; the first event
          waits up to `linger_s` for others, unless one ends a run (Outbox.wait)
    down  Assignment / Cancel / Drain, handed to the `SessionHandler`

One message for several events saves the runner a write each (grpc.aio writes every message
with a sendmsg of its own) and lets the scheduler commit them in one transaction.

When the stream breaks (the scheduler restarted or is unreachable), the held work keeps
running and its events pile up in the outbox; the session reconnects with capped exponential
backoff and jitter (at most a quarter of the lease apart while it holds work, so that it is
back before the scheduler gives that work to another runner) and says Hello again with
`held` = what is still running plus whatever has events the scheduler may not have.
`stop()` half-closes the stream and ends the loop.

ComfyUI decides readiness (`Readiness`, see comfyui_watch.py): no Hello until ComfyUI answers
(the runner takes no work meanwhile), and the stream is ended when ComfyUI stays unreachable
or comes back with another node set, to say Hello again once it answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass, field
from typing import Protocol

import grpc
from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.runner.v1 import runner_session_service_pb2_grpc as pb_grpc

from services.common.failover import failover_channel
from services.common.service_auth import PLAIN, ServiceSecurity
from services.runner.comfyui_watch import ComfyUIFacts
from services.runner.config import Backoff
from services.runner.errors import ComfyUIError
from services.runner.outbox import Outbox, WorkflowKey

log = logging.getLogger(__name__)


class SessionHandler(Protocol):
    """What the session asks of, and hands to, the agent."""

    def held(self) -> list[WorkflowKey]: ...
    def in_flight(self) -> int: ...
    def assign(self, assignment: pb.Assignment) -> None: ...
    def cancel(self, key: WorkflowKey) -> None: ...
    def abandon(self, keys: set[WorkflowKey]) -> None: ...
    def drain(self) -> None: ...
    async def hand_back_unstarted(self, reason: str) -> None: ...


@dataclass(frozen=True)
class RunnerIdentity:
    token: str
    name: str
    tags: tuple[str, ...]
    slots: int
    # Pool mode: the registered runner this session drives (the token is then a pool token).
    runner_id: str = ""


@dataclass(frozen=True)
class SessionSettings:
    backoff: Backoff = field(default_factory=Backoff)
    welcome_timeout_s: float = 10.0
    default_heartbeat_s: float = 10.0
    default_lease_s: float = 30.0
    # How long the first queued event waits for others to go with it (Outbox.wait), unless
    # one ends a run; only with a scheduler that takes batches. What waits is progress
    # (queued, running, executing, progress, output_stored): a run's end goes at once. 50 ms
    # rather than 20: in bench.throughput (10 runners, 3 drains each, alternating) the medians
    # were 333.1 and 323.8 /s against 308.6 and 320.4, the scheduler's CPU per workflow
    # 1.39-1.47 ms against 1.52-1.59 (fewer messages, fewer commits); 50 ms is still well
    # under what a person watching progress notices.
    linger_s: float = 0.05


class Readiness(Protocol):
    """ComfyUI's side of the session (implemented by comfyui_watch.ComfyUIWatch)."""

    async def facts(self) -> ComfyUIFacts: ...
    async def lost(self, said: ComfyUIFacts) -> str: ...


class _StreamEnded(Exception):
    pass


# The most events written as one message: a burst goes up in a few messages, none near
# gRPC's 4 MiB message limit (an event larger than MAX_BATCH_BYTES goes alone).
MAX_BATCH_EVENTS = 64
MAX_BATCH_BYTES = 1024 * 1024

# While it holds work, a runner retries at least this many times per lease: the scheduler
# gives the work to another runner one lease after losing the stream (or after its restart).
RETRIES_PER_LEASE = 4


def reconnect_delay(backoff: Backoff, attempt: int, jitter: float, *, holding: bool, lease_s: float) -> float:
    """The backoff's delay before reconnecting; at most lease / RETRIES_PER_LEASE while the
    runner holds work (or has events to deliver), so that it is back before its lease ends."""
    delay = backoff.delay(attempt, jitter)
    return min(delay, lease_s / RETRIES_PER_LEASE) if holding and lease_s > 0 else delay


class RunnerSession:
    def __init__(
        self,
        target: str,
        identity: RunnerIdentity,
        handler: SessionHandler,
        outbox: Outbox,
        readiness: Readiness,
        settings: SessionSettings,
        security: ServiceSecurity = PLAIN,
    ) -> None:
        # one address, or active + standby schedulers; TLS when configured
        self._channel = failover_channel(target, security)
        self._stub = pb_grpc.RunnerSessionServiceStub(self._channel)
        self._identity = identity
        self._handler = handler
        self._outbox = outbox
        self._readiness = readiness
        self._settings = settings
        self._write_lock = asyncio.Lock()
        self._call: grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse] | None = None
        self._stopping = False
        self._welcomed = False
        self._ended = asyncio.Event()
        self.runner_id = ""
        self.connected = asyncio.Event()

    async def run(self) -> None:
        """Connects and reconnects until `stop()` (or cancellation)."""
        attempt = 0
        try:
            while not self._stopping:
                self._welcomed = False
                try:
                    await self._connect_once()
                # InvalidStateError: a write after the scheduler closed the stream (e.g. it ended the
                # session of a runner that was frozen past its lease): an ordinary disconnect.
                except (grpc.aio.AioRpcError, _StreamEnded, ComfyUIError, TimeoutError,
                        asyncio.InvalidStateError) as err:
                    if self._stopping:
                        log.info("scheduler session closed")
                    elif isinstance(err, grpc.aio.AioRpcError):
                        unauthenticated = err.code() == grpc.StatusCode.UNAUTHENTICATED
                        log.log(
                            logging.ERROR if unauthenticated else logging.WARNING,
                            "scheduler session: %s %s",
                            err.code().name,
                            err.details(),
                        )
                    else:
                        log.warning("scheduler session: %s", err)
                except Exception:  # never let the session die: the runner would be cut off for good
                    log.exception("scheduler session failed unexpectedly")
                if self._stopping:
                    break
                attempt = 0 if self._welcomed else attempt + 1
                holding = bool(self._handler.held() or self._outbox.keys())
                await asyncio.sleep(reconnect_delay(self._settings.backoff, attempt, random.random(),
                                                    holding=holding, lease_s=self._outbox.window_s))
        finally:
            self._ended.set()

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Half-closes the stream, so the scheduler ends it, and waits for `run` to return.

        The caller cancels the `run` task if this times out (e.g. while backing off)."""
        self._stopping = True
        call = self._call
        if call is None or call.done():
            return  # not connected: nothing to close; the caller cancels `run`
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
            async with asyncio.timeout(timeout_s):
                async with self._write_lock:
                    await call.done_writing()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), timeout_s)

    async def close(self) -> None:
        await self._channel.close()

    async def flush(self, timeout_s: float) -> bool:
        """True once every queued event has been written (or False after `timeout_s`)."""
        try:
            await asyncio.wait_for(self._outbox.wait_empty(), timeout_s)
        except TimeoutError:
            return False
        return True

    def _hello(self, facts: ComfyUIFacts) -> pb.ConnectRequest:
        held = set(self._handler.held()) | self._outbox.keys()
        return pb.ConnectRequest(
            hello=pb.Hello(
                runner_token=self._identity.token,
                name=self._identity.name,
                tags=list(self._identity.tags),
                slots=self._identity.slots,
                comfyui_version=facts.version,
                object_info_digest=facts.digest,
                node_classes=facts.node_classes,
                held=[pb.HeldWorkflow(workflow_id=w, attempt=a) for w, a in sorted(held)],
                runner_id=self._identity.runner_id,
            )
        )

    async def _connect_once(self) -> None:
        facts = await self._readiness.facts()
        call = self._stub.Connect()
        self._call = call
        tasks: list[asyncio.Task[None]] = []
        try:
            await call.write(self._hello(facts))
            first = await asyncio.wait_for(call.read(), self._settings.welcome_timeout_s)
            if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
                raise _StreamEnded("the scheduler did not answer Hello with Welcome")
            welcome = first.welcome
            self.runner_id = welcome.runner_id
            lease = welcome.lease.ToTimedelta().total_seconds() or self._settings.default_lease_s
            beat = welcome.heartbeat_interval.ToTimedelta().total_seconds() or self._settings.default_heartbeat_s
            self._outbox.window_s = lease
            abandon = {(h.workflow_id, h.attempt) for h in welcome.abandon}
            if abandon:
                self._handler.abandon(abandon)
            self._welcomed = True
            log.info("welcomed as runner %s (lease %.0f s, heartbeat %.1f s)", self.runner_id, lease, beat)
            self.connected.set()
            tasks = [
                asyncio.create_task(self._write_events(call, batches=welcome.takes_event_batches),
                                    name="session writer"),
                asyncio.create_task(self._heartbeat(call, beat), name="session heartbeat"),
                asyncio.create_task(self._read(call), name="session reader"),
                asyncio.create_task(self._watch(facts), name="session readiness"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
            raise _StreamEnded("the scheduler ended the session")
        finally:
            self.connected.clear()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            call.cancel()
            self._call = None
            self._outbox.rewind()

    async def _watch(self, facts: ComfyUIFacts) -> None:
        reason = await self._readiness.lost(facts)
        log.warning("leaving the scheduler: %s", reason)
        # What ComfyUI never got goes back to the scheduler before the session ends.
        await self._handler.hand_back_unstarted(reason)
        await self.flush(self._settings.welcome_timeout_s)
        raise _StreamEnded(reason)

    async def _write_events(self, call: grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse], *,
                            batches: bool) -> None:
        """Writes what the outbox queues, in order: several events as one Events message when
        the scheduler takes them (`batches`), else one Event per message."""
        max_events = MAX_BATCH_EVENTS if batches else 1
        while True:
            await self._outbox.wait(self._settings.linger_s if batches else 0.0)
            batch = self._outbox.next_batch(max_events, MAX_BATCH_BYTES)
            if not batch:
                continue
            if len(batch) == 1:
                request = pb.ConnectRequest(event=batch[0])
            else:
                request = pb.ConnectRequest(events=pb.RunnerEvents(events=batch))
            async with self._write_lock:
                await call.write(request)
            for event in batch:
                self._outbox.written(event)

    async def _heartbeat(
        self, call: grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse], interval_s: float
    ) -> None:
        while True:
            await asyncio.sleep(interval_s)
            async with self._write_lock:
                # draining: the scheduler stops sending assignments (the agent would not take them)
                beat = pb.Heartbeat(in_flight=self._handler.in_flight(),
                                    draining=bool(getattr(self._handler, "draining", False)))
                await call.write(pb.ConnectRequest(heartbeat=beat))

    async def _read(self, call: grpc.aio.StreamStreamCall[pb.ConnectRequest, pb.ConnectResponse]) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            kind = message.WhichOneof("message")
            if kind == "assignment":
                self._handler.assign(message.assignment)
            elif kind == "cancel":
                self._handler.cancel((message.cancel.workflow_id, message.cancel.attempt))
            elif kind == "drain":
                self._handler.drain()
            else:
                log.warning("unexpected %s from the scheduler", kind)
