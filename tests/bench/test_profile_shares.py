"""bench/_profile.py's reading of py-spy's collapsed stacks: whose code the busy samples are."""

from __future__ import annotations

from pathlib import Path

from bench._profile import owner_of, top_frames

LOOP = ("_run_module_as_main (<frozen runpy>:198);main (services/runner/server.py:169);"
        "run (uvloop/__init__.py:92);Runner.run (asyncio/runners.py:118)")


def test_each_busy_sample_goes_to_the_owner_of_its_innermost_frame(tmp_path: Path) -> None:
    stacks = tmp_path / "p.txt"
    stacks.write_text("\n".join([
        f"{LOOP} 5",  # the loop's own frame on top: native code under it
        f"{LOOP};RunnerSession._write_events (services/runner/session.py:283);"
        "_StreamRequestMixin._write (grpc/aio/_call.py:500) 3",
        f"{LOOP};Execution._apply (services/runner/execution.py:370) 1",
        f"{LOOP};ClientSession._request (aiohttp/client.py:558);"
        "Timeout.reschedule (asyncio/timeouts.py:50) 1",
        "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982) 90",  # a wait: left out
    ]) + "\n")
    text = top_frames(stacks)
    shares = text[text.index("self share by whose code"):].splitlines()[1:]
    assert shares == [
        "  50.0%  native under the event loop (uvloop, grpc's Cython and C core, system calls)",
        "  30.0%  grpc (its Python and Cython layers)",
        "  10.0%  ours (services/)",
        "  10.0%  the standard library (asyncio, ...)",
    ]


def test_owners_by_path() -> None:
    assert owner_of("apply_changes (services/scheduler/db/changes.py:161)") == "ours (services/)"
    assert owner_of("Session.execute (sqlalchemy/orm/session.py:2000)") == "SQLAlchemy"
    assert owner_of("post_prompt (tests/comfyui_double/routes.py:72)") == "the ComfyUI double (tests/)"
    assert owner_of("loads (json/__init__.py:299)") == "the standard library (asyncio, ...)"
