"""OpenAI's ``/responses`` with the ``image_generation`` tool: what a call draws, says and revises
the prompt to, and the completed Response body (an ``image_generation_call`` per image, then the
assistant's message); ``previous_response_id`` must name a response this emulator gave."""
from __future__ import annotations

import secrets
import time
from typing import Any, Dict, List, Optional, Tuple

from aiohttp import web

from .answers import send_payload
from .body import Body
from .call import Call, Generated, short_prompt
from .images import RenderSpec, open_image
from .stream_hook import answer_stream
from .validate import ApiError, resolve_size, validate_responses


def responses_payload(call: Call, p: Dict[str, Any], gens: List[Generated], text: str) -> Dict[str, Any]:
    """A completed Response: an ``image_generation_call`` per image, then the assistant message."""
    created = int(time.time())
    output: List[Dict[str, Any]] = []
    for g in gens:
        output.append({"id": "ig_" + secrets.token_hex(24), "type": "image_generation_call",
                       "status": "completed", "action": p.get("action", "generate"),
                       "background": p["resolved_background"], "output_format": p["output_format"],
                       "quality": p["resolved_quality"], "size": f"{g.width}x{g.height}",
                       "result": g.b64, "revised_prompt": g.revised_prompt})
    output.append({"id": "msg_" + secrets.token_hex(24), "type": "message", "status": "completed",
                   "role": "assistant",
                   "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]})
    in_tokens = max(1, len(p["prompt"].split()) * 4 // 3) + 85 * len(p["images"]) + 250
    out_tokens = max(1, len(text.split()) * 4 // 3) + 30
    tools = []
    for t in p["tools"]:
        if isinstance(t, dict) and t.get("type") == "image_generation":
            t = {"type": "image_generation", "background": "auto", "model": "gpt-image-1",
                 "moderation": "auto", "output_compression": 100, "output_format": "png",
                 "partial_images": 0, "quality": "auto", "size": "auto", **t}
        tools.append(t)
    rid = "resp_" + secrets.token_hex(24)
    return {
        "id": rid, "object": "response", "created_at": created, "status": "completed",
        "background": False, "error": None, "incomplete_details": None, "instructions": p["instructions"],
        "max_output_tokens": None, "model": p["model"], "output": output, "parallel_tool_calls": True,
        "previous_response_id": p["previous_response_id"], "reasoning": {"effort": None, "summary": None},
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": p["tool_choice"], "tools": tools, "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": in_tokens + out_tokens},
        "user": None, "metadata": {},
    }


async def responses_plan(call: Call, p: Dict[str, Any]) -> Tuple[List[RenderSpec], str, Optional[str]]:
    """What a /responses call draws, says and revises the prompt to (inputs resolved; ``p`` gets the
    resolved output fields): shared by the JSON and SSE answers."""
    subject = short_prompt(p["prompt"]) or "your request"
    if not p["draw"]:
        p.setdefault("resolved_background", "opaque")
        p.setdefault("output_format", "png")
        p.setdefault("resolved_quality", "high")
        return [], f"(text only — no image_generation tool was enabled) A short description of {subject}.", None
    if call.fault_name == "no_image":
        return [], "I can't help with generating that image.", None
    inputs = [await call.resolve_image(r) for r in p["images"]]
    mask = await call.resolve_image(p["mask"]) if p.get("mask") is not None else None
    if mask is not None and inputs and open_image(mask).size != open_image(inputs[0]).size:
        mask = None
    auto = (1024, 1024)
    if inputs:
        fw, fh = open_image(inputs[0]).size
        auto = (1536, 1024) if fw > fh * 1.2 else (1024, 1536) if fh > fw * 1.2 else (1024, 1024)
    w, h, _ = resolve_size(p["size_param"], p["tool_model"], param="tools[0].size", auto=auto)
    spec = RenderSpec(prompt=p["prompt"] or "(no prompt)", width=w, height=h, fmt=p["output_format"],
                      background=p["resolved_background"], index=0, variant=call.state.next_variant(),
                      compression=p["output_compression"], model=p["tool_model"], inputs=inputs, mask=mask)
    revised = f"{p['prompt'] or 'An image'}, rendered as a bold flat illustration."
    text = f"Here is the image of {subject}." if not inputs else f"Here is the edited image: {subject}."
    return [spec], text, revised


async def handle_responses(call: Call, body: Body) -> web.StreamResponse:
    p = validate_responses(body.json)
    prev = p["previous_response_id"]
    if prev is not None and not call.state.has_response(prev):
        raise ApiError(400, f"Previous response with id '{prev}' not found.", param="previous_response_id",
                       code="previous_response_not_found")
    if p["stream"]:
        return await answer_stream(call, p)
    specs, text, revised = await responses_plan(call, p)
    gens = await call.draw(specs) if specs else []
    for g in gens:
        g.revised_prompt = revised
    payload = responses_payload(call, p, gens, text)
    call.state.remember_response(payload["id"])
    return await send_payload(call, payload, gens[0].b64 if gens else None)
