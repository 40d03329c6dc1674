"""Who may call: the ``Authorization: Bearer`` check with each vendor's 401, and the key masking
OpenAI's messages use (the request log and the fault answers use it too)."""
from __future__ import annotations

import hmac
from typing import Optional

from aiohttp import web

from . import faults as F
from .call import Call
from .validate import OPENROUTER, ApiError


def mask_key(key: str) -> str:
    """Mask a key the way OpenAI's 401 message does: ``sk-t****...1234``."""
    if len(key) < 12:
        return "*" * len(key)
    return key[:4] + "*" * min(max(4, len(key) - 8), 40) + key[-4:]


def bearer_token(request: web.Request) -> Optional[str]:
    h = request.headers.get("Authorization", "")
    scheme, _, value = h.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def check_auth(call: Call) -> Optional[ApiError]:
    token = bearer_token(call.request)
    expected = call.state.token
    if token is None:
        call.entry["auth"] = "missing"
        if call.vendor == OPENROUTER:
            return ApiError(401, "No auth credentials found")
        return ApiError(401, F.MISSING_KEY_MESSAGE)
    if expected is not None and not hmac.compare_digest(token.encode(), expected.encode()):
        call.entry["auth"] = "rejected"
        if call.vendor == OPENROUTER:
            return ApiError(401, "User not found.")
        return ApiError(401, f"Incorrect API key provided: {mask_key(token)}. You can find your API key at "
                             "https://platform.openai.com/account/api-keys.", code="invalid_api_key")
    call.entry["auth"] = "ok"
    return None
