"""`comfyfleet runners ...` and `comfyfleet templates ...`: the fleet's machines and saved workflows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from comfyfleet.cli.common import JsonFlag, api_errors, client_for, out, pairs, print_json, split_tags, wants_json
from comfyfleet.cli.display import details_table, follow, rows_table
from comfyfleet.models import Runner, Template

runners = typer.Typer(help="ComfyUI machines the fleet drives.", no_args_is_help=True, rich_markup_mode=None)
templates = typer.Typer(help="Saved workflows with placeholders.", no_args_is_help=True, rich_markup_mode=None)

RunnerId = Annotated[str, typer.Argument(metavar="ID", help="Runner id.")]
TemplateId = Annotated[str, typer.Argument(metavar="ID", help="Template id.")]
Headers = Annotated[list[str] | None, typer.Option("--header", metavar="NAME=VALUE",
                                                   help="HTTP header sent to the ComfyUI. Repeatable.")]
Tags = Annotated[list[str] | None, typer.Option("--tags", "-t", metavar="TAG[,TAG]", help="Runner tags.")]


def _show_runner(ctx: typer.Context, runner: Runner, as_json: bool) -> None:
    if wants_json(ctx, as_json):
        print_json(runner)
        return
    out.print(details_table([
        ("id", runner.id), ("name", runner.name), ("status", runner.status), ("connection", runner.connection),
        ("endpoint", runner.endpoint), ("tags", ", ".join(runner.tags) or None),
        ("slots", runner.slots), ("in flight", runner.in_flight), ("ComfyUI", runner.comfyui_version),
        ("last seen", runner.last_seen_at), *((f"header {k}", v) for k, v in runner.headers.items()),
    ]))


@runners.command("list")
@api_errors
def list_runners(ctx: typer.Context, status: Annotated[str | None, typer.Option(help="active or disabled.")] = None,
                 as_json: JsonFlag = False) -> None:
    """List runners."""
    with client_for(ctx) as client:
        found = list(client.runners.list(status=status))
    if wants_json(ctx, as_json):
        print_json(found)
        return
    out.print(rows_table(["id", "name", "status", "connection", "tags", "slots", "in_flight"], [
        (r.id, r.name, r.status, r.connection, ",".join(r.tags), r.slots, r.in_flight) for r in found]))


@runners.command("get")
@api_errors
def get_runner(ctx: typer.Context, runner_id: RunnerId, as_json: JsonFlag = False) -> None:
    """Show one runner."""
    with client_for(ctx) as client:
        _show_runner(ctx, client.runners.get(runner_id), as_json)


@runners.command("create")
@api_errors
def create_runner(ctx: typer.Context, name: Annotated[str, typer.Option(help="Runner name.")],
                  endpoint: Annotated[str, typer.Option(help="ComfyUI URL, e.g. http://10.0.0.5:8188.")],
                  header: Headers = None, tags: Tags = None, as_json: JsonFlag = False) -> None:
    """Register a ComfyUI endpoint for the fleet to drive."""
    with client_for(ctx) as client:
        runner = client.runners.create(name=name, endpoint=endpoint, headers=pairs(header, "--header"),
                                       tags=split_tags(tags))
    _show_runner(ctx, runner, as_json)


@runners.command("update")
@api_errors
def update_runner(ctx: typer.Context, runner_id: RunnerId, name: Annotated[str | None, typer.Option()] = None,
                  endpoint: Annotated[str | None, typer.Option()] = None, header: Headers = None,
                  tags: Tags = None, as_json: JsonFlag = False) -> None:
    """Change a runner's name, endpoint, headers or tags."""
    with client_for(ctx) as client:
        runner = client.runners.update(runner_id, name=name, endpoint=endpoint,
                                       headers=pairs(header, "--header") if header else None,
                                       tags=split_tags(tags) if tags else None)
    _show_runner(ctx, runner, as_json)


@runners.command("enable")
@api_errors
def enable_runner(ctx: typer.Context, runner_id: RunnerId, as_json: JsonFlag = False) -> None:
    """Let a runner take work again."""
    with client_for(ctx) as client:
        _show_runner(ctx, client.runners.update(runner_id, status="active"), as_json)


@runners.command("disable")
@api_errors
def disable_runner(ctx: typer.Context, runner_id: RunnerId, as_json: JsonFlag = False) -> None:
    """Stop placing work on a runner."""
    with client_for(ctx) as client:
        _show_runner(ctx, client.runners.update(runner_id, status="disabled"), as_json)


@runners.command("delete")
@api_errors
def delete_runner(ctx: typer.Context, runner_id: RunnerId, as_json: JsonFlag = False) -> None:
    """Remove a runner; its queued workflows are placed elsewhere."""
    with client_for(ctx) as client:
        client.runners.delete(runner_id)
    print_json({"id": runner_id, "deleted": True}) if wants_json(ctx, as_json) else out.print(f"deleted {runner_id}")


@runners.command("interrupt")
@api_errors
def interrupt_runner(ctx: typer.Context, runner_id: RunnerId, as_json: JsonFlag = False) -> None:
    """Interrupt what the runner's ComfyUI is running now."""
    with client_for(ctx) as client:
        answer = client.runners.interrupt(runner_id)
    print_json(answer or {"id": runner_id}) if wants_json(ctx, as_json) else out.print(f"interrupted {runner_id}")


@runners.command("token")
@api_errors
def runner_token(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Create a token for a self-registering runner agent (shown once)."""
    with client_for(ctx) as client:
        token = client.runners.create_token()
    print_json(token) if wants_json(ctx, as_json) else out.print(token.token)


# ---- templates ---------------------------------------------------------------------------


def _show_template(ctx: typer.Context, template: Template, as_json: bool) -> None:
    if wants_json(ctx, as_json):
        print_json(template)
    else:
        out.print(details_table([("id", template.id), ("name", template.name),
                                 ("description", template.description), ("updated", template.updated_at)]))


@templates.command("list")
@api_errors
def list_templates(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List templates."""
    with client_for(ctx) as client:
        found = list(client.templates.list())
    if wants_json(ctx, as_json):
        print_json(found)
    else:
        out.print(rows_table(["id", "name", "description"], [(t.id, t.name, t.description) for t in found]))


@templates.command("get")
@api_errors
def get_template(ctx: typer.Context, template_id: TemplateId, as_json: JsonFlag = False) -> None:
    """Show one template."""
    with client_for(ctx) as client:
        _show_template(ctx, client.templates.get(template_id), as_json)


@templates.command("create")
@api_errors
def create_template(ctx: typer.Context, workflow_json: Annotated[Path, typer.Argument(
                        metavar="WORKFLOW_JSON", exists=True, dir_okay=False,
                        help="The workflow with placeholders (a JSON file).")],
                    name: Annotated[str, typer.Option(help="Template name.")],
                    description: Annotated[str, typer.Option(help="What it does.")],
                    as_json: JsonFlag = False) -> None:
    """Save a workflow with placeholders as a template."""
    with client_for(ctx) as client:
        _show_template(ctx, client.templates.create(name=name, description=description, body=workflow_json), as_json)


@templates.command("update")
@api_errors
def update_template(ctx: typer.Context, template_id: TemplateId,
                    body: Annotated[Path | None, typer.Option(exists=True, dir_okay=False)] = None,
                    name: Annotated[str | None, typer.Option()] = None,
                    description: Annotated[str | None, typer.Option()] = None, as_json: JsonFlag = False) -> None:
    """Change a template's name, description or workflow."""
    with client_for(ctx) as client:
        template = client.templates.update(template_id, name=name, description=description, body=body)
    _show_template(ctx, template, as_json)


@templates.command("delete")
@api_errors
def delete_template(ctx: typer.Context, template_id: TemplateId, as_json: JsonFlag = False) -> None:
    """Delete a template."""
    with client_for(ctx) as client:
        client.templates.delete(template_id)
    print_json({"id": template_id, "deleted": True}) if wants_json(ctx, as_json) else out.print(
        f"deleted {template_id}")


@templates.command("run")
@api_errors
def run_template(ctx: typer.Context, template_id: TemplateId,
                 name: Annotated[str | None, typer.Option("--name", "-n")] = None,
                 param: Annotated[list[str] | None, typer.Option("--param", "-p", metavar="NAME=VALUE")] = None,
                 file: Annotated[list[str] | None, typer.Option("--file", "-f", metavar="NAME=PATH")] = None,
                 choice: Annotated[list[str] | None, typer.Option("--choice", "-c", metavar="NAME=OPTION")] = None,
                 tags: Tags = None,
                 watch: Annotated[bool, typer.Option("--watch", "-w")] = False,
                 download: Annotated[Path | None, typer.Option("--download", "-d", metavar="DIR")] = None,
                 as_json: JsonFlag = False) -> None:
    """Run a template with its placeholders filled, like `run`."""
    with client_for(ctx) as client:
        created = client.templates.run(template_id, name=name, params=pairs(param, "--param"),
                                       choices=pairs(choice, "--choice"), tags=split_tags(tags),
                                       files={k: Path(v) for k, v in pairs(file, "--file").items()})
        if not (watch or download):
            print_json(created) if wants_json(ctx, as_json) else out.print(f"{created.id} {created.status}")
            return
        code = follow(client, created.id, from_start=True, as_json=wants_json(ctx, as_json), download=download)
    raise typer.Exit(code)
