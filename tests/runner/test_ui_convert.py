"""UI-format workflows to API format (services/common/comfy_graph.py): hand-made cases for each
rule, then the 644 real templates of `comfyui-workflow-templates-json` as the corpus."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources
from typing import Any

import pytest

from services.common.comfy_graph import convert_ui_workflow, is_ui_workflow, validate_api_prompt
from services.common.comfy_schemas import parse_object_info
from tests.comfyui_double.nodes import OBJECT_INFO

SEEDED = {  # a class with a control_after_generate input, like KSampler's seed
    "input": {"required": {"image": ["IMAGE", {}],
                           "seed": ["INT", {"default": 0, "min": 0, "control_after_generate": True}],
                           "mode": [["soft", "hard"], {}], "strength": ["FLOAT", {"default": 1.0}]},
              "optional": {"label": ["STRING", {"default": ""}]}},
    "input_order": {"required": ["image", "seed", "mode", "strength"], "optional": ["label"]},
    "output": ["IMAGE"], "output_node": False, "name": "Seeded",
}
SCHEMAS = parse_object_info({**OBJECT_INFO, "Seeded": SEEDED})


def node(id: int, type: str, *, inputs: list[tuple[str, str, int | None]] = (),  # type: ignore[assignment]
         outputs: list[str] = (), widgets: Any = None, mode: int = 0, widget_inputs: tuple[str, ...] = ()
         ) -> dict[str, Any]:
    return {
        "id": id, "type": type, "mode": mode, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": id,
        "inputs": [{"name": n, "type": t, "link": link, **({"widget": {"name": n}} if n in widget_inputs else {})}
                   for n, t, link in inputs],
        "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
        "properties": {"Node name for S&R": type}, "widgets_values": widgets,
    }


def ui(nodes: list[dict[str, Any]], links: list[list[Any]], subgraphs: list[dict[str, Any]] = ()  # type: ignore[assignment]
       ) -> dict[str, Any]:
    return {"id": "x", "revision": 0, "last_node_id": 99, "last_link_id": 99, "nodes": nodes, "links": links,
            "groups": [], "definitions": {"subgraphs": list(subgraphs)}, "config": {}, "extra": {}, "version": 0.4}


def test_widgets_links_notes_reroutes_primitives_muted_and_bypassed() -> None:
    workflow = ui(
        [
            node(1, "EmptyImage", outputs=["IMAGE"], widgets=[64, 32, 1, 255],
                 inputs=[("width", "INT", 9)], widget_inputs=("width",)),
            node(9, "PrimitiveNode", outputs=["INT"], widgets=[128, "fixed"]),
            node(5, "Reroute", inputs=[("", "*", 1)], outputs=["IMAGE"]),
            node(2, "ImageInvert", inputs=[("image", "IMAGE", 2)], outputs=["IMAGE"], mode=4),  # bypassed
            node(4, "Seeded", inputs=[("image", "IMAGE", 3)], outputs=["IMAGE"],
                 widgets=[585483408983215, "randomize", "hard", 0.75, "tag"]),
            node(3, "SaveImage", inputs=[("images", "IMAGE", 4)], widgets=["out/ui"]),
            node(7, "PreviewImage", inputs=[("images", "IMAGE", 5)], mode=2),  # muted
            node(8, "MarkdownNote", widgets=["# read me"]),
            node(10, "Note", widgets=["hi"]),
        ],
        [[9, 9, 0, 1, 0, "INT"], [1, 1, 0, 5, 0, "IMAGE"], [2, 5, 0, 2, 0, "IMAGE"], [3, 2, 0, 4, 0, "IMAGE"],
         [4, 4, 0, 3, 0, "IMAGE"], [5, 1, 0, 7, 0, "IMAGE"]],
    )
    assert is_ui_workflow(workflow)
    result = convert_ui_workflow(workflow, SCHEMAS)
    assert result.missing_classes == () and result.problems == ()
    assert result.prompt == {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 32, "batch_size": 1, "color": 255},
              "_meta": {"title": "EmptyImage"}},
        # Through the Reroute and the bypassed ImageInvert, straight to EmptyImage.
        "4": {"class_type": "Seeded", "inputs": {"image": ["1", 0], "seed": 585483408983215, "mode": "hard",
                                                 "strength": 0.75, "label": "tag"}, "_meta": {"title": "Seeded"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "out/ui"},
              "_meta": {"title": "SaveImage"}},
    }
    assert validate_api_prompt(result.prompt, SCHEMAS) == []


def test_upload_widget_values_are_skipped_and_unknown_classes_block_it() -> None:
    workflow = ui([node(1, "LoadImage", outputs=["IMAGE", "MASK"], widgets=["photo.png", "image"]),
                   node(2, "SaveImage", inputs=[("images", "IMAGE", 1)], widgets=["x"])],
                  [[1, 1, 0, 2, 0, "IMAGE"]])
    result = convert_ui_workflow(workflow, SCHEMAS)
    assert result.prompt is not None
    assert result.prompt["1"]["inputs"] == {"image": "photo.png"}
    workflow["nodes"].append(node(3, "KSampler", widgets=[1, "fixed", 20]))
    workflow["nodes"].append(node(4, "CLIPTextEncode", widgets=["a cat"]))
    blocked = convert_ui_workflow(workflow, SCHEMAS)
    assert blocked.prompt is None and blocked.missing_classes == ("CLIPTextEncode", "KSampler")


def test_a_subgraph_instance_is_expanded_with_its_inputs_and_outputs() -> None:
    subgraph = {
        "id": "5c4f2a6e-0000-4000-8000-000000000001", "name": "invert twice",
        "inputs": [{"id": "a", "name": "image", "type": "IMAGE", "linkIds": [11]}],
        "outputs": [{"id": "b", "name": "IMAGE", "type": "IMAGE", "linkIds": [13]}],
        "nodes": [node(1, "ImageInvert", inputs=[("image", "IMAGE", 11)], outputs=["IMAGE"]),
                  node(2, "ImageInvert", inputs=[("image", "IMAGE", 12)], outputs=["IMAGE"])],
        "links": [{"id": 11, "origin_id": -10, "origin_slot": 0, "target_id": 1, "target_slot": 0, "type": "IMAGE"},
                  {"id": 12, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"},
                  {"id": 13, "origin_id": 2, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "IMAGE"}],
    }
    workflow = ui([node(1, "EmptyImage", outputs=["IMAGE"], widgets=[8, 8, 1, 0]),
                   node(6, subgraph["id"], inputs=[("image", "IMAGE", 1)], outputs=["IMAGE"]),
                   node(3, "SaveImage", inputs=[("images", "IMAGE", 2)], widgets=["sub"])],
                  [[1, 1, 0, 6, 0, "IMAGE"], [2, 6, 0, 3, 0, "IMAGE"]], [subgraph])
    result = convert_ui_workflow(workflow, SCHEMAS)
    assert result.prompt is not None, result
    assert result.prompt["6:1"]["inputs"] == {"image": ["1", 0]}
    assert result.prompt["6:2"]["inputs"] == {"image": ["6:1", 0]}
    assert result.prompt["3"]["inputs"]["images"] == ["6:2", 0]
    assert "6" not in result.prompt
    assert validate_api_prompt(result.prompt, SCHEMAS) == []


def test_validation_names_what_is_wrong() -> None:
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": "8", "height": 8, "batch_size": 1}},
              "2": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["1", 1]}}}
    assert validate_api_prompt(prompt, SCHEMAS) == [
        "node 1 (EmptyImage): 'width' = '8' is not INT",
        "node 1 (EmptyImage): required input 'color' missing",
        "node 2 (ImageInvert): 'image' links to a missing output",
        "node 3 (SaveImage): 'images' links to a missing output",
        "node 3 (SaveImage): required input 'filename_prefix' missing",
    ]
    assert validate_api_prompt({"1": prompt["2"] | {"inputs": {"image": ["1", 0]}}}, SCHEMAS) == ["no output node"]


def _templates() -> list[tuple[str, Any]]:
    folder = resources.files("comfyui_workflow_templates_json") / "templates"
    found = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            workflow = json.loads(entry.read_text(encoding="utf-8"))
            if is_ui_workflow(workflow):
                found.append((entry.name, workflow))
    return found


def test_the_644_templates_convert_when_their_nodes_are_known(capsys: pytest.CaptureFixture[str]) -> None:
    schemas = parse_object_info(OBJECT_INFO)  # all the schemas there are: the double's recorded subset
    templates = _templates()
    assert len(templates) == 644
    converted, blocked_by_classes, blocked_otherwise = [], Counter[str](), []
    nodes_written, wrong_literals = 0, []
    for name, workflow in templates:
        result = convert_ui_workflow(workflow, schemas)
        if result.prompt is not None:
            converted.append(name)
            # Every conversion that succeeds is a valid prompt for the schemas it used.
            assert validate_api_prompt(result.prompt, schemas) == [], name
        elif result.missing_classes:
            blocked_by_classes.update(result.missing_classes)
        if result.problems:
            blocked_otherwise.append((name, result.problems))
        # Nodes of known classes in blocked templates too: their widget values must land on the
        # right inputs (a value shifted by a skipped UI-only value shows up as a wrong type).
        nodes_written += len(result.partial)
        wrong_literals += [(name, e) for e in validate_api_prompt(result.partial, schemas)
                           if " is not " in e or "required input" in e]
    by_classes = len(templates) - len(converted) - len([n for n, _ in blocked_otherwise if n not in converted])
    with capsys.disabled():
        print(f"\nUI -> API over {len(templates)} templates with the {len(schemas)} node classes of the double's "
              f"/object_info: {len(converted)} converted, {by_classes} blocked only by unknown node classes "
              f"({len(blocked_by_classes)} distinct; most wanted: "
              f"{', '.join(f'{c} x{n}' for c, n in blocked_by_classes.most_common(5))}), "
              f"{len(blocked_otherwise)} with other problems; {nodes_written} nodes of known classes written")
    assert blocked_otherwise == []
    assert nodes_written > 500
    assert wrong_literals == []
