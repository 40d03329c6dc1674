"""Loading images saved by jupyter-imagegen, with their metadata, and re-running them.

`load(path)` reads an image and its metadata back (from the sidecar, else from the embedded
chunks) as a `LoadedImage`; ``LoadedImage.request`` is the `ImageRequest` rebuilt from it and
``LoadedImage.rerun()`` sends it again through the kernel runtime.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Union

from .render import esc, gallery_html, image_output, select_mimetypes
from .model import MAX_INPUT_BYTES, Artifact, ImageRequest, ImageResponse, sniff_mime
from .runtime import runtime
from .config import DEFAULT_BASE_URLS
from .saving import REQUEST_FIELDS, load_document, read_embedded, safe_url, sidecar_path

__all__ = ["LoadedImage", "RecordedAPINotUsed", "load", "request_from_settings"]

PathLike = Union[str, "os.PathLike[str]"]


def _resolve_input(desc: Any, base_dir: Optional[Path]) -> Any:
    """The input image a metadata entry points to: the saved copy next to the image (a plain
    file name, nothing outside that folder), else the original file, and only when its bytes
    hash to what was sent (a file someone sent you cannot make you read, and send, another file
    of yours)."""
    if not isinstance(desc, dict):
        raise FileNotFoundError("the input image of the original request is not described")
    want = desc.get("sha256")
    if not isinstance(want, str) or not re.fullmatch(r"[0-9a-f]{64}", want):
        raise FileNotFoundError("the input image of the original request has no checksum to find it by")
    candidates = []
    name = desc.get("file")
    if isinstance(name, str) and base_dir is not None and name == Path(name).name and name not in ("", ".", ".."):
        candidates.append(base_dir / name)
    if isinstance(desc.get("source"), str):
        candidates.append(Path(desc["source"]))
    for c in candidates:
        try:   # (an input image is at most MAX_INPUT_BYTES: a file cannot make us read a huge one)
            data = c.read_bytes() if c.is_file() and c.stat().st_size <= MAX_INPUT_BYTES else None
        except OSError:
            continue
        if data is not None and hashlib.sha256(data).hexdigest() == want:
            return str(c)
    where = " or ".join(str(c) for c in candidates) or "(no file recorded)"
    raise FileNotFoundError(f"the input image of the original request is not available ({where})")


#: where a request goes: never taken from a file (it decides who receives your key)
DESTINATION_FIELDS = ("api_type", "base_url")
#: what each recorded field must be (a file from a stranger may hold anything)
_FIELD_TYPES = {"prompt": (str, "text"), "model": (str, "text"), "n": (int, "a whole number"),
                "size": (str, "text"), "aspect_ratio": (str, "text"), "quality": (str, "text"),
                "output_format": (str, "text"), "background": (str, "text"), "seed": (int, "a whole number"),
                "params": (dict, "an object"), "stream": (bool, "true or false"),
                "partial_images": (int, "a whole number"), "timeout": ((int, float), "a number of seconds"),
                "max_attempts": (int, "a whole number")}
#: body fields the client builds itself: a recorded `params` cannot replace them
RESERVED_PARAMS = frozenset({"model", "prompt", "messages", "input", "stream", "stream_options", "n", "tools",
                             "tool_choice", "modalities", "image", "mask"})


def _recorded(settings: Dict[str, Any], name: str) -> Any:
    """A recorded field, checked against the type it must have (ValueError saying which)."""
    value = settings[name]
    kind, what = _FIELD_TYPES[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"the recorded {name} ({str(value)[:40]!r}) is not {what}")
    return value


def request_from_settings(settings: Dict[str, Any], *, base_dir: Optional[PathLike] = None,
                          config: Any = None, **overrides: Any) -> ImageRequest:
    """Rebuild an `ImageRequest` from `request_settings` output (keyword overrides win).

    The request goes to *your* configured API: the API type and base URL recorded in the
    settings are not used (pass ``api_type=`` / ``base_url=`` to choose them); when the recorded
    API type differs from the one it will go to (`config`'s), the recorded model and extra body
    fields, which belong to the other API, are left out too unless given. Every recorded field
    must have its type (ValueError otherwise), and recorded `params` cannot replace the body
    fields the client builds (`RESERVED_PARAMS`). Input images are found again
    through their saved copies (``base_dir``) or original paths, checked by content hash; a
    missing one raises FileNotFoundError unless ``images=`` is given.
    """
    if not isinstance(settings, dict) or not settings.get("prompt"):
        raise ValueError("the metadata holds no request (no prompt)")
    bd = Path(base_dir) if base_dir is not None else None
    kw: Dict[str, Any] = {}
    for name in REQUEST_FIELDS:
        if name in settings and settings[name] is not None and name not in DESTINATION_FIELDS:
            kw[name] = _recorded(settings, name)
    kw["n"] = kw.get("n") or 1
    target = overrides.get("api_type") or getattr(config, "api_type", None)
    recorded = settings.get("api_type")
    other_api = bool(recorded and target and recorded != target)
    if "model" not in overrides and other_api:
        kw.pop("model", None)      # the recorded model belongs to the API the file names
    # extra body fields: never the ones the client builds, none at all for another API's body
    kw["params"] = {} if other_api else {k: v for k, v in (kw.get("params") or {}).items()
                                         if k not in RESERVED_PARAMS}
    if "images" not in overrides:
        kw["images"] = [_resolve_input(d, bd) for d in settings.get("images") or []]
    if "mask" not in overrides and settings.get("mask"):
        kw["mask"] = _resolve_input(settings["mask"], bd)
    kw.update(overrides)
    return ImageRequest(**kw)


def destination_note(settings: Dict[str, Any], config: Any, request: ImageRequest) -> Optional[str]:
    """A line saying where a file's request was sent and where its re-run goes instead (None when
    that is the same place, or the caller chose the API and base URL)."""
    if not isinstance(settings, dict) or config is None:
        return None
    api = settings.get("api_type") if isinstance(settings.get("api_type"), str) else None
    url = settings.get("base_url") if isinstance(settings.get("base_url"), str) else None
    if api is None and url is None:
        return None
    recorded_url = url or DEFAULT_BASE_URLS.get(api or "", "")
    target_api = request.api_type or config.api_type
    target_url = config.base_url_for(target_api, request.base_url)
    if (api in (None, target_api)) and (not recorded_url or recorded_url.rstrip("/") == target_url.rstrip("/")):
        return None
    made = " at ".join(x for x in (api, safe_url(recorded_url)) if x)
    return (f"this image was made with {made}; the re-run goes to your configured API, {target_api} at "
            f"{safe_url(target_url)} (pass --api / --base-url, or api_type= / base_url=, to send it elsewhere)")


class RecordedAPINotUsed(UserWarning):
    """A re-run goes to your configured API, not to the one a file recorded."""


def _kernel_config() -> Any:
    try:
        return runtime.client().config
    except Exception:   # no valid configuration: the run itself will say what to fix
        return None


class LoadedImage:
    """An image read back from disk with its metadata (see `load`)."""

    def __init__(self, path: Path, data: bytes, metadata: Dict[str, Any], source: Optional[str]):
        self.path = str(path)
        self.metadata = metadata
        self.source = source          # "sidecar", "embedded" or None (no metadata found)
        md = metadata or {}
        revised = md.get("revised_prompt")
        #: why the file's metadata was not used, when it had some (see `load`)
        self.metadata_problem: Optional[str] = None
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

    def to_request(self, *, config: Any = None, **overrides: Any) -> ImageRequest:
        """The recorded request for your configured API (`config`, default: the kernel's); see
        `request_from_settings`. Keyword overrides win."""
        if not self.metadata:
            raise ValueError(f"{self.path}: " + (self.metadata_problem or "it carries no jupyter-imagegen metadata "
                                                   "(no sidecar, nothing embedded)"))
        return request_from_settings(self.settings, base_dir=Path(self.path).parent,
                                     config=config if config is not None else _kernel_config(), **overrides)

    def destination_note(self, request: ImageRequest, config: Any = None) -> Optional[str]:
        """Where this image's request was sent, when its re-run goes elsewhere (else None)."""
        return destination_note(self.settings, config if config is not None else _kernel_config(), request)

    def rerun(self, *, client=None, **overrides: Any) -> ImageResponse:
        """Send the same request again (keyword overrides win) to your configured API (the file's
        API and base URL are shown, not used: pass ``api_type=`` / ``base_url=`` to choose) and
        return the response; recorded in the history. With the request cache on, an unchanged
        request is answered from it: pass ``fresh=True`` for a new sample."""
        config = (client if client is not None else runtime.client()).config
        request = self.to_request(config=config, **overrides)
        note = self.destination_note(request, config)
        if note:
            warnings.warn(note, RecordedAPINotUsed, stacklevel=2)
        return runtime.run(request, client=client, source="load")

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
        # the image itself as a standard image output too (nbconvert, GitHub), with the HTML beside it
        data, md = image_output(self.artifact, html=html_, text=repr(self))
        return select_mimetypes(data, include, exclude), md


#: the fields of a metadata document and the type each must have to be used
_DOC_TYPES = {"schema": str, "file": str, "prompt": str, "revised_prompt": str, "model": str, "api_type": str,
              "request": dict, "response": dict, "image": dict}


def document_problem(doc: Any) -> Optional[str]:
    """What is wrong with a metadata document read from a file (None when it can be used)."""
    if not isinstance(doc, dict):
        return "it is not a JSON object"
    if not isinstance(doc.get("schema"), str) or not doc["schema"].startswith("jupyter-imagegen/"):
        return "it is not a jupyter-imagegen document (no 'schema')"
    for name, kind in _DOC_TYPES.items():
        if doc.get(name) is not None and not isinstance(doc[name], kind):
            return f"its {name!r} is {type(doc[name]).__name__}, not {kind.__name__}"
    index = (doc.get("image") or {}).get("index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 1000):
        return f"its image index ({str(index)[:20]}) is not a small whole number"
    return None


def load(path: PathLike) -> LoadedImage:
    """Read an image saved by jupyter-imagegen with its metadata.

    The sidecar ``<name>.json`` is used when present (it has everything), else the metadata
    embedded in the image. ``path`` may also be the sidecar itself. Images without metadata load
    too (``.metadata == {}``, ``.source is None``); so do images whose metadata is malformed (a
    file from anyone: nested too deep, fields of the wrong type), with the reason in
    ``.metadata_problem``.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".json":
        try:
            side = load_document(p.read_bytes())
        except OSError as e:
            raise ValueError(f"{p}: not a jupyter-imagegen sidecar ({e})") from None
        name = side.get("file") if isinstance(side, dict) else None
        if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
            raise ValueError(f"{p}: not a jupyter-imagegen sidecar (no plain 'file' name in it)")
        p = p.with_name(name)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {p}")
    data = p.read_bytes()
    if sniff_mime(data) is None:
        raise ValueError(f"{p} is not a PNG, JPEG, WebP or GIF image")
    meta: Dict[str, Any] = {}
    source = None
    problems = []
    side_p = sidecar_path(p)
    if side_p.is_file() and side_p != p:
        try:
            side = load_document(side_p.read_bytes())
        except OSError:
            side = None
        problem = document_problem(side) if side is not None else "it is not a JSON object nested at most 32 deep"
        if problem is None and side.get("file") not in (None, p.name):
            problem = f"it describes {str(side.get('file'))[:60]!r}"
        if problem is None:
            meta, source = side, "sidecar"
        else:
            problems.append(f"the sidecar {side_p.name} is unusable: {problem}")
    if not meta:
        doc = read_embedded(data)
        if doc is not None:
            problem = document_problem(doc)
            if problem is None:
                meta, source = doc, "embedded"
            else:
                problems.append(f"the embedded metadata is unusable: {problem}")
    loaded = LoadedImage(p, data, meta, source)
    loaded.metadata_problem = "; ".join(problems) if not meta and problems else None
    return loaded
