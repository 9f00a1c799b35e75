"""Exceptions of the double and the server tracebacks the recordings show.

The real server reports `traceback.format_tb(...)` of its own code. For the failures that were
recorded, the double reports those frames verbatim, with `<COMFYUI_ROOT>` and `<SITE_PACKAGES>`
replaced by its root folder and the real site-packages folder. For any other failure it reports
the real Python frames of the double itself (after the execution frames the server always has).
"""

from __future__ import annotations

import sysconfig
import traceback
from types import TracebackType

ROOT_MARK = "<COMFYUI_ROOT>"
SITE_MARK = "<SITE_PACKAGES>"
SITE_PACKAGES = sysconfig.get_paths()["purelib"]


class InterruptProcessingException(Exception):
    """comfy.model_management.InterruptProcessingException."""


def _frame(path: str, line: int, func: str, code: str, caret_from: int | None = None, marker: str = "") -> str:
    """One `traceback.format_tb` entry as Python 3.11 prints it (carets under the call)."""
    text = f'  File "{path}", line {line}, in {func}\n    {code}\n'
    if caret_from is not None:
        marker = " " * caret_from + "^" * (len(code) - caret_from)
    if marker:
        text += f"    {marker}\n"
    return text


_EXECUTION = f"{ROOT_MARK}/execution.py"
_CALL_ARGS = ("prompt_id, unique_id, obj, input_data_all{}, execution_block_cb=execution_block_cb, "
              "pre_execute_cb=pre_execute_cb, hidden_inputs=hidden_inputs)")
EXECUTION_FRAMES = [
    _frame(_EXECUTION, 496, "execute",
           "output_data, output_ui, has_subgraph, has_pending_tasks = await get_output_data("
           + _CALL_ARGS.format(""), 58),
    _frame(_EXECUTION, 315, "get_output_data",
           "return_values = await _async_map_node_over_list("
           + _CALL_ARGS.format(", obj.FUNCTION, allow_interrupt=True"), 16),
    _frame(_EXECUTION, 289, "_async_map_node_over_list", "await process_inputs(input_dict, i)"),
    _frame(_EXECUTION, 277, "process_inputs", "result = f(**inputs)", 9),
]

LOAD_IMAGE_TRACEBACK = [
    *EXECUTION_FRAMES,
    _frame(f"{ROOT_MARK}/nodes.py", 1647, "load_image", "img = node_helpers.pillow(Image.open, image_path)", 6),
    _frame(f"{ROOT_MARK}/node_helpers.py", 31, "pillow", "x = fn(arg)", 4),
    _frame(f"{SITE_MARK}/PIL/Image.py", 3730, "open", "raise UnidentifiedImageError(msg)"),
]

_POST_PROCESSING = f"{ROOT_MARK}/comfy_extras/nodes_post_processing.py"
IMAGE_BLEND_TRACEBACK = [
    *EXECUTION_FRAMES,
    _frame(f"{ROOT_MARK}/comfy_api/internal/__init__.py", 149, "wrapped_func",
           "return method(locked_class, **inputs)", 7),
    _frame(f"{ROOT_MARK}/comfy_api/latest/_io.py", 1270, "EXECUTE_NORMALIZED",
           "to_return = cls.execute(*args, **kwargs)", 12),
    _frame(_POST_PROCESSING, 39, "execute", "blended_image = cls.blend_mode(image1, image2, blend_mode)", 16),
    _frame(_POST_PROCESSING, 58, "blend_mode", 'raise ValueError(f"Unsupported blend mode: {mode}")'),
]

# validate_prompt -> validate_inputs -> `prompt[o_id]['class_type']` for a link to a missing node.
MISSING_LINK_TRACEBACK = [
    _frame(_EXECUTION, 1010, "validate_prompt", "m = await validate_inputs(prompt_id, prompt, o, validated)", 4),
    _frame(_EXECUTION, 788, "validate_inputs", "o_class_type = prompt[o_id]['class_type']",
           marker=" " * 15 + "~" * 6 + "^" * 6),
]


def with_traceback(ex: BaseException, frames: list[str]) -> BaseException:
    """Marks an exception with the server frames to report for it."""
    ex.comfy_traceback = frames  # type: ignore[attr-defined]
    return ex


def localise(frames: list[str], root: str) -> list[str]:
    """Replaces the placeholders by this double's folders."""
    return [f.replace(ROOT_MARK, root).replace(SITE_MARK, SITE_PACKAGES) for f in frames]


def format_traceback(ex: BaseException, tb: TracebackType | None, root: str, execution: bool = False,
                     recorded: bool = True) -> list[str]:
    """The `traceback` list a server message carries for ex.

    recorded=False skips the recorded frames (they belong to a different call site); execution
    prefixes the frames every node run has on the server.
    """
    frames = getattr(ex, "comfy_traceback", None) if recorded else None
    if frames is not None:
        return localise(frames, root)
    own = traceback.format_tb(tb)
    return localise(EXECUTION_FRAMES, root) + own if execution else own


def full_type_name(klass: type) -> str:
    """execution.full_type_name: module-qualified except for builtins."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__

