"""The queue position is read beside the websocket: a slow GET /queue never holds back the
prompt's messages, and `queued` still comes first, with the position when it is known."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.runner.conftest import MakeHarness, assignment, chain
from tests.runner.fakes import eventually

READ_DELAY_S = 3.0


def slow_queue_reads(h: Any, delay_s: float = READ_DELAY_S) -> list[float]:
    """Makes the runner's GET /queue answers arrive `delay_s` late (a busy ComfyUI); returns
    the list the time of each read is appended to."""
    client = h.runner.comfyui
    real = client.queue
    reads: list[float] = []

    async def slow() -> Any:
        reads.append(asyncio.get_running_loop().time())
        await asyncio.sleep(delay_s)
        return await real()

    client.queue = slow
    return reads


async def test_a_slow_queue_read_does_not_delay_the_run(harness: MakeHarness) -> None:
    h = await harness(queue_read_grace_s=0.0)  # read as soon as ComfyUI accepted the prompt
    reads = slow_queue_reads(h)
    started = asyncio.get_running_loop().time()
    h.scheduler.assign(assignment("wf-fast", chain(3, "fast")))

    # Well before the first GET /queue answers: the run does not wait for it.
    assert await h.terminal("wf-fast", timeout_s=READ_DELAY_S - 1.0) == "completed"
    assert asyncio.get_running_loop().time() - started < READ_DELAY_S
    assert reads, "the position was read"
    assert h.scheduler.kinds("wf-fast") == [
        "uploaded", "queued", "running", "executing", "executing", "executing", "output_stored", "completed",
    ]
    (queued,) = h.scheduler.events("wf-fast", "queued")
    assert queued.queue_number == 0  # it ran before the read answered: running is position 0
    (running,) = h.scheduler.events("wf-fast", "running")
    assert running.prompt_id == queued.prompt_id


async def test_waiting_prompts_are_queued_with_the_positions_read(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=400, slots=3)
    h.scheduler.assign(assignment("wf-a", chain(6, "a")))  # ~2.4 s of work in ComfyUI
    await eventually(lambda: h.scheduler.events("wf-a", "running"), what="A running")
    reads = slow_queue_reads(h, delay_s=0.3)
    h.scheduler.assign(assignment("wf-b", chain(3, "b")))
    await eventually(lambda: h.scheduler.events("wf-b", "queued"), what="B queued")
    h.scheduler.assign(assignment("wf-c", chain(3, "c")))
    await eventually(lambda: h.scheduler.events("wf-c", "queued"), what="C queued")
    assert reads
    # Both wait behind A: each is queued with the position the read found, not a default.
    assert [q.queue_number for q in h.scheduler.events("wf-b", "queued")][:1] == [0]  # next to run
    assert [q.queue_number for q in h.scheduler.events("wf-c", "queued")][:1] == [1]
    assert not h.scheduler.events("wf-c", "running")
    for workflow_id in ("wf-a", "wf-b", "wf-c"):
        assert await h.terminal(workflow_id) == "completed"
    assert h.scheduler.kinds("wf-c")[:2] == ["uploaded", "queued"]
    assert "running" in h.scheduler.kinds("wf-c")


async def test_no_position_read_when_the_websocket_said_it_started_first(harness: MakeHarness) -> None:
    h = await harness()
    reads = slow_queue_reads(h, delay_s=0.0)
    client = h.runner.comfyui
    submit = client.submit_prompt

    async def late_answer(prompt: Any, *, client_id: str, prompt_id: str) -> Any:
        """POST /prompt whose answer is read only once the prompt ran and its messages arrived."""
        accepted = await submit(prompt, client_id=client_id, prompt_id=prompt_id)
        await h.history(prompt_id)  # written just after its last websocket message
        await asyncio.sleep(0.2)  # time for the runner's feed to take those messages in
        return accepted

    client.submit_prompt = late_answer
    h.scheduler.assign(assignment("wf-late", chain(3, "late")))

    assert await h.terminal("wf-late") == "completed"
    assert reads == []  # the websocket had said it started: GET /queue could only find it running
    assert h.scheduler.kinds("wf-late") == [
        "uploaded", "queued", "running", "executing", "executing", "executing", "output_stored", "completed",
    ]
    (queued,) = h.scheduler.events("wf-late", "queued")
    assert queued.queue_number == 0


async def test_no_position_read_for_a_prompt_that_starts_within_the_grace(harness: MakeHarness) -> None:
    h = await harness(queue_read_grace_s=1.0)
    reads = slow_queue_reads(h, delay_s=0.0)
    h.scheduler.assign(assignment("wf-idle", chain(3, "idle")))

    assert await h.terminal("wf-idle") == "completed"
    assert reads == []  # an idle ComfyUI started it at once: a read could only find it running
    assert h.scheduler.kinds("wf-idle")[:3] == ["uploaded", "queued", "running"]
    (queued,) = h.scheduler.events("wf-idle", "queued")
    assert queued.queue_number == 0


async def test_a_prompt_still_waiting_after_the_grace_is_read(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=300, slots=2, queue_read_grace_s=0.2)
    h.scheduler.assign(assignment("wf-first", chain(4, "first")))  # ~1.2 s of work in ComfyUI
    await eventually(lambda: h.scheduler.events("wf-first", "running"), what="first running")
    reads = slow_queue_reads(h, delay_s=0.0)
    h.scheduler.assign(assignment("wf-behind", chain(2, "behind")))
    await eventually(lambda: h.scheduler.events("wf-behind", "queued"), what="behind queued")
    assert len(reads) == 1  # once its grace was over, not before
    assert [q.queue_number for q in h.scheduler.events("wf-behind", "queued")] == [0]  # next to run
    assert not h.scheduler.events("wf-behind", "running")
    assert await h.terminal("wf-behind") == "completed"
