"""Request validation for the emulator, with the vendors' error messages.

Each ``validate_*`` function takes the parsed body and returns a plain dict of resolved
parameters, or raises :class:`ApiError` carrying what the real API would answer. Input images
are returned as raw references (``RequestImage``) that the app resolves (data URLs decoded, http
URLs fetched) before drawing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .images import ASPECT_RATIO_SIZES, IMAGE_SIZE_SCALE

OPENAI = "openai"
OPENROUTER = "openrouter"


class ApiError(Exception):
    """An error answer: HTTP status + the fields of the vendor's error object."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None,
                 code: Optional[str] = None, type: Optional[str] = None,
                 metadata: Optional[Dict[str, Any]] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.metadata = metadata
        self.headers = dict(headers or {})

    def body(self, vendor: str) -> Dict[str, Any]:
        if vendor == OPENROUTER:
            err: Dict[str, Any] = {"code": self.status, "message": self.message}
            if self.metadata:
                err["metadata"] = self.metadata
            return {"error": err}
        typ = self.type or ("server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": typ, "param": self.param, "code": self.code}}


# -- OpenAI-style message helpers ------------------------------------------------------------

def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a decimal"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return "an unknown type"


def _quote_list(values: Sequence[str]) -> str:
    q = [f"'{v}'" for v in values]
    if len(q) <= 1:
        return "".join(q)
    return ", ".join(q[:-1]) + ", and " + q[-1]


def unknown_parameter(name: str) -> ApiError:
    return ApiError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


def missing_parameter(name: str) -> ApiError:
    return ApiError(400, f"Missing required parameter: '{name}'.", param=name,
                    code="missing_required_parameter")


def invalid_type(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {_typename(value)} instead.",
                    param=name, code="invalid_type")


def invalid_value(name: str, value: Any, supported: Sequence[str]) -> ApiError:
    return ApiError(400, f"Invalid value: '{value}'. Supported values are: {_quote_list(supported)}.",
                    param=name, code="invalid_value")


def check_str(body: Mapping[str, Any], name: str, *, label: Optional[str] = None) -> Optional[str]:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, str):
        raise invalid_type(label or name, "a string", v)
    return v


def check_enum(body: Mapping[str, Any], name: str, allowed: Sequence[str], *,
               label: Optional[str] = None) -> Optional[str]:
    v = check_str(body, name, label=label)
    if v is not None and v not in allowed:
        raise invalid_value(label or name, v, allowed)
    return v


def check_int(body: Mapping[str, Any], name: str, lo: int, hi: int, *, label: Optional[str] = None,
              form: bool = False) -> Optional[int]:
    label = label or name
    v = body.get(name)
    if v is None:
        return None
    if form and isinstance(v, str):  # multipart fields arrive as text
        try:
            v = int(v.strip())
        except ValueError:
            raise ApiError(400, f"Invalid type for '{label}': expected an integer, but got a string "
                                f"that could not be parsed as an integer ('{v}') instead.",
                           param=label, code="invalid_type") from None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise invalid_type(label, "an integer", v)
    if v < lo:
        raise ApiError(400, f"Invalid '{label}': integer below minimum value. Expected a value >= {lo}, "
                            f"but got {v} instead.", param=label, code="integer_below_min_value")
    if v > hi:
        raise ApiError(400, f"Invalid '{label}': integer above maximum value. Expected a value <= {hi}, "
                            f"but got {v} instead.", param=label, code="integer_above_max_value")
    return v


def check_bool(body: Mapping[str, Any], name: str, *, form: bool = False) -> Optional[bool]:
    v = body.get(name)
    if v is None:
        return None
    if form and isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    if not isinstance(v, bool):
        raise invalid_type(name, "a boolean", v)
    return v


def check_prompt(body: Mapping[str, Any], max_len: int, *, name: str = "prompt") -> str:
    if name not in body or body[name] is None:
        raise missing_parameter(name)
    v = body[name]
    if not isinstance(v, str):
        raise invalid_type(name, "a string", v)
    if not v.strip():
        raise ApiError(400, f"Invalid '{name}': empty string. Expected a string with minimum length 1, "
                            "but got an empty string instead.", param=name, code="empty_string")
    if len(v) > max_len:
        raise ApiError(400, f"Invalid '{name}': string too long. Expected a string with maximum length "
                            f"{max_len}, but got a string with length {len(v)} instead.",
                       param=name, code="string_above_max_length")
    return v


_KINDS = {
    "number": ((int, float), "a number"), "integer": ((int,), "an integer"), "boolean": ((bool,), "a boolean"),
    "string": ((str,), "a string"), "array": ((list,), "an array"), "object": ((dict,), "an object"),
}


def check_types(body: Mapping[str, Any], table: Mapping[str, Any], *, vendor: str) -> None:
    """Type (and range) checks of the ordinary, non-image fields; ``None`` is always allowed.
    ``table``: name -> kind or (kind, lo, hi) or a tuple of kinds."""
    for name, rule in table.items():
        v = body.get(name)
        if v is None:
            continue
        lo = hi = None
        kinds: Tuple[str, ...]
        if isinstance(rule, tuple) and len(rule) == 3 and not isinstance(rule[1], str):
            kinds, lo, hi = (rule[0],), rule[1], rule[2]
        elif isinstance(rule, tuple):
            kinds = rule
        else:
            kinds = (rule,)
        ok = any(isinstance(v, _KINDS[k][0]) and (k == "boolean" or not isinstance(v, bool)) for k in kinds)
        expected = " or ".join(_KINDS[k][1] for k in kinds)
        if not ok:
            if vendor == OPENROUTER:
                raise ApiError(400, f"Invalid input: '{name}' must be {expected}, got {_typename(v)}")
            expected_oa = "a decimal" if kinds == ("number",) else expected
            raise invalid_type(name, expected_oa, v)
        if lo is not None and (v < lo or v > hi):
            if vendor == OPENROUTER:
                raise ApiError(400, f"Invalid input: '{name}' must be between {lo} and {hi}, got {v}")
            which = "below minimum" if v < lo else "above maximum"
            kind = "integer" if kinds == ("integer",) else "decimal"
            bound = f">= {lo}" if v < lo else f"<= {hi}"
            raise ApiError(400, f"Invalid '{name}': {kind} {which} value. Expected a value {bound}, but got "
                                f"{v} instead.", param=name,
                           code=f"{kind}_{'below_min' if v < lo else 'above_max'}_value")


# -- OpenAI image models ------------------------------------------------------------------------

GPT_IMAGE_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                    "gpt-image-2-2026-04-21", "chatgpt-image-latest")
DALLE_MODELS = ("dall-e-2", "dall-e-3")
GENERATION_MODELS = GPT_IMAGE_MODELS + DALLE_MODELS
EDIT_MODELS = GPT_IMAGE_MODELS + ("dall-e-2",)
#: the list quoted in "Supported values are: ..." messages
_MODELS_SHOWN = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2", "dall-e-2", "dall-e-3")

GPT_SIZES = ("1024x1024", "1024x1536", "1536x1024", "auto")
SIZES = {"dall-e-2": ("256x256", "512x512", "1024x1024"),
         "dall-e-3": ("1024x1024", "1792x1024", "1024x1792")}
GPT_QUALITIES = ("low", "medium", "high", "auto")
QUALITIES = {"dall-e-2": ("standard", "auto"), "dall-e-3": ("standard", "hd", "auto")}
PROMPT_MAX = {"dall-e-2": 1000, "dall-e-3": 4000}
GPT_PROMPT_MAX = 32000
OUTPUT_FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("transparent", "opaque", "auto")
#: parameters only the GPT image models take (their presence also selects a GPT image model
#: when ``model`` is left out, as the API documents)
GPT_ONLY = ("output_format", "output_compression", "background", "moderation", "partial_images",
            "stream", "input_fidelity")
DALLE_ONLY = ("response_format",)


def is_gpt_image(model: str) -> bool:
    return model in GPT_IMAGE_MODELS


def _flexible_size(size: str, model: str, param: str) -> Tuple[int, int]:
    """gpt-image-2 takes any WIDTHxHEIGHT within its limits."""
    m = re.fullmatch(r"(\d{2,5})x(\d{2,5})", size)
    if not m:
        raise invalid_value(param, size, GPT_SIZES)
    w, h = int(m.group(1)), int(m.group(2))
    problem = None
    if w % 16 or h % 16:
        problem = "width and height must both be divisible by 16"
    elif max(w, h) > 3 * min(w, h):
        problem = "the aspect ratio must be between 1:3 and 3:1"
    elif max(w, h) > 3840 or w * h > 3840 * 2160:
        problem = "the maximum supported resolution is 3840x2160"
    elif w * h < 256 * 256:
        problem = "the image is too small"
    if problem:
        raise ApiError(400, f"Invalid size '{size}' for {model}: {problem}.", param=param,
                       code="invalid_value")
    return w, h


def resolve_size(size: Optional[str], model: str, param: str = "size",
                 auto: Tuple[int, int] = (1024, 1024)) -> Tuple[int, int, str]:
    """-> (width, height, "WxH") for a requested size, or ApiError listing the model's sizes."""
    if model in SIZES:
        allowed: Sequence[str] = SIZES[model]
        if size is None or size == "auto" and model == "dall-e-3":
            size = "1024x1024"
        if size not in allowed:
            raise invalid_value(param, size, allowed)
    else:
        if size is None or size == "auto":
            w, h = auto
            return w, h, f"{w}x{h}"
        if size not in GPT_SIZES:
            if model.startswith("gpt-image-2"):
                w, h = _flexible_size(size, model, param)
                return w, h, size
            raise invalid_value(param, size, GPT_SIZES)
    w, h = (int(x) for x in size.split("x"))
    return w, h, size


def image_usage(prompt: str, width: int, height: int, quality: str, n: int, input_images: int = 0) -> Dict[str, Any]:
    """Token usage in the shape gpt-image reports (the output tokens follow OpenAI's table)."""
    per_image = {"low": 272, "medium": 1056, "high": 4160}.get(quality, 4160)
    out = int(per_image * (width * height) / (1024 * 1024)) * n
    text = max(1, len(prompt.split()) * 4 // 3)
    img = 194 * input_images
    return {"input_tokens": text + img, "output_tokens": out, "total_tokens": text + img + out,
            "input_tokens_details": {"text_tokens": text, "image_tokens": img}}


def _choose_model(body: Mapping[str, Any], allowed: Sequence[str], default_plain: str,
                  default_gpt: str) -> str:
    model = body.get("model")
    if model is None:
        return default_gpt if any(body.get(k) is not None for k in GPT_ONLY) else default_plain
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if model not in allowed:
        raise invalid_value("model", model, [m for m in _MODELS_SHOWN if m in allowed])
    return model


@dataclass
class RequestImage:
    """An input image as referenced in a request: raw bytes (multipart) or a URL."""
    param: str
    data: Optional[bytes] = None
    url: Optional[str] = None
    file_id: Optional[str] = None
    declared_mime: Optional[str] = None
    filename: Optional[str] = None


GENERATION_PARAMS = ("prompt", "model", "n", "quality", "response_format", "output_format",
                     "output_compression", "stream", "partial_images", "size", "moderation",
                     "background", "style", "user")
EDIT_PARAMS = ("image", "image[]", "images", "mask", "prompt", "model", "n", "quality", "size",
               "response_format", "output_format", "output_compression", "background", "moderation",
               "input_fidelity", "stream", "partial_images", "user")


def validate_image_params(body: Mapping[str, Any], *, edit: bool, form: bool = False) -> Dict[str, Any]:
    """Shared rules of /images/generations and /images/edits. ``form``: values came as text."""
    allowed = EDIT_PARAMS if edit else GENERATION_PARAMS
    for key in body:
        if key not in allowed:
            raise unknown_parameter(key)
    if edit:
        model = _choose_model(body, EDIT_MODELS, "gpt-image-1.5", "gpt-image-1.5")
    else:
        model = _choose_model(body, GENERATION_MODELS, "dall-e-2", "gpt-image-1.5")
    gpt = is_gpt_image(model)
    for key in (DALLE_ONLY if gpt else GPT_ONLY):
        if body.get(key) is not None and not (key == "stream" and body[key] in (False, "false")):
            raise unknown_parameter(key)
    if not gpt and body.get("moderation") is not None:
        raise unknown_parameter("moderation")
    if model != "dall-e-3" and body.get("style") is not None:
        raise unknown_parameter("style")

    prompt = check_prompt(body, PROMPT_MAX.get(model, GPT_PROMPT_MAX))
    n = check_int(body, "n", 1, 10, form=form)
    n = 1 if n is None else n
    if model == "dall-e-3" and n != 1:
        raise ApiError(400, "Invalid 'n': dall-e-3 only supports n=1.", param="n", code="invalid_value")
    quality = check_enum(body, "quality", GPT_QUALITIES if gpt else QUALITIES[model])
    response_format = check_enum(body, "response_format", ("url", "b64_json"))
    output_format = check_enum(body, "output_format", OUTPUT_FORMATS) or "png"
    compression = check_int(body, "output_compression", 0, 100, form=form)
    background = check_enum(body, "background", BACKGROUNDS) or "auto"
    check_enum(body, "moderation", ("low", "auto"))
    check_enum(body, "style", ("vivid", "natural"))
    check_enum(body, "input_fidelity", ("high", "low"))
    check_str(body, "user")
    stream = check_bool(body, "stream", form=form) or False
    partial = check_int(body, "partial_images", 0, 3, form=form)
    if compression is not None and compression != 100 and output_format == "png":
        raise ApiError(400, "Compression less than 100 is not supported for PNG output format.",
                       param="output_compression", code="invalid_value")
    if background == "transparent" and output_format == "jpeg":
        raise ApiError(400, "Transparent background is not supported for the jpeg output format; "
                            "use png or webp.", param="background", code="invalid_value")
    if gpt:
        resolved_quality = "high" if quality in (None, "auto") else quality
    else:
        resolved_quality = quality if quality not in (None, "auto") else "standard"
    return {
        "model": model, "gpt": gpt, "prompt": prompt, "n": n, "size": body.get("size"),
        "quality": resolved_quality, "response_format": response_format or ("b64_json" if gpt else "url"),
        "output_format": output_format if gpt else "png", "output_compression": compression,
        "background": ("transparent" if background == "transparent" else "opaque") if gpt else "opaque",
        "stream": stream, "partial_images": partial or 0,
    }


def validate_generation(body: Mapping[str, Any]) -> Dict[str, Any]:
    p = validate_image_params(body, edit=False)
    p["size_param"] = check_str(body, "size")
    w, h, s = resolve_size(p["size_param"], p["model"])
    p.update(width=w, height=h, size=s)
    if p["model"] == "dall-e-3":
        p["revised_prompt"] = (f"{p['prompt']}, shown as a bold flat illustration with soft lighting "
                               "and a clean, uncluttered composition.")
    return p


MAX_EDIT_IMAGES = 16
MAX_EDIT_BYTES = 50 * 1024 * 1024
DALLE2_MAX_BYTES = 4 * 1024 * 1024


def validate_edit(fields: Mapping[str, Any], images: List[RequestImage], mask: Optional[RequestImage], *,
                  form: bool) -> Dict[str, Any]:
    """``fields``: the text fields (multipart) or the JSON body (minus images/mask handled here)."""
    p = validate_image_params(fields, edit=True, form=form)
    if not images:
        raise missing_parameter("image" if form else "images")
    if not form and not p["gpt"]:
        raise ApiError(400, "JSON edit requests support GPT image models only; use multipart/form-data "
                            "for dall-e-2.", param="model", code="invalid_value")
    if len(images) > (1 if p["model"] == "dall-e-2" else MAX_EDIT_IMAGES):
        limit = 1 if p["model"] == "dall-e-2" else MAX_EDIT_IMAGES
        raise ApiError(400, f"Invalid 'image': too many images. {p['model']} accepts at most {limit}, "
                            f"but got {len(images)}.", param="image", code="invalid_value")
    p["size_param"] = check_str(fields, "size")
    p["images"], p["mask"] = images, mask
    return p


# -- OpenAI Responses ---------------------------------------------------------------------------

RESPONSES_PARAMS = ("model", "input", "instructions", "tools", "tool_choice", "stream", "store", "metadata",
                    "previous_response_id", "temperature", "top_p", "max_output_tokens",
                    "parallel_tool_calls", "reasoning", "text", "truncation", "user", "include",
                    "background", "service_tier", "prompt", "prompt_cache_key", "safety_identifier",
                    "max_tool_calls", "top_logprobs", "conversation", "stream_options")
RESPONSES_TYPES = {
    "temperature": ("number", 0, 2), "top_p": ("number", 0, 1), "max_output_tokens": ("integer", 16, 10 ** 9),
    "store": "boolean", "stream": "boolean", "background": "boolean", "parallel_tool_calls": "boolean",
    "metadata": "object", "include": "array", "user": "string", "text": "object", "reasoning": "object",
    "top_logprobs": ("integer", 0, 20), "max_tool_calls": ("integer", 1, 10 ** 9), "service_tier": "string",
    "prompt_cache_key": "string", "safety_identifier": "string", "stream_options": "object",
    "conversation": ("string", "object"), "prompt": "object",
}
RESPONSES_TOOL_TYPES = ("function", "file_search", "computer", "computer_use_preview", "web_search",
                        "web_search_2025_08_26", "mcp", "code_interpreter", "programmatic_tool_calling",
                        "image_generation", "local_shell", "shell", "custom", "namespace", "tool_search",
                        "web_search_preview", "web_search_preview_2025_03_11", "apply_patch")
TOOL_CHOICE_TYPES = ("file_search", "web_search_preview", "computer", "computer_use_preview", "computer_use",
                     "web_search_preview_2025_03_11", "image_generation", "code_interpreter", "allowed_tools",
                     "function", "mcp", "custom", "programmatic_tool_calling", "apply_patch", "shell")
IMAGE_TOOL_PARAMS = ("type", "model", "quality", "size", "output_format", "output_compression",
                     "moderation", "background", "input_fidelity", "input_image_mask", "partial_images",
                     "action")
IMAGE_TOOL_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2",
                     "gpt-image-2-2026-04-21", "chatgpt-image-latest")
_RESPONSES_MODEL = re.compile(r"^(gpt-(?!image)[\w.:-]+|o\d[\w.:-]*|chatgpt-4o[\w.:-]*|ft:[\w.:-]+)$")
_ROLES = ("user", "system", "developer", "assistant")
_PASS_ITEM_TYPES = ("image_generation_call", "item_reference", "reasoning", "function_call",
                    "function_call_output", "web_search_call", "file_search_call")


def validate_responses(body: Mapping[str, Any]) -> Dict[str, Any]:
    for key in body:
        if key not in RESPONSES_PARAMS:
            raise unknown_parameter(key)
    if body.get("model") is None:
        raise missing_parameter("model")
    model = body["model"]
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)
    if not _RESPONSES_MODEL.match(model):
        raise ApiError(400, f"The requested model '{model}' does not exist.", param="model",
                       code="model_not_found")
    check_types(body, RESPONSES_TYPES, vendor=OPENAI)
    if body.get("truncation") is not None and body["truncation"] not in ("auto", "disabled"):
        raise invalid_value("truncation", body["truncation"], ("auto", "disabled"))
    instructions = check_str(body, "instructions")
    prev = check_str(body, "previous_response_id")
    stream = check_bool(body, "stream") or False

    texts: List[str] = []
    images: List[RequestImage] = []
    inp = body.get("input")
    if inp is None:
        if prev is None and body.get("conversation") is None:
            raise missing_parameter("input")
    elif isinstance(inp, str):
        texts.append(inp)
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            _collect_input_item(item, f"input[{i}]", texts, images)
    else:
        raise invalid_type("input", "a string or an array", inp)

    tools = body.get("tools")
    tool: Optional[Dict[str, Any]] = None
    tool_index = -1
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid_type("tools", "an array", tools)
        for i, t in enumerate(tools):
            if not isinstance(t, dict):
                raise invalid_type(f"tools[{i}]", "an object", t)
            if "type" not in t:
                raise missing_parameter(f"tools[{i}].type")
            if t["type"] not in RESPONSES_TOOL_TYPES:
                raise invalid_value(f"tools[{i}].type", t["type"], RESPONSES_TOOL_TYPES)
            if t["type"] == "image_generation":
                if tool is not None:
                    raise ApiError(400, "Only one image_generation tool may be provided.",
                                   param=f"tools[{i}]", code="invalid_value")
                tool, tool_index = t, i
    tool_choice = body.get("tool_choice", "auto")
    if isinstance(tool_choice, str):
        if tool_choice not in ("auto", "none", "required"):
            raise invalid_value("tool_choice", tool_choice, ("none", "auto", "required"))
    elif isinstance(tool_choice, dict):
        tc_type = tool_choice.get("type")
        if tc_type is None:
            raise missing_parameter("tool_choice.type")
        if tc_type not in TOOL_CHOICE_TYPES:
            raise invalid_value("tool_choice.type", tc_type, TOOL_CHOICE_TYPES)
        if tc_type == "image_generation" and tool is None:
            raise ApiError(400, "Tool choice 'image_generation' not found in 'tools' parameter.",
                           param="tool_choice", code=None)
    elif tool_choice is not None:
        raise invalid_type("tool_choice", "a string or an object", tool_choice)

    p: Dict[str, Any] = {"model": model, "instructions": instructions, "previous_response_id": prev,
                         "stream": stream, "texts": texts, "images": images, "tools": tools or [],
                         "tool_choice": tool_choice if tool_choice is not None else "auto",
                         "prompt": "\n".join(t for t in texts if t.strip()).strip(), "draw": False}
    if tool is not None and tool_choice != "none":
        pre = f"tools[{tool_index}]"
        for key in tool:
            if key not in IMAGE_TOOL_PARAMS:
                raise unknown_parameter(f"{pre}.{key}")
        lab = lambda k: f"{pre}.{k}"  # noqa: E731
        tmodel = check_enum(tool, "model", IMAGE_TOOL_MODELS, label=lab("model")) or "gpt-image-1"
        quality = check_enum(tool, "quality", GPT_QUALITIES, label=lab("quality")) or "auto"
        size = check_str(tool, "size", label=lab("size"))
        output_format = check_enum(tool, "output_format", OUTPUT_FORMATS, label=lab("output_format")) or "png"
        compression = check_int(tool, "output_compression", 0, 100, label=lab("output_compression"))
        check_enum(tool, "moderation", ("auto", "low"), label=lab("moderation"))
        background = check_enum(tool, "background", BACKGROUNDS, label=lab("background")) or "auto"
        check_enum(tool, "input_fidelity", ("high", "low"), label=lab("input_fidelity"))
        action = check_enum(tool, "action", ("generate", "edit", "auto"), label=lab("action")) or "auto"
        partial = check_int(tool, "partial_images", 0, 3, label=lab("partial_images")) or 0
        mask = tool.get("input_image_mask")
        mask_ref = None
        if mask is not None:
            if not isinstance(mask, dict):
                raise invalid_type(lab("input_image_mask"), "an object", mask)
            for key in mask:
                if key not in ("image_url", "file_id"):
                    raise unknown_parameter(f"{pre}.input_image_mask.{key}")
            if isinstance(mask.get("image_url"), str):
                mask_ref = RequestImage(lab("input_image_mask"), url=mask["image_url"])
            elif isinstance(mask.get("file_id"), str):
                mask_ref = RequestImage(lab("input_image_mask"), file_id=mask["file_id"])
        if background == "transparent" and output_format == "jpeg":
            raise ApiError(400, "Transparent background is not supported for the jpeg output format; "
                                "use png or webp.", param=lab("background"), code="invalid_value")
        if action == "edit" and not images:
            raise ApiError(400, "The image_generation tool's action is 'edit' but no input image was given.",
                           param=lab("action"), code="invalid_value")
        p.update(draw=True, tool=tool, tool_model=tmodel, quality=quality,
                 resolved_quality="high" if quality == "auto" else quality, size_param=size,
                 output_format=output_format, output_compression=compression,
                 background=background, resolved_background="transparent" if background == "transparent" else "opaque",
                 partial_images=partial, mask=mask_ref,
                 action="edit" if (action == "edit" or (action == "auto" and images)) else "generate")
    return p


def _collect_input_item(item: Any, where: str, texts: List[str], images: List[RequestImage]) -> None:
    if not isinstance(item, dict):
        raise invalid_type(where, "an object", item)
    typ = item.get("type", "message")
    if typ in _PASS_ITEM_TYPES:
        return
    if typ != "message":
        raise ApiError(400, f"Invalid value: '{typ}'. Supported values are: 'message', "
                            "'image_generation_call', 'item_reference' and other item types.",
                       param=f"{where}.type", code="invalid_value")
    role = item.get("role")
    if role is None:
        raise missing_parameter(f"{where}.role")
    if role not in _ROLES:
        raise invalid_value(f"{where}.role", role, _ROLES)
    content = item.get("content")
    if content is None:
        raise missing_parameter(f"{where}.content")
    if isinstance(content, str):
        if role == "user":
            texts.append(content)
        return
    if not isinstance(content, list):
        raise invalid_type(f"{where}.content", "a string or an array", content)
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise invalid_type(at, "an object", part)
        ptype = part.get("type")
        if ptype in ("input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise invalid_type(f"{at}.text", "a string", text)
            if role == "user" and ptype == "input_text":
                texts.append(text)
        elif ptype == "input_image":
            url, fid = part.get("image_url"), part.get("file_id")
            if url is None and fid is None:
                raise ApiError(400, f"Invalid '{at}': an input_image needs 'image_url' or 'file_id'.",
                               param=at, code="missing_required_parameter")
            if url is not None and not isinstance(url, str):
                raise invalid_type(f"{at}.image_url", "a string", url)
            if part.get("detail") is not None and part["detail"] not in ("low", "high", "auto"):
                raise invalid_value(f"{at}.detail", part["detail"], ("low", "high", "auto"))
            images.append(RequestImage(f"{at}.image_url" if url else f"{at}.file_id", url=url, file_id=fid))
        elif ptype in ("input_file", "refusal"):
            continue
        else:
            raise invalid_value(f"{at}.type", ptype, ("input_text", "input_image", "input_file"))


# -- OpenRouter chat ------------------------------------------------------------------------------

OPENROUTER_DEFAULT_MODEL = "google/gemini-2.5-flash-image"
_OR_ROLES = ("system", "user", "assistant", "developer", "tool")
_OR_MODEL = re.compile(r"^[\w.-]+/[\w.:@-]+$")
_IMAGE_OUTPUT = re.compile(r"image|flux|riverflow|seedream", re.I)


def is_openrouter_image_model(model: str) -> bool:
    return bool(_IMAGE_OUTPUT.search(model))


def or_error(status: int, message: str, **metadata: Any) -> ApiError:
    return ApiError(status, message, metadata=metadata or None)


CHAT_TYPES = {
    "temperature": ("number", 0, 2), "top_p": ("number", 0, 1), "min_p": ("number", 0, 1),
    "top_a": ("number", 0, 1), "frequency_penalty": ("number", -2, 2), "presence_penalty": ("number", -2, 2),
    "repetition_penalty": ("number", 0, 2), "max_tokens": ("integer", 1, 10 ** 9),
    "max_completion_tokens": ("integer", 1, 10 ** 9), "seed": "integer", "top_k": "integer",
    "top_logprobs": ("integer", 0, 20), "logprobs": "boolean", "parallel_tool_calls": "boolean",
    "stream": "boolean", "user": "string", "session_id": "string", "prompt_cache_key": "string",
    "models": "array", "plugins": "array", "tools": "array", "metadata": "object", "provider": "object",
    "reasoning": "object", "response_format": "object", "image_config": "object", "stream_options": "object",
    "logit_bias": "object", "stop": ("string", "array"), "model": "string", "messages": "array",
    "modalities": "array", "usage": "object", "transforms": "array",
}


def validate_chat(body: Mapping[str, Any]) -> Dict[str, Any]:
    """OpenRouter is lenient about unknown fields (it passes them on); known ones are type-checked."""
    check_types(body, CHAT_TYPES, vendor=OPENROUTER)
    model = body.get("model")
    if model is None:
        models = body.get("models")
        model = models[0] if isinstance(models, list) and models and isinstance(models[0], str) \
            else OPENROUTER_DEFAULT_MODEL
    if not isinstance(model, str) or not (_OR_MODEL.match(model) or model == "openrouter/auto"):
        raise or_error(400, f"{model} is not a valid model ID")
    messages = body.get("messages")
    if messages is None:
        if isinstance(body.get("prompt"), str):
            messages = [{"role": "user", "content": body["prompt"]}]
        else:
            raise or_error(400, 'Input required: specify "prompt" or "messages"')
    if not isinstance(messages, list) or not messages:
        raise or_error(400, "Invalid input: 'messages' must be a non-empty array")
    modalities = body.get("modalities")
    if modalities is None:
        modalities = ["text"]
    if not isinstance(modalities, list) or any(m not in ("text", "image", "audio") for m in modalities):
        raise or_error(400, "Invalid input: 'modalities' must be an array of \"text\", \"image\", \"audio\"")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise or_error(400, "Invalid input: 'stream' must be a boolean")

    texts: List[str] = []
    images: List[RequestImage] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise or_error(400, f"Invalid input: messages[{i}] must be an object")
        role = msg.get("role")
        if role not in _OR_ROLES:
            raise or_error(400, f"Invalid input: messages[{i}].role must be one of "
                                + ", ".join(f'"{r}"' for r in _OR_ROLES))
        content = msg.get("content")
        if content is None:
            if role == "assistant":
                continue
            raise or_error(400, f"Invalid input: messages[{i}].content is required")
        if isinstance(content, str):
            if role == "user":
                texts.append(content)
            continue
        if not isinstance(content, list):
            raise or_error(400, f"Invalid input: messages[{i}].content must be a string or an array")
        for j, part in enumerate(content):
            at = f"messages[{i}].content[{j}]"
            if not isinstance(part, dict):
                raise or_error(400, f"Invalid input: {at} must be an object")
            ptype = part.get("type")
            if ptype == "text":
                if not isinstance(part.get("text"), str):
                    raise or_error(400, f"Invalid input: {at}.text must be a string")
                if role == "user":
                    texts.append(part["text"])
            elif ptype == "image_url":
                iu = part.get("image_url")
                if not isinstance(iu, dict):
                    raise or_error(400, f"Invalid input: {at}.image_url must be an object "
                                        '{"url": "...", "detail"?: "auto" | "low" | "high"}')
                url = iu.get("url")
                if not isinstance(url, str) or not url:
                    raise or_error(400, f"Invalid input: {at}.image_url.url must be a string")
                if iu.get("detail") is not None and iu["detail"] not in ("auto", "low", "high"):
                    raise or_error(400, f"Invalid input: {at}.image_url.detail must be \"auto\", \"low\" or \"high\"")
                if role == "user":
                    images.append(RequestImage(f"{at}.image_url.url", url=url))
            elif ptype in ("input_audio", "file", "input_video", "video_url"):
                continue
            else:
                raise or_error(400, f"Invalid input: {at}.type \"{ptype}\" is not supported; expected "
                                    "\"text\", \"image_url\", \"input_audio\" or \"file\"")

    draw = "image" in modalities
    if draw and not is_openrouter_image_model(model):
        raise or_error(404, "No endpoints found that support the requested output modalities: "
                            + ", ".join(modalities))
    config = body.get("image_config")
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise or_error(400, "Invalid input: 'image_config' must be an object")
    for key, value in config.items():  # the spec: each value a string, a number or an array
        if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
            raise or_error(400, f"Invalid input: image_config.{key} must be a string, a number or an array")
    ratio = config.get("aspect_ratio", "1:1")
    if not isinstance(ratio, str) or ratio not in ASPECT_RATIO_SIZES:
        raise or_error(400, "Provider returned error", provider_name="Google",
                       raw=f"Invalid image_config.aspect_ratio {ratio!r}: supported values are "
                           + ", ".join(ASPECT_RATIO_SIZES))
    tier = config.get("image_size", "1K")
    if not isinstance(tier, str) or tier not in IMAGE_SIZE_SCALE:
        raise or_error(400, "Provider returned error", provider_name="Google",
                       raw=f"Invalid image_config.image_size {tier!r}: supported values are 1K, 2K, 4K")
    fmt = config.get("output_format", "png")
    if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
        raise or_error(400, "Provider returned error", provider_name="Google",
                       raw=f"Invalid image_config.output_format {fmt!r}: supported values are png, jpeg, webp")
    seed = body.get("seed")
    return {"model": model, "messages": messages, "modalities": modalities, "stream": bool(stream),
            "texts": texts, "images": images, "prompt": "\n".join(t for t in texts if t.strip()).strip(),
            "draw": draw, "aspect_ratio": ratio, "image_size": tier, "output_format": fmt, "seed": seed}
