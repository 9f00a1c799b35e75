"""`comfyfleet`: the command line, on the SDK. Workflow commands live here; `runners` and
`templates` in comfyfleet.cli.fleet.

    comfyfleet run workflow.json --param prompt="a cat" --file photo=cat.png \\
        --choice method=bilinear --tags gpu --watch --download out/
    comfyfleet watch ID          comfyfleet list --status running
    comfyfleet outputs ID --download out/
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from comfyfleet.cli import fleet
from comfyfleet.cli.common import (
    EXIT_CODES_HELP,
    JsonFlag,
    Options,
    api_errors,
    client_for,
    out,
    pairs,
    print_json,
    split_tags,
    wants_json,
)
from comfyfleet.cli.display import details_table, download_all, follow, workflow_table
from comfyfleet.models import STATUSES, Workflow

app = typer.Typer(
    name="comfyfleet",
    help="Run ComfyUI workflows on a comfyfleet and follow them.\n\n"
         "Configure with --url/--token, COMFYFLEET_URL/COMFYFLEET_TOKEN, or "
         "~/.config/comfyfleet/config.toml (url = \"...\", token = \"...\").\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(fleet.runners, name="runners")
app.add_typer(fleet.templates, name="templates")

Params = Annotated[list[str] | None, typer.Option("--param", "-p", metavar="NAME=VALUE",
                                                  help="Fill $text(NAME). Repeatable.")]
Files = Annotated[list[str] | None, typer.Option("--file", "-f", metavar="NAME=PATH",
                                                 help="Upload PATH for $file(NAME). Repeatable.")]
Choices = Annotated[list[str] | None, typer.Option("--choice", "-c", metavar="NAME=OPTION",
                                                   help="Pick OPTION for $choice(NAME, ...). Repeatable.")]
Watch = Annotated[bool, typer.Option("--watch", "-w", help="Follow progress until it finishes; exit code = outcome.")]
Download = Annotated[Path | None, typer.Option("--download", "-d", metavar="DIR",
                                               help="Save the outputs into DIR (implies --watch).")]
WorkflowId = Annotated[str, typer.Argument(metavar="ID", help="Workflow id.")]


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option(help="API URL [env COMFYFLEET_URL; default http://127.0.0.1:8080]",
                                            show_default=False)] = None,
    token: Annotated[str | None, typer.Option(help="API token [env COMFYFLEET_TOKEN]", show_default=False)] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds per request (default 30).",
                                                  show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output for every command.")] = False,
) -> None:
    ctx.obj = Options(url=url, token=token, timeout=timeout, json=as_json)


def _finish(ctx: typer.Context, workflow: Workflow, watch: bool, download: Path | None, as_json: bool) -> None:
    if not (watch or download):
        if wants_json(ctx, as_json):
            print_json(workflow)
        else:
            out.print(f"{workflow.id} {workflow.status}")
        return
    with client_for(ctx) as client:
        code = follow(client, workflow.id, from_start=True, as_json=wants_json(ctx, as_json), download=download)
    raise typer.Exit(code)


@app.command()
@api_errors
def run(
    ctx: typer.Context,
    workflow_json: Annotated[Path, typer.Argument(metavar="WORKFLOW_JSON", exists=True, dir_okay=False,
                                                  help="API-format ComfyUI workflow (a JSON file).")],
    name: Annotated[str | None, typer.Option("--name", "-n", help="Name (default: the file name).")] = None,
    param: Params = None,
    file: Files = None,
    choice: Choices = None,
    tags: Annotated[list[str] | None, typer.Option("--tags", "-t", metavar="TAG[,TAG]",
                                                   help="Only runners with all these tags.")] = None,
    priority: Annotated[str | None, typer.Option(help="low, normal or high.")] = None,
    watch: Watch = False,
    download: Download = None,
    as_json: JsonFlag = False,
) -> None:
    """Upload a workflow with its parameters and run it (--watch to follow it)."""
    if priority is not None and priority not in ("low", "normal", "high"):
        raise typer.BadParameter("must be low, normal or high", param_hint="--priority")
    with client_for(ctx) as client:
        created = client.workflows.create(
            workflow_json, name=name or workflow_json.stem, params=pairs(param, "--param"),
            choices=pairs(choice, "--choice"),
            files={k: Path(v).expanduser() for k, v in pairs(file, "--file").items()}, tags=split_tags(tags),
            priority=priority)
    if not wants_json(ctx, as_json) and (watch or download):
        out.print(f"created {created.id}")
    _finish(ctx, created, watch, download, as_json)


@app.command()
@api_errors
def watch(
    ctx: typer.Context,
    workflow_id: WorkflowId,
    from_start: Annotated[bool, typer.Option("--from-start", help="Replay every event, not a snapshot.")] = False,
    download: Download = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow a workflow until it finishes; the exit code tells the outcome."""
    with client_for(ctx) as client:
        code = follow(client, workflow_id, from_start=from_start, as_json=wants_json(ctx, as_json), download=download)
    raise typer.Exit(code)


@app.command()
@api_errors
def get(ctx: typer.Context, workflow_id: WorkflowId, as_json: JsonFlag = False) -> None:
    """Show one workflow: status, parameters, runner, failure."""
    with client_for(ctx) as client:
        wf = client.workflows.get(workflow_id)
    if wants_json(ctx, as_json):
        print_json(wf)
        return
    out.print(details_table([
        ("id", wf.id), ("name", wf.name), ("status", wf.status), ("tags", ", ".join(wf.tags) or None),
        ("priority", wf.priority), ("attempt", wf.attempt), ("runner", wf.runner_id), ("prompt", wf.prompt_id),
        ("created", wf.created_at), ("started", wf.started_at), ("completed", wf.completed_at),
        *((f"param {p}", v) for p, v in wf.workflow_params),
        ("error node", wf.error_node), ("exception", wf.exception_type), ("message", wf.exception_message),
    ]))
    for error in wf.node_errors:
        out.print(f"node error {error.node_id} ({error.class_type}): {error.message} {error.details}")


@app.command("list")
@api_errors
def list_(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help=f"One of: {', '.join(STATUSES)}.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only workflows with this tag.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List workflows, newest first."""
    with client_for(ctx) as client:
        found = list(client.workflows.list(status=status, tag=tag, per_page=min(limit, 100), limit=limit))
    if wants_json(ctx, as_json):
        print_json(found)
    else:
        out.print(workflow_table(found))


@app.command()
@api_errors
def cancel(ctx: typer.Context, workflow_id: WorkflowId, as_json: JsonFlag = False) -> None:
    """Cancel a workflow that has not finished."""
    with client_for(ctx) as client:
        wf = client.workflows.cancel(workflow_id)
    if wants_json(ctx, as_json):
        print_json(wf)
    else:
        out.print(f"cancel requested for {wf.id} (was {wf.status})")


@app.command()
@api_errors
def rerun(
    ctx: typer.Context,
    workflow_id: WorkflowId,
    param: Params = None,
    file: Files = None,
    choice: Choices = None,
    watch: Watch = False,
    download: Download = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a workflow again as a new one, changing only the given parameters."""
    with client_for(ctx) as client:
        created = client.workflows.rerun(workflow_id, params=pairs(param, "--param"),
                                         choices=pairs(choice, "--choice"),
                                         files={k: Path(v).expanduser() for k, v in pairs(file, "--file").items()})
    _finish(ctx, created, watch, download, as_json)


@app.command()
@api_errors
def outputs(ctx: typer.Context, workflow_id: WorkflowId, download: Download = None, as_json: JsonFlag = False) -> None:
    """List a completed workflow's outputs (signed URLs), or save them with --download."""
    with client_for(ctx) as client:
        found = client.workflows.outputs(workflow_id)
        files = download_all(client, found, download) if download is not None else []
    if wants_json(ctx, as_json):
        print_json([{**o.model_dump(mode="json"), **({"path": str(f)} if files else {})}
                    for o, f in zip(found, files or [None] * len(found), strict=True)])
        return
    if not found:
        out.print("no outputs")
    for o, f in zip(found, files or [None] * len(found), strict=True):
        out.print(f"{f}" if f else f"{o.filename}  {o.size} bytes  {o.src}")


@app.command()
@api_errors
def delete(ctx: typer.Context, workflow_id: WorkflowId, as_json: JsonFlag = False) -> None:
    """Delete a finished workflow and its stored files."""
    with client_for(ctx) as client:
        client.workflows.delete(workflow_id)
    if wants_json(ctx, as_json):
        print_json({"id": workflow_id, "deleted": True})
    else:
        out.print(f"deleted {workflow_id}")


@app.command()
@api_errors
def user(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Show who the token belongs to (tier and limits)."""
    with client_for(ctx) as client:
        me = client.user.get()
    if wants_json(ctx, as_json):
        print_json(me)
    else:
        out.print(details_table([("id", me.id), ("name", me.name), ("email", me.email), ("tier", me.tier),
                                 *((f"limit {k}", _limit(v)) for k, v in (me.limits or {}).items())]))


def _limit(value: object) -> object:
    """`{"max": 10, "used": 3}` -> `3 of 10`."""
    if isinstance(value, dict) and "max" in value:
        return f"{value.get('used') if value.get('used') is not None else '-'} of {value['max']}"
    return value
