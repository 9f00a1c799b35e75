"""The CLI as a user runs it: `python -m comfyfleet ...` in a subprocess against the suite,
checking what it prints and its exit code (0 completed, 1 error, 2 usage, 3 cancelled, 4 invalid).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from comfyfleet import Client
from comfyfleet.cli import app
from typer.testing import CliRunner

from services.devrun import Suite
from tests.sdk.conftest import SLOW_WORKFLOW, WORKFLOW, png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def cli(suite: Suite | None, *args: str, cwd: Path, env: dict[str, str] | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLEET_", "TTY_", "FORCE_COLOR"))}
    base.update({"COMFYFLEET_CONFIG": str(cwd / "no-config.toml"), "NO_COLOR": "1", "COLUMNS": "160"})
    if suite is not None:
        base.update({"COMFYFLEET_URL": suite.gateway_url, "COMFYFLEET_TOKEN": suite.token})
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "comfyfleet", *args], cwd=cwd, env=base, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def inputs(tmp_path: Path, workflow_file: Path, photo_file: Path) -> Path:
    assert workflow_file.parent == tmp_path and photo_file.parent == tmp_path
    return tmp_path


def test_run_watch_shows_progress_and_ends_with_the_output_paths(suite: Suite, inputs: Path) -> None:
    done = cli(suite, "run", "workflow.json", "--param", "prefix=cli_cat", "--file", "photo=cat.png",
               "--choice", "method=bilinear", "--tags", "gpu", "--watch", "--download", "out", cwd=inputs)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert re.fullmatch(r"created [0-9a-f-]{36}", lines[0]), lines[0]
    statuses = [line.split()[1] for line in lines if line.startswith("status ")]
    assert statuses[0] in ("accepted", "uploaded") and statuses[-1] == "completed" and "running" in statuses
    assert any(re.fullmatch(r"node +3 SaveImage", line) for line in lines), lines
    assert any(re.fullmatch(r"progress +5 SaveImageWebsocket [█░]{24} \d/4", line) for line in lines), lines
    assert re.fullmatch(r"status +completed in \d+\.\ds", next(ln for ln in lines if "completed in" in ln))
    # It ends with the paths of the downloaded outputs.
    assert lines[-2] == "outputs:"
    saved = inputs / lines[-1].strip()
    assert saved.parent == inputs / "out" and saved.name.startswith("cli_cat_")
    assert saved.read_bytes()[:8] == PNG_MAGIC

    workflow_id = lines[0].split()[1]
    listed = cli(suite, "outputs", workflow_id, "--download", "again", "--json", cwd=inputs)
    assert listed.returncode == 0, listed.stderr
    [output] = json.loads(listed.stdout)
    assert output["filename"] == saved.name and output["content_type"] == "image/png"
    assert (inputs / output["path"]).read_bytes() == saved.read_bytes()


def test_json_output_and_the_exit_codes_of_a_cancelled_workflow(suite: Suite, tmp_path: Path) -> None:
    (tmp_path / "slow.json").write_text(json.dumps(SLOW_WORKFLOW))
    inputs = tmp_path
    created = cli(suite, "run", "slow.json", "--json", cwd=inputs)
    assert created.returncode == 0, created.stderr
    workflow = json.loads(created.stdout)
    assert workflow["status"] == "accepted" and workflow["name"] == "slow"
    workflow_id = workflow["id"]

    cancelled = cli(suite, "cancel", workflow_id, "--json", cwd=inputs)
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["id"] == workflow_id

    watched = cli(suite, "watch", workflow_id, "--json", cwd=inputs)
    assert watched.returncode == 3, watched.stderr
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert events[0]["event"] == "snapshot" and events[-2]["status"] == "cancelled"
    assert events[-1]["event"] == "result" and events[-1]["workflow"]["status"] == "cancelled"

    shown = cli(suite, "get", workflow_id, cwd=inputs)
    assert shown.returncode == 0 and re.search(r"^status +cancelled$", shown.stdout, re.M), shown.stdout
    listed = cli(suite, "--json", "list", "--status", "cancelled", "--limit", "50", cwd=inputs)
    assert workflow_id in [wf["id"] for wf in json.loads(listed.stdout)]

    again = cli(suite, "cancel", workflow_id, cwd=inputs)
    assert again.returncode == 1 and re.match(r"error: 400 \w+: .*cancelled", again.stderr), again.stderr
    no_outputs = cli(suite, "outputs", workflow_id, "--json", cwd=inputs)
    assert no_outputs.returncode == 1 and "404 WORKFLOW_NOT_COMPLETED" in no_outputs.stderr
    assert json.loads(no_outputs.stdout)["error"]["reason"] == "WORKFLOW_NOT_COMPLETED"


def test_an_invalid_workflow_exits_4_with_its_node_errors(suite: Suite, tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "sideways",
                                                     "width": 8, "height": 8, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "bad"}},
    }))
    done = cli(suite, "run", "bad.json", "--watch", cwd=tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert re.search(r"^workflow [0-9a-f-]{36} invalid$", done.stdout, re.M), done.stdout
    assert re.search(r"^  node 2 \(ImageScale\): .*upscale_method", done.stdout, re.M), done.stdout


def test_usage_errors_exit_2(suite: Suite, inputs: Path) -> None:
    # In-process (typer's runner): these never reach the network, and each subprocess costs a second.
    runner = CliRunner()
    env = {"COMFYFLEET_URL": suite.gateway_url, "COMFYFLEET_TOKEN": suite.token,
           "COMFYFLEET_CONFIG": str(inputs / "no-config.toml")}
    missing = runner.invoke(app, ["run", str(inputs / "nope.json")], env=env)
    assert missing.exit_code == 2 and "nope.json" in missing.stderr
    no_equals = runner.invoke(app, ["run", str(inputs / "workflow.json"), "--param", "prefix"], env=env)
    assert no_equals.exit_code == 2 and "--param takes NAME=VALUE" in no_equals.stderr
    no_file = runner.invoke(app, ["run", str(inputs / "workflow.json"), "--file", "photo=absent.png"], env=env)
    assert no_file.exit_code == 2 and "absent.png" in no_file.stderr
    bad_priority = runner.invoke(app, ["run", str(inputs / "workflow.json"), "--priority", "urgent"], env=env)
    assert bad_priority.exit_code == 2 and "low, normal or high" in bad_priority.stderr
    no_token = runner.invoke(app, ["list"], env={**env, "COMFYFLEET_TOKEN": ""})
    assert no_token.exit_code == 2 and "COMFYFLEET_TOKEN" in no_token.stderr
    helped = runner.invoke(app, ["--help"], env=env)
    assert helped.exit_code == 0 and "Exit codes: 0 done" in helped.stdout and "templates" in helped.stdout


def test_the_config_file_supplies_url_and_token(suite: Suite, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'url = "{suite.gateway_url}"\ntoken = "{suite.token}"\n')
    me = cli(None, "user", "--json", cwd=tmp_path, env={"COMFYFLEET_CONFIG": str(config)})
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["id"]
    # The environment wins over the file.
    wrong = cli(None, "user", cwd=tmp_path, env={"COMFYFLEET_CONFIG": str(config), "COMFYFLEET_TOKEN": "cf_nope"})
    assert wrong.returncode == 1 and "401" in wrong.stderr


def test_watch_on_a_terminal_draws_a_live_panel(suite: Suite, tmp_path: Path) -> None:
    (tmp_path / "cat.png").write_bytes(png(20, 20))
    (tmp_path / "wf.json").write_text(json.dumps(WORKFLOW))
    done = cli(suite, "run", "wf.json", "-p", "prefix=live", "-f", "photo=cat.png", "--watch", cwd=tmp_path,
               env={"TTY_INTERACTIVE": "1", "TTY_COMPATIBLE": "1"})
    assert done.returncode == 0, done.stderr
    assert "\x1b[" in done.stdout, "cursor control: a live display"
    assert "● completed" in done.stdout and re.search(r"\d/4 steps", done.stdout)
    assert re.search(r"^outputs:\n  live_\d+_\.png  http://\S+$", done.stdout, re.M), done.stdout


def test_ctrl_c_stops_watching_but_not_the_workflow(suite: Suite, client: Client, tmp_path: Path) -> None:
    (tmp_path / "slow.json").write_text(json.dumps(SLOW_WORKFLOW))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYFLEET_", "TTY_"))}
    env.update({"COMFYFLEET_URL": suite.gateway_url, "COMFYFLEET_TOKEN": suite.token, "NO_COLOR": "1",
                "COMFYFLEET_CONFIG": str(tmp_path / "none.toml"), "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "comfyfleet", "run", "slow.json", "--watch"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    workflow_id = first.split()[1]
    for line in proc.stdout:
        if line.startswith("progress"):
            break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert f"stopped watching; the workflow keeps running (comfyfleet watch {workflow_id})" in stderr
    assert client.workflows.get(workflow_id).status == "running"
    client.workflows.cancel(workflow_id)
    assert client.workflows.wait(workflow_id).status == "cancelled"
