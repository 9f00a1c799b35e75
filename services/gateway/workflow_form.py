"""The multipart form of POST /v1/workflow: field rules, and reading it into a CreateWorkflowRequest.

Fields (API.md): `name` (1..200 characters), `workflow_json` (JSON text, usually a file
part), `tags` (comma-separated), `priority` (low|normal|high), `webhook_url` (+, where the
scheduler may send it is checked there), `$<name>` text -> a text input, `$<name>` file
part -> an object streamed to storage as it arrives, `#<name>` -> a
choice. Anything else is a 400 that names the field. The graph and the placeholders are
validated by the scheduler, not here.

A file part with an empty filename (a browser's empty file input) counts as not sent.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

from comfyfleet.scheduler.v1 import workflow_pb2, workflow_service_pb2

from services.gateway.errors import InvalidArgument
from services.gateway.multipart import MultipartReader, Part
from services.gateway.presenters import PRIORITY_BY_NAME
from services.gateway.storage_client import Storage

NAME_MAX_CHARS = 200
MAX_TAGS = 10
TAG_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
PARAM_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,255}")
# Fields held in memory (everything except file parts): a text value, and the graph,
# which must also fit in one gRPC message (8 MiB) with the rest of the request.
MAX_TEXT_FIELD_BYTES = 1024 * 1024
MAX_WORKFLOW_JSON_BYTES = 4 * 1024 * 1024
FILENAME_MAX_CHARS = 200
WEBHOOK_URL_MAX_CHARS = 2048
_UNSAFE_FILENAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}(;[ -~]{0,200})?")


FormMode = Literal["create", "rerun", "template"]
_REFUSED_MESSAGE = {
    "rerun": "a rerun keeps the workflow's {field}; send only $<name>, #<name> or priority",
    "template": "a template run takes its graph from the template; {field} is not accepted",
}


def invalid_field(field: str, message: str, *, reason: str = "INVALID_FIELD", **extra: Any) -> InvalidArgument:
    """A 400 naming `field` in its message and its details."""
    return InvalidArgument(message, reason=reason, details=[{"field": field, **extra}])


def parse_tags(raw: str) -> list[str]:
    """`" a, b,a ,c"` -> `["a", "b", "c"]`: spaces, empty items and duplicates are ignored."""
    tags: list[str] = []
    for item in raw.split(","):
        tag = item.strip()
        if not tag or tag in tags:
            continue
        if not TAG_PATTERN.fullmatch(tag):
            raise invalid_field(
                "tags", f"invalid tag {tag!r} in tags: each tag is 1 to 64 of A-Z a-z 0-9 . _ -",
                reason="INVALID_TAG", value=tag,
            )
        tags.append(tag)
    if len(tags) > MAX_TAGS:
        raise invalid_field("tags", f"tags: at most {MAX_TAGS} tags, got {len(tags)}", reason="TOO_MANY_TAGS")
    return tags


def parse_priority(raw: str) -> workflow_pb2.Priority.ValueType:
    priority = PRIORITY_BY_NAME.get(raw.strip())
    if priority is None:
        raise invalid_field("priority", "priority must be low, normal or high", value=raw)
    return priority


def parse_webhook_url(raw: str) -> str:
    """The URL's form only; where it may point is the scheduler's call (webhooks/targets.py)."""
    url = raw.strip()
    if not url or len(url) > WEBHOOK_URL_MAX_CHARS:
        raise invalid_field("webhook_url", f"webhook_url must be a URL of 1 to {WEBHOOK_URL_MAX_CHARS} characters")
    return url


def parse_name(raw: str) -> str:
    if not raw.strip() or len(raw) > NAME_MAX_CHARS:
        raise invalid_field("name", f"name must be 1 to {NAME_MAX_CHARS} characters")
    return raw


def client_filename(filename: str) -> str:
    """The last path segment of what the client sent (some clients send a full path)."""
    return re.split(r"[/\\]", filename)[-1]


def sanitise_filename(filename: str) -> str:
    """A storage-safe file name: ASCII letters, digits, `.`, `_`, `-`; never empty or hidden."""
    decomposed = unicodedata.normalize("NFKD", client_filename(filename))
    without_accents = "".join(c for c in decomposed if not unicodedata.combining(c))
    safe = _UNSAFE_FILENAME_CHARS.sub("_", without_accents).lstrip(".")
    if len(safe) > FILENAME_MAX_CHARS:  # shorten the stem, keep a short extension
        _, dot, ext = safe.rpartition(".")
        suffix = f".{ext}" if dot and len(ext) <= 16 else ""
        safe = safe[: FILENAME_MAX_CHARS - len(suffix)] + suffix
    return safe if safe.strip("._-") else "file"


def media_type(content_type: str | None) -> str:
    """The part's Content-Type to record with the object, when it looks like one."""
    value = (content_type or "").strip()
    if value and _MEDIA_TYPE.fullmatch(value):
        return value
    return "application/octet-stream"


async def _text(part: Part, *, limit: int = MAX_TEXT_FIELD_BYTES) -> str:
    raw = await part.read(limit=limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid_field(part.name, f"field {part.name!r} is not valid UTF-8 text") from None


class CreateForm:
    """Reads the parts of one create request; stores `$file` parts under `inputs/{workflow_id}/`.

    `stored_files` tells the caller whether objects may exist under `input_prefix`, so it
    can delete them when the request fails.
    """

    def __init__(
        self, workflow_id: str, storage: Storage, *, max_file_bytes: int, mode: FormMode = "create"
    ) -> None:
        self.workflow_id = workflow_id
        # A rerun takes only the fields to change: $<name>, #<name> and priority; a template
        # run all but workflow_json (the template is the graph), with name optional.
        self.mode = mode
        self.rerun = mode == "rerun"
        self._refused = {"create": (), "rerun": ("name", "workflow_json", "tags", "webhook_url"),
                         "template": ("workflow_json",)}[mode]
        self.input_prefix = f"inputs/{workflow_id}/"
        self.stored_files = False
        self._storage = storage
        self._max_file_bytes = max_file_bytes

    async def read(self, reader: MultipartReader) -> workflow_service_pb2.CreateWorkflowRequest:
        request = workflow_service_pb2.CreateWorkflowRequest(
            id=self.workflow_id,
            priority=workflow_pb2.PRIORITY_UNSPECIFIED if self.rerun else workflow_pb2.PRIORITY_NORMAL,
        )
        seen: set[str] = set()
        async for part in reader.parts():
            field = part.name
            if field in seen:
                raise invalid_field(field, f"field {field!r} is sent more than once", reason="DUPLICATE_FIELD")
            if field.startswith("$") and part.filename is not None:
                if part.filename == "":
                    await part.skip()  # an empty file input: not sent
                    continue
                seen.add(field)
                request.inputs.append(await self._store_file(part))
                continue
            seen.add(field)
            if field in self._refused:
                raise invalid_field(field, _REFUSED_MESSAGE[self.mode].format(field=field), reason="UNKNOWN_FIELD")
            if field == "name":
                request.name = parse_name(await _text(part))
            elif field == "workflow_json":
                request.workflow_json = await _text(part, limit=MAX_WORKFLOW_JSON_BYTES)
            elif field == "tags":
                request.tags.extend(parse_tags(await _text(part)))
            elif field == "priority":
                request.priority = parse_priority(await _text(part))
            elif field == "webhook_url":
                request.webhook_url = parse_webhook_url(await _text(part))
            elif field[:1] in ("$", "#") and len(field) > 1:
                request.inputs.append(workflow_service_pb2.WorkflowInput(field=field, value=await _text(part)))
            else:
                raise invalid_field(
                    field,
                    f"unknown field {field!r}: expected name, workflow_json, tags, priority, webhook_url, "
                    "$<name> or #<name>",
                    reason="UNKNOWN_FIELD",
                )
        for required in ("name", "workflow_json") if self.mode == "create" else ():
            if required not in seen:
                raise invalid_field(required, f"missing required field {required!r}", reason="MISSING_FIELD")
        return request

    async def _store_file(self, part: Part) -> workflow_service_pb2.WorkflowInput:
        param = part.name[1:]
        if not PARAM_NAME_PATTERN.fullmatch(param):
            raise invalid_field(
                part.name, f"invalid file field {part.name!r}: the name after $ must be 1 to 255 of "
                "A-Z a-z 0-9 _ -",
            )
        assert part.filename is not None
        key = f"{self.input_prefix}{param}/{sanitise_filename(part.filename)}"
        content_type = media_type(part.content_type)
        self.stored_files = True
        upload = await self._storage.open_upload(key, content_type, self._max_file_bytes)
        try:
            async for chunk in part.chunks():
                await upload.write(chunk)
            stored = await upload.finish()
        except BaseException:
            upload.abort()
            raise
        return workflow_service_pb2.WorkflowInput(
            field=part.name, object=stored, filename=client_filename(part.filename)
        )
