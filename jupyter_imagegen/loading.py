"""Loading images saved by jupyter-imagegen, with their metadata, and re-running them.

`load(path)` reads an image and its metadata back (from the sidecar, else from the embedded
chunks) as a `LoadedImage`; ``LoadedImage.request`` is the `ImageRequest` rebuilt from it and
``LoadedImage.rerun()`` sends it again through the kernel runtime.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .render import esc, gallery_html
from .model import Artifact, ImageRequest, ImageResponse, sniff_mime
from .runtime import runtime
from .saving import REQUEST_FIELDS, read_embedded, sidecar_path

__all__ = ["LoadedImage", "load", "request_from_settings"]

PathLike = Union[str, "os.PathLike[str]"]


def _resolve_input(desc: Dict[str, Any], base_dir: Optional[Path]) -> Any:
    """The input image a metadata entry points to: the saved copy, else the original file, as
    long as the bytes still hash to what was sent."""
    want = desc.get("sha256")
    candidates = []
    if desc.get("file") and base_dir is not None:
        candidates.append(base_dir / desc["file"])
    if desc.get("source"):
        candidates.append(Path(desc["source"]))
    for c in candidates:
        try:
            data = c.read_bytes()
        except OSError:
            continue
        if not want or hashlib.sha256(data).hexdigest() == want:
            return str(c)
    where = " or ".join(str(c) for c in candidates) or "(no file recorded)"
    raise FileNotFoundError(f"the input image of the original request is not available ({where})")


def request_from_settings(settings: Dict[str, Any], *, base_dir: Optional[PathLike] = None,
                          **overrides: Any) -> ImageRequest:
    """Rebuild an `ImageRequest` from `request_settings` output (keyword overrides win).

    Input images are found again through their saved copies (``base_dir``) or original paths,
    checked by content hash; a missing one raises FileNotFoundError unless ``images=`` is given.
    """
    if not isinstance(settings, dict) or not settings.get("prompt"):
        raise ValueError("the metadata holds no request (no prompt)")
    bd = Path(base_dir) if base_dir is not None else None
    kw: Dict[str, Any] = {}
    for name in REQUEST_FIELDS:
        if name in settings and settings[name] is not None:
            kw[name] = settings[name]
    kw["params"] = dict(kw.get("params") or {})
    kw["n"] = int(kw.get("n") or 1)
    if "images" not in overrides:
        kw["images"] = [_resolve_input(d, bd) for d in settings.get("images") or []]
    if "mask" not in overrides and settings.get("mask"):
        kw["mask"] = _resolve_input(settings["mask"], bd)
    kw.update(overrides)
    return ImageRequest(**kw)


class LoadedImage:
    """An image read back from disk with its metadata (see `load`)."""

    def __init__(self, path: Path, data: bytes, metadata: Dict[str, Any], source: Optional[str]):
        self.path = str(path)
        self.metadata = metadata
        self.source = source          # "sidecar", "embedded" or None (no metadata found)
        md = metadata or {}
        revised = md.get("revised_prompt")
        self.artifact = Artifact(data, index=int((md.get("image") or {}).get("index") or 0),
                                 revised_prompt=revised, path=str(path), metadata=md)

    # -- facts ----------------------------------------------------------------------------------
    @property
    def data(self) -> bytes:
        return self.artifact.data

    @property
    def image(self):
        """The image as a PIL image."""
        return self.artifact.image

    @property
    def prompt(self) -> Optional[str]:
        return self.metadata.get("prompt") or self.settings.get("prompt")

    @property
    def revised_prompt(self) -> Optional[str]:
        return self.metadata.get("revised_prompt")

    @property
    def model(self) -> Optional[str]:
        return self.metadata.get("model") or self.settings.get("model")

    @property
    def api_type(self) -> Optional[str]:
        return self.metadata.get("api_type") or self.settings.get("api_type")

    @property
    def settings(self) -> Dict[str, Any]:
        """The request settings as saved (a dict)."""
        return dict(self.metadata.get("request") or {})

    @property
    def request(self) -> ImageRequest:
        """A new `ImageRequest` equal to the one that made this image (same prompt, model, API,
        size, quality, seed, params and input images). Raises ValueError without metadata."""
        return self.to_request()

    def to_request(self, **overrides: Any) -> ImageRequest:
        if not self.metadata:
            raise ValueError(f"{self.path} carries no jupyter-imagegen metadata (no sidecar, nothing embedded)")
        return request_from_settings(self.settings, base_dir=Path(self.path).parent, **overrides)

    def rerun(self, *, client=None, **overrides: Any) -> ImageResponse:
        """Send the same request again (keyword overrides win) and return the response; recorded
        in the history. With the request cache on, an unchanged request is answered from it:
        pass ``fresh=True`` for a new sample."""
        return runtime.run(self.to_request(**overrides), client=client, source="load")

    # -- display --------------------------------------------------------------------------------
    def __repr__(self) -> str:
        p = (self.prompt or "")[:60]
        return f"<LoadedImage {self.path} model={self.model} prompt={p!r}>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        rows = [("prompt", self.prompt), ("revised prompt", self.revised_prompt), ("model", self.model),
                ("API", self.api_type)]
        s = self.settings
        extra = ", ".join(f"{k}={s[k]}" for k in ("size", "aspect_ratio", "quality", "output_format", "seed", "n")
                          if s.get(k) is not None)
        if extra:
            rows.append(("settings", extra))
        table = "".join(f"<tr><th style='text-align:left;padding-right:8px;vertical-align:top'>{esc(k)}</th>"
                        f"<td style='text-align:left'>{esc(v)}</td></tr>" for k, v in rows if v)
        note = "" if self.metadata else "<div style='opacity:.7'>(no jupyter-imagegen metadata)</div>"
        html_ = (f"<div class='imagegen-loaded'>{gallery_html([self.artifact], alt=self.prompt or '')}"
                 f"<table style='font-size:12px'>{table}</table>{note}</div>")
        text = repr(self)
        return {"text/plain": text, "text/html": html_}


def load(path: PathLike) -> LoadedImage:
    """Read an image saved by jupyter-imagegen with its metadata.

    The sidecar ``<name>.json`` is used when present (it has everything), else the metadata
    embedded in the image. ``path`` may also be the sidecar itself. Images without metadata load
    too (``.metadata == {}``, ``.source is None``).
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".json":
        try:
            side = json.loads(p.read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: not a jupyter-imagegen sidecar ({e})") from None
        name = side.get("file") if isinstance(side, dict) else None
        if not name:
            raise ValueError(f"{p}: not a jupyter-imagegen sidecar (no 'file')")
        p = p.with_name(name)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    data = p.read_bytes()
    if sniff_mime(data) is None:
        raise ValueError(f"{p} is not a PNG, JPEG, WebP or GIF image")
    meta: Dict[str, Any] = {}
    source = None
    side_p = sidecar_path(p)
    if side_p.is_file() and side_p != p:
        try:
            side = json.loads(side_p.read_text("utf-8"))
            if isinstance(side, dict) and side.get("schema", "").startswith("jupyter-imagegen/") \
                    and side.get("file") in (None, p.name):
                meta, source = side, "sidecar"
        except (OSError, ValueError):
            pass
    if not meta:
        doc = read_embedded(data)
        if doc:
            meta, source = doc, "embedded"
    return LoadedImage(p, data, meta, source)
