"""OpenRouter `POST /chat/completions` with `modalities: ["image", "text"]` and `image_config`."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..errors import NoImageError, RequestError
from ..model import Usage
from .base import (MAX_NOTES, HttpCall, ImageRef, Replacement, Parsed, PartialImage, Provider, Resolved, StreamBroken,
                   StreamState, as_text, field_of, image_ref_from_url, kind_of, nearest,
                   no_image_error, parse_ratio, parse_size, raise_answer_error, raise_stream_error,
                   shape_detail, sse_json)

ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
IMAGE_SIZES = ("1K", "2K", "4K")


def aspect_for_size(size: str) -> str:
    """The supported aspect ratio closest to a 'WxH' size."""
    w, h = parse_size(size)
    return nearest(w / h, [(a, parse_ratio(a)[0] / parse_ratio(a)[1]) for a in ASPECT_RATIOS])


class OpenRouterChatProvider(Provider):
    api_type = "openrouter_chat"
    one_image_per_call = True

    def size_hint(self, r: Resolved) -> str:
        return (f"OpenRouter takes a scale, --size {', '.join(IMAGE_SIZES)}, and an aspect ratio, --aspect "
                f"{', '.join(ASPECT_RATIOS)}; not a size in pixels")

    def replacements(self, r: Resolved) -> List[Replacement]:
        size = r.request.size
        if size and size not in IMAGE_SIZES and size != "auto" and not r.request.aspect_ratio:
            return [Replacement("size", size, "aspect_ratio", aspect_for_size(size),
                                "OpenRouter takes no size in pixels (the model picks them; --size 1K, 2K or 4K "
                                "picks a scale)")]
        return []

    def validate(self, r: Resolved) -> None:
        super().validate(r)
        req = r.request
        if req.aspect_ratio and req.aspect_ratio not in ASPECT_RATIOS:
            raise RequestError(f"aspect ratio {req.aspect_ratio!r} is not offered by OpenRouter; use one of: "
                               f"{', '.join(ASPECT_RATIOS)}")
        if req.size and req.size not in IMAGE_SIZES and req.size != "auto":
            parse_size(req.size)  # raises with a clear message when malformed

    def build(self, r: Resolved) -> HttpCall:
        req = r.request
        if r.inputs:
            content: Any = [{"type": "text", "text": req.prompt}]
            content += [{"type": "image_url", "image_url": {"url": img.to_data_url()}} for img in r.inputs]
        else:
            content = req.prompt
        body: Dict[str, Any] = {
            "model": r.model,
            "messages": [{"role": "user", "content": content}],
            "modalities": ["image", "text"],
        }
        image_config: Dict[str, Any] = {}
        if req.aspect_ratio:
            image_config["aspect_ratio"] = req.aspect_ratio
        elif req.size in IMAGE_SIZES:
            image_config["image_size"] = req.size
        elif req.size and req.size != "auto":
            image_config["aspect_ratio"] = aspect_for_size(req.size)
        if req.quality:
            image_config["quality"] = req.quality
        if req.output_format:
            image_config["output_format"] = "jpeg" if req.output_format == "jpg" else req.output_format
        if req.background:
            image_config["background"] = req.background
        if image_config:
            body["image_config"] = image_config
        if req.seed is not None:
            body["seed"] = req.seed
        if req.stream:
            body["stream"] = True
        extra = dict(req.params)
        if isinstance(extra.get("image_config"), dict):
            body.setdefault("image_config", {}).update(extra.pop("image_config"))
        body.update(extra)
        return HttpCall("POST", self.url(r, "/chat/completions"), json=body, stream=req.stream)

    def stream_state(self, api_url: str) -> StreamState:
        return ChatStream(api_url)

    def parse(self, payload: Any, api_url: str) -> Parsed:
        if not isinstance(payload, dict):
            raise NoImageError(200, f"the response is {kind_of(payload)}, not a JSON object", api_url)
        notes: List[str] = []
        raise_answer_error(payload, api_url, notes)  # OpenRouter can send a 200 whose body is an upstream error
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            what = "has no choices" if choices is None or choices == [] else f"'choices' is {kind_of(choices)}, not a list"
            raise NoImageError(200, f"the response {what}", api_url)
        out = Parsed(usage=Usage.from_api(payload.get("usage")), model=as_text(payload.get("model")))
        texts: List[str] = []
        first: Dict[str, Any] = {}
        for i, choice in enumerate(choices):
            where = f"choices[{i}]"
            if not isinstance(choice, dict):
                notes.append(f"{where} is {kind_of(choice)}, not an object")
                continue
            msg = field_of(choice, "message", dict, where, notes) or {}
            if i == 0:
                first = {"finish_reason": as_text(choice.get("finish_reason")), "refusal": as_text(msg.get("refusal"))}
            content = msg.get("content")
            if isinstance(content, str) and content.strip():
                texts.append(content.strip())
            elif isinstance(content, list):
                texts += [p["text"] for p in content
                          if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)]
            for j, img in enumerate(field_of(msg, "images", list, f"{where}.message", notes) or ()):
                ref = _chat_image(img, f"{where}.message.images[{j}]", api_url, notes)
                if ref is not None:
                    out.images.append(ref)
        out.text = "\n".join(t for t in texts if t) or None
        if not out.images:
            reason, refusal = first.get("finish_reason"), first.get("refusal")
            detail = f" (finish_reason: {reason})" if reason and reason not in ("stop", "STOP") else ""
            raise no_image_error(api_url, out.text or refusal, detail + shape_detail(notes),
                                 refused=_refusal_signal(reason, refusal))
        return out


def _chat_image(img: Any, where: str, api_url: str, notes: List[str]) -> Optional[ImageRef]:
    """One entry of `images`: `{"image_url": {"url": ...}}` (or `{"image_url": "<url>"}`); an entry
    that is not an object is noted and skipped; an object without a usable URL raises."""
    if not isinstance(img, dict):
        notes.append(f"{where} is {kind_of(img)}, not an object")
        return None
    image_url = img.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    return image_ref_from_url(url, api_url)


class ChatStream(StreamState):
    """`data: {chat.completion.chunk}` lines (images in `delta.images`), closed by `data: [DONE]`."""

    def __init__(self, api_url: str):
        super().__init__(api_url)
        self.done = False
        self.text: List[str] = []
        self.images: List[ImageRef] = []
        self.usage: Optional[Usage] = None
        self.model: Optional[str] = None
        self.finish_reason: Optional[str] = None
        self.refusal: List[str] = []
        self.notes: List[str] = []     # fields of the wrong type (for the message if no image comes)

    def on_event(self, event) -> List[PartialImage]:
        if event.data.strip() == "[DONE]":
            self.done = True
            return []
        payload = sse_json(event, self.api_url)
        raise_stream_error(payload, self.api_url)
        self.model = as_text(payload.get("model")) or self.model
        self.usage = Usage.from_api(payload.get("usage")) or self.usage
        notes = self.notes
        for i, choice in enumerate(field_of(payload, "choices", list, "a chunk", notes) or ()):
            where = f"a chunk's choices[{i}]"
            if not isinstance(choice, dict):
                notes.append(f"{where} is {kind_of(choice)}, not an object")
                continue
            delta = field_of(choice, "delta", dict, where, notes) or {}
            if isinstance(delta.get("content"), str):
                self.text.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                self.refusal.append(delta["refusal"])
            for j, img in enumerate(field_of(delta, "images", list, f"{where}.delta", notes) or ()):
                ref = _chat_image(img, f"{where}.delta.images[{j}]", self.api_url, notes)
                if ref is not None:
                    self.images.append(ref)
            self.finish_reason = as_text(choice.get("finish_reason")) or self.finish_reason
        del notes[MAX_NOTES:]
        return []

    def finish(self) -> Parsed:
        if not self.done:
            raise StreamBroken("the stream ended before [DONE]")
        text = "".join(self.text).strip() or None
        if not self.images:
            refusal = "".join(self.refusal).strip() or None
            reason = self.finish_reason
            detail = f" (finish_reason: {reason})" if reason and reason not in ("stop", "STOP") else ""
            raise no_image_error(self.api_url, text or refusal, detail + shape_detail(self.notes),
                                 refused=_refusal_signal(reason, refusal))
        return Parsed(images=self.images, text=text, usage=self.usage, model=self.model)


def _refusal_signal(finish_reason: Any, refusal: Any) -> Optional[str]:
    """`content_filter` / `refusal` when a chat answer without an image says it was refused."""
    if finish_reason == "content_filter":
        return "content_filter"
    if isinstance(refusal, str) and refusal.strip():
        return "refusal"
    return None

