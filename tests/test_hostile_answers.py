"""Hostile answers (issue 13, item 3): whatever an API answers, `generate()` returns an
ImageResponse (a failure with a clear error, or a retry when the status is retryable) and never
raises.

Property-based (hypothesis), over the three wire formats:

* each provider's `parse()` and stream state, fed arbitrary JSON and random mutations of the
  format's real answers (captured from the emulator once per module): the result is a
  well-typed `Parsed` or an `ImageAPIError` (a stream may also raise `StreamBroken`), nothing else;
* the same answers over real HTTP on 127.0.0.1 (a scripted server answers each example's status
  and body, or its server-sent events): `generate_sync` returns a response for status 200, 400
  and 500, streams included; 400 is not retried, 500 is.

Regressions: 100,000-deep JSON at 200, 400, 500 and inside a stream event (one clear error, the
200 one not retried); 30 wrongly typed 200 bodies, each with the outcome it must have; the
safety net in the client for a provider bug that lets an exception through.
"""
from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _image_helpers import make_png
from _reliab_helpers import TinyServer
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest, ImageResponse
from jupyter_imagegen.emulator import Emulator
from jupyter_imagegen.errors import (BadRequestError, ContentPolicyError, ImageAPIError, ImageRetryableError,
                                     InternalServerError, NoImageError)
from jupyter_imagegen.events import PARTIAL_IMAGE
from jupyter_imagegen.model import Usage
from jupyter_imagegen.providers import PROVIDERS
from jupyter_imagegen.providers.base import (MAX_ANSWER_DEPTH, AnswerTooDeep, ImageRef, Parsed, StreamBroken,
                                             error_message_from_body, load_json_answer)
from jupyter_imagegen.sse import SSEEvent, SSEParser

TOKEN = "sk-hostile-test-0123456789abcdef"
APIS = ("openai_images", "openai_responses", "openrouter_chat")
URL = "http://127.0.0.1:9/v1/x"
MAX_ATTEMPTS = 2
#: the safety net's words: no shape the tests make may need it (the providers' checks say more)
NET = "does not understand ("

FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HTTP = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- the real answers, from the emulator ----------------------------------------------------------

REQUESTS = {   # api -> [(path, body)]: the JSON answers to capture
    "openai_images": [("/images/generations", {"model": "gpt-image-1", "prompt": "a red fox", "quality": "low"}),
                      ("/images/generations", {"model": "dall-e-3", "prompt": "a red fox",
                                               "response_format": "b64_json"})],
    "openai_responses": [("/responses", {"model": "gpt-4.1-mini", "input": "a red fox",
                                         "tools": [{"type": "image_generation", "quality": "low"}]})],
    "openrouter_chat": [("/chat/completions", {"model": "google/gemini-2.5-flash-image", "modalities": ["image", "text"],
                                               "messages": [{"role": "user", "content": "a red fox"}]})],
}
STREAM_REQUESTS = {
    "openai_images": ("/images/generations", {"model": "gpt-image-1", "prompt": "a red fox", "quality": "low",
                                              "stream": True, "partial_images": 2}),
    "openai_responses": ("/responses", {"model": "gpt-4.1-mini", "input": "a red fox", "stream": True,
                                        "tools": [{"type": "image_generation", "quality": "low", "partial_images": 2}]}),
    "openrouter_chat": ("/chat/completions", {"model": "google/gemini-2.5-flash-image", "stream": True,
                                              "modalities": ["image", "text"],
                                              "messages": [{"role": "user", "content": "a red fox"}]}),
}
BAD_REQUESTS = {   # an unknown parameter / no messages: a real 400 body of each vendor
    "openai_images": ("/images/generations", {"model": "gpt-image-1", "prompt": "a red fox", "colour": "red"}),
    "openai_responses": ("/responses", {"model": "gpt-4.1-mini", "input": "a red fox", "colour": "red",
                                        "tools": [{"type": "image_generation"}]}),
    "openrouter_chat": ("/chat/completions", {"model": "google/gemini-2.5-flash-image"}),
}


#: base64 of 1 kB or more: an image (the emulator draws 1024 px ones)
_B64 = re.compile(rb"[A-Za-z0-9+/]{1000,}={0,2}")
#: a real 24x16 PNG, put where the answers had their large images: the same shape, fast to decode,
#: and failing examples that can be read
SMALL_PNG = base64.b64encode(make_png((24, 16), (30, 120, 200))).decode()


def small_images(raw: bytes) -> bytes:
    return _B64.sub(SMALL_PNG.encode(), raw)


async def _capture() -> Dict[str, Dict[str, Any]]:
    real: Dict[str, Dict[str, Any]] = {}
    async with Emulator(token=TOKEN) as emu, aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {TOKEN}"}

        async def post(api: str, path: str, body: Dict[str, Any], expect: int) -> bytes:
            async with s.post(emu.base_url_for(api) + path, json=body, headers=auth) as r:
                assert r.status == expect, (api, path, r.status)
                return small_images(await r.read())

        for api in APIS:
            answers = [json.loads(await post(api, path, body, 200)) for path, body in REQUESTS[api]]
            parser = SSEParser()
            raw = await post(api, *STREAM_REQUESTS[api], 200)
            events = [(e.event, e.data) for e in [*parser.feed(raw), *parser.close()]]
            bad = json.loads(await post(api, *BAD_REQUESTS[api], 400))
            emu.add_faults("500")
            failed = json.loads(await post(api, *REQUESTS[api][0], 500))
            real[api] = {"answers": answers, "events": events, "errors": {400: bad, 500: failed}}
    return real


@pytest.fixture(scope="module")
def real() -> Dict[str, Dict[str, Any]]:
    """Each format's real answers: `answers` (200 bodies), `events` (a stream with two partial
    images, as (event, data) pairs), `errors` (the 400 and 500 bodies)."""
    return asyncio.run(_capture())


def test_the_captured_answers_are_what_the_mutations_start_from(real):
    """The mutations start from answers that succeed: a failure found below is the mutation's."""
    for api in APIS:
        provider = PROVIDERS[api]
        for answer in real[api]["answers"]:
            assert provider.parse(copy.deepcopy(answer), URL).images
        state = provider.stream_state(URL)
        partials = [p for name, data in real[api]["events"] for p in state.on_event(SSEEvent(name, data))]
        assert state.finish().images
        assert len(partials) == (0 if api == "openrouter_chat" else 2)
    assert real["openai_images"]["answers"][1]["data"][0]["revised_prompt"]   # dall-e-3 revises prompts


# -- strategies -----------------------------------------------------------------------------------

#: field names of the three formats: arbitrary JSON that uses them reaches deep into parse()
KEYS = ("data", "b64_json", "url", "revised_prompt", "usage", "error", "message", "code", "metadata",
        "error_type", "raw", "choices", "delta", "content", "images", "image_url", "type", "text",
        "refusal", "finish_reason", "model", "output", "result", "status", "incomplete_details", "reason",
        "response", "partial_image_index", "partial_image_b64", "input_tokens", "prompt_tokens", "cost")
TYPES = ("image_generation_call", "message", "output_text", "refusal", "text", "error",
         "image_generation.partial_image", "image_generation.completed", "response.completed",
         "response.failed", "response.incomplete", "response.image_generation_call.partial_image",
         "content_filter", "failed", "completed", "incomplete")
#: values that trip type confusion more often than random ones do
HOSTILE = (None, True, False, 0, -1, 1.5, 123, 10 ** 30, 10 ** 400, float("nan"), float("inf"), "", "x",
           "[DONE]", "data:image/png;base64,", "data:image/png;base64,iVBORw0KGgo=", "data:;base64,@@@",
           [], ["x"], [None], [[]], [5], {}, {"x": 1}, {"url": 5}, {"image_url": 5}, {"message": 5},
           {"code": 500}, {"code": True}, {"type": "error"})

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(TYPES) | st.sampled_from(HOSTILE))
json_values = st.recursive(
    scalars,
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), inner, max_size=5)),
    max_leaves=24)
replacements = st.sampled_from(HOSTILE) | json_values


def paths_in(value: Any) -> List[Tuple[Any, ...]]:
    """Every path (keys and indexes) in a JSON value, the root's () first."""
    out: List[Tuple[Any, ...]] = []
    stack: List[Tuple[Tuple[Any, ...], Any]] = [((), value)]
    while stack:
        path, item = stack.pop()
        out.append(path)
        if isinstance(item, dict):
            stack.extend((path + (k,), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((path + (i,), v) for i, v in enumerate(item))
    return sorted(out, key=len)


def mutate(draw: Callable, value: Any) -> Any:
    """`value` with 1-3 random nodes replaced (by a hostile or an arbitrary value), deleted, wrapped
    in a list or an object, or emptied."""
    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_in(value)))
        op = draw(st.sampled_from(("replace", "replace", "delete", "wrap", "empty")))
        node = value
        for key in path[:-1]:
            node = node[key]
        old = node[path[-1]] if path else value
        if op == "delete" and path:
            del node[path[-1]]
            continue
        if op == "wrap":
            new = draw(st.sampled_from(([old], {"x": old})))
        elif op == "empty" and isinstance(old, (dict, list)):
            new = type(old)()
        else:
            new = copy.deepcopy(draw(replacements))   # (not the HOSTILE object itself: it may be mutated next)
        if path:
            node[path[-1]] = new
        else:
            value = new
    return value


def deep(depth: int, inner: Any = 1) -> Any:
    """`inner` inside `depth` lists and objects (built iteratively)."""
    for i in range(depth):
        inner = [inner] if i % 2 else {"data": inner}
    return inner


def deep_body(depth: int, kind: str = "list") -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"error":' * depth + b"1" + b"}" * depth


@st.composite
def mutated_stream(draw, events: List[Tuple[str, str]]) -> List[Tuple[str, str]]:
    """A real stream with some events' JSON mutated, and events dropped, repeated, swapped, or
    arbitrary ones (JSON or not) put in."""
    events = list(events)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("mutate", "mutate", "mutate", "drop", "repeat", "swap", "insert", "text",
                                   "rename")))
        i = draw(st.integers(0, max(0, len(events) - 1)))
        if not events:
            op = "insert"
        if op == "mutate":
            try:
                value = json.loads(events[i][1])
            except ValueError:   # [DONE], or an event an earlier step made text
                continue
            events[i] = (events[i][0], json.dumps(mutate(draw, value)))
        elif op == "drop":
            del events[i]
        elif op == "repeat":
            events.insert(i, events[i])
        elif op == "swap":
            j = draw(st.integers(0, len(events) - 1))
            events[i], events[j] = events[j], events[i]
        elif op == "insert":
            events.insert(i, ("message", json.dumps(draw(json_values))))
        elif op == "text":
            events[i] = (events[i][0], draw(st.text(max_size=30).map(lambda t: t.replace("\r", ""))))
        elif op == "rename":
            events[i] = (draw(st.sampled_from(TYPES) | st.text(max_size=10)).replace("\n", "").replace("\r", ""),
                         events[i][1])
    return events


arbitrary_stream = st.lists(
    st.tuples(st.sampled_from(("message",) + TYPES),
              json_values.map(json.dumps) | st.just("[DONE]") | st.text(max_size=20).map(lambda t: t.replace("\r", ""))),
    max_size=6)


def sse_bytes(events: List[Tuple[str, str]]) -> bytes:
    out = []
    for name, data in events:
        out.append(f"event: {name}\n" if name and name != "message" else "")
        out.extend(f"data: {line}\n" for line in data.split("\n"))
        out.append("\n")
    return "".join(out).encode("utf-8", "surrogatepass")


# -- what a result must look like -------------------------------------------------------------------

def assert_well_typed(parsed: Any) -> None:
    assert isinstance(parsed, Parsed)
    assert parsed.images, "parse() returned no image instead of raising"
    for name in ("text", "revised_prompt", "model"):
        assert isinstance(getattr(parsed, name), (str, type(None))), (name, getattr(parsed, name))
    assert isinstance(parsed.usage, (Usage, type(None)))
    if parsed.usage is not None:
        for n in (parsed.usage.input_tokens, parsed.usage.output_tokens, parsed.usage.total_tokens, parsed.usage.cost):
            assert n is None or (isinstance(n, (int, float)) and not isinstance(n, bool))
        parsed.usage + parsed.usage   # sums never raise
    for ref in parsed.images:
        assert isinstance(ref, ImageRef)
        assert (isinstance(ref.data, bytes) and ref.url is None) or (ref.data is None and isinstance(ref.url, str))
        assert isinstance(ref.revised_prompt, (str, type(None))) and isinstance(ref.mime_type, (str, type(None)))


def assert_clear(e: ImageAPIError) -> None:
    assert isinstance(e.message, str) and e.message.strip()
    assert NET not in e.message, e.message
    str(e), repr(e)   # neither raises


def parse_or_error(api: str, payload: Any) -> None:
    try:
        parsed = PROVIDERS[api].parse(payload, URL)
    except ImageAPIError as e:
        assert_clear(e)
    else:
        assert_well_typed(parsed)


def fold_or_error(api: str, events: List[Tuple[str, str]]) -> None:
    state = PROVIDERS[api].stream_state(URL)
    try:
        for name, data in events:
            for part in state.on_event(SSEEvent(name, data)):
                assert isinstance(part.data, bytes) and isinstance(part.partial_index, int)
        parsed = state.finish()
    except StreamBroken as e:
        assert str(e)
    except ImageAPIError as e:
        assert_clear(e)
    else:
        assert_well_typed(parsed)


# -- properties of parse() and the stream states (no network) --------------------------------------

@pytest.mark.parametrize("api", APIS)
@FAST
@given(payload=json_values)
def test_parse_arbitrary_json(api, payload):
    parse_or_error(api, payload)


@pytest.mark.parametrize("api", APIS)
@FAST
@given(data=st.data())
def test_parse_mutated_real_answer(real, api, data):
    answer = data.draw(st.sampled_from(real[api]["answers"]))
    parse_or_error(api, mutate(data.draw, answer))


@pytest.mark.parametrize("api", APIS)
@FAST
@given(events=arbitrary_stream)
def test_stream_arbitrary_events(api, events):
    fold_or_error(api, events)


@pytest.mark.parametrize("api", APIS)
@FAST
@given(data=st.data())
def test_stream_mutated_real_events(real, api, data):
    fold_or_error(api, data.draw(mutated_stream(real[api]["events"])))


@FAST
@given(value=json_values, status=st.sampled_from((400, 401, 404, 429, 500, 503)))
def test_error_bodies_always_give_a_message(value, status):
    message, code = error_message_from_body(status, json.dumps(value).encode())
    assert isinstance(message, str) and message.strip()
    assert code is None or isinstance(code, str)


# -- the JSON loader -----------------------------------------------------------------------------------

@pytest.mark.parametrize("body,depth", [(deep_body(100_000), 100_000), (deep_body(100_000, "object"), 100_000),
                                        (deep_body(2_000).decode(), 2_000), (deep_body(MAX_ANSWER_DEPTH + 1), 65),
                                        (json.dumps(deep(200)), 200)])
def test_load_json_answer_refuses_deep_json_with_a_value_error(body, depth):
    with pytest.raises(AnswerTooDeep) as info:   # json.loads gives up at ~1000 levels; the walk at 65
        load_json_answer(body)
    assert isinstance(info.value, ValueError)
    assert info.value.depth == depth
    assert info.value.nesting == f"nested {depth} levels deep"


def test_load_json_answer_reads_what_is_not_too_deep():
    assert load_json_answer(deep_body(MAX_ANSWER_DEPTH)) == json.loads(deep_body(MAX_ANSWER_DEPTH))
    assert load_json_answer(b'{"a": "[[[[[[[[[["}') == {"a": "[[[[[[[[[["}   # brackets in strings do not count
    for bad in (b"", b"{", b"\xff\xfe\x00", "[1,]", b"1" * 5000):   # (5000 digits: over int's str limit)
        with pytest.raises(ValueError):
            load_json_answer(bad)


def test_the_depth_of_refused_text_skips_brackets_inside_strings():
    body = '{"a": "]]]]}}}}", "b":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(AnswerTooDeep) as info:
        load_json_answer(body)
    assert info.value.depth == 5001


# -- the same over HTTP ------------------------------------------------------------------------------

class ScriptedServer:
    """An aiohttp server on 127.0.0.1 in its own thread, for sync tests: every request gets
    `answer` = (status, content type, body)."""

    def __init__(self):
        self.answer: Tuple[int, str, bytes] = (200, "application/json", b"{}")
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._server = TinyServer({"/{tail:.*}": self._handle})
        self._thread = threading.Thread(target=self._main, name="scripted-server", daemon=True)
        self._ready = threading.Event()

    async def _handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        status, ctype, body = self.answer
        return web.Response(status=status, body=body, headers={"Content-Type": ctype})

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._server.__aenter__())
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._server.__aexit__(None, None, None))
        self._loop.close()

    def __enter__(self) -> "ScriptedServer":
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return self._server.url + "/v1"


def config(api: str, base_url: str) -> ImageConfig:
    return ImageConfig(api_type=api, base_url=base_url, token=TOKEN, max_attempts=MAX_ATTEMPTS, backoff_base=0,
                       timeout=10, cache=False)


@pytest.fixture(scope="module")
def http():
    """(server, {api: client}): one scripted server and a client per format for the module."""
    with ScriptedServer() as server:
        clients = {api: ImageClient(config(api, server.url)) for api in APIS}
        yield server, clients
        for client in clients.values():
            client.close_sync()


def call(http, api: str, status: int, body: bytes, ctype: str = "application/json", stream: bool = False
         ) -> Tuple[ImageResponse, List[Any]]:
    server, clients = http
    server.answer = (status, ctype, body)
    events: List[Any] = []
    resp = clients[api].generate_sync(ImageRequest("a red fox", stream=stream), on_event=events.append)
    return resp, events


def assert_response(resp: Any, status: int) -> None:
    """What any answer must end as: a response; a failure with a clear error and its typed
    exception; 400 not retried, 500 retried; at 200, retried only when the error is retryable."""
    assert isinstance(resp, ImageResponse)
    if resp.success:
        assert status == 200 and resp.artifacts and resp.error is None
        assert isinstance(resp.text, (str, type(None))) and isinstance(resp.revised_prompt, (str, type(None)))
        return
    assert isinstance(resp.error, str) and resp.error.strip()
    assert NET not in resp.error, resp.error
    assert isinstance(resp.exception, ImageAPIError)
    if status == 400:
        assert resp.attempts == 1 and resp.status_code == 400
        assert isinstance(resp.exception, (BadRequestError, ContentPolicyError)), repr(resp.exception)
        assert resp.error.startswith("HTTP 400: ")
    elif status == 500 and isinstance(resp.exception, ContentPolicyError):   # a moderation code: not retried
        assert resp.attempts == 1 and resp.status_code == 500
    elif status == 500:
        assert resp.attempts == MAX_ATTEMPTS and resp.status_code == 500
        assert isinstance(resp.exception, InternalServerError), repr(resp.exception)
        assert resp.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts: HTTP 500: ")
    else:
        retried = isinstance(resp.exception, ImageRetryableError)
        assert resp.attempts == (MAX_ATTEMPTS if retried else 1), (resp.attempts, repr(resp.exception))


@st.composite
def bodies(draw, real: Dict[str, Any], api: str, status: int) -> bytes:
    """A body for `status`: arbitrary JSON, the format's real answer or error body mutated, JSON
    nested just over the limit, or bytes that are not JSON."""
    source = draw(st.sampled_from(("json", "mutated", "mutated", "deep", "bytes")))
    if source == "json":
        return json.dumps(draw(json_values)).encode()
    if source == "mutated":
        start = (draw(st.sampled_from(real[api]["answers"])) if status == 200
                 else draw(st.sampled_from([real[api]["errors"][status], real[api]["answers"][0]])))
        return json.dumps(mutate(draw, start)).encode()
    if source == "deep":
        return json.dumps(deep(draw(st.integers(MAX_ANSWER_DEPTH + 1, 300)), draw(json_values))).encode()
    return draw(st.binary(max_size=64))


@pytest.mark.parametrize("status", [200, 400, 500])
@pytest.mark.parametrize("api", APIS)
@HTTP
@given(data=st.data())
def test_any_answer_over_http_ends_as_a_response(real, http, api, status, data):
    body = data.draw(bodies(real, api, status))
    resp, _ = call(http, api, status, body)
    assert_response(resp, status)


@pytest.mark.parametrize("api", APIS)
@HTTP
@given(data=st.data())
def test_any_stream_over_http_ends_as_a_response(real, http, api, data):
    events = data.draw(mutated_stream(real[api]["events"]) | arbitrary_stream)
    resp, seen = call(http, api, 200, sse_bytes(events), "text/event-stream", stream=True)
    assert_response(resp, 200)
    for event in seen:
        if event.type == PARTIAL_IMAGE:
            assert isinstance(event.data["artifact"].data, bytes)


# -- regressions: 100,000-deep JSON -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["list", "object"])
@pytest.mark.parametrize("status", [200, 400, 500])
@pytest.mark.parametrize("api", APIS)
async def test_100000_deep_json_is_a_clear_error(api, status, kind):
    body = deep_body(100_000, kind)

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=status, body=body, content_type="application/json")

    async with TinyServer({"/{tail:.*}": answer}) as srv, ImageClient(config(api, srv.url + "/v1")) as client:
        resp = await client.generate(ImageRequest("a red fox"))
    assert not resp.success
    assert "nested 100000 levels deep" in resp.error, resp.error
    if status == 200:   # not retried: no accident of transport makes a body that deep
        assert isinstance(resp.exception, NoImageError) and resp.attempts == 1 and len(srv.hits) == 1
        assert resp.error == "the API's answer is JSON nested 100000 levels deep; not an answer this client understands"
    elif status == 400:
        assert isinstance(resp.exception, BadRequestError) and resp.attempts == 1
        assert resp.error == ("HTTP 400: the error body is JSON nested 100000 levels deep; "
                              "not an error this client understands")
    else:               # a 500 is retried as usual, whatever its body
        assert isinstance(resp.exception, InternalServerError) and resp.attempts == MAX_ATTEMPTS
        assert resp.error.startswith(f"gave up after {MAX_ATTEMPTS} attempts: HTTP 500: the error body is JSON nested")
    assert resp.exception.body is None or len(resp.exception.body) <= 4096


@pytest.mark.parametrize("api", APIS)
async def test_100000_deep_json_inside_a_stream_event_is_a_clear_error(real, api):
    events = list(real[api]["events"])
    events.insert(1, ("message", deep_body(100_000).decode()))
    body = sse_bytes(events)

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=200, body=body, headers={"Content-Type": "text/event-stream"})

    async with TinyServer({"/{tail:.*}": answer}) as srv, ImageClient(config(api, srv.url + "/v1")) as client:
        resp = await client.generate(ImageRequest("a red fox", stream=True))
    assert not resp.success and resp.attempts == 1 and isinstance(resp.exception, NoImageError)
    assert resp.error == ("a stream event is JSON nested 100000 levels deep; not an event this client "
                          "understands"), resp.error


# -- regressions: 30 wrongly typed 200 bodies ------------------------------------------------------------

DROP = object()
OK = "ok"

#: (api, which real answer, {path: new value or DROP}, OK or a text the error must contain, check of a success)
TYPED: List[Tuple[str, int, Dict[Tuple[Any, ...], Any], str, Optional[Callable[[ImageResponse], bool]]]] = [
    # openai_images: answers[0] gpt-image-1 (usage), answers[1] dall-e-3 (revised_prompt)
    ("openai_images", 1, {("data", 0, "revised_prompt"): 123}, OK, lambda r: r.revised_prompt is None),
    ("openai_images", 0, {("data",): "x"}, "the response has 'data' that is a string, not a list", None),
    ("openai_images", 0, {("data",): {}}, "the response has 'data' that is an object, not a list", None),
    ("openai_images", 0, {("data",): ["x"]}, "data[0] is a string, not an object", None),
    ("openai_images", 0, {("data", 0, "b64_json"): 5}, "data[0].b64_json is a number, not a base64 string", None),
    ("openai_images", 0, {("data", 0, "b64_json"): ["x"]}, "data[0].b64_json is a list, not a base64 string", None),
    ("openai_images", 0, {("data", 0): {"url": 5}}, "an image entry's URL is a number, not a string", None),
    ("openai_images", 0, {("usage",): []}, OK, lambda r: r.usage is None),
    ("openai_images", 0, {("error",): 5}, OK, lambda r: len(r.artifacts) == 1),
    ("openai_images", 0, {("usage",): {"input_tokens": "many", "total_tokens": 10 ** 400, "cost": [1]}}, OK,
     lambda r: r.usage.input_tokens is None and r.usage.total_tokens is None and r.usage.cost is None),
    # openai_responses
    ("openai_responses", 0, {("output",): 5}, "output is a number, not a list", None),
    ("openai_responses", 0, {("output",): ["x"]}, "output[0] is a string, not an object", None),
    ("openai_responses", 0, {("output", 0, "result"): 5}, "output[0].result is a number, not a base64 string", None),
    ("openai_responses", 0, {("output", 0, "revised_prompt"): 123}, OK, lambda r: r.revised_prompt is None),
    ("openai_responses", 0, {("output", 1, "content"): "x"}, OK, lambda r: r.text is None),
    ("openai_responses", 0, {("model",): {}}, OK, lambda r: r.success),
    ("openai_responses", 0, {("usage",): []}, OK, lambda r: r.usage is None),
    ("openai_responses", 0, {("output",): [], ("status",): "incomplete", ("incomplete_details",): "x"},
     "(response status: incomplete) (the answer is not as expected: incomplete_details is a string, not an object)",
     None),
    ("openai_responses", 0, {("output",): [], ("error",): 5}, "error is a number, not an object", None),
    ("openai_responses", 0, {("output", 0): DROP, ("output", 0, "content", 0, "text"): 5},
     "the model returned no image.", None),
    # openrouter_chat
    ("openrouter_chat", 0, {("choices",): ["x"]}, "choices[0] is a string, not an object", None),
    ("openrouter_chat", 0, {("choices", 0, "message"): "x"}, "choices[0].message is a string, not an object", None),
    ("openrouter_chat", 0, {("choices", 0, "message", "images"): {}},
     "choices[0].message.images is an object, not a list", None),
    ("openrouter_chat", 0, {("choices", 0, "message", "images"): ["x"]},
     "choices[0].message.images[0] is a string, not an object", None),
    ("openrouter_chat", 0, {("choices", 0, "message", "images", 0, "image_url"): 5},
     "an image entry's URL is a number, not a string", None),
    ("openrouter_chat", 0, {("choices", 0, "message", "images", 0, "image_url", "url"): ["x"]},
     "an image entry's URL is a list, not a string", None),
    ("openrouter_chat", 0, {("choices", 0, "message", "content"): 123}, OK, lambda r: r.text is None),
    ("openrouter_chat", 0, {("choices",): "x"}, "the response 'choices' is a string, not a list", None),
    ("openrouter_chat", 0, {("choices", 0, "message", "images"): DROP, ("choices", 0, "message", "refusal"): 5,
                            ("choices", 0, "message", "content"): None}, "the model returned no image.", None),
    ("openrouter_chat", 0, {("error",): "upstream overloaded"}, "upstream overloaded", None),
]


def edited(answer: Any, changes: Dict[Tuple[Any, ...], Any]) -> Any:
    answer = copy.deepcopy(answer)
    for path, value in changes.items():
        node = answer
        for key in path[:-1]:
            node = node[key]
        if value is DROP:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return answer


@pytest.mark.parametrize("api,which,changes,expect,check", TYPED,
                         ids=[f"{row[0]}-{'-'.join(map(str, next(iter(row[2]))))}" for row in TYPED])
def test_wrongly_typed_200_bodies(real, http, api, which, changes, expect, check):
    body = json.dumps(edited(real[api]["answers"][which], changes)).encode()
    resp, _ = call(http, api, 200, body)
    assert_response(resp, 200)
    if expect == OK:
        assert resp.success and check(resp), resp
    else:
        assert not resp.success and resp.attempts == 1, resp
        assert expect in resp.error, resp.error
        assert not isinstance(resp.exception, ContentPolicyError)


def test_the_table_has_30_bodies_ten_per_format():
    assert len(TYPED) == 30 and {api: sum(r[0] == api for r in TYPED) for api in APIS} == dict.fromkeys(APIS, 10)


STREAM_TYPED = [
    # (api, index of the event to edit (by its type), changes, OK or the error text)
    ("openai_images", "image_generation.partial_image", {("partial_image_index",): "x"}, OK),
    ("openai_images", "image_generation.partial_image", {("type",): 5}, OK),
    ("openai_images", "image_generation.completed", {("b64_json",): 5},
     "the final image is a number, not a base64 string"),
    ("openai_images", "image_generation.completed", {("error",): 5}, OK),
    ("openai_responses", "response.image_generation_call.partial_image", {("partial_image_index",): [1]}, OK),
    ("openai_responses", "response.completed", {("response",): "x"},
     "the response.completed event's 'response' is a string, not an object"),
    ("openai_responses", "response.completed", {("type",): "response.failed", ("response", "error"): 5},
     "the response failed"),
    ("openai_responses", "response.completed", {("response", "output"): 5}, "output is a number, not a list"),
    ("openrouter_chat", "chunk with the image", {("choices",): [5]}, "a chunk's choices[0] is a number, not an object"),
    ("openrouter_chat", "chunk with the image", {("choices", 0, "delta"): "x"},
     "a chunk's choices[0].delta is a string, not an object"),
]


@pytest.mark.parametrize("api,which,changes,expect", STREAM_TYPED,
                         ids=[f"{r[0]}-{'-'.join(map(str, next(iter(r[2]))))}" for r in STREAM_TYPED])
def test_wrongly_typed_stream_events(real, http, api, which, changes, expect):
    events = list(real[api]["events"])
    for i, (name, data) in enumerate(events):
        if name == which or (which == "chunk with the image" and '"images"' in data):
            events[i] = (name, json.dumps(edited(json.loads(data), changes)))
            break
    else:
        raise AssertionError(f"no {which} event")
    resp, seen = call(http, api, 200, sse_bytes(events), "text/event-stream", stream=True)
    assert_response(resp, 200)
    if expect == OK:
        assert resp.success, resp.error
        indexes = [e.data["partial_index"] for e in seen if e.type == PARTIAL_IMAGE]
        assert all(isinstance(i, int) for i in indexes) and len(indexes) == 2
    else:
        assert not resp.success and resp.attempts == 1 and expect in resp.error, resp.error


# -- the client's safety net ------------------------------------------------------------------------------

def test_an_exception_inside_parse_becomes_a_clear_failure(real, http, monkeypatch):
    def broken(payload, api_url):
        return payload["data"][0]["nope"]   # a provider bug: a KeyError

    monkeypatch.setattr(PROVIDERS["openai_images"], "parse", broken)
    resp, _ = call(http, "openai_images", 200, json.dumps(real["openai_images"]["answers"][0]).encode())
    assert not resp.success and resp.attempts == 1 and isinstance(resp.exception, NoImageError)
    assert resp.error == ("the API's answer has a shape this client does not understand "
                          "(KeyError in openai_images parse()); nothing from it was used")


def test_a_parse_result_of_the_wrong_type_becomes_a_clear_failure(real, http, monkeypatch):
    provider = PROVIDERS["openai_responses"]
    real_parse = type(provider).parse

    def sloppy(payload, api_url):
        parsed = real_parse(provider, payload, api_url)
        parsed.text = 123   # a provider bug: a number where text belongs
        return parsed

    monkeypatch.setattr(provider, "parse", sloppy)
    resp, _ = call(http, "openai_responses", 200, json.dumps(real["openai_responses"]["answers"][0]).encode())
    assert not resp.success and isinstance(resp.exception, NoImageError)
    assert "(text is of type int, from openai_responses parse())" in resp.error


def test_an_exception_inside_a_stream_state_becomes_a_clear_failure(real, http, monkeypatch):
    from jupyter_imagegen.providers.openrouter_chat import ChatStream

    def broken(self, event):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(ChatStream, "on_event", broken)
    resp, _ = call(http, "openrouter_chat", 200, sse_bytes(real["openrouter_chat"]["events"]), "text/event-stream",
                   stream=True)
    assert not resp.success and resp.attempts == 1 and isinstance(resp.exception, NoImageError)
    assert "(TypeError in openrouter_chat stream event)" in resp.error
