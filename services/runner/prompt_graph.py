"""Pure core: the API-format prompt and ComfyUI's answers about it.

- `parse_prompt` / `node_types`: the graph an Assignment carries, and each node's class_type.
- `substitute_files`: every input value that is exactly `$file(<param>)` becomes the name
  ComfyUI gave the uploaded file (`"<subfolder>/<name>"`); nothing else is touched.
- `node_errors` / `validation_message`: the `node_errors` of a `POST /prompt` reply, one
  `NodeErrorInfo` per error (a node may have several), and the top-level message of a 400.
- `queue_position`: where a prompt stands in `GET /queue` (0 = running or next to run).
- `from_ui_format`: an editor (UI-format) export as an API-format prompt, or why it cannot be.

No I/O, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.comfy_graph import convert_ui_workflow
from services.common.comfy_schemas import NodeSchemas
from services.runner.errors import InvalidAssignment

_FILE_PLACEHOLDER = re.compile(r"^\$file\(([^()]+)\)$")


def parse_prompt(prompt_json: str) -> dict[str, Any]:
    """The API-format graph: an object of node id -> {class_type, inputs}."""
    try:
        prompt = json.loads(prompt_json)
    except json.JSONDecodeError as err:
        raise InvalidAssignment(f"prompt_json is not JSON: {err}") from None
    if not isinstance(prompt, dict):
        raise InvalidAssignment("prompt_json must be a JSON object of node id -> node")
    return prompt


def node_types(prompt: Mapping[str, Any]) -> dict[str, str]:
    """Node id -> class_type, for nodes that have one."""
    types: dict[str, str] = {}
    for node_id, node in prompt.items():
        if isinstance(node, Mapping) and isinstance(node.get("class_type"), str):
            types[str(node_id)] = node["class_type"]
    return types


def file_params(prompt: Mapping[str, Any]) -> set[str]:
    """Params named by a `$file(<param>)` input value anywhere in the prompt."""
    params: set[str] = set()
    for node in prompt.values():
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        for value in inputs.values() if isinstance(inputs, Mapping) else []:
            if isinstance(value, str) and (m := _FILE_PLACEHOLDER.match(value)):
                params.add(m.group(1))
    return params


def substitute_files(prompt: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `prompt` with each `$file(<param>)` input value replaced by `names[param]`.

    Placeholders of params not in `names` stay as they are (ComfyUI will reject them).
    """
    result: dict[str, Any] = {}
    for node_id, node in prompt.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("inputs"), Mapping):
            result[node_id] = node
            continue
        inputs: dict[str, Any] = {}
        for key, value in node["inputs"].items():
            m = _FILE_PLACEHOLDER.match(value) if isinstance(value, str) else None
            inputs[key] = names.get(m.group(1), value) if m else value
        result[node_id] = {**node, "inputs": inputs}
    return result


@dataclass(frozen=True)
class NodeErrorInfo:
    """One validation error of one node (becomes a scheduler.v1.NodeError)."""

    node_id: str
    class_type: str
    type: str
    message: str
    details: str
    input_name: str


def node_errors(raw: Any) -> list[NodeErrorInfo]:
    """Every error in a reply's `node_errors` ({node_id: {errors: [...], class_type}})."""
    found: list[NodeErrorInfo] = []
    if not isinstance(raw, Mapping):
        return found
    for node_id, node in raw.items():
        if not isinstance(node, Mapping):
            continue
        class_type = str(node.get("class_type") or "")
        errors = node.get("errors")
        for err in errors if isinstance(errors, list) else []:
            if not isinstance(err, Mapping):
                continue
            extra = err.get("extra_info")
            input_name = extra.get("input_name") if isinstance(extra, Mapping) else None
            found.append(
                NodeErrorInfo(
                    node_id=str(node_id),
                    class_type=class_type,
                    type=str(err.get("type") or ""),
                    message=str(err.get("message") or ""),
                    details=str(err.get("details") or ""),
                    input_name=str(input_name or ""),
                )
            )
    return found


def validation_message(body: Mapping[str, Any]) -> str:
    """The top-level `error` of a 400 reply: its message, and its details when it has some."""
    error = body.get("error")
    if isinstance(error, str):
        return error
    if not isinstance(error, Mapping):
        return "ComfyUI rejected the prompt"
    message = str(error.get("message") or error.get("type") or "ComfyUI rejected the prompt")
    details = str(error.get("details") or "")
    return f"{message}: {details}" if details else message


def node_errors_summary(errors: list[NodeErrorInfo]) -> str:
    """One line for a 200 reply whose node_errors mean some outputs will not run."""
    parts = [
        f"node {e.node_id} ({e.class_type}): {e.message}" + (f" [{e.details}]" if e.details else "") for e in errors
    ]
    return "ComfyUI accepted the prompt but some outputs will not run: " + "; ".join(parts)


@dataclass(frozen=True)
class QueueSnapshot:
    """`GET /queue`: the running prompt ids and the pending (number, prompt id) pairs; the
    client_id each prompt was sent with (ComfyUI adds it to the item's extra_data), by id."""

    running: tuple[str, ...]
    pending: tuple[tuple[float, str], ...]
    client_ids: Mapping[str, str] = field(default_factory=dict, compare=False)

    def holds(self, prompt_id: str) -> bool:
        return prompt_id in self.running or any(pid == prompt_id for _, pid in self.pending)


def parse_queue(body: Any) -> QueueSnapshot:
    """Items are `[number, prompt_id, prompt, extra_data, outputs_to_execute]`."""
    running: list[str] = []
    pending: list[tuple[float, str]] = []
    client_ids: dict[str, str] = {}
    if isinstance(body, Mapping):
        for item in body.get("queue_running") or []:
            if isinstance(item, list) and len(item) >= 2:
                running.append(str(item[1]))
                _note_client(client_ids, item)
        for item in body.get("queue_pending") or []:
            if isinstance(item, list) and len(item) >= 2 and isinstance(item[0], int | float):
                pending.append((float(item[0]), str(item[1])))
                _note_client(client_ids, item)
    return QueueSnapshot(running=tuple(running), pending=tuple(pending), client_ids=client_ids)


def _note_client(client_ids: dict[str, str], item: list[Any]) -> None:
    extra = item[3] if len(item) >= 4 else None
    if isinstance(extra, Mapping) and isinstance(extra.get("client_id"), str):
        client_ids[str(item[1])] = extra["client_id"]


def queue_position(queue: QueueSnapshot, prompt_id: str) -> int | None:
    """0 when running or next to run, n when n pending prompts run before it; None if absent.

    `queue_pending` comes in heap order, so it is sorted by number (PROTOCOL.md §12.5).
    """
    if prompt_id in queue.running:
        return 0
    ordered = sorted(queue.pending)
    for index, (_, pid) in enumerate(ordered):
        if pid == prompt_id:
            return index
    return None


def from_ui_format(workflow: Mapping[str, Any], schemas: NodeSchemas) -> tuple[dict[str, Any] | None, str]:
    """(the API-format prompt, "") or (None, why it cannot be converted with `schemas`)."""
    conversion = convert_ui_workflow(workflow, schemas)
    if conversion.prompt is not None:
        return conversion.prompt, ""
    why = [f"unknown node classes: {', '.join(conversion.missing_classes)}"] if conversion.missing_classes else []
    return None, "UI-format workflow cannot be converted to API format: " + "; ".join(why + list(conversion.problems))
