"""Placeholders: scan (what is one), bind (are the form fields right), fill (the prompt).

Every rejection must be an InvalidPlaceholder whose details name what the user has to fix,
because that is what the 400 body shows.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from services.scheduler.core.placeholders import Binding, FieldValue, Kind, Placeholder, bind, fill, scan
from services.scheduler.errors import InvalidArgument, InvalidPlaceholder


def graph_of(**inputs: Any) -> dict[str, dict[str, Any]]:
    """A one-node graph whose inputs are the given values."""
    return {"6": {"class_type": "CLIPTextEncode", "inputs": dict(inputs)}}


def text(f: str, value: str) -> FieldValue:
    return FieldValue(f, value)


def file(f: str) -> FieldValue:
    return FieldValue(f, "", is_file=True)


# -- scan -----------------------------------------------------------------------------------

NAME_255 = "n" * 255
NAME_256 = "n" * 256


@dataclass(frozen=True)
class Found:
    kind: Kind
    name: str = ""
    default: str | None = None
    options: tuple[str, ...] = ()


SCAN_CASES: list[tuple[str, str, Found | None]] = [
    ("text", "$text(prompt)", Found(Kind.TEXT, "prompt")),
    ("text with spaces inside the parentheses", "$text( prompt )", Found(Kind.TEXT, "prompt")),
    ("text with a default", "$text(prompt, a cat)", Found(Kind.TEXT, "prompt", "a cat")),
    ("text default keeps its commas", "$text(prompt, a cat, a dog)", Found(Kind.TEXT, "prompt", "a cat, a dog")),
    ("text with an empty default", "$text(prompt,)", Found(Kind.TEXT, "prompt", "")),
    ("name with - and _", "$text(neg-prompt_2)", Found(Kind.TEXT, "neg-prompt_2")),
    ("choice of 2", "$choice(sampler, euler, ddim)", Found(Kind.CHOICE, "sampler", options=("euler", "ddim"))),
    ("choice of 4", "$choice(s, a, b, c, d)", Found(Kind.CHOICE, "s", options=("a", "b", "c", "d"))),
    ("#choice spelling", "#choice(s,a,b)", Found(Kind.CHOICE, "s", options=("a", "b"))),
    ("file", "$file(input_image)", Found(Kind.FILE, "input_image")),
    ("file name of 255", f"$file({NAME_255})", Found(Kind.FILE, NAME_255)),
    ("random", "$random()", Found(Kind.RANDOM)),
    ("timestamp", "$timestamp()", Found(Kind.TIMESTAMP)),
    # The whole-value rule: a placeholder is the entire string, anything else is left alone.
    ("prefix before random", "prefix_$random()", None),
    ("text inside a sentence", "a photo of $text(subject)", None),
    ("prefix before choice", "x#choice(s, a, b)", None),
    ("plain text", "a cat", None),
    ("empty string", "", None),
    ("a dollar word", "$textual", None),
    ("an unknown function", "$seed(1)", None),
]


@pytest.mark.parametrize(("value", "expected"), [(v, e) for _, v, e in SCAN_CASES],
                         ids=[c[0] for c in SCAN_CASES])
def test_scan_recognises_whole_values_only(value: str, expected: Found | None) -> None:
    found = scan(graph_of(value=value))
    if expected is None:
        assert found == []
        return
    assert found == [Placeholder("6", "value", value, expected.kind, expected.name, expected.default,
                                 expected.options)]


SCAN_ERRORS: list[tuple[str, str, dict[str, str]]] = [
    # (case, value, what the details must name)
    ("choice with 1 option", "$choice(sampler, euler)", {"field": "#sampler"}),
    ("choice with 5 options", "$choice(sampler, a, b, c, d, e)", {"field": "#sampler"}),
    ("#choice with 5 options", "#choice(sampler, a, b, c, d, e)", {"field": "#sampler"}),
    ("choice with an empty option", "$choice(sampler, a, , b)", {"field": "#sampler"}),
    ("choice without options", "$choice(sampler)", {"placeholder": "$choice(sampler)"}),
    ("file name with a dot", "$file(input_image.png)", {"placeholder": "$file(input_image.png)"}),
    ("file name of 256", f"$file({NAME_256})", {"placeholder": f"$file({NAME_256})"}),
    ("text name with a space", "$text(my prompt)", {"placeholder": "$text(my prompt)"}),
    ("text without a name", "$text()", {"placeholder": "$text()"}),
    ("random with an argument", "$random(7)", {"placeholder": "$random(7)"}),
    ("#text is not a spelling", "#text(prompt)", {"placeholder": "#text(prompt)"}),
]


@pytest.mark.parametrize(("value", "named"), [(v, n) for _, v, n in SCAN_ERRORS], ids=[c[0] for c in SCAN_ERRORS])
def test_scan_rejects_malformed_placeholders_naming_them(value: str, named: dict[str, str]) -> None:
    with pytest.raises(InvalidPlaceholder) as caught:
        scan({"3": {"class_type": "KSampler", "inputs": {"sampler_name": value}}})
    err = caught.value
    assert isinstance(err, InvalidArgument)  # -> 400
    assert err.reason == "INVALID_PLACEHOLDER"
    assert len(err.details) == 1
    assert err.details[0].items() >= {"node_id": "3", "input": "sampler_name", **named}.items()
    assert "node 3" in err.message


def test_scan_goes_node_by_node_and_skips_links_and_numbers() -> None:
    graph = {
        "3": {"class_type": "KSampler", "inputs": {
            "seed": "$random()", "steps": 20, "model": ["4", 0], "sampler_name": "$choice(s, euler, ddim)"}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$timestamp()", "images": ["8", 0]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "$file(img)"}},
        "11": {"class_type": "Note"},  # no inputs at all
    }
    assert [(p.node_id, p.input_name, p.kind) for p in scan(graph)] == [
        ("3", "seed", Kind.RANDOM),
        ("3", "sampler_name", Kind.CHOICE),
        ("9", "filename_prefix", Kind.TIMESTAMP),
        ("10", "image", Kind.FILE),
    ]


@pytest.mark.parametrize(
    ("value", "field"),
    [("$text(prompt)", "$prompt"), ("$file(img)", "$img"), ("$choice(s, a, b)", "#s"), ("#choice(s, a, b)", "#s"),
     ("$random()", ""), ("$timestamp()", "")],
)
def test_the_form_field_of_each_kind(value: str, field: str) -> None:
    assert scan(graph_of(v=value))[0].field == field


# -- bind -----------------------------------------------------------------------------------

GRAPH = {
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(prompt)"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(negative, blurry)"}},
    "3": {"class_type": "KSampler", "inputs": {
        "sampler_name": "$choice(sampler, euler, dpmpp_2m, ddim)", "seed": "$random()", "steps": "$text(steps, 20)"}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "$file(input_image)"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$timestamp()"}},
}
FOUND = scan(GRAPH)
REQUIRED = [text("$prompt", "a cat"), file("$input_image")]

BIND_OK: list[tuple[str, list[FieldValue], dict[str, str]]] = [
    # (case, submitted fields, expected values); $input_image is always the file part
    ("only the required fields: defaults fill the rest, a choice defaults to its first option", REQUIRED,
     {"$prompt": "a cat", "$negative": "blurry", "$steps": "20", "#sampler": "euler"}),
    ("every field given", [*REQUIRED, text("$negative", "dark"), text("$steps", "30"), text("#sampler", "ddim")],
     {"$prompt": "a cat", "$negative": "dark", "$steps": "30", "#sampler": "ddim"}),
    ("order of the fields does not matter", [text("#sampler", "dpmpp_2m"), *reversed(REQUIRED)],
     {"$prompt": "a cat", "$negative": "blurry", "$steps": "20", "#sampler": "dpmpp_2m"}),
    ("an empty text is a value, not a missing field", [text("$prompt", ""), file("$input_image")],
     {"$prompt": "", "$negative": "blurry", "$steps": "20", "#sampler": "euler"}),
]


@pytest.mark.parametrize(("fields", "values"), [(f, v) for _, f, v in BIND_OK], ids=[c[0] for c in BIND_OK])
def test_bind_accepts(fields: list[FieldValue], values: dict[str, str]) -> None:
    binding = bind(FOUND, fields)
    assert binding.values == values
    assert binding.files == {"$input_image"}


BIND_ERRORS: list[tuple[str, list[FieldValue], str, str, str]] = [
    # (case, submitted fields, reason, field named in details, words in the message)
    ("required text missing", [file("$input_image")], "MISSING_FIELD", "$prompt", "$prompt is required"),
    ("required file missing", [text("$prompt", "a cat")], "MISSING_FIELD", "$input_image",
     "a file for $file(input_image)"),
    ("nothing sent", [], "MISSING_FIELD", "$prompt", "required"),
    ("choice value not among the options", [*REQUIRED, text("#sampler", "heun")], "INVALID_CHOICE", "#sampler",
     "#sampler must be one of euler, dpmpp_2m, ddim; got 'heun'"),
    ("choice value is case-sensitive", [*REQUIRED, text("#sampler", "Euler")], "INVALID_CHOICE", "#sampler",
     "got 'Euler'"),
    ("unknown $ field", [*REQUIRED, text("$seed", "1")], "UNKNOWN_FIELD", "$seed", "matches no placeholder"),
    ("unknown # field", [*REQUIRED, text("#scheduler", "karras")], "UNKNOWN_FIELD", "#scheduler",
     "matches no placeholder"),
    ("choice sent with the text sigil", [*REQUIRED, text("$sampler", "ddim")], "UNKNOWN_FIELD", "$sampler",
     "matches no placeholder"),
    ("text sent with the choice sigil", [*REQUIRED, text("#negative", "dark")], "UNKNOWN_FIELD", "#negative",
     "matches no placeholder"),
    ("field without a sigil", [*REQUIRED, text("prompt", "x")], "UNKNOWN_FIELD", "prompt", "not a valid"),
    ("field name with a space", [*REQUIRED, text("$my prompt", "x")], "UNKNOWN_FIELD", "$my prompt", "not a valid"),
    ("field name too long", [*REQUIRED, text("$" + NAME_256, "x")], "UNKNOWN_FIELD", "$" + NAME_256, "not a valid"),
    ("text field sent twice", [*REQUIRED, text("$prompt", "a dog")], "DUPLICATE_FIELD", "$prompt",
     "$prompt was sent more than once"),
    ("choice field sent twice", [*REQUIRED, text("#sampler", "ddim"), text("#sampler", "ddim")], "DUPLICATE_FIELD",
     "#sampler", "more than once"),
    ("file field sent twice", [*REQUIRED, file("$input_image")], "DUPLICATE_FIELD", "$input_image",
     "more than once"),
    ("file placeholder given text", [text("$prompt", "a cat"), text("$input_image", "cat.png")],
     "INVALID_PLACEHOLDER", "$input_image", "must be a file part"),
    ("text placeholder given a file", [file("$prompt"), file("$input_image")], "INVALID_PLACEHOLDER", "$prompt",
     "must be a text value"),
]


@pytest.mark.parametrize(("fields", "reason", "field", "words"), [c[1:] for c in BIND_ERRORS],
                         ids=[c[0] for c in BIND_ERRORS])
def test_bind_rejects_naming_the_field(fields: list[FieldValue], reason: str, field: str, words: str) -> None:
    with pytest.raises(InvalidPlaceholder) as caught:
        bind(FOUND, fields)
    assert caught.value.reason == reason
    assert caught.value.details == [{"field": field}]
    assert words in caught.value.message


CONFLICTS: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, inputs of one node, field named, words)
    ("the same name as text and file", {"a": "$text(x)", "b": "$file(x)"}, "$x", "both file and text"),
    ("one choice with two option lists", {"a": "$choice(s, a, b)", "b": "#choice(s, a, c)"}, "#s",
     "different option lists"),
    ("one text with and without a default", {"a": "$text(p)", "b": "$text(p, cat)"}, "$p", "different defaults"),
    ("the same, the other way round", {"a": "$text(p, cat)", "b": "$text(p)"}, "$p", "different defaults"),
    ("one text with two defaults", {"a": "$text(p, cat)", "b": "$text(p, dog)"}, "$p", "different defaults"),
]


@pytest.mark.parametrize(("inputs", "field", "words"), [c[1:] for c in CONFLICTS], ids=[c[0] for c in CONFLICTS])
def test_one_field_must_mean_one_thing(inputs: dict[str, Any], field: str, words: str) -> None:
    # Caught whatever is submitted: the graph itself is ambiguous.
    with pytest.raises(InvalidPlaceholder) as caught:
        bind(scan(graph_of(**inputs)), [text(field, "a")])
    assert caught.value.details == [{"field": field}]
    assert words in caught.value.message


def test_one_field_may_fill_several_inputs_and_both_choice_spellings_agree() -> None:
    found = scan({
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(p, cat)"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(p, cat)"}},
        "3": {"class_type": "KSampler",
              "inputs": {"sampler_name": "$choice(s, a, b)", "scheduler": "#choice(s, a, b)"}},
    })
    assert bind(found, [text("#s", "b")]).values == {"$p": "cat", "#s": "b"}


def test_a_graph_without_placeholders_takes_no_fields() -> None:
    graph = graph_of(text="a cat", seed=5)
    assert bind(scan(graph), []) == Binding()
    with pytest.raises(InvalidPlaceholder) as caught:
        bind(scan(graph), [text("$prompt", "a cat")])
    assert caught.value.reason == "UNKNOWN_FIELD"


# -- fill -----------------------------------------------------------------------------------

FILL_GRAPH = {
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(prompt)", "clip": ["4", 1]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": "$random()", "noise_seed": "$random()", "steps": "$text(steps, 20)",
        "sampler_name": "#choice(sampler, euler, ddim)", "cfg": 7.5}},
    "10": {"class_type": "LoadImage", "inputs": {"image": "$file(input_image)"}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$timestamp()", "images": ["8", 0]}},
    "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": "$timestamp()", "note": "run_$timestamp()"}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "$text(prompt)"}},
}
NOW_MS = 1_700_000_000_123


def counter(start: int) -> Any:
    values = itertools.count(start, 1000)
    return lambda: next(values)


def test_fill_puts_values_in_and_leaves_files_and_non_placeholders() -> None:
    found = scan(FILL_GRAPH)
    binding = bind(found, [text("$prompt", "a cat"), text("#sampler", "ddim"), file("$input_image")])
    before = copy.deepcopy(FILL_GRAPH)

    prompt, params = fill(FILL_GRAPH, found, binding, random64=counter(1000), now_ms=NOW_MS)

    assert FILL_GRAPH == before  # the stored graph is not touched
    assert prompt == {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {
            # one fresh value per $random() occurrence, as numbers
            "seed": 1000, "noise_seed": 2000,
            # text stays text, even when it looks like a number (the runner knows the types)
            "steps": "20", "sampler_name": "ddim", "cfg": 7.5}},
        # the runner substitutes the name its ComfyUI gives the uploaded file
        "10": {"class_type": "LoadImage", "inputs": {"image": "$file(input_image)"}},
        # one timestamp everywhere in one fill
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": NOW_MS, "images": ["8", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"filename_prefix": NOW_MS, "note": "run_$timestamp()"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat"}},
    }
    # [placeholder, value] in graph order: a field once however often it is used, each system
    # placeholder occurrence with the value it got.
    assert params == [
        ("$text(prompt)", "a cat"),
        ("$random()", "1000"),
        ("$random()", "2000"),
        ("$text(steps, 20)", "20"),
        ("#choice(sampler, euler, ddim)", "ddim"),
        ("$timestamp()", str(NOW_MS)),
        ("$timestamp()", str(NOW_MS)),
    ]


def test_each_fill_draws_new_randoms_and_takes_the_clock_it_is_given() -> None:
    graph = {"3": {"class_type": "KSampler", "inputs": {"seed": "$random()", "t": "$timestamp()"}}}
    found = scan(graph)
    binding = bind(found, [])
    draws = counter(1)
    first, _ = fill(graph, found, binding, random64=draws, now_ms=5)
    second, params = fill(graph, found, binding, random64=draws, now_ms=6)
    assert first["3"]["inputs"] == {"seed": 1, "t": 5}
    assert second["3"]["inputs"] == {"seed": 1001, "t": 6}
    assert params == [("$random()", "1001"), ("$timestamp()", "6")]


def test_fill_of_a_graph_without_placeholders_is_a_copy() -> None:
    graph = graph_of(text="prefix_$random()")
    prompt, params = fill(graph, scan(graph), Binding(), random64=counter(1), now_ms=NOW_MS)
    assert prompt == graph
    assert prompt is not graph
    assert params == []


def test_a_call_followed_by_text_is_not_a_placeholder() -> None:
    # API.md: only a whole string value is a placeholder; anything else is left as it is.
    graph = {"1": {"class_type": "X", "inputs": {"a": "$random() suffix", "b": "prefix_$random()"}}}
    assert scan(graph) == []
