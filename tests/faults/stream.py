"""A steady stream of submissions in a background thread, for the fault tests.

Posts one small workflow (fleet.WORKFLOW: its own uploaded image, saved under a prefix unique
to the submission) every `interval` seconds, and records every answer: the id and prefix of
each 201, and the status, headers and body of everything else. Each prefix names its
workflow in the doubles' /history, so what ComfyUI ran can be matched to what was accepted.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.integration.fleet import WORKFLOW, png

GRAPH = json.dumps(WORKFLOW)


@dataclass
class Refusal:
    prefix: str
    status: int  # 0: the connection failed
    headers: dict[str, str]
    body: Any


@dataclass
class SubmissionStream:
    base_url: str
    token: str
    tags: str = "gpu"
    interval: float = 0.5
    label: str = "s"
    accepted: dict[str, str] = field(default_factory=dict)  # workflow id -> prefix
    refused: list[Refusal] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SubmissionStream:
        self._thread = threading.Thread(target=self._run, name="submissions", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "the submission thread did not stop"

    @property
    def prefixes(self) -> dict[str, str]:
        """prefix -> workflow id, for the accepted ones."""
        return {prefix: wid for wid, prefix in self.accepted.items()}

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base_url, timeout=30, headers=headers) as client:
            n = 0
            while not self._stop.is_set():
                started = time.monotonic()
                n += 1
                prefix = f"{self.label}-{n}"
                self._post(client, prefix, n)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _post(self, client: httpx.Client, prefix: str, n: int) -> None:
        data = {"name": prefix, "$prefix": prefix, "tags": self.tags}
        files = {"workflow_json": ("workflow.json", GRAPH, "application/json"),
                 "$photo": ("photo.png", png((n % 256, (n * 7) % 256, 90)), "image/png")}
        try:
            reply = client.post("/v1/workflow", data=data, files=files)
        except httpx.HTTPError as err:
            self.refused.append(Refusal(prefix, 0, {}, repr(err)))
            return
        if reply.status_code == 201:
            self.accepted[str(reply.json()["id"])] = prefix
            return
        try:
            body: Any = reply.json()
        except ValueError:
            body = reply.text
        self.refused.append(Refusal(prefix, reply.status_code, dict(reply.headers), body))
