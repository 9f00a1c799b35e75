"""`AsyncClient`: the SDK for asyncio, the same resources as `Client` with `async` methods.

    >>> from comfyfleet import AsyncClient
    >>> async with AsyncClient() as client:
    ...     wf = await client.workflows.create("invert.json", name="demo", params={"prefix": "cat"})
    ...     async for event in client.workflows.watch(wf.id):
    ...         print(event.seq, event.kind)
    ...     async for old in client.workflows.list(status="completed", limit=3):
    ...         print(old.id)

Iterators (`list`, `watch`) are async iterators; everything else is awaited. The docstrings
of `comfyfleet.client` describe each method.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

from comfyfleet import calls
from comfyfleet.calls import Call, FileSpec, WorkflowSpec
from comfyfleet.downloads import DOWNLOAD_REFRESH_STATUSES, partial_path, target_path
from comfyfleet.errors import APIError, TransportError, from_response
from comfyfleet.models import AnyEvent, Model, Output, Runner, RunnerToken, Template, User, Workflow
from comfyfleet.settings import Settings
from comfyfleet.sse import READ_TIMEOUT, Connection, Resume
from comfyfleet.transport import auth_headers, new_async_client, send_async

M = TypeVar("M", bound=Model)


class AsyncClient:
    """A connection to one comfyfleet API. Use it as a context manager, or call `close()`.

    `url`/`token`/`timeout` override the environment and the config file (see
    `comfyfleet.settings`); `transport` is any httpx transport (for tests or proxies).
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float | None = None,
                 settings: Settings | None = None, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings or Settings.load(url=url, token=token, timeout=timeout)
        self.http = new_async_client(self.settings, transport)
        self.workflows = Workflows(self)
        self.runners = Runners(self)
        self.templates = Templates(self)
        self.user = UserResource(self)

    async def request(self, call: Call) -> Any:
        """Sends one call and returns its decoded JSON (None for an empty answer)."""
        response = await send_async(self.http, self.settings, call)
        return response.json() if response.content else None

    def events(self, *, after: int | None = None, workflow_id: str | None = None,
               max_failures: int = 10) -> AsyncIterator[AnyEvent]:
        """Every event of all your workflows as it happens (GET /v1/events): as `Client.events`.

            >>> async for event in client.events():
            ...     print(event.seq, event.workflow_id, event.kind)
        """
        params = {"workflow_id": workflow_id} if workflow_id else {}
        return self.follow("/v1/events", Resume(after, max_failures, until_terminal=False), params=params)

    async def follow(self, path: str, resume: Resume, *, params: Mapping[str, str] | None = None,
                     finished: Callable[[], Awaitable[bool]] | None = None) -> AsyncIterator[AnyEvent]:
        """The events of the SSE stream at `path` across reconnects: as `Client.follow`."""
        timeout = httpx.Timeout(self.settings.timeout, read=max(READ_TIMEOUT, self.settings.timeout))
        while not resume.done:
            connection = Connection(resume)
            try:
                async with self.http.stream("GET", path, params=params, timeout=timeout,
                                            headers={**auth_headers(self.settings), **resume.headers()}) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        connection.refused(from_response(response))
                    else:
                        async for line in response.aiter_lines():
                            if (event := connection.feed(line)) is not None:
                                yield event
                            if resume.done:
                                return
                        connection.ended = True
            except httpx.TransportError as err:
                connection.lost(err)
            if finished is not None and connection.ended_empty and await finished():
                return
            await asyncio.sleep(connection.retry_delay())

    async def paginate(self, path: str, key: str, model: type[M], per_page: int, limit: int | None,
                 **filters: Any) -> AsyncIterator[M]:
        """Every item over all pages (each once, even if new items shift the pages meanwhile)."""
        seen: set[str] = set()
        page = 1
        while True:
            found, total = calls.items(await self.request(calls.list_page(path, page, per_page, **filters)), key)
            for raw in found:
                item = model.model_validate(raw)
                if item.id in seen:  # type: ignore[attr-defined]
                    continue
                seen.add(item.id)  # type: ignore[attr-defined]
                yield item
                if limit is not None and len(seen) >= limit:
                    return
            if not found or page * per_page >= total:
                return
            page += 1

    async def close(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class Workflows:
    """`client.workflows`: create, read, list, watch, cancel, rerun, outputs, download, delete."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, workflow: WorkflowSpec, *, name: str, params: Mapping[str, Any] | None = None,
               choices: Mapping[str, Any] | None = None, files: Mapping[str, FileSpec] | None = None,
               tags: Iterable[str] | str | None = None, priority: str | None = None,
               idempotency_key: str | None = None) -> Workflow:
        """Uploads and runs a workflow; returns it as accepted.

        `workflow`: a dict, JSON text, or the path of an API-format JSON file.
        `params` fill `$text(name)`, `choices` fill `$choice(name, ...)`, `files` fill
        `$file(name)` (a path, bytes, an open binary file, or `(filename, content[, type])`).
        An Idempotency-Key is generated (or pass one), so a retried create runs once.

            >>> client.workflows.create({"1": {...}}, name="x", params={"prefix": "cat"}).status
            'accepted'
        """
        call = calls.create_workflow(workflow, name=name, params=params, choices=choices, files=files,
                                     tags=tags, priority=priority, idempotency_key=idempotency_key)
        return Workflow.model_validate(await self._client.request(call))

    async def get(self, workflow_id: str) -> Workflow:
        """The full record (graph, parameters, runner, failure)."""
        return Workflow.model_validate(await self._client.request(Call("GET", f"/v1/workflow/{workflow_id}")))

    def list(self, *, status: str | None = None, tag: str | None = None, per_page: int = 100,
             limit: int | None = None) -> AsyncIterator[Workflow]:
        """Every workflow, newest first, fetching pages as needed.

            >>> [wf.id for wf in client.workflows.list(status="running", limit=5)]
        """
        return self._client.paginate("/v1/workflow", "workflows", Workflow, per_page, limit, status=status, tag=tag)

    async def page(self, page: int = 1, per_page: int = 10, *, status: str | None = None,
             tag: str | None = None) -> tuple[builtins.list[Workflow], int]:
        """One page: (workflows, total)."""
        found, total = calls.items(await self._client.request(
            calls.list_page("/v1/workflow", page, per_page, status=status, tag=tag)), "workflows")
        return [Workflow.model_validate(raw) for raw in found], total

    async def cancel(self, workflow_id: str) -> Workflow:
        """Cancels a workflow that has not finished (BadRequestError if it has)."""
        return Workflow.model_validate(await self._client.request(Call("POST", f"/v1/workflow/{workflow_id}/cancel")))

    async def rerun(self, workflow_id: str, *, params: Mapping[str, Any] | None = None,
              choices: Mapping[str, Any] | None = None, files: Mapping[str, FileSpec] | None = None) -> Workflow:
        """Runs the same graph again as a new workflow, changing only the given placeholders."""
        call = calls.rerun_workflow(workflow_id, params=params, choices=choices, files=files)
        return Workflow.model_validate(await self._client.request(call))

    async def outputs(self, workflow_id: str) -> builtins.list[Output]:
        """The stored outputs of a completed workflow, with fresh signed URLs (`src`)."""
        body = await self._client.request(Call("GET", f"/v1/workflow/{workflow_id}/outputs"))
        return [Output.model_validate(raw) for raw in body or []]

    async def download(self, output: Output | str, dest: str | Path = ".") -> Path:
        """Saves one output; `dest` is a folder (kept file name) or a file path. Returns the path.

        An expired signed URL is refreshed once through `outputs()`.

            >>> client.workflows.download(client.workflows.outputs(wf_id)[0], "out/")
            PosixPath('out/cat_00001_.png')
        """
        target = target_path(output, dest)
        try:
            return await self._fetch(output.src if isinstance(output, Output) else output, target)
        except APIError as err:
            if not (isinstance(output, Output) and output.workflow_id and err.status in DOWNLOAD_REFRESH_STATUSES):
                raise
            fresh = next((o for o in await self.outputs(output.workflow_id) if o.id == output.id), None)
            if fresh is None:
                raise
            return await self._fetch(fresh.src, target)

    async def _fetch(self, url: str, target: Path) -> Path:
        # File writes go to a worker thread: nothing blocks the event loop.
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        partial = partial_path(target)
        try:
            async with self._client.http.stream("GET", url) as response:  # the signed URL is the credential
                if response.status_code >= 400:
                    await response.aread()
                    raise from_response(response)
                out = await asyncio.to_thread(partial.open, "wb")
                try:
                    async for chunk in response.aiter_bytes():
                        await asyncio.to_thread(out.write, chunk)
                finally:
                    await asyncio.to_thread(out.close)
        except httpx.TransportError as err:
            await asyncio.to_thread(partial.unlink, missing_ok=True)
            raise TransportError(f"download of {target.name} failed: {err}") from err
        await asyncio.to_thread(partial.replace, target)
        return target

    async def delete(self, workflow_id: str) -> None:
        """Removes a finished workflow and its stored objects."""
        await self._client.request(Call("DELETE", f"/v1/workflow/{workflow_id}"))

    def watch(self, workflow_id: str, *, from_start: bool = False, after: int | None = None,
              max_failures: int = 10) -> AsyncIterator[AnyEvent]:
        """The workflow's events, typed, until its terminal status (then the iterator ends).

        Starts with a `snapshot` (or, with `from_start`, replays every event; with `after`,
        those after that sequence number). A dropped connection is reopened with
        Last-Event-ID: no event is missed or repeated. WatchError after `max_failures`
        failed connections in a row; API errors other than 429/503 are raised.

            >>> for event in client.workflows.watch(wf.id):
            ...     print(event.seq, event.kind)
            1 snapshot
            2 status
        """
        resume = Resume(0 if from_start and after is None else after, max_failures)

        async def finished() -> bool:
            return (await self.get(workflow_id)).is_terminal

        return self._client.follow(f"/v1/workflow/{workflow_id}/subscribe", resume, finished=finished)

    async def wait(self, workflow_id: str) -> Workflow:
        """Blocks until the workflow finishes (following its events); returns the full record."""
        async for _ in self.watch(workflow_id):
            pass
        return await self.get(workflow_id)


class Runners:
    """`client.runners`: the ComfyUI machines the suite drives."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, *, name: str, endpoint: str, headers: Mapping[str, str] | None = None,
               tags: Iterable[str] = ()) -> Runner:
        """Registers a ComfyUI endpoint for the runner pool to drive.

            >>> client.runners.create(name="box", endpoint="http://10.0.0.5:8188", tags=["gpu"]).status
            'active'
        """
        return Runner.model_validate(await self._client.request(
            calls.create_runner(name=name, endpoint=endpoint, headers=headers, tags=tags)))

    def list(self, *, status: str | None = None, per_page: int = 100,
             limit: int | None = None) -> AsyncIterator[Runner]:
        """Every runner, fetching pages as needed."""
        return self._client.paginate("/v1/runner", "runners", Runner, per_page, limit, status=status)

    async def get(self, runner_id: str) -> Runner:
        return Runner.model_validate(await self._client.request(Call("GET", f"/v1/runner/{runner_id}")))

    async def update(self, runner_id: str, *, name: str | None = None, endpoint: str | None = None,
               headers: Mapping[str, str] | None = None, tags: Iterable[str] | None = None,
               status: str | None = None) -> Runner:
        """Changes only the given fields; `status` is `active` or `disabled`."""
        call = calls.update_runner(runner_id, name=name, endpoint=endpoint, headers=headers, tags=tags, status=status)
        return Runner.model_validate(await self._client.request(call))

    async def delete(self, runner_id: str) -> None:
        """Removes a runner; its queued workflows go back to placement."""
        await self._client.request(Call("DELETE", f"/v1/runner/{runner_id}"))

    async def interrupt(self, runner_id: str) -> Any:
        """Interrupts what that runner's ComfyUI is running now."""
        return await self._client.request(Call("POST", f"/v1/runner/{runner_id}/interrupt"))

    async def create_token(self) -> RunnerToken:
        """A token for a self-registering runner agent; it is shown only this once."""
        call = Call("POST", "/v1/runner-token", retry_safe=False)
        return RunnerToken.model_validate(await self._client.request(call))


class Templates:
    """`client.templates`: saved workflows with placeholders, run from a form."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, *, name: str, description: str, body: WorkflowSpec) -> Template:
        """Saves a template (placeholders are checked now).

            >>> client.templates.create(name="invert", description="inverts", body="invert.json").id
        """
        return Template.model_validate(await self._client.request(
            calls.create_template(name=name, description=description, body=body)))

    def list(self, *, per_page: int = 100, limit: int | None = None) -> AsyncIterator[Template]:
        return self._client.paginate("/v1/template", "templates", Template, per_page, limit)

    async def get(self, template_id: str) -> Template:
        return Template.model_validate(await self._client.request(Call("GET", f"/v1/template/{template_id}")))

    async def update(self, template_id: str, *, name: str | None = None, description: str | None = None,
               body: WorkflowSpec | None = None) -> Template:
        call = calls.update_template(template_id, name=name, description=description, body=body)
        return Template.model_validate(await self._client.request(call))

    async def delete(self, template_id: str) -> None:
        await self._client.request(Call("DELETE", f"/v1/template/{template_id}"))

    async def run(self, template_id: str, *, name: str | None = None, params: Mapping[str, Any] | None = None,
            choices: Mapping[str, Any] | None = None, files: Mapping[str, FileSpec] | None = None,
            tags: Iterable[str] | str | None = None, priority: str | None = None) -> Workflow:
        """Runs a template as a new workflow, filling its placeholders like `workflows.create`."""
        call = calls.run_template(template_id, name=name, params=params, choices=choices, files=files,
                                  tags=tags, priority=priority)
        return Workflow.model_validate(await self._client.request(call))


class UserResource:
    """`client.user`: who the token belongs to."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self) -> User:
        """The caller: id, name, email, tier (and limits, when the API sends them)."""
        return User.model_validate(await self._client.request(Call("GET", "/v1/user")))
