"""Fault specs for the emulator: parsing and the canned vendor error bodies.

A fault spec is ``name[:k=v[,k=v...]]``, for example ``429:retry_after=2``,
``slow_body:delay=1.5`` or ``503``. Names:

=====================  ===================================================================
``400`` ... ``599``    that HTTP status with a vendor-shaped error body. Parameters for
                       every status: ``retry_after=<s>`` (``Retry-After: <s>``),
                       ``retry_after_date=<s>`` (``Retry-After`` as an HTTP date ``s``
                       seconds ahead), ``retry_after_ms=<ms>`` (``retry-after-ms``),
                       ``message=<text>`` (replaces the canned message); ``400`` takes
                       ``kind=size`` (the answer to a size the API does not take).
``html``               502 (or ``status=<n>``) with an nginx/Cloudflare-style HTML page.
``reset``              the TCP connection is closed before any response byte.
``reset_after_headers`` 200 headers with the full Content-Length, part of the body,
                       then the connection is closed.
``truncate``           200 whose JSON body is cut in the middle of the base64 (the
                       Content-Length matches what is sent).
``invalid_json``       200 ``application/json`` with a body that is not JSON.
``no_image``           200 in the right shape but without any image.
``cut_image``          200 in the right shape whose images are cut short: a PNG with every
                       chunk intact (lengths, CRCs, IEND) but half its pixel stream, a JPEG
                       or WebP ending half-way (only a full decode notices).
``slow_headers``       sleep ``delay`` seconds (default 2) before answering normally.
``slow_body``          send the headers and half the body, stall ``delay`` seconds
                       (default 2), then send the rest.
``url``                image results as ``http://<emulator>/files/<id>.<ext>`` URLs
                       (images API: ``data[i].url``; OpenRouter: ``images[].image_url.url``;
                       ignored by ``/responses``, which always returns base64).
``stream_break``       (``"stream": true`` only) send ``after`` events (default: one partial
                       image, or none when there is at most one image event), then drop
                       the connection without the terminal event; ``eof=1`` ends the
                       HTTP response cleanly instead (still no terminal event).
``stream_error``       (streams only) send ``after`` events, then an error event in the
                       vendor's shape (``message=<text>``), then end the stream.
``stream_slow``        (streams only) ``delay`` seconds before each image-bearing event
                       (overrides the emulator's ``stream_delay``); ``stream_break`` and
                       ``stream_error`` take ``delay`` too.
``ok`` / ``none``      no fault (handy in a queue: ``"503", "ok", "503"``).
=====================  ===================================================================

A stream (``"stream": true``) also honours ``reset_after_headers`` (drop right after the
headers), ``truncate`` (the first image event is cut in the middle of its base64, then the
response ends), ``invalid_json`` (a ``data:`` line that is not JSON), ``slow_body`` (a stall
of ``delay`` s half-way), ``no_image`` (chat / responses: no image in the stream) and ``url``
(chat: image URLs). Stream-only faults are ignored by requests that do not stream.
"""
from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

#: faults that answer (or hang up) before the request is looked at
PRE_FAULTS = ("html", "reset", "slow_headers")
#: faults that change a successful answer
POST_FAULTS = ("reset_after_headers", "truncate", "invalid_json", "no_image", "slow_body", "url", "cut_image")
#: faults that change a ``"stream": true`` answer (ignored otherwise)
STREAM_FAULTS = ("stream_break", "stream_error", "stream_slow")
NOOP_FAULTS = ("ok", "none")
#: ``400:kind=size``: the API's answer to a size it does not take, instead of the canned refusal
STATUS_KINDS = ("size",)
FAULT_NAMES = PRE_FAULTS + POST_FAULTS + STREAM_FAULTS + NOOP_FAULTS

_PARAMS: Dict[str, Tuple[str, ...]] = {
    "status": ("retry_after", "retry_after_date", "retry_after_ms", "message", "kind"),
    "html": ("status", "retry_after"),
    "slow_headers": ("delay",),
    "slow_body": ("delay",),
    "stream_break": ("after", "delay", "eof"),
    "stream_error": ("after", "delay", "message"),
    "stream_slow": ("delay",),
}


@dataclass(frozen=True)
class Fault:
    """One parsed fault spec."""
    name: str
    params: Dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    spec: str = ""

    @property
    def status(self) -> Optional[int]:
        """The HTTP status of an error-status fault (``"503"`` -> 503), else None."""
        return int(self.name) if self.name.isdigit() else None

    @property
    def is_noop(self) -> bool:
        return self.name in NOOP_FAULTS

    @property
    def is_pre(self) -> bool:
        return self.status is not None or self.name in PRE_FAULTS

    def number(self, key: str, default: float) -> float:
        v = self.params.get(key)
        return default if v is None else float(v)

    def __str__(self) -> str:
        return self.spec or self.name


def parse_fault(spec: Union[str, Fault]) -> Fault:
    """Parse ``name[:k=v[,k=v]]``; raises ValueError with a readable message."""
    if isinstance(spec, Fault):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"a fault spec must be a string, not {type(spec).__name__}")
    text = spec.strip()
    if not text:
        raise ValueError("empty fault spec")
    name, _, rest = text.partition(":")
    name = name.strip().lower()
    params: Dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            k, eq, v = item.partition("=")
            k = k.strip().lower()
            if not eq or not k:
                raise ValueError(f"fault {text!r}: parameters look like 'key=value' (got {item!r})")
            params[k] = v.strip()
    if name.isdigit():
        status = int(name)
        if not 400 <= status <= 599:
            raise ValueError(f"fault {text!r}: a status fault must be 400-599")
        allowed = _PARAMS["status"]
    elif name in FAULT_NAMES:
        allowed = _PARAMS.get(name, ())
    else:
        raise ValueError(f"unknown fault {name!r}; known: 400-599, " + ", ".join(FAULT_NAMES))
    for k, v in params.items():
        if k not in allowed:
            raise ValueError(f"fault {text!r}: unknown parameter {k!r}"
                             + (f" (allowed: {', '.join(allowed)})" if allowed else " (it takes none)"))
        if k == "kind" and v not in STATUS_KINDS:
            raise ValueError(f"fault {text!r}: kind must be one of {', '.join(STATUS_KINDS)}, got {v!r}")
        if k not in ("message", "kind"):
            try:
                if float(v) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"fault {text!r}: {k} must be a non-negative number, got {v!r}") from None
    return Fault(name=name, params=params, spec=text)


def retry_headers(fault: Fault) -> Dict[str, str]:
    """The Retry-After / retry-after-ms headers asked for by a fault's parameters."""
    headers: Dict[str, str] = {}
    p = fault.params
    if "retry_after" in p:
        v = float(p["retry_after"])
        headers["Retry-After"] = str(int(v)) if v == int(v) else str(v)
    if "retry_after_date" in p:
        headers["Retry-After"] = email.utils.formatdate(time.time() + float(p["retry_after_date"]),
                                                        usegmt=True)
    if "retry_after_ms" in p:
        v = float(p["retry_after_ms"])
        headers["retry-after-ms"] = str(int(v)) if v == int(v) else str(v)
    return headers


# -- canned messages --------------------------------------------------------------------------

def retry_hint(fault: Fault) -> str:
    p = fault.params
    for key, scale in (("retry_after", 1.0), ("retry_after_date", 1.0), ("retry_after_ms", 0.001)):
        if key in p:
            return f"{float(p[key]) * scale:g}s"
    return "20s"


def openai_fault_error(fault: Fault, model: Optional[str], masked_key: Optional[str]) -> Dict[str, Any]:
    """The ``error`` object OpenAI sends for the fault's status."""
    status = fault.status or 500
    model = model or "gpt-image-1"
    msg, typ, code, param = None, "invalid_request_error", None, None
    if status == 400 and fault.params.get("kind") == "size":
        msg = ("Invalid value: '800x600'. Supported values are: '1024x1024', '1024x1536', '1536x1024', "
               "and 'auto'.")
        code, param = "invalid_value", "size"
    elif status == 400:
        msg = ("Your request was rejected as a result of our safety system. Your prompt may contain "
               "text that is not allowed by our safety system.")
        typ, code = "image_generation_user_error", "moderation_blocked"
    elif status == 401:
        if masked_key:
            msg = (f"Incorrect API key provided: {masked_key}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
            code = "invalid_api_key"
        else:
            msg = MISSING_KEY_MESSAGE
    elif status == 402:
        msg, code = "You exceeded your current quota, please check your plan and billing details.", \
            "insufficient_quota"
    elif status == 403:
        msg = (f"Your organization must be verified to use the model `{model}`. Please go to: "
               "https://platform.openai.com/settings/organization/general and click on Verify "
               "Organization. If you just verified, it can take up to 15 minutes for access to propagate.")
    elif status == 404:
        msg, code, param = f"The model `{model}` does not exist or you do not have access to it.", \
            "model_not_found", None
    elif status == 408:
        msg, typ = "Request timed out.", "timeout"
    elif status == 409:
        msg, typ = "The request conflicted with another request in progress. Please try again.", "conflict"
    elif status == 429:
        msg = (f"Rate limit reached for {model} in organization org-emulator on requests per min (RPM): "
               f"Limit 5, Used 5, Requested 1. Please try again in {retry_hint(fault)}. Visit "
               "https://platform.openai.com/account/rate-limits to learn more.")
        typ, code = "requests", "rate_limit_exceeded"
    elif status == 500:
        msg, typ = ("The server had an error while processing your request. Sorry about that!",
                    "server_error")
    elif status == 502:
        msg, typ = "Bad gateway.", "server_error"
    elif status == 503:
        msg, typ = "The server is overloaded or not ready yet.", "server_error"
    elif status == 504:
        msg, typ = "Gateway timeout.", "server_error"
    else:
        msg = f"Emulated error (HTTP {status})."
        typ = "server_error" if status >= 500 else "invalid_request_error"
    if "message" in fault.params:
        msg = fault.params["message"]
    return {"message": msg, "type": typ, "param": param, "code": code}


def openrouter_fault_error(fault: Fault, model: Optional[str], has_key: bool) -> Dict[str, Any]:
    """The ``error`` object OpenRouter sends for the fault's status."""
    status = fault.status or 500
    model = model or "google/gemini-2.5-flash-image"
    meta: Optional[Dict[str, Any]] = None
    if status == 400:
        msg = "Provider returned error"
        said = ("Unsupported image size. Supported sizes are 1K, 2K and 4K." if fault.params.get("kind") == "size"
                else "Request contains an invalid argument.")
        meta = {"raw": '{"error":{"code":400,"message":"' + said + '","status":"INVALID_ARGUMENT"}}',
                "provider_name": "Google"}
    elif status == 401:
        msg = "User not found." if has_key else "No auth credentials found"
    elif status == 402:
        msg = ("This request requires more credits, or fewer max_tokens. "
               "Visit https://openrouter.ai/settings/credits to add more credits")
    elif status == 403:
        msg = "Key limit exceeded (total limit). Manage it using https://openrouter.ai/settings/keys"
    elif status == 404:
        msg = f"No endpoints found for {model}."
    elif status == 408:
        msg = "Request timed out"
    elif status == 429:
        msg = (f"{model} is temporarily rate-limited upstream. Please retry shortly, or add your own key "
               "to accumulate your rate limits: https://openrouter.ai/settings/integrations")
        meta = {"raw": f"{model} is temporarily rate-limited upstream.", "provider_name": "Google"}
    elif status == 502:
        msg = "Provider returned error"
        meta = {"raw": "upstream connect error or disconnect/reset before headers",
                "provider_name": "Google"}
    elif status == 503:
        msg = "No instances available"
    elif status == 504:
        msg = "Gateway Timeout"
    elif status == 500:
        msg = "Internal Server Error"
    else:
        msg = f"Emulated error (HTTP {status})"
    if "message" in fault.params:
        msg = fault.params["message"]
    err: Dict[str, Any] = {"code": status, "message": msg}
    if meta:
        err["metadata"] = meta
    return err


MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
    "username) if you're accessing the API from your browser and are prompted for a username. You "
    "can obtain an API key from https://platform.openai.com/account/api-keys.")


def html_page(status: int) -> str:
    """An HTML error page like the ones nginx / Cloudflare put in front of an API."""
    reason = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out",
              500: "Internal Server Error", 520: "Web server is returning an unknown error",
              429: "Too Many Requests"}.get(status, "Error")
    return (
        "<!DOCTYPE html>\n<html>\n<head><title>{s} {r}</title></head>\n<body>\n"
        "<center><h1>{s} {r}</h1></center>\n"
        "<hr><center>cloudflare</center>\n"
        "<!-- a padding to disable MSIE and Chrome friendly error page -->\n"
        "<!-- jupyter-imagegen emulator: injected 'html' fault -->\n"
        "</body>\n</html>\n").format(s=status, r=reason)


#: the body sent by the ``invalid_json`` fault (with ``content-type: application/json``)
INVALID_JSON_BODY = b"upstream response was not valid: OK\n<!-- not json -->\n"
