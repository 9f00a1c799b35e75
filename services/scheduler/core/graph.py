"""Checks that `workflow_json` is an API-format ComfyUI graph, and normalises tags."""

from __future__ import annotations

import json
import re
from typing import Any

from services.scheduler.errors import InvalidArgument, InvalidWorkflow

Graph = dict[str, dict[str, Any]]

_TAG = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_TAGS = 10


def parse_graph(text: str) -> Graph:
    """Parses and checks an API-format graph: {node_id: {"class_type": str, "inputs": {...}}}."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidWorkflow(
            f"workflow_json is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
            if isinstance(err, json.JSONDecodeError)
            else "workflow_json is not valid UTF-8 JSON",
            details=[{"field": "workflow_json"}],
        ) from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise InvalidWorkflow(
            "workflow_json is a UI-format export (it has 'nodes' and 'links'); "
            "export the workflow in API format ('Export (API)') and upload that",
            reason="UI_FORMAT_WORKFLOW",
            details=[{"field": "workflow_json"}],
        )
    if not isinstance(data, dict) or not data:
        raise InvalidWorkflow(
            "workflow_json must be a non-empty object of node id -> {class_type, inputs}",
            details=[{"field": "workflow_json"}],
        )
    for node_id, node in data.items():
        if not isinstance(node, dict) or not isinstance(node.get("class_type"), str) or not node["class_type"]:
            raise InvalidWorkflow(
                f"node {node_id!r} of workflow_json has no class_type",
                details=[{"field": "workflow_json", "node_id": node_id}],
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise InvalidWorkflow(
                f"node {node_id!r} of workflow_json has inputs that are not an object",
                details=[{"field": "workflow_json", "node_id": node_id}],
            )
    return data


def normalise_tags(tags: list[str]) -> list[str]:
    """Strips, drops empties and duplicates (first wins), checks each tag and the count."""
    seen: list[str] = []
    for raw in tags:
        tag = raw.strip()
        if not tag or tag in seen:
            continue
        if not _TAG.match(tag):
            raise InvalidArgument(
                f"tag {tag!r} is not 1 to 64 of A-Z a-z 0-9 . _ -",
                reason="INVALID_TAG",
                details=[{"field": "tags", "tag": tag}],
            )
        seen.append(tag)
    if len(seen) > MAX_TAGS:
        raise InvalidArgument(
            f"at most {MAX_TAGS} tags are allowed, got {len(seen)}",
            reason="INVALID_TAG",
            details=[{"field": "tags"}],
        )
    return seen
