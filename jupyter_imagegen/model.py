"""Data model: ImageRequest -> ImageResponse(artifacts).

`Artifact` holds the raw bytes of one image exactly as received; `.image` decodes
them lazily into a PIL image. Jupyter displays an Artifact through `_repr_png_`
/ `_repr_jpeg_`.
"""
from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import threading
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .secret import Secret, as_secret
from .errors import ImageAPIError, InputImageError
from .memory import memory
from .render import (PREVIEW_MIMES, DEFAULT_PREVIEW_MAX_SIDE, display_unless_shown, downscale, response_mimebundle,
                     response_outputs)

MIME_BY_FORMAT = {"png": "image/png", "jpeg": "image/jpeg", "jpg": "image/jpeg", "webp": "image/webp",
                  "gif": "image/gif"}
FORMAT_BY_MIME = {"image/png": "png", "image/jpeg": "jpeg", "image/webp": "webp", "image/gif": "gif"}
EXT_BY_MIME = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/gif": ".gif"}

#: the largest input image we will send (OpenAI's documented limit for edits is 50 MB per file;
#: we stop at 25 MB so a request body stays well under the APIs' limits)
MAX_INPUT_BYTES = 25 * 1024 * 1024
#: input images above this many pixels are refused (a decompression bomb guard, 16k x 16k)
MAX_INPUT_PIXELS = 16384 * 16384
#: the most pixels a received (or cached) image may claim (Pillow's own bomb limit is usually lower)
MAX_RECEIVED_PIXELS = 16384 * 16384

_DATA_URL = re.compile(r"^data:(?P<mime>image/[a-zA-Z0-9.+-]+)?(?P<params>(;[^,;]*)*?);base64,(?P<data>.*)$", re.S)


def sniff_mime(data: bytes) -> Optional[str]:
    """The image type of `data` from its magic bytes, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF"}


def _open(data: bytes, *, check: bool = True):
    """A PIL image of `data` (header read, no pixel decoded), opened by the plugin of its sniffed
    format. `check` refuses a decompression bomb: more pixels than Pillow's MAX_IMAGE_PIXELS
    (Pillow itself only warns up to twice its limit; set PIL.Image.MAX_IMAGE_PIXELS to allow
    bigger images). No warnings filter is touched: `warnings.catch_warnings` is process-wide
    state, and images are decoded in worker threads."""
    from PIL import Image
    fmt = _PIL_FORMAT.get(sniff_mime(data) or "")
    Image.preinit()
    if fmt == "WEBP" and "WEBP" not in Image.OPEN:
        try:
            from PIL import WebPImagePlugin  # noqa: F401  (registers itself)
        except ImportError:
            pass
    if fmt not in Image.OPEN:
        raise Image.UnidentifiedImageError("not a PNG, JPEG, WebP or GIF image this Pillow can read")
    factory, _accept = Image.OPEN[fmt]
    im = factory(io.BytesIO(data), None)
    limit = Image.MAX_IMAGE_PIXELS
    if check and limit and im.size[0] * im.size[1] > limit:
        im.close()
        raise Image.DecompressionBombError(f"Image size ({im.size[0] * im.size[1]} pixels) exceeds limit of "
                                           f"{limit} pixels, could be decompression bomb DOS attack.")
    return im


#: the most frames an animated answer (GIF, APNG, WebP) may have; each is decoded in the check
MAX_FRAMES = 1000
_STRICT = threading.Lock()
_strict = {"decoding": 0, "saved": False}


@contextlib.contextmanager
def _strict_decoding():
    """Decode with Pillow's `ImageFile.LOAD_TRUNCATED_IMAGES` off, whatever the notebook set (a
    common setting that makes Pillow fill a cut image with grey instead of raising): a cut image
    must not pass the check. The flag is process-wide: it is off while any check decodes (the
    decodes of a fan-out run in several threads at once) and set back to the user's value when
    the last one ends."""
    from PIL import ImageFile
    if not ImageFile.LOAD_TRUNCATED_IMAGES and not _strict["decoding"]:
        yield          # the usual case: strict already, and no other check switched it off for us
        return
    with _STRICT:
        if _strict["decoding"] == 0:
            _strict["saved"] = ImageFile.LOAD_TRUNCATED_IMAGES
        _strict["decoding"] += 1
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        with _STRICT:
            _strict["decoding"] -= 1
            if _strict["decoding"] == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _strict["saved"]


def _too_many_pixels(size: Tuple[int, int], max_pixels: int) -> Optional[str]:
    """Why an image of `size` is refused (None when it is within `max_pixels`)."""
    w, h = size
    if w * h > max_pixels:
        return f"refused as a possible decompression bomb ({w}x{h} pixels is over the limit of {max_pixels:,})"
    return None


def _image_size(data: bytes) -> Tuple[Optional[int], Optional[int]]:
    try:
        with _open(data, check=False) as im:  # reads the header only
            return im.size
    except Exception:
        return None, None


def _open_checked(data: bytes):
    """`_open` that refuses a decompression bomb before any pixel is decoded."""
    return _open(data, check=True)


@dataclass
class Usage:
    input_tokens: Optional[int] = None
    output_tokens: Optional[int] = None
    total_tokens: Optional[int] = None
    cost: Optional[float] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_api(cls, raw: Any) -> Optional["Usage"]:
        if not isinstance(raw, dict):
            return None
        def num(*keys):
            # a count or a cost: a finite number below 2**63 (so adding two can never raise: an
            # int too large for a float would make `int + float` an OverflowError)
            for k in keys:
                v = raw.get(k)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and -2**63 < v < 2**63:
                    return v
            return None
        return cls(input_tokens=num("input_tokens", "prompt_tokens"),
                   output_tokens=num("output_tokens", "completion_tokens"),
                   total_tokens=num("total_tokens"),
                   cost=num("cost"), raw=raw)

    def __add__(self, other: Optional["Usage"]) -> "Usage":
        if other is None:
            return self
        def add(a, b):
            return b if a is None else a if b is None else a + b
        return Usage(add(self.input_tokens, other.input_tokens), add(self.output_tokens, other.output_tokens),
                     add(self.total_tokens, other.total_tokens), add(self.cost, other.cost), {})


class Artifact:
    """One image: the bytes received, their mime type, and a PIL view decoded on demand.

    Memory: the bytes count against the process's image budget (`jupyter_imagegen.memory`);
    beyond it the least recently used artifacts move their bytes to a spool file and `data`
    reads them back when used. Decoded pixels are not kept: `image` decodes again once nobody
    holds the last decoded image (the client keeps the pixels it decoded to check an answer
    only until the preview is made from them)."""

    __slots__ = ("_data", "nbytes", "mime_type", "index", "revised_prompt", "source_url", "metadata",
                 "path", "_size", "_pixels", "_pixels_ref", "_previews", "_spooled", "__weakref__")

    def __init__(self, data: bytes, mime_type: Optional[str] = None, *, index: int = 0,
                 revised_prompt: Optional[str] = None, source_url: Optional[str] = None,
                 metadata: Optional[Dict[str, Any]] = None, path: Optional[str] = None):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"Artifact data must be bytes, not {type(data).__name__}")
        data = bytes(data)
        self._data: Optional[bytes] = data
        #: the length of `data` (known without reading spooled bytes back)
        self.nbytes = len(data)
        sniffed = sniff_mime(data)
        self.mime_type = sniffed or mime_type or "application/octet-stream"
        self.index = index
        self.revised_prompt = revised_prompt
        self.source_url = source_url
        self.metadata: Dict[str, Any] = dict(metadata or {})
        self.path = path
        self._size: Optional[Tuple[Optional[int], Optional[int]]] = None
        self._pixels = None        # decoded pixels kept until a preview is made from them
        self._pixels_ref = None    # weak: the last decoded image, while anyone holds it
        self._previews: Dict[int, Tuple[str, bytes, Tuple[Optional[int], Optional[int]]]] = {}
        self._spooled = False      # the bytes are also in this artifact's spool file
        memory.track(self, self.nbytes)

    def __reduce__(self):
        return (_artifact, (self.data, self.mime_type, self.index, self.revised_prompt, self.source_url,
                            self.metadata, self.path))

    # -- bytes, in memory or spooled ------------------------------------------------------------
    @property
    def data(self) -> bytes:
        """The image bytes exactly as received (read back from the spool file if they moved out)."""
        data = self._data
        if data is not None:
            memory.touch(self)
            return data
        path = memory.spool_path(self, self.extension)
        with open(path, "rb") as f:
            data = f.read()
        if len(data) != self.nbytes:
            raise OSError(f"the spooled copy of this image ({path}) was changed: {len(data):,} bytes, "
                          f"expected {self.nbytes:,}")
        self._data = data
        memory.note_read_back()
        memory.track(self, self.memory_cost())
        return data

    @property
    def in_memory(self) -> bool:
        """False while the bytes are only in the spool file (moved out by the memory budget)."""
        return self._data is not None

    def memory_cost(self) -> int:
        """Bytes this artifact holds in memory: its bytes, kept pixels, previews."""
        data = self._data
        cost = len(data) if data is not None else 0
        im = self._pixels
        if im is not None:
            cost += im.width * im.height * min(4, max(1, len(im.getbands())))
        for _, pdata, _ in list(self._previews.values()):
            if pdata is not data:
                cost += len(pdata)
        return cost

    def spill(self) -> None:
        """Move the bytes to the spool file, drop kept pixels and previews (the memory budget
        calls this; `data` reads the bytes back when they are used)."""
        data = self._data
        if data is not None and not self._spooled:
            path = memory.spool_path(self, self.extension)
            with open(path, "wb") as f:
                f.write(data)
            self._spooled = True
        self._data = None
        self._pixels = None
        self._previews = {}
        memory.track(self, 0, used=False)

    # -- geometry -------------------------------------------------------------------------------
    @property
    def size(self) -> Tuple[Optional[int], Optional[int]]:
        if self._size is None:
            self._size = _image_size(self.data)
        return self._size

    @property
    def width(self) -> Optional[int]:
        return self.size[0]

    @property
    def height(self) -> Optional[int]:
        return self.size[1]

    @property
    def format(self) -> str:
        return FORMAT_BY_MIME.get(self.mime_type, "bin")

    @property
    def extension(self) -> str:
        return EXT_BY_MIME.get(self.mime_type, ".bin")

    # -- PIL view -------------------------------------------------------------------------------
    @property
    def image(self):
        """The image as a PIL.Image: decoded on access, and again once no one holds the last one
        (so a long session does not keep every image's pixels)."""
        im = self._held_image()
        return im if im is not None else self.decode(keep=False)

    def _held_image(self):
        """The decoded pixels if they are still here (kept, or held by someone), else None."""
        if self._pixels is not None:
            return self._pixels
        return self._pixels_ref() if self._pixels_ref is not None else None

    def decode(self, *, keep: bool = True, max_pixels: Optional[int] = None):
        """Decode every pixel now: raises on a damaged or truncated image and refuses a
        decompression bomb (over `max_pixels`, or Pillow's limit) before decoding. `keep` holds
        the pixels until a preview is made from them (counted in the memory budget)."""
        data = self.data
        im = _open_checked(data)   # a decompression bomb raises before any pixel is decoded
        refused = _too_many_pixels(im.size, max_pixels) if max_pixels is not None else None
        if refused:
            im.close()
            raise ValueError(refused)
        with _strict_decoding():
            if getattr(im, "is_animated", False):   # every frame, not only the first one shown
                frames = getattr(im, "n_frames", 1)
                if frames > MAX_FRAMES:
                    im.close()
                    raise ValueError(f"an animation of {frames} frames is over the limit of {MAX_FRAMES}")
                for i in range(frames):
                    im.seek(i)
                    im.load()
                im.seek(0)
            im.load()
        self._size = im.size
        self._pixels_ref = weakref.ref(im)
        if keep:
            self._pixels = im
            memory.track(self, self.memory_cost())
        return im

    def decode_problem(self, max_pixels: int = None) -> Optional[str]:
        """Why this image must not be returned as a success (None when every pixel decoded):
        the check of each image the API sends, and of each image read back from the request
        cache. The pixels are kept for the preview (`decode(keep=True)`)."""
        try:
            self.decode(keep=True, max_pixels=MAX_RECEIVED_PIXELS if max_pixels is None else max_pixels)
        except Exception as e:
            text = str(e)
            if "decompression bomb" in text:
                return text if text.startswith("refused") else f"refused as a possible decompression bomb ({text})"
            return f"the image data is damaged and cannot be decoded ({type(e).__name__}: {text})"
        return None

    def preview(self, max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE
                ) -> Tuple[str, bytes, Tuple[Optional[int], Optional[int]]]:
        """(mime, bytes, (w, h)) of a PNG or JPEG preview no longer than `max_side` px.

        The original bytes when the image fits and is a PNG or JPEG (`PREVIEW_MIMES`); otherwise a
        downscaled copy (PNG with transparency, else JPEG), made once and kept (within the memory
        budget). The pixels the client decoded are let go once a preview is made."""
        key = max_side or 0
        hit = self._previews.get(key)
        if hit is not None:
            memory.touch(self)
            return hit
        w, h = self.size
        if (not max_side or (w is not None and h is not None and max(w, h) <= max_side)) \
                and self.mime_type in PREVIEW_MIMES:
            result = (self.mime_type, self.data, (w, h))   # the bytes themselves: nothing to keep
        else:
            try:
                result = downscale(self._preview_source(key), max_side)
            except Exception:  # undecodable: show nothing rather than break the gallery
                return ("", b"", (None, None))
            self._previews[key] = result
        had_pixels = self._pixels is not None
        self._pixels = None
        if had_pixels or key in self._previews:
            memory.track(self, self.memory_cost())
        return result

    def _preview_source(self, key: int):
        """Pixels to downscale: kept pixels, a larger preview already made, else a new decode."""
        im = self._held_image()
        if im is not None:
            return im
        if key:
            larger = [p for k, p in list(self._previews.items()) if k == 0 or k >= 2 * key]
            if larger:
                mime, data, _ = min(larger, key=lambda p: len(p[1]))
                src = _open_checked(data)
                src.load()
                return src
        return self.image

    def verify(self) -> bool:
        """True when the bytes decode as an image (Pillow's verify, no full decode) and are not
        a decompression bomb."""
        try:
            with _open_checked(self.data) as im:
                im.verify()
            return True
        except Exception:
            return False

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the original bytes (no re-encoding). A directory gets a generated file name."""
        p = Path(path)
        if p.is_dir():
            p = p / f"image-{self.index}{self.extension}"
        elif not p.suffix:
            p = p.with_suffix(self.extension)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(self.data)
        os.replace(tmp, p)
        self.path = str(p)
        return p

    def to_data_url(self) -> str:
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode('ascii')}"

    # -- Jupyter display ------------------------------------------------------------------------
    def _repr_png_(self) -> Optional[bytes]:
        if self.mime_type == "image/png":
            return self.data
        if self.mime_type in ("image/jpeg",):
            return None
        try:  # webp/gif: convert for frontends that do not render them
            buf = io.BytesIO()
            self.image.save(buf, format="PNG")
            return buf.getvalue()
        except Exception:
            return None

    def _repr_jpeg_(self) -> Optional[bytes]:
        return self.data if self.mime_type == "image/jpeg" else None

    def __len__(self) -> int:
        return self.nbytes

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Artifact) and other.nbytes == self.nbytes and other.mime_type == self.mime_type
                and other.data == self.data)

    def __hash__(self) -> int:
        return hash((self.mime_type, self.data))

    def __repr__(self) -> str:
        w, h = self.size
        dims = f"{w}x{h}" if w else "?x?"
        return f"<Artifact {self.format} {dims} {self.nbytes:,} bytes index={self.index}>"


def _artifact(data, mime_type, index, revised_prompt, source_url, metadata, path) -> Artifact:
    """Unpickle / copy an Artifact (a new one, tracked by the memory budget)."""
    return Artifact(data, mime_type, index=index, revised_prompt=revised_prompt, source_url=source_url,
                    metadata=metadata, path=path)


InputImageLike = Union[str, os.PathLike, bytes, bytearray, "Artifact", Any]


@dataclass(frozen=True)
class InputImage:
    """An input image normalised to bytes + mime type, validated before anything is sent."""
    data: bytes = field(repr=False)
    mime_type: str
    name: str = "image.png"

    @classmethod
    def from_any(cls, value: InputImageLike, *, max_bytes: int = MAX_INPUT_BYTES,
                 label: str = "input image") -> "InputImage":
        name = "image"
        if isinstance(value, InputImage):
            return value
        if isinstance(value, Artifact):
            data, name = value.data, f"image-{value.index}"
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        elif isinstance(value, str) and value.startswith("data:"):
            m = _DATA_URL.match(value)
            if not m or not m.group("mime"):
                raise InputImageError(label, f"a data URL must look like 'data:image/png;base64,...' "
                                   f"(got {value[:30]!r}...)")
            try:
                data = base64.b64decode(m.group("data"), validate=True)
            except (binascii.Error, ValueError):
                raise InputImageError(label, "the data URL's base64 payload is not valid base64") from None
        elif isinstance(value, (str, os.PathLike)):
            p = Path(value).expanduser()
            if not p.is_file():
                raise InputImageError(label, f"no such file {str(p)!r}")
            size = p.stat().st_size
            if size > max_bytes:
                raise InputImageError(label, f"{p.name} is {size / 1e6:.1f} MB; the limit is "
                                   f"{max_bytes / 1e6:.0f} MB — downscale or compress it first")
            data, name = p.read_bytes(), p.stem
        elif hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size"):  # PIL image
            buf = io.BytesIO()
            im = value
            if im.mode not in ("RGB", "RGBA", "L", "LA", "P"):
                im = im.convert("RGBA")
            im.save(buf, format="PNG")
            data = buf.getvalue()
        else:
            raise InputImageError(label, f"expected a file path, bytes, a data URL, a PIL image or an "
                               f"Artifact, got {type(value).__name__}")
        if len(data) > max_bytes:
            raise InputImageError(label, f"{len(data) / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB "
                               "limit — downscale or compress it first")
        mime = sniff_mime(data)
        if mime is None:
            raise InputImageError(label, f"not a PNG, JPEG, WebP or GIF image "
                               f"(starts with {data[:8]!r})")
        _check_decodable(data, label)
        return cls(data=data, mime_type=mime, name=name + EXT_BY_MIME[mime])

    def to_data_url(self) -> str:
        return f"data:{self.mime_type};base64,{base64.b64encode(self.data).decode('ascii')}"


def image_problem(data: bytes, max_pixels: int = MAX_INPUT_PIXELS) -> Optional[str]:
    """Why image bytes must not be used (None when they are fine). Pillow reads the header and
    verifies the structure without decoding the pixels; a header claiming more than `max_pixels`
    or Pillow's own limit (which only warns up to twice the limit: refused too) is a possible
    decompression bomb, and a file Pillow cannot parse is damaged. For input images (the images
    the API sends back are decoded completely instead: `Artifact.decode`)."""
    from PIL import Image
    try:
        with _open_checked(data) as im:
            refused = _too_many_pixels(im.size, max_pixels)
            if refused:
                return refused
            im.verify()
    except Image.DecompressionBombError as e:
        return f"refused as a possible decompression bomb ({e})"
    except Exception as e:
        return f"the image data is damaged and cannot be decoded ({type(e).__name__}: {e})"
    return None


def _check_decodable(data: bytes, label: str) -> None:
    problem = image_problem(data, MAX_INPUT_PIXELS)
    if problem:
        raise InputImageError(label, f"{problem} — fix or resize it first")


@dataclass
class ImageRequest:
    """What to generate. Fields left as None take the client's configuration."""
    prompt: str
    model: Optional[str] = None
    api_type: Optional[str] = None
    base_url: Optional[str] = None
    n: int = 1
    size: Optional[str] = None              # "1024x1024", "1536x1024", "auto"
    aspect_ratio: Optional[str] = None      # "16:9" (mapped to a size where the API takes sizes)
    quality: Optional[str] = None           # "low" | "medium" | "high" | "auto" | "standard" | "hd"
    output_format: Optional[str] = None     # "png" | "jpeg" | "webp"
    background: Optional[str] = None        # "transparent" | "opaque" | "auto"
    images: Sequence[InputImageLike] = field(default_factory=list)
    mask: Optional[InputImageLike] = None
    params: Dict[str, Any] = field(default_factory=dict)    # extra provider body fields
    headers: Dict[str, str] = field(default_factory=dict, repr=False)
    stream: bool = False
    partial_images: Optional[int] = None
    timeout: Optional[float] = None
    max_attempts: Optional[int] = None
    token: Optional[Secret] = field(default=None, repr=False)   # a str is wrapped in a Secret
    seed: Optional[int] = None              # a new seed is a new sample (and a new cache key)
    cache: Optional[bool] = None            # None: the client's setting; False: skip the cache
    fresh: bool = False                     # ignore a cached answer, call the API, store the new one
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.token = as_secret(self.token)

    def replace(self, **changes: Any) -> "ImageRequest":
        import dataclasses
        changes.setdefault("request_id", uuid.uuid4().hex[:12])
        return dataclasses.replace(self, **changes)


@dataclass
class ImageResponse:
    """The outcome of one `generate` call. `success` is False for API failures (never raised).

    A failure is described twice: `error` is the text to show, `exception` the typed error to
    branch on (`isinstance(resp.exception, RateLimitError)`, `resp.exception.status`; see
    `jupyter_imagegen.errors`). The client sets `exception` whenever it sets `status_code` and
    `error` from a failed call, including the failed calls of a fan-out that still returned some
    images (then the last failed call's error); it is None for a success and for a cached answer.
    It never holds the key (the client scrubs it, and drops the traceback). It is left out of
    repr() and ==, and `raise_for_error()` raises a copy of it."""
    request_id: str
    success: bool
    artifacts: List[Artifact] = field(default_factory=list)
    text: Optional[str] = None
    revised_prompt: Optional[str] = None
    usage: Optional[Usage] = None
    error: Optional[str] = None
    status_code: Optional[int] = None
    suggestions: List[str] = field(default_factory=list)
    api_url: str = ""
    auth_hint: Optional[str] = None
    elapsed: float = 0.0
    attempts: int = 0
    model: Optional[str] = None
    api_type: Optional[str] = None
    request: Optional[ImageRequest] = field(default=None, repr=False)
    errors: List[str] = field(default_factory=list)   # per-image failures of a fan-out
    from_cache: bool = False
    paths: List[str] = field(default_factory=list)
    exception: Optional[ImageAPIError] = field(default=None, repr=False, compare=False)
    #: what the API could not take as asked and what was sent instead ("size 5000x5000 was sent as
    #: aspect_ratio 1:1: OpenRouter takes no size in pixels"); `sent` the wire values sent instead
    notices: List[str] = field(default_factory=list)
    sent: Dict[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> list:
        """The artifacts as PIL images."""
        return [a.image for a in self.artifacts]

    @property
    def image(self):
        """The first image as a PIL image (None when there is none)."""
        return self.artifacts[0].image if self.artifacts else None

    def __bool__(self) -> bool:
        return self.success

    def raise_for_error(self) -> "ImageResponse":
        """Raise the typed error of a failed response (`exception`, with the whole `error` text as
        its message); a plain ImageAPIError when there is none. Returns self on success."""
        if not self.success:
            message = self.error or "image generation failed"
            if self.exception is not None:
                raise self.exception.copy(message=message)
            raise ImageAPIError(self.status_code, message, self.api_url)
        return self

    def _ipython_display_(self) -> None:
        # one output per image, under standard image MIME types (`render.response_outputs`)
        display_unless_shown(self, lambda: response_outputs(self))

    def _repr_mimebundle_(self, include=None, exclude=None):
        return response_mimebundle(self, include, exclude)
