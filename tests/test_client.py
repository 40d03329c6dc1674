"""ImageClient against the emulator over real HTTP on 127.0.0.1: formats, retries, events, secrets."""
from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image

from _image_helpers import make_png
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.errors import ConfigError, RequestError

TOKEN = "sk-client-test-SECRET-token-9f8e7d6c5b4a"


def make_client(emu, api_type="openai_images", **kw):
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("timeout", 10)
    cfg = ImageConfig(api_type=api_type, base_url=emu.base_url_for(api_type), token=TOKEN, **kw)
    return ImageClient(cfg)


class Recorder:
    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)

    def types(self):
        return [e.type for e in self.events]

    def of(self, t):
        return [e for e in self.events if e.type == t]


def decoded(artifact):
    im = Image.open(io.BytesIO(artifact.data))
    im.load()
    return im


# -- each format: text to image ------------------------------------------------------------------
@pytest.mark.parametrize("api_type", ["openrouter_chat", "openai_images", "openai_responses"])
async def test_text_to_image_each_format(emulator, api_type):
    rec = Recorder()
    async with make_client(emulator, api_type) as client:
        resp = await client.generate(ImageRequest("a red fox in snow"), on_event=rec)
    assert resp.success, resp.error
    assert len(resp.artifacts) == 1
    art = resp.artifacts[0]
    assert art.mime_type == "image/png"
    im = decoded(art)
    assert im.size == (art.width, art.height) and im.size[0] > 0
    assert resp.attempts == 1 and resp.api_type == api_type
    assert rec.types() == ["generation_started", "api_call", "image_received", "generation_completed"]
    received = rec.of("image_received")[0]
    assert received.data["artifact"] is art and received.data["index"] == 0
    assert all(e.request_id == resp.request_id for e in rec.events)
    assert rec.of("generation_completed")[0]["artifact_count"] == 1
    assert emulator.request_count == 1


async def test_openai_images_n_in_one_call_and_sizes(emulator):
    rec = Recorder()
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("three cats", n=3, size="1536x1024"), on_event=rec)
    assert resp.success and len(resp.artifacts) == 3
    assert emulator.request_count == 1, "gpt-image takes n in one call"
    # each image of the one answer has its own index (the log says "image 2 received", not "image 1" thrice)
    got = {e.data["index"]: e.data["artifact"] for e in rec.of("image_received")}
    assert sorted(got) == [0, 1, 2] and [got[i] for i in range(3)] == resp.artifacts
    assert [a.index for a in resp.artifacts] == [0, 1, 2]
    assert all(decoded(a).size == (1536, 1024) for a in resp.artifacts)
    assert len({a.data for a in resp.artifacts}) == 3, "each image differs"


@pytest.mark.parametrize("api_type", ["openrouter_chat", "openai_responses"])
async def test_fanout_for_one_image_per_call_formats(emulator, api_type):
    rec = Recorder()
    async with make_client(emulator, api_type) as client:
        resp = await client.generate(ImageRequest("a bicycle", n=4), on_event=rec)
    assert resp.success and len(resp.artifacts) == 4
    assert emulator.request_count == 4
    assert sorted(e["index"] for e in rec.of("api_call")) == [0, 1, 2, 3]
    assert len({a.data for a in resp.artifacts}) == 4
    assert resp.attempts == 4


async def test_fanout_partial_failure_is_reported(emulator):
    emulator.add_faults("400")
    async with make_client(emulator, "openrouter_chat", max_concurrency=1) as client:
        resp = await client.generate(ImageRequest("a bicycle", n=3))
    assert resp.success, "two images arrived"
    assert len(resp.artifacts) == 2
    assert len(resp.errors) == 1 and "image 1" in resp.errors[0]
    assert "1 of 3 calls failed" in resp.error


async def test_dalle3_n_fans_out(emulator):
    async with make_client(emulator, "openai_images", model="dall-e-3") as client:
        resp = await client.generate(ImageRequest("a castle", n=2))
    assert resp.success and len(resp.artifacts) == 2
    assert emulator.request_count == 2
    assert resp.revised_prompt


# -- size / aspect mapping ----------------------------------------------------------------------
async def test_aspect_maps_to_nearest_openai_size(emulator):
    async with make_client(emulator, "openai_images") as client:
        wide = await client.generate(ImageRequest("wide", aspect_ratio="16:9"))
        tall = await client.generate(ImageRequest("tall", aspect_ratio="9:16"))
    assert decoded(wide.artifacts[0]).size == (1536, 1024)
    assert decoded(tall.artifacts[0]).size == (1024, 1536)


async def test_responses_aspect_maps_to_tool_size(emulator):
    async with make_client(emulator, "openai_responses") as client:
        resp = await client.generate(ImageRequest("tall", aspect_ratio="2:3"))
    assert decoded(resp.artifacts[0]).size == (1024, 1536)


async def test_openrouter_size_maps_to_aspect(emulator):
    async with make_client(emulator, "openrouter_chat") as client:
        resp = await client.generate(ImageRequest("wide", size="1920x1080"))
        sq = await client.generate(ImageRequest("square", aspect_ratio="1:1"))
    w, h = decoded(resp.artifacts[0]).size
    assert w > h and abs(w / h - 16 / 9) < 0.05
    assert decoded(sq.artifacts[0]).size[0] == decoded(sq.artifacts[0]).size[1]


@pytest.mark.parametrize("fmt,mime", [("jpeg", "image/jpeg"), ("webp", "image/webp")])
async def test_output_format_honoured(emulator, fmt, mime):
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("a kettle", output_format=fmt))
    assert resp.artifacts[0].mime_type == mime
    assert decoded(resp.artifacts[0]).format == fmt.upper()


# -- input images -------------------------------------------------------------------------------
async def test_openai_edits_with_one_and_two_images(emulator, tmp_path):
    p = tmp_path / "in.png"
    p.write_bytes(make_png())
    pil = Image.new("RGB", (32, 32), (0, 0, 255))
    async with make_client(emulator, "openai_images") as client:
        one = await client.generate(ImageRequest("add a hat", images=[str(p)]))
        two = await client.generate(ImageRequest("combine", images=[p, pil]))
    assert one.success and two.success, (one.error, two.error)
    paths = [r["path"] for r in emulator.requests]
    assert paths == ["/v1/images/edits", "/v1/images/edits"]


@pytest.mark.parametrize("api_type", ["openrouter_chat", "openai_responses"])
async def test_input_images_in_chat_formats(emulator, api_type):
    data_url = "data:image/png;base64," + __import__("base64").b64encode(make_png()).decode()
    async with make_client(emulator, api_type) as client:
        resp = await client.generate(ImageRequest("make it blue", images=[data_url, make_png(color=(0, 200, 0))]))
    assert resp.success, resp.error


def test_bad_input_image_is_a_clear_error_before_sending(tmp_path):
    client = ImageClient(ImageConfig(token=TOKEN, base_url="http://127.0.0.1:9"))
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(RequestError, match="not a PNG, JPEG, WebP or GIF"):
        client.resolve(ImageRequest("x", images=[str(bad)]))
    with pytest.raises(RequestError, match="no such file"):
        client.resolve(ImageRequest("x", images=["/nonexistent/a.png"]))
    with pytest.raises(RequestError, match="data URL"):
        client.resolve(ImageRequest("x", images=["data:text/plain;base64,aGk="]))


# -- URL results --------------------------------------------------------------------------------
async def test_url_results_are_downloaded(emulator):
    async with make_client(emulator, "openai_images", model="dall-e-2") as client:
        resp = await client.generate(ImageRequest("a kite", params={"response_format": "url"}))
    assert resp.success, resp.error
    assert resp.artifacts[0].source_url.startswith(emulator.url)
    assert decoded(resp.artifacts[0]).size == (1024, 1024)


async def test_url_fault_on_openrouter_downloads(emulator):
    emulator.add_faults("url")
    async with make_client(emulator, "openrouter_chat") as client:
        resp = await client.generate(ImageRequest("a kite"))
    assert resp.success, resp.error
    assert resp.artifacts[0].source_url and "/files/" in resp.artifacts[0].source_url


# -- retries ------------------------------------------------------------------------------------
async def test_429_then_success_waits_retry_after(emulator):
    emulator.add_faults("429:retry_after=1")
    rec = Recorder()
    async with make_client(emulator, "openai_images", backoff_base=5) as client:
        t0 = time.monotonic()
        resp = await client.generate(ImageRequest("a boat"), on_event=rec)
        took = time.monotonic() - t0
    assert resp.success and resp.attempts == 2
    retry = rec.of("api_retry")
    assert len(retry) == 1
    assert retry[0]["status_code"] == 429 and retry[0]["delay"] == pytest.approx(1.0)
    assert retry[0]["attempt"] == 1
    assert took >= 0.95, "the Retry-After wait was honoured"
    assert rec.types() == ["generation_started", "api_call", "api_retry", "api_call", "image_received",
                           "generation_completed"]


async def test_retry_after_http_date_and_ms(emulator):
    emulator.add_faults("429:retry_after_date=2", "429:retry_after_ms=150")
    rec = Recorder()
    async with make_client(emulator, "openai_images", backoff_base=5) as client:
        resp = await client.generate(ImageRequest("a boat"), on_event=rec)
    assert resp.success and resp.attempts == 3
    d1, d2 = [e["delay"] for e in rec.of("api_retry")]
    assert 0.5 <= d1 <= 2.01, d1  # an HTTP date has 1 s resolution
    assert d2 == pytest.approx(0.15)


async def test_503_twice_then_success(emulator):
    emulator.add_faults("503", "503")
    rec = Recorder()
    async with make_client(emulator, "openrouter_chat") as client:
        resp = await client.generate(ImageRequest("a bridge"), on_event=rec)
    assert resp.success and resp.attempts == 3
    assert [e["status_code"] for e in rec.of("api_retry")] == [503, 503]


async def test_400_is_not_retried(emulator):
    emulator.add_faults("400")
    rec = Recorder()
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("a bridge"), on_event=rec)
    assert not resp.success and resp.status_code == 400 and resp.attempts == 1
    assert rec.of("api_retry") == []
    assert rec.types()[-1] == "generation_failed"
    assert emulator.request_count == 1


async def test_real_400_from_validation_is_reported(emulator):
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("x", params={"bogus_field": 1}))
    assert not resp.success and resp.status_code == 400
    assert "bogus_field" in resp.error


async def test_401_suggests_the_key_and_masks_it(emulator):
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.openai_base_url, token="sk-wrong-key-0000-1111-2222")
    async with ImageClient(cfg) as client:
        resp = await client.generate(ImageRequest("x"))
    assert not resp.success and resp.status_code == 401 and resp.attempts == 1
    assert any("IMAGE_AUTH_TOKEN" in s for s in resp.suggestions)
    assert "sk-w...2222" in resp.auth_hint
    assert "sk-wrong-key-0000-1111-2222" not in repr(resp) + resp.error + " ".join(resp.suggestions)


async def test_exhaustion_gives_a_clear_error(emulator):
    emulator.add_faults("503", "503", "503")
    async with make_client(emulator, "openai_responses", max_attempts=3) as client:
        resp = await client.generate(ImageRequest("x"))
    assert not resp.success
    assert resp.error.startswith("gave up after 3 attempts")
    assert resp.status_code == 503
    assert emulator.request_count == 3


async def test_connection_reset_is_retried(emulator):
    emulator.add_faults("reset")
    rec = Recorder()
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("x"), on_event=rec)
    assert resp.success and resp.attempts == 2
    retry = rec.of("api_retry")
    assert len(retry) == 1 and retry[0]["status_code"] is None
    assert "reset" in retry[0]["reason"] or "connection" in retry[0]["reason"]


@pytest.mark.parametrize("fault", ["truncate", "invalid_json", "html", "reset_after_headers"])
async def test_broken_bodies_are_retried(emulator, fault):
    emulator.add_faults(fault)
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("x"))
    assert resp.success and resp.attempts == 2, resp.error


async def test_html_error_page_message(emulator):
    emulator.add_faults("html", "html", "html")
    async with make_client(emulator, "openai_images") as client:
        resp = await client.generate(ImageRequest("x"))
    assert not resp.success and "HTML page" in resp.error


async def test_slow_server_hits_the_timeout(emulator):
    emulator.add_faults("slow_headers:delay=3")
    async with make_client(emulator, "openai_images", timeout=0.5, max_attempts=1) as client:
        t0 = time.monotonic()
        resp = await client.generate(ImageRequest("x"))
        took = time.monotonic() - t0
    assert not resp.success and "timed out after 0.5 s" in resp.error
    assert took < 2.0
    assert any("timeout" in s for s in resp.suggestions)


async def test_no_image_quotes_the_models_text(emulator):
    emulator.add_faults("no_image")
    async with make_client(emulator, "openrouter_chat") as client:
        resp = await client.generate(ImageRequest("x"))
    assert not resp.success and resp.attempts == 1
    assert "no image" in resp.error and "It said:" in resp.error


# -- cancellation -------------------------------------------------------------------------------
async def test_cancel_during_retry_wait_stops_at_once(emulator):
    emulator.add_faults("429:retry_after=30")
    rec = Recorder()
    async with make_client(emulator, "openai_images") as client:
        task = asyncio.create_task(client.generate(ImageRequest("x"), on_event=rec))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if rec.of("api_retry"):
                break
        t0 = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - t0 < 0.5
    assert rec.types()[-1] == "generation_failed" and rec.events[-1]["error"] == "cancelled"


# -- secrets ------------------------------------------------------------------------------------
async def test_token_never_in_events_errors_or_reprs(emulator):
    emulator.add_faults("429:retry_after=0", "500", "401")
    rec = Recorder()
    client = make_client(emulator, "openai_images")
    async with client:
        resp = await client.generate(ImageRequest("x"), on_event=rec)
    blob = " ".join([repr(client), repr(client.config), repr(resp), str(resp.error), str(resp.suggestions),
                     str(resp.auth_hint)] + [repr(e.to_dict()) for e in rec.events])
    assert TOKEN not in blob
    assert TOKEN[:4] + "..." + TOKEN[-4:] in blob  # the masked hint is there
    assert not any(TOKEN in str(r) for r in emulator.requests)


async def test_missing_token_sends_nothing(emulator):
    client = ImageClient(ImageConfig(api_type="openai_images", base_url=emulator.openai_base_url))
    with pytest.raises(ConfigError, match="IMAGE_AUTH_TOKEN"):
        await client.generate(ImageRequest("x"))
    assert emulator.request_count == 0
    await client.close()


@pytest.mark.parametrize("req,match", [
    (ImageRequest(""), "prompt is empty"),
    (ImageRequest("x", n=0), "n=0"),
    (ImageRequest("x", n=50), "n=50"),
    (ImageRequest("x", size="800x600"), "not available for gpt-image-1"),
    (ImageRequest("x", size="big"), "not available"),
    (ImageRequest("x", api_type="dalle"), "not a known API type"),
    (ImageRequest("x", base_url="api.openai.com/v1"), "not an http"),
    (ImageRequest("x", quality="ultra"), "quality 'ultra'"),
    (ImageRequest("x", output_format="tiff"), "output format"),
])
def test_bad_requests_raise_clear_errors(req, match):
    client = ImageClient(ImageConfig(api_type="openai_images", token=TOKEN))
    with pytest.raises((RequestError, ConfigError), match=match):
        client.resolve(req)


# -- synchronous use ----------------------------------------------------------------------------
def test_generate_sync_from_a_script(emulator_thread):
    base_url = emulator_thread.base_url_for("openrouter_chat")
    client = ImageClient(ImageConfig(api_type="openrouter_chat", base_url=base_url, token=TOKEN))
    first = client.generate_sync(ImageRequest("one"))
    second = client.generate_sync(ImageRequest("two"))
    client.close_sync()
    assert first.success and second.success
    assert first.artifacts[0].data != second.artifacts[0].data


@pytest.mark.parametrize("api_type, fmt", [("openai_images", "png"), ("openai_images", "jpeg"),
                                           ("openai_images", "webp"), ("openai_responses", "png"),
                                           ("openrouter_chat", None)])
@pytest.mark.parametrize("lenient", [False, True], ids=["default", "LOAD_TRUNCATED_IMAGES"])
async def test_an_image_cut_short_is_a_failure_not_a_success(emulator, api_type, fmt, lenient, monkeypatch):
    """A PNG whose chunks are intact but whose pixel stream stops half-way (or a JPEG / WebP
    ending half-way) passes a structural check; the client decodes every answer completely, so
    it is a failed call with the reason instead of a success whose `.image` raises later. Also
    when the notebook set Pillow's LOAD_TRUNCATED_IMAGES (which makes Pillow fill a cut image
    with grey): the check decodes strictly, and the user's setting is back afterwards."""
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient)
    rec = Recorder()
    async with make_client(emulator, api_type, max_attempts=1) as client:
        resp = await client.generate(ImageRequest("a red fox in snow", output_format=fmt,
                                                  headers={"X-Emulator-Fault": "cut_image"}), on_event=rec)
        assert not resp.success and not resp.artifacts
        assert "unusable image" in resp.error and "cannot be decoded" in resp.error, resp.error
        assert rec.of("image_received") == []
        good = await client.generate(ImageRequest("a red fox in snow", output_format=fmt))
    assert good.success and good.artifacts[0].image.size[0] > 0
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient


def _animation(cut_last: bool) -> bytes:
    """A 3-frame GIF (or APNG-free GIF) whose last frame's data is cut when `cut_last`."""
    import io
    from PIL import Image
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    for i, f in enumerate(frames):      # noise, so each frame's LZW data is long
        f.putdata([((x * 7 + i * 31) % 256, (x * 13) % 256, (x * 29 + i) % 256) for x in range(64 * 48)])
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    data = buf.getvalue()
    return data[: len(data) - len(data) // 6] + b";" if cut_last else data


@pytest.mark.parametrize("cut", [False, True], ids=["whole", "last-frame-cut"])
async def test_every_frame_of_an_animation_is_checked(cut):
    """Only the first frame of an animation is decoded to show it; a later frame cut short is
    still a damaged answer."""
    import base64
    from aiohttp import web
    from _reliab_helpers import TinyServer
    gif = _animation(cut)

    async def answer(request):
        return web.json_response({"created": 1, "data": [{"b64_json": base64.b64encode(gif).decode()}]})
    async with TinyServer({"/v1/images/generations": answer}) as srv:
        cfg = ImageConfig(api_type="openai_images", base_url=srv.url + "/v1", token="sk-test-anim-0000000000",
                          max_attempts=1)
        async with ImageClient(cfg) as client:
            resp = await client.generate(ImageRequest("a blinking light"))
    assert resp.success is (not cut), resp.error
    if cut:
        assert "cannot be decoded" in resp.error, resp.error
