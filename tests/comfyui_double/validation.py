"""POST /prompt validation: execution.validate_prompt / validate_inputs of ComfyUI 0.3.64.

The structure follows the server closely, so odd prompts fail the same way: a prompt that is a
list raises a TypeError (-> 500), a link to a missing node raises a KeyError that is reported as
`exception_during_validation`, and literal inputs are converted in place (`"8"` becomes `8` in
the queued prompt). Two deliberate choices: outputs are validated in prompt order and a node's
inputs in `input_order` order, where the server iterates Python sets (an order that changes from
run to run, so clients must not rely on the order of `errors` or `dependent_outputs`).
"""

from __future__ import annotations

import sys
from typing import Any

from .errors import MISSING_LINK_TRACEBACK, format_traceback, full_type_name, with_traceback
from .files import Folders
from .nodes import NODE_CLASSES

Reason = dict[str, Any]
Validated = dict[Any, tuple[bool, list[Reason], Any]]


def is_link(value: Any) -> bool:
    """comfy_execution.graph_utils.is_link."""
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int | float))


def get_input_info(class_inputs: dict[str, Any], name: str) -> tuple[Any, str | None, dict[str, Any] | None]:
    for category in ("required", "optional", "hidden"):
        if name in class_inputs.get(category, {}):
            spec = class_inputs[category][name]
            extra = spec[1] if isinstance(spec, list | tuple) and len(spec) > 1 else {}
            return (spec[0] if isinstance(spec, list | tuple) else spec), category, extra
    return None, None, None


def _ordered_inputs(class_inputs: dict[str, Any]) -> list[str]:
    return [*class_inputs.get("required", {}), *class_inputs.get("optional", {})]


def _input_error(kind: str, message: str, details: str, **extra: Any) -> Reason:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _check_literal(x: str, val: Any, input_type: Any, extra: dict[str, Any], inputs: dict[str, Any],
                   info: list[Any], checks_range: bool) -> Reason | None:
    """Conversion, min/max and classic-combo checks of one literal input."""
    try:
        if isinstance(val, dict) and "__value__" in val:
            val = val["__value__"]
            inputs[x] = val
        convert = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(input_type) \
            if isinstance(input_type, str) else None
        if convert is not None:
            val = convert(val)
            inputs[x] = val
    except Exception as ex:
        return _input_error("invalid_input_type", f"Failed to convert an input value to a {input_type} value",
                            f"{x}, {val}, {ex}", input_name=x, input_config=info, received_value=val,
                            exception_message=str(ex))
    if not checks_range:
        return None
    if "min" in extra and val < extra["min"]:
        return _input_error("value_smaller_than_min", f"Value {val} smaller than min of {extra['min']}", x,
                            input_name=x, input_config=info, received_value=val)
    if "max" in extra and val > extra["max"]:
        return _input_error("value_bigger_than_max", f"Value {val} bigger than max of {extra['max']}", x,
                            input_name=x, input_config=info, received_value=val)
    if isinstance(input_type, list) and val not in input_type:
        # Long lists (scanned model files) are not echoed back.
        too_long = len(input_type) > 20
        list_info = f"(list of length {len(input_type)})" if too_long else str(input_type)
        return _input_error("value_not_in_list", "Value not in list", f"{x}: '{val}' not in {list_info}",
                            input_name=x, input_config=None if too_long else info, received_value=val)
    return None


def validate_inputs(folders: Folders, prompt: dict[str, Any], unique_id: Any,
                    validated: Validated) -> tuple[bool, list[Reason], Any]:
    if unique_id in validated:
        return validated[unique_id]
    inputs = prompt[unique_id]["inputs"]
    class_type = prompt[unique_id]["class_type"]
    obj_class = NODE_CLASSES[class_type]
    class_inputs = obj_class.input_types(folders)
    validate_args = obj_class.VALIDATE_ARGS
    errors: list[Reason] = []
    valid = True
    for x in _ordered_inputs(class_inputs):
        input_type, category, extra = get_input_info(class_inputs, x)
        extra = extra or {}
        if x not in inputs:
            if category == "required":
                errors.append(_input_error("required_input_missing", "Required input is missing", x, input_name=x))
            continue
        val = inputs[x]
        info = [input_type, extra]
        if isinstance(val, list):
            if len(val) != 2:
                errors.append(_input_error(
                    "bad_linked_input", "Bad linked input, must be a length-2 list of [node_id, slot_index]", x,
                    input_name=x, input_config=info, received_value=val))
                continue
            o_id = val[0]
            try:
                o_class_type = prompt[o_id]["class_type"]
            except KeyError as ex:
                raise with_traceback(ex, MISSING_LINK_TRACEBACK) from None
            received_type = NODE_CLASSES[o_class_type].return_types()[val[1]]
            if not _types_match(received_type, input_type):
                errors.append(_input_error(
                    "return_type_mismatch", "Return type mismatch between linked nodes",
                    f"{x}, received_type({received_type}) mismatch input_type({input_type})",
                    input_name=x, input_config=info, received_type=received_type, linked_node=val))
                continue
            try:
                if validate_inputs(folders, prompt, o_id, validated)[0] is False:
                    valid = False
            except Exception as ex:
                valid = False
                validated[o_id] = (False, [_input_error(
                    "exception_during_inner_validation", "Exception when validating inner node", str(ex),
                    input_name=x, input_config=info, exception_message=str(ex),
                    exception_type=full_type_name(type(ex)),
                    traceback=format_traceback(ex, sys.exc_info()[2], folders.root, recorded=False),
                    linked_node=val)],
                    o_id)
            continue
        error = _check_literal(x, val, input_type, extra, inputs, info, x not in validate_args)
        if error is not None:
            errors.append(error)
    if validate_args:
        filtered = {x: inputs[x] for x in inputs if x in validate_args}
        result = obj_class.validate_inputs(folders, **filtered)
        for x in filtered:
            if result is not True:
                details = x if result is False else f"{x} - {result}"
                errors.append(_input_error("custom_validation_failed", "Custom validation failed for node", details,
                                           input_name=x))
    ret = (False, errors, unique_id) if errors or valid is not True else (True, [], unique_id)
    validated[unique_id] = ret
    return ret


def _types_match(received: str, expected: Any) -> bool:
    """execution.validate_node_input (non-strict)."""
    if not received != expected:
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    got = {t.strip() for t in received.split(",")}
    want = {t.strip() for t in expected.split(",")}
    return "*" in got or "*" in want or bool(got & want)


def _no_outputs() -> tuple[bool, Reason, list[str], dict[str, Any]]:
    return False, _input_error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}


def validate_prompt(folders: Folders, prompt: Any,
                    partial_execution_list: list[str] | None) -> tuple[bool, Reason | None, list[str], dict[str, Any]]:
    """(valid, error, good output ids, node_errors) exactly as the server's validate_prompt."""
    outputs: list[str] = []
    for x in prompt:
        if "class_type" not in prompt[x]:
            return False, _input_error(
                "invalid_prompt", "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{x}'"), [], {}
        class_type = prompt[x]["class_type"]
        obj_class = NODE_CLASSES.get(class_type)
        if obj_class is None:
            error = _input_error("invalid_prompt", f"Cannot execute because node {class_type} does not exist.",
                                 f"Node ID '#{x}'")
            return False, error, [], {}
        if obj_class.output_node() and (partial_execution_list is None or x in partial_execution_list):
            outputs.append(x)
    if not outputs:
        return _no_outputs()
    good_outputs: list[str] = []
    failures: list[tuple[str, list[Reason]]] = []
    node_errors: dict[str, Any] = {}
    validated: Validated = {}
    for o in outputs:
        try:
            valid, reasons, _ = validate_inputs(folders, prompt, o, validated)
        except Exception as ex:
            valid = False
            reasons = [_input_error("exception_during_validation", "Exception when validating node", str(ex),
                                    exception_type=full_type_name(type(ex)),
                                    traceback=format_traceback(ex, sys.exc_info()[2], folders.root))]
            validated[o] = (False, reasons, o)
        if valid is True:
            good_outputs.append(o)
            continue
        failures.append((o, reasons))
        # The server walks every node validated so far, so a failed node also lists later failed outputs.
        for node_id, (node_valid, node_reasons, _) in validated.items():
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {"errors": node_reasons, "dependent_outputs": [],
                                            "class_type": prompt[node_id]["class_type"]}
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failures for e in reasons)
        error = _input_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
        return False, error, good_outputs, node_errors
    return True, None, good_outputs, node_errors
