"""Running one prompt: execution.PromptExecutor of ComfyUI 0.3.64, message for message.

Order per prompt: execution_start, execution_cached, then per node progress_state(running),
executing, [executed], progress_state(finished); finally execution_success, or
execution_error / execution_interrupted. Cached output nodes only re-send `executed` and a
finished progress_state. Node functions run on one worker thread, as on the real server; the
interrupt flag is checked just before a node's function and on every progress tick.

`--node-delay-ms` (`node_delay_ms`) is the double's own addition: a plain node sleeps that long
before its work (uninterruptible, like a busy node), a node that reports progress sleeps that
long before each tick.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any, Protocol

from PIL import Image

from .errors import InterruptProcessingException, format_traceback, full_type_name
from .files import Folders
from .graph import ExecutionList, ProgressRegistry, SignatureCache, compute_signatures
from .nodes import NODE_CLASSES, Node, NodeResult
from .validation import get_input_info, is_link

# Binary event types (server.BinaryEventTypes); 2 is internal: an image still to be encoded.
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
PREVIEW_IMAGE_WITH_METADATA = 4


class Server(Protocol):
    """What the executor needs from the server (see app.ComfyUIDouble)."""

    folders: Folders
    client_id: str | None
    last_node_id: str | None
    node_delay_ms: float
    interrupt: threading.Event
    stopping: threading.Event
    pool: concurrent.futures.ThreadPoolExecutor

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None: ...

    def supports_preview_metadata(self, sid: str | None) -> bool: ...


def now_ms() -> int:
    return int(time.time() * 1000)


def format_value(x: Any) -> Any:
    """execution.format_value: plain values as they are, anything else (tensors) as str()."""
    if x is None or isinstance(x, int | float | bool | str):
        return x
    return str(x)


class RunContext:
    """Handed to a running node (on the worker thread): folders and the progress hook."""

    def __init__(self, server: Server, progress: ProgressRegistry, prompt_id: str, node_id: str) -> None:
        self.folders = server.folders
        self._server = server
        self._progress = progress
        self._prompt_id = prompt_id
        self._node_id = node_id

    def progress(self, value: int, total: int, preview: Image.Image | None) -> None:
        """main.hijack_progress's hook, as driven by comfy.utils.ProgressBar.update_absolute."""
        server = self._server
        if server.node_delay_ms > 0:
            server.stopping.wait(server.node_delay_ms / 1000)
        if server.interrupt.is_set():
            raise InterruptProcessingException()
        sid = server.client_id
        self._progress.update(self._node_id, value, total)
        wants_metadata = preview is not None and server.supports_preview_metadata(sid)
        if wants_metadata:
            metadata = {"node_id": self._node_id, "prompt_id": self._prompt_id, "display_node_id": self._node_id,
                        "parent_node_id": None, "real_node_id": self._node_id}
            server.send_sync(PREVIEW_IMAGE_WITH_METADATA, (("PNG", preview, None), metadata), sid)
        server.send_sync("progress", {"value": value, "max": total, "prompt_id": self._prompt_id,
                                      "node": self._node_id}, sid)
        if preview is not None and not wants_metadata:
            server.send_sync(UNENCODED_PREVIEW_IMAGE, ("PNG", preview, None), sid)


class PromptExecutor:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.status_messages: list[tuple[str, dict[str, Any]]] = []
        self.history_result: dict[str, Any] = {}
        self.success = False
        self.reset()

    def reset(self) -> None:
        """Fresh caches (what POST /free {"free_memory": true} leads to)."""
        self.outputs = SignatureCache()
        self.ui = SignatureCache()
        self.objects = SignatureCache()

    def add_message(self, event: str, data: dict[str, Any], broadcast: bool) -> None:
        data = {**data, "timestamp": now_ms()}
        self.status_messages.append((event, data))
        if self.server.client_id is not None or broadcast:
            self.server.send_sync(event, data, self.server.client_id)

    def _is_changed(self, prompt: dict[str, Any]) -> dict[str, Any]:
        """IsChangedCache: IS_CHANGED from literal inputs only, stored on the node ("is_changed")."""
        values: dict[str, Any] = {}
        for node_id, node in prompt.items():
            cls = NODE_CLASSES[node["class_type"]]
            if cls.is_changed is None:
                values[node_id] = False
                continue
            if "is_changed" not in node:
                literals = {k: v for k, v in node["inputs"].items() if not is_link(v)}
                try:
                    node["is_changed"] = [cls.is_changed(self.server.folders, **literals)]
                except Exception:
                    node["is_changed"] = float("nan")
            values[node_id] = node["is_changed"]
        return values

    async def execute(self, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any],
                      execute_outputs: list[str]) -> None:
        server = self.server
        server.interrupt.clear()
        server.client_id = extra_data["client_id"] if "client_id" in extra_data else None
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)
        progress = ProgressRegistry(prompt_id, lambda d: server.send_sync("progress_state", d, server.client_id))
        signatures = compute_signatures(prompt, self._is_changed(prompt))
        self.outputs.set_prompt(signatures)
        self.ui.set_prompt(signatures)
        self.objects.set_prompt({node_id: f"{node_id}\0{node['class_type']}" for node_id, node in prompt.items()})
        cached = [node_id for node_id in prompt if self.outputs.get(node_id) is not None]
        self.add_message("execution_cached", {"nodes": cached, "prompt_id": prompt_id}, broadcast=False)
        executed: dict[str, None] = {}
        execution_list = ExecutionList(prompt, self.outputs)
        current_outputs = self.outputs.all_node_ids()
        for output_id in execute_outputs:
            execution_list.add_node(output_id)
        self.success = True
        while not execution_list.is_empty():
            node_id = execution_list.stage()
            if node_id is None:
                error: dict[str, Any] = {"node_id": next(iter(execution_list.pending)),
                                         "exception_message": "Dependency cycle detected",
                                         "exception_type": "graph.DependencyCycleError", "traceback": [],
                                         "current_inputs": []}
                failure: tuple[dict[str, Any], BaseException] | None = (error, RuntimeError())
            else:
                failure = await self._execute_node(node_id, prompt, prompt_id, extra_data, executed, progress)
            if failure is not None:
                self.success = False
                self._handle_error(prompt_id, prompt, current_outputs, list(executed), *failure)
                break
            execution_list.complete()
        else:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in self.ui.all_node_ids():
            entry = self.ui.get(node_id)
            if entry is not None:
                outputs[node_id] = entry["output"]
                meta[node_id] = entry["meta"]
        self.history_result = {"outputs": outputs, "meta": meta}
        server.last_node_id = None

    def _input_data(self, prompt: dict[str, Any], node_id: str, cls: type[Node],
                    extra_data: dict[str, Any]) -> dict[str, list[Any]]:
        """execution.get_input_data: linked values from the output cache, literals, hidden inputs."""
        class_inputs = cls.input_types(self.server.folders)
        data: dict[str, list[Any]] = {}
        for name, value in prompt[node_id]["inputs"].items():
            _, category, _ = get_input_info(class_inputs, name)
            if is_link(value):
                cached = self.outputs.get(value[0])
                if cached is not None and value[1] < len(cached):
                    data[name] = cached[value[1]]
            elif category is not None:
                data[name] = [value]
        for name, kind in class_inputs.get("hidden", {}).items():
            if kind == "PROMPT":
                data[name] = [prompt]
            elif kind == "EXTRA_PNGINFO":
                data[name] = [extra_data.get("extra_pnginfo", None)]
            elif kind == "UNIQUE_ID":
                data[name] = [node_id]
        return data

    def _run(self, obj: Node, ctx: RunContext, kwargs: dict[str, Any]) -> NodeResult:
        """On the worker thread: the configured delay, then the node's work."""
        if self.server.node_delay_ms > 0 and not obj.REPORTS_PROGRESS:
            self.server.stopping.wait(self.server.node_delay_ms / 1000)
        return obj.run(ctx, **kwargs)

    async def _execute_node(self, node_id: str, prompt: dict[str, Any], prompt_id: str, extra_data: dict[str, Any],
                            executed: dict[str, None],
                            progress: ProgressRegistry) -> tuple[dict[str, Any], BaseException] | None:
        server = self.server
        cls = NODE_CLASSES[prompt[node_id]["class_type"]]
        if self.outputs.get(node_id) is not None:
            if server.client_id is not None:
                cached_ui = self.ui.get(node_id) or {}
                server.send_sync("executed", {"node": node_id, "display_node": node_id,
                                              "output": cached_ui.get("output", None), "prompt_id": prompt_id},
                                 server.client_id)
            progress.finish(node_id)
            return None
        progress.start(node_id)
        input_data: dict[str, list[Any]] | None = None
        try:
            input_data = self._input_data(prompt, node_id, cls, extra_data)
            if server.client_id is not None:
                server.last_node_id = node_id
                server.send_sync("executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id},
                                 server.client_id)
            obj = self.objects.get(node_id)
            if obj is None:
                obj = cls()
                self.objects.set(node_id, obj)
            if server.interrupt.is_set():
                raise InterruptProcessingException()
            ctx = RunContext(server, progress, prompt_id, node_id)
            kwargs = {name: values[0] for name, values in input_data.items()}
            result = await asyncio.get_running_loop().run_in_executor(server.pool, self._run, obj, ctx, kwargs)
            if result.ui:
                meta = {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
                self.ui.set(node_id, {"meta": meta, "output": result.ui})
                if server.client_id is not None:
                    server.send_sync("executed", {"node": node_id, "display_node": node_id, "output": result.ui,
                                                  "prompt_id": prompt_id}, server.client_id)
            self.outputs.set(node_id, [[value] for value in result.outputs])
        except InterruptProcessingException as ex:
            return {"node_id": node_id}, ex
        except Exception as ex:
            current_inputs = {name: [format_value(x) for x in values] for name, values in (input_data or {}).items()}
            return {
                "node_id": node_id,
                "exception_message": f"{ex}\n",
                "exception_type": full_type_name(type(ex)),
                "traceback": format_traceback(ex, ex.__traceback__, server.folders.root, execution=True),
                "current_inputs": current_inputs,
            }, ex
        progress.finish(node_id)
        executed[node_id] = None
        return None

    def _handle_error(self, prompt_id: str, prompt: dict[str, Any], current_outputs: list[str],
                      executed: list[str], error: dict[str, Any], ex: BaseException) -> None:
        node_id = error["node_id"]
        message: dict[str, Any] = {"prompt_id": prompt_id, "node_id": node_id,
                                   "node_type": prompt[node_id]["class_type"], "executed": executed}
        if isinstance(ex, InterruptProcessingException):
            self.add_message("execution_interrupted", message, broadcast=True)
            return
        message.update(exception_message=error["exception_message"], exception_type=error["exception_type"],
                       traceback=error["traceback"], current_inputs=error["current_inputs"],
                       current_outputs=list(current_outputs))
        self.add_message("execution_error", message, broadcast=False)
