"""The connected runners, in memory: their sessions, reserved slots and outgoing messages.

Placement reads `snapshot()`; the dispatcher `reserve`s a slot before it sends an Assignment
and `release`s it when the workflow leaves the runner. Nothing here does I/O: a session's
messages go into its outbox queue, which the session's stream drains.

Lifecycle: a disabled runner (`set_enabled`) and a draining one (`drain`: told so with a
Drain message, or it said so itself) keep what they hold and get nothing new; `forget`
closes a deleted runner's session for good.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from comfyfleet.runner.v1 import runner_session_service_pb2 as session_pb2

from services.scheduler.core.placement import RunnerSnapshot


@dataclass
class Session:
    runner_id: str
    user_id: str
    name: str
    tags: frozenset[str]
    slots: int
    enabled: bool = True
    # Finishing what it holds, taking nothing new (until it reconnects).
    draining: bool = False
    # Made shared by an administrator: serves every user allowed to use shared runners.
    shared: bool = False
    # workflow id -> attempt, for everything this runner holds now.
    held: dict[str, int] = field(default_factory=dict)
    outbox: asyncio.Queue[session_pb2.ConnectResponse | None] = field(default_factory=asyncio.Queue)
    last_heard: float = field(default_factory=time.monotonic)
    closed: bool = False

    def send(self, message: session_pb2.ConnectResponse) -> bool:
        if self.closed:
            return False
        self.outbox.put_nowait(message)
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)


class Fleet:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self._last_assigned: dict[str, int] = {}
        self._counter = 0

    def attach(self, session: Session) -> Session | None:
        """Registers a session; returns the one it replaces (same runner reconnecting)."""
        old = self.sessions.get(session.runner_id)
        self.sessions[session.runner_id] = session
        return old

    def detach(self, session: Session) -> bool:
        """Removes `session` if it is still the current one for its runner."""
        if self.sessions.get(session.runner_id) is session:
            del self.sessions[session.runner_id]
            return True
        return False

    def connected(self, runner_id: str) -> Session | None:
        return self.sessions.get(runner_id)

    def snapshot(self) -> list[RunnerSnapshot]:
        return [
            RunnerSnapshot(
                id=s.runner_id,
                user_id=s.user_id,
                tags=s.tags,
                slots=s.slots,
                in_flight=len(s.held),
                enabled=s.enabled and not s.draining,
                connected=not s.closed,
                last_assigned=self._last_assigned.get(s.runner_id, 0),
                shared=s.shared,
            )
            for s in self.sessions.values()
        ]

    def reserve(self, runner_id: str, workflow_id: str, attempt: int) -> Session | None:
        """Takes a slot of `runner_id` for `workflow_id`; None if it has none free, or holds that
        workflow already (a create with a caller-chosen id that is taken must not touch it)."""
        session = self.sessions.get(runner_id)
        if (session is None or session.closed or not session.enabled or session.draining
                or len(session.held) >= session.slots or workflow_id in session.held):
            return None
        session.held[workflow_id] = attempt
        self._counter += 1
        self._last_assigned[runner_id] = self._counter
        return session

    def release(self, runner_id: str | None, workflow_id: str) -> None:
        if runner_id and (session := self.sessions.get(runner_id)) is not None:
            session.held.pop(workflow_id, None)

    def set_enabled(self, runner_id: str, enabled: bool) -> bool:
        """Enables or disables a connected runner; False if it is not connected."""
        session = self.sessions.get(runner_id)
        if session is None:
            return False
        session.enabled = enabled
        return True

    def drain(self, runner_id: str) -> bool:
        """Tells a connected runner to finish what it holds and take nothing new."""
        session = self.sessions.get(runner_id)
        if session is None:
            return False
        if not session.draining:
            session.draining = True
            session.send(session_pb2.ConnectResponse(drain=session_pb2.Drain()))
        return True

    def forget(self, runner_id: str) -> Session | None:
        """Closes and removes a deleted runner's session; returns it (None if not connected)."""
        session = self.sessions.pop(runner_id, None)
        self._last_assigned.pop(runner_id, None)
        if session is not None:
            session.close()
        return session
