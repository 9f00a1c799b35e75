"""The runner end to end: ComfyUI double + fake scheduler + in-memory storage, all on real servers."""

from __future__ import annotations

import asyncio
import hashlib
import io
import sys
from pathlib import Path

from comfyfleet.runner.v1 import runner_session_service_pb2 as pb
from comfyfleet.scheduler.v1 import workflow_pb2
from PIL import Image

from tests.comfyui_double.nodes import OBJECT_INFO
from tests.runner.conftest import MakeHarness, assignment, chain, png
from tests.runner.fakes import eventually

REPO = Path(__file__).resolve().parents[2]

LOAD_SCALE_SAVE = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
    "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": 64,
                                                 "height": 48, "crop": "disabled"}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "runner/wf"}},
}


def photo_input(storage_key: str, filename: str = "cat photo.png") -> pb.InputFile:
    from comfyfleet.storage.v1 import object_pb2

    return pb.InputFile(param="photo", filename=filename, object=object_pb2.ObjectRef(key=storage_key))


async def test_success_uploads_the_input_runs_and_stores_the_output(harness: MakeHarness) -> None:
    h = await harness()
    source = png(40, 30, (200, 10, 10))
    h.storage.put_bytes("inputs/wf-ok/photo/cat photo.png", source, "image/png")
    h.scheduler.assign(assignment("wf-ok", LOAD_SCALE_SAVE, [photo_input("inputs/wf-ok/photo/cat photo.png")]))

    assert await h.terminal("wf-ok") == "completed"
    assert h.scheduler.kinds("wf-ok") == [
        "uploaded", "queued", "running", "executing", "executing", "executing", "output_stored", "completed",
    ]
    executing = [(e.node_id, e.node_type) for e in h.scheduler.events("wf-ok", "executing")]
    assert executing == [("1", "LoadImage"), ("2", "ImageScale"), ("3", "SaveImage")]
    # The input reached ComfyUI in the workflow's own subfolder, byte for byte.
    assert (h.root / "input" / "wf-ok" / "cat photo.png").read_bytes() == source
    # The output is in storage under the output prefix, with what ComfyUI served.
    (stored,) = h.scheduler.events("wf-ok", "output_stored")
    assert (stored.node_id, stored.filename) == ("3", "wf_00001_.png")
    assert stored.object.key == "outputs/wf-ok/3/wf_00001_.png"
    data, content_type = h.storage.objects["outputs/wf-ok/3/wf_00001_.png"]
    assert content_type == "image/png"
    assert stored.object.sha256 == hashlib.sha256(data).hexdigest()
    assert data == (h.root / "output" / "runner" / "wf_00001_.png").read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.size == (64, 48)
    assert image.getpixel((32, 24))[:3] == (200, 10, 10)
    (queued,) = h.scheduler.events("wf-ok", "queued")
    assert queued.queue_number == 0
    (running,) = h.scheduler.events("wf-ok", "running")
    assert running.prompt_id == queued.prompt_id
    history = await h.history(queued.prompt_id)
    assert history["status"]["status_str"] == "success"
    assert h.scheduler.seq_gaps == []


async def test_validation_errors_make_it_invalid_with_every_node_error(harness: MakeHarness) -> None:
    h = await harness()
    prompt = chain(3, "bad")
    prompt["1"]["inputs"]["width"] = 0
    prompt["2"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nope", "width": 8,
                                                          "height": 8, "crop": "disabled"}}
    h.scheduler.assign(assignment("wf-invalid", prompt))

    assert await h.terminal("wf-invalid") == "invalid"
    assert h.scheduler.kinds("wf-invalid") == ["uploaded", "invalid"]
    (invalid,) = h.scheduler.events("wf-invalid", "invalid")
    assert invalid.message == "Prompt outputs failed validation"
    assert sorted((e.node_id, e.class_type, e.type, e.input_name) for e in invalid.node_errors) == [
        ("1", "EmptyImage", "value_smaller_than_min", "width"),
        ("2", "ImageScale", "value_not_in_list", "upscale_method"),
    ]
    assert all(e.message and e.details for e in invalid.node_errors)


async def test_accepted_prompt_with_node_errors_logs_a_warning_and_runs(harness: MakeHarness) -> None:
    h = await harness()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 255}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "good"}},
        "3": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bad"}},
    }
    h.scheduler.assign(assignment("wf-partial", prompt))

    assert await h.terminal("wf-partial") == "completed"
    kinds = h.scheduler.kinds("wf-partial")
    assert kinds[:3] == ["uploaded", "log", "queued"]
    (log,) = h.scheduler.events("wf-partial", "log")
    assert log.level == workflow_pb2.LOG_LEVEL_WARNING
    assert "node 3 (EmptyImage)" in log.message
    assert [o.filename for o in h.scheduler.events("wf-partial", "output_stored")] == ["good_00001_.png"]


async def test_execution_error_is_failed_with_the_node_and_exception(harness: MakeHarness) -> None:
    h = await harness()
    h.storage.put_bytes("inputs/wf-err/photo/broken.png", b"this is not a png", "image/png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "$file(photo)"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}},
    }
    h.scheduler.assign(assignment("wf-err", prompt, [photo_input("inputs/wf-err/photo/broken.png", "broken.png")]))

    assert await h.terminal("wf-err") == "failed"
    assert h.scheduler.kinds("wf-err") == ["uploaded", "queued", "running", "executing", "failed"]
    (failed,) = h.scheduler.events("wf-err", "failed")
    f = failed.failure
    assert (f.node_id, f.node_type, f.exception_type) == ("1", "LoadImage", "PIL.UnidentifiedImageError")
    assert "broken.png" in f.exception_message
    assert len(f.traceback) > 0


async def test_missing_input_object_fails_before_comfyui(harness: MakeHarness) -> None:
    h = await harness()
    h.scheduler.assign(assignment("wf-noinput", LOAD_SCALE_SAVE, [photo_input("inputs/wf-noinput/photo/x.png")]))
    assert await h.terminal("wf-noinput") == "failed"
    (failed,) = h.scheduler.events("wf-noinput", "failed")
    assert failed.failure.exception_type == "InputUnavailable"


async def test_cancel_while_queued_deletes_it_and_later_prompts_move_up(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=250, slots=3)
    h.scheduler.assign(assignment("wf-a", chain(4, "a")))  # ~1 s of work in ComfyUI
    await eventually(lambda: h.scheduler.events("wf-a", "running"), what="A running")
    h.scheduler.assign(assignment("wf-b", chain(3, "b")))
    await eventually(lambda: h.scheduler.events("wf-b", "queued"), what="B queued")
    h.scheduler.assign(assignment("wf-c", chain(3, "c")))
    await eventually(lambda: h.scheduler.events("wf-c", "queued"), what="C queued")
    assert [q.queue_number for q in h.scheduler.events("wf-b", "queued")] == [0]  # next to run
    assert [q.queue_number for q in h.scheduler.events("wf-c", "queued")] == [1]

    h.scheduler.cancel("wf-b")
    assert await h.terminal("wf-b") == "cancelled"
    assert h.scheduler.kinds("wf-b") == ["uploaded", "queued", "cancelled"]
    # C moved up when B left the queue (from the status broadcast, re-reading /queue).
    await eventually(lambda: [q.queue_number for q in h.scheduler.events("wf-c", "queued")] == [1, 0],
                     what="C's new position")
    assert await h.terminal("wf-a") == "completed"
    assert await h.terminal("wf-c") == "completed"
    assert await h.comfyui_json(f"/history/{h.prompt_id('wf-b')}") == {}  # B never ran


async def test_cancel_while_running_interrupts_only_that_prompt(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=300, slots=2)
    h.scheduler.assign(assignment("wf-run", chain(6, "run")))
    await eventually(lambda: len(h.scheduler.events("wf-run", "executing")) >= 2, what="two nodes started")
    h.scheduler.assign(assignment("wf-next", chain(3, "next")))  # queued behind it
    await eventually(lambda: h.scheduler.events("wf-next", "queued"), what="next queued")
    h.scheduler.cancel("wf-run")

    assert await h.terminal("wf-run") == "cancelled"
    kinds = h.scheduler.kinds("wf-run")
    assert kinds[:3] == ["uploaded", "queued", "running"] and "completed" not in kinds
    history = await h.history(h.prompt_id("wf-run"))
    messages = [m[0] for m in history["status"]["messages"]]
    assert messages[-1] == "execution_interrupted"
    assert await h.terminal("wf-next") == "completed"  # the targeted interrupt spared it


async def test_never_more_than_slots_at_once(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=100, slots=1)
    h.scheduler.assign(assignment("wf-1", chain(3, "one")))
    h.scheduler.assign(assignment("wf-2", chain(3, "two")))
    await eventually(lambda: 2 in h.scheduler.heartbeats, what="in_flight 2 in a heartbeat")
    assert await h.terminal("wf-1") == "completed"
    assert await h.terminal("wf-2") == "completed"
    order = [(e.workflow_id, e.WhichOneof("kind")) for e in h.scheduler.applied_events]
    assert order.index(("wf-2", "uploaded")) > order.index(("wf-1", "completed"))


async def test_cancel_while_waiting_for_a_slot(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=200, slots=1)
    h.scheduler.assign(assignment("wf-busy", chain(3, "busy")))
    h.scheduler.assign(assignment("wf-wait", chain(3, "wait")))
    await eventually(lambda: h.scheduler.events("wf-busy", "running"), what="busy running")
    h.scheduler.cancel("wf-wait")
    assert await h.terminal("wf-wait") == "cancelled"
    assert h.scheduler.kinds("wf-wait") == ["cancelled"]
    assert await h.terminal("wf-busy") == "completed"


async def test_scheduler_restart_mid_run_resends_and_finishes(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=200)
    h.scheduler.assign(assignment("wf-hold", chain(6, "hold")))
    await eventually(lambda: h.scheduler.events("wf-hold", "executing"), what="running")
    await h.scheduler_server.stop()  # the scheduler goes away mid-run...
    await asyncio.sleep(0.6)  # ...while nodes keep running and events pile up
    await h.scheduler_server.start()

    await eventually(lambda: len(h.scheduler.hellos) == 2, what="Hello again")
    held = [(w.workflow_id, w.attempt) for w in h.scheduler.hellos[1].held]
    assert held == [("wf-hold", 1)]
    assert await h.terminal("wf-hold") == "completed"
    kinds = h.scheduler.kinds("wf-hold")
    assert kinds == ["uploaded", "queued", "running", *["executing"] * 6, "output_stored", "completed"]
    assert h.scheduler.seq_gaps == []


async def test_scheduler_abandon_on_welcome_cancels_silently(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=300)
    h.scheduler.assign(assignment("wf-gone", chain(6, "gone")))
    await eventually(lambda: h.scheduler.events("wf-gone", "executing"), what="running")
    h.scheduler.abandon_next = [("wf-gone", 1)]
    h.scheduler.drop()
    await eventually(lambda: len(h.scheduler.hellos) == 2, what="Hello again")
    assert h.runner is not None
    await eventually(lambda: h.runner is not None and h.runner.agent.in_flight() == 0, what="the abandoned run to stop")
    prompt_id = h.prompt_id("wf-gone")
    history = await h.history(prompt_id)
    assert history["status"]["messages"][-1][0] == "execution_interrupted"
    assert h.scheduler.terminal("wf-gone") is None  # nothing reported for an abandoned attempt


async def test_comfyui_restarted_mid_run_fails_instead_of_hanging(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=300)
    h.scheduler.assign(assignment("wf-lost", chain(8, "lost")))
    await eventually(lambda: h.scheduler.events("wf-lost", "executing"), what="running")
    await h.stop_comfyui()
    await asyncio.sleep(0.3)
    await h.start_comfyui()  # empty queue and history: the prompt is gone

    assert await h.terminal("wf-lost") == "failed"
    (failed,) = h.scheduler.events("wf-lost", "failed")
    assert failed.failure.exception_type == "ComfyUIRestarted"
    # The runner goes on working with the new ComfyUI.
    h.scheduler.assign(assignment("wf-after", chain(3, "after")))
    assert await h.terminal("wf-after") == "completed"


async def test_comfyui_down_for_too_long_fails(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=300, comfyui_down_timeout_s=1.0)
    h.scheduler.assign(assignment("wf-down", chain(8, "down")))
    await eventually(lambda: h.scheduler.events("wf-down", "executing"), what="running")
    await h.stop_comfyui()
    assert await h.terminal("wf-down", timeout_s=5.0) == "failed"
    (failed,) = h.scheduler.events("wf-down", "failed")
    assert failed.failure.exception_type == "ComfyUIUnreachable"
    await h.start_comfyui()  # so the harness can stop it


async def test_comfyui_down_hands_work_back_and_the_runner_leaves_until_it_answers(harness: MakeHarness) -> None:
    h = await harness(comfyui_unready_after_s=0.5)
    await h.stop_comfyui()
    h.storage.put_bytes("inputs/wf-refused/photo/a.png", png(4, 4, (1, 2, 3)), "image/png")
    h.scheduler.assign(assignment("wf-refused", LOAD_SCALE_SAVE, [photo_input("inputs/wf-refused/photo/a.png")]))
    # ComfyUI never took it: given back to be run elsewhere, not failed.
    assert await h.terminal("wf-refused") == "handed_back"
    (handed_back,) = h.scheduler.events("wf-refused", "handed_back")
    assert "ComfyUI unreachable" in handed_back.reason
    assert h.scheduler.kinds("wf-refused") == ["handed_back"]
    # The runner is unready: it leaves the scheduler and says no Hello while ComfyUI is down.
    await eventually(lambda: not h.scheduler.connected, what="the runner to leave")
    await asyncio.sleep(1.0)
    assert len(h.scheduler.hellos) == 1
    await h.start_comfyui()
    await eventually(lambda: len(h.scheduler.hellos) == 2, what="Hello once ComfyUI answers")
    h.scheduler.assign(assignment("wf-back", chain(3, "back")))
    assert await h.terminal("wf-back") == "completed"


async def test_comfyui_unreachable_at_start_means_no_hello_until_it_answers(harness: MakeHarness) -> None:
    h = await harness(comfyui_up=False)
    await asyncio.sleep(1.0)
    assert h.scheduler.hellos == [] and not h.scheduler.connected  # unready: takes no work
    await h.start_comfyui()
    await eventually(lambda: h.scheduler.connected, what="Hello once ComfyUI answers")
    (hello,) = h.scheduler.hellos
    assert hello.comfyui_version == "0.3.64" and len(hello.object_info_digest) == 64
    assert list(hello.node_classes) == sorted(OBJECT_INFO)  # the node classes of /object_info
    h.scheduler.assign(assignment("wf-late", chain(3, "late")))
    assert await h.terminal("wf-late") == "completed"


async def test_comfyui_restart_fails_the_running_prompt_and_hands_back_the_queued_one(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=300, slots=2)
    h.scheduler.assign(assignment("wf-started", chain(8, "started")))
    await eventually(lambda: h.scheduler.events("wf-started", "executing"), what="running")
    h.scheduler.assign(assignment("wf-waiting", chain(3, "waiting")))
    await eventually(lambda: h.scheduler.events("wf-waiting", "queued"), what="queued behind it")
    await h.stop_comfyui()
    await asyncio.sleep(0.3)
    await h.start_comfyui()  # empty queue and history: both prompts are gone

    assert await h.terminal("wf-started") == "failed"
    assert h.scheduler.events("wf-started", "failed")[0].failure.exception_type == "ComfyUIRestarted"
    assert await h.terminal("wf-waiting") == "handed_back"  # it never ran: safe to run again elsewhere
    assert h.scheduler.kinds("wf-waiting") == ["uploaded", "queued", "handed_back"]


async def test_text_values_reach_comfyui_with_the_node_input_types(harness: MakeHarness) -> None:
    h = await harness()
    prompt = {
        # As the scheduler fills placeholders: text. "24.0" is no int() for ComfyUI; the runner makes it 24.
        "1": {"class_type": "EmptyImage", "inputs": {"width": "24.0", "height": "12", "batch_size": 1,
                                                      "color": "16711680"}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bilinear",
                                                      "width": "48", "height": 0, "crop": "disabled"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": 1234}},
    }
    h.scheduler.assign(assignment("wf-typed", prompt))
    assert await h.terminal("wf-typed") == "completed"
    (stored,) = h.scheduler.events("wf-typed", "output_stored")
    assert stored.filename == "1234_00001_.png"
    image = Image.open(io.BytesIO(h.storage.objects[stored.object.key][0]))
    assert image.size == (48, 24) and image.getpixel((0, 0))[:3] == (255, 0, 0)
    submitted = (await h.history(h.prompt_id("wf-typed")))["prompt"][2]
    assert submitted["1"]["inputs"] == {"width": 24, "height": 12, "batch_size": 1, "color": 16711680}
    assert submitted["3"]["inputs"]["filename_prefix"] == "1234"


async def test_shutdown_drains_held_work_first(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=100)
    h.scheduler.assign(assignment("wf-drain", chain(4, "drain")))
    await eventually(lambda: h.scheduler.events("wf-drain", "running"), what="running")
    runner, h.runner = h.runner, None
    assert runner is not None
    await runner.shutdown()
    assert h.scheduler.terminal("wf-drain") == "completed"
    await asyncio.wait_for(h.scheduler.stream_ended.wait(), 2.0)


async def test_progress_with_binary_previews_is_rate_limited_end_to_end(harness: MakeHarness) -> None:
    h = await harness(node_delay_ms=20)
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 25, "color": 0}},
        "2": {"class_type": "SaveImageWebsocket", "inputs": {"images": ["1", 0]}},
    }
    h.scheduler.assign(assignment("wf-ticks", prompt))
    assert await h.terminal("wf-ticks") == "completed"
    ticks = h.scheduler.events("wf-ticks", "progress")
    assert {(t.node_id, t.node_type, t.max) for t in ticks} == {("2", "SaveImageWebsocket", 25)}
    assert ticks[0].value == 0 and ticks[-1].value == 24  # the first and the last tick
    assert 2 <= len(ticks) <= 9  # 25 ticks over ~0.5 s, at most ~10/s
    assert h.scheduler.events("wf-ticks", "output_stored") == []  # previews are not outputs


def _ui_node(id: int, type: str, widgets: list[object], inputs: list[tuple[str, str, int]] = (),  # type: ignore[assignment]
             outputs: list[str] = (), mode: int = 0) -> dict[str, object]:  # type: ignore[assignment]
    return {"id": id, "type": type, "mode": mode, "widgets_values": widgets,
            "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs]}


async def test_a_ui_format_workflow_runs_when_comfyui_knows_its_nodes(harness: MakeHarness) -> None:
    h = await harness()
    editor_export = {
        "nodes": [
            _ui_node(1, "EmptyImage", [20, 10, 1, 255], outputs=["IMAGE"]),
            _ui_node(2, "ImageInvert", [], [("image", "IMAGE", 1)], ["IMAGE"], mode=4),  # bypassed
            _ui_node(3, "SaveImage", ["ui/export"], [("images", "IMAGE", 2)]),
            _ui_node(4, "MarkdownNote", ["how to use this"]),
        ],
        "links": [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"]],
    }
    h.scheduler.assign(assignment("wf-ui", editor_export))
    assert await h.terminal("wf-ui") == "completed"
    (stored,) = h.scheduler.events("wf-ui", "output_stored")
    image = Image.open(io.BytesIO(h.storage.objects[stored.object.key][0]))
    assert image.size == (20, 10) and image.getpixel((0, 0))[:3] == (0, 0, 255)  # not inverted: bypassed
    submitted = (await h.history(h.prompt_id("wf-ui")))["prompt"][2]
    assert sorted(submitted) == ["1", "3"]

    editor_export["nodes"].append(_ui_node(5, "KSampler", [1, "randomize", 20]))
    h.scheduler.assign(assignment("wf-ui-unknown", editor_export))
    assert await h.terminal("wf-ui-unknown") == "invalid"
    (invalid,) = h.scheduler.events("wf-ui-unknown", "invalid")
    assert invalid.message == "UI-format workflow cannot be converted to API format: unknown node classes: KSampler"


async def _comfyui_process(root: Path, port: int) -> asyncio.subprocess.Process:
    """The double as its own process (`python -m tests.comfyui_double`), ready to answer."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.comfyui_double", "--port", str(port), "--root", str(root),
        "--node-delay-ms", "300", cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 15.0)
    assert b"To see the GUI" in line
    return process


async def test_comfyui_killed_mid_run_and_restarted_never_leaves_it_running(harness: MakeHarness) -> None:
    h = await harness(comfyui_up=False)
    first = await _comfyui_process(h.root, h.comfyui.port)
    second: asyncio.subprocess.Process | None = None
    try:
        await eventually(lambda: h.scheduler.connected, timeout_s=10.0, what="Hello once ComfyUI answers")
        h.scheduler.assign(assignment("wf-killed", chain(8, "killed")))
        await eventually(lambda: len(h.scheduler.events("wf-killed", "executing")) >= 2, what="running")
        first.kill()  # SIGKILL: no goodbye on the websocket, queue and history gone
        await first.wait()
        second = await _comfyui_process(h.root, h.comfyui.port)

        assert await h.terminal("wf-killed") == "failed"
        (failed,) = h.scheduler.events("wf-killed", "failed")
        assert failed.failure.exception_type == "ComfyUIRestarted"
        assert "running" in h.scheduler.kinds("wf-killed")
        h.scheduler.assign(assignment("wf-after-kill", chain(3, "after")))
        assert await h.terminal("wf-after-kill") == "completed"
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        await h.start_comfyui()  # the harness stops its own double at the end


async def test_comfyui_back_with_other_node_schemas_says_hello_again(harness: MakeHarness) -> None:
    h = await harness()
    (first,) = h.scheduler.hellos
    await h.stop_comfyui()
    # Meanwhile a file lands at the top of input/: LoadImage's combo in /object_info lists it.
    (h.root / "input" / "new.png").write_bytes(png(2, 2, (9, 9, 9)))
    await h.start_comfyui()

    await eventually(lambda: len(h.scheduler.hellos) == 2, what="Hello with the new schemas")
    second = h.scheduler.hellos[1]
    assert second.object_info_digest != first.object_info_digest
    assert list(second.node_classes) == list(first.node_classes)
    h.scheduler.assign(assignment("wf-new-schemas", chain(3, "schemas")))
    assert await h.terminal("wf-new-schemas") == "completed"


async def test_comfyui_back_with_the_same_schemas_keeps_the_session(harness: MakeHarness) -> None:
    h = await harness()
    await h.stop_comfyui()
    await h.start_comfyui()
    h.scheduler.assign(assignment("wf-same", chain(3, "same")))
    assert await h.terminal("wf-same") == "completed"
    assert len(h.scheduler.hellos) == 1
