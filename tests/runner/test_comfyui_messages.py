"""Table tests of the pure mapping core, fed with websocket messages recorded from ComfyUI 0.3.64."""

from __future__ import annotations

from typing import Any

import pytest

from services.runner.comfyui_messages import (
    NodeProgress,
    NodesCached,
    NodeStarted,
    OutputFile,
    OutputsReady,
    PromptFailed,
    PromptInterrupted,
    PromptStarted,
    PromptSucceeded,
    PromptTracker,
    Step,
)
from services.runner.prompt_graph import node_types
from tests.runner import transcripts

SUCCESS = ("01_basic_success.jsonl", "db3db1b3-bb6f-41a6-b572-b85a679dd72a")
CACHED = ("02_cached_rerun.jsonl", "f5c07482-1975-4bcc-83e3-2ab3dd0228d0")
PARTLY_CACHED = ("02_cached_rerun.jsonl", "9c0c31c7-baa4-4802-ad68-e252530c8923")
ERROR_LOAD = ("05_execution_error.jsonl", "24c770fd-2edd-4f71-afe3-6cf0cc141904")
ERROR_BLEND = ("05_execution_error.jsonl", "69f4d4c6-74d1-4e1a-8808-cc9157883170")
INTERRUPTED = ("06_interrupt_and_queue.jsonl", "99949931-717e-412c-b1a5-01d23ac7893a")
INTERRUPTED_MID_NODE = ("06b_interrupt_mid_node.jsonl", "b5e80726-d78a-4ec3-8761-a1bb5379ef28")


def tracker_for(name: str, prompt_id: str, interval: float = 0.1) -> PromptTracker:
    return PromptTracker(prompt_id, node_types(transcripts.submitted_prompt(name, prompt_id)), interval)


def replay(name: str, prompt_id: str, interval: float = 0.1) -> list[Step]:
    tracker = tracker_for(name, prompt_id, interval)
    steps: list[Step] = []
    for at, message in transcripts.ws_messages(name, prompt_id):
        steps += tracker.due(at)
        steps += tracker.feed(message, at)
    return steps


def without_progress(steps: list[Step]) -> list[Step]:
    return [s for s in steps if not isinstance(s, NodeProgress)]


def _failure(name: str, prompt_id: str) -> dict[str, Any]:
    for _, message in transcripts.ws_messages(name, prompt_id):
        if message["type"] == "execution_error":
            return dict(message["data"])
    raise AssertionError("no execution_error recorded")


def test_success_reports_nodes_in_order_then_the_saved_image() -> None:
    assert replay(*SUCCESS) == [
        PromptStarted(),
        NodeStarted("1", "EmptyImage"),
        NodeStarted("2", "ImageInvert"),
        NodeStarted("3", "SaveImage"),
        OutputsReady((OutputFile("3", "wf01_invert_00001_.png", "", "output"),)),  # (copied from here on)
        PromptSucceeded((OutputFile("3", "wf01_invert_00001_.png", "", "output"),)),
    ]


def test_fully_cached_rerun_has_no_executing_but_keeps_the_cached_output() -> None:
    assert replay(*CACHED) == [
        PromptStarted(),
        NodesCached(("1", "2", "3")),
        OutputsReady((OutputFile("3", "wf01_invert_00001_.png", "", "output"),)),
        PromptSucceeded((OutputFile("3", "wf01_invert_00001_.png", "", "output"),)),
    ]


def test_partly_cached_rerun_reports_only_the_node_that_ran() -> None:
    assert replay(*PARTLY_CACHED) == [
        PromptStarted(),
        NodesCached(("1", "2")),
        NodeStarted("3", "SaveImage"),
        OutputsReady((OutputFile("3", "wf02_changed_prefix_00001_.png", "", "output"),)),
        PromptSucceeded((OutputFile("3", "wf02_changed_prefix_00001_.png", "", "output"),)),
    ]


def test_execution_error_in_the_first_node() -> None:
    data = _failure(*ERROR_LOAD)
    assert replay(*ERROR_LOAD) == [
        PromptStarted(),
        NodeStarted("1", "LoadImage"),
        PromptFailed(
            node_id="1",
            node_type="LoadImage",
            exception_type="PIL.UnidentifiedImageError",
            exception_message="cannot identify image file '<COMFYUI_ROOT>/input/broken.png'\n",
            traceback=tuple(data["traceback"]),
        ),
    ]
    assert len(data["traceback"]) > 1


def test_execution_error_after_an_independent_branch_finished() -> None:
    steps = replay(*ERROR_BLEND)
    assert steps[:-1] == [
        PromptStarted(),
        NodeStarted("1", "EmptyImage"),
        NodeStarted("2", "ImageInvert"),
        NodeStarted("5", "PreviewImage"),
        # The preview a branch wrote before another failed: named, so copied (and kept).
        OutputsReady((OutputFile("5", "ComfyUI_temp_bejgs_00001_.png", "", "temp"),)),
        NodeStarted("3", "ImageBlend"),
    ]
    failed = steps[-1]
    assert isinstance(failed, PromptFailed)
    assert (failed.node_id, failed.node_type, failed.exception_type) == ("3", "ImageBlend", "ValueError")
    assert failed.exception_message == "Unsupported blend mode: nonsense\n"


def test_interrupt_at_a_node_boundary_is_cancelled_at_the_next_node() -> None:
    # Recorded across two sockets with the same clientId (conn1 closed mid-run).
    assert replay(*INTERRUPTED) == [
        PromptStarted(),
        NodeStarted("1", "EmptyImage"),
        NodeStarted("10", "ImageBlur"),
        NodeStarted("11", "ImageBlur"),
        NodeStarted("12", "ImageBlur"),
        PromptInterrupted("12", "ImageBlur"),
    ]


def test_progress_flood_is_rate_limited_per_node_and_keeps_the_last_tick() -> None:
    name, prompt_id = INTERRUPTED_MID_NODE
    recorded = [(at, m) for at, m in transcripts.ws_messages(name, prompt_id) if m["type"] == "progress"]
    first_at, last_at = recorded[0][0], recorded[-1][0]
    assert len(recorded) == 149  # ticks 0..148 of 300 over ~0.4 s, then the interrupt lands

    steps = replay(name, prompt_id, interval=0.1)
    ticks = [s for s in steps if isinstance(s, NodeProgress)]
    # At most one tick per 100 ms window of the flood, plus the first and the held-back last one.
    assert 2 <= len(ticks) <= int((last_at - first_at) / 0.1) + 2
    assert ticks[0] == NodeProgress("3", "SaveImageWebsocket", 0, 300)
    assert ticks[-1] == NodeProgress("3", "SaveImageWebsocket", 148, 300)
    assert [t.value for t in ticks] == sorted(t.value for t in ticks)
    # The last tick goes out before the terminal step.
    assert without_progress(steps)[-1] == PromptInterrupted("3", "SaveImageWebsocket")
    assert steps[-2] == ticks[-1]


def test_progress_without_rate_limit_passes_every_tick() -> None:
    ticks = [s for s in replay(*INTERRUPTED_MID_NODE, interval=0.0) if isinstance(s, NodeProgress)]
    assert [t.value for t in ticks] == list(range(149))


def _progress(prompt_id: str, node: str, value: int, maximum: int) -> dict[str, Any]:
    return {"type": "progress", "data": {"value": value, "max": maximum, "prompt_id": prompt_id, "node": node}}


@pytest.mark.parametrize(
    ("ticks", "expected_now", "expected_after_due"),
    [
        # (time, value) fed; values emitted at once; values released by due(1.0)
        ([(0.00, 1), (0.05, 2), (0.08, 3)], [1], [3]),  # 2 replaced by 3 while held
        ([(0.00, 1), (0.15, 2)], [1, 2], []),  # far enough apart: both go at once
        ([(0.00, 1), (0.01, 10)], [1, 10], []),  # value == max always goes at once
    ],
)
def test_progress_holds_back_ticks_and_releases_them_when_due(
    ticks: list[tuple[float, int]], expected_now: list[int], expected_after_due: list[int]
) -> None:
    tracker = PromptTracker("p", {"7": "KSampler"}, 0.1)
    tracker.feed({"type": "execution_start", "data": {"prompt_id": "p"}}, 0.0)
    emitted = []
    for at, value in ticks:
        emitted += [s.value for s in tracker.feed(_progress("p", "7", value, 10), at) if isinstance(s, NodeProgress)]
    assert emitted == expected_now
    assert (tracker.next_due() is not None) == bool(expected_after_due)
    assert [s.value for s in tracker.due(1.0) if isinstance(s, NodeProgress)] == expected_after_due
    assert tracker.next_due() is None


def test_ticks_of_different_nodes_are_limited_separately() -> None:
    tracker = PromptTracker("p", {"1": "A", "2": "B"}, 0.1)
    tracker.feed({"type": "execution_start", "data": {"prompt_id": "p"}}, 0.0)
    assert tracker.feed(_progress("p", "1", 1, 9), 0.0) == [NodeProgress("1", "A", 1, 9)]
    assert tracker.feed(_progress("p", "2", 1, 9), 0.01) == [NodeProgress("2", "B", 1, 9)]


def test_messages_of_other_prompts_and_after_the_end_are_ignored() -> None:
    name, prompt_id = SUCCESS
    tracker = tracker_for(name, prompt_id)
    other = {"type": "executing", "data": {"node": "1", "prompt_id": "someone-else"}}
    assert tracker.feed(other, 0.0) == []
    for at, message in transcripts.ws_messages(name, prompt_id):
        tracker.feed(message, at)
    assert tracker.finished
    assert tracker.feed({"type": "execution_start", "data": {"prompt_id": prompt_id}}, 9.0) == []


def test_a_missed_execution_start_is_implied_by_the_first_message() -> None:
    tracker = PromptTracker("p", {"3": "SaveImage"}, 0.1)
    assert tracker.feed({"type": "executing", "data": {"node": "3", "prompt_id": "p"}}, 0.0) == [
        PromptStarted(),
        NodeStarted("3", "SaveImage"),
    ]


def test_status_and_progress_state_and_executing_null_map_to_nothing() -> None:
    name, prompt_id = SUCCESS
    tracker = tracker_for(name, prompt_id)
    tracker.feed({"type": "execution_start", "data": {"prompt_id": prompt_id}}, 0.0)
    for message in (
        {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 1}}}},
        {"type": "progress_state", "data": {"prompt_id": prompt_id, "nodes": {}}},
        {"type": "execution_cached", "data": {"nodes": [], "prompt_id": prompt_id}},
        {"type": "executing", "data": {"node": None, "prompt_id": prompt_id}},
    ):
        assert tracker.feed(message, 0.1) == []


@pytest.mark.parametrize(
    ("case", "expected_last"),
    [
        (SUCCESS, PromptSucceeded((OutputFile("3", "wf01_invert_00001_.png", "", "output"),))),
        (INTERRUPTED_MID_NODE, PromptInterrupted("3", "SaveImageWebsocket")),
    ],
)
def test_history_entries_give_the_same_outcome(case: tuple[str, str], expected_last: Step) -> None:
    tracker = tracker_for(*case)
    steps = tracker.steps_from_history(transcripts.history_entry(*case))
    assert steps == [PromptStarted(), expected_last]
    assert tracker.finished


def test_history_of_an_error_carries_the_failure() -> None:
    tracker = tracker_for(*ERROR_LOAD)
    steps = tracker.steps_from_history(transcripts.history_entry(*ERROR_LOAD))
    failed = steps[-1]
    assert isinstance(failed, PromptFailed)
    assert (failed.node_id, failed.node_type, failed.exception_type) == ("1", "LoadImage", "PIL.UnidentifiedImageError")


def test_empty_history_means_not_finished() -> None:
    tracker = PromptTracker("p", {}, 0.1)
    assert tracker.steps_from_history({}) == []
    assert tracker.steps_from_history(None) == []
    assert not tracker.finished
