"""On-disk request cache: an identical request returns the stored images instead of paying again.

Key: a SHA-256 over what determines the images (API type, base URL, model, prompt, n, size,
aspect, quality, format, background, extra params, seed, the *content* hashes of input images
and extra headers). Never the token: it is not part of the key and is never written.

Layout: `<dir>/<key[:2]>/<key>/` holding `meta.json` and `0.png`, `1.png`, ...; an entry is
written into a temporary folder and renamed into place, so two kernels writing at once never
leave a half entry. Reads refresh the entry's mtime; `evict()` drops the least recently used
entries above the size cap.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .model import Artifact, ImageResponse, Usage

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
KEY_VERSION = 1


def default_cache_dir() -> Path:
    env = os.environ.get("IMAGE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jupyter-imagegen"


def request_key(resolved: Any) -> str:
    """The cache key of a resolved request (see module docstring for what goes in)."""
    req = resolved.request
    doc: Dict[str, Any] = {
        "v": KEY_VERSION, "api_type": resolved.api_type, "base_url": resolved.base_url,
        "model": resolved.model, "prompt": req.prompt, "n": req.n, "size": req.size,
        "aspect_ratio": req.aspect_ratio, "quality": req.quality, "output_format": req.output_format,
        "background": req.background, "params": req.params, "seed": getattr(req, "seed", None),
        "inputs": [hashlib.sha256(i.data).hexdigest() for i in resolved.inputs],
        "mask": hashlib.sha256(resolved.mask.data).hexdigest() if resolved.mask is not None else None,
        "headers": hashlib.sha256(json.dumps(sorted((req.headers or {}).items())).encode()).hexdigest()
        if req.headers else None,
    }
    blob = json.dumps(doc, sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


class RequestCache:
    def __init__(self, directory: Optional[os.PathLike] = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.dir = Path(directory) if directory is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)

    def __repr__(self) -> str:
        return f"<RequestCache {self.dir} max={self.max_bytes / 1e6:.0f} MB>"

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def get(self, key: str) -> Optional[Tuple[List[Artifact], Dict[str, Any]]]:
        entry = self._entry(key)
        try:
            meta = json.loads((entry / "meta.json").read_text("utf-8"))
            arts = []
            for i, item in enumerate(meta["images"]):
                data = (entry / item["file"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != item["sha256"]:
                    return None  # damaged entry: treat as a miss
                arts.append(Artifact(data, item.get("mime_type"), index=i,
                                     revised_prompt=item.get("revised_prompt")))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        try:
            now = time.time()
            os.utime(entry, (now, now))
        except OSError:
            pass
        return arts, meta

    def put(self, key: str, resp: ImageResponse) -> Optional[Path]:
        """Store a fully successful response. Returns the entry folder (None if not stored)."""
        if not resp.success or resp.errors or not resp.artifacts:
            return None
        final = self._entry(key)
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)  # --fresh replaces the entry
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=final.parent))
        try:
            images = []
            for a in resp.artifacts:
                name = f"{a.index}{a.extension}"
                (tmp / name).write_bytes(a.data)
                images.append({"file": name, "mime_type": a.mime_type, "sha256": hashlib.sha256(a.data).hexdigest(),
                               "revised_prompt": a.revised_prompt})
            meta = {"key": key, "created": time.time(), "images": images, "text": resp.text,
                    "revised_prompt": resp.revised_prompt, "model": resp.model, "api_type": resp.api_type,
                    "usage": resp.usage.raw if resp.usage else None,
                    "prompt": resp.request.prompt if resp.request else None}
            (tmp / "meta.json").write_text(json.dumps(meta), "utf-8")
            try:
                os.rename(tmp, final)
            except OSError:  # another writer got there first: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
                return final if final.exists() else None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.evict()
        return final

    def entries(self) -> List[Tuple[Path, float, int]]:
        out = []
        if not self.dir.is_dir():
            return out
        for shard in self.dir.iterdir():
            if not shard.is_dir():
                continue
            for entry in shard.iterdir():
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                try:
                    size = sum(f.stat().st_size for f in entry.iterdir())
                    out.append((entry, entry.stat().st_mtime, size))
                except OSError:
                    continue
        return out

    def size(self) -> int:
        return sum(s for _, _, s in self.entries())

    def evict(self) -> int:
        """Drop least recently used entries until the cache fits `max_bytes`. Returns how many went."""
        entries = sorted(self.entries(), key=lambda e: e[1])
        total = sum(s for _, _, s in entries)
        dropped = 0
        for path, _, size in entries:
            if total <= self.max_bytes:
                break
            trash = path.with_name(f".evict-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(path, trash)
            except OSError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            total -= size
            dropped += 1
        return dropped

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def response(self, key: str, resolved: Any, request_id: str, api_url: str,
                 auth_hint: Optional[str]) -> Optional[ImageResponse]:
        hit = self.get(key)
        if hit is None:
            return None
        arts, meta = hit
        return ImageResponse(request_id=request_id, success=True, artifacts=arts, text=meta.get("text"),
                             revised_prompt=meta.get("revised_prompt"), usage=Usage.from_api(meta.get("usage")),
                             api_url=api_url, auth_hint=auth_hint, elapsed=0.0, attempts=0,
                             model=meta.get("model") or resolved.model, api_type=resolved.api_type,
                             request=resolved.request, from_cache=True)
