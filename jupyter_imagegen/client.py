"""ImageClient: one aiohttp session, retries with backoff and Retry-After, events, fan-out, cancel.

Providers (one per wire format) build the HTTP call and parse the answer; everything that
touches the network or time lives here.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from . import events as ev
from . import loop_thread
from . import netguard
from .config import DEFAULT_MODELS, SUGGESTED_MODELS, ImageConfig, safe_url, validate_api_type, validate_base_url
from .secret import Secret, auth_header, mask_token, scrubber_for
from .errors import (APIConnectionError, APITimeoutError, ContentPolicyError, ImageAPIError, ImageRetryableError,
                     MissingTokenError, NoImageError, RequestError, api_error_for)
from .events import Event, EventCallback
from .cache import RequestCache, request_key
from .providers import get_provider
from .providers.base import (AnswerTooDeep, HttpCall, ImageRef, Parsed, Provider, Resolved, StreamBroken, StreamState,
                             error_message_from_body, load_json_answer)
from .sse import SSEError, SSEParser
from .retry import is_retryable_status, next_delay, parse_retry_after
from .model import Artifact, ImageRequest, ImageResponse, InputImage, Usage, sniff_mime

log = logging.getLogger("jupyter_imagegen")

USER_AGENT = "jupyter-imagegen/0.1"


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


@dataclass
class _CallOutcome:
    index: int
    parsed: Optional[Parsed] = None
    artifacts: List[Artifact] = field(default_factory=list)
    error: Optional[ImageAPIError] = None
    attempts: int = 0


class ImageClient:
    """Async client for the three image wire formats.

    >>> async with ImageClient(ImageConfig.from_env()) as client:
    ...     resp = await client.generate(ImageRequest("a lighthouse at dusk"))
    """

    def __init__(self, config: Optional[ImageConfig] = None, *, on_event: Optional[EventCallback] = None,
                 session: Optional[aiohttp.ClientSession] = None, cache: Any = None):
        self.config = config if config is not None else ImageConfig.from_env()
        if cache is None:
            cache = self.config.cache
        if cache is True:
            cache = RequestCache(self.config.cache_dir, self.config.cache_max_bytes)
        self.cache: Optional[RequestCache] = cache or None
        self._on_event = on_event
        #: the session used last (a caller's own `session=`, or the one this client made)
        self._session = session
        self._own_session = session is None
        #: the sessions this client made, one per event loop it was used on (a session cannot
        #: cross loops: the kernel's blocking calls run on the background loop, `await` on yours)
        self._sessions: Dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        #: the sessions for image downloads while the API is public (connections to public
        #: addresses only: netguard), one per event loop, made by this client even with `session=`
        self._downloads: Dict[asyncio.AbstractEventLoop, netguard.DownloadSession] = {}

    def __repr__(self) -> str:
        c = self.config
        return (f"<ImageClient {c.api_type} {c.effective_base_url} model={c.effective_model} "
                f"token={c.masked_token}>")

    # -- session lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> "ImageClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _get_session(self) -> aiohttp.ClientSession:
        if not self._own_session:
            return self._session
        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            for other, old in list(self._sessions.items()):
                if other.is_closed():   # a finished loop: nothing can run there; let go quietly
                    del self._sessions[other]
                    old.detach()
            # the pool is not the fan-out limit: independent requests (compare grids, a user's
            # gather) each get a connection up to max_connections per host
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.config.max_connections,
                                             enable_cleanup_closed=False)
            session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": USER_AGENT},
                                            trust_env=False)
            self._sessions[loop] = session
        self._session = session
        return session

    def _get_download_session(self) -> aiohttp.ClientSession:
        """The session that fetches image URLs while the API is public: it connects only to
        public addresses (netguard.DownloadSession); a caller's `session=` is not used for it."""
        loop = asyncio.get_running_loop()
        guarded = self._downloads.get(loop)
        if guarded is None or guarded.session.closed:
            for other, old in list(self._downloads.items()):
                if other.is_closed():
                    del self._downloads[other]
                    old.session.detach()
            guarded = netguard.DownloadSession(limit_per_host=self.config.max_connections,
                                               headers={"User-Agent": USER_AGENT})
            self._downloads[loop] = guarded
        return guarded.session

    async def close(self) -> None:
        """Close the HTTP sessions (idempotent), from any event loop: a session made on another
        loop that still runs (the background loop of blocking calls) is closed there."""
        sessions, self._sessions = self._sessions, {}
        downloads, self._downloads = self._downloads, {}
        if self._own_session:
            self._session = None
        current = asyncio.get_running_loop()
        closing = [(loop, s, s.close) for loop, s in sessions.items()]
        closing += [(loop, d.session, d.close) for loop, d in downloads.items()]
        for loop, session, close in closing:
            if session.closed:
                continue
            if loop is current:
                await close()
            elif loop.is_running():
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close(), loop))
            else:  # its loop is gone or stopped: nothing can be awaited there
                session.detach()

    def close_sync(self) -> None:
        """Close from synchronous code (scripts, atexit)."""
        open_ = [s for s in self._sessions.values() if not s.closed]
        open_ += [d.session for d in self._downloads.values() if not d.session.closed]
        if not open_:
            self._sessions.clear()
            self._downloads.clear()
            if self._own_session:
                self._session = None
            return
        loop_thread.shared().call(self.close(), timeout=5)

    # -- request resolution ---------------------------------------------------------------------
    def resolve(self, request: ImageRequest) -> Tuple[Resolved, Provider]:
        """Fold the configuration into a request and validate it. Raises RequestError/ConfigError."""
        if not isinstance(request, ImageRequest):
            raise TypeError(f"generate() takes an ImageRequest, not {type(request).__name__}")
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise RequestError("the prompt is empty: write what the image should show")
        _check_types(request)
        cfg = self.config
        api_type = validate_api_type(request.api_type, "api_type") if request.api_type else cfg.api_type
        base = cfg.base_url_for(api_type, validate_base_url(request.base_url, "base_url") if request.base_url else None)
        model = request.model or (cfg.model if api_type == cfg.api_type and cfg.model else DEFAULT_MODELS[api_type])
        inputs = [InputImage.from_any(v, label=f"input image {i + 1}") for i, v in enumerate(request.images or [])]
        mask = InputImage.from_any(request.mask, label="mask") if request.mask is not None else None
        resolved = Resolved(request=request, api_type=api_type, base_url=base, model=model, inputs=inputs, mask=mask)
        provider = get_provider(api_type)
        provider.validate(resolved)
        t = request.timeout
        if t is not None and (not isinstance(t, (int, float)) or isinstance(t, bool) or not 0 < t <= MAX_TIMEOUT):
            raise RequestError(f"timeout={t!r} must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}")
        m = request.max_attempts
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= MAX_ATTEMPTS):
            raise RequestError(f"max_attempts={m!r} must be a whole number from 1 to {MAX_ATTEMPTS}")
        return resolved, provider

    def _token(self, request: ImageRequest) -> Tuple[Secret, str]:
        """The key for `request` (a Secret: masked wherever it is shown) and its hint."""
        token = request.token or self.config.token
        if not token:
            raise MissingTokenError(self.config.token_source)
        hint = (f"token {mask_token(token)} (passed with the request)" if request.token
                else self.config.auth_hint)
        return token, hint

    # -- events ---------------------------------------------------------------------------------
    async def _emit(self, callbacks: List[EventCallback], type_: str, request_id: str, **data: Any) -> None:
        if not callbacks:  # nobody listens: no Event to build (the hot path of scripts and benchmarks)
            return
        event = Event(type_, request_id, data)
        for cb in callbacks:
            try:
                result = cb(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken display must not break the request
                log.warning("event callback failed for %s", type_, exc_info=True)

    # -- public API -----------------------------------------------------------------------------
    async def generate(self, request: ImageRequest, *, on_event: Optional[EventCallback] = None) -> ImageResponse:
        """Generate images. API failures come back as `success=False`; bad input raises RequestError."""
        resolved, provider = self.resolve(request)
        callbacks = [cb for cb in (self._on_event, on_event) if cb is not None]
        rid = request.request_id
        use_cache = self.cache is not None and request.cache is not False
        key = request_key(resolved) if use_cache else None
        call = provider.build(resolved)  # once: every fan-out call and retry sends the same request
        # what the API cannot take as asked: said in the log, kept in the response and the history
        replaced = provider.replacements(resolved)
        notices = [rep.notice for rep in replaced]
        sent = {rep.sent: rep.sent_value for rep in replaced}
        # the keys this call may carry (its own, or the configured one): scrubbed from all it shows
        scrub = _Scrubber(request.token, self.config.token)
        api_url = scrub.thorough(call.url)   # as events show it
        if use_cache and not request.fresh:
            # read and checked in a worker thread: every cached image is decoded, as an answer is
            hit = await asyncio.get_running_loop().run_in_executor(
                None, self.cache.response, key, resolved, rid, api_url,
                self.config.auth_hint if not request.token else None)
            if hit is not None:  # no token needed: nothing is sent
                scrub.response(hit)
                hit.notices, hit.sent = notices, sent
                await self._emit(callbacks, ev.GENERATION_STARTED, rid, api_type=resolved.api_type,
                                 model=resolved.model, api_url=hit.api_url, n=request.n, calls=0,
                                 prompt=request.prompt, **({"notices": notices} if notices else {}))
                await self._emit(callbacks, ev.CACHE_HIT, rid, artifact_count=len(hit.artifacts), key=key[:12])
                await self._emit(callbacks, ev.GENERATION_COMPLETED, rid, artifact_count=len(hit.artifacts),
                                 elapsed=0.0, attempts=0, failed=0, api_url=hit.api_url, from_cache=True)
                return hit
        token, auth_hint = self._token(request)
        max_attempts = request.max_attempts or self.config.max_attempts
        timeout = float(request.timeout or self.config.timeout)
        calls = provider.calls_needed(resolved)
        t0 = time.monotonic()
        if callbacks:   # (each emit builds its fields: not on the hot path of scripts and benchmarks)
            await self._emit(callbacks, ev.GENERATION_STARTED, rid, api_type=resolved.api_type, model=resolved.model,
                             api_url=api_url, n=request.n, calls=calls, prompt=request.prompt,
                             **({"notices": notices} if notices else {}))
        ctx = _CallContext(self, provider, resolved, call, token, callbacks, rid, max_attempts, timeout, scrub,
                           fanout=calls > 1, shown_url=api_url)
        try:
            if calls == 1:
                outcomes = [await ctx.run(0)]
            else:
                sem = asyncio.Semaphore(self.config.max_concurrency)

                async def limited(i: int) -> _CallOutcome:
                    async with sem:
                        return await ctx.run(i)

                outcomes = list(await asyncio.gather(*(limited(i) for i in range(calls))))
        except asyncio.CancelledError:
            await asyncio.shield(self._emit(callbacks, ev.GENERATION_FAILED, rid, error="cancelled",
                                            api_url=api_url, auth_hint=auth_hint, status_code=None,
                                            cancelled=True))
            raise
        resp = self._assemble(resolved, outcomes, rid, api_url, auth_hint, time.monotonic() - t0)
        resp.notices, resp.sent = notices, sent
        if use_cache and resp.success and not resp.errors:
            try:
                await asyncio.get_running_loop().run_in_executor(None, self.cache.put, key, resp)
            except OSError as e:  # a full or read-only disk must not lose the images we have
                log.warning("could not write the request cache: %s", e)
        if not callbacks:
            pass
        elif resp.success:
            await self._emit(callbacks, ev.GENERATION_COMPLETED, rid, artifact_count=len(resp.artifacts),
                             elapsed=resp.elapsed, attempts=resp.attempts, failed=len(resp.errors),
                             api_url=api_url)
        else:
            await self._emit(callbacks, ev.GENERATION_FAILED, rid, error=resp.error, api_url=api_url,
                             auth_hint=auth_hint, status_code=resp.status_code)
        return resp

    def generate_sync(self, request: ImageRequest, *, on_event: Optional[EventCallback] = None) -> ImageResponse:
        """Blocking `generate` for scripts and cells. The call runs on the process's background
        loop thread, never inside an event loop the caller is running (a kernel's, a web
        framework's); `on_event` is called on the calling thread. Ctrl-C cancels the call and
        raises `GenerationCancelled`."""
        def make(post):
            relay = None if on_event is None else (lambda event: post(on_event, event))
            return self.generate(request, on_event=relay)
        return loop_thread.shared().run(make)

    # -- result assembly ------------------------------------------------------------------------
    def _assemble(self, r: Resolved, outcomes: List[_CallOutcome], rid: str, api_url: str, auth_hint: str,
                  elapsed: float) -> ImageResponse:
        artifacts: List[Artifact] = []
        texts: List[str] = []
        usage: Optional[Usage] = None
        revised = None
        errors: List[str] = []
        last_error: Optional[ImageAPIError] = None
        for o in sorted(outcomes, key=lambda o: o.index):
            if o.error is not None:
                last_error = o.error
                errors.append(f"image {o.index + 1}: {o.error.message}" if len(outcomes) > 1 else o.error.message)
                continue
            for a in o.artifacts:
                a.index = len(artifacts)
                artifacts.append(a)
            p = o.parsed
            if p is not None:
                if p.text and p.text not in texts:
                    texts.append(p.text)
                revised = revised or p.revised_prompt
                if p.usage is not None:
                    usage = p.usage if usage is None else usage + p.usage
        attempts = sum(o.attempts for o in outcomes)
        resp = ImageResponse(request_id=rid, success=bool(artifacts), artifacts=artifacts,
                             text="\n".join(texts) or None, revised_prompt=revised, usage=usage,
                             api_url=api_url, auth_hint=auth_hint, elapsed=elapsed, attempts=attempts,
                             model=r.model, api_type=r.api_type, request=r.request, errors=errors)
        if errors:
            if artifacts:
                resp.error = f"{len(errors)} of {len(outcomes)} calls failed: " + "; ".join(errors)
            else:
                resp.error = errors[0] if len(errors) == 1 else f"all {len(errors)} calls failed: " + "; ".join(errors)
            if last_error is not None:
                resp.status_code = last_error.status
                resp.exception = last_error
                resp.suggestions = suggestions_for(last_error, r, auth_hint, self.config)
        return resp


#: the longest timeout and the most attempts one request may ask for (a request rebuilt from a
#: file someone sent must not be able to wait, or retry, for ever)
MAX_TIMEOUT = 3600.0
MAX_ATTEMPTS = 20

#: ImageRequest fields that must be text (or None) when set
_TEXT_FIELDS = ("model", "api_type", "base_url", "size", "aspect_ratio", "quality", "output_format", "background")


def _check_types(request: ImageRequest) -> None:
    """A RequestError naming the field when a request field has a type nothing can send (rather
    than an AttributeError from deep inside a provider)."""
    for name in _TEXT_FIELDS:
        value = getattr(request, name)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"{name}={value!r} must be text, not {type(value).__name__}")
    if request.seed is not None and (not isinstance(request.seed, int) or isinstance(request.seed, bool)):
        raise RequestError(f"seed={request.seed!r} must be a whole number")
    if not isinstance(request.params, dict) or _non_text_keys(request.params):
        bad = _non_text_keys(request.params) if isinstance(request.params, dict) else []
        raise RequestError("params must be a dict of extra body fields named by text"
                           + (f"; these names are not text: {', '.join(bad[:3])}" if bad
                              else f", not {type(request.params).__name__}"))
    if not isinstance(request.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in request.headers.items()):
        raise RequestError(f"headers must be a dict of text names and text values, not {_shape(request.headers)}")
    if not isinstance(request.stream, bool):
        raise RequestError(f"stream={request.stream!r} must be True or False")


def _non_text_keys(value: Any) -> List[str]:
    """The names in `value` (params, at any depth) that are not text: a JSON body cannot have
    them (and the cache key could not be computed)."""
    bad, stack = [], [value]
    while stack and len(bad) < 3:
        item = stack.pop()
        if isinstance(item, dict):
            bad += [repr(k) for k in item if not isinstance(k, str)]
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return bad[:3]


def _shape(value: Any) -> str:
    """What is not text in a dict of headers (for the error message)."""
    if isinstance(value, dict):
        bad = [f"{k!r}: {type(v).__name__}" for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
        return "a dict with " + ", ".join(bad[:3])
    return type(value).__name__


class _Scrubber:
    """Replaces the key (as is, percent-encoded, `\\u`-escaped, as HTML entities) wherever a server,
    or a library, echoes it back. Answers are scrubbed where they come in, before anything reads
    or cuts them (a key cut short is no longer recognisable): the decoded JSON of a body, the text
    of each stream event, an error body, a cached entry read back."""

    def __init__(self, *tokens: Optional[Secret]):
        self.tokens = [t for t in tokens if t]
        self._scrub = scrubber_for(*self.tokens)

    def __call__(self, text: Optional[str]) -> str:
        """The fast pass (the key as is), for an answer's strings of any size as they come in."""
        if not text:
            return text or ""
        return self._scrub(text)

    def thorough(self, text: Optional[str]) -> str:
        """The thorough pass (any spelling, any case, any piece; see config.SecretScrubber), for
        the texts that are shown or stored: messages, the model's text, usage, URLs."""
        if not text:
            return text or ""
        return self._scrub.thorough(text)

    def may_hold(self, body: bytes) -> bool:
        """Whether a raw JSON body can hold the key once decoded (see SecretScrubber.may_hold)."""
        return self._scrub.may_hold(body)

    def carries(self, text: str) -> bool:
        """Whether `text` (a URL) holds the key or a piece of it, however spelled."""
        return self._scrub.found(text)

    def value(self, value: Any, *, thorough: bool = False) -> Any:
        """`value` (decoded JSON, fresh from json.loads) scrubbed in place: see SecretScrubber.walk."""
        return self._scrub.walk(value, thorough=thorough)

    def bytes(self, body: bytes) -> bytes:
        """The same for a raw (error) body, as UTF-8 text."""
        if not body or not self.tokens:
            return body
        text = body.decode("utf-8", "replace")
        clean = self(text)
        return body if clean == text else clean.encode("utf-8")

    def response(self, resp: ImageResponse) -> ImageResponse:
        """A response read back from the cache, scrubbed like an answer (an entry written by an
        older version, or by another program, may hold the key)."""
        resp.text = self.thorough(resp.text) or None
        resp.revised_prompt = self.thorough(resp.revised_prompt) or None
        resp.model = self.thorough(resp.model) or None
        if resp.usage is not None and resp.usage.raw:
            resp.usage = Usage.from_api(self.value(resp.usage.raw, thorough=True))
        for art in resp.artifacts:
            art.revised_prompt = self.thorough(art.revised_prompt) or None
        return resp


class _CallContext:
    """Everything one HTTP call (with its retries) needs; `run(index)` is one call of a fan-out."""

    def __init__(self, client: ImageClient, provider: Provider, r: Resolved, call: HttpCall, token: Secret,
                 callbacks: List[EventCallback], rid: str, max_attempts: int, timeout: float,
                 scrub: _Scrubber, fanout: bool, shown_url: str):
        self.client, self.provider, self.r, self.call, self.token = client, provider, r, call, token
        self.callbacks, self.rid, self.max_attempts, self.timeout = callbacks, rid, max_attempts, timeout
        self.scrub, self.fanout = scrub, fanout
        self.cfg = client.config
        #: whether the API is on a loopback/private address (then image URLs may be too): asked once
        self._api_private: Optional[bool] = None
        #: the API URL as events and errors show it (a base URL may carry the key in its path)
        self.shown_url = shown_url
        # sock_connect, not connect: `connect` wraps every pool checkout in a timeout context (a
        # cost on each request, even on a kept-alive connection); the socket connect is what we bound
        self.http_timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=self.cfg.connect_timeout)

    async def run(self, index: int) -> _CallOutcome:
        out = _CallOutcome(index)
        call = self.call
        for attempt in range(1, self.max_attempts + 1):
            out.attempts = attempt
            if self.callbacks:
                await self.client._emit(self.callbacks, ev.API_CALL, self.rid, attempt=attempt,
                                        max_attempts=self.max_attempts, api_url=self.shown_url, index=index,
                                        fanout=self.fanout)
            try:
                out.parsed = self._scrub_parsed(await self._attempt(call, index))
                out.artifacts = await self._materialise(out.parsed, call.url, index)
                return out
            except ImageRetryableError as e:
                self._scrub_error(e)
                if attempt >= self.max_attempts:
                    e.message = (f"gave up after {attempt} attempt{'s' if attempt > 1 else ''}: {e.message}"
                                 if attempt > 1 else e.message)
                    out.error = _detached(e)
                    return out
                delay = next_delay(attempt, e.retry_after, base=self.cfg.backoff_base,
                                   maximum=self.cfg.backoff_max, retry_after_max=self.cfg.retry_after_max)
                await self.client._emit(self.callbacks, ev.API_RETRY, self.rid, attempt=attempt,
                                        status_code=e.status, delay=delay, reason=e.message,
                                        retry_after=e.retry_after, index=index, api_url=self.shown_url)
                await asyncio.sleep(delay)
            except ImageAPIError as e:
                self._scrub_error(e)
                out.error = _detached(e)
                return out
            except Exception as e:   # a defect of ours, not an answer: a failed call, never a traceback
                log.debug("unexpected %s in a call to %s:\n%s", type(e).__name__, self.shown_url,
                          self.scrub.thorough("".join(traceback.format_exception(e))))
                out.error = _detached(ImageAPIError(
                    None, f"the call failed unexpectedly ({type(e).__name__}: {self._short(e)}); this is a "
                          "defect of jupyter-imagegen: please report it with the debug log", self.shown_url))
                return out
        return out  # pragma: no cover - the loop always returns

    def _short(self, e: Any) -> str:
        """A library's error text for a message, scrubbed thoroughly (a library may have cut or
        lower-cased the key already: its pieces are found too), then cut."""
        return _short(self.scrub.thorough("" if e is None else str(e)))

    def _scrub_error(self, e: ImageAPIError) -> None:
        """The key out of every text field of an error (a server may echo it in a message, a code
        or the body); `message` also rewrites the exception's args, so its repr is clean too."""
        e.message = self.scrub.thorough(e.message)
        e.api_url = self.scrub.thorough(e.api_url)
        if isinstance(e.code, str):
            e.code = self.scrub.thorough(e.code)
        if isinstance(e.body, str):
            e.body = self.scrub.thorough(e.body)

    def _scrub_parsed(self, parsed: Parsed) -> Parsed:
        """The thorough pass over what an answer gave us to show and keep (the text, revised
        prompts, model name, every string of usage): after the provider assembled them, since
        a stream's text is joined from chunks that were each clean (a key split across two
        chunks is whole again here), and a provider may have cut a text."""
        parsed.text = self.scrub.thorough(parsed.text) or None
        parsed.revised_prompt = self.scrub.thorough(parsed.revised_prompt) or None
        parsed.model = self.scrub.thorough(parsed.model) or None
        if parsed.usage is not None and parsed.usage.raw:
            self.scrub.value(parsed.usage.raw, thorough=True)     # in place: only strings change
        for ref in parsed.images:
            ref.revised_prompt = self.scrub.thorough(ref.revised_prompt) or None
        return parsed

    def _headers(self, call: HttpCall) -> Dict[str, str]:
        accept = "text/event-stream" if call.stream else "application/json"
        headers = {"Authorization": auth_header(self.token), "Accept": accept}
        headers.update(self.r.request.headers or {})
        return headers

    async def _attempt(self, call: HttpCall, index: int) -> Parsed:
        got = await self._receive(call, index)
        if isinstance(got, Parsed):   # a stream, folded as it came
            return got
        status, ctype, retry_after, body = got
        del got   # from here on `body` is the only reference: dropped once parsed (a 4096 px answer is 30 MB)
        if status >= 400 or not (200 <= status < 300):
            clean = self.scrub.bytes(body)   # before anything cuts it
            message, code = error_message_from_body(status, clean, ctype)
            raise api_error_for(status, f"HTTP {status}: {message}", call.url, retry_after=retry_after, code=code,
                                body=clean[:MAX_ERROR_BODY].decode("utf-8", "replace") or None)
        if len(body) > INLINE_PARSE_BYTES:   # JSON and the scrub in a worker thread: the loop stays free
            payload = await asyncio.get_running_loop().run_in_executor(None, self._load, body, status, call.url)
        else:
            payload = self._load(body, status, call.url)
        del body
        return self._parse(payload, call.url, status)

    def _load(self, body: bytes, status: int, url: str) -> Any:
        """The decoded JSON of a 2xx body, scrubbed: a server that echoes the request back (a
        debugging proxy, a chatty model) must not put the key into anything we show, store or
        save, so every string is scrubbed before the provider reads (and may cut) it. Image URLs
        too: one that carried the key is not fetched (_download)."""
        try:
            payload = load_json_answer(body)
        except AnswerTooDeep as e:
            # not retried: a body that deep is no accident of transport (a cut body is invalid
            # JSON, and is retried); the same request would get the same answer, and cost again
            raise NoImageError(status, f"the API's answer is JSON {e.nesting}; not an answer this client "
                                       "understands", url) from None
        except ValueError:
            kind = "an HTML page" if body.lstrip()[:1] == b"<" else "invalid JSON (a truncated body?)"
            raise ImageRetryableError(status, f"the server answered {status} with {kind}", url) from None
        return self.scrub.value(payload) if self.scrub.may_hold(body) else payload

    # -- the boundary to the providers: whatever an answer's shape, only typed errors leave --------
    def _parse(self, payload: Any, api_url: str, status: int) -> Parsed:
        try:
            parsed = self.provider.parse(payload, api_url)
        except ImageAPIError:
            raise
        except Exception as e:
            raise _not_understood(e, status, f"{self.provider.api_type} parse()", api_url) from None
        return _checked(parsed, status, f"{self.provider.api_type} parse()", api_url)

    def _fold(self, state: StreamState, event: Any) -> List[Any]:
        """`state.on_event(event)`: the partial images of one stream event (its text scrubbed of
        the key first, before the provider reads or cuts it)."""
        event.data = self.scrub(event.data)
        event.event = self.scrub(event.event)
        try:
            return list(state.on_event(event))
        except (ImageAPIError, StreamBroken):
            raise
        except Exception as e:
            raise _not_understood(e, 200, f"{self.provider.api_type} stream event", self.call.url) from None

    def _finish(self, state: StreamState) -> Parsed:
        where = f"{self.provider.api_type} stream end"
        try:
            parsed = state.finish()
        except (ImageAPIError, StreamBroken):
            raise
        except Exception as e:
            raise _not_understood(e, 200, where, self.call.url) from None
        return _checked(parsed, 200, where, self.call.url)

    async def _receive(self, call: HttpCall, index: int) -> Union[Parsed, Tuple[int, str, Optional[float], bytes]]:
        """Send `call` once: (status, content type, Retry-After, body), or the Parsed result of a
        stream. Transport failures raise typed errors."""
        session = self.client._get_session()
        kwargs: Dict[str, Any] = {"headers": self._headers(call), "timeout": self.http_timeout}
        if call.form is not None:
            kwargs["data"] = call.form_data()
        else:
            kwargs["json"] = call.json
        cap = self.cfg.max_response_bytes
        try:
            async with session.request(call.method, call.url, **kwargs) as resp:
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
                retry_after = parse_retry_after(resp.headers)
                if call.stream and status == 200 and ctype.startswith("text/event-stream"):
                    return await self._read_stream(resp, call, index)
                if resp.content_length is not None and resp.content_length > cap:
                    raise ImageAPIError(status, f"the response is {_bytes_text(resp.content_length)}, over the "
                                        f"{_bytes_text(cap)} limit; refused", call.url)
                if resp.content_length is not None:
                    body = await resp.read()
                else:
                    buf = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        buf += chunk
                        if len(buf) > cap:
                            raise ImageAPIError(status, f"the response is over the {_bytes_text(cap)} limit; refused",
                                                call.url)
                    body = bytes(buf)
        except asyncio.TimeoutError:
            raise APITimeoutError(None, f"timed out after {self.timeout:g} s waiting for {safe_url(call.url)}",
                                  call.url) from None
        except aiohttp.ClientPayloadError as e:
            raise APIConnectionError(None, f"the connection broke while reading the response ({self._short(e)})",
                                     call.url) from None
        except aiohttp.ClientConnectorError as e:
            raise APIConnectionError(None, f"cannot connect to {e.host}:{e.port} ({self._short(e.os_error) or 'refused'})",
                                     call.url) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionResetError) as e:
            raise APIConnectionError(None, f"the connection was reset ({self._short(e) or type(e).__name__})",
                                     call.url) from None
        except StreamBroken as e:
            cls = APIConnectionError if e.connection_lost else ImageRetryableError
            raise cls(None, f"the stream broke: {e}", call.url) from None
        except aiohttp.ClientError as e:
            raise ImageAPIError(None, f"HTTP client error: {self._short(e)}", call.url) from None
        return status, ctype, retry_after, body

    async def _read_stream(self, resp: aiohttp.ClientResponse, call: HttpCall, index: int) -> Parsed:
        """Fold a server-sent-event stream into partial-image events and the final Parsed result."""
        state = self.provider.stream_state(call.url)
        parser = SSEParser(self.cfg.max_response_bytes)
        partials = 0
        try:
            async for chunk in resp.content.iter_any():
                for event in parser.feed(chunk):
                    for part in self._fold(state, event):
                        partials += 1
                        await self.client._emit(
                            self.callbacks, ev.PARTIAL_IMAGE, self.rid, index=index,
                            partial_index=part.partial_index, artifact=Artifact(part.data, index=index))
            for event in parser.close():
                self._fold(state, event)
        except SSEError as e:
            raise ImageAPIError(200, str(e), call.url) from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionResetError) as e:
            # aiohttp's own text ("TransferEncodingError: 400, message=...") reads like an HTTP 400
            seen = f"after {partials} partial image{'s' if partials != 1 else ''}" if partials else "before any image"
            raise StreamBroken(f"the connection dropped {seen}, before the final image "
                               f"({type(e).__name__})", connection_lost=True) from None
        return self._finish(state)

    async def _materialise(self, parsed: Parsed, api_url: str, index: int) -> List[Artifact]:
        """The parsed images as checked Artifacts (downloaded first when the answer gave URLs).
        The images of one answer are decoded at once (worker threads for large ones), and each
        has its `image_received` event as soon as it decoded, so its preview can start while
        the others still decode."""
        pending = []   # (artifact, what to raise when it does not decode)
        for ref in parsed.images:
            if ref.data is None and ref.url:
                shown = safe_url(ref.url)
                data, mime = await self._download(ref.url)
                art = Artifact(data, mime, revised_prompt=ref.revised_prompt, source_url=shown)
                pending.append((art, lambda problem, shown=shown, url=ref.url: ImageAPIError(
                    None, f"the image at {shown} is unusable: {problem}", url)))
            else:
                if sniff_mime(ref.data or b"") is None:
                    raise NoImageError(200, "the API sent image data that is not a PNG, JPEG, WebP or GIF", api_url)
                art = Artifact(ref.data, ref.mime_type, revised_prompt=ref.revised_prompt)
                ref.data = None    # the artifact holds the bytes now: no second reference
                pending.append((art, lambda problem: NoImageError(
                    200, f"the API sent an unusable image: {problem}", api_url)))

        async def check(art: Artifact, k: int) -> Optional[str]:
            problem = await _decode_problem(art)
            if problem is None and self.callbacks:
                # the image's place in the response: the call's index in a fan-out (one image per
                # call), its place in the answer when one call brings several
                await self.client._emit(self.callbacks, ev.IMAGE_RECEIVED, self.rid, index=index + k, artifact=art)
            return problem

        if len(pending) == 1:    # no task for one image (a task and a loop turn cost ~50 us)
            problems = [await check(pending[0][0], 0)]
        else:
            problems = await asyncio.gather(*(check(art, k) for k, (art, _) in enumerate(pending)))
        for (_, error), problem in zip(pending, problems):
            if problem:
                raise error(problem)
        return [art for art, _ in pending]

    async def _download(self, url: str) -> Tuple[bytes, str]:
        """Fetch a URL result: http(s) only, no credentials sent, size-capped, image content only,
        and only from public addresses unless the API itself is on a loopback or private one
        (netguard: checked on every redirect hop and every address connected to)."""
        shown = safe_url(url)
        if self.scrub.carries(url):   # the answer put the key (or a piece of it) into the URL
            raise ImageAPIError(None, f"refused to download the image from {shown}: the URL carried your key "
                                "(shown masked); it is not sent anywhere", url)
        if _scheme(url) not in ("http", "https"):
            raise ImageAPIError(None, f"refusing to download an image from {shown}: only http(s) URLs "
                                "(and a valid one)", url)
        cap = self.cfg.max_download_bytes
        if self._api_private is None:
            self._api_private = await netguard.api_is_private(self.r.base_url)
        guarded = not self._api_private
        session = self.client._get_download_session() if guarded else self.client._get_session()
        last: Optional[str] = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with await self._get_following(session, url, guarded) as resp:
                    if resp.status != 200:
                        last = f"HTTP {resp.status}"
                        if is_retryable_status(resp.status):
                            raise _TransientDownload(last)
                        break
                    ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
                    if not (ctype.startswith("image/") or ctype in ("application/octet-stream", "binary/octet-stream")):
                        raise ImageAPIError(None, f"the image URL {shown} served {ctype or 'no content type'}, "
                                            "not an image", url)
                    if resp.content_length is not None and resp.content_length > cap:
                        raise ImageAPIError(None, f"the image at {shown} is {_bytes_text(resp.content_length)}, "
                                            f"over the {_bytes_text(cap)} download limit", url)
                    buf = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        buf += chunk
                        if len(buf) > cap:
                            raise ImageAPIError(None, f"the image at {shown} is over the {_bytes_text(cap)} "
                                                "download limit", url)
                    data = bytes(buf)
                    mime = sniff_mime(data)
                    if mime is None:
                        raise ImageAPIError(None, f"the file at {shown} is not a PNG, JPEG, WebP or GIF image", url)
                    return data, mime
            except ImageAPIError:
                raise
            except (_TransientDownload, asyncio.TimeoutError, aiohttp.ClientConnectionError,
                    aiohttp.ClientPayloadError) as e:
                last = (f"timed out after {self.cfg.download_timeout:g} s" if isinstance(e, asyncio.TimeoutError)
                        else self._short(_without_queries(str(e))) or type(e).__name__)
                if attempt < self.max_attempts:
                    delay = next_delay(attempt, None, base=self.cfg.backoff_base, maximum=self.cfg.backoff_max,
                                       retry_after_max=self.cfg.retry_after_max)
                    await self.client._emit(self.callbacks, ev.API_RETRY, self.rid, attempt=attempt,
                                            status_code=None, delay=delay, reason=f"download failed: {last}",
                                            retry_after=None, index=None, api_url=shown)
                    await asyncio.sleep(delay)
            except aiohttp.ClientError as e:
                last = self._short(_without_queries(str(e)))
                break
            except (ValueError, UnicodeError) as e:   # a host name idna or yarl cannot take
                last = f"it is not a valid URL ({type(e).__name__}: {self._short(_without_queries(str(e)))})"
                break
        raise ImageAPIError(None, f"could not download the image from {shown}: {last}", url)

    async def _get_following(self, session: aiohttp.ClientSession, url: str, guarded: bool) -> aiohttp.ClientResponse:
        """GET `url` (no Authorization: the session has none and none is added here), following
        up to MAX_DOWNLOAD_REDIRECTS redirects by hand so that each hop's URL is checked like the
        first: http(s) only and, when `guarded`, an IP literal only if public (a name is checked
        by the download session's resolver, where the connection is made). One attempt has
        `download_timeout` for the whole chain and the body. The caller closes the response."""
        shown = safe_url(url)
        deadline = time.monotonic() + self.cfg.download_timeout
        hop = url
        for _ in range(MAX_DOWNLOAD_REDIRECTS + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                raise asyncio.TimeoutError()
            timeout = aiohttp.ClientTimeout(total=left, connect=self.cfg.connect_timeout)
            try:
                if guarded:
                    netguard.check_host(URL(hop).raw_host)
                resp = await session.get(hop, timeout=timeout, allow_redirects=False)
            except (netguard.AddressRefused, aiohttp.ClientConnectorError) as e:
                refused = netguard.refusal_in(e)
                if refused is None:
                    raise
                raise self._refused(url, hop, refused) from None
            if resp.status not in (301, 302, 303, 307, 308) or "Location" not in resp.headers:
                return resp
            async with resp:   # released: its connection goes back to the pool
                location = resp.headers["Location"]
                try:
                    nxt = resp.url.join(URL(location))
                except ValueError:
                    nxt = None
            if nxt is None or nxt.scheme not in ("http", "https") or not nxt.raw_host:
                # a redirect to file:, ftp: or a malformed URL
                raise ImageAPIError(None, f"could not download the image from {shown}: it redirected to a URL "
                                    "that is not http(s); refused", url)
            hop = str(nxt)
        raise ImageAPIError(None, f"could not download the image from {shown}: too many redirects "
                            f"(more than {MAX_DOWNLOAD_REDIRECTS})", url)

    def _refused(self, url: str, hop: str, refused: netguard.AddressRefused) -> ImageAPIError:
        """The error of a download the SSRF guard stopped (not retried: it would be refused again)."""
        api = urlsplit(self.r.base_url)
        host = f"[{api.hostname}]" if ":" in (api.hostname or "") else api.hostname
        api_shown = f"{api.scheme}://{host}" + (f":{api.port}" if api.port else "")
        where = refused.describe(None if hop == url else safe_url(hop))
        return ImageAPIError(None, f"refused to download the image from {safe_url(url)}: {where}, and images are "
                             f"fetched only from public addresses while the API ({api_shown}) is public", url,
                             code=DOWNLOAD_REFUSED)


class _TransientDownload(Exception):
    pass


def _not_understood(e: Exception, status: Optional[int], where: str, api_url: str) -> NoImageError:
    """The error for an answer whose shape made parsing fail unexpectedly (a provider bug: a shape
    its type checks missed). The traceback goes to the debug log, never to the user."""
    log.debug("unexpected %s in %s", type(e).__name__, where, exc_info=e)
    return NoImageError(status, f"the API's answer has a shape this client does not understand "
                                f"({type(e).__name__} in {where}); nothing from it was used", api_url)


def _checked(parsed: Any, status: Optional[int], where: str, api_url: str) -> Parsed:
    """`parsed` when every field has the type the rest of the client relies on (text a str, image
    data bytes, usage a Usage, ...); else the same error as an unexpected exception in `where`."""
    def problem() -> Optional[str]:
        if not isinstance(parsed, Parsed):
            return f"a {type(parsed).__name__} instead of a Parsed result,"
        for name in ("text", "revised_prompt", "model"):
            if not isinstance(getattr(parsed, name), (str, type(None))):
                return f"{name} is of type {type(getattr(parsed, name)).__name__},"
        if not isinstance(parsed.usage, (Usage, type(None))) or not isinstance(parsed.images, list):
            return "usage or images of the wrong type,"
        for ref in parsed.images:
            if not (isinstance(ref, ImageRef) and isinstance(ref.data, (bytes, type(None)))
                    and isinstance(ref.url, (str, type(None))) and isinstance(ref.mime_type, (str, type(None)))
                    and isinstance(ref.revised_prompt, (str, type(None)))):
                return "an image entry of the wrong type,"
        return None

    wrong = problem()
    if wrong is not None:
        raise NoImageError(status, f"the API's answer has a shape this client does not understand "
                                   f"({wrong} from {where}); nothing from it was used", api_url)
    return parsed


#: the most redirects one image download follows (each hop checked)
MAX_DOWNLOAD_REDIRECTS = 5
#: `ImageAPIError.code` of a download the SSRF guard refused (netguard)
DOWNLOAD_REFUSED = "download_refused"

#: how much of an error body an ImageAPIError keeps in `.body` (scrubbed first)
MAX_ERROR_BODY = 4096


def _detached(e: ImageAPIError) -> ImageAPIError:
    """The error as a response keeps it: no traceback (its frames hold the request headers, the
    key and the body) and no chained aiohttp exception."""
    e.__traceback__ = None
    e.__context__ = None
    e.__cause__ = None
    return e


#: images up to this size are decoded on the loop's thread (a thread hop costs more than that)
INLINE_DECODE_BYTES = 256 * 1024
#: answers up to this size are parsed (and scrubbed) on the loop's thread; larger ones in a worker
INLINE_PARSE_BYTES = 1024 * 1024


async def _decode_problem(art: Artifact) -> Optional[str]:
    """Decode `art` completely (keeping its pixels for the preview), in a worker thread when it
    is large (Pillow releases the GIL: the other calls of a fan-out go on meanwhile)."""
    if art.nbytes <= INLINE_DECODE_BYTES:
        return art.decode_problem()
    return await asyncio.get_running_loop().run_in_executor(None, art.decode_problem)


def _bytes_text(n: int) -> str:
    """12 kB, 1.5 MB, 256 MB: a size a person reads at a glance (never '0 MB')."""
    if n < 1_000_000:
        return f"{max(1, round(n / 1000))} kB"
    return f"{n / 1e6:.1f} MB" if n < 10_000_000 else f"{n / 1e6:.0f} MB"


_URL_IN_TEXT = re.compile(r"https?://[^\s'\"<>]+")


def _without_queries(text: str) -> str:
    """`text` (a library's error message) with every URL in it cut to scheme://host/path: the
    query of a signed download URL is a credential too."""
    return _URL_IN_TEXT.sub(lambda m: safe_url(m.group(0)), text)


def _short(e: Any) -> str:
    s = str(e) if e is not None else ""
    return s[:200]


def _error_param(body: Optional[str]) -> Optional[str]:
    """OpenAI's `error.param` (the request field it refused) from an error body, if any."""
    try:
        err = load_json_answer(body or "").get("error")
    except (ValueError, AttributeError):
        return None
    return err.get("param") if isinstance(err, dict) and isinstance(err.get("param"), str) else None


def suggestions_for(err: ImageAPIError, r: Resolved, auth_hint: str, cfg: ImageConfig) -> List[str]:
    """What a user can do about an error, in plain words."""
    s = err.status
    src = cfg.token_source
    if isinstance(err, ContentPolicyError):
        return ["The provider's safety system refused this prompt (or an input image): rephrase it; "
                "sending the same request again will not help."]
    if s == 401:
        return [f"The API rejected the key ({auth_hint}). Check {src}: it must be a key for "
                f"{urlsplit(r.base_url).netloc} ({r.api_type})."]
    if s == 403:
        return ["The key is valid but not allowed to use this model (organisation verification, credits or "
                "region). Check the account's settings, or try another model."]
    if s == 402:
        return ["The account is out of credits: add credits (or raise the key's limit), or use another key."]
    known = SUGGESTED_MODELS.get(r.api_type, [])
    if s == 404:
        return [f"Check the model name ({r.model!r}): models for {r.api_type} include "
                f"{', '.join(known)}; --model NAME chooses one.",
                f"Check the base URL ({r.base_url}): it must serve the {r.api_type} format."]
    if s == 400 or s == 422:
        said = err.message or ""
        if _error_param(err.body) in ("size", "aspect_ratio", "image_size") or \
                re.search(r"\bsizes?\b|\bimage_size\b|\baspect", said, re.I):
            hint = get_provider(r.api_type).size_hint(r)
            if hint:
                return [f"The API refused the size: {hint}."]
        if re.search(r"\bmodel\b", said, re.I) and known:
            return [f"The API refused the model {r.model!r}: models for {r.api_type} include {', '.join(known)}."]
        return ["The API refused the request as written: fix the option it names and run again."]
    if s == 429:
        return ["Rate limited: wait a little, ask for fewer images at once (-n), or raise the retries."]
    if isinstance(err, NoImageError) and err.code == "no_image":
        return ["The model answered without an image: rephrase the prompt, or choose an image-capable model."]
    if err.code == DOWNLOAD_REFUSED:
        return ["The answer pointed at an image on this machine or a private network: such URLs are fetched only "
                f"when the API itself is on one (as the emulator is). Check that {r.base_url} is the API you meant."]
    if s is not None and s >= 500:
        return ["The service is having trouble; try again in a minute."]
    if isinstance(err, APITimeoutError):
        return ["The server is slow: raise the timeout (--timeout, IMAGE_TIMEOUT) or try again."]
    if s is None:
        return [f"Check the network and the base URL ({r.base_url})."]
    return []
