"""Drawing the emulator's images with Pillow.

Every image is real: the requested size exactly, the requested encoding (PNG / JPEG / WebP),
a background colour derived from a hash of the prompt, a few shapes whose placement depends on
a variant number (so the n images of one request, or two calls with the same prompt, differ),
the prompt text wrapped in a panel, a stamp in a corner (see :func:`stamp_text`: the index "#2"
when the request asked for several images, otherwise "seed 42" or the emulator's "call 7") and a
footer on a dark band. An edit starts from the first input image (scaled to cover the output),
tints the masked area, shows the other inputs as thumbnails and writes the prompt on top, so a
person can tell an edit happened; its text sits on dark boxes, so it reads on a white sketch too.
"""
from __future__ import annotations

import base64
import binascii
import colorsys
import functools
import hashlib
import io
import re
import textwrap
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont, ImageOps

from ..model import sniff_mime  # noqa: F401  (one magic-bytes sniffer for the package; re-exported)

#: Gemini's pixel sizes for ``image_config.aspect_ratio`` at the 1K tier
ASPECT_RATIO_SIZES = {
    "1:1": (1024, 1024), "2:3": (832, 1248), "3:2": (1248, 832), "3:4": (864, 1184),
    "4:3": (1184, 864), "4:5": (896, 1152), "5:4": (1152, 896), "9:16": (768, 1344),
    "16:9": (1344, 768), "21:9": (1536, 672),
}
#: ``image_config.image_size`` tiers (a multiplier of the 1K size)
IMAGE_SIZE_SCALE = {"1K": 1, "2K": 2, "4K": 4}

MIME_BY_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
INPUT_MIMES = ("image/png", "image/jpeg", "image/webp", "image/gif")

#: largest input picture the emulator decodes (a decompression-bomb guard)
MAX_INPUT_PIXELS = 8192 * 8192

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$",
                       re.S)


def aspect_ratio_size(aspect_ratio: str, image_size: str = "1K") -> Tuple[int, int]:
    """Pixel size for an aspect ratio (``"16:9"`` -> 1344x768) at a tier (``"2K"`` doubles)."""
    w, h = ASPECT_RATIO_SIZES[aspect_ratio]
    k = IMAGE_SIZE_SCALE[image_size]
    return w * k, h * k


def parse_data_url(url: str) -> Tuple[Optional[str], bytes]:
    """``data:<mime>;base64,<payload>`` -> (mime, bytes); ValueError when malformed."""
    m = _DATA_URL.match(url)
    if not m:
        raise ValueError("a data URL must look like 'data:image/png;base64,...'")
    try:
        data = base64.b64decode(m.group("data").strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the data URL's payload is not valid base64") from None
    return m.group("mime"), data


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes fully; ValueError when they are not a decodable image."""
    if sniff_mime(data) is None:
        raise ValueError("not a PNG, JPEG, WebP or GIF image")
    try:
        im = Image.open(io.BytesIO(data))
        if im.size[0] * im.size[1] > MAX_INPUT_PIXELS:
            raise ValueError(f"{im.size[0]}x{im.size[1]} pixels is too large")
        im.load()
        return im
    except ValueError:
        raise
    except Exception as e:  # truncated / damaged files, decompression bombs
        raise ValueError(f"the image cannot be decoded ({e})") from None


# -- drawing ------------------------------------------------------------------------------------

@dataclass
class RenderSpec:
    prompt: str
    width: int
    height: int
    fmt: str = "png"                      # png | jpeg | webp
    background: str = "opaque"            # opaque | transparent
    index: int = 0                        # 0-based index within the request ("#1" is drawn if count > 1)
    variant: object = 0                   # varies the shapes: "seed:<n>" or the emulator's call counter
    count: int = 1                        # how many images the request itself asked for (its n)
    compression: Optional[int] = None     # 0-100 for jpeg / webp
    model: str = ""
    inputs: Sequence[bytes] = field(default_factory=tuple)   # edit: input images (first is the base)
    mask: Optional[bytes] = None          # edit: transparent areas are "repainted"
    caption: str = ""                     # small footer text


@functools.lru_cache(maxsize=64)
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _digest(*parts: object) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(repr(p).encode("utf-8", "replace"))
        h.update(b"\x00")
    return h.digest()


def prompt_colour(prompt: str) -> Tuple[int, int, int]:
    """A stable, fairly saturated colour for a prompt."""
    d = _digest("colour", prompt)
    hue = int.from_bytes(d[:2], "big") / 65535.0
    sat = 0.45 + d[2] / 255.0 * 0.35
    val = 0.55 + d[3] / 255.0 * 0.3
    r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(rgb: Tuple[int, int, int], hue_shift: float, val: float, alpha: int) -> Tuple[int, int, int, int]:
    h, s, _ = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    r, g, b = colorsys.hsv_to_rgb((h + hue_shift) % 1.0, min(1.0, s + 0.1), val)
    return int(r * 255), int(g * 255), int(b * 255), alpha


def _wrap(text: str, font, max_width: int, max_lines: int) -> List[str]:
    avg = max(1.0, font.getlength("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ") / 53.0)
    chars = max(8, int(max_width / avg))
    lines = textwrap.wrap(" ".join(text.split()), width=chars) or [""]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: max(0, chars - 1)].rstrip() + "\u2026"
    return lines


def stamp_text(spec: RenderSpec) -> str:
    """The corner stamp of an image. "#2" only when the request itself asked for several images:
    a client that fans ``-n 4`` out into four n=1 calls would otherwise get "#1" on every picture
    (the emulator cannot know the client's index). An n=1 image is stamped with what makes it
    differ from its neighbours instead: "seed 42" (deterministic) or the emulator's "call 7"."""
    if spec.count > 1:
        return f"#{spec.index + 1}"
    v = spec.variant
    if isinstance(v, str) and v.startswith("seed:"):
        return "seed " + v[5:]
    if isinstance(v, int) and not isinstance(v, bool) and v > 0:
        return f"call {v}"
    return ""


def render(spec: RenderSpec) -> bytes:
    """Draw one image and encode it; returns the file bytes."""
    w, h = int(spec.width), int(spec.height)
    fmt = spec.fmt.lower()
    transparent = spec.background == "transparent" and fmt in ("png", "webp")
    colour = prompt_colour(spec.prompt)
    rnd = _digest("shapes", spec.prompt, spec.variant, spec.index)
    short = min(w, h)

    # an RGB canvas blends the translucent drawing below; a transparent one keeps its alpha
    if spec.inputs:
        first = open_image(spec.inputs[0])
        base = ImageOps.fit(first.convert("RGBA"), (w, h))
        if not transparent:
            flat = Image.new("RGB", (w, h), (255, 255, 255))
            flat.paste(base, (0, 0), base)
            base = flat
        if spec.mask is not None:
            mask = open_image(spec.mask).convert("RGBA").resize((w, h))
            repaint = mask.getchannel("A").point(lambda a: 150 if a < 128 else 0)
            base.paste(Image.new(base.mode, (w, h), colour + ((255,) if base.mode == "RGBA" else ())),
                       (0, 0), repaint)
    elif transparent:
        base = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    else:
        base = Image.new("RGB", (w, h), colour)
    draw = ImageDraw.Draw(base, "RGBA")

    # a few shapes, placed from the variant digest (fewer and fainter over an edited picture)
    for i in range(2 if spec.inputs else 4):
        b = rnd[i * 6:(i + 1) * 6]
        cx, cy = b[0] / 255.0 * w, b[1] / 255.0 * h
        r = short * (0.08 + b[2] / 255.0 * 0.22)
        fill = _shade(colour, (b[3] / 255.0 - 0.5) * 0.5, 0.35 + b[4] / 255.0 * 0.6,
                      255 if transparent else 110 if spec.inputs else 170)
        box = [cx - r, cy - r, cx + r, cy + r]
        if b[5] % 3 == 0:
            draw.rectangle(box, fill=fill)
        elif b[5] % 3 == 1:
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)

    # the prompt in a panel
    pad = max(4, short // 40)
    fsize = max(10, short // 20)
    font = _font(fsize)
    panel_w = int(w * 0.84)
    label = ("EDIT: " if spec.inputs else "") + (spec.prompt or "(empty prompt)")
    lines = _wrap(label, font, panel_w - 2 * pad, max_lines=max(1, min(8, h // (fsize * 3))))
    line_h = int(fsize * 1.25)
    panel_h = line_h * len(lines) + 2 * pad
    x0, y0 = (w - panel_w) // 2, max(0, (h - panel_h) // 2)
    draw.rectangle([x0, y0, x0 + panel_w, y0 + panel_h], fill=(0, 0, 0, 150))
    for i, line in enumerate(lines):
        draw.text((x0 + pad, y0 + pad + i * line_h), line, font=font, fill=(255, 255, 255, 255))

    # the stamp ("#2" / "seed 42" / "call 7"), large, top-left
    stamp = stamp_text(spec)
    if stamp:
        big = _font(max(12, short // (9 if spec.count > 1 else 14)))
        draw.text((pad * 2, pad), stamp, font=big, fill=(255, 255, 255, 255),
                  stroke_width=max(1, short // 256), stroke_fill=(0, 0, 0, 255))

    # other inputs of an edit as thumbnails along the bottom
    if len(spec.inputs) > 1:
        t = max(16, short // 6)
        for k, data in enumerate(spec.inputs[1:6]):
            thumb = ImageOps.fit(open_image(data).convert("RGBA"), (t, t))
            pos = (w - (k + 1) * (t + pad), h - t - pad * 3)
            base.paste(thumb, pos, thumb)
            draw.rectangle([pos[0], pos[1], pos[0] + t, pos[1] + t], outline=(255, 255, 255, 255),
                           width=max(1, t // 32))

    caption = spec.caption or " \u00b7 ".join(
        x for x in ("jupyter-imagegen emulator", spec.model, f"{w}x{h}", fmt) if x)
    small = _font(max(8, short // 48))
    pos = (pad * 2, h - pad - int(small.size * 1.3) if hasattr(small, "size") else h - 20)
    # on a dark band: white text drawn straight on a light picture (a white sketch to edit) vanished
    left, top, right, bottom = draw.textbbox(pos, caption, font=small)
    m = max(2, pad // 2)
    draw.rectangle([left - m, top - m, right + m, bottom + m], fill=(0, 0, 0, 170))
    draw.text(pos, caption, font=small, fill=(255, 255, 255, 230))

    return encode(base, fmt, transparent=transparent, compression=spec.compression)


def encode(im: Image.Image, fmt: str, *, transparent: bool = False,
           compression: Optional[int] = None) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        (im if transparent else im.convert("RGB")).save(buf, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        quality = 90 if compression is None else max(1, min(95, int(compression)))
        im.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt == "webp":
        quality = 90 if compression is None else max(0, min(100, int(compression)))
        (im if transparent else im.convert("RGB")).save(buf, format="WEBP", quality=quality, method=0)
    else:
        raise ValueError(f"unsupported output format {fmt!r}")
    return buf.getvalue()


def placeholder_image(text: str, size: Tuple[int, int] = (512, 512)) -> bytes:
    """A grey stand-in for an input image the emulator cannot fetch (no internet)."""
    im = Image.new("RGB", size, (128, 128, 128))
    d = ImageDraw.Draw(im)
    font = _font(max(10, min(size) // 24))
    for i, line in enumerate(_wrap(text, font, size[0] - 20, 10)):
        d.text((10, 10 + i * int(font.size * 1.3) if hasattr(font, "size") else 10 + i * 14), line,
               font=font, fill=(255, 255, 255))
    return encode(im, "png")


def cut_image(data: bytes) -> bytes:
    """`data` cut short the way a broken upstream cuts it: a PNG keeps every chunk intact (valid
    lengths and CRCs, IEND) but its compressed pixel stream stops half-way, so only a full decode
    notices; other formats (JPEG, WebP) simply end half-way."""
    import struct
    import zlib
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return data[: max(16, len(data) // 2)]
    pos, head, idat = 8, b"", b""
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos:pos + 12 + length]
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        elif kind != b"IEND" and not idat:
            head += chunk
        pos += 12 + length
    body = idat[: max(1, len(idat) // 2)]
    chunk = struct.pack(">I", len(body)) + b"IDAT" + body + struct.pack(">I", zlib.crc32(b"IDAT" + body))
    end = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return data[:8] + head + chunk + end
