"""How an answer goes out: JSON bodies, errors in the vendor's shape, the answers of the
pre-faults (status codes, ``html``) and the body-level post-faults (``truncate``,
``invalid_json``, ``slow_body``, ``reset_after_headers``), and hanging up on the client."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, Optional, Union

from aiohttp import web

from . import faults as F
from .auth import mask_key
from .call import Call
from .faults import Fault
from .validate import OPENROUTER, ApiError


def json_response(payload: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(body=json.dumps(payload).encode("utf-8"), status=status,
                        content_type="application/json", headers=headers)


def error_response(call_or_vendor: Union[Call, str], err: ApiError) -> web.Response:
    vendor = call_or_vendor.vendor if isinstance(call_or_vendor, Call) else call_or_vendor
    headers = dict(err.headers)
    if isinstance(call_or_vendor, Call):
        headers = {**call_or_vendor.headers, **headers}
        call_or_vendor.entry["error"] = err.message
    return json_response(err.body(vendor), err.status, headers)


async def send_payload(call: Call, payload: Dict[str, Any], first_b64: Optional[str] = None) -> web.StreamResponse:
    """Send a successful JSON answer, applying the body-level faults."""
    data = json.dumps(payload).encode("utf-8")
    name = call.fault_name
    headers = dict(call.headers)
    if name == "truncate":
        cut = len(data) // 2
        if first_b64:
            start = data.find(first_b64[:64].encode("ascii"))
            if start >= 0:
                cut = start + max(1, len(first_b64) // 2)
        return web.Response(body=data[:cut], content_type="application/json", headers=headers)
    if name == "invalid_json":
        return web.Response(body=F.INVALID_JSON_BODY, content_type="application/json", headers=headers)
    if name in ("reset_after_headers", "slow_body"):
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_type = "application/json"
        resp.content_length = len(data)
        await resp.prepare(call.request)
        half = len(data) // 2
        await resp.write(data[:half])
        if name == "reset_after_headers":
            await asyncio.sleep(0.05)  # let the partial body reach the socket
            hang_up(call.request, graceful=True)
            call.entry["outcome"] = "reset_after_headers"
            return resp
        await asyncio.sleep(call.fault.number("delay", 2.0) if call.fault else 2.0)
        try:
            await resp.write(data[half:])
            await resp.write_eof()
        except ConnectionError:  # the client timed out and hung up meanwhile: that is the point
            call.entry["outcome"] = "client_gone"
        return resp
    return web.Response(body=data, content_type="application/json", headers=headers)


def hang_up(request: web.Request, graceful: bool) -> None:
    """Close the connection under the request (``graceful`` flushes what was written)."""
    transport = request.transport
    if transport is None:
        return
    protocol = request.protocol
    if protocol is not None:
        try:
            protocol.force_close()
        except Exception:  # pragma: no cover - aiohttp internals
            pass
    if graceful:
        transport.close()
    else:
        transport.abort()


def fault_response(call: Call, fault: Fault, model: Optional[str], token: Optional[str]) -> web.Response:
    headers = {**call.headers, **F.retry_headers(fault)}
    if fault.name == "html":
        status = int(fault.number("status", 502))
        return web.Response(text=F.html_page(status), status=status, content_type="text/html",
                            headers=headers)
    status = fault.status or 500
    if call.vendor == OPENROUTER:
        body = {"error": F.openrouter_fault_error(fault, model, bool(token))}
    else:
        body = {"error": F.openai_fault_error(fault, model, mask_key(token) if token else None)}
        if status == 429:
            headers.setdefault("x-ratelimit-limit-requests", "5")
            headers.setdefault("x-ratelimit-remaining-requests", "0")
            headers.setdefault("x-ratelimit-reset-requests", F.retry_hint(fault))
    call.entry["error"] = body["error"]["message"]
    return json_response(body, status, headers)
