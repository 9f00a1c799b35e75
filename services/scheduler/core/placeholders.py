"""Placeholders inside an API-format graph: find them, check the form fields, fill them in.

A placeholder is a whole string value of a node input (API.md):

    $text(key)  $text(key, default)      <- form field "$key"
    $choice(name, a, b[, c[, d]])        <- form field "#name"; also written #choice(...)
    $file(name)                          <- file part "$name" (the runner fills it in)
    $random()                            <- a fresh integer in [0, 2**64) per occurrence
    $timestamp()                         <- Unix ms, one value per execution

`bind` checks the submitted fields against the graph once, at create time; `fill` produces
the prompt for one execution (fresh randoms, one timestamp), given the randomness and the
clock as arguments so it stays pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from services.scheduler.core.graph import Graph
from services.scheduler.errors import InvalidPlaceholder

NAME = r"[A-Za-z0-9_-]{1,255}"
_TEXT = re.compile(rf"^\$text\(\s*({NAME})\s*(?:,\s*(.*?)\s*)?\)$", re.DOTALL)
_CHOICE = re.compile(rf"^[$#]choice\(\s*({NAME})\s*,(.*)\)$", re.DOTALL)
_FILE = re.compile(rf"^\$file\(\s*({NAME})\s*\)$")
_RANDOM = re.compile(r"^\$random\(\s*\)$")
_TIMESTAMP = re.compile(r"^\$timestamp\(\s*\)$")
_LOOKS_LIKE = re.compile(r"^[$#](text|choice|file|random|timestamp)\(.*\)$", re.DOTALL)
_FIELD_NAME = re.compile(rf"^{NAME}$")


class Kind(StrEnum):
    TEXT = "text"
    CHOICE = "choice"
    FILE = "file"
    RANDOM = "random"
    TIMESTAMP = "timestamp"


@dataclass(frozen=True)
class Placeholder:
    node_id: str
    input_name: str
    raw: str
    kind: Kind
    name: str = ""
    default: str | None = None
    options: tuple[str, ...] = ()

    @property
    def field(self) -> str:
        """The form field that fills it ("" for system values)."""
        if self.kind in (Kind.TEXT, Kind.FILE):
            return f"${self.name}"
        if self.kind is Kind.CHOICE:
            return f"#{self.name}"
        return ""


def _parse(node_id: str, input_name: str, value: str) -> Placeholder | None:
    if m := _TEXT.match(value):
        return Placeholder(node_id, input_name, value, Kind.TEXT, m.group(1), m.group(2))
    if m := _CHOICE.match(value):
        options = tuple(o.strip() for o in m.group(2).split(","))
        if not 2 <= len(options) <= 4 or any(not o for o in options):
            raise InvalidPlaceholder(
                f"{value!r} in node {node_id} must list 2 to 4 non-empty options",
                details=[{"field": f"#{m.group(1)}", "node_id": node_id, "input": input_name, "placeholder": value}],
            )
        return Placeholder(node_id, input_name, value, Kind.CHOICE, m.group(1), None, options)
    if m := _FILE.match(value):
        return Placeholder(node_id, input_name, value, Kind.FILE, m.group(1))
    if _RANDOM.match(value):
        return Placeholder(node_id, input_name, value, Kind.RANDOM)
    if _TIMESTAMP.match(value):
        return Placeholder(node_id, input_name, value, Kind.TIMESTAMP)
    if _LOOKS_LIKE.match(value):
        raise InvalidPlaceholder(
            f"{value!r} in node {node_id} input {input_name!r} is not a valid placeholder",
            details=[{"node_id": node_id, "input": input_name, "placeholder": value}],
        )
    return None


def scan(graph: Graph) -> list[Placeholder]:
    """Every placeholder in the graph, in node then input order."""
    found: list[Placeholder] = []
    for node_id, node in graph.items():
        for input_name, value in (node.get("inputs") or {}).items():
            if isinstance(value, str) and (p := _parse(node_id, input_name, value)):
                found.append(p)
    return found


@dataclass(frozen=True)
class FieldValue:
    """A submitted form field: text/choice value, or a stored file."""

    field: str
    value: str = ""
    is_file: bool = False


@dataclass
class Binding:
    """The checked values: by form field, plus the params for the record."""

    values: dict[str, str] = field(default_factory=dict)
    files: set[str] = field(default_factory=set)


def _bad(message: str, field_name: str, reason: str = "INVALID_PLACEHOLDER") -> InvalidPlaceholder:
    return InvalidPlaceholder(message, reason=reason, details=[{"field": field_name}])


def bind(placeholders: list[Placeholder], fields: list[FieldValue]) -> Binding:
    """Checks submitted fields against the placeholders; raises naming the field."""
    by_field: dict[str, list[Placeholder]] = {}
    for p in placeholders:
        if p.field:
            by_field.setdefault(p.field, []).append(p)
    for f_name, group in by_field.items():
        kinds = {p.kind for p in group}
        if len(kinds) > 1:
            raise _bad(f"{f_name} is used as both {' and '.join(sorted(kinds))} placeholder", f_name)
        if group[0].kind is Kind.CHOICE and len({p.options for p in group}) > 1:
            raise _bad(f"{f_name} is used with different option lists", f_name)
        # One field has one default (or none): otherwise whether it is required, and which
        # default fills it, would depend on the order of the nodes in the JSON.
        if group[0].kind is Kind.TEXT and len({p.default for p in group}) > 1:
            raise _bad(f"{f_name} is used with different defaults", f_name)

    binding = Binding()
    for f in fields:
        if f.field[:1] not in ("$", "#") or not _FIELD_NAME.match(f.field[1:]):
            raise _bad(f"{f.field!r} is not a valid parameter field name", f.field, "UNKNOWN_FIELD")
        if f.field in binding.values or f.field in binding.files:
            raise _bad(f"{f.field} was sent more than once", f.field, "DUPLICATE_FIELD")
        group = by_field.get(f.field, [])
        if not group:
            raise _bad(f"{f.field} matches no placeholder in workflow_json", f.field, "UNKNOWN_FIELD")
        kind = group[0].kind
        if kind is Kind.FILE:
            if not f.is_file:
                raise _bad(f"{f.field} must be a file part for $file({group[0].name})", f.field)
            binding.files.add(f.field)
            continue
        if f.is_file:
            raise _bad(f"{f.field} must be a text value, not a file", f.field)
        if kind is Kind.CHOICE and f.value not in group[0].options:
            raise _bad(
                f"{f.field} must be one of {', '.join(group[0].options)}; got {f.value!r}",
                f.field,
                "INVALID_CHOICE",
            )
        binding.values[f.field] = f.value

    for f_name, group in by_field.items():
        p = group[0]
        if f_name in binding.values or f_name in binding.files:
            continue
        if p.kind is Kind.FILE:
            raise _bad(f"{f_name} is required: a file for $file({p.name})", f_name, "MISSING_FIELD")
        if p.kind is Kind.TEXT:
            if p.default is None:
                raise _bad(f"{f_name} is required by {p.raw}", f_name, "MISSING_FIELD")
            binding.values[f_name] = p.default
        elif p.kind is Kind.CHOICE:
            binding.values[f_name] = p.options[0]
    return binding


def fill(
    graph: Graph,
    placeholders: list[Placeholder],
    binding: Binding,
    *,
    random64: Callable[[], int],
    now_ms: int,
) -> tuple[Graph, list[tuple[str, str]]]:
    """The prompt for one execution and its [placeholder, value] pairs.

    Text and choice values go in as text, system values as numbers; $file(...) stays for
    the runner, which knows the name its ComfyUI gives the uploaded file.
    """
    # Copy on write: only the nodes a value goes into are copied (with their inputs); the rest
    # are shared with `graph`, which is left as it was. A deep copy of a 300-node graph took
    # 1.5 ms of the scheduler's loop per assignment; this fill takes 3 us.
    prompt = dict(graph)
    copied: set[str] = set()
    params: list[tuple[str, str]] = []
    seen_fields: set[str] = set()
    for p in placeholders:
        value: str | int
        if p.kind in (Kind.TEXT, Kind.CHOICE):
            value = binding.values[p.field]
        elif p.kind is Kind.RANDOM:
            value = random64()
        elif p.kind is Kind.TIMESTAMP:
            value = now_ms
        else:
            continue
        if p.node_id not in copied:
            node = prompt[p.node_id] = dict(prompt[p.node_id])
            node["inputs"] = dict(node["inputs"])
            copied.add(p.node_id)
        prompt[p.node_id]["inputs"][p.input_name] = value
        if p.kind in (Kind.RANDOM, Kind.TIMESTAMP) or p.field not in seen_fields:
            params.append((p.raw, str(value)))
            seen_fields.add(p.field)
    return prompt, params
