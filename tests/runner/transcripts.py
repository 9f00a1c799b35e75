"""Reads the recorded ComfyUI 0.3.64 traffic in shared/comfyui-transcripts for the tests."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

_IN_REPO = Path(__file__).resolve().parents[1] / "comfyui_double" / "transcripts"
_SHARED = Path(__file__).resolve().parents[3] / "shared" / "comfyui-transcripts"
TRANSCRIPTS = _IN_REPO if (_IN_REPO / "06b_interrupt_mid_node.jsonl").exists() else _SHARED


@cache
def lines(name: str) -> tuple[dict[str, Any], ...]:
    with (TRANSCRIPTS / name).open(encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def ws_messages(name: str, prompt_id: str) -> list[tuple[float, dict[str, Any]]]:
    """(arrival time in s, message) of every websocket text message of `prompt_id`, in order."""
    found = []
    for line in lines(name):
        if line["dir"] == "ws" and line.get("frame") == "text":
            data = line["msg"].get("data") or {}
            if data.get("prompt_id") == prompt_id:
                found.append((line["t_ms"] / 1000.0, line["msg"]))
    return found


def submitted_prompt(name: str, prompt_id: str) -> dict[str, Any]:
    """The API graph that was POSTed and answered with `prompt_id`."""
    last_request: dict[str, Any] | None = None
    for line in lines(name):
        if line["dir"] == "http_req" and line["path"] == "/prompt" and line["method"] == "POST":
            last_request = line
        elif line["dir"] == "http_resp" and line["path"] == "/prompt" and line["method"] == "POST":
            if (line.get("body") or {}).get("prompt_id") == prompt_id and last_request is not None:
                return last_request["body"]["prompt"]
    raise KeyError(prompt_id)


def history_entry(name: str, prompt_id: str) -> dict[str, Any]:
    for line in lines(name):
        if line["dir"] == "http_resp" and line["path"] == f"/history/{prompt_id}":
            return line["body"].get(prompt_id, {})
    raise KeyError(prompt_id)


def prompt_responses(name: str, status: int) -> list[dict[str, Any]]:
    """Bodies of every POST /prompt reply with `status`."""
    return [
        line.get("body") or {}
        for line in lines(name)
        if line["dir"] == "http_resp" and line["path"] == "/prompt" and line["status"] == status
    ]
