"""Reading event streams: SSE frame decoding and the resume bookkeeping of `watch` and `events`.

`FrameDecoder` turns lines (as `httpx.Response.iter_lines` yields them) into `Frame`s per the
SSE spec: `id:`, `event:`, one or more `data:` lines, `retry:`; comments (`: keepalive`) are
skipped. `Resume` remembers the last event id seen, drops anything at or before it (so a
replay after a reconnect never yields an event twice), knows when the stream is finished
(after a terminal status) and paces reconnects. `Connection` is one connection of a stream:
it takes the lines or the error answer, and says how long to wait before the next one.

None of this does I/O, so `Client` and `AsyncClient` share it and keep only their own loop
(`follow`): open the stream with `Resume.headers()`, hand each line to `Connection.feed` (an
error answer to `Connection.refused`, a failed connection to `Connection.lost`), then sleep
`Connection.retry_delay()` and open it again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from comfyfleet.errors import APIError, WatchError
from comfyfleet.models import AnyEvent, StatusEvent, parse_event
from comfyfleet.transport import RETRY_STATUSES

MAX_RECONNECT_DELAY = 5.0
READ_TIMEOUT = 45.0  # three keep-alive intervals without a byte: reconnect


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str
    data: str


class FrameDecoder:
    """Feed lines; each blank line that ends a frame with data returns that frame."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self.retry_ms: int | None = None

    @property
    def last_id(self) -> str | None:
        """The last `id:` seen, with or without data."""
        return self._id

    def feed(self, line: str) -> Frame | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            frame = Frame(self._id, self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value  # per the spec the last id sticks to later frames without one
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class Resume:
    """The state of one watch across connections.

    `after`: the id to resume after (None: start with a snapshot; 0: replay from the start).
    """

    def __init__(self, after: int | None, max_failures: int, *, until_terminal: bool = True) -> None:
        self.last_id = after
        self.until_terminal = until_terminal  # False: the fleet-wide stream (GET /v1/events), which never finishes
        self.done = False
        self.failures = 0
        self.max_failures = max_failures

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if self.last_id is not None:
            headers["Last-Event-ID"] = str(self.last_id)
        return headers

    def accept(self, frame: Frame) -> AnyEvent | None:
        """The typed event for a frame, or None for a frame already seen (a replay)."""
        try:
            seq = int(frame.id) if frame.id is not None else None
        except ValueError:
            seq = None
        if seq is None:
            return None  # the API ids every frame; an unnumbered one cannot be resumed after
        if self.last_id is not None and seq <= self.last_id:
            return None
        try:
            data: Any = json.loads(frame.data)
        except ValueError:
            data = frame.data
        event = parse_event(seq, frame.event, data)
        self.last_id = seq
        self.failures = 0
        if self.until_terminal and isinstance(event, StatusEvent) and event.is_terminal:
            self.done = True
        return event

    def seen_id(self, decoder: FrameDecoder) -> None:
        """Takes the id of a frame without data (GET /v1/events starts a live stream with one:
        the caller's last event number), so a reconnect before the first event resumes there."""
        last = decoder.last_id
        if last is not None and last.isdigit() and (self.last_id is None or int(last) > self.last_id):
            self.last_id = int(last)

    def failed(self, cause: BaseException | str, retry_after: float | None = None) -> float:
        """Counts a failed or ended connection; the delay before the next one, or WatchError."""
        self.failures += 1
        if self.failures > self.max_failures:
            raise WatchError(f"the event stream failed {self.failures} times in a row: {cause}")
        if retry_after is not None:
            return min(retry_after, 30.0)
        return 0.0 if self.failures == 1 else min(0.25 * 2 ** (self.failures - 2), MAX_RECONNECT_DELAY)


class Connection:
    """One connection of a stream followed with `resume`: what it read and how it ended."""

    def __init__(self, resume: Resume) -> None:
        self._resume = resume
        self._decoder = FrameDecoder()
        self._first_id = resume.last_id
        self._cause: BaseException | str = (
            "the stream ended before the workflow finished" if resume.until_terminal else "the stream ended")
        self._retry_after: float | None = None
        self.ended = False  # the server closed the stream cleanly (set by the caller)

    def feed(self, line: str) -> AnyEvent | None:
        """The event a line completes, or None (a line inside a frame, a comment, a replay)."""
        frame = self._decoder.feed(line)
        if frame is not None:
            return self._resume.accept(frame)
        if line == "" and not self._resume.until_terminal:
            self._resume.seen_id(self._decoder)  # the end of a frame without data: only /v1/events sends one
        return None

    def refused(self, error: APIError) -> None:
        """An error answer instead of a stream: raised unless it asks to come back (429/503)."""
        if error.status not in RETRY_STATUSES:
            raise error
        self._cause, self._retry_after = error, error.retry_after

    def lost(self, error: BaseException) -> None:
        """The connection failed (refused, reset, timed out)."""
        self._cause = error

    @property
    def ended_empty(self) -> bool:
        """The stream ended cleanly with no new event: a finished workflow's stream may have
        nothing more to say (resuming after its last event); the caller asks the API."""
        return self.ended and self._resume.last_id == self._first_id

    def retry_delay(self) -> float:
        """Counts this connection as failed; the seconds to wait before the next one, or WatchError."""
        return self._resume.failed(self._cause, self._retry_after)
