"""Checks that `workflow_json` is an API-format ComfyUI graph, and normalises tags."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from services.scheduler.errors import InvalidArgument, InvalidWorkflow

Graph = dict[str, dict[str, Any]]

_TAG = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MAX_TAGS = 10


def parse_graph(text: str) -> Graph:
    """Parses and checks an API-format graph: {node_id: {"class_type": str, "inputs": {...}}}."""
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InvalidWorkflow(
            f"workflow_json is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
            if isinstance(err, json.JSONDecodeError)
            else "workflow_json is not valid UTF-8 JSON",
            details=[{"field": "workflow_json"}],
        ) from None
    except RecursionError:  # nesting deeper than the parser can follow
        raise InvalidWorkflow("workflow_json is not valid JSON: it is nested too deeply",
                              details=[{"field": "workflow_json"}]) from None
    except ValueError as err:  # NaN, Infinity, a float out of range; an integer over Python's digit limit
        problem = err if isinstance(err, _BadNumber) else "a number has too many digits"
        raise InvalidWorkflow(
            f"workflow_json is not valid JSON: {problem}",
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


class _BadNumber(ValueError):
    """A number JSON does not have (NaN, Infinity) or that is out of range."""


def _refuse_constant(name: str) -> float:
    raise _BadNumber(f"{name} is not a JSON number")


def _finite_float(raw: str) -> float:
    value = float(raw)
    if math.isinf(value):
        raise _BadNumber(f"the number {raw[:20]}{'...' if len(raw) > 20 else ''} is out of range")
    return value


def _links(node: dict[str, Any]) -> list[tuple[str, str]]:
    """(input name, source node id) of each link (`[node_id, output_index]`) among the inputs."""
    return [(name, value[0]) for name, value in (node.get("inputs") or {}).items()
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool)]


def check_links(graph: Graph) -> None:
    """Every link names a node of the graph, and the links have no cycle (checked without recursion).

    Checked when a workflow is created (not by `parse_graph`, which also reads stored graphs)."""
    sources: dict[str, list[str]] = {}
    for node_id, node in graph.items():
        sources[node_id] = []
        for input_name, source in _links(node):
            if source not in graph:
                raise InvalidWorkflow(
                    f"node {node_id!r} input {input_name!r} of workflow_json links to node {source!r}, "
                    "which is not in the graph",
                    reason="INVALID_LINK",
                    details=[{"field": "workflow_json", "node_id": node_id, "input": input_name}],
                )
            sources[node_id].append(source)
    done: set[str] = set()
    for start in graph:
        if start in done:
            continue
        on_path = {start}
        stack = [(start, iter(sources[start]))]
        while stack:
            node_id, pending = stack[-1]
            upstream = next(pending, None)
            if upstream is None:
                stack.pop()
                on_path.discard(node_id)
                done.add(node_id)
            elif upstream in on_path:
                raise InvalidWorkflow(
                    f"workflow_json has a cycle: node {upstream!r} depends on itself through its links",
                    reason="GRAPH_CYCLE",
                    details=[{"field": "workflow_json", "node_id": upstream}],
                )
            elif upstream not in done:
                on_path.add(upstream)
                stack.append((upstream, iter(sources[upstream])))


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
