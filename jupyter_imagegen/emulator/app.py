"""The emulator's aiohttp application: state, routes, auth, faults and the three image APIs.

Every API route is served under ``/v1`` (OpenAI style), ``/api/v1`` (OpenRouter style) and at
the root. The error shape follows the API, not the prefix: ``/chat/completions`` answers in
OpenRouter's shape, ``/images/*`` and ``/responses`` in OpenAI's.

Request pipeline (``_api_endpoint``):
  1. pick the fault: ``X-Emulator-Fault`` header, else ``?fault=``, else the next queued fault;
  2. read the body (JSON or multipart) and log a summary (never the Authorization header);
  3. sleep ``latency``;
  4. pre-faults answer here (status codes, ``html``, ``reset``; ``slow_headers`` only sleeps);
  5. check ``Authorization: Bearer``; then report an unreadable body;
  6. the API handler validates, draws the images and answers; post-faults (``no_image``,
     ``url``, ``truncate``, ``invalid_json``, ``slow_body``, ``reset_after_headers``) change
     that answer.

Streaming hook: a request with ``"stream": true`` goes to ``STREAM_HANDLERS[api]`` (see
:func:`register_stream_handler`); without a registered handler it is refused with a 400 in the
vendor's shape. A module ``jupyter_imagegen/emulator/streaming.py``, if present, is imported by
:func:`create_app` so it can register its handlers. A stream handler gets the :class:`Call` and
the validated parameters and can reuse :meth:`Call.draw` and the ``*_payload`` builders below.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import hmac
import importlib.util
import ipaddress
import itertools
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Deque, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, web

from . import faults as F
from .faults import Fault, parse_fault
from .images import (MIME_BY_FORMAT, RenderSpec, aspect_ratio_size, open_image, parse_data_url,
                     placeholder_image, render, sniff_mime, stamp_text)
from .validate import (OPENAI, OPENROUTER, ApiError, ImageRef, image_usage, resolve_size,
                       validate_chat, validate_edit, validate_generation, validate_responses)

log = logging.getLogger(__name__)

PREFIXES = ("", "/v1", "/api/v1")
FAULT_HEADER = "X-Emulator-Fault"
FAULT_QUERY = "fault"
#: request headers never written to the request log
SECRET_HEADERS = frozenset(("authorization", "proxy-authorization", "cookie", "set-cookie"))
_SECRET_WORDS = ("key", "token", "auth", "secret", "password", "cookie", "session")


def _loggable_header(name: str) -> bool:
    n = name.lower()
    return n not in SECRET_HEADERS and not any(w in n for w in _SECRET_WORDS)


def _scrub(value: Any, secret: Optional[str]) -> Any:
    """Replace a secret wherever it appears in a log entry (a prompt could quote it)."""
    if not secret or len(secret) < 4:
        return value
    if isinstance(value, str):
        return value.replace(secret, mask_key(secret)) if secret in value else value
    if isinstance(value, dict):
        return {k: _scrub(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secret) for v in value]
    return value
MAX_BODY = 128 * 1024 * 1024


def mask_key(key: str) -> str:
    """Mask a key the way OpenAI's 401 message does: ``sk-t****...1234``."""
    if len(key) < 12:
        return "*" * len(key)
    return key[:4] + "*" * min(max(4, len(key) - 8), 40) + key[-4:]


# -- state ----------------------------------------------------------------------------------------

class EmulatorState:
    """Everything the app keeps between requests. Thread-safe: a lock guards the log, the fault
    queue and the file store, so an :class:`EmulatorThread` can be driven from another thread."""

    def __init__(self, token: Optional[str] = None, latency: float = 0.0, *, max_log: int = 10000,
                 max_files: int = 512, stream_delay: float = 0.0):
        self.token = token
        self.latency = float(latency)
        #: seconds before each image-bearing event of a stream (partials and the final image)
        self.stream_delay = float(stream_delay)
        self._lock = threading.Lock()
        self._faults: Deque[Fault] = collections.deque()
        self._log: Deque[Dict[str, Any]] = collections.deque(maxlen=max_log)
        self._count = 0
        self._files: "collections.OrderedDict[str, Tuple[bytes, str]]" = collections.OrderedDict()
        self._max_files = max_files
        self._variants = itertools.count(1)
        self._responses: "collections.OrderedDict[str, None]" = collections.OrderedDict()

    # faults
    def add_faults(self, *specs: Union[str, Fault, Iterable[Union[str, Fault]]]) -> List[Fault]:
        """Queue faults, one per coming API request, in order. Raises ValueError on a bad spec
        (nothing is queued then)."""
        flat: List[Union[str, Fault]] = []
        for s in specs:
            if isinstance(s, (str, Fault)):
                flat.append(s)
            else:
                flat.extend(s)
        parsed = [parse_fault(s) for s in flat]
        with self._lock:
            self._faults.extend(parsed)
        return parsed

    def next_fault(self) -> Optional[Fault]:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> List[str]:
        with self._lock:
            return [str(f) for f in self._faults]

    # request log
    def log_begin(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        with self._lock:
            self._count += 1
            entry["seq"] = self._count
            self._log.append(entry)
        return entry

    @property
    def requests(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._log]

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    def reset(self) -> None:
        """Forget the request log, queued faults, stored files and response ids."""
        with self._lock:
            self._log.clear()
            self._count = 0
            self._faults.clear()
            self._files.clear()
            self._responses.clear()

    # files served at /files/<id>
    def store_file(self, data: bytes, mime: str) -> str:
        ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(mime, "bin")
        name = f"img-{secrets.token_hex(8)}.{ext}"
        with self._lock:
            self._files[name.rsplit(".", 1)[0]] = (data, mime)
            while len(self._files) > self._max_files:
                self._files.popitem(last=False)
        return name

    def get_file(self, name: str) -> Optional[Tuple[bytes, str]]:
        with self._lock:
            return self._files.get(name.rsplit(".", 1)[0])

    # misc
    def next_variant(self) -> int:
        with self._lock:
            return next(self._variants)

    def remember_response(self, rid: str) -> None:
        with self._lock:
            self._responses[rid] = None
            while len(self._responses) > 10000:
                self._responses.popitem(last=False)

    def has_response(self, rid: str) -> bool:
        with self._lock:
            return rid in self._responses


try:
    STATE_KEY: Any = web.AppKey("jupyter_imagegen_emulator_state", EmulatorState)
except AttributeError:  # aiohttp < 3.9
    STATE_KEY = "jupyter_imagegen_emulator_state"


# -- one API call ---------------------------------------------------------------------------------

@dataclass
class Generated:
    """One drawn image."""
    data: bytes
    mime: str
    fmt: str
    width: int
    height: int
    revised_prompt: Optional[str] = None

    @property
    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


@dataclass
class Call:
    request: web.Request
    state: EmulatorState
    api: str
    vendor: str
    fault: Optional[Fault]
    entry: Dict[str, Any]
    headers: Dict[str, str] = field(default_factory=dict)   # extra response headers

    @property
    def fault_name(self) -> Optional[str]:
        return self.fault.name if self.fault else None

    @property
    def base_url(self) -> str:
        return f"{self.request.scheme}://{self.request.host}"

    def file_url(self, g: Generated) -> str:
        return f"{self.base_url}/files/{self.state.store_file(g.data, g.mime)}"

    async def draw(self, specs: List[RenderSpec]) -> List[Generated]:
        """Render in worker threads (the loop stays free for other requests)."""
        loop = asyncio.get_running_loop()
        self.entry["stamps"] = [stamp_text(s) for s in specs]   # what each picture says in its corner
        datas = await asyncio.gather(*(loop.run_in_executor(None, render, s) for s in specs))
        return [Generated(d, MIME_BY_FORMAT[s.fmt], s.fmt, s.width, s.height) for d, s in zip(datas, specs)]

    async def resolve_image(self, ref: ImageRef) -> bytes:
        """The bytes of an input image reference, validated as a decodable image."""
        data = ref.data
        if ref.file_id is not None and data is None and ref.url is None:
            raise self._image_error(ref, f"No such File object: {ref.file_id}", status=404, code=None)
        if data is None:
            url = ref.url or ""
            if url.startswith("data:"):
                try:
                    _, data = parse_data_url(url)
                except ValueError:
                    raise self._image_error(
                        ref, f"Invalid '{ref.param}'. Expected a base64-encoded data URL with an image MIME "
                             "type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got an invalid "
                             "value.", code="invalid_value") from None
            elif url.startswith(("http://", "https://")):
                data = await self._fetch(ref, url)
            else:
                raise self._image_error(ref, f"Invalid '{ref.param}': expected a URL (http, https or data:), "
                                             f"got {url[:40]!r}.", code="invalid_value")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, open_image, data)
        except ValueError:
            raise self._image_error(
                ref, "The image data you provided does not represent a valid image. Please check your "
                     "input and try again with one of the supported image formats: ['image/jpeg', "
                     "'image/png', 'image/gif', 'image/webp'].", code="invalid_image_format") from None
        return data

    async def _fetch(self, ref: ImageRef, url: str) -> bytes:
        parts = urlsplit(url)
        if parts.path.startswith("/files/") and (parts.netloc == self.request.host or _is_loopback(parts.hostname)):
            got = self.state.get_file(parts.path[len("/files/"):])
            if got is not None:
                return got[0]
        if not _is_loopback(parts.hostname):
            # offline: a stand-in picture instead of the remote one
            return placeholder_image(f"remote input image (not fetched by the offline emulator): {url}")
        import aiohttp
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
                async with s.get(url) as r:
                    if r.status != 200:
                        raise ValueError(f"HTTP {r.status}")
                    return await r.content.read(64 * 1024 * 1024)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            raise self._image_error(ref, f"Error while downloading {url}.", code="invalid_image_url") from None

    def _image_error(self, ref: ImageRef, message: str, *, code: Optional[str], status: int = 400) -> ApiError:
        if self.vendor == OPENROUTER:
            return ApiError(400, "Provider returned error",
                            metadata={"raw": "Unable to process input image. Please retry or report in "
                                             "https://developers.generativeai.google/guide/troubleshooting",
                                      "provider_name": "Google"})
        return ApiError(status, message, param=ref.param, code=code)


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- responses: JSON and faults ---------------------------------------------------------------------

def json_response(payload: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    return web.Response(body=json.dumps(payload).encode("utf-8"), status=status,
                        content_type="application/json", headers=headers)


def error_response(call_or_vendor: Union["Call", str], err: ApiError) -> web.Response:
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
            _hang_up(call.request, graceful=True)
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


def _hang_up(request: web.Request, graceful: bool) -> None:
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


def _fault_response(call: Call, fault: Fault, model: Optional[str], token: Optional[str]) -> web.Response:
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
            headers.setdefault("x-ratelimit-reset-requests", F._retry_hint(fault))
    call.entry["error"] = body["error"]["message"]
    return json_response(body, status, headers)


# -- auth ---------------------------------------------------------------------------------------------

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


# -- body reading -----------------------------------------------------------------------------------

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


# -- the endpoints ---------------------------------------------------------------------------------

Handler = Callable[[Call, Body], Awaitable[web.StreamResponse]]
StreamHandler = Callable[[Call, Dict[str, Any]], Awaitable[web.StreamResponse]]

#: api name ("openai_images", "openai_edits", "openai_responses", "openrouter_chat") -> SSE handler
STREAM_HANDLERS: Dict[str, StreamHandler] = {}


def register_stream_handler(api: str, handler: StreamHandler) -> None:
    """Install the SSE answer for ``"stream": true`` requests of one API."""
    STREAM_HANDLERS[api] = handler


async def _stream(call: Call, params: Dict[str, Any]) -> web.StreamResponse:
    handler = STREAM_HANDLERS.get(call.api)
    if handler is None:
        raise ApiError(400, "streaming is not supported by this emulator yet", param="stream",
                       code="unsupported_value")
    return await handler(call, params)


def _summary(call: Call, body: Body) -> None:
    """Put the request's interesting fields (no secrets) into the log entry."""
    e = call.entry
    src: Dict[str, Any] = body.json if isinstance(body.json, dict) else dict(body.fields)
    e["body_keys"] = sorted(src.keys()) + sorted({f[0] for f in body.files})
    model = src.get("model")
    e["model"] = model if isinstance(model, str) else None
    for key in ("n", "size", "quality", "output_format", "background", "response_format", "stream"):
        if key in src:
            e[key] = src[key]
    prompt = src.get("prompt")
    images = len(body.files)
    if call.api == "openrouter_chat":
        cfg = src.get("image_config")
        if isinstance(cfg, dict):
            e["aspect_ratio"] = cfg.get("aspect_ratio")
            e["image_size"] = cfg.get("image_size")
        e["modalities"] = src.get("modalities")
        prompt, images = _chat_text(src.get("messages"))
    elif call.api == "openai_responses":
        prompt, images = _responses_text(src.get("input"))
        tools = src.get("tools")
        if isinstance(tools, list):
            for t in tools:
                if isinstance(t, dict) and t.get("type") == "image_generation":
                    e["tool"] = {k: v for k, v in t.items() if k != "input_image_mask"}
    elif call.api == "openai_edits" and isinstance(src.get("images"), list):
        images = len(src["images"])
    secret = bearer_token(call.request)
    e["prompt"] = _scrub(prompt[:500], secret) if isinstance(prompt, str) else None
    if "tool" in e:
        e["tool"] = _scrub(e["tool"], secret)
    e["input_images"] = images


def _chat_text(messages: Any) -> Tuple[Optional[str], int]:
    texts, images = [], 0
    if isinstance(messages, list):
        for m in messages:
            if not isinstance(m, dict) or m.get("role") != "user":
                continue
            c = m.get("content")
            if isinstance(c, str):
                texts.append(c)
            elif isinstance(c, list):
                for p in c:
                    if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                        texts.append(p["text"])
                    elif isinstance(p, dict) and p.get("type") == "image_url":
                        images += 1
    return ("\n".join(texts) if texts else None), images


def _responses_text(inp: Any) -> Tuple[Optional[str], int]:
    if isinstance(inp, str):
        return inp, 0
    texts, images = [], 0
    if isinstance(inp, list):
        for m in inp:
            if not isinstance(m, dict):
                continue
            c = m.get("content")
            if isinstance(c, str) and m.get("role") == "user":
                texts.append(c)
            elif isinstance(c, list):
                for p in c:
                    if isinstance(p, dict) and p.get("type") == "input_text" and isinstance(p.get("text"), str):
                        texts.append(p["text"])
                    elif isinstance(p, dict) and p.get("type") == "input_image":
                        images += 1
    return ("\n".join(texts) if texts else None), images


def _explicit_fault(request: web.Request) -> Optional[Fault]:
    spec = request.headers.get(FAULT_HEADER) or request.query.get(FAULT_QUERY)
    return parse_fault(spec) if spec else None


def _api_endpoint(api: str, vendor: str, reader: Callable[[web.Request, str], Awaitable[Body]],
                  handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def endpoint(request: web.Request) -> web.StreamResponse:
        state: EmulatorState = request.app[STATE_KEY]
        entry: Dict[str, Any] = {
            "time": time.time(), "method": request.method, "path": request.path, "api": api,
            "fault": None, "status": None, "model": None, "prompt": None, "input_images": 0,
            "auth": None, "error": None,
            "content_type": request.headers.get("Content-Type"),
            "headers": {k: v for k, v in request.headers.items() if _loggable_header(k)},
        }
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
                entry[k] = _scrub(entry.get(k), secret)
        entry["status"] = None if entry.get("outcome") == "reset" else resp.status
        entry["elapsed"] = round(time.perf_counter() - started, 4)
        return resp

    return endpoint


async def _run(call: Call, reader, handler: Handler) -> web.StreamResponse:
    request, state, fault = call.request, call.state, call.fault
    body = await reader(request, call.vendor)
    _summary(call, body)
    if state.latency > 0:
        await asyncio.sleep(state.latency)
    if fault is not None and fault.is_pre:
        if fault.name == "slow_headers":
            await asyncio.sleep(fault.number("delay", 2.0))
        elif fault.name == "reset":
            call.entry["outcome"] = "reset"
            _hang_up(request, graceful=False)
            return web.Response(status=500)  # never reaches the client: the connection is gone
        else:
            return _fault_response(call, fault, call.entry.get("model"), bearer_token(request))
    err = check_auth(call)
    if err is not None:
        return error_response(call, err)
    if body.error is not None:
        return error_response(call, body.error)
    return await handler(call, body)


# -- OpenAI images ---------------------------------------------------------------------------------

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


def _image_specs(call: Call, p: Dict[str, Any], inputs: List[bytes] = (), mask: Optional[bytes] = None
                 ) -> List[RenderSpec]:
    return [RenderSpec(prompt=p["prompt"], width=p["width"], height=p["height"], fmt=p["output_format"],
                       background=p["background"], index=i, count=p["n"], variant=call.state.next_variant(),
                       compression=p.get("output_compression"), model=p["model"], inputs=inputs, mask=mask)
            for i in range(p["n"])]


async def _answer_images(call: Call, p: Dict[str, Any], inputs: List[bytes] = (),
                         mask: Optional[bytes] = None) -> web.StreamResponse:
    if p["stream"]:
        p["input_data"], p["mask_data"] = list(inputs), mask   # for the SSE handler's drawing
        return await _stream(call, p)
    if call.fault_name == "no_image":
        gens: List[Generated] = []
    else:
        gens = await call.draw(_image_specs(call, p, inputs, mask))
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
    refs: List[ImageRef] = []
    mask_ref: Optional[ImageRef] = None
    if body.form:
        fields: Dict[str, Any] = dict(body.fields)
        for name, data, ctype, filename in body.files:
            if name in ("image", "image[]"):
                refs.append(ImageRef(name, data=data, declared_mime=ctype, filename=filename))
            elif name == "mask":
                mask_ref = ImageRef("mask", data=data, declared_mime=ctype, filename=filename)
            else:
                from .validate import unknown_parameter
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
                from .validate import invalid_type
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


def _json_image_ref(r: Any, param: str) -> ImageRef:
    from .validate import invalid_type, missing_parameter
    if not isinstance(r, dict):
        raise invalid_type(param, "an object", r)
    for key in r:
        if key not in ("image_url", "file_id"):
            from .validate import unknown_parameter
            raise unknown_parameter(f"{param}.{key}")
    if isinstance(r.get("image_url"), str):
        return ImageRef(f"{param}.image_url", url=r["image_url"])
    if isinstance(r.get("file_id"), str):
        return ImageRef(f"{param}.file_id", file_id=r["file_id"])
    raise missing_parameter(f"{param}.image_url")


def _check_upload(ref: ImageRef, k: int, model: str) -> None:
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


# -- OpenRouter chat ---------------------------------------------------------------------------------

def chat_payload(call: Call, p: Dict[str, Any], gens: List[Generated], text: str) -> Dict[str, Any]:
    """An OpenRouter chat.completion with the images in ``message.images``."""
    images = []
    for i, g in enumerate(gens):
        url = call.file_url(g) if call.fault_name == "url" else f"data:{g.mime};base64,{g.b64}"
        images.append({"type": "image_url", "image_url": {"url": url}, "index": i})
    message: Dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "reasoning": None}
    if images:
        message["images"] = images
    prompt_tokens = max(1, len(p["prompt"].split()) * 4 // 3) + 258 * len(p["images"])
    completion_tokens = 1290 * len(gens) + max(1, len(text.split()))
    return {
        "id": f"gen-{int(time.time())}-{secrets.token_urlsafe(15)[:20]}",
        "provider": "Google", "model": p["model"], "object": "chat.completion", "created": int(time.time()),
        "system_fingerprint": None,
        "choices": [{"logprobs": None, "finish_reason": "stop", "native_finish_reason": "STOP", "index": 0,
                     "message": message}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "cost": round(0.039 * len(gens) + 0.0000003 * prompt_tokens, 6),
                  "completion_tokens_details": {"reasoning_tokens": 0, "image_tokens": 1290 * len(gens)}},
    }


def _short(prompt: str, limit: int = 120) -> str:
    s = " ".join(prompt.split())
    return s if len(s) <= limit else s[: limit - 1].rstrip() + "\u2026"


async def chat_plan(call: Call, p: Dict[str, Any]) -> Tuple[List[RenderSpec], str]:
    """What a chat call draws and says (input images resolved): shared by the JSON and SSE answers."""
    inputs = [await call.resolve_image(r) for r in p["images"]]
    subject = _short(p["prompt"]) or "your request"
    if not p["draw"]:
        return [], f"(text only — add \"image\" to modalities for a picture) A short description of {subject}."
    if call.fault_name == "no_image":
        return [], "I can't draw that."
    w, h = aspect_ratio_size(p["aspect_ratio"], p["image_size"])
    seed = p["seed"]
    spec = RenderSpec(prompt=p["prompt"], width=w, height=h, fmt=p["output_format"],
                      index=0, variant=call.state.next_variant() if seed is None else f"seed:{seed}",
                      model=p["model"], inputs=inputs)
    text = f"Here is an image of {subject}." if not inputs else f"Here is the edited image: {subject}."
    return [spec], text


async def handle_chat(call: Call, body: Body) -> web.StreamResponse:
    p = validate_chat(body.json)
    if p["stream"]:
        return await _stream(call, p)
    specs, text = await chat_plan(call, p)
    gens = await call.draw(specs) if specs else []
    payload = chat_payload(call, p, gens, text)
    first = gens[0].b64 if gens and call.fault_name != "url" else None
    return await send_payload(call, payload, first)


# -- OpenAI Responses ------------------------------------------------------------------------------

def responses_payload(call: Call, p: Dict[str, Any], gens: List[Generated], text: str) -> Dict[str, Any]:
    """A completed Response: an ``image_generation_call`` per image, then the assistant message."""
    created = int(time.time())
    output: List[Dict[str, Any]] = []
    for g in gens:
        output.append({"id": "ig_" + secrets.token_hex(24), "type": "image_generation_call",
                       "status": "completed", "action": p.get("action", "generate"),
                       "background": p["resolved_background"], "output_format": p["output_format"],
                       "quality": p["resolved_quality"], "size": f"{g.width}x{g.height}",
                       "result": g.b64, "revised_prompt": g.revised_prompt})
    output.append({"id": "msg_" + secrets.token_hex(24), "type": "message", "status": "completed",
                   "role": "assistant",
                   "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": text}]})
    in_tokens = max(1, len(p["prompt"].split()) * 4 // 3) + 85 * len(p["images"]) + 250
    out_tokens = max(1, len(text.split()) * 4 // 3) + 30
    tools = []
    for t in p["tools"]:
        if isinstance(t, dict) and t.get("type") == "image_generation":
            t = {"type": "image_generation", "background": "auto", "model": "gpt-image-1",
                 "moderation": "auto", "output_compression": 100, "output_format": "png",
                 "partial_images": 0, "quality": "auto", "size": "auto", **t}
        tools.append(t)
    rid = "resp_" + secrets.token_hex(24)
    return {
        "id": rid, "object": "response", "created_at": created, "status": "completed",
        "background": False, "error": None, "incomplete_details": None, "instructions": p["instructions"],
        "max_output_tokens": None, "model": p["model"], "output": output, "parallel_tool_calls": True,
        "previous_response_id": p["previous_response_id"], "reasoning": {"effort": None, "summary": None},
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": p["tool_choice"], "tools": tools, "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": in_tokens, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "output_tokens": out_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": in_tokens + out_tokens},
        "user": None, "metadata": {},
    }


async def responses_plan(call: Call, p: Dict[str, Any]) -> Tuple[List[RenderSpec], str, Optional[str]]:
    """What a /responses call draws, says and revises the prompt to (inputs resolved; ``p`` gets the
    resolved output fields): shared by the JSON and SSE answers."""
    subject = _short(p["prompt"]) or "your request"
    if not p["draw"]:
        p.setdefault("resolved_background", "opaque")
        p.setdefault("output_format", "png")
        p.setdefault("resolved_quality", "high")
        return [], f"(text only — no image_generation tool was enabled) A short description of {subject}.", None
    if call.fault_name == "no_image":
        return [], "I can't help with generating that image.", None
    inputs = [await call.resolve_image(r) for r in p["images"]]
    mask = await call.resolve_image(p["mask"]) if p.get("mask") is not None else None
    if mask is not None and inputs and open_image(mask).size != open_image(inputs[0]).size:
        mask = None
    auto = (1024, 1024)
    if inputs:
        fw, fh = open_image(inputs[0]).size
        auto = (1536, 1024) if fw > fh * 1.2 else (1024, 1536) if fh > fw * 1.2 else (1024, 1024)
    w, h, _ = resolve_size(p["size_param"], p["tool_model"], param="tools[0].size", auto=auto)
    spec = RenderSpec(prompt=p["prompt"] or "(no prompt)", width=w, height=h, fmt=p["output_format"],
                      background=p["resolved_background"], index=0, variant=call.state.next_variant(),
                      compression=p["output_compression"], model=p["tool_model"], inputs=inputs, mask=mask)
    revised = f"{p['prompt'] or 'An image'}, rendered as a bold flat illustration."
    text = f"Here is the image of {subject}." if not inputs else f"Here is the edited image: {subject}."
    return [spec], text, revised


async def handle_responses(call: Call, body: Body) -> web.StreamResponse:
    p = validate_responses(body.json)
    prev = p["previous_response_id"]
    if prev is not None and not call.state.has_response(prev):
        raise ApiError(400, f"Previous response with id '{prev}' not found.", param="previous_response_id",
                       code="previous_response_not_found")
    if p["stream"]:
        return await _stream(call, p)
    specs, text, revised = await responses_plan(call, p)
    gens = await call.draw(specs) if specs else []
    for g in gens:
        g.revised_prompt = revised
    payload = responses_payload(call, p, gens, text)
    call.state.remember_response(payload["id"])
    return await send_payload(call, payload, gens[0].b64 if gens else None)


# -- emulator control and files ----------------------------------------------------------------------

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
    if importlib.util.find_spec(__package__ + ".streaming") is not None:
        importlib.import_module(__package__ + ".streaming")  # registers SSE handlers
    state = state if state is not None else EmulatorState(**state_kwargs)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_not_found_json])
    app[STATE_KEY] = state
    for path, api, vendor, reader, handler in APIS:
        endpoint = _api_endpoint(api, vendor, reader, handler)
        for prefix in PREFIXES:
            app.router.add_post(prefix + path, endpoint)
    app.router.add_get("/_emulator/health", health)
    app.router.add_get("/_emulator/requests", list_requests)
    app.router.add_post("/_emulator/reset", reset)
    app.router.add_route("*", "/_emulator/faults", faults_endpoint)
    app.router.add_get("/files/{name}", get_file)
    return app
