"""Table tests of the node-schema core: both /object_info dialects, and values coerced to the
node input types before POST /prompt."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.comfy_schemas import coerce_prompt, coerce_value, parse_node, parse_object_info
from tests.comfyui_double.nodes import OBJECT_INFO

# KSampler as ComfyUI 0.3.64 describes it (classic combos, control_after_generate on seed).
KSAMPLER = {
    "input": {"required": {
        "model": ["MODEL", {}],
        "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}],
        "steps": ["INT", {"default": 20, "min": 1, "max": 10000}],
        "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}],
        "sampler_name": [["euler", "euler_ancestral", "dpmpp_2m"], {}],
        "scheduler": [["simple", "karras"], {}],
        "positive": ["CONDITIONING", {}], "negative": ["CONDITIONING", {}],
        "latent_image": ["LATENT", {}],
        "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
    }},
    "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                                 "negative", "latent_image", "denoise"]},
    "output": ["LATENT"], "output_node": False, "name": "KSampler",
}
TOGGLES = {
    "input": {"required": {"enabled": ["BOOLEAN", {"default": True}], "text": ["STRING", {"multiline": True}],
                           "size": ["COMBO", {"options": [512, 768, 1024]}]},
              "optional": {"image": ["IMAGE", {"forceInput": True}], "count": ["INT", {"forceInput": True}]},
              "hidden": {"unique_id": "UNIQUE_ID"}},
    "input_order": {"required": ["enabled", "text", "size"], "optional": ["image", "count"],
                    "hidden": ["unique_id"]},
    "output": ["STRING"], "output_node": True, "name": "Toggles",
}
SCHEMAS = parse_object_info({"KSampler": KSAMPLER, "Toggles": TOGGLES, **OBJECT_INFO})


def test_both_dialects_and_input_order_are_read() -> None:
    k = SCHEMAS["KSampler"]
    assert [i.name for i in k.inputs][:4] == ["model", "seed", "steps", "cfg"]
    seed, sampler, model = k.input("seed"), k.input("sampler_name"), k.input("model")
    assert seed is not None and seed.control_after_generate and seed.is_widget
    assert sampler is not None and (sampler.type, sampler.options) == ("COMBO", ("euler", "euler_ancestral",
                                                                                 "dpmpp_2m"))
    assert model is not None and not model.is_widget
    blend = SCHEMAS["ImageBlend"].input("blend_mode")
    assert blend is not None and blend.type == "COMBO" and blend.options and "difference" in blend.options
    load = SCHEMAS["LoadImage"].input("image")
    assert load is not None and load.upload_widget
    t = SCHEMAS["Toggles"]
    assert [(i.name, i.required, i.is_widget) for i in t.inputs] == [
        ("enabled", True, True), ("text", True, True), ("size", True, True), ("image", False, False),
        ("count", False, False),  # forceInput: a socket only; hidden inputs are not graph inputs
    ]
    assert t.output_node and t.outputs == ("STRING",)
    assert parse_node("Empty", {}).inputs == ()


@pytest.mark.parametrize(
    ("node", "name", "value", "expected"),
    [
        ("KSampler", "seed", "123456789012345", 123456789012345),
        ("KSampler", "steps", "20.0", 20),
        ("KSampler", "steps", 20.0, 20),
        ("KSampler", "steps", "20.5", "20.5"),  # not an integer: ComfyUI reports it
        ("KSampler", "steps", "twenty", "twenty"),
        ("KSampler", "cfg", "7.5", 7.5),
        ("KSampler", "cfg", " 8 ", 8.0),
        ("KSampler", "cfg", "nan", "nan"),
        ("KSampler", "sampler_name", "euler", "euler"),
        ("KSampler", "model", ["4", 0], ["4", 0]),  # a link is never touched
        ("KSampler", "steps", ["5", 0], ["5", 0]),
        ("Toggles", "enabled", "false", False),  # ComfyUI alone would make this True
        ("Toggles", "enabled", "True", True),
        ("Toggles", "enabled", "0", False),
        ("Toggles", "enabled", 1, True),
        ("Toggles", "enabled", "maybe", "maybe"),
        ("Toggles", "text", 42, "42"),  # $random() into a STRING input
        ("Toggles", "text", "as is", "as is"),
        ("Toggles", "size", "768", 768),  # a combo of numbers
        ("Toggles", "size", 640, 640),
        ("ImageBlend", "blend_factor", "0.25", 0.25),
    ],
)
def test_values_take_the_type_of_their_input(node: str, name: str, value: Any, expected: Any) -> None:
    spec = SCHEMAS[node].input(name)
    assert spec is not None
    result = coerce_value(spec, value)
    assert result == expected and type(result) is type(expected)


def test_a_prompt_is_coerced_node_by_node_and_unknown_things_are_left_alone() -> None:
    prompt = {
        "3": {"class_type": "KSampler", "inputs": {"seed": "7", "steps": "4", "cfg": "1", "model": ["4", 0],
                                                   "sampler_name": "euler", "extra": "5"}, "_meta": {"title": "K"}},
        "9": {"class_type": "CustomThing", "inputs": {"steps": "4"}},
    }
    coerced = coerce_prompt(prompt, SCHEMAS)
    assert coerced["3"] == {"class_type": "KSampler", "_meta": {"title": "K"}, "inputs": {
        "seed": 7, "steps": 4, "cfg": 1.0, "model": ["4", 0], "sampler_name": "euler", "extra": "5"}}
    assert coerced["9"] == prompt["9"]
    assert prompt["3"]["inputs"]["seed"] == "7"  # the input is not changed in place
