"""The outbox: runner_seq numbering, resending what a broken stream may have lost, abandon."""

from __future__ import annotations

from services.runner import events
from services.runner.outbox import Outbox


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drain(outbox: Outbox) -> list[tuple[str, int, int]]:
    sent = []
    while batch := outbox.next_batch(64, 1 << 20):
        for event in batch:
            outbox.written(event)
            sent.append((event.workflow_id, event.attempt, event.runner_seq))
    return sent


def test_seq_counts_per_workflow_and_attempt() -> None:
    outbox = Outbox()
    for key in [("a", 1), ("b", 1), ("a", 1), ("a", 2), ("b", 1)]:
        outbox.emit(key, events.uploaded())
    assert drain(outbox) == [("a", 1, 1), ("b", 1, 1), ("a", 1, 2), ("a", 2, 1), ("b", 1, 2)]
    event = outbox.emit(("a", 1), events.completed())
    assert event.runner_seq == 3 and event.time.seconds > 0 and event.HasField("completed")


def test_rewind_resends_recently_written_events_before_queued_ones() -> None:
    clock = Clock()
    outbox = Outbox(window_s=30.0, clock=clock)
    outbox.emit(("a", 1), events.uploaded())
    drain(outbox)  # written at t=0
    clock.now = 40.0
    outbox.emit(("a", 1), events.queued("p", 0))
    drain(outbox)  # written at t=40; the first one is now older than the window
    outbox.emit(("a", 1), events.running("p"))  # queued while the stream is down
    clock.now = 45.0
    outbox.rewind()
    assert drain(outbox) == [("a", 1, 2), ("a", 1, 3)]
    assert outbox.keys() == {("a", 1)}


def test_abandoned_workflows_are_dropped_and_finished_ones_forget_their_numbering() -> None:
    clock = Clock()
    outbox = Outbox(window_s=1.0, clock=clock)
    outbox.emit(("a", 1), events.uploaded())
    outbox.emit(("b", 1), events.uploaded())
    outbox.drop({("a", 1)})
    assert drain(outbox) == [("b", 1, 1)]
    outbox.finish(("b", 1))
    assert outbox.keys() == {("b", 1)}  # written, not yet beyond the window
    clock.now = 5.0
    outbox.emit(("c", 1), events.uploaded())
    drain(outbox)
    assert outbox.keys() == {("c", 1)}


async def test_wait_and_wait_empty() -> None:
    outbox = Outbox()
    await outbox.wait_empty()
    outbox.emit(("a", 1), events.uploaded())
    await outbox.wait()
    drain(outbox)
    await outbox.wait_empty()
