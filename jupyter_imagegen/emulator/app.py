"""The emulator's aiohttp application: the routes of the three image APIs and of the control
endpoints (:func:`create_app`).

Every API route is served under ``/v1`` (OpenAI style), ``/api/v1`` (OpenRouter style) and at
the root. The error shape follows the API, not the prefix: ``/chat/completions`` answers in
OpenRouter's shape, ``/images/*`` and ``/responses`` in OpenAI's.

Each API route runs the shared pipeline (:mod:`.pipeline`: fault, body, latency, auth) with its
body reader (:mod:`.body`) and its handler (:mod:`.openrouter_chat`, :mod:`.openai_images`,
:mod:`.openai_responses`); ``"stream": true`` goes to the SSE handlers :mod:`.streaming`
registers (:mod:`.stream_hook`).
"""
from __future__ import annotations

from typing import Any, Optional

from aiohttp import web

from . import streaming  # noqa: F401  (registers the SSE handlers)
from .answers import json_response
from .body import read_edit_body, read_json
from .control import faults_endpoint, get_file, health, list_requests, reset
from .openai_images import handle_edits, handle_generations
from .openai_responses import handle_responses
from .openrouter_chat import handle_chat
from .pipeline import api_endpoint
from .state import STATE_KEY, EmulatorState
from .validate import OPENAI, OPENROUTER

PREFIXES = ("", "/v1", "/api/v1")
MAX_BODY = 128 * 1024 * 1024


@web.middleware
async def _not_found_json(request: web.Request, handler):
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as e:
        if request.path.startswith("/api/"):
            return json_response({"error": {"code": e.status, "message": e.reason}}, e.status)
        return json_response({"error": {"message": f"Invalid URL ({request.method} {request.path})",
                                        "type": "invalid_request_error", "param": None, "code": None}}, e.status)


APIS = (
    ("/chat/completions", "openrouter_chat", OPENROUTER, read_json, handle_chat),
    ("/images/generations", "openai_images", OPENAI, read_json, handle_generations),
    ("/images/edits", "openai_edits", OPENAI, read_edit_body, handle_edits),
    ("/responses", "openai_responses", OPENAI, read_json, handle_responses),
)


def create_app(state: Optional[EmulatorState] = None, **state_kwargs: Any) -> web.Application:
    """The aiohttp Application (for embedding); ``state_kwargs`` build a state when none is given."""
    state = state if state is not None else EmulatorState(**state_kwargs)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_not_found_json])
    app[STATE_KEY] = state
    for path, api, vendor, reader, handler in APIS:
        endpoint = api_endpoint(api, vendor, reader, handler)
        for prefix in PREFIXES:
            app.router.add_post(prefix + path, endpoint)
    app.router.add_get("/_emulator/health", health)
    app.router.add_get("/_emulator/requests", list_requests)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_route("*", "/_emulator/faults", faults_endpoint)
    app.router.add_get("/files/{name}", get_file)
    return app
