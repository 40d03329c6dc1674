"""The streaming hook: a request with ``"stream": true`` goes to ``STREAM_HANDLERS[api]`` (see
:func:`register_stream_handler`); without a registered handler it is refused with a 400 in the
vendor's shape. :mod:`~jupyter_imagegen.emulator.streaming` registers the SSE handlers of the
three APIs. A stream handler gets the :class:`~jupyter_imagegen.emulator.call.Call` and the
validated parameters and can reuse :meth:`Call.draw` and the ``*_payload`` builders of the
wire-format modules."""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict

from aiohttp import web

from .call import Call
from .validate import ApiError

StreamHandler = Callable[[Call, Dict[str, Any]], Awaitable[web.StreamResponse]]

#: api name ("openai_images", "openai_edits", "openai_responses", "openrouter_chat") -> SSE handler
STREAM_HANDLERS: Dict[str, StreamHandler] = {}


def register_stream_handler(api: str, handler: StreamHandler) -> None:
    """Install the SSE answer for ``"stream": true`` requests of one API."""
    STREAM_HANDLERS[api] = handler


async def answer_stream(call: Call, params: Dict[str, Any]) -> web.StreamResponse:
    handler = STREAM_HANDLERS.get(call.api)
    if handler is None:
        raise ApiError(400, "streaming is not supported by this emulator yet", param="stream",
                       code="unsupported_value")
    return await handler(call, params)
