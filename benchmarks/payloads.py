"""Synthetic "photo-like" images and the real wire shapes that carry them (see docs/WIRE.md).

Noise at three scales gives PNG sizes close to real model output (about 2 MB for 1024x1024,
about 35 MB for 4096x4096), unlike flat test images that compress to almost nothing; less fine
noise (`fine=1.5`) gives about 1.4 MB at 1024x1024.

`template(api, n)` is an answer split where its base64 images go, and `with_counter(png, i)` a
PNG made distinct by a tEXt chunk before IEND (correct CRC): the server's `/d/` routes answer a
different image on every call, so no cache can dedupe them.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from typing import Any, Dict, List, Optional, Sequence

from PIL import Image, ImageChops

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def photo_like(width: int, height: int, fine: float = 6) -> Image.Image:
    chans = []
    for c in range(3):
        coarse = Image.effect_noise((max(1, width // 64), max(1, height // 64)), 60 + 10 * c)
        coarse = coarse.resize((width, height), Image.BICUBIC)
        mid = Image.effect_noise((max(1, width // 8), max(1, height // 8)), 30).resize((width, height), Image.BILINEAR)
        grain = Image.effect_noise((width, height), fine)
        chans.append(ImageChops.add(ImageChops.add(coarse, mid, scale=2.0), grain, scale=1.0, offset=-64))
    return Image.merge("RGB", chans)


def png_bytes(width: int, height: int, compress_level: int = 6, fine: float = 6) -> bytes:
    buf = io.BytesIO()
    photo_like(width, height, fine).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def with_counter(png: bytes, counter: int) -> bytes:
    """`png` with a tEXt chunk (keyword "bench", the counter) inserted before IEND: a valid,
    distinct PNG of the same pixels."""
    if png[-12:] != _IEND:
        raise ValueError("not a PNG ending in IEND")
    data = b"bench\x00" + str(counter).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + _IEND


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def images_body(png: bytes, n: int = 1, b64s: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """OpenAI `POST /images/generations` answer (gpt-image: b64_json); `b64s`: the images'
    base64 texts (default `png` n times)."""
    b64s = list(b64s) if b64s is not None else [_b64(png)] * n
    return {"created": 1730000000,
            "data": [{"b64_json": b64, "revised_prompt": "a lighthouse at dusk"} for b64 in b64s],
            "background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024",
            "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                      "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}}


def responses_body(png: bytes, b64: Optional[str] = None) -> Dict[str, Any]:
    """OpenAI `POST /responses` answer with one image_generation_call item."""
    return {"id": "resp_bench", "object": "response", "created_at": 1730000000, "status": "completed",
            "model": "gpt-4.1-mini", "error": None, "incomplete_details": None, "instructions": None,
            "parallel_tool_calls": True, "tool_choice": {"type": "image_generation"}, "tools": [],
            "output": [
                {"type": "image_generation_call", "id": "ig_bench", "status": "completed",
                 "result": _b64(png) if b64 is None else b64, "revised_prompt": "a lighthouse at dusk", "output_format": "png",
                 "size": "1024x1024", "quality": "high", "background": "opaque"},
                {"type": "message", "id": "msg_bench", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Here it is.", "annotations": []}]}],
            "usage": {"input_tokens": 20, "output_tokens": 40, "total_tokens": 60,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def chat_body(png: bytes, b64: Optional[str] = None) -> Dict[str, Any]:
    """OpenRouter `POST /chat/completions` answer with one image in message.images."""
    return {"id": "gen-bench", "object": "chat.completion", "created": 1730000000,
            "model": "google/gemini-2.5-flash-image",
            "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "STOP",
                         "message": {"role": "assistant", "content": "Here is your image.",
                                     "images": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64,"
                                                                       + (_b64(png) if b64 is None else b64)}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1290, "total_tokens": 1300, "cost": 0.039}}


BODIES = {"images": images_body, "responses": responses_body, "chat": chat_body}


def encode(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


_MARK = "@@IMAGE@@"


def template(api: str, n: int = 1) -> List[bytes]:
    """The encoded answer of `api` ("images", "responses", "chat") split where its base64 images
    go: ``parts[0] + b64_1 + parts[1] + ... + b64_n + parts[n]`` (n > 1 for "images" only)."""
    if api == "images":
        body = images_body(b"", b64s=[_MARK] * n)
    else:
        body = BODIES[api](b"", b64=_MARK)
    parts = encode(body).split(_MARK.encode())
    assert len(parts) == (n if api == "images" else 1) + 1
    return parts


def fill(parts: List[bytes], pngs: Sequence[bytes]) -> bytes:
    """A `template` filled with these PNGs (base64-encoded)."""
    out = [parts[0]]
    for png, tail in zip(pngs, parts[1:]):
        out.append(base64.b64encode(png))
        out.append(tail)
    return b"".join(out)


def extract(api: str, payload: Dict[str, Any]) -> bytes:
    """The bare baseline's parse: the minimum to get the image bytes out of each wire shape."""
    if api == "openai_images":
        return base64.b64decode(payload["data"][0]["b64_json"])
    if api == "openai_responses":
        item = next(o for o in payload["output"] if o["type"] == "image_generation_call")
        return base64.b64decode(item["result"])
    url = payload["choices"][0]["message"]["images"][0]["image_url"]["url"]
    return base64.b64decode(url[url.index(",") + 1:])
