"""Reading a request's body: JSON (every API) or multipart (``/images/edits``), into a
:class:`Body`; an unreadable body becomes ``Body.error`` (reported after the auth check)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from aiohttp import BodyPartReader, web

from .validate import OPENROUTER, ApiError


@dataclass
class Body:
    json: Any = None
    fields: Dict[str, str] = field(default_factory=dict)          # multipart text fields
    files: List[Tuple[str, bytes, Optional[str], Optional[str]]] = field(default_factory=list)
    form: bool = False
    error: Optional[ApiError] = None


def _invalid_json(vendor: str) -> ApiError:
    if vendor == OPENROUTER:
        return ApiError(400, "Invalid JSON in request body")
    return ApiError(400, "We could not parse the JSON body of your request. (HINT: This likely means you "
                         "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                         "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
                         "this, please contact us through our help center at help.openai.com.)")


async def read_json(request: web.Request, vendor: str) -> Body:
    raw = await request.read()
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return Body(error=_invalid_json(vendor))
    if not isinstance(obj, dict):
        if vendor == OPENROUTER:
            return Body(json=obj, error=ApiError(400, "Invalid input: expected a JSON object"))
        return Body(json=obj, error=ApiError(400, f"Invalid type for body: expected an object, but got "
                                                  f"{'an array' if isinstance(obj, list) else 'a ' + type(obj).__name__} instead.",
                                             code="invalid_type"))
    return Body(json=obj)


async def read_edit_body(request: web.Request, vendor: str) -> Body:
    ctype = request.content_type
    if ctype == "application/json":
        return await read_json(request, vendor)
    if ctype != "multipart/form-data":
        await request.read()
        return Body(error=ApiError(400, f"Invalid Content-Type header ({ctype or 'none'}), expected "
                                        "multipart/form-data. (HINT: If you're using curl, you can pass -F "
                                        "'key=value' in order to upload files)"))
    body = Body(form=True)
    try:
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):  # a nested multipart: not part of this API
                continue
            name = part.name or ""
            if part.filename is not None:
                data = await part.read(decode=False)
                body.files.append((name, bytes(data), part.headers.get("Content-Type"), part.filename))
            else:
                text = await part.text()
                if name in ("image", "image[]", "mask"):
                    body.error = body.error or ApiError(
                        400, f"Invalid type for '{name}': expected a file, but got a string instead.",
                        param=name, code="invalid_type")
                body.fields[name] = text
    except Exception as e:  # malformed multipart
        return Body(error=ApiError(400, f"Could not parse multipart form: {e}"))
    return body
