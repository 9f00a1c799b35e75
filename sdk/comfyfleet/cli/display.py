"""How the CLI shows things: a workflow's live progress, its outcome, and tables.

`follow()` watches one workflow until it finishes and returns the exit code of its outcome.
On a terminal it draws a live panel (status, queue number, current node, a step bar); when
the output is piped it prints one line per event instead; with `--json` it prints each event
as a JSON line and a final `{"event": "result", ...}` line.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from comfyfleet.cli.common import EXIT_BY_STATUS, EXIT_FAILED, err, out, print_json
from comfyfleet.client import Client
from comfyfleet.models import (
    AnyEvent,
    ExecutingEvent,
    LogEvent,
    Output,
    OutputEvent,
    ProgressEvent,
    StatusEvent,
    Workflow,
)

STATUS_STYLE = {"completed": "green", "failed": "red", "invalid": "red", "cancelled": "yellow", "running": "cyan"}
BAR_WIDTH = 24
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report it


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, "bold"))


def bar(value: int, total: int, width: int = BAR_WIDTH) -> str:
    filled = round(width * value / total) if total else 0
    return "█" * filled + "░" * (width - filled)


class Tracker:
    """What is known so far about a workflow, from its events."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.status = "?"
        self.queue_number: int | None = None
        self.node = ""
        self.step: tuple[int, int] | None = None
        self.outputs: list[str] = []
        self.started = time.monotonic()

    def update(self, event: AnyEvent) -> str | None:
        """Applies one event; returns its line for the plain (piped) display, if it has one."""
        if isinstance(event, StatusEvent):
            changed = event.status != self.status
            self.status, self.queue_number = event.status, event.queue_number
            if event.is_terminal:
                self.node, self.step = "", None
            if not changed:
                return None
            queue = f" (queue {event.queue_number})" if event.queue_number is not None and not event.is_terminal else ""
            took = f" in {time.monotonic() - self.started:.1f}s" if event.is_terminal else ""
            return f"status    {event.status}{queue}{took}"
        if isinstance(event, ExecutingEvent):
            self.node, self.step = f"{event.node_id} {event.node_type}".strip(), None
            return f"node      {self.node}"
        if isinstance(event, ProgressEvent):
            self.node = f"{event.node_id} {event.node_type}".strip()
            self.step = (event.value, event.max)
            return f"progress  {self.node} {bar(event.value, event.max)} {event.value}/{event.max}"
        if isinstance(event, OutputEvent):
            self.outputs.append(event.output.filename)
            return f"output    {event.output.filename} ({event.output.size} bytes)"
        if isinstance(event, LogEvent):
            return f"log       {event.level}: {event.message}"
        return None

    def panel(self) -> RenderableType:
        """The live view: one status line and a step bar."""
        line = Text.assemble(("● ", STATUS_STYLE.get(self.status, "bold")), status_text(self.status),
                             f"  {self.workflow_id}", style="")
        if self.queue_number is not None and self.status in ("queued", "uploaded", "accepted"):
            line.append(f"  queue {self.queue_number}")
        if self.node:
            line.append(f"  node {self.node}")
        line.append(f"  {time.monotonic() - self.started:.1f}s", style="dim")
        rows: list[RenderableType] = [line]
        if self.step is not None:
            value, total = self.step
            grid = Table.grid(padding=(0, 1))
            grid.add_row(ProgressBar(total=max(total, 1), completed=value, width=BAR_WIDTH * 2),
                         Text(f"{value}/{total} steps"))
            rows.append(grid)
        if self.outputs:
            rows.append(Text(f"{len(self.outputs)} output(s): " + ", ".join(self.outputs), style="dim"))
        return Group(*rows)


def follow(client: Client, workflow_id: str, *, from_start: bool = False, as_json: bool = False,
           download: Path | None = None) -> int:
    """Watches until the workflow finishes, shows its outcome and outputs; the exit code."""
    try:
        return _follow(client, workflow_id, from_start=from_start, as_json=as_json, download=download)
    except KeyboardInterrupt:
        err.print(f"stopped watching; the workflow keeps running (comfyfleet watch {workflow_id})")
        return EXIT_INTERRUPTED


def _follow(client: Client, workflow_id: str, *, from_start: bool, as_json: bool, download: Path | None) -> int:
    tracker = Tracker(workflow_id)
    events = client.workflows.watch(workflow_id, from_start=from_start)
    if as_json:
        for event in events:
            print_json({"event": event.kind, **event.model_dump(mode="json", exclude={"kind"})}, compact=True)
    elif out.is_terminal:
        with Live(tracker.panel(), console=out, refresh_per_second=8, transient=False) as live:
            for event in events:
                tracker.update(event)
                live.update(tracker.panel())
    else:
        for event in events:
            line = tracker.update(event)
            if line:
                out.print(line)
    record = client.workflows.get(workflow_id)
    outputs = client.workflows.outputs(workflow_id) if record.status == "completed" else []
    files = download_all(client, outputs, download) if download is not None else []
    if as_json:
        print_json({"event": "result", "workflow": record, "outputs": outputs, "files": [str(f) for f in files]},
                   compact=True)
    else:
        show_outcome(record, outputs, files)
    return EXIT_BY_STATUS.get(record.status, EXIT_FAILED)


def download_all(client: Client, outputs: Sequence[Output], folder: Path) -> list[Path]:
    """Saves each output into `folder` (created if needed), keeping the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    return [client.workflows.download(o, folder) for o in outputs]


def show_outcome(record: Workflow, outputs: Sequence[Any], files: Sequence[Path]) -> None:
    out.print(Text.assemble("workflow ", (record.id, "bold"), " ", status_text(record.status)))
    if record.status == "failed":
        where = f" at node {record.error_node}" if record.error_node else ""
        out.print(f"  {record.exception_type or 'error'}{where}: {record.exception_message or ''}")
    for error in record.node_errors:
        out.print(f"  node {error.node_id} ({error.class_type}): {error.message} {error.details}".rstrip())
    if files:
        out.print("outputs:")
        for path in files:
            out.print(f"  {path}")
    elif outputs:
        out.print("outputs:")
        for o in outputs:
            out.print(f"  {o.filename}  {o.src}")


def workflow_table(workflows: Iterable[Workflow]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("ID", "NAME", "STATUS", "TAGS", "CREATED"):
        table.add_column(column, no_wrap=column == "ID")
    for wf in workflows:
        created = wf.created_at.strftime("%Y-%m-%d %H:%M:%S") if wf.created_at else ""
        table.add_row(wf.id, wf.name, status_text(wf.status), ",".join(wf.tags), created)
    return table


def details_table(fields: Iterable[tuple[str, Any]]) -> Text:
    """`key   value` lines for one resource (`get`); empty values are left out."""
    rows = [(key, value) for key, value in fields if value not in (None, "", [], {})]
    width = max((len(key) for key, _ in rows), default=0)
    text = Text()
    for n, (key, value) in enumerate(rows):
        shown = value.isoformat(timespec="seconds") if isinstance(value, datetime) else str(value)
        text.append(f"{key:<{width}}  ", style="bold")
        text.append_text(status_text(shown) if key == "status" else Text(shown))
        if n < len(rows) - 1:
            text.append("\n")
    return text


def rows_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column.upper(), no_wrap=column == "id")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    return table
