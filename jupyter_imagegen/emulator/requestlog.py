"""What the request log says about a call: a new entry per API request, a summary of the body's
interesting fields, and no secrets (no Authorization / cookie / key-like headers; the bearer
token masked wherever it appears, e.g. quoted in a prompt)."""
from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

from aiohttp import web

from .auth import bearer_token, mask_key
from .body import Body
from .call import Call

#: request headers never written to the request log
SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie"))
_SECRET_WORDS = ("key", "token", "auth", "secret", "password", "cookie", "session")


def loggable_header(name: str) -> bool:
    n = name.lower()
    return n not in SECRET_HEADERS and not any(w in n for w in _SECRET_WORDS)


def scrub(value: Any, secret: Optional[str]) -> Any:
    """Replace a secret wherever it appears in a log entry (a prompt could quote it)."""
    if not secret or len(secret) < 4:
        return value
    if isinstance(value, str):
        return value.replace(secret, mask_key(secret)) if secret in value else value
    if isinstance(value, dict):
        return {k: scrub(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v, secret) for v in value]
    return value


def new_entry(request: web.Request, api: str) -> Dict[str, Any]:
    """The log entry of an API request, before anything is known about it."""
    return {
        "time": time.time(), "method": request.method, "path": request.path, "api": api,
        "fault": None, "status": None, "model": None, "prompt": None, "input_images": 0,
        "auth": None, "error": None,
        "content_type": request.headers.get("Content-Type"),
        "headers": {k: v for k, v in request.headers.items() if loggable_header(k)},
    }


def summarize(call: Call, body: Body) -> None:
    """Put the request's interesting fields (no secrets) into the log entry."""
    e = call.entry
    src: Dict[str, Any] = body.json if isinstance(body.json, dict) else dict(body.fields)
    e["body_keys"] = sorted(src.keys()) + sorted({f[0] for f in body.files})
    model = src.get("model")
    e["model"] = model if isinstance(model, str) else None
    for key in ("n", "size", "quality", "output_format", "background", "response_format", "stream"):
        if key in src:
            e[key] = src[key]
    prompt = src.get("prompt")
    images = len(body.files)
    if call.api == "openrouter_chat":
        cfg = src.get("image_config")
        if isinstance(cfg, dict):
            e["aspect_ratio"] = cfg.get("aspect_ratio")
            e["image_size"] = cfg.get("image_size")
        e["modalities"] = src.get("modalities")
        prompt, images = _chat_text(src.get("messages"))
    elif call.api == "openai_responses":
        prompt, images = _responses_text(src.get("input"))
        tools = src.get("tools")
        if isinstance(tools, list):
            for t in tools:
                if isinstance(t, dict) and t.get("type") == "image_generation":
                    e["tool"] = {k: v for k, v in t.items() if k != "input_image_mask"}
    elif call.api == "openai_edits" and isinstance(src.get("images"), list):
        images = len(src["images"])
    secret = bearer_token(call.request)
    e["prompt"] = scrub(prompt[:500], secret) if isinstance(prompt, str) else None
    if "tool" in e:
        e["tool"] = scrub(e["tool"], secret)
    e["input_images"] = images


def _chat_text(messages: Any) -> Tuple[Optional[str], int]:
    texts, images = [], 0
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict) or m.get("role") != "user":
                continue
            c = m.get("content")
            if isinstance(c, str):
                texts.append(c)
            elif isinstance(c, list):
                for p in c:
                    if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                        texts.append(p["text"])
                    elif isinstance(p, dict) and p.get("type") == "image_url":
                        images += 1
    return ("\n".join(texts) if texts else None), images


def _responses_text(inp: Any) -> Tuple[Optional[str], int]:
    if isinstance(inp, str):
        return inp, 0
    texts, images = [], 0
    if isinstance(inp, list):
        for m in inp:
            if not isinstance(m, dict):
                continue
            c = m.get("content")
            if isinstance(c, str) and m.get("role") == "user":
                texts.append(c)
            elif isinstance(c, list):
                for p in c:
                    if isinstance(p, dict) and p.get("type") == "input_text" and isinstance(p.get("text"), str):
                        texts.append(p["text"])
                    elif isinstance(p, dict) and p.get("type") == "input_image":
                        images += 1
    return ("\n".join(texts) if texts else None), images
