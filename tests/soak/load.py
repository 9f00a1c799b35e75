"""The soak test's load: steady submissions, a subscriber for each, and a reader, for a while.

One asyncio loop, one HTTP client (its connections are closed when `run` returns):

- the submitter posts `POST /v1/workflow` every `interval` seconds: a `$text` prefix unique
  to the submission and a `#choice` scaling method, one in three with a small `$file` image.
  At most `in_flight` workflows are open at once (a submission waits for a slot), so the
  load is steady and a backlog cannot pass for a leak;
- each accepted workflow is taken by one of `in_flight` subscribers, in turn one of three
  ways: replay from the start (`Last-Event-ID: 0`) to the end; live (no header: snapshot,
  then live frames) to the end; or go away after 1 to 4 frames and come back with
  `Last-Event-ID` of the last frame seen, to the end. Each read is checked frame by frame
  (tests/soak/sse_check.py) and must end with the `completed` status;
- a reader lists workflows, gets one, and gets a completed one's outputs, once a second.

Everything that went wrong is a string in `Tally.problems`; the test wants none.
"""

from __future__ import annotations

import asyncio
import io
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL import Image

from tests.soak.sse_check import check_log, read_stream

TAGS = "soak"
METHOD = "#choice(method, nearest-exact, bilinear, area)"
METHODS = ("nearest-exact", "bilinear", "area")
MADE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 48, "height": 32, "batch_size": 1, "color": 3368652}},
    "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": METHOD,
                                                 "width": 24, "height": 16, "crop": "disabled"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "$text(prefix)"}},
}
UPLOADED = {**MADE, "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}}}
GRAPHS = {"made": json.dumps(MADE), "uploaded": json.dumps(UPLOADED)}
MODES = ("replay", "live", "reconnect")
STREAM_SECONDS = 90.0  # one workflow's whole subscription, at most


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (n % 256, (n * 7) % 256, 90)).save(out, format="PNG")
    return out.getvalue()


@dataclass
class Tally:
    submitted: int = 0
    accepted: list[str] = field(default_factory=list)
    create_seconds: list[float] = field(default_factory=list)
    completed: int = 0
    frames: int = 0
    reconnects: int = 0
    reads: int = 0  # list / get / outputs calls
    modes: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long submissions went on


async def burst(base_url: str, token: str, concurrency: int = 24, rounds: int = 3) -> list[str]:
    """Lists workflows `concurrency` at a time, `rounds` times: every connection pool behind
    the gateway (the scheduler's database pool) grows to its idle size during the warm-up,
    so the idle fd baseline after it holds them. Returns the problems."""
    problems: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30, limits=limits) as client:

        async def one() -> None:
            reply = await client.get("/v1/workflow", params={"per_page": "100", "tag": TAGS})
            if reply.status_code != 200:
                problems.append(f"GET /v1/workflow: {reply.status_code} {reply.text[:300]}")

        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(concurrency)))
    return problems


@dataclass
class Load:
    base_url: str
    token: str
    label: str
    interval: float = 0.25
    in_flight: int = 8
    seed: int = 11
    tally: Tally = field(default_factory=Tally)

    async def run(self, seconds: float) -> Tally:
        """Submits for `seconds`, then waits until every accepted workflow's subscription ended."""
        limits = httpx.Limits(max_connections=self.in_flight + 4, max_keepalive_connections=self.in_flight + 4)
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=30, limits=limits) as client:
            work: asyncio.Queue[tuple[int, str] | None] = asyncio.Queue()
            slots = asyncio.Semaphore(self.in_flight)
            done = asyncio.Event()
            subscribers = [asyncio.create_task(self._subscriber(client, work, slots)) for _ in range(self.in_flight)]
            reader = asyncio.create_task(self._reader(client, done))
            started = time.monotonic()
            try:
                await self._submitter(client, work, slots, started + seconds)
                self.tally.seconds = time.monotonic() - started
                for _ in subscribers:
                    work.put_nowait(None)
                await asyncio.wait_for(asyncio.gather(*subscribers), STREAM_SECONDS + 30)
            finally:
                done.set()
                for task in [*subscribers, reader]:
                    task.cancel()
                await asyncio.gather(*subscribers, reader, return_exceptions=True)
        return self.tally

    async def _submitter(self, client: httpx.AsyncClient, work: asyncio.Queue[tuple[int, str] | None],
                         slots: asyncio.Semaphore, until: float) -> None:
        n = 0
        next_at = time.monotonic()
        while time.monotonic() < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + self.interval, time.monotonic() - self.interval)  # no burst to catch up
            try:
                await asyncio.wait_for(slots.acquire(), max(0.01, until - time.monotonic()))
            except TimeoutError:
                break
            n += 1
            workflow_id = await self._create(client, n)
            if workflow_id is None:
                slots.release()
            else:
                work.put_nowait((n, workflow_id))

    async def _create(self, client: httpx.AsyncClient, n: int) -> str | None:
        uploaded = n % 3 == 0
        prefix = f"{self.label}-{n}"
        data = {"name": prefix, "tags": TAGS, "$prefix": prefix, "#method": METHODS[n % len(METHODS)]}
        files: dict[str, tuple[str, bytes | str, str]] = {
            "workflow_json": ("workflow.json", GRAPHS["uploaded" if uploaded else "made"], "application/json")}
        if uploaded:
            files["$photo"] = ("photo.png", png(n), "image/png")
        self.tally.submitted += 1
        started = time.monotonic()
        try:
            reply = await client.post("/v1/workflow", data=data, files=files)
        except httpx.HTTPError as err:
            self.tally.problems.append(f"create {prefix}: {err!r}")
            return None
        self.tally.create_seconds.append(time.monotonic() - started)
        if reply.status_code != 201:
            self.tally.problems.append(f"create {prefix}: {reply.status_code} {reply.text[:300]}")
            return None
        workflow_id = str(reply.json()["id"])
        self.tally.accepted.append(workflow_id)
        return workflow_id

    async def _subscriber(self, client: httpx.AsyncClient, work: asyncio.Queue[tuple[int, str] | None],
                          slots: asyncio.Semaphore) -> None:
        while (item := await work.get()) is not None:
            n, workflow_id = item
            mode = MODES[n % len(MODES)]
            try:
                problems = await asyncio.wait_for(self._follow(client, workflow_id, mode, n), STREAM_SECONDS)
            except TimeoutError:
                problems = [f"not finished after {STREAM_SECONDS}s"]
            except httpx.HTTPError as err:
                problems = [f"the stream failed: {err!r}"]
            self.tally.modes[mode] += 1
            if problems:
                self.tally.problems.extend(f"{mode} subscription of {workflow_id}: {p}" for p in problems)
            else:
                self.tally.completed += 1
            slots.release()

    async def _follow(self, client: httpx.AsyncClient, workflow_id: str, mode: str, n: int) -> list[str]:
        if mode == "live":
            read = await read_stream(client, workflow_id, None)
            self.tally.frames += len(read.frames)
            return read.problems + check_log(read.frames, from_start=False)
        if mode == "replay":
            read = await read_stream(client, workflow_id, 0)
            self.tally.frames += len(read.frames)
            return read.problems + check_log(read.frames, from_start=True)
        # reconnect: leave after 1 to 4 frames (a whole log has at least 5 statuses), resume after the last
        first = await read_stream(client, workflow_id, 0, stop_after=1 + n % 4)
        self.tally.frames += len(first.frames)
        if first.ended or not first.frames:
            return [*first.problems, f"the first connection ended by itself after {len(first.frames)} frames"]
        self.tally.reconnects += 1
        rest = await read_stream(client, workflow_id, first.frames[-1].id)
        self.tally.frames += len(rest.frames)
        return first.problems + rest.problems + check_log(first.frames + rest.frames, from_start=True)

    async def _reader(self, client: httpx.AsyncClient, done: asyncio.Event) -> None:
        rng = random.Random(self.seed)
        while not done.is_set():
            await asyncio.sleep(1.0)
            if not self.tally.accepted:
                continue
            try:
                await self._read_some(client, rng)
            except httpx.HTTPError as err:
                self.tally.problems.append(f"a read failed: {err!r}")

    async def _read_some(self, client: httpx.AsyncClient, rng: random.Random) -> None:
        listed = await self._get(client, "/v1/workflow", {"per_page": "20", "tag": TAGS})
        if listed is not None and not (isinstance(listed.get("workflows"), list) and listed.get("total", 0) >= 1):
            self.tally.problems.append(f"a list without workflows: {listed!r:.300}")
        workflow_id = rng.choice(self.tally.accepted)
        got = await self._get(client, f"/v1/workflow/{workflow_id}")
        if got is not None and got.get("id") != workflow_id:
            self.tally.problems.append(f"get {workflow_id} answered {got.get('id')}")
        if got is not None and got.get("status") == "completed":
            outputs = await self._get(client, f"/v1/workflow/{workflow_id}/outputs")
            if outputs is not None and not (isinstance(outputs, list) and len(outputs) == 1 and outputs[0]["src"]):
                self.tally.problems.append(f"outputs of {workflow_id}: {outputs!r:.300}")

    async def _get(self, client: httpx.AsyncClient, path: str, params: dict[str, str] | None = None) -> Any:
        reply = await client.get(path, params=params)
        self.tally.reads += 1
        if reply.status_code != 200:
            self.tally.problems.append(f"GET {path}: {reply.status_code} {reply.text[:300]}")
            return None
        return reply.json()
