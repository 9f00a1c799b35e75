"""Reading the recorded transcripts and comparing recorded values with live ones.

`Matcher.compare(recorded, actual)` is a strict structural comparison:

- same JSON types (1.0 is not 1), same values, same dict key order;
- server-made identifiers (prompt ids, socket ids, file hashes, the 5 random letters of preview
  file names) must correspond one-to-one: the first time a recorded id meets a live one they are
  bound, and every later occurrence must agree;
- a queue `number` must equal the recorded one plus one fixed offset (the counter may have
  started elsewhere), and keep its value wherever the same prompt shows up again;
- timestamps, memory sizes, python_version, argv and preview sizes only need the right type;
- a few collections are compared as multisets because the real server builds them from Python
  sets, whose order changes from run to run: `executed`, `current_outputs`, `dependent_outputs`,
  per-node validation `errors`, `outputs_to_execute`, and the keys of `node_errors` and of
  history `outputs` / `meta`;
- the double's root folder and site-packages folder stand for `<COMFYUI_ROOT>` and
  `<SITE_PACKAGES>`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

DEFAULT_TRANSCRIPTS = Path(__file__).parent / "transcripts"

ID_RE = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"  # uuid4 (prompt/client ids)
    r"|(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])"  # sha256 (uploaded files, is_changed)
    r"|(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])"  # server-made socket id
    r"|(?<=ComfyUI_temp_)[a-z]{5}(?=_)"  # PreviewImage's random letters
)
TYPE_ONLY_KEYS = {"timestamp", "ram_total", "ram_free", "vram_total", "vram_free", "torch_vram_total",
                  "torch_vram_free", "python_version", "argv", "image_len"}
UNORDERED_LIST_KEYS = {"executed", "current_outputs", "dependent_outputs", "errors"}
UNORDERED_DICT_KEYS = {"node_errors", "outputs", "meta"}


def transcripts_dir() -> Path:
    """$COMFYUI_TRANSCRIPTS, else the copy next to this file (the CI machine has only the repo)."""
    return Path(os.environ.get("COMFYUI_TRANSCRIPTS") or DEFAULT_TRANSCRIPTS)


def load_scenario(name: str) -> list[dict[str, Any]]:
    with open(transcripts_dir() / f"{name}.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_workflow(name: str) -> dict[str, Any]:
    with open(transcripts_dir() / f"{name}.workflow.json") as f:
        result: dict[str, Any] = json.load(f)
        return result


class Mismatch(AssertionError):
    pass


Path_ = tuple[str | int, ...]


def _where(path: Path_) -> str:
    return "$" + "".join(f"[{p!r}]" if isinstance(p, int) else f".{p}" for p in path)


def _is_prompt_tuple(value: Any, path: Path_) -> bool:
    """A queue item / history `prompt`: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    in_place = (path and path[-1] == "prompt") or (len(path) >= 2 and path[-2] in ("queue_running", "queue_pending"))
    return bool(in_place) and isinstance(value, list) and len(value) == 5 and isinstance(value[2], dict)


class Matcher:
    """Compares recorded and live JSON, binding server-made ids as it goes (recorded -> live)."""

    def __init__(self, root: str, site_packages: str) -> None:
        self.ids: dict[str, str] = {}
        self.reverse: dict[str, str] = {}
        self.number_offset: int | None = None
        self.numbers: dict[int, int] = {}
        self._locals = [(root, "<COMFYUI_ROOT>"), (site_packages, "<SITE_PACKAGES>")]

    # -- ids -------------------------------------------------------------------------------

    def bind(self, recorded: str, actual: str, path: Path_ = ()) -> None:
        known = self.ids.get(recorded)
        if known is None and actual in self.reverse:
            raise Mismatch(f"{_where(path)}: live id {actual} already stands for {self.reverse[actual]}, "
                           f"not {recorded}")
        if known is not None and known != actual:
            raise Mismatch(f"{_where(path)}: recorded id {recorded} was bound to {known}, now {actual}")
        self.ids[recorded] = actual
        self.reverse[actual] = recorded

    def to_live(self, value: Any) -> Any:
        """Rewrites recorded ids in a request (path, body) into the live ones bound so far."""
        if isinstance(value, str):
            return ID_RE.sub(lambda m: self.ids.get(m.group(0), m.group(0)), value)
        if isinstance(value, list):
            return [self.to_live(v) for v in value]
        if isinstance(value, dict):
            return {self.to_live(k): self.to_live(v) for k, v in value.items()}
        return value

    # -- comparison ------------------------------------------------------------------------

    def compare(self, recorded: Any, actual: Any, path: Path_ = ()) -> None:
        last = path[-1] if path else ""
        if last in TYPE_ONLY_KEYS:
            self._same_type(recorded, actual, path)
            if isinstance(recorded, list):
                for i, item in enumerate(actual):
                    self._same_type("", item, (*path, i))
            return
        if last == "number" and isinstance(recorded, int) and not isinstance(recorded, bool):
            self._number(recorded, actual, path)
            return
        if _is_prompt_tuple(recorded, path):
            self._prompt_tuple(recorded, actual, path)
            return
        self._same_type(recorded, actual, path)
        if isinstance(recorded, dict):
            self._dict(recorded, actual, path, ordered=last not in UNORDERED_DICT_KEYS)
        elif isinstance(recorded, list):
            if last in UNORDERED_LIST_KEYS:
                self.compare_unordered(recorded, actual, path)
            else:
                self._list(recorded, actual, path)
        elif isinstance(recorded, str):
            self._string(recorded, actual, path)
        elif recorded != actual:
            raise Mismatch(f"{_where(path)}: recorded {recorded!r}, got {actual!r}")

    def _same_type(self, recorded: Any, actual: Any, path: Path_) -> None:
        if type(recorded) is not type(actual):
            raise Mismatch(f"{_where(path)}: recorded {type(recorded).__name__} {recorded!r:.200}, "
                           f"got {type(actual).__name__} {actual!r:.200}")

    def _number(self, recorded: int, actual: Any, path: Path_) -> None:
        """Queue numbers: a number seen before maps as before; a new one is recorded + offset."""
        self._same_type(recorded, actual, path)
        if recorded in self.numbers:
            expected = self.numbers[recorded]
        else:
            # A `front` prompt gets the negated counter: map through the counter's absolute value.
            sign = -1 if recorded < 0 else 1
            if self.number_offset is None:
                self.number_offset = sign * actual - sign * recorded
            expected = sign * (sign * recorded + self.number_offset)
        if actual != expected:
            raise Mismatch(f"{_where(path)}: number {actual}, expected {expected} (recorded {recorded}, "
                           f"counter offset {self.number_offset})")
        self.numbers[recorded] = actual

    def _prompt_tuple(self, recorded: list[Any], actual: Any, path: Path_) -> None:
        self._same_type(recorded, actual, path)
        if len(actual) != 5:
            raise Mismatch(f"{_where(path)}: expected a 5-item prompt tuple, got {actual!r:.200}")
        self.compare(recorded[0], actual[0], (*path, "number"))
        for i in (1, 2, 3):
            self.compare(recorded[i], actual[i], (*path, i))
        self.compare_unordered(recorded[4], actual[4], (*path, 4))

    def _dict(self, recorded: dict[str, Any], actual: dict[str, Any], path: Path_, ordered: bool) -> None:
        if not ordered:
            if sorted(recorded) != sorted(actual):
                raise Mismatch(f"{_where(path)}: keys {sorted(recorded)} recorded, got {sorted(actual)}")
            for k, v in recorded.items():
                self.compare(v, actual[k], (*path, k))
            return
        if len(recorded) != len(actual):
            raise Mismatch(f"{_where(path)}: keys {list(recorded)} recorded, got {list(actual)}")
        for (rec_key, rec_value), (act_key, act_value) in zip(recorded.items(), actual.items(), strict=True):
            try:
                self._string(rec_key, act_key, path)  # keys may be ids (history is keyed by prompt id)
            except Mismatch:
                raise Mismatch(f"{_where(path)}: keys {list(recorded)} recorded, got {list(actual)}") from None
            self.compare(rec_value, act_value, (*path, rec_key))

    def _list(self, recorded: list[Any], actual: list[Any], path: Path_) -> None:
        if len(recorded) != len(actual):
            raise Mismatch(f"{_where(path)}: {len(recorded)} items recorded, got {len(actual)}: {actual!r:.300}")
        for i, (r, a) in enumerate(zip(recorded, actual, strict=True)):
            self.compare(r, a, (*path, i))

    def compare_unordered(self, recorded: list[Any], actual: Any, path: Path_) -> None:
        self._same_type(recorded, actual, path)
        if len(recorded) != len(actual):
            raise Mismatch(f"{_where(path)}: {len(recorded)} items recorded, got {len(actual)}: {actual!r:.300}")
        remaining = list(actual)
        for i, r in enumerate(recorded):
            for j, a in enumerate(remaining):
                if self.try_compare(r, a, (*path, i)):
                    del remaining[j]
                    break
            else:
                raise Mismatch(f"{_where(path)}: no live item matches recorded {r!r:.300} among {remaining!r:.300}")

    def try_compare(self, recorded: Any, actual: Any, path: Path_ = ()) -> bool:
        """compare() without side effects on failure."""
        saved = (dict(self.ids), dict(self.reverse), self.number_offset, dict(self.numbers))
        try:
            self.compare(recorded, actual, path)
            return True
        except Mismatch:
            self.ids, self.reverse, self.number_offset, self.numbers = saved
            return False

    def localise(self, text: str) -> str:
        for local, mark in self._locals:
            text = text.replace(local, mark)
        return text

    def _string(self, recorded: str, actual: str, path: Path_) -> None:
        actual = self.localise(actual)
        rec_ids = ID_RE.findall(recorded)
        act_ids = ID_RE.findall(actual)
        if len(rec_ids) != len(act_ids) or ID_RE.sub("<id>", recorded) != ID_RE.sub("<id>", actual):
            raise Mismatch(f"{_where(path)}: recorded {recorded!r:.400}, got {actual!r:.400}")
        for r, a in zip(rec_ids, act_ids, strict=True):
            self.bind(r, a, path)
