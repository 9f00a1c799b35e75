"""The node classes the double knows: the model-free image nodes used by the recordings.

Each class mirrors its ComfyUI counterpart: `INPUT_TYPES` comes from the recorded
`/object_info` entry (so validation sees the same specs and `input_config` echoes them), and
`run` does the pixel work with Pillow. Blur, sharpen, blend and scaling use Pillow's filters, so
their pixels only approximate torch's; sizes, modes and message flow are exact.

Any class_type not listed in `NODE_CLASSES` does not exist for the double (the real server has
476 classes; the double has the recorded subset).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import marshal
import mimetypes
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from PIL import Image, ImageChops, ImageFilter, ImageMath, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from .errors import IMAGE_BLEND_TRACEBACK, LOAD_IMAGE_TRACEBACK, with_traceback
from .files import Folders, annotated_filepath, exists_annotated_filepath, get_save_image_path
from .images import INVERT_LUT, ImageBatch, MaskBatch, png_bytes

OBJECT_INFO: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "transcripts" / "object_info_subset.json").read_text()
)


class RunContext(Protocol):
    """What a running node may use: the folders and the progress hook of the executor."""

    folders: Folders

    def progress(self, value: int, total: int, preview: Image.Image | None) -> None: ...


@functools.cache
def _input_dump(name: str) -> bytes:
    """OBJECT_INFO[name]["input"], marshalled once (JSON-shaped: marshal copies it exactly)."""
    return marshal.dumps(OBJECT_INFO[name]["input"])


@dataclass
class NodeResult:
    outputs: tuple[Any, ...]
    ui: dict[str, Any] | None = None


class Node:
    """Base class: class-level metadata from /object_info, an instance per (node id, class)."""

    NAME: ClassVar[str]
    REPORTS_PROGRESS: ClassVar[bool] = False

    @classmethod
    def info(cls) -> dict[str, Any]:
        return OBJECT_INFO[cls.NAME]

    @classmethod
    def output_node(cls) -> bool:
        return bool(cls.info()["output_node"])

    @classmethod
    def return_types(cls) -> tuple[str, ...]:
        return tuple(cls.info()["output"])

    @classmethod
    def input_types(cls, folders: Folders) -> dict[str, Any]:
        # A fresh dict each call, as INPUT_TYPES() builds one; unmarshalling a cached dump is
        # C-speed where copy.deepcopy was a large share of the benchmarks' doubles.
        return marshal.loads(_input_dump(cls.NAME))  # type: ignore[no-any-return]

    # ComfyUI calls IS_CHANGED only for classes that define it; None means "not defined".
    is_changed: ClassVar[Callable[..., Any] | None] = None
    # Names of the inputs VALIDATE_INPUTS takes; empty means the class has none.
    VALIDATE_ARGS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def validate_inputs(cls, folders: Folders, **inputs: Any) -> bool | str:
        return True

    # run(self, ctx, **inputs) -> NodeResult, with the node's inputs as keyword arguments.
    run: Callable[..., NodeResult]


class EmptyImage(Node):
    NAME = "EmptyImage"

    def run(self, ctx: RunContext, width: int, height: int, batch_size: int, color: int) -> NodeResult:
        rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
        img = Image.new("RGB", (width, height), rgb)
        return NodeResult((ImageBatch((img,) * batch_size),))


class ImageInvert(Node):
    NAME = "ImageInvert"

    def run(self, ctx: RunContext, image: ImageBatch) -> NodeResult:
        return NodeResult((image.map(lambda img: img.point(INVERT_LUT * 3)),))


RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def common_upscale(img: Image.Image, width: int, height: int, method: str, crop: str) -> Image.Image:
    """comfy.utils.common_upscale: optional centre crop to the new aspect, then resize."""
    old_width, old_height = img.size
    if crop == "center":
        old_aspect = old_width / old_height
        new_aspect = width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
        img = img.crop((x, y, old_width - x, old_height - y))
    return img.resize((width, height), RESAMPLE.get(method, Image.Resampling.BICUBIC))


class ImageScale(Node):
    NAME = "ImageScale"

    def run(self, ctx: RunContext, image: ImageBatch, upscale_method: str, width: int, height: int,
            crop: str) -> NodeResult:
        if width == 0 and height == 0:
            return NodeResult((image,))
        old_width, old_height = image.size
        if width == 0:
            width = max(1, round(old_width * height / old_height))
        elif height == 0:
            height = max(1, round(old_height * width / old_width))
        return NodeResult((image.map(lambda img: common_upscale(img, width, height, upscale_method, crop)),))


class ImageBlur(Node):
    NAME = "ImageBlur"

    def run(self, ctx: RunContext, image: ImageBatch, blur_radius: int, sigma: float) -> NodeResult:
        if blur_radius == 0:
            return NodeResult((image,))
        return NodeResult((image.map(lambda img: img.filter(ImageFilter.GaussianBlur(sigma))),))


class ImageSharpen(Node):
    NAME = "ImageSharpen"

    def run(self, ctx: RunContext, image: ImageBatch, sharpen_radius: int, sigma: float,
            alpha: float) -> NodeResult:
        if sharpen_radius == 0:
            return NodeResult((image,))
        # ComfyUI's kernel is (1 + 10a) * delta - 10a * gaussian: an unsharp mask of strength 10a.
        sharpen = ImageFilter.UnsharpMask(radius=sigma, percent=round(alpha * 1000), threshold=0)
        return NodeResult((image.map(lambda img: img.filter(sharpen)),))


BLEND_MODES: dict[str, Callable[[Image.Image, Image.Image], Image.Image]] = {
    "normal": lambda a, b: b,
    "multiply": ImageChops.multiply,
    "screen": ImageChops.screen,
    "overlay": ImageChops.overlay,
    "soft_light": ImageChops.soft_light,
    "difference": ImageChops.subtract,  # ComfyUI's "difference" is img1 - img2, clamped
}


class ImageBlend(Node):
    NAME = "ImageBlend"

    def run(self, ctx: RunContext, image1: ImageBatch, image2: ImageBatch, blend_factor: float,
            blend_mode: str) -> NodeResult:
        if image1.size != image2.size:
            w, h = image1.size
            image2 = image2.map(lambda img: common_upscale(img, w, h, "bicubic", "center"))
        mode = BLEND_MODES.get(blend_mode)
        if mode is None:
            # The newer node API does not check COMBO values at submit; this is the run-time error.
            raise with_traceback(ValueError(f"Unsupported blend mode: {blend_mode}"), IMAGE_BLEND_TRACEBACK)
        blended = [Image.blend(a, mode(a, b), blend_factor) for a, b in zip(image1.images, image2.images, strict=True)]
        return NodeResult((ImageBatch(tuple(blended)),))


def inverted_alpha(alpha: Image.Image) -> Image.Image:
    """LoadImage's mask: `1 - alpha / 255` in float32."""
    return ImageMath.lambda_eval(lambda args: 1.0 - args["a"] / 255.0, a=alpha.convert("F"))


class LoadImage(Node):
    NAME = "LoadImage"
    VALIDATE_ARGS = ("image",)

    @classmethod
    def input_types(cls, folders: Folders) -> dict[str, Any]:
        types = marshal.loads(_input_dump(cls.NAME))
        files = [f for f in os.listdir(folders.input) if os.path.isfile(os.path.join(folders.input, f))]
        images = [f for f in files if (mimetypes.guess_type(f)[0] or "").startswith("image/")]
        types["required"]["image"][0] = sorted(images)
        return types

    @classmethod
    def validate_inputs(cls, folders: Folders, **inputs: Any) -> bool | str:
        image = inputs["image"]
        if not exists_annotated_filepath(folders, image):
            return f"Invalid image file: {image}"
        return True

    @staticmethod
    def _is_changed(folders: Folders, image: str) -> str:
        name, base = annotated_filepath(folders, image)
        with open(os.path.join(base or folders.input, name), "rb") as f:
            return hashlib.sha256(f.read()).digest().hex()

    is_changed = _is_changed

    def run(self, ctx: RunContext, image: str) -> NodeResult:
        name, base = annotated_filepath(ctx.folders, image)
        path = os.path.join(base or ctx.folders.input, name)
        try:
            img = Image.open(path)
        except Exception as ex:  # PIL.UnidentifiedImageError for undecodable files
            raise with_traceback(ex, LOAD_IMAGE_TRACEBACK) from None
        frames: list[Image.Image] = []
        masks: list[Image.Image] = []
        for frame in ImageSequence.Iterator(img):
            frame = ImageOps.exif_transpose(frame) or frame
            if frame.mode == "I":
                frame = frame.point(lambda v: v * (1 / 255))
            rgb = frame.convert("RGB")
            if frames and rgb.size != frames[0].size:
                continue
            if "A" in frame.getbands():
                mask = inverted_alpha(frame.getchannel("A"))
            elif frame.mode == "P" and "transparency" in frame.info:
                mask = inverted_alpha(frame.convert("RGBA").getchannel("A"))
            else:
                mask = Image.new("F", (64, 64), 0.0)
            frames.append(rgb)
            masks.append(mask)
        if len(frames) > 1 and img.format == "MPO":
            frames, masks = frames[:1], masks[:1]
        return NodeResult((ImageBatch(tuple(frames)), MaskBatch(tuple(masks))))


class SaveImage(Node):
    NAME = "SaveImage"
    TYPE: ClassVar[str] = "output"
    COMPRESS_LEVEL: ClassVar[int] = 4

    def __init__(self) -> None:
        self.prefix_append = ""

    def folder(self, ctx: RunContext) -> str:
        return ctx.folders.output

    def run(self, ctx: RunContext, images: ImageBatch, filename_prefix: str = "ComfyUI",
            prompt: dict[str, Any] | None = None, extra_pnginfo: dict[str, Any] | None = None) -> NodeResult:
        filename_prefix += self.prefix_append
        width, height = images.size
        folder, filename, counter, subfolder, _ = get_save_image_path(filename_prefix, self.folder(ctx),
                                                                      width, height)
        results = []
        for batch_number, img in enumerate(images.images):
            metadata = PngInfo()
            if prompt is not None:
                metadata.add_text("prompt", json.dumps(prompt))
            if extra_pnginfo is not None:
                for key in extra_pnginfo:
                    metadata.add_text(key, json.dumps(extra_pnginfo[key]))
            file = f"{filename.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
            data = png_bytes(img, self.COMPRESS_LEVEL, metadata)
            with open(os.path.join(folder, file), "wb") as f:
                f.write(data)
            results.append({"filename": file, "subfolder": subfolder, "type": self.TYPE})
            counter += 1
        return NodeResult((), {"images": results})


class PreviewImage(SaveImage):
    NAME = "PreviewImage"
    TYPE = "temp"
    COMPRESS_LEVEL = 1

    def __init__(self) -> None:
        # Same alphabet as ComfyUI (no 'w', 'p' twice); one prefix per cached node instance.
        self.prefix_append = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    def folder(self, ctx: RunContext) -> str:
        return ctx.folders.temp

    def run(self, ctx: RunContext, images: ImageBatch, filename_prefix: str = "ComfyUI",
            prompt: dict[str, Any] | None = None, extra_pnginfo: dict[str, Any] | None = None) -> NodeResult:
        return super().run(ctx, images, "ComfyUI", prompt, extra_pnginfo)


class SaveImageWebsocket(Node):
    """custom_nodes/websocket_image_save.py: one progress tick (with a PNG preview) per image."""

    NAME = "SaveImageWebsocket"
    REPORTS_PROGRESS = True

    @staticmethod
    def _is_changed(folders: Folders, images: Any) -> float:
        # The server calls IS_CHANGED with literal inputs only, so this raises (images is a link)
        # and the node's is_changed becomes NaN: never cached, like time.time() intends.
        return time.time()

    is_changed = _is_changed

    def run(self, ctx: RunContext, images: ImageBatch) -> NodeResult:
        total = len(images)
        for step, img in enumerate(images.images):
            ctx.progress(min(step, total), total, img)
        return NodeResult(())


NODE_CLASSES: dict[str, type[Node]] = {
    cls.NAME: cls
    for cls in (EmptyImage, ImageInvert, SaveImage, PreviewImage, LoadImage, ImageScale, ImageBlur, ImageBlend,
                ImageSharpen, SaveImageWebsocket)
}


def node_info(name: str, folders: Folders) -> dict[str, Any]:
    """The /object_info entry; LoadImage's file list is read from input/ as the server does."""
    info = copy.deepcopy(OBJECT_INFO[name])
    info["input"] = NODE_CLASSES[name].input_types(folders)
    return info
