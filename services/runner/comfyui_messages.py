"""Pure core: what ComfyUI's websocket messages (and its history) mean for one prompt.

`PromptTracker` is fed the websocket messages routed to one prompt, in order, with the time
they arrived, and answers with `Step`s, the runner's view of that prompt:

    execution_start          -> PromptStarted
    executing {node: id}     -> NodeStarted(id, class_type from the prompt)
    execution_cached         -> NodesCached(ids), when ComfyUI served any node from its cache
    executing {node: null}   -> nothing (the terminal event came first)
    progress                 -> NodeProgress, at most one per node per `progress_interval_s`;
                                a held-back tick goes out before the next step or when due
    executed                 -> OutputsReady(the files it names, those not named before); they
                                are written by then, so they can be copied while the prompt runs
    execution_success        -> PromptSucceeded(every output named)
    execution_error          -> PromptFailed(node, exception type/message, traceback)
    execution_interrupted    -> PromptInterrupted
    anything else            -> nothing (progress_state, status, ...)

Any message of the prompt implies it started, so a missed `execution_start` (a websocket
reconnect) still yields `PromptStarted` first. After a terminal step every message is ignored.
`steps_from_history` reads `GET /history/{id}` the same way (PROTOCOL.md §6) for prompts whose
messages were lost. No I/O, no clock: the caller passes `now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutputFile:
    """A file a node wrote, as ComfyUI names it for GET /view."""

    node_id: str
    filename: str
    subfolder: str
    type: str


@dataclass(frozen=True)
class PromptStarted:
    pass


@dataclass(frozen=True)
class NodeStarted:
    node_id: str
    node_type: str


@dataclass(frozen=True)
class NodesCached:
    node_ids: tuple[str, ...]


@dataclass(frozen=True)
class NodeProgress:
    node_id: str
    node_type: str
    value: int
    max: int


@dataclass(frozen=True)
class OutputsReady:
    outputs: tuple[OutputFile, ...]


@dataclass(frozen=True)
class PromptSucceeded:
    outputs: tuple[OutputFile, ...]


@dataclass(frozen=True)
class PromptFailed:
    node_id: str
    node_type: str
    exception_type: str
    exception_message: str
    traceback: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptInterrupted:
    node_id: str = ""
    node_type: str = ""


Step = (PromptStarted | NodesCached | NodeStarted | NodeProgress | OutputsReady | PromptSucceeded | PromptFailed
        | PromptInterrupted)
TERMINAL = (PromptSucceeded, PromptFailed, PromptInterrupted)


def outputs_of_node(node_id: str, ui_output: Any) -> list[OutputFile]:
    """Every file in a node's UI output (`executed.data.output` or `history.outputs[id]`).

    Each value of the output dict may be a list; each entry that names a `filename` is a file
    (`images`, `gifs`, `audio`, ...). Other entries (text, numbers) are skipped.
    """
    files: list[OutputFile] = []
    if not isinstance(ui_output, Mapping):
        return files
    for entries in ui_output.values():
        if not isinstance(entries, list):
            continue
        for entry in entries:
            if isinstance(entry, Mapping) and isinstance(entry.get("filename"), str) and entry["filename"]:
                files.append(
                    OutputFile(
                        node_id=node_id,
                        filename=entry["filename"],
                        subfolder=str(entry.get("subfolder") or ""),
                        type=str(entry.get("type") or "output"),
                    )
                )
    return files


def _failure(data: Mapping[str, Any], node_types: Mapping[str, str]) -> PromptFailed:
    node_id = str(data.get("node_id") or "")
    traceback = data.get("traceback") or []
    return PromptFailed(
        node_id=node_id,
        node_type=str(data.get("node_type") or node_types.get(node_id, "")),
        exception_type=str(data.get("exception_type") or ""),
        exception_message=str(data.get("exception_message") or ""),
        traceback=tuple(str(line) for line in traceback) if isinstance(traceback, list) else (),
    )


def _interrupted(data: Mapping[str, Any], node_types: Mapping[str, str]) -> PromptInterrupted:
    node_id = str(data.get("node_id") or "")
    return PromptInterrupted(node_id=node_id, node_type=str(data.get("node_type") or node_types.get(node_id, "")))


@dataclass
class _NodeTicks:
    last_sent_at: float
    held: NodeProgress | None = None


@dataclass
class PromptTracker:
    """Follows one prompt's websocket messages; see the module docstring."""

    prompt_id: str
    node_types: Mapping[str, str]
    progress_interval_s: float = 0.1
    started: bool = False
    finished: bool = False
    _outputs: dict[tuple[str, str, str, str], OutputFile] = field(default_factory=dict)
    _ticks: dict[str, _NodeTicks] = field(default_factory=dict)

    @property
    def outputs(self) -> tuple[OutputFile, ...]:
        return tuple(self._outputs.values())

    def feed(self, message: Mapping[str, Any], now: float) -> list[Step]:
        """Steps for one websocket message (already parsed JSON) that arrived at `now`."""
        if self.finished:
            return []
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, Mapping) or data.get("prompt_id") != self.prompt_id:
            return []
        if kind == "progress":
            return self._start() + self._progress(data, now)
        if kind not in _MEANINGFUL:
            return []
        steps = self._start() + self._release_all()
        if kind == "execution_cached":
            nodes = data.get("nodes")
            if isinstance(nodes, list) and nodes:
                steps.append(NodesCached(tuple(str(n) for n in nodes)))
        elif kind == "executing":
            node = data.get("node")
            if node is not None:
                node_id = str(node)
                steps.append(NodeStarted(node_id, self.node_types.get(node_id, "")))
        elif kind == "executed":
            node_id = str(data.get("node") or "")
            if new := self._remember(outputs_of_node(node_id, data.get("output"))):
                steps.append(OutputsReady(new))
        elif kind == "execution_success":
            steps.append(self._finish(PromptSucceeded(self.outputs)))
        elif kind == "execution_error":
            steps.append(self._finish(_failure(data, self.node_types)))
        elif kind == "execution_interrupted":
            steps.append(self._finish(_interrupted(data, self.node_types)))
        return steps

    def due(self, now: float) -> list[Step]:
        """Held-back progress ticks whose interval has passed by `now`."""
        steps: list[Step] = []
        for ticks in self._ticks.values():
            if ticks.held is not None and now - ticks.last_sent_at >= self.progress_interval_s:
                steps.append(ticks.held)
                ticks.held = None
                ticks.last_sent_at = now
        return steps

    def next_due(self) -> float | None:
        """When `due` will next have something to release, or None."""
        times = [t.last_sent_at + self.progress_interval_s for t in self._ticks.values() if t.held is not None]
        return min(times) if times else None

    def steps_from_history(self, entry: Mapping[str, Any] | None) -> list[Step]:
        """Steps for the prompt's `GET /history/{id}` entry; [] while it has not finished."""
        if self.finished or not entry:
            return []
        status = entry.get("status")
        if not isinstance(status, Mapping):
            return []
        messages = status.get("messages")
        terminal: Step | None = None
        for item in messages if isinstance(messages, list) else []:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], Mapping)):
                continue
            name, data = item
            if name == "execution_error":
                terminal = _failure(data, self.node_types)
            elif name == "execution_interrupted":
                terminal = _interrupted(data, self.node_types)
        if terminal is None:
            if status.get("status_str") == "success" or status.get("completed") is True:
                outputs = entry.get("outputs")
                files: list[OutputFile] = []
                for node_id, ui_output in (outputs.items() if isinstance(outputs, Mapping) else []):
                    files.extend(outputs_of_node(str(node_id), ui_output))
                self._remember(files)
                terminal = PromptSucceeded(self.outputs)
            else:
                terminal = PromptFailed("", "", "ComfyUIError", f"history status {status.get('status_str')!r}")
        return self._start() + self._release_all() + [self._finish(terminal)]

    # -- internals ---------------------------------------------------------------------------

    def _start(self) -> list[Step]:
        if self.started:
            return []
        self.started = True
        return [PromptStarted()]

    def _finish(self, step: Step) -> Step:
        self.finished = True
        return step

    def _remember(self, files: Iterable[OutputFile]) -> tuple[OutputFile, ...]:
        """Remembers `files`; returns those not remembered before."""
        new: list[OutputFile] = []
        for f in files:
            key = (f.node_id, f.filename, f.subfolder, f.type)
            if key not in self._outputs:
                self._outputs[key] = f
                new.append(f)
        return tuple(new)

    def _release_all(self) -> list[Step]:
        steps: list[Step] = []
        for ticks in self._ticks.values():
            if ticks.held is not None:
                steps.append(ticks.held)
                ticks.held = None
        return steps

    def _progress(self, data: Mapping[str, Any], now: float) -> list[Step]:
        node_id = str(data.get("node") or "")
        try:
            value, maximum = int(data.get("value") or 0), int(data.get("max") or 0)
        except (TypeError, ValueError):
            return []
        tick = NodeProgress(node_id, self.node_types.get(node_id, ""), value, maximum)
        ticks = self._ticks.get(node_id)
        if ticks is None or now - ticks.last_sent_at >= self.progress_interval_s or value >= maximum:
            self._ticks[node_id] = _NodeTicks(last_sent_at=now)
            return [tick]
        ticks.held = tick
        return []


_MEANINGFUL = frozenset(
    {"execution_start", "execution_cached", "executing", "executed", "execution_success", "execution_error",
     "execution_interrupted"}
)
# What the websocket feed routes to a prompt; everything else (progress_state, previews) is
# dropped before it reaches an execution.
ROUTED_TYPES = _MEANINGFUL | {"progress"}
