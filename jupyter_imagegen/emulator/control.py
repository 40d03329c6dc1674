"""The emulator's own endpoints: ``/_emulator/health``, ``/_emulator/requests`` (the log),
``/_emulator/reset``, ``/_emulator/faults`` (GET / POST / DELETE the queue) and the images
served at ``/files/<name>`` (``response_format=url`` and the ``url`` fault)."""
from __future__ import annotations

from aiohttp import web

from .answers import json_response
from .state import STATE_KEY, EmulatorState
from .stream_hook import STREAM_HANDLERS


async def health(request: web.Request) -> web.Response:
    state: EmulatorState = request.app[STATE_KEY]
    return json_response({"status": "ok", "emulator": "jupyter-imagegen", "requests": state.request_count,
                          "pending_faults": state.pending_faults, "latency": state.latency,
                          "stream_delay": state.stream_delay,
                          "auth": "token" if state.token is not None else "any-bearer",
                          "apis": ["openrouter_chat", "openai_images", "openai_responses"],
                          "streaming": sorted(STREAM_HANDLERS)})


async def list_requests(request: web.Request) -> web.Response:
    state: EmulatorState = request.app[STATE_KEY]
    reqs = state.requests
    return json_response({"count": state.request_count, "requests": reqs})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return json_response({"status": "ok"})


async def faults_endpoint(request: web.Request) -> web.Response:
    state: EmulatorState = request.app[STATE_KEY]
    if request.method == "DELETE":
        state.clear_faults()
    elif request.method == "POST":
        try:
            body = await request.json()
        except ValueError:
            return json_response({"error": {"message": "expected JSON {\"faults\": [\"503\", ...]}"}}, 400)
        specs = body.get("faults") if isinstance(body, dict) else body
        if isinstance(specs, str):
            specs = [specs]
        if not isinstance(specs, list):
            return json_response({"error": {"message": "expected JSON {\"faults\": [\"503\", ...]}"}}, 400)
        try:
            state.add_faults(*specs)
        except ValueError as e:
            return json_response({"error": {"message": str(e)}}, 400)
    return json_response({"pending_faults": state.pending_faults})


async def get_file(request: web.Request) -> web.Response:
    state: EmulatorState = request.app[STATE_KEY]
    got = state.get_file(request.match_info["name"])
    if got is None:
        return json_response({"error": {"message": "No such file (files expire when the emulator restarts "
                                                   "or is reset).", "type": "invalid_request_error",
                                        "param": None, "code": "not_found"}}, 404)
    data, mime = got
    return web.Response(body=data, content_type=mime, headers={"Cache-Control": "private, max-age=3600"})
