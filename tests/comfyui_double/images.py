"""Image batches for the ComfyUI double: Pillow images standing in for ComfyUI's float tensors.

ComfyUI passes IMAGE values as float32 tensors `[batch, height, width, 3]` in 0..1 and MASK
values as `[batch, height, width]`. The double keeps 8-bit Pillow images instead and treats
pixel value v as the float32 `v / 255`, which is exactly what `LoadImage` and `EmptyImage`
produce. Where a node's float arithmetic changes the 8-bit result (ImageInvert), a lookup table
reproduces the float32 chain ending in `SaveImage`'s `uint8(255 * x)` truncation, so saved PNGs
of those chains are byte-identical to the real server's (checked against 01_basic_success).

`str()` of a batch gives torch's tensor repr, which the real server puts into
`execution_error.current_inputs`.
"""

from __future__ import annotations

import io
import itertools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PRINT_PRECISION = 4
PRINT_THRESHOLD = 1000
PRINT_EDGEITEMS = 3
PRINT_LINEWIDTH = 80


def f32(x: float) -> float:
    """Rounds a Python float to float32, as a torch float32 tensor would hold it."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def _save_byte(x: float) -> int:
    """What `np.clip(255. * x, 0, 255).astype(np.uint8)` gives for a float32 value x."""
    return int(min(max(f32(255.0 * x), 0.0), 255.0))


# ImageInvert computes `1.0 - image` in float32; the table maps the stored byte to the byte
# SaveImage would write. For v >= 65 this is often 254 - v, not 255 - v.
INVERT_LUT: list[int] = [_save_byte(f32(1.0 - f32(v / 255))) for v in range(256)]


@dataclass(frozen=True)
class ImageBatch:
    """An IMAGE value: RGB images of one size. The same object may repeat (a cheap batch)."""

    images: tuple[Image.Image, ...]

    @property
    def size(self) -> tuple[int, int]:
        return self.images[0].size

    def __len__(self) -> int:
        return len(self.images)

    def map(self, fn: Callable[[Image.Image], Image.Image]) -> ImageBatch:
        """Applies fn per image; repeated image objects are processed once."""
        done: dict[int, Image.Image] = {}
        out = []
        for img in self.images:
            key = id(img)
            if key not in done:
                done[key] = fn(img)
            out.append(done[key])
        return ImageBatch(tuple(out))

    def __str__(self) -> str:
        width, height = self.size
        shape = (len(self.images), height, width, 3)

        def get(index: tuple[int, ...]) -> float:
            b, y, x, c = index
            return f32(self.images[b].getpixel((x, y))[c] / 255)  # type: ignore[index]

        return tensor_repr(shape, get)


@dataclass(frozen=True)
class MaskBatch:
    """A MASK value: float32 ('F' mode) Pillow images, as `LoadImage` makes them."""

    masks: tuple[Image.Image, ...]

    def __str__(self) -> str:
        width, height = self.masks[0].size
        shape = (len(self.masks), height, width)

        def get(index: tuple[int, ...]) -> float:
            b, y, x = index
            return float(self.masks[b].getpixel((x, y)))  # type: ignore[arg-type]

        return tensor_repr(shape, get)


def png_bytes(img: Image.Image, compress_level: int, pnginfo: PngInfo | None = None) -> bytes:
    """Encodes like ComfyUI's savers: `img.save(..., pnginfo=..., compress_level=...)`."""
    out = io.BytesIO()
    if pnginfo is None:
        img.save(out, format="PNG", compress_level=compress_level)
    else:
        img.save(out, format="PNG", pnginfo=pnginfo, compress_level=compress_level)
    return out.getvalue()


def preview_png(img: Image.Image) -> bytes:
    """Encodes a websocket preview like the server's send_image (quality=95, compress_level=1)."""
    out = io.BytesIO()
    img.save(out, format="PNG", quality=95, compress_level=1)
    return out.getvalue()


class _Formatter:
    """torch._tensor_str._Formatter for float tensors."""

    def __init__(self, values: Sequence[float]) -> None:
        self.int_mode = True
        self.sci_mode = False
        self.max_width = 1
        nonzero = [v for v in values if math.isfinite(v) and v != 0]
        if not nonzero:
            return
        absolute = [abs(v) for v in nonzero]
        vmin, vmax = min(absolute), max(absolute)
        self.int_mode = all(v == math.ceil(v) for v in nonzero)
        if self.int_mode:
            if vmax / vmin > 1000.0 or vmax > 1.0e8:
                self.sci_mode = True
                self.max_width = max(len(f"{v:.{PRINT_PRECISION}e}") for v in nonzero)
            else:
                self.max_width = max(len(f"{v:.0f}") + 1 for v in nonzero)
        elif vmax / vmin > 1000.0 or vmax > 1.0e8 or vmin < 1.0e-4:
            self.sci_mode = True
            self.max_width = max(len(f"{v:.{PRINT_PRECISION}e}") for v in nonzero)
        else:
            self.max_width = max(len(f"{v:.{PRINT_PRECISION}f}") for v in nonzero)

    def format(self, value: float) -> str:
        if self.sci_mode:
            text = f"{value:{self.max_width}.{PRINT_PRECISION}e}"
        elif self.int_mode:
            text = f"{value:.0f}"
            if not (math.isinf(value) or math.isnan(value)):
                text += "."
        else:
            text = f"{value:.{PRINT_PRECISION}f}"
        return (self.max_width - len(text)) * " " + text


def _edge_indices(size: int, summarize: bool) -> list[int]:
    if summarize and size > 2 * PRINT_EDGEITEMS:
        return [*range(PRINT_EDGEITEMS), *range(size - PRINT_EDGEITEMS, size)]
    return list(range(size))


def tensor_repr(shape: tuple[int, ...], get: Callable[[tuple[int, ...]], float]) -> str:
    """`str(tensor)` of a float32 CPU tensor with torch's default print options."""
    summarize = math.prod(shape) > PRINT_THRESHOLD
    picked = itertools.product(*(_edge_indices(size, summarize) for size in shape))
    formatter = _Formatter([get(index) for index in picked])

    def render(prefix: tuple[int, ...], indent: int) -> str:
        dim = len(shape) - len(prefix)
        size = shape[len(prefix)]
        cut = summarize and size > 2 * PRINT_EDGEITEMS
        head = range(PRINT_EDGEITEMS) if cut else range(size)
        tail = range(size - PRINT_EDGEITEMS, size) if cut else range(0)
        if dim == 1:
            data = [formatter.format(get((*prefix, i))) for i in head]
            if cut:
                data.append(" ...")
            data += [formatter.format(get((*prefix, i))) for i in tail]
            per_line = max(1, math.floor((PRINT_LINEWIDTH - indent) / (formatter.max_width + 2)))
            lines = [", ".join(data[i : i + per_line]) for i in range(0, len(data), per_line)]
            return "[" + ("," + "\n" + " " * (indent + 1)).join(lines) + "]"
        slices = [render((*prefix, i), indent + 1) for i in head]
        if cut:
            slices.append("...")
        slices += [render((*prefix, i), indent + 1) for i in tail]
        return "[" + ("," + "\n" * (dim - 1) + " " * (indent + 1)).join(slices) + "]"

    return "tensor(" + render((), len("tensor(")) + ")"
