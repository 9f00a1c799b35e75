"""`python -m services.runner` as a process: flags and environment, a workflow, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.runner.conftest import MakeHarness, assignment, chain
from tests.runner.fakes import eventually

REPO = Path(__file__).resolve().parents[2]


async def test_the_process_runs_a_workflow_and_stops_cleanly_on_sigterm(harness: MakeHarness, tmp_path: Path) -> None:
    h = await harness(in_process=False, node_delay_ms=50)
    token_file = tmp_path / "token"
    token_file.write_text("secret-from-file\n")
    env = {
        **os.environ,
        "RUNNER_SCHEDULER": h.scheduler_server.address,
        "RUNNER_STORAGE": h.storage_server.address,
        "COMFYUI_URL": h.comfyui.url,
        "RUNNER_TAGS": "env,tags",
        "RUNNER_NAME": "from-env",
        "RUNNER_TOKEN_FILE": str(token_file),
        "RUNNER_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runner", "--name", "from-flag", "--slots", "2",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        await eventually(lambda: h.scheduler.connected, timeout_s=15.0, what="the runner process to connect")
        (hello,) = h.scheduler.hellos
        assert (hello.name, list(hello.tags), hello.slots) == ("from-flag", ["env", "tags"], 2)
        assert hello.runner_token == "secret-from-file"
        assert hello.comfyui_version == "0.3.64"
        assert len(hello.object_info_digest) == 64
        assert "SaveImage" in hello.node_classes and list(hello.node_classes) == sorted(hello.node_classes)

        h.scheduler.assign(assignment("wf-cli", chain(3, "cli")))
        assert await h.terminal("wf-cli") == "completed"

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 10.0)
        assert process.returncode == 0, stderr.decode()
        await asyncio.wait_for(h.scheduler.stream_ended.wait(), 2.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_missing_token_exits_with_a_message(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.runner", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 15.0)
    assert process.returncode == 2
    assert b"runner token is required" in stderr
