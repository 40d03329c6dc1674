"""Server-sent-event answers for ``"stream": true``, in the real event shapes of each API.

Imported by :mod:`~jupyter_imagegen.emulator.app`, which makes these handlers live:

* ``/images/generations`` and ``/images/edits``: ``partial_images`` (0-3) events
  ``image_generation.partial_image`` (edits: ``image_edit.partial_image``), each a real image
  that is less pixelated than the one before, then ``image_generation.completed`` with the final
  ``b64_json`` and ``usage``. Framing ``event: <type>\\ndata: <json>\\n\\n``.
* ``/responses``: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
  ``response.image_generation_call.in_progress`` / ``.generating`` / ``.partial_image``
  (``partial_image_b64``, ``partial_image_index``, ``output_index``, ``item_id``,
  ``sequence_number``) / ``.completed``, ``response.output_item.done``, the assistant message's
  text events, then ``response.completed`` with the whole response (as a non-stream answer).
* ``/chat/completions`` (OpenRouter): a ``: OPENROUTER PROCESSING`` comment, then
  ``data: {chat.completion.chunk}`` lines (the text, the image in ``choices[0].delta.images``,
  the finish chunk with ``usage``) and ``data: [DONE]``. OpenRouter has no partial images.

Timing: the headers go out at once; ``stream_delay`` seconds (the emulator's option, or a
``stream_slow:delay=s`` fault) pass before each image-bearing event, like a model that is still
drawing. A client that goes away is noticed within ~20 ms (the log entry's ``outcome`` becomes
``client_disconnected``). Faults: see :mod:`~jupyter_imagegen.emulator.faults` (``stream_break``,
``stream_error``, ``stream_slow`` and the stream forms of ``reset_after_headers``, ``truncate``,
``invalid_json``, ``slow_body``, ``no_image``).

The final image of a stream is drawn exactly as the non-stream answer draws it (same helpers),
so with a seed (OpenRouter) the streamed and the plain answer carry the same bytes.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from aiohttp import web
from PIL import Image

from . import faults as F
from .answers import hang_up
from .call import Call, Generated
from .images import encode
from .openai_images import image_specs
from .openai_responses import responses_payload, responses_plan
from .openrouter_chat import chat_payload, chat_plan
from .stream_hook import register_stream_handler
from .validate import image_usage

#: the comment OpenRouter sends while the model works
OPENROUTER_KEEPALIVE = ": OPENROUTER PROCESSING"
#: how often a waiting stream looks for a client that went away
POLL = 0.02
#: the longer side of each partial image's coarse grid, indexed from the *last* partial backwards
_PARTIAL_SIDES = (128, 32, 8)

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}


@dataclass
class Frame:
    """One server-sent event. ``wait``: the model "draws" for ``stream_delay`` before it;
    ``images``: ("partial" | "final", sha256 of the image bytes) it carries, for the request log."""
    data: str
    event: Optional[str] = None
    wait: bool = False
    images: List[Tuple[str, str]] = field(default_factory=list)

    def encode(self) -> bytes:
        head = f"event: {self.event}\n" if self.event else ""
        return f"{head}data: {self.data}\n\n".encode("utf-8")


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- partial images ---------------------------------------------------------------------------------

def partial_images(g: Generated, k: int) -> List[bytes]:
    """``k`` (0-3) coarser versions of a drawn image, coarsest first: the image reduced to a grid
    whose longer side is 8, 32 then 128 cells (the last partial is always the 128 one), scaled
    back up with square pixels and encoded like the final image."""
    if k <= 0:
        return []
    im = Image.open(io.BytesIO(g.data))
    im.load()
    transparent = im.mode in ("RGBA", "LA", "P") and g.fmt in ("png", "webp")
    im = im.convert("RGBA" if transparent else "RGB")
    w, h = im.size
    out = []
    for side in reversed(_PARTIAL_SIDES[:k]):
        scale = side / max(w, h)
        small = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
        out.append(encode(small.resize((w, h), Image.NEAREST), g.fmt, transparent=transparent))
    return out


async def _partials(gens: List[Generated], k: int) -> List[List[bytes]]:
    loop = asyncio.get_running_loop()
    return list(await asyncio.gather(*(loop.run_in_executor(None, partial_images, g, k) for g in gens)))


# -- playing a stream, with faults -------------------------------------------------------------------

class _Gone(Exception):
    """The client closed the connection."""


def _closed(call: Call) -> bool:
    t = call.request.transport
    return t is None or t.is_closing()


async def _pause(call: Call, seconds: float) -> None:
    """Sleep, but notice a client that went away (aiohttp does not cancel the handler)."""
    end = time.monotonic() + seconds
    while True:
        if _closed(call):
            raise _Gone()
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(POLL, left))


def _delay(call: Call) -> float:
    f = call.fault
    if f is not None and f.name in F.STREAM_FAULTS and "delay" in f.params:
        return f.number("delay", 0.0)
    return call.state.stream_delay


def _default_after(frames: List[Frame]) -> int:
    """Where a stream fault strikes by default: after the first image event when there are two or
    more (a partial was seen, the final was not), else before the only one."""
    waits = [i for i, fr in enumerate(frames) if fr.wait]
    if not waits:
        return max(0, len(frames) // 2)
    return waits[0] + 1 if len(waits) >= 2 else waits[0]


async def start_stream(call: Call) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={**call.headers, **SSE_HEADERS})
    await resp.prepare(call.request)
    return resp


async def play(call: Call, resp: web.StreamResponse, frames: List[Frame],
               error_frame: Optional[Frame] = None) -> web.StreamResponse:
    """Send ``frames`` (the last one is the terminal event), applying the delay and the faults;
    records ``stream_events`` (events sent), ``stream_images`` ([kind, sha256] of each image sent)
    and ``outcome`` in the request log."""
    entry, fault = call.entry, call.fault
    name = call.fault_name
    delay = _delay(call)
    stop_at: Optional[int] = None      # frames sent before a break / error
    if name in ("stream_break", "stream_error"):
        after = fault.params.get("after")
        stop_at = _default_after(frames) if after is None else int(float(after))
        stop_at = min(stop_at, len(frames) - 1)
    elif name == "reset_after_headers":
        stop_at = 0
    stall_at = len(frames) // 2 if name == "slow_body" else None
    sent = 0
    entry["stream_events"] = 0
    entry["stream_images"] = []
    try:
        for i, fr in enumerate(frames):
            if stop_at is not None and i == stop_at:
                if name == "stream_error" and error_frame is not None:
                    await resp.write(error_frame.encode())
                    entry["outcome"] = "stream_error"
                    await resp.write_eof()
                    return resp
                entry["outcome"] = "stream_break"
                if name == "stream_break" and fault.number("eof", 0) > 0:
                    await resp.write_eof()
                    return resp
                await asyncio.sleep(0.05)  # let what was written reach the socket
                hang_up(call.request, graceful=True)
                return resp
            if i == stall_at:
                await _pause(call, fault.number("delay", 2.0))
            if fr.wait and delay > 0:
                await _pause(call, delay)
            elif _closed(call):
                raise _Gone()
            data = fr.encode()
            if name == "invalid_json" and i == 0:
                data = (f"event: {fr.event}\n" if fr.event else "").encode() + b"data: " + F.INVALID_JSON_BODY.split(b"\n")[0] + b"\n\n"
                entry["outcome"] = "invalid_json"
            if name == "truncate" and (fr.wait or i == len(frames) - 1):
                await resp.write(data[:len(data) // 2])   # an image event: inside its base64
                entry["outcome"] = "truncate"
                await resp.write_eof()
                return resp
            await resp.write(data)
            sent += 1
            entry["stream_events"] = sent
            entry["stream_images"].extend([kind, sha] for kind, sha in fr.images)
        await resp.write_eof()
        entry.setdefault("outcome", "stream_completed")
    except (_Gone, ConnectionError):
        entry["client_disconnected"] = True
        entry["outcome"] = entry.get("outcome") or "client_disconnected"
    return resp


# -- OpenAI images -----------------------------------------------------------------------------------

async def stream_images(call: Call, p: Dict[str, Any]) -> web.StreamResponse:
    prefix = "image_edit" if call.api == "openai_edits" else "image_generation"
    inputs = p.get("input_data") or []
    specs = image_specs(call, p, inputs, p.get("mask_data"))
    resp = await start_stream(call)
    gens = await call.draw(specs)
    k = int(p.get("partial_images") or 0)
    partials = await _partials(gens, k)
    n_inputs = len(p.get("images") or ())
    frames: List[Frame] = []
    for g, parts in zip(gens, partials):
        common = {"created_at": int(time.time()), "size": f"{g.width}x{g.height}", "quality": p["quality"],
                  "background": p["background"], "output_format": g.fmt}
        for j, data in enumerate(parts):
            frames.append(Frame(_json({"type": f"{prefix}.partial_image",
                                       "b64_json": base64.b64encode(data).decode("ascii"),
                                       **common, "partial_image_index": j}),
                                event=f"{prefix}.partial_image", wait=True, images=[("partial", _sha(data))]))
        frames.append(Frame(_json({"type": f"{prefix}.completed", "b64_json": g.b64, **common,
                                   "usage": image_usage(p["prompt"], g.width, g.height, p["quality"], 1,
                                                        n_inputs)}),
                            event=f"{prefix}.completed", wait=True, images=[("final", _sha(g.data))]))
    message = call.fault.params.get("message") if call.fault is not None and call.fault_name == "stream_error" else None
    error = Frame(_json({"type": "error", "error": {
        "type": "server_error", "code": "server_error", "param": None,
        "message": message or "The server had an error while processing your request. Sorry about that!"}}),
        event="error")
    return await play(call, resp, frames, error)


# -- OpenAI Responses --------------------------------------------------------------------------------

async def stream_responses(call: Call, p: Dict[str, Any]) -> web.StreamResponse:
    specs, text, revised = await responses_plan(call, p)   # input errors answer 400 before the stream
    resp = await start_stream(call)
    gens = await call.draw(specs) if specs else []
    for g in gens:
        g.revised_prompt = revised
    k = int(p.get("partial_images") or 0)
    partials = await _partials(gens, k)
    final = responses_payload(call, p, gens, text)
    call.state.remember_response(final["id"])
    seq = iter(range(1 << 30))
    frames: List[Frame] = []

    def add(type_: str, wait: bool = False, images: Tuple[Tuple[str, str], ...] = (), **fields: Any) -> None:
        frames.append(Frame(_json({"type": type_, "sequence_number": next(seq), **fields}), event=type_,
                            wait=wait, images=list(images)))

    pending = {**final, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=pending)
    add("response.in_progress", response=pending)
    for oi, item in enumerate(final["output"]):
        iid = item["id"]
        if item["type"] == "image_generation_call":
            add("response.output_item.added", output_index=oi,
                item={"id": iid, "type": "image_generation_call", "status": "in_progress"})
            add("response.image_generation_call.in_progress", output_index=oi, item_id=iid)
            add("response.image_generation_call.generating", output_index=oi, item_id=iid)
            for j, data in enumerate(partials[oi] if oi < len(partials) else []):
                add("response.image_generation_call.partial_image", wait=True, images=[("partial", _sha(data))],
                    output_index=oi, item_id=iid,
                    partial_image_index=j, partial_image_b64=base64.b64encode(data).decode("ascii"),
                    size=item["size"], quality=item["quality"], background=item["background"],
                    output_format=item["output_format"])
            add("response.image_generation_call.completed", wait=True, output_index=oi, item_id=iid)
            add("response.output_item.done", output_index=oi, item=item,
                images=[("final", _sha(gens[oi].data))] if oi < len(gens) else ())
        else:  # the assistant's message
            part = item["content"][0]
            add("response.output_item.added", output_index=oi,
                item={**item, "status": "in_progress", "content": []})
            add("response.content_part.added", item_id=iid, output_index=oi, content_index=0,
                part={**part, "text": ""})
            add("response.output_text.delta", item_id=iid, output_index=oi, content_index=0,
                delta=part["text"], logprobs=[])
            add("response.output_text.done", item_id=iid, output_index=oi, content_index=0,
                text=part["text"], logprobs=[])
            add("response.content_part.done", item_id=iid, output_index=oi, content_index=0, part=part)
            add("response.output_item.done", output_index=oi, item=item)
    add("response.completed", response=final)
    message = call.fault.params.get("message") if call.fault is not None and call.fault_name == "stream_error" else None
    error = Frame(_json({"type": "error", "code": "server_error",
                         "message": message or "The server had an error while processing your request. "
                                               "Sorry about that!",
                         "param": None, "sequence_number": 0}), event="error")
    return await _play_numbered(call, resp, frames, error)


async def _play_numbered(call: Call, resp: web.StreamResponse, frames: List[Frame], error: Frame
                         ) -> web.StreamResponse:
    """Responses events carry a sequence number: the error event takes the number it replaces."""
    if call.fault_name == "stream_error":
        after = call.fault.params.get("after")
        at = _default_after(frames) if after is None else int(float(after))
        at = min(at, len(frames) - 1)
        obj = json.loads(error.data)
        obj["sequence_number"] = at
        error = Frame(_json(obj), event="error")
    return await play(call, resp, frames, error)


# -- OpenRouter chat ---------------------------------------------------------------------------------

async def stream_chat(call: Call, p: Dict[str, Any]) -> web.StreamResponse:
    specs, text = await chat_plan(call, p)   # input errors answer 400 before the stream
    resp = await start_stream(call)
    await resp.write(f"{OPENROUTER_KEEPALIVE}\n\n".encode())
    gens = await call.draw(specs) if specs else []
    full = chat_payload(call, p, gens, text)
    message = full["choices"][0]["message"]
    base = {"id": full["id"], "provider": full["provider"], "model": full["model"],
            "object": "chat.completion.chunk", "created": full["created"], "system_fingerprint": None}

    def chunk(delta: Dict[str, Any], finish: Optional[str] = None, **extra: Any) -> str:
        choice: Dict[str, Any] = {"index": 0, "delta": {"role": "assistant", **delta}, "finish_reason": finish,
                                  "native_finish_reason": "STOP" if finish == "stop" else None, "logprobs": None}
        return _json({**base, "choices": [choice], **extra})

    frames = [Frame(chunk({"content": text}))]
    if message.get("images"):
        frames.append(Frame(chunk({"content": "", "images": message["images"]}), wait=True,
                            images=[("final", _sha(g.data)) for g in gens]))
    frames.append(Frame(chunk({"content": ""}, "stop", usage=full["usage"])))
    frames.append(Frame("[DONE]"))
    fmsg = call.fault.params.get("message") if call.fault is not None and call.fault_name == "stream_error" else None
    error = Frame(_json({**base, "error": {"code": 502, "message": fmsg or "Provider disconnected unexpectedly",
                                           "metadata": {"error_type": "provider_unavailable",
                                                        "provider_name": full["provider"]}},
                         "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error",
                                      "native_finish_reason": None, "logprobs": None}]}))
    return await play(call, resp, frames, error)


register_stream_handler("openai_images", stream_images)
register_stream_handler("openai_edits", stream_images)
register_stream_handler("openai_responses", stream_responses)
register_stream_handler("openrouter_chat", stream_chat)
