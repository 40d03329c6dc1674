"""The emulator over real HTTP on 127.0.0.1 (aiohttp.ClientSession; nothing patched)."""
from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import json
import subprocess
import sys
import time
import urllib.request
from typing import Any, Dict, Optional, Tuple

import aiohttp
import pytest
from PIL import Image

from _image_helpers import make_png
from conftest import EMULATOR_TOKEN
from jupyter_imagegen.emulator import Emulator, EmulatorThread, parse_fault, run_emulator_in_thread

AUTH = {"Authorization": f"Bearer {EMULATOR_TOKEN}"}
GEN = "/v1/images/generations"
EDITS = "/v1/images/edits"
RESP = "/v1/responses"
CHAT = "/api/v1/chat/completions"
#: the input image most edit tests send
BLUE_64 = make_png((64, 64), (0, 0, 255))


class Answer:
    def __init__(self, status: int, headers, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> Dict[str, Any]:
        return self.json["error"]


async def call(emu: Emulator, path: str, body: Any = None, *, headers: Optional[Dict[str, str]] = None,
               auth: bool = True, data: Any = None, timeout: float = 20) -> Answer:
    h = dict(AUTH) if auth else {}
    h.update(headers or {})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
        kw = {"data": data} if data is not None else {"json": body}
        async with s.post(emu.url + path, headers=h, **kw) as r:
            return Answer(r.status, r.headers, await r.read())


def decode(b64: str) -> Image.Image:
    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    return im


def from_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/")
    return decode(url.split(",", 1)[1])


def chat_body(prompt="a red fox", **extra) -> Dict[str, Any]:
    body = {"model": "google/gemini-2.5-flash-image", "modalities": ["image", "text"],
            "messages": [{"role": "user", "content": prompt}]}
    body.update(extra)
    return body


def edit_form(*images: Tuple[str, bytes, str], **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData(default_to_multipart=True)
    for name, data, ctype in images:
        form.add_field(name, data, filename="in" + {"image/png": ".png"}.get(ctype, ".bin"), content_type=ctype)
    for k, v in fields.items():
        form.add_field(k, v)
    return form


# -- OpenAI images: generations ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt,pil", [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
async def test_generations_size_and_format(emulator, fmt, pil):
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "a red fox", "size": "1536x1024",
                                   "output_format": fmt, "quality": "low"})
    assert a.status == 200, a.body
    j = a.json
    im = decode(j["data"][0]["b64_json"])
    assert im.format == pil and im.size == (1536, 1024)
    assert (j["size"], j["output_format"], j["quality"], j["background"]) == ("1536x1024", fmt, "low", "opaque")
    assert isinstance(j["created"], int)
    u = j["usage"]
    assert u["total_tokens"] == u["input_tokens"] + u["output_tokens"] and "input_tokens_details" in u
    assert a.headers["Content-Type"].startswith("application/json")


async def test_generations_n_images_differ_and_prompts_differ(emulator):
    a = await call(emulator, GEN, {"model": "gpt-image-1-mini", "prompt": "a red fox", "n": 3})
    datas = [d["b64_json"] for d in a.json["data"]]
    assert a.status == 200 and len(datas) == 3 and len(set(datas)) == 3
    assert all(decode(d).size == (1024, 1024) for d in datas)  # size "auto"
    b = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "a blue whale"})
    fox, whale = decode(datas[0]).convert("RGB"), decode(b.json["data"][0]["b64_json"]).convert("RGB")
    assert fox.getpixel((1000, 500)) != whale.getpixel((1000, 500)) or fox.getpixel((5, 600)) != whale.getpixel((5, 600))


async def test_transparent_background_is_rgba(emulator):
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "a logo", "background": "transparent"})
    im = decode(a.json["data"][0]["b64_json"])
    assert im.mode == "RGBA" and a.json["background"] == "transparent"
    assert im.getchannel("A").getextrema()[0] == 0


async def test_dalle3_revised_prompt_and_url_results(emulator):
    a = await call(emulator, GEN, {"model": "dall-e-3", "prompt": "a castle", "size": "1792x1024",
                                   "quality": "hd", "response_format": "b64_json"})
    assert a.status == 200, a.body
    item = a.json["data"][0]
    assert "a castle" in item["revised_prompt"] and decode(item["b64_json"]).size == (1792, 1024)
    assert "usage" not in a.json
    # dall-e-2 defaults to URL results, served from /files with the right content type
    b = await call(emulator, GEN, {"model": "dall-e-2", "prompt": "a kite", "size": "256x256"})
    url = b.json["data"][0]["url"]
    assert url.startswith(emulator.url + "/files/") and url.endswith(".png")
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 200 and r.content_type == "image/png"
        assert Image.open(io.BytesIO(await r.read())).size == (256, 256)
    async with aiohttp.ClientSession() as s, s.get(emulator.url + "/files/img-nope.png") as r:
        assert r.status == 404


async def test_every_prefix_serves_every_route(emulator):
    for prefix in ("", "/v1", "/api/v1"):
        a = await call(emulator, prefix + "/images/generations", {"model": "gpt-image-1", "prompt": "x",
                                                                  "quality": "low", "size": "1024x1024"})
        assert a.status == 200
        b = await call(emulator, prefix + "/chat/completions", chat_body())
        assert b.status == 200
        c = await call(emulator, prefix + "/responses", {"model": "gpt-4.1-mini", "input": "x"})
        assert c.status == 200
    d = await call(emulator, "/v1/nope", {})
    assert d.status == 404 and d.error["message"] == "Invalid URL (POST /v1/nope)"


# -- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("body,param,code,message", [
    ({"model": "gpt-image-1"}, "prompt", "missing_required_parameter", "Missing required parameter: 'prompt'."),
    ({"model": "gpt-image-1", "prompt": ""}, "prompt", "empty_string", "empty string"),
    ({"model": "gpt-image-1", "prompt": 5}, "prompt", "invalid_type", "expected a string"),
    ({"model": "gpt-image-1", "prompt": "x", "size": "999x999"}, "size", "invalid_value",
     "Invalid value: '999x999'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'."),
    ({"model": "dall-e-3", "prompt": "x", "size": "1536x1024"}, "size", "invalid_value", "'1792x1024'"),
    ({"model": "gpt-image-1", "prompt": "x", "colour": "red"}, "colour", "unknown_parameter",
     "Unknown parameter: 'colour'."),
    ({"model": "gpt-image-1", "prompt": "x", "response_format": "url"}, "response_format", "unknown_parameter",
     "Unknown parameter: 'response_format'."),
    ({"model": "dall-e-3", "prompt": "x", "output_format": "png"}, "output_format", "unknown_parameter", "Unknown"),
    ({"model": "gpt-image-1", "prompt": "x", "n": 0}, "n", "integer_below_min_value", "Expected a value >= 1"),
    ({"model": "gpt-image-1", "prompt": "x", "n": 11}, "n", "integer_above_max_value", "Expected a value <= 10"),
    ({"model": "gpt-image-1", "prompt": "x", "n": "2"}, "n", "invalid_type", "expected an integer"),
    ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n", "invalid_value", "n=1"),
    ({"model": "gpt-image-1", "prompt": "x", "output_format": "gif"}, "output_format", "invalid_value",
     "Supported values are: 'png', 'jpeg', and 'webp'."),
    ({"model": "gpt-image-1", "prompt": "x", "quality": "hd"}, "quality", "invalid_value", "'low'"),
    ({"model": "dall-e-3", "prompt": "x", "quality": "high"}, "quality", "invalid_value", "'hd'"),
    ({"model": "gpt-image-1", "prompt": "x", "output_compression": 101}, "output_compression",
     "integer_above_max_value", "<= 100"),
    ({"model": "gpt-image-1", "prompt": "x", "background": "transparent", "output_format": "jpeg"},
     "background", "invalid_value", "jpeg"),
    ({"model": "gpt-image-1", "prompt": "x", "background": "clear"}, "background", "invalid_value", "'transparent'"),
    ({"model": "sdxl", "prompt": "x"}, "model", "invalid_value", "Invalid value: 'sdxl'."),
])
async def test_generation_validation_errors(emulator, body, param, code, message):
    a = await call(emulator, GEN, body)
    assert a.status == 400, a.body
    err = a.error
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
    assert message in err["message"]


async def test_invalid_json_and_stream_hook(emulator):
    for path in (GEN, RESP):
        a = await call(emulator, path, data=b"{not json", headers={"Content-Type": "application/json"})
        assert a.status == 400 and "could not parse the JSON body" in a.error["message"]
    b = await call(emulator, CHAT, data=b"{not json", headers={"Content-Type": "application/json"})
    assert b.status == 400 and b.error["code"] == 400
    from jupyter_imagegen.emulator import STREAM_HANDLERS
    c = await call(emulator, GEN, {"model": "dall-e-2", "prompt": "x", "stream": True})
    assert c.status == 400 and c.error["param"] == "stream"
    if "openai_images" not in STREAM_HANDLERS:  # until SSE support lands
        d = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x", "stream": True})
        assert d.status == 400 and "streaming is not supported" in d.error["message"]
    if "openrouter_chat" not in STREAM_HANDLERS:
        e = await call(emulator, CHAT, chat_body(stream=True))
        assert e.status == 400 and e.error["code"] == 400 and "streaming" in e.error["message"]


# -- OpenAI images: edits -------------------------------------------------------------------------------
async def test_edit_one_image_derives_from_input(emulator):
    blue = make_png((300, 200), (0, 0, 255))
    a = await call(emulator, EDITS, data=edit_form(("image", blue, "image/png"), prompt="add a hat",
                                                   model="gpt-image-1", size="1024x1024", n="2"))
    assert a.status == 200, a.body
    ims = [decode(d["b64_json"]).convert("RGB") for d in a.json["data"]]
    assert len(ims) == 2 and all(im.size == (1024, 1024) for im in ims)
    small = ims[0].resize((64, 64)).tobytes()
    pixels = [small[i:i + 3] for i in range(0, len(small), 3)]
    blueish = sum(1 for r, g, b in pixels if b > 150 and r < 120 and g < 120)
    assert blueish > 0.2 * 64 * 64, "the input picture shows through"
    assert emulator.requests[-1]["input_images"] == 1


async def test_edit_two_images_and_repeated_image_field(emulator):
    for field in ("image[]", "image"):
        form = edit_form((field, make_png((400, 200), (255, 0, 0)), "image/png"),
                         (field, make_png((64, 64), (0, 255, 0)), "image/png"), prompt="combine", model="gpt-image-1.5",
                         output_format="jpeg")
        a = await call(emulator, EDITS, data=form)
        assert a.status == 200, a.body
        im = decode(a.json["data"][0]["b64_json"])
        assert im.format == "JPEG" and im.size == (1536, 1024)  # "auto" follows the landscape input
        assert emulator.requests[-1]["input_images"] == 2


async def test_edit_with_mask_and_json_body(emulator):
    mask = make_png((64, 64), (0, 0, 0, 0), "RGBA")
    a = await call(emulator, EDITS, data=edit_form(("image", BLUE_64, "image/png"), ("mask", mask, "image/png"),
                                                   prompt="sky", model="gpt-image-1"))
    assert a.status == 200, a.body
    bad_mask = make_png((32, 32), (0, 0, 0, 0), "RGBA")
    b = await call(emulator, EDITS, data=edit_form(("image", BLUE_64, "image/png"), ("mask", bad_mask, "image/png"),
                                                   prompt="sky", model="gpt-image-1"))
    assert b.status == 400 and b.error["param"] == "mask"
    url = "data:image/png;base64," + base64.b64encode(BLUE_64).decode()
    c = await call(emulator, EDITS, {"model": "gpt-image-1", "prompt": "sky", "images": [{"image_url": url}]})
    assert c.status == 200 and decode(c.json["data"][0]["b64_json"]).size == (1024, 1024)


async def test_edit_errors(emulator):
    a = await call(emulator, EDITS, data=edit_form(("image", b"just text", "text/plain"), prompt="x"))
    assert a.status == 400 and a.error["param"] == "image" and "unsupported mimetype ('text/plain')" in a.error["message"]
    b = await call(emulator, EDITS, data=edit_form(("image", BLUE_64, "application/octet-stream"), prompt="x"))
    assert b.status == 400 and "application/octet-stream" in b.error["message"]
    c = await call(emulator, EDITS, data=edit_form(("image", b"not really a png", "image/png"), prompt="x"))
    assert c.status == 400 and c.error["code"] == "invalid_image_file"
    d = await call(emulator, EDITS, data=edit_form(prompt="x", model="gpt-image-1"))
    assert d.status == 400 and d.error["message"] == "Missing required parameter: 'image'."
    e = await call(emulator, EDITS, data=edit_form(("image", BLUE_64, "image/png"), model="gpt-image-1"))
    assert e.status == 400 and e.error["param"] == "prompt"
    f = await call(emulator, EDITS, data=b"prompt=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert f.status == 400 and "Content-Type" in f.error["message"]
    g = await call(emulator, EDITS, data=edit_form(("image", BLUE_64, "image/png"), prompt="x", model="dall-e-2"))
    assert g.status == 400 and "RGBA" in g.error["message"]  # dall-e-2 wants RGBA/LA/L
    h = await call(emulator, EDITS, data=edit_form(("image", make_png((64, 64), (1, 2, 3, 255), "RGBA"), "image/png"),
                                                   prompt="x", model="dall-e-2", response_format="b64_json",
                                                   size="512x512"))
    assert h.status == 200 and decode(h.json["data"][0]["b64_json"]).size == (512, 512)


# -- OpenAI Responses --------------------------------------------------------------------------------------
async def test_responses_image_generation_call(emulator):
    body = {"model": "gpt-4.1-mini", "input": "a lighthouse",
            "tools": [{"type": "image_generation", "size": "1024x1536", "quality": "medium",
                       "output_format": "webp"}]}
    a = await call(emulator, RESP, body)
    assert a.status == 200, a.body
    j = a.json
    assert j["object"] == "response" and j["status"] == "completed" and j["id"].startswith("resp_")
    ig, msg = j["output"]
    assert ig["type"] == "image_generation_call" and ig["id"].startswith("ig_") and ig["status"] == "completed"
    assert (ig["size"], ig["quality"], ig["output_format"], ig["background"]) == ("1024x1536", "medium", "webp", "opaque")
    im = decode(ig["result"])
    assert im.format == "WEBP" and im.size == (1024, 1536) and ig["revised_prompt"]
    assert msg["type"] == "message" and msg["content"][0]["type"] == "output_text"
    assert j["usage"]["total_tokens"] == j["usage"]["input_tokens"] + j["usage"]["output_tokens"]


async def test_responses_with_input_image_and_text_only(emulator):
    url = "data:image/png;base64," + base64.b64encode(make_png((200, 400), (0, 0, 255))).decode()
    body = {"model": "gpt-4.1", "tools": [{"type": "image_generation"}],
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "make it night"},
                                                   {"type": "input_image", "image_url": url}]}]}
    a = await call(emulator, RESP, body)
    assert a.status == 200, a.body
    ig = a.json["output"][0]
    assert ig["action"] == "edit" and decode(ig["result"]).size == (1024, 1536)
    assert emulator.requests[-1]["input_images"] == 1 and emulator.requests[-1]["prompt"] == "make it night"
    # without the tool: a text message only
    b = await call(emulator, RESP, {"model": "gpt-4.1-mini", "input": "a lighthouse"})
    assert [o["type"] for o in b.json["output"]] == ["message"]


@pytest.mark.parametrize("body,param", [
    ({"input": "x"}, "model"),
    ({"model": "gpt-4.1", "input": "x", "foo": 1}, "foo"),
    ({"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "size": "10x10"}]}, "tools[0].size"),
    ({"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "quality": "hd"}]}, "tools[0].quality"),
    ({"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "output_format": "gif"}]},
     "tools[0].output_format"),
    ({"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "partial_images": 4}]},
     "tools[0].partial_images"),
    ({"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "model": "dall-e-3"}]},
     "tools[0].model"),
    ({"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "colour": "red"}]}, "tools[0].colour"),
    ({"model": "gpt-4.1", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:nope"}]}],
      "tools": [{"type": "image_generation"}]}, "input[0].content[0].image_url"),
    ({"model": "not-a-model", "input": "x"}, "model"),
    ({"model": "gpt-4.1", "input": "x", "temperature": "hot"}, "temperature"),
    ({"model": "gpt-4.1", "input": "x", "previous_response_id": "resp_unknown"}, "previous_response_id"),
    ({"model": "gpt-4.1", "input": 5}, "input"),
])
async def test_responses_validation(emulator, body, param):
    a = await call(emulator, RESP, body)
    assert a.status == 400, a.body
    assert a.error["param"] == param and a.error["type"] == "invalid_request_error"


async def test_responses_previous_response_id(emulator):
    a = await call(emulator, RESP, {"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation",
                                                                                "quality": "low"}]})
    prev = a.json["id"]
    b = await call(emulator, RESP, {"model": "gpt-4.1", "previous_response_id": prev, "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "now in blue"}]}],
        "tools": [{"type": "image_generation", "quality": "low"}]})
    assert b.status == 200 and b.json["previous_response_id"] == prev


async def test_stream_hook_is_used_when_registered(emulator):
    from aiohttp import web
    from jupyter_imagegen.emulator import STREAM_HANDLERS, register_stream_handler

    async def fake_sse(c, params):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(c.request)
        gens = await c.draw([])  # the helpers are there for a real implementation
        await resp.write(f"data: {json.dumps({'api': c.api, 'prompt': params['prompt'], 'n': len(gens)})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    old = STREAM_HANDLERS.pop("openrouter_chat", None)
    register_stream_handler("openrouter_chat", fake_sse)
    try:
        a = await call(emulator, CHAT, chat_body("streamed", stream=True))
        assert a.status == 200 and a.headers["Content-Type"] == "text/event-stream"
        assert b'"prompt": "streamed"' in a.body and a.body.endswith(b"data: [DONE]\n\n")
    finally:
        STREAM_HANDLERS.pop("openrouter_chat", None)
        if old is not None:
            STREAM_HANDLERS["openrouter_chat"] = old


# -- OpenRouter chat ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,size", [("1:1", (1024, 1024)), ("16:9", (1344, 768)), ("9:16", (768, 1344)),
                                        ("3:2", (1248, 832)), ("2:3", (832, 1248)), ("4:3", (1184, 864)),
                                        ("3:4", (864, 1184)), ("4:5", (896, 1152)), ("5:4", (1152, 896)),
                                        ("21:9", (1536, 672))])
async def test_chat_aspect_ratio_sizes(emulator, ratio, size):
    a = await call(emulator, CHAT, chat_body(image_config={"aspect_ratio": ratio}))
    assert a.status == 200, a.body
    msg = a.json["choices"][0]["message"]
    assert len(msg["images"]) == 1 and msg["images"][0]["type"] == "image_url"
    im = from_data_url(msg["images"][0]["image_url"]["url"])
    assert im.size == size and im.format == "PNG"


async def test_chat_shape_text_only_and_input_images(emulator):
    a = await call(emulator, CHAT, chat_body("a red fox"))
    j = a.json
    assert j["object"] == "chat.completion" and j["id"].startswith("gen-") and j["model"] == "google/gemini-2.5-flash-image"
    ch = j["choices"][0]
    assert ch["finish_reason"] == "stop" and ch["message"]["role"] == "assistant"
    assert ch["message"]["content"] == "Here is an image of a red fox."
    assert j["usage"]["total_tokens"] == j["usage"]["prompt_tokens"] + j["usage"]["completion_tokens"]
    b = await call(emulator, CHAT, chat_body(modalities=["text"]))
    assert b.status == 200 and "images" not in b.json["choices"][0]["message"]
    c = await call(emulator, CHAT, chat_body(image_config={"aspect_ratio": "1:1", "image_size": "2K"}))
    assert from_data_url(c.json["choices"][0]["message"]["images"][0]["image_url"]["url"]).size == (2048, 2048)
    url = "data:image/png;base64," + base64.b64encode(BLUE_64).decode()
    d = await call(emulator, CHAT, {"model": "google/gemini-2.5-flash-image", "modalities": ["image", "text"],
                                    "messages": [{"role": "user", "content": [{"type": "text", "text": "make it red"},
                                                                              {"type": "image_url", "image_url": {"url": url}}]}]})
    assert d.status == 200 and emulator.requests[-1]["input_images"] == 1
    # the same prompt twice still gives two different images (a fan-out of n calls)
    e1, e2 = (await call(emulator, CHAT, chat_body("same")), await call(emulator, CHAT, chat_body("same")))
    assert e1.json["choices"][0]["message"]["images"] != e2.json["choices"][0]["message"]["images"]


@pytest.mark.parametrize("body,status,text", [
    ({"model": "google/gemini-2.5-flash-image"}, 400, 'specify "prompt" or "messages"'),
    (chat_body(model="gemini"), 400, "gemini is not a valid model ID"),
    (chat_body(model="openai/gpt-4o"), 404, "No endpoints found that support the requested output modalities"),
    (chat_body(image_config={"aspect_ratio": "7:3"}), 400, "Provider returned error"),
    (chat_body(messages=[{"role": "robot", "content": "x"}]), 400, "role"),
    ({**chat_body(), "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     400, "Provider returned error"),
    ({**chat_body(), "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "data:image/png;base64,AAAA"}]}]},
     400, "image_url must be an object"),
    (chat_body(temperature="hot"), 400, "'temperature' must be a number"),
    (chat_body(messages=[]), 400, "non-empty"),
    (chat_body(messages=[{"role": "user"}]), 400, "content is required"),
])
async def test_chat_errors_in_openrouter_shape(emulator, body, status, text):
    a = await call(emulator, CHAT, body)
    assert a.status == status, a.body
    assert a.error["code"] == status and text in a.error["message"]


# -- auth ---------------------------------------------------------------------------------------------------
async def test_auth_openai_shape_masks_the_key(emulator):
    wrong = "sk-wrong-token-abcdefghijkl1234"
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"}, headers={"Authorization": f"Bearer {wrong}"})
    assert a.status == 401
    err = a.error
    assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error" and err["param"] is None
    assert err["message"].startswith("Incorrect API key provided: sk-w") and "1234." in err["message"]
    assert wrong not in a.body.decode() and "*" in err["message"]
    b = await call(emulator, RESP, {"model": "gpt-4.1", "input": "x"}, auth=False)
    assert b.status == 401 and "You didn't provide an API key" in b.error["message"]


async def test_auth_openrouter_shape_and_any_token_mode(emulator):
    a = await call(emulator, CHAT, chat_body(), auth=False)
    assert a.status == 401 and a.error == {"code": 401, "message": "No auth credentials found"}
    b = await call(emulator, CHAT, chat_body(), headers={"Authorization": "Bearer sk-or-wrong-000000000"})
    assert b.status == 401 and b.error["code"] == 401
    async with Emulator() as anyone:  # no token configured: any non-empty bearer
        c = await call(anyone, CHAT, chat_body(), headers={"Authorization": "Bearer whatever"})
        assert c.status == 200
        d = await call(anyone, CHAT, chat_body(), auth=False)
        assert d.status == 401


async def test_request_log_never_holds_the_token(emulator):
    await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "logged prompt", "quality": "low"})
    await call(emulator, CHAT, chat_body(), headers={"Authorization": "Bearer sk-another-secret-999999"})
    log = emulator.requests
    assert emulator.request_count == 2 and len(log) == 2
    first = log[0]
    assert (first["path"], first["model"], first["prompt"], first["status"], first["auth"]) == \
        (GEN, "gpt-image-1", "logged prompt", 200, "ok")
    assert log[1]["auth"] == "rejected" and log[1]["status"] == 401
    async with aiohttp.ClientSession() as s, s.get(emulator.url + "/_emulator/requests") as r:
        text = await r.text()
    assert json.loads(text)["count"] == 2
    for blob in (text, repr(log)):
        assert EMULATOR_TOKEN not in blob and "sk-another-secret" not in blob
        assert "authorization" not in blob.lower()
    # a prompt quoting the token, and key-like headers, are scrubbed too
    await call(emulator, GEN, {"model": "gpt-image-1", "prompt": f"my key is {EMULATOR_TOKEN}", "quality": "low"},
               headers={"X-Api-Key": "sk-header-secret-0000", "X-Title": "tests"})
    last = emulator.requests[-1]
    assert EMULATOR_TOKEN not in repr(last) and "sk-header-secret" not in repr(last)
    assert last["headers"]["X-Title"] == "tests" and "my key is sk-t" in last["prompt"]


# -- faults -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 409, 500, 502, 503, 504])
async def test_status_faults_in_vendor_shapes(emulator, status):
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"}, headers={"X-Emulator-Fault": str(status)})
    assert a.status == status
    assert set(a.error) == {"message", "type", "param", "code"} and a.error["message"]
    b = await call(emulator, CHAT + f"?fault={status}", chat_body())
    assert b.status == status and b.error["code"] == status and b.error["message"]


async def test_429_retry_after_forms(emulator):
    body = {"model": "gpt-image-1", "prompt": "x"}
    a = await call(emulator, GEN, body, headers={"X-Emulator-Fault": "429:retry_after=2"})
    assert a.status == 429 and a.headers["Retry-After"] == "2"
    assert a.error["code"] == "rate_limit_exceeded" and "Rate limit" in a.error["message"]
    b = await call(emulator, GEN, body, headers={"X-Emulator-Fault": "429:retry_after_date=5"})
    when = email.utils.parsedate_to_datetime(b.headers["Retry-After"]).timestamp()
    assert 2 <= when - time.time() <= 7
    c = await call(emulator, GEN, body, headers={"X-Emulator-Fault": "429:retry_after_ms=150"})
    assert c.headers["retry-after-ms"] == "150" and "Retry-After" not in c.headers
    d = await call(emulator, GEN, body, headers={"X-Emulator-Fault": "429"})
    assert d.status == 429 and "Retry-After" not in d.headers and "retry-after-ms" not in d.headers
    e = await call(emulator, CHAT, chat_body(), headers={"X-Emulator-Fault": "429:retry_after=1"})
    assert e.status == 429 and e.headers["Retry-After"] == "1" and e.error["code"] == 429


async def test_html_fault(emulator):
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"}, headers={"X-Emulator-Fault": "html"})
    assert a.status == 502 and a.headers["Content-Type"].startswith("text/html")
    assert b"<html>" in a.body and b"502 Bad Gateway" in a.body


async def test_reset_fault_drops_the_connection(emulator):
    with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"}, headers={"X-Emulator-Fault": "reset"})
    assert emulator.requests[-1]["fault"] == "reset" and emulator.requests[-1]["status"] is None
    ok = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x", "quality": "low"})
    assert ok.status == 200, "the server keeps serving"


async def test_reset_after_headers_fault(emulator):
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)):
        await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"},
                   headers={"X-Emulator-Fault": "reset_after_headers"})


async def test_truncate_and_invalid_json_faults(emulator):
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"}, headers={"X-Emulator-Fault": "truncate"})
    assert a.status == 200 and int(a.headers["Content-Length"]) == len(a.body)
    assert b'"b64_json": "iVBOR' in a.body  # cut inside the base64
    with pytest.raises(ValueError):
        json.loads(a.body)
    b = await call(emulator, CHAT, chat_body(), headers={"X-Emulator-Fault": "truncate"})
    assert b"data:image/png;base64,iVBOR" in b.body
    with pytest.raises(ValueError):
        json.loads(b.body)
    c = await call(emulator, RESP, {"model": "gpt-4.1", "input": "x"}, headers={"X-Emulator-Fault": "invalid_json"})
    assert c.status == 200 and c.headers["Content-Type"].startswith("application/json")
    with pytest.raises(ValueError):
        json.loads(c.body)


async def test_no_image_fault_in_each_shape(emulator):
    h = {"X-Emulator-Fault": "no_image"}
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x"}, headers=h)
    assert a.status == 200 and a.json["data"] == []
    b = await call(emulator, CHAT, chat_body(), headers=h)
    msg = b.json["choices"][0]["message"]
    assert msg["content"] == "I can't draw that." and not msg.get("images")
    c = await call(emulator, RESP, {"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation"}]},
                   headers=h)
    assert [o["type"] for o in c.json["output"]] == ["message"]


async def test_slow_faults(emulator):
    t0 = time.monotonic()
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x", "quality": "low"},
                   headers={"X-Emulator-Fault": "slow_headers:delay=0.4"})
    assert a.status == 200 and time.monotonic() - t0 >= 0.4
    # slow_body: the headers come at once, the body stalls mid-way
    async with aiohttp.ClientSession() as s:
        t0 = time.monotonic()
        async with s.post(emulator.url + GEN, json={"model": "gpt-image-1", "prompt": "x"},
                          headers={**AUTH, "X-Emulator-Fault": "slow_body:delay=0.6"}) as r:
            t_headers = time.monotonic() - t0
            body = await r.read()
            t_body = time.monotonic() - t0
    assert r.status == 200 and t_headers < 0.5 and t_body >= 0.6
    assert decode(json.loads(body)["data"][0]["b64_json"]).size == (1024, 1024)
    # ...and a client read timeout fires during the stall
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=0.2)) as s:
            async with s.post(emulator.url + GEN, json={"model": "gpt-image-1", "prompt": "x"},
                              headers={**AUTH, "X-Emulator-Fault": "slow_body:delay=1"}) as r:
                await r.read()


async def test_url_fault(emulator):
    a = await call(emulator, GEN, {"model": "gpt-image-1", "prompt": "x", "output_format": "webp"},
                   headers={"X-Emulator-Fault": "url"})
    url = a.json["data"][0]["url"]
    assert "b64_json" not in a.json["data"][0] and url.endswith(".webp")
    b = await call(emulator, CHAT, chat_body(), headers={"X-Emulator-Fault": "url"})
    url2 = b.json["choices"][0]["message"]["images"][0]["image_url"]["url"]
    assert url2.startswith("http://127.0.0.1:") and "/files/" in url2
    async with aiohttp.ClientSession() as s:
        for u, ctype in ((url, "image/webp"), (url2, "image/png")):
            async with s.get(u) as r:
                assert r.status == 200 and r.content_type == ctype
                Image.open(io.BytesIO(await r.read())).load()
    # an input image given as an emulator /files URL is used as such
    c = await call(emulator, CHAT, {**chat_body(), "messages": [{"role": "user", "content": [
        {"type": "text", "text": "again"}, {"type": "image_url", "image_url": {"url": url2}}]}]})
    assert c.status == 200, c.body


async def test_fault_queue_order_noop_and_http_control(emulator):
    body = {"model": "gpt-image-1", "prompt": "x", "quality": "low"}
    emulator.add_faults("429:retry_after=1", "ok", "503")
    assert emulator.pending_faults == ["429:retry_after=1", "ok", "503"]
    statuses = [(await call(emulator, GEN, body)).status for _ in range(4)]
    assert statuses == [429, 200, 503, 200]
    assert [r["fault"] for r in emulator.requests] == ["429:retry_after=1", "ok", "503", None]
    # a header fault wins and leaves the queue alone
    emulator.add_faults("500")
    assert (await call(emulator, GEN, body, headers={"X-Emulator-Fault": "404"})).status == 404
    assert emulator.pending_faults == ["500"]
    async with aiohttp.ClientSession() as s:
        async with s.post(emulator.url + "/_emulator/faults", json={"faults": ["502", "html"]}) as r:
            assert (await r.json())["pending_faults"] == ["500", "502", "html"]
        async with s.post(emulator.url + "/_emulator/faults", json={"faults": ["nonsense"]}) as r:
            assert r.status == 400
        assert [(await call(emulator, GEN, body)).status for _ in range(3)] == [500, 502, 502]
        async with s.post(emulator.url + "/_emulator/faults", json={"faults": ["503"]}) as r:
            pass
        async with s.post(emulator.url + "/_emulator/reset") as r:
            assert r.status == 200
        async with s.get(emulator.url + "/_emulator/health") as r:
            h = await r.json()
    assert h["status"] == "ok" and h["pending_faults"] == [] and h["requests"] == 0
    assert emulator.request_count == 0 and (await call(emulator, GEN, body)).status == 200
    bad = await call(emulator, GEN, body, headers={"X-Emulator-Fault": "explode"})
    assert bad.status == 400 and "fault" in bad.error["message"]


def test_parse_fault_specs():
    f = parse_fault("429:retry_after=2,message=slow down")
    assert f.status == 429 and f.params == {"retry_after": "2", "message": "slow down"}
    assert parse_fault("slow_body:delay=0.5").number("delay", 2) == 0.5
    for bad in ("", "teapot", "418x", "302", "slow_body:speed=1", "429:retry_after=-1", "reset:x=1"):
        with pytest.raises(ValueError):
            parse_fault(bad)


async def test_latency_option():
    async with Emulator(latency=0.3) as emu:
        t0 = time.monotonic()
        a = await call(emu, RESP, {"model": "gpt-4.1", "input": "x"}, headers={"Authorization": "Bearer t"})
        assert a.status == 200 and time.monotonic() - t0 >= 0.3


# -- running it ------------------------------------------------------------------------------------------------
def test_emulator_thread_from_sync_code():
    t = EmulatorThread(token="sk-thread-token-000000000").start()
    try:
        assert t.url.startswith("http://127.0.0.1:") and t.base_url_for("openrouter_chat") == t.url + "/api/v1"
        assert t.base_url_for("openai_images") == t.openai_base_url == t.url + "/v1"
        t.add_faults("503")
        req = urllib.request.Request(t.base_url_for("openai_images") + "/images/generations",
                                     data=json.dumps({"model": "gpt-image-1", "prompt": "x", "quality": "low"}).encode(),
                                     headers={"Authorization": "Bearer sk-thread-token-000000000",
                                              "Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=10)
        assert ei.value.code == 503
        ei.value.close()
        with urllib.request.urlopen(req, timeout=10) as r:
            assert len(json.loads(r.read())["data"]) == 1
        assert t.request_count == 2 and [r["status"] for r in t.requests] == [503, 200]
    finally:
        t.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(t.url + "/_emulator/health", timeout=2)
    with run_emulator_in_thread() as t2:
        with urllib.request.urlopen(t2.url + "/_emulator/health", timeout=5) as r:
            assert json.loads(r.read())["status"] == "ok"


def test_cli_prints_its_url_and_serves():
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_imagegen.emulator", "--port", "0", "--token", "sk-cli-1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("jupyter-imagegen emulator listening on http://127.0.0.1:"), (line, proc.stderr.read())
        url = line.rsplit(" ", 1)[1]
        with urllib.request.urlopen(url + "/_emulator/health", timeout=5) as r:
            assert json.loads(r.read())["auth"] == "token"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # waits and closes the pipes
    assert proc.returncode == 0


async def test_base_urls(emulator):
    assert emulator.openai_base_url == emulator.url + "/v1"
    assert emulator.openrouter_base_url == emulator.url + "/api/v1"
    assert emulator.base_url_for("openai_responses") == emulator.url + "/v1"
    with pytest.raises(ValueError):
        emulator.base_url_for("midjourney")


async def test_no_body_makes_it_answer_5xx(emulator):
    """Odd values in every known field get a 4xx (or a 200), never an emulator crash."""
    from jupyter_imagegen.emulator.validate import CHAT_TYPES, GENERATION_PARAMS, IMAGE_TOOL_PARAMS, RESPONSES_PARAMS
    odd = [None, True, -1, 1.5, "", [], {}, [{}], {"a": {}}]
    cases = []
    for k in GENERATION_PARAMS:
        cases += [(GEN, {"prompt": "x", "model": "gpt-image-1", "quality": "low", k: v}) for v in odd]
    for k in ("images", "mask", "size", "n"):
        cases += [(EDITS, {"prompt": "x", "model": "gpt-image-1", "images": [{"image_url": "http://example.invalid/a.png"}],
                           k: v}) for v in odd]
    for k in RESPONSES_PARAMS:
        cases += [(RESP, {"model": "gpt-4.1", "input": "x", k: v}) for v in odd]
    for k in IMAGE_TOOL_PARAMS:
        cases += [(RESP, {"model": "gpt-4.1", "input": "x", "tools": [{"type": "image_generation", "quality": "low", k: v}]})
                  for v in odd]
    for k in list(CHAT_TYPES):
        cases += [(CHAT, {**chat_body(), k: v}) for v in odd]
    for v in odd:
        cases += [(CHAT, chat_body(image_config={"aspect_ratio": v})), (CHAT, chat_body(messages=[v])),
                  (CHAT, chat_body(messages=[{"role": "user", "content": [v]}])),
                  (RESP, {"model": "gpt-4.1", "input": [{"role": "user", "content": [v]}]})]
        cases += [(path, v) for path in (GEN, EDITS, RESP, CHAT)]
    async with aiohttp.ClientSession(headers=AUTH) as s:
        async def status(path, body):
            async with s.post(emulator.url + path, json=body) as r:
                await r.read()
                return r.status
        got = [(await status(p, b), p, b) for p, b in cases]
    assert [g for g in got if g[0] >= 500] == []


async def test_stop_ends_handlers_still_sleeping_in_a_fault():
    """A handler sleeping in slow_headers must not outlive stop() (no task left pending)."""
    emu = Emulator(token="sk-stop-test-0123456789abcdef")
    await emu.start()
    emu.add_faults("slow_headers:delay=30")
    async with aiohttp.ClientSession() as s:
        with pytest.raises(asyncio.TimeoutError):
            await s.post(emu.openai_base_url + "/images/generations", json={"prompt": "x", "model": "gpt-image-1"},
                         headers={"Authorization": "Bearer sk-stop-test-0123456789abcdef"},
                         timeout=aiohttp.ClientTimeout(total=0.2))
    await emu.stop()
    # what stop() cancelled unwinds within a few loop turns; the 30 s sleeper would still be there
    deadline = time.monotonic() + 1.0
    while (left := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert left == [], left


# -- what the pictures say --------------------------------------------------------------------------------
async def test_n1_answers_are_not_all_stamped_number_one(emulator):
    """A client fans `-n 4` out into four n=1 calls (chat, responses): each picture used to say "#1"
    while the gallery said #1-#4. The index is stamped only when the request asked for several."""
    from jupyter_imagegen.emulator.images import RenderSpec, stamp_text

    chats = [await call(emulator, CHAT, chat_body("a red fox")) for _ in range(2)]
    assert all(a.status == 200 for a in chats)
    chat_stamps = [e["stamps"] for e in emulator.requests[-2:]]
    resp = await call(emulator, RESP, {"model": "gpt-4.1", "input": "a red fox",
                                       "tools": [{"type": "image_generation"}]})
    assert resp.status == 200, resp.body
    resp_stamps = emulator.requests[-1]["stamps"]
    for stamps in chat_stamps + [resp_stamps]:
        assert len(stamps) == 1 and stamps[0] != "#1" and stamps[0].startswith("call ")
    assert len({s[0] for s in chat_stamps + [resp_stamps]}) == 3        # a per-emulator call counter
    # ...and the pictures of different calls differ
    urls = [a.json["choices"][0]["message"]["images"][0]["image_url"]["url"] for a in chats]
    assert urls[0] != urls[1]
    # a seed stamps the seed (deterministic: the same bytes every time)
    s1, s2 = [await call(emulator, CHAT, chat_body("a red fox", seed=42)) for _ in range(2)]
    assert emulator.requests[-1]["stamps"] == emulator.requests[-2]["stamps"] == ["seed 42"]
    assert (s1.json["choices"][0]["message"]["images"][0]["image_url"]["url"]
            == s2.json["choices"][0]["message"]["images"][0]["image_url"]["url"])
    # a request for several images does number them
    g = await call(emulator, GEN, {"model": "gpt-image-1-mini", "prompt": "a red fox", "n": 3})
    assert g.status == 200 and emulator.requests[-1]["stamps"] == ["#1", "#2", "#3"]
    one = await call(emulator, GEN, {"model": "gpt-image-1-mini", "prompt": "a red fox"})
    assert one.status == 200 and emulator.requests[-1]["stamps"][0].startswith("call ")
    assert stamp_text(RenderSpec("x", 8, 8, index=1, count=2)) == "#2"
    assert stamp_text(RenderSpec("x", 8, 8, index=0, count=1, variant=7)) == "call 7"


async def test_edit_text_is_readable_on_a_white_input(emulator):
    """The footer was drawn in white straight onto the input: a white sketch gave blank text. It now
    sits on a dark band (shapes over an edit are faint: alone they never get darker than ~145)."""
    white = make_png((300, 300), (255, 255, 255))
    a = await call(emulator, EDITS, data=edit_form(("image", white, "image/png"), prompt="colour it in",
                                                   model="gpt-image-1", size="1024x1024"))
    assert a.status == 200, a.body
    im = decode(a.json["data"][0]["b64_json"]).convert("L")
    assert im.size == (1024, 1024)
    # the footer line: pad = 1024 // 40 = 25, font 21 px, text from x = 50 at y = 1024 - 25 - 27
    region = im.crop((50, 975, 350, 995))
    px = list(region.tobytes())
    dark = sum(1 for v in px if v < 110)
    assert dark > 0.4 * len(px), f"only {dark} of {len(px)} footer pixels are dark"
    assert sum(px) / len(px) < 150
    assert max(px) > 200                                   # the white text is there, on the band
