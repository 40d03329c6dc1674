"""The request pipeline every API route shares (:func:`api_endpoint`):

  1. pick the fault: ``X-Emulator-Fault`` header, else ``?fault=``, else the next queued fault;
  2. read the body (JSON or multipart) and log a summary (never the Authorization header);
  3. sleep ``latency``;
  4. pre-faults answer here (status codes, ``html``, ``reset``; ``slow_headers`` only sleeps);
  5. check ``Authorization: Bearer``; then report an unreadable body;
  6. the API handler validates, draws the images and answers; post-faults (``no_image``,
     ``url``, ``truncate``, ``invalid_json``, ``slow_body``, ``reset_after_headers``) change
     that answer.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Awaitable, Callable, Optional

from aiohttp import web

from .answers import error_response, fault_response, hang_up
from .auth import bearer_token, check_auth
from .body import Body
from .call import Call
from .faults import Fault, parse_fault
from .requestlog import new_entry, scrub, summarize
from .state import STATE_KEY, EmulatorState
from .validate import OPENAI, ApiError

log = logging.getLogger(__name__)

FAULT_HEADER = "X-Emulator-Fault"
FAULT_QUERY = "fault"

#: an API's handler: validates the body, draws, answers
Handler = Callable[[Call, Body], Awaitable[web.StreamResponse]]


def _explicit_fault(request: web.Request) -> Optional[Fault]:
    spec = request.headers.get(FAULT_HEADER) or request.query.get(FAULT_QUERY)
    return parse_fault(spec) if spec else None


def api_endpoint(api: str, vendor: str, reader: Callable[[web.Request, str], Awaitable[Body]],
                 handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        state: EmulatorState = request.app[STATE_KEY]
        entry = new_entry(request, api)
        call = Call(request, state, api, vendor, None, entry)
        if vendor == OPENAI:
            call.headers["x-request-id"] = "req_" + secrets.token_hex(16)
        try:
            explicit = _explicit_fault(request)
        except ValueError as e:
            state.log_begin(entry)
            await request.read()
            resp = error_response(call, ApiError(400, f"emulator: bad fault spec: {e}", param=FAULT_HEADER))
            entry["status"] = resp.status
            return resp
        fault = explicit if explicit is not None else state.next_fault()
        if fault is not None:
            entry["fault"] = str(fault)
            if fault.is_noop:
                fault = None
        call.fault = fault
        state.log_begin(entry)
        started = time.perf_counter()
        try:
            resp = await _run(call, reader, handler)
        except ApiError as err:
            resp = error_response(call, err)
        except (ConnectionError, asyncio.CancelledError):  # the client went away
            entry["outcome"] = entry.get("outcome") or "client_disconnected"
            raise
        except Exception as e:  # an emulator bug: answer 500 in the vendor's shape, and say what broke
            log.exception("emulator error on %s %s", request.method, request.path)
            resp = error_response(call, ApiError(500, f"emulator internal error: {type(e).__name__}: {e}",
                                                 type="server_error"))
        finally:
            secret = bearer_token(request)
            for k in ("prompt", "error", "tool", "headers"):
                entry[k] = scrub(entry.get(k), secret)
        entry["status"] = None if entry.get("outcome") == "reset" else resp.status
        entry["elapsed"] = round(time.perf_counter() - started, 4)
        return resp

    return endpoint


async def _run(call: Call, reader, handler: Handler) -> web.StreamResponse:
    request, state, fault = call.request, call.state, call.fault
    body = await reader(request, call.vendor)
    summarize(call, body)
    if state.latency > 0:
        await asyncio.sleep(state.latency)
    if fault is not None and fault.is_pre:
        if fault.name == "slow_headers":
            await asyncio.sleep(fault.number("delay", 2.0))
        elif fault.name == "reset":
            call.entry["outcome"] = "reset"
            hang_up(request, graceful=False)
            return web.Response(status=500)  # never reaches the client: the connection is gone
        else:
            return fault_response(call, fault, call.entry.get("model"), bearer_token(request))
    err = check_auth(call)
    if err is not None:
        return error_response(call, err)
    if body.error is not None:
        return error_response(call, body.error)
    return await handler(call, body)
