"""What each SDK method sends: `Call` builders shared by the sync and async clients.

Pure functions, no I/O: each returns the HTTP call (method, path, query, JSON or multipart
parts, headers) for one API operation. File parts are described (`FilePart`) and opened only
when the call is sent, so a retried call sends the same bytes again.

Form fields follow API.md: `params={"prefix": "cat"}` -> `$prefix`, `choices={"method":
"bilinear"}` -> `#method`, `files={"photo": "cat.png"}` -> file part `$photo`.
"""

from __future__ import annotations

import contextlib
import io
import json
import mimetypes
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

FileContent = str | Path | bytes | IO[bytes]
FileSpec = FileContent | tuple[str, FileContent] | tuple[str, FileContent, str]
WorkflowSpec = Mapping[str, Any] | str | Path | bytes


@dataclass(frozen=True)
class FilePart:
    """One file part: its form field, file name, content (path, bytes or open binary file)."""

    field: str
    filename: str
    content: Path | bytes | IO[bytes]
    content_type: str
    start: int = 0  # where an open file's content starts, to rewind it on a retry

    @classmethod
    def of(cls, form_field: str, spec: FileSpec) -> FilePart:
        filename: str | None = None
        content_type: str | None = None
        if isinstance(spec, tuple):
            filename, content = spec[0], spec[1]
            content_type = spec[2] if len(spec) > 2 else None  # type: ignore[misc]
        else:
            content = spec
        if isinstance(content, str):
            content = Path(content)
        if isinstance(content, Path):
            if not content.is_file():
                raise FileNotFoundError(f"{form_field}: no such file: {content}")
            filename = filename or content.name
        elif not isinstance(content, bytes):
            filename = filename or Path(str(getattr(content, "name", "") or form_field)).name
        filename = filename or form_field
        content_type = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        start = content.tell() if hasattr(content, "tell") and not isinstance(content, bytes | Path) else 0
        return cls(form_field, filename, content, content_type, start)


@dataclass(frozen=True)
class Call:
    """One HTTP call to the API. `retry_safe`: may be sent again after a 429/503/transport error."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: tuple[FilePart, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    retry_safe: bool = True

    @property
    def multipart(self) -> bool:
        return bool(self.files) or self.data is not None


@contextlib.contextmanager
def opened(parts: Iterable[FilePart]) -> Iterator[list[tuple[str, tuple[str, Any, str]]]]:
    """httpx `files=` entries for `parts`, with paths opened (and closed afterwards)."""
    with contextlib.ExitStack() as stack:
        entries: list[tuple[str, tuple[str, Any, str]]] = []
        for part in parts:
            content: Any = part.content
            if isinstance(content, Path):
                content = stack.enter_context(content.open("rb"))
            elif isinstance(content, bytes):
                content = io.BytesIO(content)
            else:
                content.seek(part.start)
            entries.append((part.field, (part.filename, content, part.content_type)))
        yield entries


def workflow_text(workflow: WorkflowSpec) -> str:
    """The workflow JSON text from a dict, JSON text/bytes, or the path of a JSON file."""
    if isinstance(workflow, Mapping):
        return json.dumps(workflow)
    if isinstance(workflow, bytes):
        return workflow.decode("utf-8")
    if isinstance(workflow, str) and workflow.lstrip().startswith("{"):
        return workflow
    return Path(workflow).read_text(encoding="utf-8")


def placeholder_fields(params: Mapping[str, Any] | None, choices: Mapping[str, Any] | None,
                       files: Mapping[str, FileSpec] | None) -> tuple[dict[str, str], list[FilePart]]:
    """`$name` text fields, `#name` choice fields and `$name` file parts."""
    data = {f"${key.removeprefix('$')}": str(value) for key, value in (params or {}).items()}
    data.update({f"#{key.removeprefix('#')}": str(value) for key, value in (choices or {}).items()})
    parts = [FilePart.of(f"${key.removeprefix('$')}", spec) for key, spec in (files or {}).items()]
    return data, parts


def _run_form(name: str | None, params: Mapping[str, Any] | None, choices: Mapping[str, Any] | None,
              files: Mapping[str, FileSpec] | None, tags: Iterable[str] | str | None, priority: str | None,
              idempotency_key: str | None) -> tuple[dict[str, str], list[FilePart], dict[str, str]]:
    data, parts = placeholder_fields(params, choices, files)
    if name is not None:
        data["name"] = name
    if tags:
        data["tags"] = tags if isinstance(tags, str) else ",".join(tags)
    if priority:
        data["priority"] = priority
    return data, parts, {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}


def create_workflow(workflow: WorkflowSpec, *, name: str, params: Mapping[str, Any] | None = None,
                    choices: Mapping[str, Any] | None = None, files: Mapping[str, FileSpec] | None = None,
                    tags: Iterable[str] | str | None = None, priority: str | None = None,
                    idempotency_key: str | None = None) -> Call:
    data, parts, headers = _run_form(name, params, choices, files, tags, priority, idempotency_key)
    graph = FilePart("workflow_json", "workflow.json", workflow_text(workflow).encode("utf-8"), "application/json")
    # The key makes a retried create safe: the API replays the first answer.
    return Call("POST", "/v1/workflow", data=data, files=(graph, *parts), headers=headers)


def rerun_workflow(workflow_id: str, *, params: Mapping[str, Any] | None = None,
                   choices: Mapping[str, Any] | None = None, files: Mapping[str, FileSpec] | None = None,
                   idempotency_key: str | None = None) -> Call:
    data, parts, headers = _run_form(None, params, choices, files, None, None, idempotency_key)
    return Call("POST", f"/v1/workflow/{workflow_id}/rerun", data=data, files=tuple(parts), headers=headers)


def list_page(path: str, page: int, per_page: int, **filters: Any) -> Call:
    params = {"page": page, "per_page": per_page, **{k: v for k, v in filters.items() if v is not None}}
    return Call("GET", path, params=params)


def create_template(*, name: str, description: str, body: WorkflowSpec) -> Call:
    graph = FilePart("body", "template.json", workflow_text(body).encode("utf-8"), "application/json")
    return Call("POST", "/v1/template", data={"name": name, "description": description}, files=(graph,),
                retry_safe=False)


def update_template(template_id: str, *, name: str | None = None, description: str | None = None,
                    body: WorkflowSpec | None = None) -> Call:
    data = {k: v for k, v in (("name", name), ("description", description)) if v is not None}
    parts = () if body is None else (
        FilePart("body", "template.json", workflow_text(body).encode("utf-8"), "application/json"),)
    return Call("PUT", f"/v1/template/{template_id}", data=data, files=parts)


def run_template(template_id: str, *, name: str | None = None, params: Mapping[str, Any] | None = None,
                 choices: Mapping[str, Any] | None = None, files: Mapping[str, FileSpec] | None = None,
                 tags: Iterable[str] | str | None = None, priority: str | None = None,
                 idempotency_key: str | None = None) -> Call:
    data, parts, headers = _run_form(name, params, choices, files, tags, priority, idempotency_key)
    return Call("POST", f"/v1/template/{template_id}/run", data=data, files=tuple(parts), headers=headers)


def create_runner(*, name: str, endpoint: str, headers: Mapping[str, str] | None = None,
                  tags: Iterable[str] = ()) -> Call:
    body = {"name": name, "endpoint": endpoint, "headers": dict(headers or {}), "tags": list(tags)}
    return Call("POST", "/v1/runner", json=body, retry_safe=False)


def update_runner(runner_id: str, **changes: Any) -> Call:
    body = {key: (list(value) if key == "tags" else value) for key, value in changes.items() if value is not None}
    return Call("PUT", f"/v1/runner/{runner_id}", json=body)


def items(body: Any, key: str) -> tuple[list[Any], int]:
    """(items, total) of a list answer: `{"<key>": [...], "total": N}` or a bare list."""
    if isinstance(body, list):
        return body, len(body)
    found = body.get(key, body.get("items", []))
    return list(found), int(body.get("total", len(found)))
