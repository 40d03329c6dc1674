"""Streaming (issue 8) over real HTTP on 127.0.0.1: the emulator's SSE wire shapes, the client's
partial-image events, broken / failing / cancelled streams, and the display updated in place."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
import pytest
from PIL import Image, ImageChops, ImageStat

from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.emulator import STREAM_HANDLERS
from jupyter_imagegen.events import PARTIAL_IMAGE

from _image_helpers import make_png
from _magic_helpers import recording_display

TOKEN = "sk-stream-test-SECRET-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APIS = ("openai_images", "openai_responses", "openrouter_chat")
PARTIAL_APIS = ("openai_images", "openai_responses")


def make_client(emu, api_type: str, **kw) -> ImageClient:
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 20)
    return ImageClient(ImageConfig(api_type=api_type, base_url=emu.base_url_for(api_type), token=TOKEN, **kw))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


class Recorder:
    def __init__(self):
        self.events = []
        self.times: List[float] = []
        self.first_partial = asyncio.Event()

    def __call__(self, event):
        self.events.append(event)
        self.times.append(time.monotonic())
        if event.type == PARTIAL_IMAGE:
            self.first_partial.set()

    def types(self) -> List[str]:
        return [e.type for e in self.events]

    def of(self, t: str):
        return [e for e in self.events if e.type == t]


# -- raw SSE reading (no client code involved) -----------------------------------------------------------
async def raw_stream(url: str, *, json_body=None, data=None, headers=None
                     ) -> Tuple[int, Dict[str, str], List[Tuple[Optional[str], str, float]], List[str], bytes]:
    """POST and split the SSE body: [(event name, data, arrival time)], comment lines, raw body."""
    frames: List[Tuple[Optional[str], str, float]] = []
    comments: List[str] = []
    async with aiohttp.ClientSession() as s:
        async with s.post(url, json=json_body, data=data, headers={**AUTH, **(headers or {})}) as r:
            buf = b""
            raw = b""
            async for chunk in r.content.iter_any():
                raw += chunk
                buf += chunk
                while b"\n\n" in buf:
                    block, buf = buf.split(b"\n\n", 1)
                    name, datas = None, []
                    for line in block.decode().split("\n"):
                        if line.startswith(":"):
                            comments.append(line)
                        elif line.startswith("event: "):
                            name = line[len("event: "):]
                        elif line.startswith("data: "):
                            datas.append(line[len("data: "):])
                    if datas:
                        frames.append((name, "\n".join(datas), time.monotonic()))
            return r.status, dict(r.headers), frames, comments, raw


GEN_BODY = {"model": "gpt-image-1", "prompt": "a lighthouse at dusk", "stream": True}


# ====================================================================================================
# the emulator's wire shapes
# ====================================================================================================
async def test_stream_handlers_are_registered(emulator):
    assert {"openai_images", "openai_edits", "openai_responses", "openrouter_chat"} <= set(STREAM_HANDLERS)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
async def test_images_stream_shape(emulator, k):
    status, headers, frames, comments, raw = await raw_stream(
        emulator.openai_base_url + "/images/generations",
        json_body={**GEN_BODY, "partial_images": k, "size": "1536x1024"})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert raw.startswith(b"event: image_generation.") and raw.endswith(b"}\n\n")
    names = [f[0] for f in frames]
    assert names == ["image_generation.partial_image"] * k + ["image_generation.completed"]
    payloads = [json.loads(f[1]) for f in frames]
    assert [p["type"] for p in payloads] == names, "event: name and data.type agree"
    common = {"b64_json", "created_at", "size", "quality", "background", "output_format"}
    for i, p in enumerate(payloads[:-1]):
        assert set(p) == common | {"type", "partial_image_index"} and p["partial_image_index"] == i
    final = payloads[-1]
    assert set(final) == common | {"type", "usage"}
    assert final["size"] == "1536x1024" and final["output_format"] == "png"
    assert {"input_tokens", "output_tokens", "total_tokens", "input_tokens_details"} <= set(final["usage"])
    # every partial is a real image of the final size, and each is closer to the final than the one before
    images = [decode(base64.b64decode(p["b64_json"])).convert("RGB") for p in payloads]
    assert all(im.size == (1536, 1024) for im in images)
    diffs = [sum(ImageStat.Stat(ImageChops.difference(im, images[-1])).mean) for im in images[:-1]]
    assert diffs == sorted(diffs, reverse=True) and all(d > 0 for d in diffs)
    assert emulator.requests[-1]["outcome"] == "stream_completed" and emulator.requests[-1]["stream_events"] == k + 1


async def test_edits_stream_uses_image_edit_events(emulator):
    form = aiohttp.FormData()
    form.add_field("image", make_png((300, 200), (0, 0, 255)), filename="in.png", content_type="image/png")
    for k, v in {"prompt": "make it red", "model": "gpt-image-1", "stream": "true", "partial_images": "2"}.items():
        form.add_field(k, v)
    status, headers, frames, _, _ = await raw_stream(emulator.openai_base_url + "/images/edits", data=form)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert [f[0] for f in frames] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    final = json.loads(frames[-1][1])
    assert final["size"] == "1536x1024", "auto size follows the wide input"
    assert final["usage"]["input_tokens_details"]["image_tokens"] > 0


async def test_responses_stream_shape(emulator):
    body = {"model": "gpt-4.1-mini", "input": "a red fox", "stream": True,
            "tools": [{"type": "image_generation", "partial_images": 2, "size": "1024x1536"}],
            "tool_choice": {"type": "image_generation"}}
    status, headers, frames, _, _ = await raw_stream(emulator.openai_base_url + "/responses", json_body=body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    names = [f[0] for f in frames]
    assert names == [
        "response.created", "response.in_progress", "response.output_item.added",
        "response.image_generation_call.in_progress", "response.image_generation_call.generating",
        "response.image_generation_call.partial_image", "response.image_generation_call.partial_image",
        "response.image_generation_call.completed", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    payloads = [json.loads(f[1]) for f in frames]
    assert [p["type"] for p in payloads] == names
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert payloads[0]["response"]["status"] == "in_progress" and payloads[0]["response"]["output"] == []
    item_id = payloads[2]["item"]["id"]
    partials = [p for p in payloads if p["type"].endswith(".partial_image")]
    for i, p in enumerate(partials):
        assert {"output_index", "item_id", "sequence_number", "partial_image_index", "partial_image_b64"} <= set(p)
        assert p["item_id"] == item_id and p["output_index"] == 0 and p["partial_image_index"] == i
        assert decode(base64.b64decode(p["partial_image_b64"])).size == (1024, 1536)
    done = payloads[-1]["response"]
    assert done["status"] == "completed" and done["usage"]["total_tokens"] > 0
    call = done["output"][0]
    assert call["type"] == "image_generation_call" and call["id"] == item_id and call["status"] == "completed"
    assert payloads[8]["item"]["result"] == call["result"], "output_item.done carries the same image"
    assert done["output"][1]["content"][0]["text"] == payloads[12]["text"]
    # the streamed response can be continued like a plain one
    async with aiohttp.ClientSession() as s:
        async with s.post(emulator.openai_base_url + "/responses", headers=AUTH,
                          json={"model": "gpt-4.1-mini", "input": "again", "previous_response_id": done["id"]}) as r:
            assert r.status == 200


async def test_chat_stream_shape(emulator):
    body = {"model": "google/gemini-2.5-flash-image", "messages": [{"role": "user", "content": "a fox"}],
            "modalities": ["image", "text"], "stream": True, "image_config": {"aspect_ratio": "16:9"}}
    status, headers, frames, comments, raw = await raw_stream(emulator.openrouter_base_url + "/chat/completions",
                                                             json_body=body)
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert b"\nevent:" not in raw and not raw.startswith(b"event:"), "OpenRouter sends data: lines only"
    assert comments == [": OPENROUTER PROCESSING"]
    assert frames[-1][1] == "[DONE]" and raw.endswith(b"data: [DONE]\n\n")
    chunks = [json.loads(f[1]) for f in frames[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    images = [img for c in chunks for img in c["choices"][0]["delta"].get("images", [])]
    assert len(images) == 1 and images[0]["type"] == "image_url"
    url = images[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert decode(base64.b64decode(url.split(",", 1)[1])).size == (1344, 768)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["usage"]["total_tokens"] > 0
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks).startswith("Here is")


async def test_dalle_still_refuses_to_stream(emulator):
    async with aiohttp.ClientSession() as s:
        async with s.post(emulator.openai_base_url + "/images/generations", headers=AUTH,
                          json={"model": "dall-e-3", "prompt": "x", "stream": True}) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == "stream"


async def test_validation_errors_come_before_the_stream(emulator):
    async with aiohttp.ClientSession() as s:
        async with s.post(emulator.openai_base_url + "/images/generations", headers=AUTH,
                          json={**GEN_BODY, "partial_images": 4}) as r:
            assert r.status == 400 and r.content_type == "application/json"
        async with s.post(emulator.openai_base_url + "/images/generations", json=GEN_BODY) as r:
            assert r.status == 401


async def test_stream_delay_spaces_the_image_events(emulator):
    emulator.stream_delay = 0.15
    t0 = time.monotonic()
    _, _, frames, _, _ = await raw_stream(emulator.openai_base_url + "/images/generations",
                                          json_body={**GEN_BODY, "partial_images": 2})
    times = [t0] + [f[2] for f in frames]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 3 and all(g >= 0.14 for g in gaps), gaps
    # a per-request override through a fault
    t0 = time.monotonic()
    _, _, frames, _, _ = await raw_stream(emulator.openai_base_url + "/images/generations",
                                          json_body={**GEN_BODY, "partial_images": 2},
                                          headers={"X-Emulator-Fault": "stream_slow:delay=0"})
    assert len(frames) == 3 and frames[-1][2] - t0 < 0.4


async def test_stream_break_drops_the_connection_before_the_terminal_event(emulator):
    emulator.add_faults("stream_break")
    frames: List[str] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with aiohttp.ClientSession() as s:
            async with s.post(emulator.openai_base_url + "/images/generations", headers=AUTH,
                              json={**GEN_BODY, "partial_images": 2}) as r:
                assert r.status == 200
                async for line in r.content:
                    frames.append(line.decode())
    assert any("image_generation.partial_image" in f for f in frames)
    assert not any("image_generation.completed" in f for f in frames)
    e = emulator.requests[-1]
    assert e["outcome"] == "stream_break" and e["stream_events"] == 1


async def test_stream_break_eof_and_after(emulator):
    _, _, frames, _, raw = await raw_stream(emulator.openai_base_url + "/images/generations",
                                            json_body={**GEN_BODY, "partial_images": 3},
                                            headers={"X-Emulator-Fault": "stream_break:after=2,eof=1"})
    assert [f[0] for f in frames] == ["image_generation.partial_image"] * 2
    assert emulator.requests[-1]["stream_events"] == 2


@pytest.mark.parametrize("api", ["images", "responses", "chat"])
async def test_stream_error_event_shapes(emulator, api):
    fault = {"X-Emulator-Fault": "stream_error:message=model melted"}
    if api == "images":
        _, _, frames, _, _ = await raw_stream(emulator.openai_base_url + "/images/generations",
                                              json_body={**GEN_BODY, "partial_images": 2}, headers=fault)
        assert [f[0] for f in frames] == ["image_generation.partial_image", "error"]
        err = json.loads(frames[-1][1])
        assert err["type"] == "error" and err["error"]["message"] == "model melted"
    elif api == "responses":
        body = {"model": "gpt-4.1-mini", "input": "x", "stream": True,
                "tools": [{"type": "image_generation", "partial_images": 1}]}
        _, _, frames, _, _ = await raw_stream(emulator.openai_base_url + "/responses", json_body=body, headers=fault)
        err = json.loads(frames[-1][1])
        assert frames[-1][0] == "error" and "response.completed" not in [f[0] for f in frames]
        assert set(err) == {"type", "code", "message", "param", "sequence_number"}   # the spec's shape
        assert err["message"] == "model melted" and err["sequence_number"] == len(frames) - 1
    else:
        body = {"model": "google/gemini-2.5-flash-image", "messages": [{"role": "user", "content": "x"}],
                "modalities": ["image", "text"], "stream": True}
        _, _, frames, _, _ = await raw_stream(emulator.openrouter_base_url + "/chat/completions", json_body=body,
                                              headers=fault)
        err = json.loads(frames[-1][1])
        assert err["error"] == {"code": 502, "message": "model melted",
                                "metadata": {"error_type": "provider_unavailable", "provider_name": "Google"}}
        assert err["choices"][0]["finish_reason"] == "error" and frames[-1][1] != "[DONE]"
    assert emulator.requests[-1]["outcome"] == "stream_error"


def test_stream_fault_specs_parse():
    from jupyter_imagegen.emulator import parse_fault
    assert parse_fault("stream_break:after=2,eof=1").params == {"after": "2", "eof": "1"}
    assert parse_fault("stream_slow:delay=0.2").number("delay", 0) == 0.2
    with pytest.raises(ValueError):
        parse_fault("stream_slow:after=1")
    with pytest.raises(ValueError):
        parse_fault("stream_break:after=-1")


async def test_stream_faults_are_ignored_without_stream(emulator):
    emulator.add_faults("stream_break")
    async with make_client(emulator, "openai_images") as c:
        resp = await c.generate(ImageRequest("a fox"))
    assert resp.success and resp.attempts == 1


# ====================================================================================================
# the client against real streams
# ====================================================================================================
@pytest.mark.parametrize("api, k", [(a, k) for a in PARTIAL_APIS for k in (0, 1, 3)] + [("openrouter_chat", 0)])
async def test_client_event_order_and_final_image(emulator, api, k):
    rec = Recorder()
    req = ImageRequest("a red fox in snow", stream=True, partial_images=k if api in PARTIAL_APIS else None)
    async with make_client(emulator, api) as c:
        resp = await c.generate(req, on_event=rec)
    assert resp.success, resp.error
    assert rec.types() == (["generation_started", "api_call"] + ["partial_image"] * k
                           + ["image_received", "generation_completed"])
    partials = rec.of(PARTIAL_IMAGE)
    assert [e["partial_index"] for e in partials] == list(range(k))
    assert all(e.request_id == resp.request_id and e["index"] == 0 for e in partials)
    sent = emulator.requests[-1]["stream_images"]
    assert [s for kind, s in sent if kind == "partial"] == [sha(e["artifact"].data) for e in partials]
    finals = [s for kind, s in sent if kind == "final"]
    assert len(resp.artifacts) == 1 and finals == [sha(resp.artifacts[0].data)], "the final image is the last event's"
    art = resp.artifacts[0]
    assert art.mime_type == "image/png" and decode(art.data).size == (1024, 1024)
    for e in partials:
        assert e["artifact"].mime_type == "image/png" and decode(e["artifact"].data).size == (1024, 1024)
    assert resp.usage is not None and resp.attempts == 1
    assert emulator.requests[-1]["stream"] is True and emulator.requests[-1]["outcome"] == "stream_completed"


async def test_streamed_image_equals_the_plain_answer_for_a_seed(emulator):
    """The emulator draws deterministically from a seed (OpenRouter): streamed == not streamed."""
    async with make_client(emulator, "openrouter_chat") as c:
        plain = await c.generate(ImageRequest("a blue whale", seed=42))
        streamed = await c.generate(ImageRequest("a blue whale", seed=42, stream=True))
        other = await c.generate(ImageRequest("a blue whale", seed=43, stream=True))
    assert plain.success and streamed.success
    assert streamed.artifacts[0].data == plain.artifacts[0].data
    assert other.artifacts[0].data != plain.artifacts[0].data
    assert streamed.text == plain.text


async def test_client_stream_with_input_image_and_fanout(emulator):
    rec = Recorder()
    async with make_client(emulator, "openai_images") as c:
        resp = await c.generate(ImageRequest("make it red", images=[make_png((256, 256))], n=2, stream=True,
                                             partial_images=2), on_event=rec)
    assert resp.success and len(resp.artifacts) == 2
    assert [r["path"] for r in emulator.requests] == ["/v1/images/edits"] * 2, "one streamed call per image"
    partials = rec.of(PARTIAL_IMAGE)
    assert len(partials) == 4 and sorted(e["index"] for e in partials) == [0, 0, 1, 1]
    for i in (0, 1):
        assert [e["partial_index"] for e in partials if e["index"] == i] == [0, 1]
    assert sorted(a.index for a in resp.artifacts) == [0, 1]
    finals = sorted(s for r in emulator.requests for kind, s in r["stream_images"] if kind == "final")
    assert finals == sorted(sha(a.data) for a in resp.artifacts)


@pytest.mark.parametrize("fault", ["stream_break", "stream_break:eof=1", "reset_after_headers", "truncate",
                                   "invalid_json", "stream_break:after=3"])
@pytest.mark.parametrize("api", APIS)
async def test_broken_stream_is_retried_then_succeeds(emulator, api, fault):
    emulator.add_faults(fault)
    rec = Recorder()
    req = ImageRequest("a fox", stream=True, partial_images=2 if api in PARTIAL_APIS else None)
    async with make_client(emulator, api) as c:
        resp = await c.generate(req, on_event=rec)
    assert resp.success, resp.error
    assert resp.attempts == 2 and emulator.request_count == 2
    retry = rec.of("api_retry")
    assert len(retry) == 1 and "stream" in retry[0]["reason"]
    assert [e["attempt"] for e in rec.of("api_call")] == [1, 2]
    # the image is the second, complete stream's final image, never part of the first
    finals = [s for kind, s in emulator.requests[-1]["stream_images"] if kind == "final"]
    assert finals == [sha(resp.artifacts[0].data)]
    assert decode(resp.artifacts[0].data).size[0] > 0


@pytest.mark.parametrize("api", APIS)
async def test_an_http_error_before_the_stream_is_retried_as_usual(emulator, api):
    emulator.add_faults("503", "429:retry_after=0")
    rec = Recorder()
    req = ImageRequest("a fox", stream=True, partial_images=1 if api in PARTIAL_APIS else None)
    async with make_client(emulator, api) as c:
        resp = await c.generate(req, on_event=rec)
    assert resp.success and resp.attempts == 3
    assert [e["status_code"] for e in rec.of("api_retry")] == [503, 429]
    assert len(rec.of(PARTIAL_IMAGE)) == (1 if api in PARTIAL_APIS else 0)


@pytest.mark.parametrize("api", APIS)
async def test_broken_stream_gives_a_clear_error_when_retries_run_out(emulator, api):
    emulator.add_faults("stream_break", "stream_break", "stream_break")
    rec = Recorder()
    req = ImageRequest("a fox", stream=True, partial_images=1 if api in PARTIAL_APIS else None, max_attempts=3)
    async with make_client(emulator, api) as c:
        resp = await c.generate(req, on_event=rec)
    assert not resp.success and resp.artifacts == [], "never a half image"
    assert "gave up after 3 attempts" in resp.error and "stream" in resp.error
    assert rec.types()[-1] == "generation_failed" and emulator.request_count == 3
    assert TOKEN not in resp.error


@pytest.mark.parametrize("api", APIS)
async def test_stream_error_surfaces_clearly(emulator, api):
    emulator.add_faults("stream_error:message=the model could not finish this image")
    rec = Recorder()
    req = ImageRequest("a fox", stream=True, partial_images=2 if api in PARTIAL_APIS else None)
    async with make_client(emulator, api) as c:
        resp = await c.generate(req, on_event=rec)
    assert not resp.success and resp.artifacts == []
    assert "the model could not finish this image" in resp.error and "stream" in resp.error
    assert resp.attempts == 1 and emulator.request_count == 1, "an error the server reports is not retried"
    assert rec.types()[-1] == "generation_failed"
    if api == "openrouter_chat":
        assert resp.status_code == 502


async def test_no_image_in_a_stream(emulator):
    emulator.add_faults("no_image")
    async with make_client(emulator, "openai_responses") as c:
        resp = await c.generate(ImageRequest("a fox", stream=True, partial_images=2))
    assert not resp.success and "no image" in resp.error


async def test_stalled_stream_times_out_and_is_retried(emulator):
    emulator.add_faults("slow_body:delay=3")
    async with make_client(emulator, "openai_images", timeout=1) as c:
        t0 = time.monotonic()
        resp = await c.generate(ImageRequest("a fox", stream=True, partial_images=2))
    assert resp.success and resp.attempts == 2 and time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("api", PARTIAL_APIS)
async def test_cancel_mid_stream(emulator, api):
    emulator.stream_delay = 0.5
    rec = Recorder()
    client = make_client(emulator, api)
    task = asyncio.ensure_future(client.generate(ImageRequest("a fox", stream=True, partial_images=3), on_event=rec))
    try:
        await asyncio.wait_for(rec.first_partial.wait(), 5)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
        assert rec.types()[-1] == "generation_failed" and rec.events[-1]["cancelled"]
        # the emulator sees the client go away while it is still "drawing"
        deadline = time.monotonic() + 0.5
        while emulator.requests[-1].get("outcome") != "client_disconnected" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        entry = emulator.requests[-1]
        assert entry["outcome"] == "client_disconnected"
        kinds = [kind for kind, _ in entry["stream_images"]]
        assert kinds and "final" not in kinds and len(kinds) < 3, "it stopped between partials"
    finally:
        await client.close()


async def test_cancel_before_the_first_event(emulator):
    emulator.stream_delay = 2
    client = make_client(emulator, "openai_images")
    task = asyncio.ensure_future(client.generate(ImageRequest("a fox", stream=True, partial_images=1)))
    try:
        # the headers are out and the emulator "draws" before the first event (its log says so)
        while not emulator.requests or "stream_events" not in emulator.requests[-1]:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
        deadline = time.monotonic() + 0.5
        while emulator.requests[-1].get("outcome") != "client_disconnected" and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert emulator.requests[-1]["outcome"] == "client_disconnected"
    finally:
        await client.close()


async def test_large_streamed_image(emulator):
    """A 4K image arrives as one multi-MB base64 line: the parser takes it, the bytes are intact."""
    async with make_client(emulator, "openrouter_chat") as c:
        resp = await c.generate(ImageRequest("a big map", size="4K", aspect_ratio=None, stream=True, seed=1))
        plain = await c.generate(ImageRequest("a big map", size="4K", seed=1))
    assert resp.success, resp.error
    assert decode(resp.artifacts[0].data).size == (4096, 4096)
    assert resp.artifacts[0].data == plain.artifacts[0].data


# ====================================================================================================
# the display: one output, updated in place
# ====================================================================================================
@pytest.fixture
def recorder():
    from IPython.testing import globalipapp
    with recording_display(globalipapp.get_ipython()) as rec:
        yield rec


@pytest.mark.parametrize("api", PARTIAL_APIS)
async def test_display_updates_partials_in_place(emulator, recorder, api):
    from jupyter_imagegen.display import GenerationView
    view = GenerationView(mode="notebook")
    view.start("a fox")
    async with make_client(emulator, api) as c:
        resp = await c.generate(ImageRequest("a fox", stream=True, partial_images=3), on_event=view.on_event)
    view.show_response(resp)
    assert resp.success
    log_id = recorder.messages[0]["display_id"]
    result = [m for m in recorder.messages if m["display_id"] != log_id]
    # one result output: created by the first partial, then updated by the others and the final image
    assert [m["msg_type"] for m in result] == ["display_data"] + ["update_display_data"] * 3
    assert len({m["display_id"] for m in result}) == 1
    assert all("<img " in m["data"]["text/html"] for m in result)
    assert "partial image 1" in result[0]["data"]["text/plain"]
    assert "partial image 3" in result[2]["data"]["text/plain"]
    assert len(recorder.of_type("display_data")) == 2, "the log and the image: two outputs, not K"
    # each shown image differs: the picture sharpens in place
    srcs = [m["data"]["text/html"].split('src="', 1)[1].split('"', 1)[0] for m in result]
    assert len(set(srcs)) == 4


# ====================================================================================================
# the benchmark script runs (tiny delays; no timing assertions beyond "streaming shows pixels first")
# ====================================================================================================
@pytest.mark.timeout(120)
def test_streaming_benchmark_quick_run(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "stream.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.streaming", "--quick", "--delay", "0.2",
                           "--api", "openai_images", "--json", str(out)],
                          cwd=repo, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| first pixels, plain |" in proc.stdout and "machine:" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["api"], r["partials"]) for r in rows] == [("openai_images", 0), ("openai_images", 2)]
    k2 = rows[1]
    assert k2["stream_first"] < k2["plain_first"] and k2["partial_kb"] > 0
