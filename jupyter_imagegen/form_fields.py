"""The form's fields as data: suggestions per API, the size box's grammar, the "compare with"
field, and what is kept per run (`FormSettings`, `InputSlot`, `FormRun`). No widgets are built here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .compare import parse_compare_spec
from .errors import RequestError
from .model import ImageRequest, ImageResponse, InputImage
from .providers.base import MAX_FANOUT_N

__all__ = ["MAX_N", "API_LABELS", "SIZE_SUGGESTIONS", "QUALITY_CHOICES", "DEFAULT_PARTIALS", "split_size",
           "join_size", "parse_compare_field", "FormSettings", "InputSlot", "FormRun"]

#: the form refuses n outside 1..MAX_N (the providers then check their own, maybe smaller, limits)
MAX_N = MAX_FANOUT_N
API_LABELS = {
    "openrouter_chat": "OpenRouter (chat)",
    "openai_images": "OpenAI Images",
    "openai_responses": "OpenAI Responses",
}
_ASPECTS = ("1:1", "3:2", "2:3", "16:9", "9:16", "4:3", "3:4")
#: what the size box suggests per API: sizes (WxH, auto, 1K/2K/4K) and aspect ratios (W:H)
SIZE_SUGGESTIONS = {
    "openrouter_chat": ["1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9", "1K", "2K", "4K"],
    "openai_images": ["auto", "1024x1024", "1536x1024", "1024x1536", "1792x1024", "1024x1792", "512x512",
                      "256x256", *_ASPECTS],
    "openai_responses": ["auto", "1024x1024", "1536x1024", "1024x1536", *_ASPECTS],
}
QUALITY_CHOICES = ("low", "medium", "high", "auto", "standard", "hd")
#: partial images streamed by "show progress" (the OpenAI formats; OpenRouter sends the final only)
DEFAULT_PARTIALS = 2

_SIZE_RE = re.compile(r"^\d{2,5}x\d{2,5}$")
_ASPECT_RE = re.compile(r"^[1-9]\d?:[1-9]\d?$")
_K_RE = re.compile(r"^[1-9]K$")

def split_size(text: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """The size box's text -> (size, aspect_ratio). Raises RequestError when it is neither.

    ``""`` -> (None, None); ``"16:9"`` -> (None, "16:9"); ``"1024X1024"`` -> ("1024x1024", None);
    ``"auto"`` and ``"2K"`` are sizes.
    """
    v = (text or "").strip()
    if not v or v.lower() == "default":
        return None, None
    if _ASPECT_RE.match(v):
        return None, v
    low = v.lower().replace("×", "x").replace(" ", "")
    if low == "auto" or _SIZE_RE.match(low):
        return low, None
    if _K_RE.match(v.upper()):
        return v.upper(), None
    raise RequestError(f"size {v!r}: write WIDTHxHEIGHT (1024x1024), an aspect ratio W:H (16:9), "
                       "auto, or leave it empty for the default")


def join_size(size: Optional[str], aspect: Optional[str]) -> str:
    return aspect or size or ""


def parse_compare_field(text: str) -> Dict[str, List[str]]:
    """The form's "compare with" field: ``model=a,b size=1024x1024,1536x1024`` (specs separated by
    spaces or ';') -> {"model": [...], "size": [...]}; empty -> {}. Raises ValueError."""
    dims: Dict[str, List[str]] = {}
    for spec in re.split(r"[;\s]+", (text or "").strip()):
        if spec:
            key, values = parse_compare_spec(spec)
            dims.setdefault(key, [])
            dims[key] += [v for v in values if v not in dims[key]]
    return dims


# --------------------------------------------------------------------------------------------
# data kept per run
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FormSettings:
    """The form's fields at one moment: what "reuse settings" restores."""
    prompt: str = ""
    api_type: str = "openrouter_chat"
    model: str = ""
    size: str = ""                        # "1024x1024", "16:9", "auto" or "" (the default)
    n: int = 1
    quality: str = ""                     # "" = the API's default
    save_dir: str = ""                    # "" = not saved
    fresh: bool = False                   # ignore a cached answer
    images: Tuple[InputImage, ...] = ()
    progress: bool = False                # stream, showing partial images

    def summary(self) -> str:
        parts = [API_LABELS.get(self.api_type, self.api_type)]
        if self.model:
            parts.append(self.model)
        if self.size:
            parts.append(self.size)
        parts.append(f"n={self.n}")
        if self.quality:
            parts.append(f"quality {self.quality}")
        if self.images:
            parts.append(f"{len(self.images)} input image{'s' if len(self.images) != 1 else ''}")
        if self.fresh:
            parts.append("fresh")
        if self.progress:
            parts.append("progress")
        return " · ".join(parts)


@dataclass
class InputSlot:
    """One input image of the form: valid (`image`) or refused (`error`), with its card widget."""
    name: str
    image: Optional[InputImage]
    error: Optional[str] = None
    widget: Any = None
    remove_button: Any = None


@dataclass
class FormRun:
    """One run of the form that produced images: its response, settings, and its card in the
    form's history (the kernel-wide `history` module records every run too)."""
    response: ImageResponse
    settings: FormSettings
    request: ImageRequest
    finished_at: float
    widget: Any = None
    use_buttons: List[Any] = field(default_factory=list)
    reuse_button: Any = None

    @property
    def prompt(self) -> str:
        return self.settings.prompt
