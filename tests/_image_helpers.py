"""Test images: `make_png()` is the one factory for the small pictures tests send and decode."""
from __future__ import annotations

import io
from typing import Tuple, Union

from PIL import Image

Color = Union[int, str, Tuple[int, ...]]


def make_png(size: Tuple[int, int] = (64, 48), color: Color = (200, 40, 40), mode: str = "RGB",
             fmt: str = "PNG") -> bytes:
    """A `size` picture of one `color` in `mode`, encoded as `fmt` (PNG unless told: JPEG, GIF, WEBP...)."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format=fmt)
    return buf.getvalue()
