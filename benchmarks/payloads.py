"""Synthetic "photo-like" images and the real wire shapes that carry them (see docs/WIRE.md).

Noise at three scales gives PNG sizes close to real model output (about 2 MB for 1024x1024,
about 35 MB for 4096x4096), unlike flat test images that compress to almost nothing.
"""
from __future__ import annotations

import base64
import io
import json
from typing import Any, Dict

from PIL import Image, ImageChops

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def photo_like(width: int, height: int) -> Image.Image:
    chans = []
    for c in range(3):
        coarse = Image.effect_noise((max(1, width // 64), max(1, height // 64)), 60 + 10 * c)
        coarse = coarse.resize((width, height), Image.BICUBIC)
        mid = Image.effect_noise((max(1, width // 8), max(1, height // 8)), 30).resize((width, height), Image.BILINEAR)
        fine = Image.effect_noise((width, height), 6)
        chans.append(ImageChops.add(ImageChops.add(coarse, mid, scale=2.0), fine, scale=1.0, offset=-64))
    return Image.merge("RGB", chans)


def png_bytes(width: int, height: int, compress_level: int = 6) -> bytes:
    buf = io.BytesIO()
    photo_like(width, height).save(buf, "PNG", compress_level=compress_level)
    return buf.getvalue()


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def images_body(png: bytes, n: int = 1) -> Dict[str, Any]:
    """OpenAI `POST /images/generations` answer (gpt-image: b64_json)."""
    b64 = _b64(png)
    return {"created": 1730000000, "data": [{"b64_json": b64, "revised_prompt": "a lighthouse at dusk"}] * n,
            "background": "opaque", "output_format": "png", "quality": "high", "size": "1024x1024",
            "usage": {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
                      "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}}


def responses_body(png: bytes) -> Dict[str, Any]:
    """OpenAI `POST /responses` answer with one image_generation_call item."""
    return {"id": "resp_bench", "object": "response", "created_at": 1730000000, "status": "completed",
            "model": "gpt-4.1-mini", "error": None, "incomplete_details": None, "instructions": None,
            "parallel_tool_calls": True, "tool_choice": {"type": "image_generation"}, "tools": [],
            "output": [
                {"type": "image_generation_call", "id": "ig_bench", "status": "completed",
                 "result": _b64(png), "revised_prompt": "a lighthouse at dusk", "output_format": "png",
                 "size": "1024x1024", "quality": "high", "background": "opaque"},
                {"type": "message", "id": "msg_bench", "status": "completed", "role": "assistant",
                 "content": [{"type": "output_text", "text": "Here it is.", "annotations": []}]}],
            "usage": {"input_tokens": 20, "output_tokens": 40, "total_tokens": 60,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}}}


def chat_body(png: bytes) -> Dict[str, Any]:
    """OpenRouter `POST /chat/completions` answer with one image in message.images."""
    return {"id": "gen-bench", "object": "chat.completion", "created": 1730000000,
            "model": "google/gemini-2.5-flash-image",
            "choices": [{"index": 0, "finish_reason": "stop", "native_finish_reason": "STOP",
                         "message": {"role": "assistant", "content": "Here is your image.",
                                     "images": [{"type": "image_url",
                                                 "image_url": {"url": "data:image/png;base64," + _b64(png)}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1290, "total_tokens": 1300, "cost": 0.039}}


BODIES = {"images": images_body, "responses": responses_body, "chat": chat_body}


def encode(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()
