"""A tracer for `bench.overhead --trace`: where one workflow's time goes, across processes.

Every process of the fleet (gateway, scheduler, storage, runner, doubles) imports this through
a `sitecustomize` on PYTHONPATH (see `environment`). It wraps named functions of the services,
once their module is imported, so each call appends `{"t": wall time, "p": process, "s": stage,
"e": "enter"|"exit"|"yield"}` to `<dir>/<pid>.jsonl`. Product code is untouched; with the
tracer off nothing is wrapped. `stages` turns the records of one run (a time window) into
the elapsed time at which each stage first entered/exited, from the run's start.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import inspect
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ENV = "COMFYFLEET_BENCH_TRACE"

# module -> [(attribute path, stage name, label function of the call's arguments or None)]
Label = Callable[..., str] | None


def _event_kind(*args: Any, **_kw: Any) -> str:
    for arg in args:
        if hasattr(arg, "WhichOneof"):
            try:
                return str(arg.WhichOneof("kind") or arg.WhichOneof("message") or "")
            except ValueError:
                try:
                    return str(arg.WhichOneof("message") or "")
                except ValueError:
                    return ""
    return ""


def _message_type(_self: Any, message: Any, *_a: Any) -> str:
    return str(message.get("type")) if isinstance(message, dict) else ""


TARGETS: dict[str, list[tuple[str, str, Label]]] = {
    "services.gateway.workflow_routes": [("create_workflow", "gw.create", None),
                                         ("submit_form", "gw.submit_form", None)],
    "services.gateway.subscribe_routes": [("subscribe", "gw.subscribe", None),
                                          ("render", "gw.render", _event_kind),
                                          ("render_event", "gw.render_event", _event_kind)],
    "services.gateway.scheduler_client": [("GrpcScheduler.get_user", "gw.rpc.get_user", None),
                                          ("GrpcScheduler.check_token", "gw.rpc.check_token", None),
                                          ("GrpcScheduler.create_workflow", "gw.rpc.create", None),
                                          ("GrpcScheduler.get_workflow", "gw.rpc.get_workflow", None),
                                          ("GrpcWatch.next", "gw.watch.next", None)],
    "services.gateway.storage_client": [("GrpcStorage.open_upload", "gw.storage.open_upload", None),
                                        ("GrpcUpload.finish", "gw.storage.finish", None),
                                        ("GrpcStorage.presign", "gw.storage.presign", None)],
    "services.gateway.sse": [("json_frame", "gw.sse.frame", None)],
    "services.scheduler.workflow_servicer": [("WorkflowServicer.CreateWorkflow", "sc.CreateWorkflow", None),
                                             ("WorkflowServicer.GetWorkflow", "sc.GetWorkflow", None),
                                             ("WorkflowServicer.WatchWorkflow", "sc.WatchWorkflow", None),
                                             ("UserServicer.GetUser", "sc.GetUser", None)],
    "services.scheduler.workflows": [("Workflows.create", "sc.workflows.create", None)],
    "services.scheduler.db.workflow_store": [("WorkflowStore.create", "sc.store.create", None),
                                             ("WorkflowStore.change", "sc.store.change", None),
                                             ("WorkflowStore.events_after", "sc.store.events_after", None)],
    "services.scheduler.execution": [("Execution.kick", "sc.kick", None),
                                     ("Execution.placement_pass", "sc.placement_pass", None),
                                     ("Execution.on_event", "sc.on_event", _event_kind),
                                     ("Execution.event_arrived", "sc.event_arrived", _event_kind)],
    "services.scheduler.hub": [("EventHub.publish", "sc.hub.publish", None)],
    "services.scheduler.db.engine": [("Database._commit_queued", "sc.db.group_commit", None)],
    "services.scheduler.db.changes": [("apply_changes", "sc.db.apply_changes", None)],
    "services.scheduler.fleet": [("Session.send", "sc.session.send", _event_kind)],
    "services.runner.agent": [("RunnerAgent.assign", "rn.assign", None)],
    "services.runner.input_upload": [("upload_inputs", "rn.upload_inputs", None)],
    "services.runner.queue_reads": [("QueueReads._read", "rn.queue_position", None)],
    "services.runner.execution": [("Execution._submit", "rn.submit", None),
                                  ("Execution._apply", "rn.apply", None)],
    "services.runner.comfyui_client": [("ComfyUIClient.object_info", "rn.cu.object_info", None),
                                       ("ComfyUIClient.submit_prompt", "rn.cu.prompt", None),
                                       ("ComfyUIClient.queue", "rn.cu.queue", None),
                                       ("ComfyUIClient.history", "rn.cu.history", None),
                                       ("ComfyUIClient.upload_image", "rn.cu.upload", None)],
    "services.runner.comfyui_feed": [("ComfyUIFeed._dispatch", "rn.ws", _message_type)],
    "services.runner.output_store": [("_copy", "rn.store_output", None)],
    "services.runner.storage_client": [("StorageClient.put", "rn.storage.put", None)],
    "services.storage.servicer": [("StorageServicer.PutObject", "st.PutObject", None),
                                  ("StorageServicer._put_bytes", "st.PutObject", None)],
    "services.storage.local_backend": [("LocalBackend.put", "st.put", None),
                                       ("LocalBackend._store_whole", "st.store_whole", None)],
    "services.runner.outbox": [("Outbox.emit", "rn.emit", _event_kind),
                               ("Outbox.written", "rn.written", _event_kind)],
}


class _Tracer:
    def __init__(self, directory: str) -> None:
        self._file = open(os.path.join(directory, f"{os.getpid()}.jsonl"), "a", buffering=1)

    def record(self, stage: str, edge: str, label: str = "") -> None:
        entry = {"t": time.time(), "p": os.getpid(), "s": stage, "e": edge}
        if label:
            entry["k"] = label
        self._file.write(json.dumps(entry) + "\n")


_tracer: _Tracer | None = None


def _wrap(fn: Callable[..., Any], stage: str, label: Label) -> Callable[..., Any]:
    def name(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            return label(*args, **kwargs) if label is not None else ""
        except Exception:
            return ""

    assert _tracer is not None
    tracer = _tracer
    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen(*args: Any, **kwargs: Any) -> Any:
            tracer.record(stage, "enter", name(args, kwargs))
            async for item in fn(*args, **kwargs):
                tracer.record(stage, "yield", _event_kind(item))
                yield item
            tracer.record(stage, "exit")
        return agen
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def coro(*args: Any, **kwargs: Any) -> Any:
            tracer.record(stage, "enter", name(args, kwargs))
            try:
                return await fn(*args, **kwargs)
            finally:
                tracer.record(stage, "exit", name(args, kwargs))
        return coro

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        tracer.record(stage, "enter", name(args, kwargs))
        try:
            return fn(*args, **kwargs)
        finally:
            tracer.record(stage, "exit")
    return plain


def _patch(module: Any) -> None:
    for path, stage, label in TARGETS.get(module.__name__, []):
        owner = module
        *parents, attr = path.split(".")
        for part in parents:
            owner = getattr(owner, part, None)
        fn = getattr(owner, attr, None) if owner is not None else None
        if not inspect.isfunction(fn):  # gone or renamed, or a callable object (an ASGI app): left alone
            continue
        setattr(owner, attr, _wrap(fn, stage, label))


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                loader = spec.loader
                exec_module = loader.exec_module

                def patched(module: Any, _exec: Any = exec_module) -> None:
                    _exec(module)
                    _patch(module)

                loader.exec_module = patched  # type: ignore[method-assign]
                return spec
        return None


def install() -> None:
    """Called by the sitecustomize of `environment`: traces this process when ENV is set."""
    global _tracer
    directory = os.environ.get(ENV)
    if not directory or _tracer is not None:
        return
    _tracer = _Tracer(directory)
    sys.meta_path.insert(0, _Finder())


def environment(directory: Path) -> dict[str, str]:
    """Environment variables that make child Python processes trace into `directory`."""
    site = directory / "site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text("import bench._trace\nbench._trace.install()\n")
    path = os.environ.get("PYTHONPATH", "")
    return {ENV: str(directory), "PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


def load(directory: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for file in directory.glob("*.jsonl"):
        for line in file.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    records.sort(key=lambda r: r["t"])
    return records


def timeline(records: list[dict[str, Any]], start: float, end: float) -> list[tuple[float, str]]:
    """(ms since start, "stage edge [label]") for each record in [start, end]."""
    out = []
    for r in records:
        if start <= r["t"] <= end:
            label = f" {r['k']}" if r.get("k") else ""
            out.append((round((r["t"] - start) * 1000, 2), f"{r['s']} {r['e']}{label}"))
    return out


# The critical path of one suite run, in order: (milestone, record, which occurrence).
MILESTONES: list[tuple[str, str, str]] = [
    ("gateway has the POST", "gw.create enter", "first"),
    ("201 sent (workflow committed)", "gw.create exit", "first"),
    ("assignment sent to the runner", "sc.session.send enter assignment", "first"),
    ("runner has the assignment", "rn.assign enter", "first"),
    ("POST /prompt sent", "rn.cu.prompt enter", "first"),
    ("POST /prompt answered", "rn.cu.prompt exit", "first"),
    ("execution_success on the websocket", "rn.ws enter execution_success", "first"),
    ("output copy starts (GET /view)", "rn.store_output enter", "first"),
    ("storage PutObject starts", "rn.storage.put enter", "first"),
    ("storage has the PutObject", "st.PutObject enter", "first"),
    ("storage has the whole object", "st.store_whole enter", "first"),
    ("storage wrote the object (fsynced)", "st.store_whole exit", "first"),
    ("storage answered", "st.PutObject exit", "first"),
    ("output stored", "rn.storage.put exit", "first"),
    ("`completed` emitted", "rn.emit enter completed", "first"),
    ("scheduler has `completed`", "sc.event_arrived enter completed", "first"),
    ("`completed` committed and published", "sc.hub.publish exit", "last"),
    ("scheduler streamed `completed` (watch ends)", "sc.WatchWorkflow exit", "last"),
    ("gateway rendered the terminal frame", "gw.render_event exit status", "last"),
]
END = "client has the terminal frame"


def breakdown(records: list[dict[str, Any]], windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """For each milestone: the median ms since the create was sent, and the median ms since the
    milestone before it (per run, so the steps add up run by run, not across runs)."""
    at: dict[str, list[float]] = {}
    step: dict[str, list[float]] = {}
    for start, end in windows:
        times: dict[str, float] = {}
        for ms, what in timeline(records, start, end):
            for name, record, which in MILESTONES:
                if what == record and (which == "last" or name not in times):
                    times[name] = ms
        times[END] = round((end - start) * 1000, 2)
        previous = 0.0
        for name in [m[0] for m in MILESTONES] + [END]:
            if name in times:
                at.setdefault(name, []).append(times[name])
                step.setdefault(name, []).append(times[name] - previous)
                previous = times[name]
    return [{"milestone": name, "at_ms": round(statistics.median(at[name]), 2),
             "step_ms": round(statistics.median(step[name]), 2), "runs": len(at[name])}
            for name in [m[0] for m in MILESTONES] + [END] if name in at]
