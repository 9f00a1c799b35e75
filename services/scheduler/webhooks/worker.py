"""Sends due deliveries: each attempt signed afresh (a new webhook-timestamp, the same
webhook-id and body), recorded with the delivery's next state in one transaction.

A delivery is pending until an attempt gets a 2xx (succeeded) or the retry window closes
(failed); after a failure the next attempt waits per the RetryPolicy (backoff.py). Attempts
run concurrently up to `concurrency`, apart from everything else the scheduler does, so a slow
or dead receiver delays nothing but its own deliveries. State lives in the database: after a
restart, pending deliveries are picked up where they were (an attempt cut short by the restart
is made again: receivers dedupe on webhook-id, as Standard Webhooks asks).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from services.scheduler.db.models import WebhookAttemptRow, WebhookDeliveryRow
from services.scheduler.records import utcnow
from services.scheduler.webhooks import signing
from services.scheduler.webhooks.backoff import RetryPolicy
from services.scheduler.webhooks.sealing import SecretBox
from services.scheduler.webhooks.sender import Answer, Sender
from services.scheduler.webhooks.store import FAILED, PENDING, SUCCEEDED, Outcome, WebhookStore, aware

log = logging.getLogger(__name__)

IDLE_SECONDS = 5.0
COOL_DOWN = timedelta(seconds=30)
PRUNE_EVERY = timedelta(hours=1)


def outcome_of(answer: Answer, row: WebhookDeliveryRow, retry: RetryPolicy, now: datetime, rand: float,
               attempted_at: datetime) -> Outcome:
    """What an attempt's answer makes of the delivery (pure)."""
    attempt = WebhookAttemptRow(delivery_id=row.id, number=0, attempted_at=attempted_at,
                                status_code=answer.status_code, error=answer.error, duration_ms=answer.duration_ms)
    if answer.ok:
        return Outcome(attempt, SUCCEEDED, row.failures, None)
    failures = row.failures + 1
    window_start = aware(row.window_start) or now
    next_at = retry.next_attempt(window_start, now, failures, rand)
    return Outcome(attempt, PENDING if next_at is not None else FAILED, failures, next_at)


class DeliveryWorker:
    def __init__(self, store: WebhookStore, sender: Sender, box: SecretBox, retry: RetryPolicy, *,
                 concurrency: int, log_days: float = 30.0, clock: Callable[[], datetime] = utcnow,
                 rand: Callable[[], float] = random.random) -> None:
        self.store = store
        self.sender = sender
        self.box = box
        self.retry = retry
        self.concurrency = concurrency
        self.clock = clock
        self.rand = rand
        self.log_days = log_days  # finished deliveries are kept this long (0 = forever)
        self._pruned_at: datetime | None = None
        self._wake = asyncio.Event()
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._cooling: dict[str, datetime] = {}  # delivery id -> not before (after an internal error)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                delay = await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; trying again")
                delay = IDLE_SECONDS
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()

    async def _round(self) -> float:
        """Starts what is due (within the free slots); returns how long to wait before the next round."""
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return IDLE_SECONDS  # a finishing attempt wakes the loop
        now = self.clock()
        if self.log_days and (self._pruned_at is None or now - self._pruned_at > PRUNE_EVERY):
            self._pruned_at = now
            if forgotten := await self.store.forget_before(now - timedelta(days=self.log_days)):
                log.info("forgot %d webhook deliveries older than %g days", forgotten, self.log_days)
        self._cooling = {key: until for key, until in self._cooling.items() if until > now}
        skip = [*self._in_flight, *self._cooling]
        due = await self.store.due(now, free, skip)
        for row in due:
            task = asyncio.create_task(self._attempt(row), name=f"webhook-{row.id}")
            self._in_flight[row.id] = task
            task.add_done_callback(functools.partial(self._finished, row.id))
        if due:
            return 0.0
        next_at = await self.store.next_due(skip)
        if next_at is None:  # nothing (a new delivery or a finishing attempt wakes the loop)
            return IDLE_SECONDS
        if next_at <= now:  # came due meanwhile (a short pause: never a busy loop)
            return 0.05
        return min(IDLE_SECONDS, (next_at - now).total_seconds())

    def _finished(self, key: str, _task: asyncio.Task[None]) -> None:
        self._in_flight.pop(key, None)
        self._wake.set()

    async def _attempt(self, row: WebhookDeliveryRow) -> None:
        try:
            attempted_at = self.clock()
            sealed = await self.store.signing_secret(row)
            secret = None
            if sealed is None:
                answer = Answer(0, "the webhook was deleted", 0)
            else:
                try:
                    secret = self.box.open(*sealed)
                except ValueError:
                    answer = Answer(0, "its secret does not open with this server's webhook key", 0)
            if secret is None:  # nothing can ever sign it: failed for good
                outcome = Outcome(outcome_of(answer, row, self.retry, attempted_at, 0.0, attempted_at).attempt,
                                  FAILED, row.failures + 1, None)
            else:
                body = row.payload.encode()
                answer = await self.sender.post(row.url, signing.headers(secret, row.id, int(time.time()), body), body)
                outcome = outcome_of(answer, row, self.retry, self.clock(), self.rand(), attempted_at)
            await self.store.record(row.id, outcome, self.clock())
            log.info("webhook delivery %s to %s: %s -> %s", row.id, row.url,
                     answer.status_code or answer.error, outcome.state)
        except Exception:
            # (a database error, say): not tried again before the cool-down, so never a hot loop
            self._cooling[row.id] = self.clock() + COOL_DOWN
            log.exception("webhook delivery %s failed to run; trying again later", row.id)

    async def close(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
