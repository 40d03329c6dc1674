"""OpenRouter's ``/chat/completions`` with image output: what a call draws and says, and the
``chat.completion`` body with the images in ``message.images``."""
from __future__ import annotations

import secrets
import time
from typing import Any, Dict, List, Tuple

from aiohttp import web

from .answers import send_payload
from .body import Body
from .call import Call, Generated, short_prompt
from .images import RenderSpec, aspect_ratio_size
from .stream_hook import answer_stream
from .validate import validate_chat


def chat_payload(call: Call, p: Dict[str, Any], gens: List[Generated], text: str) -> Dict[str, Any]:
    """An OpenRouter chat.completion with the images in ``message.images``."""
    images = []
    for i, g in enumerate(gens):
        url = call.file_url(g) if call.fault_name == "url" else f"data:{g.mime};base64,{g.b64}"
        images.append({"type": "image_url", "image_url": {"url": url}, "index": i})
    message: Dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "reasoning": None}
    if images:
        message["images"] = images
    prompt_tokens = max(1, len(p["prompt"].split()) * 4 // 3) + 258 * len(p["images"])
    completion_tokens = 1290 * len(gens) + max(1, len(text.split()))
    return {
        "id": f"gen-{int(time.time())}-{secrets.token_urlsafe(15)[:20]}",
        "provider": "Google", "model": p["model"], "object": "chat.completion", "created": int(time.time()),
        "system_fingerprint": None,
        "choices": [{"logprobs": None, "finish_reason": "stop", "native_finish_reason": "STOP", "index": 0,
                     "message": message}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "cost": round(0.039 * len(gens) + 0.0000003 * prompt_tokens, 6),
                  "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 1290 * len(gens)}},
    }


async def chat_plan(call: Call, p: Dict[str, Any]) -> Tuple[List[RenderSpec], str]:
    """What a chat call draws and says (input images resolved): shared by the JSON and SSE answers."""
    inputs = [await call.resolve_image(r) for r in p["images"]]
    subject = short_prompt(p["prompt"]) or "your request"
    if not p["draw"]:
        return [], f"(text only — add \"image\" to modalities for a picture) A short description of {subject}."
    if call.fault_name == "no_image":
        return [], "I can't draw that."
    w, h = aspect_ratio_size(p["aspect_ratio"], p["image_size"])
    seed = p["seed"]
    spec = RenderSpec(prompt=p["prompt"], width=w, height=h, fmt=p["output_format"],
                      index=0, variant=call.state.next_variant() if seed is None else f"seed:{seed}",
                      model=p["model"], inputs=inputs)
    text = f"Here is an image of {subject}." if not inputs else f"Here is the edited image: {subject}."
    return [spec], text


async def handle_chat(call: Call, body: Body) -> web.StreamResponse:
    p = validate_chat(body.json)
    if p["stream"]:
        return await answer_stream(call, p)
    specs, text = await chat_plan(call, p)
    gens = await call.draw(specs) if specs else []
    payload = chat_payload(call, p, gens, text)
    first = gens[0].b64 if gens and call.fault_name != "url" else None
    return await send_payload(call, payload, first)
