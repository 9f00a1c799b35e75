"""A small SSE reader for tests: frames as dicts {id, event, data} in arrival order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx


def frames(client: httpx.Client, url: str, headers: dict[str, str], timeout: float = 60.0) -> Iterator[dict[str, Any]]:
    with client.stream("GET", url, headers=headers, timeout=timeout) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        frame: dict[str, Any] = {}
        for line in reply.iter_lines():
            if line == "":
                if "data" in frame:
                    frame["data"] = json.loads(frame["data"])
                    yield frame
                frame = {}
            elif line.startswith(":"):
                continue
            else:
                key, _, value = line.partition(":")
                frame[key] = value[1:] if value.startswith(" ") else value
