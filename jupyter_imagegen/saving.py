"""Saving images with their metadata (`loading` reads them back).

`save_response(resp, directory)` writes every image of a response as soon as it is there (the
magic calls it before anything is displayed):

* a readable, unique name: ``YYYYmmdd-HHMMSS-<slug of the prompt>-<index>.<ext>`` (a name that
  exists already, even from the same second, gets ``-2``, ``-3``...; names are reserved with
  ``O_EXCL`` so two kernels never overwrite each other);
* the prompt, model, API, revised prompt and settings embedded in the file **without touching
  the pixels**: the metadata is spliced into the container, the compressed image data stays
  byte-for-byte what the API sent --

  - PNG: uncompressed ``iTXt`` chunks ``prompt``, ``Description``, ``model``, ``api``,
    ``revised_prompt``, ``Software`` and ``imagegen`` (the full JSON document);
  - JPEG: an XMP packet (``dc:description`` = the prompt, ``imagegen:*`` fields, the JSON
    document) and, when the file has no EXIF yet, EXIF ``ImageDescription`` / ``Software``;
  - WebP: an XMP chunk (the file becomes the extended ``VP8X`` form when it was a simple one);

* a JSON sidecar ``<name>.json`` with the full request settings (never the token, never HTTP
  headers), timing, attempts, usage and file facts;
* copies of the request's input images (``...-input-1.png``), once per response, so that
  ``--from`` can send exactly the same request later.

"""
from __future__ import annotations

import datetime as _dt
import hashlib
import html
import io
import json
import os
import re
import struct
import time
import unicodedata
import uuid
import zlib
from pathlib import Path
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from .config import safe_url
from .secret import SecretScrubber
from .providers.base import load_json_answer
from .model import EXT_BY_MIME, Artifact, ImageRequest, ImageResponse, InputImage, sniff_mime

__all__ = ["SCHEMA", "SaveResult", "slugify", "save_response", "request_settings", "metadata_document",
           "embed_metadata", "read_embedded", "sidecar_path", "safe_url"]

#: the "schema" field of every document written (sidecar and embedded)
SCHEMA = "jupyter-imagegen/1"
#: the PNG iTXt keyword / XMP property holding the whole JSON document
DOC_KEY = "imagegen"
XMP_NS = "https://github.com/jupyter-imagegen/xmp/1.0/"

PathLike = Union[str, "os.PathLike[str]"]

#: request fields written to the metadata, in this order (never token / headers / cache flags)
REQUEST_FIELDS = ("prompt", "model", "api_type", "base_url", "n", "size", "aspect_ratio", "quality",
                   "output_format", "background", "seed", "params", "stream", "partial_images",
                   "timeout", "max_attempts")
#: extra body parameters whose names say they hold a credential are never written
_SECRET_KEY = re.compile(r"^(authorization|proxy[_-]authorization|api[_-]?key|x[_-]api[_-]key|token|"
                         r"access[_-]token|auth[_-]token|bearer|secret|client[_-]secret|password|cookie)$", re.I)


def _software() -> str:
    try:
        from . import __version__
    except Exception:  # pragma: no cover
        __version__ = "?"
    return f"jupyter-imagegen {__version__}"


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------
def slugify(text: str, limit: int = 40) -> str:
    """`A red fox, in snow!` -> `a-red-fox-in-snow` (ASCII, for file names)."""
    s = unicodedata.normalize("NFKD", text or "").encode("ascii", "ignore").decode("ascii").lower()
    s = re.sub(r"[^a-z0-9]+", "-", s).strip("-")
    if len(s) > limit:
        s = s[:limit].rsplit("-", 1)[0] if "-" in s[:limit] else s[:limit]
    return s or "image"


def sidecar_path(image_path: PathLike) -> Path:
    """`dir/name.png` -> `dir/name.json`."""
    p = Path(image_path)
    return p.with_suffix(".json")


def _reserve(path: Path, mode: int = 0o644) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))
        return True
    except FileExistsError:
        return False


def _reserve_pair(directory: Path, base: str, ext: str, with_sidecar: bool) -> Path:
    """Reserve `base.ext` (and `base.json`), or `base-2.ext`, `base-3.ext`... : never overwrite."""
    k = 1
    while True:
        stem = base if k == 1 else f"{base}-{k}"
        target = directory / f"{stem}{ext}"
        if _reserve(target):
            if not with_sidecar or _reserve(directory / f"{stem}.json", SIDECAR_MODE):
                return target
            _unlink(target)  # the sidecar name is taken (e.g. x.jpg next to x.png): next number
        k += 1


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


#: sidecars are private to their owner (they hold the answer's text and usage); images keep the
#: usual 0644 (less the umask): they are made to be shared
SIDECAR_MODE = 0o600


def _atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), mode),
                       "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# the metadata document
# --------------------------------------------------------------------------------------------
def _clean_params(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _clean_params(v) for k, v in value.items() if not _SECRET_KEY.match(str(k))}
    if isinstance(value, (list, tuple)):
        return [_clean_params(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _input_source(value: Any) -> Optional[str]:
    if isinstance(value, (str, os.PathLike)) and not str(value).startswith("data:"):
        try:
            return str(Path(value).expanduser().resolve())
        except OSError:  # pragma: no cover
            return str(value)
    path = getattr(value, "path", None)
    if isinstance(value, Artifact) and path:
        return str(Path(path).resolve())
    return None


def _describe_input(value: Any, label: str) -> Tuple[Dict[str, Any], Optional[InputImage]]:
    try:
        img = InputImage.from_any(value, label=label)
    except Exception:
        return {"sha256": None, "source": _input_source(value), "error": "could not be read"}, None
    return {"sha256": hashlib.sha256(img.data).hexdigest(), "mime_type": img.mime_type, "bytes": len(img.data),
            "source": _input_source(value)}, img


def request_settings(request: Optional[ImageRequest], resp: Optional[ImageResponse] = None) -> Dict[str, Any]:
    """The request as a JSON-safe dict: what was asked, with the model and API it resolved to.

    Never the token, never HTTP headers, never the cache switches. Input images are described by
    content hash (and their file path when they came from one); see `save_response` for copies.
    """
    out: Dict[str, Any] = {}
    if request is not None:
        for name in REQUEST_FIELDS:
            v = getattr(request, name, None)
            if name == "params":
                v = _clean_params(dict(v or {}))
            elif name == "base_url":
                v = safe_url(v)
            out[name] = v
    else:
        out["prompt"] = None
    if resp is not None:  # what the client resolved: pins the model and API for a re-run
        if resp.model:
            out["model"] = resp.model
        if resp.api_type:
            out["api_type"] = resp.api_type
        if getattr(resp, "sent", None):   # what the API got instead of a field it cannot take as asked
            out["sent"] = dict(resp.sent)
    if request is not None:
        out["images"] = [_describe_input(v, f"input image {i + 1}")[0] for i, v in enumerate(request.images or [])]
        out["mask"] = _describe_input(request.mask, "mask")[0] if request.mask is not None else None
    return out


def _usage_dict(usage: Any) -> Optional[Dict[str, Any]]:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens, "cost": usage.cost, "raw": _clean_params(usage.raw or {})}


def metadata_document(resp: ImageResponse, artifact: Optional[Artifact] = None, *,
                      request: Optional[ImageRequest] = None, settings: Optional[Dict[str, Any]] = None,
                      created: Optional[float] = None) -> Dict[str, Any]:
    """The JSON document written to the sidecar and embedded in the image."""
    request = request if request is not None else resp.request
    settings = settings if settings is not None else request_settings(request, resp)
    created = time.time() if created is None else created
    doc: Dict[str, Any] = {
        "schema": SCHEMA,
        "software": _software(),
        "created": _dt.datetime.fromtimestamp(created).astimezone().isoformat(timespec="seconds"),
        "prompt": settings.get("prompt"),
        "revised_prompt": (artifact.revised_prompt if artifact is not None and artifact.revised_prompt
                           else resp.revised_prompt),
        "model": resp.model or settings.get("model"),
        "api_type": resp.api_type or settings.get("api_type"),
        "request": settings,
        "response": {
            "request_id": resp.request_id, "api_url": safe_url(resp.api_url), "elapsed": round(resp.elapsed or 0.0, 3),
            "attempts": resp.attempts, "from_cache": bool(getattr(resp, "from_cache", False)),
            "usage": _usage_dict(resp.usage), "text": resp.text, "image_count": len(resp.artifacts),
            "errors": list(resp.errors or []),
        },
    }
    if artifact is not None:
        w, h = artifact.size
        doc["image"] = {"index": artifact.index, "mime_type": artifact.mime_type, "width": w, "height": h,
                        "source_url": safe_url(artifact.source_url),
                        "original_sha256": hashlib.sha256(artifact.data).hexdigest()}
    return doc


def _dumps(doc: Dict[str, Any], redact: Iterable[Any] = (), *, indent: Optional[int] = None) -> str:
    """The document as JSON, every string of it scrubbed of the keys in `redact` (the values, not
    the JSON text: decoding a spelled key in the text could break the JSON)."""
    scrubber = SecretScrubber(redact)
    if scrubber:
        doc = scrubber.walk(json.loads(json.dumps(doc, default=str)), thorough=True)
    return json.dumps(doc, ensure_ascii=indent is None, indent=indent, default=str,
                      separators=None if indent else (",", ":"))


# --------------------------------------------------------------------------------------------
# embedding (container surgery: the compressed image data is never re-encoded)
# --------------------------------------------------------------------------------------------
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _text_fields(doc: Dict[str, Any]) -> List[Tuple[str, str]]:
    fields = [("prompt", doc.get("prompt") or ""), ("Description", doc.get("prompt") or "")]
    if doc.get("revised_prompt"):
        fields.append(("revised_prompt", doc["revised_prompt"]))
    fields += [("model", doc.get("model") or ""), ("api", doc.get("api_type") or ""),
               ("Software", doc.get("software") or _software())]
    return [(k, _CONTROL.sub(" ", str(v))) for k, v in fields]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_itxt(keyword: str, text: str) -> bytes:
    # keyword \0 compression-flag compression-method language \0 translated-keyword \0 text (UTF-8)
    return _png_chunk(b"iTXt", keyword.encode("latin-1") + b"\x00\x00\x00" + b"\x00" + b"\x00" + text.encode("utf-8"))


def _png_chunks(data: bytes) -> List[Tuple[bytes, int, int]]:
    """(type, start, end) of every chunk; raises ValueError on a damaged file."""
    if not data.startswith(_PNG_SIG):
        raise ValueError("not a PNG file")
    out, pos = [], len(_PNG_SIG)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            raise ValueError("truncated PNG chunk")
        out.append((kind, pos, end))
        pos = end
        if kind == b"IEND":
            break
    return out


def _embed_png(data: bytes, doc_json: str, fields: List[Tuple[str, str]]) -> bytes:
    chunks = _png_chunks(data)
    first_idat = next((s for k, s, _ in chunks if k == b"IDAT"), None)
    if first_idat is None:
        raise ValueError("PNG without image data")
    ours = b"".join(_png_itxt(k, v) for k, v in fields) + _png_itxt(DOC_KEY, doc_json)
    return data[:first_idat] + ours + data[first_idat:]


def _xml(text: Any) -> str:
    return html.escape(_CONTROL.sub(" ", "" if text is None else str(text)), quote=True)


def _xmp_packet(doc: Dict[str, Any], doc_json: str) -> bytes:
    prompt = _xml(doc.get("prompt"))
    revised = (f"\n    <imagegen:revisedPrompt>{_xml(doc['revised_prompt'])}</imagegen:revisedPrompt>"
               if doc.get("revised_prompt") else "")
    packet = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f'    xmlns:imagegen="{XMP_NS}"\n'
        f'    xmp:CreatorTool="{_xml(doc.get("software"))}"\n'
        f'    imagegen:model="{_xml(doc.get("model"))}"\n'
        f'    imagegen:api="{_xml(doc.get("api_type"))}">\n'
        f'    <dc:description><rdf:Alt><rdf:li xml:lang="x-default">{prompt}</rdf:li></rdf:Alt></dc:description>\n'
        f'    <imagegen:prompt>{prompt}</imagegen:prompt>{revised}\n'
        f'    <imagegen:metadata>{_xml(doc_json)}</imagegen:metadata>\n'
        '  </rdf:Description>\n'
        ' </rdf:RDF>\n'
        '</x:xmpmeta>\n'
        '<?xpacket end="w"?>'
    )
    return packet.encode("utf-8")


_JPEG_XMP_HEADER = b"http://ns.adobe.com/xap/1.0/\x00"
_JPEG_MAX_SEGMENT = 65533  # payload bytes of one APPn segment (the length field counts itself)


def _jpeg_segments(data: bytes) -> Tuple[List[Tuple[int, int, int]], int]:
    """The header segments (marker, start, end) up to the first SOS/SOF... and where they end."""
    if data[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG file")
    segs, pos = [], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            break  # DQT, SOF, DHT, SOS...: the image data starts here
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        segs.append((marker, pos, pos + 2 + length))
        pos += 2 + length
    return segs, pos


def _jpeg_app(marker: int, payload: bytes) -> bytes:
    if len(payload) > _JPEG_MAX_SEGMENT:
        raise ValueError("segment too large")
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _exif_payload(doc: Dict[str, Any]) -> Optional[bytes]:
    from PIL import Image
    exif = Image.Exif()
    # EXIF text is ASCII: an ASCII rendering of the prompt here, the exact text is in the XMP
    prompt = unicodedata.normalize("NFKD", _CONTROL.sub(" ", str(doc.get("prompt") or "")))
    exif[0x010E] = prompt.encode("ascii", "ignore").decode("ascii")[:8000]  # ImageDescription
    exif[0x0131] = str(doc.get("software") or _software())                  # Software
    try:
        payload = exif.tobytes()
    except Exception:
        return None
    return payload if payload.startswith(b"Exif\x00\x00") and len(payload) <= _JPEG_MAX_SEGMENT else None


def _embed_jpeg(data: bytes, doc: Dict[str, Any], doc_json: str) -> bytes:
    segs, _ = _jpeg_segments(data)
    has_exif = any(m == 0xE1 and data[s + 4:s + 10] == b"Exif\x00\x00" for m, s, _ in segs)
    # after SOI and a JFIF APP0 / existing EXIF (they must come first), before everything else
    insert = 2
    for m, s, e in segs:
        if m == 0xE0 or (m == 0xE1 and data[s + 4:s + 10] == b"Exif\x00\x00"):
            insert = e
        else:
            break
    # an XMP packet already there (from the API) is replaced by ours: one XMP per file
    kept = bytearray(data[:insert])
    tail = bytearray()
    pos = insert
    for m, s, e in segs:
        if s < insert:
            continue
        if m == 0xE1 and data[s + 4:s + 4 + len(_JPEG_XMP_HEADER)] == _JPEG_XMP_HEADER:
            tail += data[pos:s]
            pos = e
    tail += data[pos:]
    new = b""
    if not has_exif:
        exif = _exif_payload(doc)
        if exif:
            new += _jpeg_app(0xE1, exif)
    packet = _xmp_packet(doc, doc_json)
    if len(_JPEG_XMP_HEADER) + len(packet) > _JPEG_MAX_SEGMENT:
        packet = _xmp_packet(_shrink(doc), _dumps(_shrink(doc)))
    new += _jpeg_app(0xE1, _JPEG_XMP_HEADER + packet)
    return bytes(kept) + new + bytes(tail)


def _shrink(doc: Dict[str, Any]) -> Dict[str, Any]:
    """A document that fits one JPEG segment (very long prompts): the sidecar has the rest."""
    d = json.loads(json.dumps(doc, default=str))
    d["truncated"] = True
    for key in ("prompt", "revised_prompt"):
        if isinstance(d.get(key), str):
            d[key] = d[key][:4000]
    d["request"]["prompt"] = d.get("prompt")
    d["response"]["text"] = None
    d["response"]["usage"] = None
    return d


def _riff_chunks(data: bytes) -> List[Tuple[bytes, bytes]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    out, pos = [], 12
    end = min(len(data), 8 + struct.unpack("<I", data[4:8])[0])
    while pos + 8 <= end:
        kind = data[pos:pos + 4]
        size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        body = data[pos + 8:pos + 8 + size]
        if len(body) != size:
            raise ValueError("truncated WebP chunk")
        out.append((kind, body))
        pos += 8 + size + (size & 1)
    return out


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\x00" if len(body) & 1 else b"")


def _embed_webp(data: bytes, doc: Dict[str, Any], doc_json: str) -> bytes:
    chunks = _riff_chunks(data)
    if not chunks:
        raise ValueError("empty WebP file")
    xmp = _xmp_packet(doc, doc_json)
    kinds = [k for k, _ in chunks]
    if kinds[0] == b"VP8X":
        head = bytearray(chunks[0][1])
        head[0] |= 0x04                                   # XMP metadata present
        rest = [(k, b) for k, b in chunks[1:] if k != b"XMP "]
        body = _riff_chunk(b"VP8X", bytes(head)) + b"".join(_riff_chunk(k, b) for k, b in rest)
    else:
        from PIL import Image
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
        flags = 0x04
        if kinds[0] == b"VP8L" and len(chunks[0][1]) >= 5:
            bits = int.from_bytes(chunks[0][1][1:5], "little")
            if (bits >> 28) & 1:
                flags |= 0x10                             # alpha
        head = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
        body = _riff_chunk(b"VP8X", head) + b"".join(_riff_chunk(k, b) for k, b in chunks)
    body += _riff_chunk(b"XMP ", xmp)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def embed_metadata(data: bytes, doc: Dict[str, Any], *, redact: Iterable[Optional[str]] = ()) -> bytes:
    """`data` with `doc` embedded (PNG iTXt, JPEG EXIF+XMP, WebP XMP); other formats unchanged.

    Only the container changes: the compressed image data is copied as is, so the decoded pixels
    are exactly the ones the API sent. A file that cannot be parsed is returned unchanged.
    """
    redact = list(redact)
    doc_json = _dumps(doc, redact)
    if redact:
        doc = json.loads(doc_json)
    mime = sniff_mime(data)
    try:
        if mime == "image/png":
            return _embed_png(data, doc_json, _text_fields(doc))
        if mime == "image/jpeg":
            return _embed_jpeg(data, doc, doc_json)
        if mime == "image/webp":
            return _embed_webp(data, doc, doc_json)
    except (ValueError, struct.error, OSError):
        return data
    return data


_XMP_DOC = re.compile(r"<imagegen:metadata>(.*?)</imagegen:metadata>", re.S)


def _doc_from_xmp(xmp: Union[bytes, str, None]) -> Optional[Dict[str, Any]]:
    if not xmp:
        return None
    text = xmp.decode("utf-8", "replace") if isinstance(xmp, (bytes, bytearray)) else str(xmp)
    m = _XMP_DOC.search(text)
    if not m:
        return None
    return load_document(html.unescape(m.group(1)))


#: the deepest nesting a metadata document may have (this module writes 3 levels; `usage` as an
#: API sent it may add a few)
MAX_DOC_DEPTH = 32


def load_document(text: Union[str, bytes]) -> Optional[Dict[str, Any]]:
    """A metadata document (sidecar or embedded) read from a file that may come from anyone: a
    JSON object nested at most MAX_DOC_DEPTH levels, else None (never a RecursionError)."""
    try:
        doc = load_json_answer(text, MAX_DOC_DEPTH)
    except ValueError:      # invalid, too deep, or not UTF-8
        return None
    return doc if isinstance(doc, dict) else None


def read_embedded(source: Union[PathLike, bytes]) -> Optional[Dict[str, Any]]:
    """The document embedded by `save_response` in an image file (or its bytes), or None."""
    data = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    data = bytes(data)
    mime = sniff_mime(data)
    try:
        if mime == "image/png":
            for kind, s, e in _png_chunks(data):
                if kind == b"iTXt":
                    body = data[s + 8:e - 4]
                    key, _, rest = body.partition(b"\x00")
                    if key == DOC_KEY.encode() and len(rest) >= 2 and rest[0] == 0:
                        _lang, _, rest2 = rest[2:].partition(b"\x00")
                        _tkey, _, text = rest2.partition(b"\x00")
                        return load_document(text)
                if kind == b"IDAT":
                    break
            return None
        if mime == "image/jpeg":
            segs, _ = _jpeg_segments(data)
            for m, s, e in segs:
                if m == 0xE1 and data[s + 4:s + 4 + len(_JPEG_XMP_HEADER)] == _JPEG_XMP_HEADER:
                    return _doc_from_xmp(data[s + 4 + len(_JPEG_XMP_HEADER):e])
            return None
        if mime == "image/webp":
            for kind, body in _riff_chunks(data):
                if kind == b"XMP ":
                    return _doc_from_xmp(body)
            return None
    except (ValueError, struct.error, UnicodeDecodeError):
        return None
    return None


# --------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------
class SaveResult(NamedTuple):
    """What `save_response` wrote: image paths (in artifact order) and readable error messages."""
    paths: List[str]
    errors: List[str]
    sidecars: List[str] = []
    inputs: List[str] = []


def _save_inputs(directory: Path, base: str, request: ImageRequest, settings: Dict[str, Any],
                 errors: List[str]) -> List[str]:
    """Copy the request's input images (and mask) next to the outputs; note their names in
    `settings` (images[i]["file"], mask["file"]). A file already in `directory` with the same
    bytes is referenced, not copied."""
    written: List[str] = []
    items = [(v, d, f"input-{i + 1}") for i, (v, d) in enumerate(zip(request.images or [], settings.get("images") or []))]
    if request.mask is not None and settings.get("mask"):
        items.append((request.mask, settings["mask"], "mask"))
    for value, desc, tag in items:
        if not desc.get("sha256"):
            continue
        src = desc.get("source")
        if src and Path(src).parent == directory.resolve():
            desc["file"] = Path(src).name
            continue
        try:
            img = InputImage.from_any(value)
            target = _reserve_pair(directory, f"{base}-{tag}", EXT_BY_MIME.get(img.mime_type, ".bin"), False)
            _atomic_write(target, img.data)
        except Exception as e:  # an input that cannot be copied must not lose the outputs
            errors.append(f"could not copy the {tag.replace('-', ' ')} to {directory}: {e}")
            continue
        desc["file"] = target.name
        written.append(str(target))
    return written


def save_response(resp: ImageResponse, directory: PathLike, *, prompt: Optional[str] = None,
                  request: Optional[ImageRequest] = None, embed: bool = True, sidecar: bool = True,
                  save_inputs: bool = True, redact: Iterable[Optional[str]] = (),
                  now: Optional[float] = None) -> SaveResult:
    """Write every artifact of `resp` to `directory` (created if needed) with its metadata.

    Names: ``YYYYmmdd-HHMMSS-<slug>-<i>.<ext>`` (i from 1; ``-2``... when taken). Sets each
    artifact's ``.path`` and appends to ``resp.paths``; the in-memory artifact keeps the bytes as
    received. ``redact``: strings (tokens) masked wherever they would appear. Never raises for
    I/O problems: they come back in ``SaveResult.errors``.
    """
    d = Path(directory).expanduser()
    request = request if request is not None else resp.request
    prompt = prompt if prompt is not None else (request.prompt if request is not None else "")
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base = f"{stamp}-{slugify(prompt)}"
    paths: List[str] = []
    sidecars: List[str] = []
    errors: List[str] = []
    inputs: List[str] = []
    if not resp.artifacts:
        return SaveResult(paths, errors, sidecars, inputs)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return SaveResult(paths, [f"could not create {d}: {e.strerror or e}"], sidecars, inputs)
    redact = [r for r in redact if r] + [getattr(request, "token", None)]
    settings = request_settings(request, resp)
    if prompt and not settings.get("prompt"):
        settings["prompt"] = prompt
    if save_inputs and request is not None and (request.images or request.mask is not None):
        inputs = _save_inputs(d, base, request, settings, errors)
    for i, art in enumerate(resp.artifacts, start=1):
        target: Optional[Path] = None
        try:
            target = _reserve_pair(d, f"{base}-{i}", art.extension, sidecar)
            doc = metadata_document(resp, art, request=request, settings=settings, created=now)
            doc["file"] = target.name
            data = embed_metadata(art.data, doc, redact=redact) if embed else art.data
            _atomic_write(target, data)
            if sidecar:
                side = dict(doc)
                side["sha256"] = hashlib.sha256(data).hexdigest()
                side["bytes"] = len(data)
                _atomic_write(sidecar_path(target), (_dumps(side, redact, indent=2) + "\n").encode("utf-8", "replace"),
                              SIDECAR_MODE)
                sidecars.append(str(sidecar_path(target)))
        except OSError as e:
            errors.append(f"could not save image {i} to {d}: {e.strerror or e}")
            if target is not None and target.exists() and target.stat().st_size == 0:
                _unlink(target)
                _unlink(sidecar_path(target))
            continue
        art.path = str(target)
        paths.append(str(target))
        resp.paths.append(str(target))
    return SaveResult(paths, errors, sidecars, inputs)
