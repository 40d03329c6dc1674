"""OpenAI's Images API: ``/images/generations`` (JSON) and ``/images/edits`` (multipart, or JSON
with ``images`` references): validation beyond the parameters (the uploads, the mask), drawing,
and the ``ImagesResponse`` body (``b64_json`` or ``url``)."""
from __future__ import annotations

import time
from typing import Any, Dict, List, Optional

from aiohttp import web

from .answers import send_payload
from .body import Body
from .call import Call, Generated
from .images import RenderSpec, open_image, sniff_mime
from .stream_hook import answer_stream
from .validate import (ApiError, RequestImage, image_usage, invalid_type, missing_parameter, resolve_size,
                       unknown_parameter, validate_edit, validate_generation)


def images_payload(call: Call, p: Dict[str, Any], gens: List[Generated]) -> Dict[str, Any]:
    """The ImagesResponse body (``data`` per image; the gpt-image extras and usage)."""
    as_url = p["response_format"] == "url" or call.fault_name == "url"
    data = []
    for g in gens:
        item: Dict[str, Any] = {"url": call.file_url(g)} if as_url else {"b64_json": g.b64}
        if g.revised_prompt:
            item["revised_prompt"] = g.revised_prompt
        data.append(item)
    payload: Dict[str, Any] = {"created": int(time.time()), "data": data}
    if p["gpt"]:
        payload.update(background=p["background"], output_format=p["output_format"], quality=p["quality"],
                       size=p["size"],
                       usage=image_usage(p["prompt"], p["width"], p["height"], p["quality"], max(1, len(gens)),
                                         len(p.get("images") or ())))
    return payload


def image_specs(call: Call, p: Dict[str, Any], inputs: List[bytes] = (), mask: Optional[bytes] = None
                ) -> List[RenderSpec]:
    return [RenderSpec(prompt=p["prompt"], width=p["width"], height=p["height"], fmt=p["output_format"],
                       background=p["background"], index=i, count=p["n"], variant=call.state.next_variant(),
                       compression=p.get("output_compression"), model=p["model"], inputs=inputs, mask=mask)
            for i in range(p["n"])]


async def _answer_images(call: Call, p: Dict[str, Any], inputs: List[bytes] = (),
                         mask: Optional[bytes] = None) -> web.StreamResponse:
    if p["stream"]:
        p["input_data"], p["mask_data"] = list(inputs), mask   # for the SSE handler's drawing
        return await answer_stream(call, p)
    if call.fault_name == "no_image":
        gens: List[Generated] = []
    else:
        gens = await call.draw(image_specs(call, p, inputs, mask))
        for g in gens:
            g.revised_prompt = p.get("revised_prompt")
    payload = images_payload(call, p, gens)
    return await send_payload(call, payload, gens[0].b64 if gens and "b64_json" in payload["data"][0] else None)


async def handle_generations(call: Call, body: Body) -> web.StreamResponse:
    p = validate_generation(body.json)
    if p["stream"] and not p["gpt"]:
        raise ApiError(400, f"Streaming is not supported for {p['model']}.", param="stream",
                       code="unsupported_value")
    return await _answer_images(call, p)


_EDIT_MIMES = ("image/png", "image/jpeg", "image/webp")


async def handle_edits(call: Call, body: Body) -> web.StreamResponse:
    refs: List[RequestImage] = []
    mask_ref: Optional[RequestImage] = None
    if body.form:
        fields: Dict[str, Any] = dict(body.fields)
        for name, data, ctype, filename in body.files:
            if name in ("image", "image[]"):
                refs.append(RequestImage(name, data=data, declared_mime=ctype, filename=filename))
            elif name == "mask":
                mask_ref = RequestImage("mask", data=data, declared_mime=ctype, filename=filename)
            else:
                raise unknown_parameter(name)
    else:
        fields = dict(body.json)
        raw_images = fields.pop("images", None)
        raw_mask = fields.pop("mask", None)
        if "image" in fields or "image[]" in fields:
            raise ApiError(400, "JSON edit requests take 'images' (an array of {\"image_url\": ...} or "
                                "{\"file_id\": ...}); 'image' is the multipart field.", param="image",
                           code="unknown_parameter")
        if raw_images is not None:
            if not isinstance(raw_images, list):
                raise invalid_type("images", "an array", raw_images)
            for i, r in enumerate(raw_images):
                refs.append(_json_image_ref(r, f"images[{i}]"))
        if raw_mask is not None:
            mask_ref = _json_image_ref(raw_mask, "mask")
    p = validate_edit(fields, refs, mask_ref, form=body.form)
    if p["stream"] and not p["gpt"]:
        raise ApiError(400, f"Streaming is not supported for {p['model']}.", param="stream",
                       code="unsupported_value")

    inputs: List[bytes] = []
    for k, ref in enumerate(refs):
        if ref.data is not None:
            _check_upload(ref, k, p["model"])
        inputs.append(await call.resolve_image(ref))
    mask = None
    if mask_ref is not None:
        if mask_ref.data is not None and mask_ref.declared_mime != "image/png":
            raise ApiError(400, f"Invalid file 'mask': unsupported mimetype ('{mask_ref.declared_mime}'). "
                                "The mask must be a PNG file.", param="mask", code="unsupported_file_mimetype")
        mask = await call.resolve_image(mask_ref)
        if sniff_mime(mask) != "image/png":
            raise ApiError(400, "Invalid mask image format - the mask must be a PNG file.", param="mask",
                           code="invalid_image_format")
        if open_image(mask).size != open_image(inputs[0]).size:
            raise ApiError(400, "Invalid mask image format - mask size does not match image size",
                           param="mask", code="invalid_image_format")

    first = open_image(inputs[0])
    fw, fh = first.size
    auto = (1536, 1024) if fw > fh * 1.2 else (1024, 1536) if fh > fw * 1.2 else (1024, 1024)
    w, h, s = resolve_size(p["size_param"], p["model"], auto=auto)
    p.update(width=w, height=h, size=s)
    return await _answer_images(call, p, inputs, mask)


def _json_image_ref(r: Any, param: str) -> RequestImage:
    if not isinstance(r, dict):
        raise invalid_type(param, "an object", r)
    for key in r:
        if key not in ("image_url", "file_id"):
            raise unknown_parameter(f"{param}.{key}")
    if isinstance(r.get("image_url"), str):
        return RequestImage(f"{param}.image_url", url=r["image_url"])
    if isinstance(r.get("file_id"), str):
        return RequestImage(f"{param}.file_id", file_id=r["file_id"])
    raise missing_parameter(f"{param}.image_url")


def _check_upload(ref: RequestImage, k: int, model: str) -> None:
    """What OpenAI checks on an uploaded file: its declared type, then its content."""
    label = ref.param if ref.param == "image" else "image[]"
    declared = (ref.declared_mime or "application/octet-stream").split(";")[0].strip().lower()
    if declared not in _EDIT_MIMES:
        raise ApiError(400, f"Invalid file '{label}': unsupported mimetype ('{declared}'). Supported file "
                            "formats are 'image/jpeg', 'image/png', and 'image/webp'.",
                       param=label, code="unsupported_file_mimetype")
    data = ref.data or b""
    if len(data) > 50 * 1024 * 1024:
        raise ApiError(400, f"Invalid file '{label}': the file is larger than 50MB.", param=label,
                       code="invalid_value")
    sniffed = sniff_mime(data)
    if sniffed not in _EDIT_MIMES:
        raise ApiError(400, f"Invalid image file or mode for image {k + 1}, please check your image file.",
                       param=label, code="invalid_image_file")
    if model == "dall-e-2":
        if sniffed != "image/png":
            raise ApiError(400, "Invalid input image - dall-e-2 accepts PNG images only.", param=label,
                           code="invalid_image_format")
        if len(data) > 4 * 1024 * 1024:
            raise ApiError(400, "Invalid input image - the image must be less than 4 MB for dall-e-2.",
                           param=label, code="invalid_image_format")
        try:
            im = open_image(data)
        except ValueError:
            raise ApiError(400, f"Invalid image file or mode for image {k + 1}, please check your image file.",
                           param=label, code="invalid_image_file") from None
        if im.mode not in ("RGBA", "LA", "L"):
            raise ApiError(400, f"Invalid input image - format must be in ['RGBA', 'LA', 'L'], got {im.mode}.",
                           param=label, code="invalid_image_format")
        if im.size[0] != im.size[1]:
            raise ApiError(400, "Invalid input image - the image must be square for dall-e-2.",
                           param=label, code="invalid_image_format")
