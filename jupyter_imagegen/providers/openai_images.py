"""OpenAI `POST /images/generations` (JSON) and `POST /images/edits` (multipart, with input images)."""
from __future__ import annotations

from typing import Any, Dict, List

from ..errors import NoImageError, RequestError
from ..model import Usage
from .base import (FormField, HttpCall, Replacement, ImageRef, Parsed, PartialImage, Provider, Resolved, StreamBroken,
                   StreamState, as_text, decode_b64, image_ref_from_url, kind_of, nearest, no_image_error,
                   output_format, parse_ratio, parse_size, partial_index, raise_answer_error, raise_stream_error,
                   shape_detail, sse_json)

GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
SIZES = {
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
}
QUALITIES = {
    "dall-e-3": ("standard", "hd"),
    "dall-e-2": ("standard",),
}
GPT_IMAGE_QUALITIES = ("low", "medium", "high", "auto")


def is_dalle(model: str) -> bool:
    return model.startswith("dall-e")


def is_gpt_image(model: str) -> bool:
    return model.startswith("gpt-image") or model.startswith("chatgpt-image")


def sizes_for(model: str):
    if is_gpt_image(model):
        return GPT_IMAGE_SIZES
    return SIZES.get(model)


def size_for_aspect(model: str, ratio: str) -> str:
    """The supported size closest to an aspect ratio ('16:9' -> '1536x1024' for gpt-image)."""
    w, h = parse_ratio(ratio)
    options = [s for s in (sizes_for(model) or GPT_IMAGE_SIZES) if s != "auto"]
    return nearest(w / h, [(s, parse_size(s)[0] / parse_size(s)[1]) for s in options])


def aspect_replacements(req, model: str, who: str) -> List[Replacement]:
    """--aspect on an API that takes sizes: the nearest size is sent (`image_options`)."""
    if req.aspect_ratio and not req.size:
        return [Replacement("aspect", req.aspect_ratio, "size", size_for_aspect(model, req.aspect_ratio),
                            f"{who} takes sizes, not aspect ratios; this is the nearest it takes")]
    return []


def image_options(req, model: str) -> Dict[str, Any]:
    """size (or the size nearest the aspect ratio), quality, output_format, background: the fields
    /images/generations and the /responses image_generation tool share."""
    opts: Dict[str, Any] = {}
    size = req.size or (size_for_aspect(model, req.aspect_ratio) if req.aspect_ratio else None)
    if size:
        opts["size"] = size
    if req.quality:
        opts["quality"] = req.quality
    fmt = output_format(req)
    if fmt:
        opts["output_format"] = fmt
    if req.background:
        opts["background"] = req.background
    return opts


class OpenAIImagesProvider(Provider):
    api_type = "openai_images"
    one_image_per_call = False

    def calls_needed(self, r: Resolved) -> int:
        # dall-e-3 accepts only n=1, and a stream carries one image: fan out instead
        return r.request.n if (r.model == "dall-e-3" or r.request.stream) else 1

    def max_n(self, r: Resolved) -> int:
        return 16 if r.model == "dall-e-3" else 10

    def size_hint(self, r: Resolved) -> str:
        sizes = sizes_for(r.model)
        if not sizes:
            return ""
        return f"{r.model} takes --size {', '.join(sizes[:-1])} or {sizes[-1]} (or --aspect W:H for the nearest)"

    def replacements(self, r: Resolved) -> List[Replacement]:
        return aspect_replacements(r.request, r.model, r.model)

    def validate(self, r: Resolved) -> None:
        super().validate(r)
        req, model = r.request, r.model
        if req.size:
            allowed = sizes_for(model)
            if allowed and req.size not in allowed:
                raise RequestError(f"size {req.size!r} is not available for {model}; use one of: "
                                   f"{', '.join(allowed)} (or --aspect to pick the nearest)")
            if not allowed and req.size != "auto":
                parse_size(req.size)
        if req.quality:
            allowed_q = GPT_IMAGE_QUALITIES if is_gpt_image(model) else QUALITIES.get(model)
            if allowed_q and req.quality not in allowed_q:
                raise RequestError(f"quality {req.quality!r} is not available for {model}; use one of: "
                                   f"{', '.join(allowed_q)}")
        if is_dalle(model) and req.output_format:
            raise RequestError(f"{model} always returns PNG; output format is for gpt-image models")
        if model == "dall-e-3" and r.inputs:
            raise RequestError("dall-e-3 cannot edit images; use gpt-image-1 (or dall-e-2) with input images")
        if req.stream and is_dalle(model):
            raise RequestError(f"{model} cannot stream; streaming is for gpt-image models")
        if model == "dall-e-2" and len(r.inputs) > 1:
            raise RequestError("dall-e-2 edits take exactly one input image")

    def _fields(self, r: Resolved, n: int) -> Dict[str, Any]:
        req, model = r.request, r.model
        body: Dict[str, Any] = {"model": model, "prompt": req.prompt}
        if n != 1:
            body["n"] = n
        body.update(image_options(req, model))
        if is_dalle(model):
            body["response_format"] = "b64_json"
        if req.stream:
            body["stream"] = True
            if req.partial_images is not None:
                body["partial_images"] = req.partial_images
        body.update(req.params)
        return body

    def build(self, r: Resolved) -> HttpCall:
        n = 1 if self.calls_needed(r) > 1 else r.request.n
        body = self._fields(r, n)
        if not r.inputs:
            return HttpCall("POST", self.url(r, "/images/generations"), json=body, stream=r.request.stream)
        form: List[FormField] = []
        for k, v in body.items():
            form.append(FormField(k, v if isinstance(v, str) else _form_value(v)))
        name = "image[]" if len(r.inputs) > 1 else "image"
        for img in r.inputs:
            form.append(FormField(name, img.data, filename=img.name, content_type=img.mime_type))
        if r.mask is not None:
            form.append(FormField("mask", r.mask.data, filename=r.mask.name, content_type=r.mask.mime_type))
        return HttpCall("POST", self.url(r, "/images/edits"), form=form, stream=r.request.stream)

    def stream_state(self, api_url: str) -> StreamState:
        return ImagesStream(api_url)

    def parse(self, payload: Any, api_url: str) -> Parsed:
        if not isinstance(payload, dict):
            raise NoImageError(200, f"the response is {kind_of(payload)}, not a JSON object", api_url)
        notes: List[str] = []
        raise_answer_error(payload, api_url, notes)
        data = payload.get("data")
        if not isinstance(data, list):
            what = "no 'data' list" if data is None else f"'data' that is {kind_of(data)}, not a list"
            raise NoImageError(200, f"the response has {what}", api_url)
        out = Parsed(usage=Usage.from_api(payload.get("usage")))
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                notes.append(f"data[{i}] is {kind_of(item)}, not an object")
                continue
            rp = as_text(item.get("revised_prompt"))
            b64, url = item.get("b64_json"), item.get("url")
            if b64 is not None and b64 != "":
                out.images.append(ImageRef(data=decode_b64(b64, f"data[{i}].b64_json", api_url),
                                           revised_prompt=rp))
            elif url is not None and url != "":
                out.images.append(image_ref_from_url(url, api_url, rp))
            else:
                notes.append(f"data[{i}] has neither b64_json nor url")
            if rp and not out.revised_prompt:
                out.revised_prompt = rp
        if not out.images:
            raise no_image_error(api_url, None, (" (the 'data' list is empty)" if not data else "")
                                 + shape_detail(notes))
        return out


def _form_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        import json
        return json.dumps(v)
    return str(v)


class ImagesStream(StreamState):
    """`image_generation.partial_image` events, then `image_generation.completed` (edits: `image_edit.*`)."""

    def __init__(self, api_url: str):
        super().__init__(api_url)
        self.final = None
        self.partials = 0

    def on_event(self, event) -> List[PartialImage]:
        payload = sse_json(event, self.api_url)
        raise_stream_error(payload, self.api_url)
        kind = as_text(payload.get("type")) or event.event
        if kind.endswith(".partial_image"):
            data = decode_b64(payload.get("b64_json"), "a partial image", self.api_url)
            self.partials += 1
            return [PartialImage(data, partial_index(payload.get("partial_image_index"), self.partials - 1))]
        if kind.endswith(".completed"):
            data = decode_b64(payload.get("b64_json"), "the final image", self.api_url)
            self.final = Parsed(images=[ImageRef(data=data)], usage=Usage.from_api(payload.get("usage")))
        return []

    def finish(self) -> Parsed:
        if self.final is None:
            raise StreamBroken("the stream ended before the final image")
        return self.final

