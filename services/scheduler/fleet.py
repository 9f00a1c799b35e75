"""The connected runners, in memory: their sessions, reserved slots and outgoing messages.

Placement reads `snapshot()`; the dispatcher `reserve`s a slot before it sends an Assignment
and `release`s it when the workflow leaves the runner. Nothing here does I/O: a session's
messages go into its outbox queue, which the session's stream drains.
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
                enabled=s.enabled,
                connected=not s.closed,
                last_assigned=self._last_assigned.get(s.runner_id, 0),
            )
            for s in self.sessions.values()
        ]

    def reserve(self, runner_id: str, workflow_id: str, attempt: int) -> Session | None:
        session = self.sessions.get(runner_id)
        if session is None or session.closed or len(session.held) >= session.slots:
            return None
        session.held[workflow_id] = attempt
        self._counter += 1
        self._last_assigned[runner_id] = self._counter
        return session

    def release(self, runner_id: str | None, workflow_id: str) -> None:
        if runner_id and (session := self.sessions.get(runner_id)) is not None:
            session.held.pop(workflow_id, None)
