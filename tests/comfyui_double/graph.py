"""Execution bookkeeping: the classic output cache, the execution list and progress_state.

- `SignatureCache` is ComfyUI's default "classic" cache: entries are keyed by a node's input
  signature (class, IS_CHANGED value, literal inputs, and recursively its ancestors), and at the
  start of each prompt every entry the new prompt does not use is dropped.
- `ExecutionList` is comfy_execution.graph.ExecutionList: nodes are staged in dependency order
  and, among ready nodes, output nodes first (`ux_friendly_pick_node`); cached inputs are not
  re-added. This reproduces the recorded node orders (e.g. 1, 4, 2, 3, 5, 6 in 03).
- `ProgressRegistry` sends the `progress_state` snapshots (start / tick / finish of a node).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from typing import Any

from .nodes import NODE_CLASSES
from .validation import is_link


def _nan_inside(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, list | tuple):
        return any(_nan_inside(v) for v in value)
    return False


def compute_signatures(prompt: dict[str, Any], is_changed: dict[str, Any]) -> dict[str, str]:
    """node id -> input signature; equal signatures share a cache entry (as in the server)."""
    memo: dict[str, str] = {}

    def unique() -> str:
        return f"unique:{uuid.uuid4().hex}"  # a missing node or NaN never matches anything

    def sig(node_id: Any, visiting: frozenset[Any]) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt.get(node_id) if isinstance(node_id, str) else None
        if not isinstance(node, dict) or node_id in visiting:
            return unique()
        changed = is_changed.get(node_id, False)
        if _nan_inside(changed):
            return unique()
        parts: list[Any] = [node.get("class_type"), changed]
        inputs = node.get("inputs", {})
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                parts.append([key, "ANCESTOR", sig(value[0], visiting | {node_id}), value[1]])
            else:
                parts.append([key, value])
        memo[node_id] = json.dumps(parts, sort_keys=True, default=repr)
        return memo[node_id]

    return {node_id: sig(node_id, frozenset()) for node_id in prompt}


class SignatureCache:
    """A cache keyed per node by a key function, cleaned to the keys of the current prompt."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}
        self._keys: dict[str, str] = {}

    def set_prompt(self, keys: dict[str, str]) -> None:
        self._keys = keys
        used = set(keys.values())
        self._data = {k: v for k, v in self._data.items() if k in used}

    def get(self, node_id: str) -> Any:
        key = self._keys.get(node_id)
        return None if key is None else self._data.get(key)

    def set(self, node_id: str, value: Any) -> None:
        self._data[self._keys[node_id]] = value

    def all_node_ids(self) -> list[str]:
        return list(self._keys)


class ExecutionList:
    """Topological staging of the nodes an output needs, skipping cached inputs."""

    def __init__(self, prompt: dict[str, Any], outputs: SignatureCache) -> None:
        self.prompt = prompt
        self.outputs = outputs
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict[Any, bool]]] = {}
        self.staged: str | None = None

    def is_cached(self, node_id: str) -> bool:
        return self.outputs.get(node_id) is not None

    def add_node(self, unique_id: str) -> None:
        node_ids = [unique_id]
        links: list[tuple[str, Any, str]] = []
        while node_ids:
            current = node_ids.pop()
            if current in self.pending:
                continue
            self.pending[current] = True
            self.block_count[current] = 0
            self.blocking[current] = {}
            inputs = self.prompt[current]["inputs"]
            for name in inputs:
                value = inputs[name]
                if is_link(value):
                    from_id, from_socket = value
                    if not self.is_cached(from_id):
                        node_ids.append(from_id)
                    links.append((from_id, from_socket, current))
        for from_id, from_socket, to_id in links:
            if not self.is_cached(from_id):
                self.add_node(from_id)
                if to_id not in self.blocking[from_id]:
                    self.blocking[from_id][to_id] = {}
                    self.block_count[to_id] += 1
                self.blocking[from_id][to_id][from_socket] = True

    def is_empty(self) -> bool:
        return not self.pending

    def _is_output(self, node_id: str) -> bool:
        return NODE_CLASSES[self.prompt[node_id]["class_type"]].output_node()

    def stage(self) -> str | None:
        """The next node to run, or None for a dependency cycle."""
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        self.staged = self._pick(ready)
        return self.staged

    def _pick(self, ready: list[str]) -> str:
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                if any(self._is_output(b) for b in self.blocking[blocked]):
                    return node_id
        return ready[0]

    def complete(self) -> None:
        node_id = self.staged
        assert node_id is not None
        del self.pending[node_id]
        for blocked in self.blocking.pop(node_id):
            self.block_count[blocked] -= 1
        self.staged = None


class ProgressRegistry:
    """comfy_execution.progress: per-node state, snapshot sent on every change."""

    def __init__(self, prompt_id: str, send: Callable[[dict[str, Any]], None]) -> None:
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}
        self._send = send

    def _entry(self, node_id: str) -> dict[str, Any]:
        return self.nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def _snapshot(self) -> None:
        nodes = {
            node_id: {"value": s["value"], "max": s["max"], "state": s["state"], "node_id": node_id,
                      "prompt_id": self.prompt_id, "display_node_id": node_id, "parent_node_id": None,
                      "real_node_id": node_id}
            for node_id, s in self.nodes.items() if s["state"] != "pending"
        }
        self._send({"prompt_id": self.prompt_id, "nodes": nodes})

    def start(self, node_id: str) -> None:
        self._entry(node_id).update(state="running", value=0.0, max=1.0)
        self._snapshot()

    def update(self, node_id: str, value: int, max_value: int) -> None:
        self._entry(node_id).update(state="running", value=value, max=max_value)
        self._snapshot()

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry.update(state="finished", value=entry["max"])
        self._snapshot()
