"""local_files.Writers: small puts' file work on writer threads, taken in batches."""

from __future__ import annotations

import asyncio
import threading

import pytest

from services.storage import local_files
from services.storage.local_files import Writers


async def test_jobs_queued_together_run_as_one_batch_and_answer_their_own_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    handed_back: list[int] = []
    settle = local_files._settle
    monkeypatch.setattr(local_files, "_settle", lambda results: (handed_back.append(len(results)), settle(results)))
    writers = Writers(threads=1)
    gate = threading.Event()
    ran_on: list[str] = []

    def job(n: int) -> int:
        ran_on.append(threading.current_thread().name)
        if n == 3:
            raise ValueError("job 3 failed")
        return n * 10

    first = asyncio.ensure_future(writers.run(gate.wait))  # holds the writer
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(writers.run(job, n)) for n in range(6)]
    await asyncio.sleep(0.05)
    assert not any(q.done() for q in queued)
    gate.set()
    results = await asyncio.gather(*queued, return_exceptions=True)
    assert await first is True
    assert results[:3] == [0, 10, 20] and results[4:] == [40, 50]
    assert isinstance(results[3], ValueError)
    assert set(ran_on) == {"storage-writer-0"}  # never the loop's thread
    assert handed_back == [1, 6]  # the six queued behind the first came back to the loop in one call
    writers.close()


async def test_a_cancelled_caller_waits_for_its_job_before_it_ends() -> None:
    writers = Writers()
    gate = threading.Event()
    finished = threading.Event()

    def job() -> None:
        gate.wait(5)
        finished.set()

    task = asyncio.ensure_future(writers.run(job))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()  # a key's lock held by the caller is not released while the job runs
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()
    writers.close()


async def test_close_runs_what_is_queued_then_refuses_more() -> None:
    writers = Writers()
    assert await writers.run(lambda: "up") == "up"
    writers.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writers.run(lambda: "late")
