"""Pure: ComfyUI's node schemas (`GET /object_info`) and what they say about input values.

`parse_object_info(body)` reads both input-spec dialects of ComfyUI 0.3.64 (PROTOCOL.md §2):

    classic combo      "upscale_method": [["nearest-exact", "bilinear", ...], {...}]
    newer node API     "blend_mode": ["COMBO", {"multiselect": false, "options": [...]}]
    widget types       ["INT", {"default", "min", "max", "step", "control_after_generate"}],
                       ["FLOAT", {...}], ["BOOLEAN", {...}], ["STRING", {"multiline"}]
    link types         ["IMAGE"], ["MODEL", {...}], ["*"], "IMAGE,MASK" ...

into `NodeSchema`s: the inputs in `input_order` (required, then optional; hidden inputs are
not graph inputs), the output types, and whether the node is an output node.

`coerce_prompt(prompt, schemas)` gives each literal input value the type its input expects,
so a value that arrived as text (a placeholder filled by the scheduler) reaches ComfyUI as a
number or a boolean: ComfyUI would turn `"5"` into 5 itself, but `"false"` into True
(`bool("false")`) and `"5.0"` into an `invalid_input_type` error. Values that do not convert
are left as they are, for ComfyUI to reject with its own message. No I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "BOOLEAN", "STRING", "COMBO"})
# Extra widget values the frontend adds after an input whose config has one of these keys.
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "model_upload")
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "INT", "FLOAT", "BOOLEAN", "STRING", "COMBO", or a link type ("IMAGE", "*", ...)
    required: bool
    config: Mapping[str, Any] = field(default_factory=dict)
    options: tuple[Any, ...] | None = None  # for COMBO

    @property
    def is_widget(self) -> bool:
        """A value typed into the node (not only a socket): has a place in `widgets_values`."""
        return self.type in WIDGET_TYPES and not self.config.get("forceInput")

    @property
    def control_after_generate(self) -> bool:
        return bool(self.config.get("control_after_generate"))

    @property
    def upload_widget(self) -> bool:
        return any(self.config.get(flag) for flag in UPLOAD_FLAGS)


@dataclass(frozen=True)
class NodeSchema:
    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]
    output_node: bool

    def input(self, name: str) -> InputSpec | None:
        return next((i for i in self.inputs if i.name == name), None)


NodeSchemas = Mapping[str, NodeSchema]


def _input_spec(name: str, raw: Any, required: bool) -> InputSpec:
    if not isinstance(raw, list | tuple) or not raw:
        return InputSpec(name, "*", required)
    head = raw[0]
    config = raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
    if isinstance(head, list | tuple):
        return InputSpec(name, "COMBO", required, config, tuple(head))
    kind = str(head)
    if kind == "COMBO":
        options = config.get("options")
        return InputSpec(name, "COMBO", required, config, tuple(options) if isinstance(options, list) else None)
    return InputSpec(name, kind, required, config)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def parse_node(name: str, info: Mapping[str, Any]) -> NodeSchema:
    """One /object_info entry."""
    declared, order = _mapping(info.get("input")), _mapping(info.get("input_order"))
    inputs: list[InputSpec] = []
    for section in ("required", "optional"):
        specs = _mapping(declared.get(section))
        listed = order.get(section)
        names = listed if isinstance(listed, list) else list(specs)
        for input_name in names:
            if input_name in specs:
                inputs.append(_input_spec(str(input_name), specs[input_name], section == "required"))
    outputs = info.get("output")
    return NodeSchema(name, tuple(inputs), tuple(str(o) for o in outputs) if isinstance(outputs, list) else (),
                      bool(info.get("output_node")))


def parse_object_info(body: Any) -> dict[str, NodeSchema]:
    """Every node class of a `GET /object_info` body."""
    if not isinstance(body, Mapping):
        return {}
    return {str(name): parse_node(str(name), info) for name, info in body.items() if isinstance(info, Mapping)}


# -- coercion ----------------------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off", ""})


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def coerce_value(spec: InputSpec, value: Any) -> Any:
    """`value` as `spec`'s type when it converts exactly; otherwise `value` unchanged."""
    if isinstance(value, list):
        return value  # a link, or a list value ComfyUI handles itself
    if spec.type == "INT":
        if isinstance(value, str) and (number := _number(value)) is not None and number == int(number):
            return int(number)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif spec.type == "FLOAT":
        if isinstance(value, str) and (number := _number(value)) is not None:
            return number
    elif spec.type == "BOOLEAN":
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
            return bool(value)
    elif spec.type == "STRING":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    elif spec.type == "COMBO" and spec.options and value not in spec.options:
        for option in spec.options:  # "1.5" for an option 1.5, 2 for an option "2"
            if not isinstance(option, bool) and str(option) == str(value):
                return option
    return value


def coerce_prompt(prompt: Mapping[str, Any], schemas: NodeSchemas) -> dict[str, Any]:
    """A copy of the API-format `prompt` with literal values coerced (see the module docstring).
    Nodes of unknown classes and inputs the schema does not declare are left as they are."""
    result: dict[str, Any] = {}
    for node_id, node in prompt.items():
        schema = schemas.get(node.get("class_type", "")) if isinstance(node, Mapping) else None
        inputs = node.get("inputs") if isinstance(node, Mapping) else None
        if schema is None or not isinstance(inputs, Mapping):
            result[node_id] = node
            continue
        coerced = {}
        for name, value in inputs.items():
            spec = schema.input(name)
            coerced[name] = coerce_value(spec, value) if spec is not None else value
        result[node_id] = {**node, "inputs": coerced}
    return result
