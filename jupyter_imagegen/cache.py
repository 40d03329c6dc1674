"""On-disk request cache: an identical request returns the stored images instead of paying again.

Key: a SHA-256 over what determines the images (API type, base URL, model, prompt, n, size,
aspect, quality, format, background, extra params, seed, the *content* hashes of input images
and extra headers). Never the token: it is not part of the key and is never written.

Layout: `<dir>/<key[:2]>/<key>/` holding `meta.json` and `0.png`, `1.png`, ...; an entry is
written into a temporary folder and renamed into place, so two kernels writing at once never
leave a half entry. Reads refresh the entry's mtime; `evict()` drops the least recently used
entries above the size cap. The folders it creates are 0700 and files 0600 (entries hold prompts
and answers); an existing cache folder keeps its mode.

An entry is read back as if it came from the network (the folder may be shared, or written by
an older or hostile program): only plain file names inside the entry, no links, bounded sizes
and nesting, checksums, and a full decode of every image. A bad entry is dropped and the
request is sent again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .model import Artifact, ImageResponse, Usage, sniff_mime
from .providers.base import AnswerTooDeep, load_json_answer

log = logging.getLogger("jupyter_imagegen")

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


#: what an entry's image file may be called: its index and extension, nothing else
_IMAGE_FILE = re.compile(r"^\d{1,2}\.(png|jpg|webp|gif)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_KEY = _SHA256
_SHARD = re.compile(r"^[0-9a-f]{2}$")
#: a writer's temporary folder (`tempfile.mkdtemp(prefix=f".{key[:8]}-")`)
_TEMP = re.compile(r"^\.[0-9a-f]{8}-")
#: the largest meta.json read back, and the deepest nesting it may have (this module writes 3-4
#: levels; `usage` as the API sent it may add a few)
MAX_META_BYTES = 4 * 1024 * 1024
MAX_META_DEPTH = 32
#: the largest image file read back (the client's download cap)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: the most images one entry may hold (the largest n)
MAX_IMAGES = 16


class _BadEntry(Exception):
    """Why a cache entry cannot be used."""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


#: how an entry file is opened: never through a link, never blocking (a FIFO planted as
#: meta.json would otherwise hang the reader)
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
               | getattr(os, "O_BINARY", 0))


def _read_confined(folder: int, name: str, cap: int) -> bytes:
    """The bytes of the regular file `name` directly inside the open folder `folder` (a file
    descriptor: nothing on the way can be swapped for a link), at most `cap` bytes."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=folder)
    except OSError as e:
        raise _BadEntry(f"{name}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _BadEntry(f"{name} is not a regular file")
        if st.st_size > cap:
            raise _BadEntry(f"{name} is {st.st_size:,} bytes, over the {cap:,} limit")
        chunks, left = [], cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > cap:
            raise _BadEntry(f"{name} grew over the {cap:,} limit while it was read")
        return data
    except OSError as e:
        raise _BadEntry(f"{name}: {e.strerror or e}") from None
    finally:
        os.close(fd)


def _open_entry(entry: Path) -> int:
    """A descriptor of the entry folder, opened without following a link at the shard or the
    entry (the cache folder itself may be a link: ~/.cache often is)."""
    if os.path.islink(entry.parent):
        raise _BadEntry(f"the shard folder {entry.parent.name} is a link")
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        return os.open(entry, flags)
    except OSError as e:
        raise _BadEntry(f"the entry folder: {e.strerror or e}") from None


def _optional_str(meta: Dict[str, Any], name: str) -> None:
    if meta.get(name) is not None and not isinstance(meta[name], str):
        raise _BadEntry(f"meta.json: {name!r} is not a string")


def _read_entry(entry: Path, key: str) -> Tuple[List[Artifact], Dict[str, Any]]:
    """An entry's images and metadata, checked as if they came from the network."""
    folder = _open_entry(entry)
    try:
        return _read_entry_at(folder, key)
    finally:
        os.close(folder)


def _read_entry_at(entry: int, key: str) -> Tuple[List[Artifact], Dict[str, Any]]:
    try:   # the same reader as an answer's: deep JSON is refused, never a RecursionError
        meta = load_json_answer(_read_confined(entry, "meta.json", MAX_META_BYTES), MAX_META_DEPTH)
    except AnswerTooDeep as e:
        raise _BadEntry(f"meta.json is {e.nesting}") from None
    except ValueError as e:
        raise _BadEntry(f"meta.json is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise _BadEntry("meta.json is not a JSON object")
    if meta.get("key") != key:
        raise _BadEntry("meta.json belongs to another entry")
    for name in ("text", "revised_prompt", "model", "api_type", "prompt"):
        _optional_str(meta, name)
    if meta.get("usage") is not None and not isinstance(meta["usage"], dict):
        raise _BadEntry("meta.json: 'usage' is not an object")
    images = meta.get("images")
    if not isinstance(images, list) or not 1 <= len(images) <= MAX_IMAGES:
        raise _BadEntry(f"meta.json: 'images' is not a list of 1 to {MAX_IMAGES} entries")
    arts = []
    for i, item in enumerate(images):
        if not isinstance(item, dict):
            raise _BadEntry(f"meta.json: images[{i}] is not an object")
        name, digest = item.get("file"), item.get("sha256")
        if not isinstance(name, str) or not _IMAGE_FILE.match(name):
            raise _BadEntry(f"meta.json: images[{i}] names {str(name)[:60]!r}, not a file of this entry")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _BadEntry(f"meta.json: images[{i}] has no SHA-256")
        _optional_str(item, "revised_prompt")
        _optional_str(item, "mime_type")
        data = _read_confined(entry, name, MAX_IMAGE_BYTES)
        if hashlib.sha256(data).hexdigest() != digest:
            raise _BadEntry(f"{name} does not match its checksum")
        if sniff_mime(data) is None:
            raise _BadEntry(f"{name} is not a PNG, JPEG, WebP or GIF image")
        art = Artifact(data, item.get("mime_type"), index=i, revised_prompt=item.get("revised_prompt"))
        problem = art.decode_problem()
        if problem:
            raise _BadEntry(f"{name}: {problem}")
        arts.append(art)
    return arts, meta


class RequestCache:
    def __init__(self, directory: Optional[os.PathLike] = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.dir = Path(directory) if directory is not None else default_cache_dir()
        self.max_bytes = int(max_bytes)

    def __repr__(self) -> str:
        return f"<RequestCache {self.dir} max={self.max_bytes / 1e6:.0f} MB>"

    def _entry(self, key: str) -> Path:
        return self.dir / key[:2] / key

    def get(self, key: str) -> Optional[Tuple[List[Artifact], Dict[str, Any]]]:
        """The entry's checked images and metadata; None on a miss. An entry is read like a
        network answer: its files are confined to its folder (plain names, no links), its
        metadata must have the shape this module writes, and every image must match its checksum
        and decode completely. A bad entry is dropped (and so fetched again), never trusted."""
        entry = self._entry(key)
        if not os.path.lexists(entry / "meta.json"):
            return None
        try:
            arts, meta = _read_entry(entry, key)
        except (_BadEntry, OSError) as e:
            log.warning("the request cache entry %s is unusable (%s): dropped, the request is sent again",
                        key[:12], e)
            self._drop(entry)
            return None
        try:
            now = time.time()
            os.utime(entry, (now, now))
        except OSError:
            pass
        return arts, meta

    def has(self, key: str) -> bool:
        """Whether an entry exists (not checked: `get` checks it)."""
        return os.path.lexists(self._entry(key) / "meta.json")

    def _drop(self, entry: Path) -> bool:
        """Remove an entry folder: renamed out of the way first (a reader never sees half of it).
        A link in its place is removed itself, never what it points to. False when another
        process got there first."""
        for link in (entry.parent, entry):    # a planted link: remove the link, not its target
            if link != self.dir and os.path.islink(link):
                try:
                    os.unlink(link)
                    return True
                except OSError:
                    return False
        trash = entry.with_name(f".drop-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(entry, trash)
        except OSError:
            return False
        shutil.rmtree(trash, ignore_errors=True)
        return True

    def _shard_dir(self, shard: Path) -> None:
        """The shard folder, a real folder: created 0700 (entries hold prompts and answers); a
        link planted in its place is removed (never written through). The cache folder itself is
        created 0700 when it does not exist; an existing one keeps its mode (it may be a folder
        you share)."""
        if not self.dir.exists():
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.path.islink(shard) or (os.path.lexists(shard) and not shard.is_dir()):
            try:
                os.unlink(shard)
            except OSError:
                pass
        shard.mkdir(mode=0o700, exist_ok=True)

    def put(self, key: str, resp: ImageResponse) -> Optional[Path]:
        """Store a fully successful response. Returns the entry folder (None if not stored).
        Folders are 0700, files 0600."""
        if not resp.success or resp.errors or not resp.artifacts:
            return None
        final = self._entry(key)
        self._shard_dir(final.parent)
        if os.path.lexists(final):
            self._drop(final)  # --fresh replaces the entry (a link in its place goes, not its target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:8]}-", dir=final.parent))   # 0700
        try:
            images = []
            for a in resp.artifacts:
                name = f"{a.index}{a.extension}"
                data = a.data
                _write_private(tmp / name, data)
                images.append({"file": name, "mime_type": a.mime_type, "sha256": hashlib.sha256(data).hexdigest(),
                               "revised_prompt": a.revised_prompt})
            meta = {"key": key, "created": time.time(), "images": images, "text": resp.text,
                    "revised_prompt": resp.revised_prompt, "model": resp.model, "api_type": resp.api_type,
                    "usage": resp.usage.raw if resp.usage else None,
                    "prompt": resp.request.prompt if resp.request else None}
            _write_private(tmp / "meta.json", json.dumps(meta).encode("utf-8"))
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

    def _shards(self) -> List[Path]:
        """The shard folders: two hex digits, real folders (not links). Nothing else in the cache
        folder is ours to count or remove (IMAGE_CACHE_DIR may name a folder with other files)."""
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        return [self.dir / n for n in names
                if _SHARD.match(n) and not os.path.islink(self.dir / n) and (self.dir / n).is_dir()]

    def entries(self) -> List[Tuple[Path, float, int]]:
        """(folder, last use, bytes) of every entry: a folder named by its 64-hex key under the
        shard of its first two digits, not a link (a link planted in the cache folder must never
        lead eviction to another folder)."""
        out = []
        for shard in self._shards():
            try:
                names = os.listdir(shard)
            except OSError:
                continue
            for name in names:
                entry = shard / name
                if not (_KEY.match(name) and name[:2] == shard.name):
                    continue
                try:
                    st = os.lstat(entry)
                    if not stat.S_ISDIR(st.st_mode):
                        continue
                    size = sum(os.lstat(entry / f).st_size for f in os.listdir(entry))
                    out.append((entry, st.st_mtime, size))
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
            if not self._drop(path):
                continue
            total -= size
            dropped += 1
        return dropped

    def clear(self) -> None:
        """Remove every entry (and the writers' leftovers), and the folders if that empties them;
        nothing else in the cache folder is touched."""
        for shard in self._shards():
            for name in os.listdir(shard):
                if _KEY.match(name) or name.startswith((".drop-", ".evict-")) or _TEMP.match(name):
                    self._drop(shard / name)
            try:
                os.rmdir(shard)
            except OSError:
                pass
        try:
            os.rmdir(self.dir)
        except OSError:
            pass

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
