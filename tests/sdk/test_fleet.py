"""Runners, templates, rerun and delete through the SDK and the CLI, against the running suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from comfyfleet import Client
from comfyfleet.errors import APIError, ConflictError, NotFoundError

from services.devrun import Suite
from tests.sdk.conftest import WORKFLOW
from tests.sdk.test_cli import cli


def test_runners_register_update_and_delete(client: Client) -> None:
    local = [r for r in client.runners.list() if r.name == "local-runner"]
    assert [(r.connection, sorted(r.tags), r.comfyui_version) for r in local] == [("online", ["fast", "gpu"], "0.3.64")]

    created = client.runners.create(name="box", endpoint="http://127.0.0.1:9/",
                                    headers={"Authorization": "Bearer secret"}, tags=["big"])
    assert created.status == "active" and created.tags == ["big"]
    assert created.headers == {"Authorization": "Bearer ****"}, "header values come back masked"
    assert created.id in {r.id for r in client.runners.list(per_page=1)}, "every page is read"

    disabled = client.runners.update(created.id, status="disabled", tags=["big", "slow"])
    assert (disabled.status, disabled.tags, disabled.name) == ("disabled", ["big", "slow"], "box")
    assert client.runners.get(created.id).status == "disabled"
    assert created.id in {r.id for r in client.runners.list(status="disabled")}

    with pytest.raises(APIError) as offline:
        client.runners.interrupt(created.id)
    assert offline.value.status == 409 and offline.value.reason

    client.runners.delete(created.id)
    with pytest.raises(NotFoundError):
        client.runners.get(created.id)
    token = client.runners.create_token()
    assert token.token.startswith("cf_")


def test_a_template_runs_then_reruns_with_a_changed_parameter_then_is_deleted(
        client: Client, photo_file: Path) -> None:
    template = client.templates.create(name="scale", description="scales a photo", body=WORKFLOW)
    assert template.body == WORKFLOW and template.id in {t.id for t in client.templates.list()}
    updated = client.templates.update(template.id, description="scales a photo, again")
    assert (updated.name, updated.description) == ("scale", "scales a photo, again")

    run = client.templates.run(template.id, name="from template", params={"prefix": "tpl"},
                               files={"photo": photo_file}, tags=["gpu"])
    assert run.name == "from template" and run.status == "accepted"
    assert client.workflows.wait(run.id).status == "completed"
    assert [o.filename for o in client.workflows.outputs(run.id)] == ["tpl_00001_.png"]

    # The finished run's input file was deleted with it: a rerun must send the file again.
    with pytest.raises(ConflictError) as gone:
        client.workflows.rerun(run.id, params={"prefix": "rerun"})
    assert gone.value.reason == "INPUT_GONE"
    again = client.workflows.rerun(run.id, params={"prefix": "rerun"}, choices={"method": "area"},
                                   files={"photo": photo_file})
    assert again.id != run.id and again.name == "from template" and again.tags == ["gpu"]
    record = client.workflows.wait(again.id)
    assert record.status == "completed"
    assert dict(record.workflow_params)["$choice(method, nearest-exact, bilinear, area)"] == "area"
    assert [o.filename for o in client.workflows.outputs(again.id)] == ["rerun_00001_.png"]

    client.workflows.delete(again.id)
    with pytest.raises(NotFoundError):
        client.workflows.get(again.id)
    client.templates.delete(template.id)
    with pytest.raises(NotFoundError):
        client.templates.get(template.id)


def test_cli_runners_and_templates(suite: Suite, tmp_path: Path, photo_file: Path) -> None:
    runners = cli(suite, "runners", "list", "--json", cwd=tmp_path)
    assert runners.returncode == 0, runners.stderr
    assert "local-runner" in [r["name"] for r in json.loads(runners.stdout)]

    (tmp_path / "tpl.json").write_text(json.dumps(WORKFLOW))
    made = cli(suite, "templates", "create", "tpl.json", "--name", "cli tpl", "--description", "d", "--json",
               cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    template_id = json.loads(made.stdout)["id"]
    ran = cli(suite, "templates", "run", template_id, "-p", "prefix=clitpl", "-f", f"photo={photo_file}",
              "--download", "out", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.splitlines()[-2:] == ["outputs:", "  out/clitpl_00001_.png"]
    listed = cli(suite, "templates", "list", cwd=tmp_path)
    assert listed.returncode == 0 and template_id in listed.stdout and "cli tpl" in listed.stdout
