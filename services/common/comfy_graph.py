"""Pure: ComfyUI's UI-format workflows (what the editor saves) converted to the API format that
`POST /prompt` takes, with the node schemas of `/object_info` (PROTOCOL.md §10); and a check of
an API-format prompt against those schemas.

    UI format   {nodes: [{id, type, mode, inputs: [{name, type, link, widget?}], outputs,
                 widgets_values}], links: [[id, from, from_slot, to, to_slot, type]],
                 definitions: {subgraphs: [...]}}
    API format  {"<id>": {"class_type", "inputs": {name: value | ["<from id>", slot]}, "_meta"}}

`convert_ui_workflow(ui, schemas)`, step by step:

1. Subgraph instances (a node whose `type` is the id of a `definitions.subgraphs` entry) are
   expanded, nested ones too: inner node `n` of instance `i` becomes node `"i:n"`; links from
   the subgraph's input node (-10) take what feeds the instance's input of that name, links to
   its output node (-20) become the instance's outputs.
2. Sources are resolved: `Reroute` passes its input through, `PrimitiveNode` becomes its value,
   a muted node (mode 2) feeds nothing, a bypassed node (mode 4) passes through its first linked
   input of the output's type.
3. Each remaining node is written with its class's inputs in `input_order`: a linked input as a
   link (or the primitive's value), a widget from `widgets_values`, which are positional over
   the widget inputs, linked or not, with the UI-only extra values skipped (the control value
   after a `control_after_generate` input, the upload widget after a file combo). Notes,
   Reroutes, PrimitiveNodes, muted and bypassed nodes are not written.

A node class missing from the schemas blocks the conversion (`Conversion.missing_classes`), as
do the `problems` found on the way (a widget without a value, a link to nowhere); `partial`
still holds the nodes that could be written. Whether the
result is a prompt ComfyUI accepts is `validate_api_prompt`'s question, answered separately.
No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from services.common.comfy_schemas import CONTROL_VALUES, InputSpec, NodeSchemas

FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
MUTED, BYPASSED = 2, 4
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Conversion:
    prompt: dict[str, Any] | None  # None when something blocks it
    missing_classes: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    # The nodes of known classes as they were written, blocked or not (to tell what else is wrong).
    partial: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Literal:
    value: Any


Source = tuple[str, int]  # (node id, output slot)


@dataclass
class _Input:
    name: str
    type: str
    source: Source | _Literal | None


@dataclass
class _Node:
    id: str
    type: str
    mode: int
    title: str
    inputs: list[_Input]
    output_types: list[str]
    widgets_values: Any
    overrides: dict[str, Any] = field(default_factory=dict)  # widget values promoted to a subgraph instance


def is_ui_workflow(workflow: Any) -> bool:
    """The editor's format (`nodes` and `links` lists) rather than an API-format graph."""
    return isinstance(workflow, Mapping) and isinstance(workflow.get("nodes"), list) and "links" in workflow


def _links(raw: Any) -> dict[int, tuple[int, int]]:
    """link id -> (origin node, origin slot), from the list or the object form of a link."""
    links: dict[int, tuple[int, int]] = {}
    for link in raw if isinstance(raw, list) else []:
        if isinstance(link, list) and len(link) >= 5:
            links[int(link[0])] = (int(link[1]), int(link[2]))
        elif isinstance(link, Mapping) and "id" in link:
            links[int(link["id"])] = (int(link["origin_id"]), int(link["origin_slot"]))
    return links


def _nodes(raw_nodes: list[Any], links: dict[int, tuple[int, int]], prefix: str) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    for raw in raw_nodes:
        if not isinstance(raw, Mapping) or "id" not in raw:
            continue
        inputs = []
        for item in raw.get("inputs") or []:
            link = item.get("link") if isinstance(item, Mapping) else None
            origin = links.get(int(link)) if isinstance(link, int) else None
            source: Source | None = None
            if origin is not None:
                source = (str(origin[0]) if origin[0] < 0 else f"{prefix}{origin[0]}", origin[1])
            inputs.append(_Input(str(item.get("name") or ""), str(item.get("type") or "*"), source))
        outputs = [str(o.get("type") or "*") for o in raw.get("outputs") or [] if isinstance(o, Mapping)]
        title = raw.get("title") or (raw.get("properties") or {}).get("Node name for S&R") or raw.get("type")
        nodes[f"{prefix}{raw['id']}"] = _Node(f"{prefix}{raw['id']}", str(raw.get("type") or ""),
                                              int(raw.get("mode") or 0), str(title or ""), inputs, outputs,
                                              raw.get("widgets_values"))
    return nodes


def _expand_one(nodes: dict[str, _Node], instance: _Node, subgraph: Mapping[str, Any]) -> None:
    """Replaces `instance` by the nodes of `subgraph` (see the module docstring, step 1)."""
    prefix = f"{instance.id}:"
    inner_links = subgraph.get("links") or []
    inner = _nodes(subgraph.get("nodes") or [], _links(inner_links), prefix)
    sub_inputs = [str(i.get("name")) for i in subgraph.get("inputs") or [] if isinstance(i, Mapping)]
    fed = {i.name: i.source for i in instance.inputs}
    promoted = _promoted_values(instance)
    for node in inner.values():
        for item in node.inputs:
            if item.source is None or isinstance(item.source, _Literal) or item.source[0] != str(SUBGRAPH_INPUT):
                continue
            slot = item.source[1]
            name = sub_inputs[slot] if slot < len(sub_inputs) else ""
            item.source = fed.get(name)
            if item.source is None and name in promoted:
                node.overrides[item.name] = promoted[name]
    outputs: dict[int, Source] = {}
    for link in inner_links:
        if isinstance(link, Mapping) and link.get("target_id") == SUBGRAPH_OUTPUT:
            outputs[int(link["target_slot"])] = (f"{prefix}{link['origin_id']}", int(link["origin_slot"]))
        elif isinstance(link, list) and len(link) >= 5 and link[3] == SUBGRAPH_OUTPUT:
            outputs[int(link[4])] = (f"{prefix}{link[1]}", int(link[2]))
    del nodes[instance.id]
    nodes.update(inner)
    for node in nodes.values():
        for item in node.inputs:
            if isinstance(item.source, tuple) and item.source[0] == instance.id:
                item.source = outputs.get(item.source[1])


def _promoted_values(instance: _Node) -> dict[str, Any]:
    """Widget values shown on a subgraph instance, by input name (positional, as on any node)."""
    values = instance.widgets_values if isinstance(instance.widgets_values, list) else []
    widgets = [i.name for i in instance.inputs if i.type in ("INT", "FLOAT", "BOOLEAN", "STRING", "COMBO")
               and i.source is None]
    return dict(zip(widgets, values, strict=False)) if len(values) == len(widgets) else {}


def _expand_subgraphs(nodes: dict[str, _Node], subgraphs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    for _ in range(_MAX_DEPTH):
        instances = [n for n in nodes.values() if n.type in subgraphs and n.mode not in (MUTED,)]
        if not instances:
            return []
        for instance in instances:
            _expand_one(nodes, instance, subgraphs[instance.type])
    return ["subgraphs nested too deep (or recursive)"]


def _resolve(nodes: dict[str, _Node], source: Source | _Literal | None, depth: int = 0) -> Source | _Literal | None:
    """Step 2 of the module docstring: what really feeds an input."""
    if source is None or isinstance(source, _Literal) or depth > _MAX_DEPTH:
        return source if depth <= _MAX_DEPTH else None
    node = nodes.get(source[0])
    if node is None:
        return None
    if node.type == "Reroute":
        return _resolve(nodes, node.inputs[0].source, depth + 1) if node.inputs else None
    if node.type == "PrimitiveNode":
        values = node.widgets_values
        return _Literal(values[0]) if isinstance(values, list) and values else None
    if node.mode == MUTED:
        return None
    if node.mode == BYPASSED:
        wanted = node.output_types[source[1]] if source[1] < len(node.output_types) else "*"
        for item in node.inputs:
            if item.source is not None and (item.type == wanted or "*" in (item.type, wanted)):
                return _resolve(nodes, item.source, depth + 1)
        return None
    return source


def _widget_values(node: _Node, specs: list[InputSpec], problems: list[str]) -> dict[str, Any]:
    """Step 3: `widgets_values` by input name."""
    raw = node.widgets_values
    if isinstance(raw, Mapping):
        return {s.name: raw[s.name] for s in specs if s.name in raw}
    values = list(raw) if isinstance(raw, list) else []
    named: dict[str, Any] = {}
    i = 0
    for n, spec in enumerate(specs):
        if i >= len(values):
            if spec.required:
                problems.append(f"node {node.id} ({node.type}): no value for widget {spec.name!r}")
            continue
        named[spec.name] = values[i]
        i += 1
        if spec.control_after_generate and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
        elif spec.upload_widget:
            while len(values) - i > len(specs) - n - 1:  # the upload widget's own UI-only value(s)
                i += 1
    return named


def convert_ui_workflow(ui: Mapping[str, Any], schemas: NodeSchemas) -> Conversion:
    """The API-format prompt for `ui`, or what blocks it (see the module docstring)."""
    if not is_ui_workflow(ui):
        return Conversion(None, problems=("not a UI-format workflow (no `nodes` and `links`)",))
    raw_definitions = ui.get("definitions")
    definitions: Mapping[str, Any] = raw_definitions if isinstance(raw_definitions, Mapping) else {}
    subgraphs = {str(s["id"]): s for s in definitions.get("subgraphs") or [] if isinstance(s, Mapping) and "id" in s}
    nodes = _nodes(ui["nodes"], _links(ui.get("links")), "")
    problems = _expand_subgraphs(nodes, subgraphs)
    live = [n for n in nodes.values() if n.type not in FRONTEND_ONLY and n.mode not in (MUTED, BYPASSED)]
    missing = sorted({n.type for n in live if n.type not in schemas})
    prompt: dict[str, Any] = {}
    for node in live:
        schema = schemas.get(node.type)
        if schema is None:
            continue
        widgets = _widget_values(node, [s for s in schema.inputs if s.is_widget], problems)
        widgets.update(node.overrides)
        linked = {i.name: i.source for i in node.inputs if i.source is not None}
        inputs: dict[str, Any] = {}
        for spec in schema.inputs:
            source = _resolve(nodes, linked[spec.name]) if spec.name in linked else None
            if isinstance(source, _Literal):
                inputs[spec.name] = source.value
            elif source is not None:
                if source[0] not in nodes or source[0].startswith("-"):
                    problems.append(f"node {node.id} ({node.type}): input {spec.name!r} links to nothing")
                    continue
                inputs[spec.name] = [source[0], source[1]]
            elif spec.name in widgets:
                inputs[spec.name] = widgets[spec.name]
        prompt[node.id] = {"class_type": node.type, "inputs": inputs, "_meta": {"title": node.title}}
    if missing or problems:
        return Conversion(None, tuple(missing), tuple(problems), prompt)
    return Conversion(prompt, partial=prompt)


def _type_ok(spec: InputSpec, value: Any) -> bool:
    if spec.type == "INT":
        return isinstance(value, int) and not isinstance(value, bool)
    if spec.type == "FLOAT":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if spec.type == "BOOLEAN":
        return isinstance(value, bool)
    if spec.type == "STRING":
        return isinstance(value, str)
    if spec.type == "COMBO":  # membership is the machine's business (its files and models)
        return isinstance(value, str | int | float)
    return False  # a link type needs a link


def _link_ok(out_type: str, in_type: str) -> bool:
    if "*" in (out_type, in_type) or out_type == in_type:
        return True
    return bool(set(out_type.split(",")) & set(in_type.split(",")))


def validate_api_prompt(prompt: Mapping[str, Any], schemas: NodeSchemas) -> list[str]:
    """What is wrong with `prompt` by the schemas: unknown classes, missing required inputs,
    links to missing nodes or outputs or of the wrong type, literals of the wrong type, no output
    node. [] when nothing is."""
    errors: list[str] = []
    has_output = False
    for node_id, node in prompt.items():
        schema = schemas.get(node.get("class_type", "")) if isinstance(node, Mapping) else None
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if schema is None or not isinstance(inputs, Mapping):
            errors.append(f"node {node_id}: unknown class or no inputs")
            continue
        has_output = has_output or schema.output_node
        for spec in schema.inputs:
            if spec.name not in inputs:
                if spec.required:
                    errors.append(f"node {node_id} ({schema.name}): required input {spec.name!r} missing")
                continue
            value = inputs[spec.name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                source = prompt.get(value[0])
                source_schema = schemas.get(source.get("class_type", "")) if isinstance(source, Mapping) else None
                if source_schema is None or not isinstance(value[1], int) or value[1] >= len(source_schema.outputs):
                    errors.append(f"node {node_id} ({schema.name}): {spec.name!r} links to a missing output")
                elif not _link_ok(source_schema.outputs[value[1]], spec.type):
                    errors.append(f"node {node_id} ({schema.name}): {spec.name!r} gets "
                                  f"{source_schema.outputs[value[1]]}, wants {spec.type}")
            elif not _type_ok(spec, value):
                errors.append(f"node {node_id} ({schema.name}): {spec.name!r} = {value!r} is not {spec.type}")
    if prompt and not has_output:
        errors.append("no output node")
    return errors
