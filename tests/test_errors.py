"""The typed errors: every failure ends as the right class on `ImageResponse.exception`.

Real HTTP on 127.0.0.1: the emulator with its fault injection (`X-Emulator-Fault` per request),
and a tiny canned server for the answers the emulator does not send (refusals, moderation codes,
an echoed key). `api_error_for` is checked for every status.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import pickle

import pytest
from aiohttp import web

from _reliab_helpers import TinyServer
from conftest import EMULATOR_TOKEN
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest, ImageResponse, mask_token
from jupyter_imagegen import errors as E
from jupyter_imagegen.errors import (APIConnectionError, APITimeoutError, AuthenticationError, BadRequestError,
                                     ConfigError, ContentPolicyError, GenerationCancelled, ImageAPIError,
                                     ImageGenError, ImageRetryableError, InternalServerError, MissingTokenError,
                                     NoImageError, NotFoundError, PaymentRequiredError, PermissionDeniedError,
                                     RateLimitError, UnprocessableEntityError, api_error_for)

APIS = ["openrouter_chat", "openai_images", "openai_responses"]
RETRYABLE_STATUSES = {408, 409, 429} | set(range(500, 600))
FIXED = {400: BadRequestError, 401: AuthenticationError, 402: PaymentRequiredError, 403: PermissionDeniedError,
         404: NotFoundError, 422: UnprocessableEntityError, 429: RateLimitError}


def make_client(base_url, api_type, token=EMULATOR_TOKEN, **kw):
    kw.setdefault("backoff_base", 0.001)
    kw.setdefault("retry_after_max", 0.01)
    kw.setdefault("timeout", 10)
    kw.setdefault("max_attempts", 2)
    return ImageClient(ImageConfig(api_type=api_type, base_url=base_url, token=token, **kw))


async def run(emulator, api, fault=None, **kw):
    """One generate() against the emulator, the fault sent with every attempt (header)."""
    headers = {"X-Emulator-Fault": fault} if fault else {}
    stream = kw.pop("stream", False)
    async with make_client(emulator.base_url_for(api), api, **kw) as client:
        return await client.generate(ImageRequest("a red fox", headers=headers, stream=stream))


def expected_class(status):
    if status in FIXED:
        return FIXED[status]
    if status >= 500:
        return InternalServerError
    if status in (408, 409):
        return ImageRetryableError
    return ImageAPIError


def check(resp, cls, status, retryable, attempts=None):
    exc = resp.exception
    assert not resp.success and exc is not None, resp
    assert type(exc) is cls, (type(exc), exc)
    assert exc.status == status == resp.status_code, (exc.status, resp.status_code)
    assert isinstance(exc, ImageRetryableError) is retryable
    assert isinstance(exc, ImageAPIError) and isinstance(exc, ImageGenError)
    if attempts is not None:
        assert resp.attempts == attempts, (resp.attempts, resp.error)
    assert exc.message in resp.error, (exc.message, resp.error)   # the text and the type say the same


# -- the factory --------------------------------------------------------------------------------
@pytest.mark.parametrize("status", range(400, 600))
def test_factory_maps_every_error_status(status):
    e = api_error_for(status, f"HTTP {status}: boom", "http://x/v1/images", retry_after=1.5, code="c", body="{}")
    cls = expected_class(status)
    assert type(e) is cls
    assert e.status == status and e.message == f"HTTP {status}: boom" and e.api_url == "http://x/v1/images"
    assert e.code == "c" and e.body == "{}"
    assert isinstance(e, ImageRetryableError) is (status in RETRYABLE_STATUSES)
    if isinstance(e, ImageRetryableError):
        assert e.retry_after == 1.5
    if status in FIXED:
        assert cls.status == status        # the status is on the class (as openai-python does)


@pytest.mark.parametrize("status", [None, 200, 201, 204, 301, 302, 304, 399])
def test_factory_for_non_error_statuses(status):
    e = api_error_for(status, "m")
    if status is not None and 200 <= status < 300:
        assert type(e) is NoImageError and e.status == status
    else:
        assert type(e) is ImageAPIError and e.status == status
    assert not isinstance(e, ImageRetryableError)


@pytest.mark.parametrize("code", sorted(E.CONTENT_POLICY_CODES))
@pytest.mark.parametrize("status", [200, 400, 403, 500])
def test_a_moderation_code_wins_over_the_status(code, status):
    e = api_error_for(status, "m", code=code)
    assert type(e) is ContentPolicyError and e.status == status and e.code == code
    assert not isinstance(e, ImageRetryableError) and not isinstance(e, BadRequestError)


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_an_error_inside_an_answer_is_never_retryable(status):
    e = api_error_for(status, "m", in_answer=True)
    assert type(e) is ImageAPIError and e.status == status
    for status in (400, 401, 402, 403, 404, 422):
        assert type(api_error_for(status, "m", in_answer=True)) is FIXED[status]


def test_class_attributes_and_hierarchy():
    assert (BadRequestError.status, AuthenticationError.status, PaymentRequiredError.status,
            PermissionDeniedError.status, NotFoundError.status, UnprocessableEntityError.status,
            RateLimitError.status, InternalServerError.status, NoImageError.status) == \
        (400, 401, 402, 403, 404, 422, 429, 500, 200)
    assert APIConnectionError.status is None and APITimeoutError.status is None
    assert ContentPolicyError.status is None and ImageAPIError.status is None
    assert issubclass(APITimeoutError, APIConnectionError)
    for cls in (RateLimitError, InternalServerError, APIConnectionError, APITimeoutError):
        assert issubclass(cls, ImageRetryableError)
    for cls in (BadRequestError, AuthenticationError, PaymentRequiredError, PermissionDeniedError, NotFoundError,
                UnprocessableEntityError, NoImageError, ContentPolicyError):
        assert issubclass(cls, ImageAPIError) and not issubclass(cls, ImageRetryableError)
    assert issubclass(MissingTokenError, ConfigError) and issubclass(MissingTokenError, ValueError)
    # a status class built without a status takes the class's
    assert NotFoundError(None, "m").status == 404 and InternalServerError(503, "m").status == 503


def test_errors_pickle_copy_and_repr():
    e = api_error_for(429, "HTTP 429: slow down", "http://x", retry_after=2.0, code="rate_limit_exceeded", body="b")
    for clone in (pickle.loads(pickle.dumps(e)), copy.copy(e), copy.deepcopy(e), e.copy()):
        assert type(clone) is RateLimitError
        assert (clone.status, clone.message, clone.api_url, clone.code, clone.body, clone.retry_after) == \
            (429, "HTTP 429: slow down", "http://x", "rate_limit_exceeded", "b", 2.0)
    e.message = "scrubbed"
    assert e.args == ("scrubbed",) and "scrubbed" in repr(e) and "slow down" not in repr(e)
    assert str(e) == "HTTP 429: scrubbed"
    m = pickle.loads(pickle.dumps(MissingTokenError("MY_KEY")))
    assert type(m) is MissingTokenError and m.variable == "MY_KEY" and "MY_KEY" in str(m)
    g = pickle.loads(pickle.dumps(GenerationCancelled()))
    assert type(g) is GenerationCancelled


def test_generation_cancelled_lives_in_errors():
    assert issubclass(GenerationCancelled, KeyboardInterrupt) and not issubclass(GenerationCancelled, Exception)
    if importlib.util.find_spec("jupyter_imagegen.runner") is not None:  # the re-export, while runner.py exists
        from jupyter_imagegen import runner
        assert runner.GenerationCancelled is GenerationCancelled


# -- over HTTP: each status from the emulator -------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("status", [401, 402, 403, 404, 408, 409, 418, 422, 429, 500, 502, 503, 504])
async def test_each_status_ends_as_its_class(emulator, api, status):
    retryable = status in RETRYABLE_STATUSES
    resp = await run(emulator, api, f"{status}:retry_after=0")
    check(resp, expected_class(status), status, retryable, attempts=2 if retryable else 1)
    assert resp.exception.api_url.startswith(emulator.url)
    assert resp.exception.body and resp.exception.body.lstrip().startswith("{")   # the (scrubbed) error body


async def test_400_is_a_bad_request_or_a_moderation_block(emulator):
    resp = await run(emulator, "openrouter_chat", "400")
    check(resp, BadRequestError, 400, False, attempts=1)
    for api in ("openai_images", "openai_responses"):   # the emulator's OpenAI 400 is moderation_blocked
        resp = await run(emulator, api, "400")
        check(resp, ContentPolicyError, 400, False, attempts=1)
        assert resp.exception.code == "moderation_blocked"
        assert any("rephrase" in s for s in resp.suggestions)
    async with make_client(emulator.base_url_for("openai_images"), "openai_images") as client:
        resp = await client.generate(ImageRequest("x", params={"bogus_field": 1}))   # a real validation 400
    check(resp, BadRequestError, 400, False, attempts=1)


async def test_a_wrong_key_is_an_authentication_error(emulator):
    resp = await run(emulator, "openai_images", token="sk-wrong-key-0000-1111-2222")
    check(resp, AuthenticationError, 401, False, attempts=1)


@pytest.mark.parametrize("api", APIS)
async def test_no_image_is_a_no_image_error(emulator, api):
    resp = await run(emulator, api, "no_image")
    check(resp, NoImageError, 200, False, attempts=1)
    assert resp.exception.code == "no_image"


@pytest.mark.parametrize("fault,cls,status", [
    ("reset", APIConnectionError, None),
    ("reset_after_headers", APIConnectionError, None),
    ("html", InternalServerError, 502),
    ("html:status=503", InternalServerError, 503),
    ("truncate", ImageRetryableError, 200),
    ("invalid_json", ImageRetryableError, 200),
])
async def test_transport_failures(emulator, fault, cls, status):
    resp = await run(emulator, "openai_images", fault)
    check(resp, cls, status, True, attempts=2)
    assert resp.error.startswith("gave up after 2 attempts")


async def test_a_timeout_is_an_api_timeout_error(emulator):
    resp = await run(emulator, "openai_images", "slow_headers:delay=2", timeout=0.3, max_attempts=1)
    check(resp, APITimeoutError, None, True, attempts=1)
    assert isinstance(resp.exception, APIConnectionError)
    assert any("timeout" in s for s in resp.suggestions)


async def test_cannot_connect_is_a_connection_error():
    async with TinyServer({"/v1/x": None}) as srv:   # a port that was open a moment ago
        url = srv.url + "/v1"
    async with make_client(url, "openai_images", max_attempts=1) as client:
        resp = await client.generate(ImageRequest("x"))
    check(resp, APIConnectionError, None, True, attempts=1)


@pytest.mark.parametrize("api", APIS)
async def test_stream_failures(emulator, api):
    resp = await run(emulator, api, "stream_break", stream=True)
    check(resp, APIConnectionError, None, True, attempts=2)
    resp = await run(emulator, api, "stream_break:eof=1", stream=True)
    check(resp, ImageRetryableError, None, True, attempts=2)
    resp = await run(emulator, api, "stream_error:message=the model could not finish", stream=True)
    if api == "openrouter_chat":   # OpenRouter's error event carries the status it means (502): not retried
        check(resp, ImageAPIError, 502, False, attempts=1)
    else:
        check(resp, NoImageError, 200, False, attempts=1)
        assert resp.exception.code == "server_error"


async def test_missing_token_raises_missing_token_error(emulator, monkeypatch):
    monkeypatch.delenv("IMAGE_AUTH_TOKEN", raising=False)
    client = ImageClient(ImageConfig(api_type="openai_images", base_url=emulator.openai_base_url))
    with pytest.raises(MissingTokenError) as info:
        await client.generate(ImageRequest("x"))
    assert info.value.variable == "IMAGE_AUTH_TOKEN" and "IMAGE_AUTH_TOKEN" in str(info.value)
    assert isinstance(info.value, ConfigError)   # existing `except ConfigError` still catches it
    other = ImageClient(ImageConfig(api_type="openai_images", base_url=emulator.openai_base_url,
                                    token_source="MY_IMAGE_KEY"))
    with pytest.raises(MissingTokenError) as info:
        await other.generate(ImageRequest("x"))
    assert info.value.variable == "MY_IMAGE_KEY"
    assert emulator.request_count == 0
    await client.close()
    await other.close()


# -- refusals the emulator does not send: a canned server -------------------------------------
def _chat(message, finish_reason="stop"):
    return {"id": "gen-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}]}


CANNED = {
    "chat-content-filter": (200, _chat({"role": "assistant", "content": None}, "content_filter")),
    "chat-refusal": (200, _chat({"role": "assistant", "content": "", "refusal": "I can't draw that."})),
    "chat-403-moderation": (403, {"error": {"code": 403, "message": "Your input was flagged",
                                            "metadata": {"error_type": "content_policy_violation"}}}),
    "chat-200-error-402": (200, {"error": {"code": 402, "message": "Insufficient credits"}}),
    "chat-200-error-429": (200, {"error": {"code": 429, "message": "Upstream rate limited"}}),
    "responses-refusal": (200, {"id": "resp_1", "object": "response", "status": "completed", "output": [
        {"type": "message", "role": "assistant", "content": [{"type": "refusal", "refusal": "I can't help."}]}]}),
    "responses-incomplete": (200, {"id": "resp_1", "object": "response", "status": "incomplete", "output": [],
                                   "incomplete_details": {"reason": "content_filter"}}),
    "images-dalle-policy": (400, {"error": {"message": "Your request was rejected by our safety system.",
                                            "type": "invalid_request_error", "param": None,
                                            "code": "content_policy_violation"}}),
}


async def _canned(request):
    kind = request.headers.get("X-Kind", "")
    if kind == "images-stream-moderation":
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        err = {"type": "error", "error": {"type": "image_generation_user_error", "code": "moderation_blocked",
                                          "message": "Your request was rejected by the safety system.",
                                          "param": None}}
        await resp.write(f"event: error\ndata: {json.dumps(err)}\n\n".encode())
        await resp.write_eof()
        return resp
    if kind == "echo":   # a debugging proxy that puts the key everywhere
        key = request.headers.get("Authorization", "").split()[-1]
        body = {"error": {"message": f"bad key {key}", "code": f"code-{key}", "type": "invalid_request_error"}}
        return web.json_response(body, status=int(request.headers.get("X-Status", "401")))
    if kind == "echo-200":
        key = request.headers.get("Authorization", "").split()[-1]
        return web.json_response({"error": {"code": 400, "message": f"upstream said {key}"}})
    if kind == "echo-200-openai":   # an error object inside a 200 answer, parsed by the provider
        key = request.headers.get("Authorization", "").split()[-1]
        return web.json_response({"error": {"code": f"code-{key}", "message": f"said {key}"}})
    status, body = CANNED[kind]
    return web.json_response(body, status=status)


@pytest.fixture
async def canned():
    async with TinyServer({"/v1/{tail:.*}": _canned}) as srv:
        yield srv


@pytest.mark.parametrize("api,kind,status,code", [
    ("openrouter_chat", "chat-content-filter", 200, "content_filter"),
    ("openrouter_chat", "chat-refusal", 200, "refusal"),
    ("openrouter_chat", "chat-403-moderation", 403, "content_policy_violation"),
    ("openai_responses", "responses-refusal", 200, "refusal"),
    ("openai_responses", "responses-incomplete", 200, "content_filter"),
    ("openai_images", "images-dalle-policy", 400, "content_policy_violation"),
])
async def test_refusals_are_content_policy_errors(canned, api, kind, status, code):
    async with make_client(canned.url + "/v1", api) as client:
        resp = await client.generate(ImageRequest("x", headers={"X-Kind": kind}))
    check(resp, ContentPolicyError, status, False, attempts=1)
    assert resp.exception.code == code
    assert any("safety system" in s for s in resp.suggestions)


async def test_a_moderation_event_in_a_stream(canned):
    async with make_client(canned.url + "/v1", "openai_images") as client:
        resp = await client.generate(ImageRequest("x", stream=True, headers={"X-Kind": "images-stream-moderation"}))
    check(resp, ContentPolicyError, 200, False, attempts=1)
    assert resp.exception.code == "moderation_blocked"


async def test_an_error_inside_a_200_answer(canned):
    async with make_client(canned.url + "/v1", "openrouter_chat") as client:
        resp = await client.generate(ImageRequest("x", headers={"X-Kind": "chat-200-error-402"}))
        check(resp, PaymentRequiredError, 402, False, attempts=1)
        resp = await client.generate(ImageRequest("x", headers={"X-Kind": "chat-200-error-429"}))
        check(resp, ImageAPIError, 429, False, attempts=1)   # reported inside an answer: not retried


# -- the key never reaches the typed error ---------------------------------------------------------
SECRET = "sk-errors-test-SECRET-key-0a1b2c3d4e5f6a7b"


def _everything(exc):
    return " ".join([repr(exc), str(exc), str(exc.args), exc.message, str(exc.code), str(exc.body),
                     exc.api_url, str(pickle.loads(pickle.dumps(exc)).__dict__)])


@pytest.mark.parametrize("api,kind,status,cls", [
    ("openai_images", "echo", "401", AuthenticationError),
    ("openai_images", "echo", "503", InternalServerError),
    ("openrouter_chat", "echo-200", "200", BadRequestError),
    ("openai_images", "echo-200-openai", "200", NoImageError),
])
async def test_the_key_never_reaches_the_exception(canned, api, kind, status, cls):
    async with make_client(canned.url + "/v1", api, token=SECRET) as client:
        resp = await client.generate(ImageRequest("x", headers={"X-Kind": kind, "X-Status": status}))
    exc = resp.exception
    assert type(exc) is cls, exc
    blob = _everything(exc)
    assert SECRET not in blob and SECRET[4:16] not in blob, blob
    assert mask_token(SECRET) in exc.message               # the masked form is what shows
    assert exc.__traceback__ is None and exc.__context__ is None and exc.__cause__ is None
    try:
        resp.raise_for_error()
    except cls as raised:
        assert SECRET not in _everything(raised)
        assert raised is not exc and exc.__traceback__ is None   # a copy is raised; the stored one stays clean
    else:  # pragma: no cover
        pytest.fail("raise_for_error did not raise")


async def test_the_key_in_an_emulator_fault_message(emulator):
    resp = await run(emulator, "openai_images", f"401:message=the key {EMULATOR_TOKEN} is wrong")
    assert type(resp.exception) is AuthenticationError
    blob = _everything(resp.exception) + repr(resp) + resp.error
    assert EMULATOR_TOKEN not in blob and mask_token(EMULATOR_TOKEN) in resp.exception.message


# -- ImageResponse with an exception: repr, ==, pickle, raise_for_error, cache ------------------
async def test_response_repr_equality_and_pickle(emulator):
    resp = await run(emulator, "openai_images", "429:retry_after=0")
    assert isinstance(resp.exception, RateLimitError)
    assert "exception" not in repr(resp) and "RateLimitError" not in repr(resp)
    clone = pickle.loads(pickle.dumps(resp))
    assert type(clone.exception) is RateLimitError and clone.exception.message == resp.exception.message
    assert clone.exception.retry_after == resp.exception.retry_after
    assert clone == resp                       # the exception (compared by identity) is left out of ==
    assert copy.deepcopy(resp) == resp
    with pytest.raises(RateLimitError) as info:
        resp.raise_for_error()
    assert info.value.status == 429 and resp.error in str(info.value)
    ok = await run(emulator, "openai_images")
    assert ok.success and ok.exception is None and ok.raise_for_error() is ok
    assert pickle.loads(pickle.dumps(ok)) == ok
    # a response built without the field (older code, other modules) still works
    bare = ImageResponse(request_id="r", success=False, error="boom", status_code=500)
    assert bare.exception is None
    with pytest.raises(ImageAPIError):
        bare.raise_for_error()


async def test_a_cached_response_still_loads(emulator, tmp_path):
    req = ImageRequest("a cached fox", api_type="openai_images")
    async with make_client(emulator.base_url_for("openai_images"), "openai_images", cache=True,
                           cache_dir=str(tmp_path)) as client:
        first = await client.generate(req)
        second = await client.generate(req.replace())
    assert first.success and second.success and second.from_cache
    assert second.exception is None and second.artifacts[0].data == first.artifacts[0].data
    assert emulator.request_count == 1


async def test_a_partial_fan_out_keeps_the_images_and_the_typed_error(emulator):
    emulator.add_faults("403")
    async with make_client(emulator.base_url_for("openai_responses"), "openai_responses", max_concurrency=1) as c:
        resp = await c.generate(ImageRequest("x", n=2))
    assert resp.success and len(resp.artifacts) == 1 and len(resp.errors) == 1
    assert type(resp.exception) is PermissionDeniedError and resp.status_code == 403
