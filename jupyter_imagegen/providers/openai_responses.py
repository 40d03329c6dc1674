"""OpenAI `POST /responses` with the `image_generation` tool and `input_image` parts."""
from __future__ import annotations

from typing import Any, Dict, List

from ..errors import NoImageError, RequestError
from ..model import Usage
from .base import (HttpCall, Replacement, ImageRef, Parsed, PartialImage, Provider, Resolved, StreamBroken, StreamState,
                   answer_error, as_text, decode_b64, field_of, kind_of, no_image_error, partial_index,
                   raise_answer_error, raise_stream_error, shape_detail, sse_json)
from .openai_images import GPT_IMAGE_QUALITIES, GPT_IMAGE_SIZES, aspect_replacements, image_options


class OpenAIResponsesProvider(Provider):
    api_type = "openai_responses"
    one_image_per_call = True

    def size_hint(self, r: Resolved) -> str:
        return (f"the image_generation tool takes --size {', '.join(GPT_IMAGE_SIZES[:-1])} or {GPT_IMAGE_SIZES[-1]} "
                "(or --aspect W:H for the nearest)")

    def replacements(self, r: Resolved) -> List[Replacement]:
        return aspect_replacements(r.request, "gpt-image-1", "the image_generation tool")

    def validate(self, r: Resolved) -> None:
        super().validate(r)
        req = r.request
        if req.size and req.size not in GPT_IMAGE_SIZES:
            raise RequestError(f"size {req.size!r} is not available for the image_generation tool; use one of: "
                               f"{', '.join(GPT_IMAGE_SIZES)} (or --aspect to pick the nearest)")
        if req.quality and req.quality not in GPT_IMAGE_QUALITIES:
            raise RequestError(f"quality {req.quality!r}: use one of {', '.join(GPT_IMAGE_QUALITIES)}")

    def build(self, r: Resolved) -> HttpCall:
        req = r.request
        tool: Dict[str, Any] = {"type": "image_generation", **image_options(req, "gpt-image-1")}
        if req.stream and req.partial_images is not None:
            tool["partial_images"] = req.partial_images
        params = dict(req.params)
        if isinstance(params.get("tool"), dict):  # image_generation tool options (e.g. model, moderation)
            tool.update(params.pop("tool"))
        if r.inputs:
            content: List[Dict[str, Any]] = [{"type": "input_text", "text": req.prompt}]
            content += [{"type": "input_image", "image_url": img.to_data_url(), "detail": "auto"} for img in r.inputs]
            input_: Any = [{"role": "user", "content": content}]
        else:
            input_ = req.prompt
        body: Dict[str, Any] = {
            "model": r.model,
            "input": input_,
            "tools": [tool],
            "tool_choice": {"type": "image_generation"},
        }
        if req.stream:
            body["stream"] = True
        body.update(params)
        return HttpCall("POST", self.url(r, "/responses"), json=body, stream=req.stream)

    def stream_state(self, api_url: str) -> StreamState:
        return ResponsesStream(api_url, self)

    def parse(self, payload: Any, api_url: str) -> Parsed:
        if not isinstance(payload, dict):
            raise NoImageError(200, f"the response is {kind_of(payload)}, not a JSON object", api_url)
        notes: List[str] = []
        raise_answer_error(payload, api_url, notes)
        out = Parsed(usage=Usage.from_api(payload.get("usage")), model=as_text(payload.get("model")))
        texts: List[str] = []
        refused = None
        for i, item in enumerate(field_of(payload, "output", list, "", notes) or ()):
            if not isinstance(item, dict):
                notes.append(f"output[{i}] is {kind_of(item)}, not an object")
                continue
            if item.get("type") == "image_generation_call":
                result = item.get("result")
                if item.get("status") == "failed" or result is None or result == "":
                    continue
                rp = as_text(item.get("revised_prompt"))
                out.images.append(ImageRef(data=decode_b64(result, f"output[{i}].result", api_url),
                                           revised_prompt=rp))
                out.revised_prompt = out.revised_prompt or rp
            elif item.get("type") == "message":
                for part in field_of(item, "content", list, f"output[{i}]", notes) or ():
                    if not isinstance(part, dict):
                        continue
                    if part.get("type") == "output_text" and as_text(part.get("text")):
                        texts.append(part["text"])
                    elif part.get("type") == "refusal" and as_text(part.get("refusal")):
                        texts.append(part["refusal"])
                        refused = "refusal"
        out.text = "\n".join(texts) or None
        if not out.images:
            status = as_text(payload.get("status"))
            detail = ""
            reason = as_text((field_of(payload, "incomplete_details", dict, "", notes) or {}).get("reason"))
            if status and status != "completed":
                detail = f" (response status: {status}{', ' + reason if reason else ''})"
            if reason == "content_filter":   # the server-side safety filter cut the response off
                refused = reason
            raise no_image_error(api_url, out.text, detail + shape_detail(notes), refused=refused)
        return out


class ResponsesStream(StreamState):
    """`response.image_generation_call.partial_image` events, then `response.completed` with the response."""

    def __init__(self, api_url: str, provider: "OpenAIResponsesProvider"):
        super().__init__(api_url)
        self.provider = provider
        self.final = None
        self.partials = 0

    def on_event(self, event) -> List[PartialImage]:
        payload = sse_json(event, self.api_url)
        raise_stream_error(payload, self.api_url)
        kind = as_text(payload.get("type")) or event.event
        if kind == "response.image_generation_call.partial_image":
            data = decode_b64(payload.get("partial_image_b64"), "a partial image", self.api_url)
            self.partials += 1
            return [PartialImage(data, partial_index(payload.get("partial_image_index"), self.partials - 1))]
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            response = payload.get("response")
            if response is None:
                response = {}
            elif not isinstance(response, dict):
                raise NoImageError(200, f"the {kind} event's 'response' is {kind_of(response)}, not an object",
                                   self.api_url)
            if kind == "response.failed":
                err = response.get("error")
                err = err if isinstance(err, dict) else {"message": err} if isinstance(err, str) else {}
                raise answer_error({**err, "message": as_text(err.get("message")) or "the response failed"},
                                   self.api_url)
            self.final = self.provider.parse(response, self.api_url)
        return []

    def finish(self) -> Parsed:
        if self.final is None:
            raise StreamBroken("the stream ended before response.completed")
        return self.final

