"""Bad input is refused before anything is sent, and answers from the network are untrusted.

1. The bad-input matrix, through the client (`ImageClient.generate`) and through the magic (an
   IPython shell, as tests/test_magic.py drives it): every case is one clear line, no request
   reaches the emulator (its request_count stays 0), no event is emitted, nothing is displayed.
2. Untrusted results: a small aiohttp app speaking the images API shape answers with file:// and
   ftp:// URLs, huge, slow, non-image and redirecting downloads, a huge base64 string, a damaged
   image and decompression bombs. Each ends as a clear one-line error (never success=True with an
   image nobody can show), downloads never carry the API key, and an Artifact decodes lazily and
   refuses a bomb before decoding pixels (so the gallery cannot be made to allocate hundreds of MB).
"""
from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from aiohttp import web

from _image_helpers import make_png
from _magic_helpers import refused
from _reliab_helpers import Recorder, TinyServer, bomb_png
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.errors import ConfigError, RequestError
from jupyter_imagegen.model import Artifact

TOKEN = "sk-badinput-SECRET-token-0a1b2c3d4e5f"
MB = 1024 * 1024
BYTES_50MB = "<50 MB of bytes>"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad input files, made quickly: the 50 MB ones are sparse (a PNG header, then a hole)."""
    d = tmp_path_factory.mktemp("bad-input")
    (d / "notes.png").write_text("these are my notes, not a picture\n")
    with open(d / "huge.png", "wb") as f:
        f.write(make_png())
        f.truncate(50 * MB)
    (d / "bomb.png").write_bytes(bomb_png(30000, 30000))
    (d / "bomb12k.png").write_bytes(bomb_png(12000, 12000))   # between Pillow's warning and error limits
    (d / "ok.png").write_bytes(make_png())
    return d


# ---------------------------------------------------------------------------------------------
# 1a. through the client
# ---------------------------------------------------------------------------------------------
def client_cases(files):
    return {
        "empty prompt": (dict(prompt="   \n "), RequestError, "the prompt is empty"),
        "n=0": (dict(n=0), RequestError, "n=0: ask for 1 to 10 images"),
        "n huge": (dict(n=10_000), RequestError, "n=10000: ask for 1 to 10 images"),
        "n huge fan-out": (dict(n=500, api_type="openrouter_chat"), RequestError, "n=500: ask for 1 to 16"),
        "n not a number": (dict(n="4"), RequestError, "n='4'"),
        "size unknown for gpt-image-1": (dict(size="999x999"), RequestError,
                                         "size '999x999' is not available for gpt-image-1"),
        "size unknown for dall-e-3": (dict(size="256x256", model="dall-e-3"), RequestError,
                                      "size '256x256' is not available for dall-e-3"),
        "size unknown for responses": (dict(size="512x512", api_type="openai_responses"), RequestError,
                                       "size '512x512' is not available for the image_generation tool"),
        "size unknown for openrouter": (dict(size="5K", api_type="openrouter_chat"), RequestError,
                                        "size '5K' must look like"),
        "aspect unknown for openrouter": (dict(aspect_ratio="7:3", api_type="openrouter_chat"), RequestError,
                                          "aspect ratio '7:3' is not offered by OpenRouter"),
        "input not an image (file)": (dict(images=[str(files / "notes.png")]), RequestError,
                                      "input image 1: not a PNG, JPEG, WebP or GIF image"),
        "input not an image (bytes)": (dict(images=[b"%PDF-1.7 not an image"]), RequestError,
                                       "not a PNG, JPEG, WebP or GIF image"),
        "input 50 MB (file)": (dict(images=[files / "huge.png"]), RequestError, "huge.png is 52.4 MB; the limit is"),
        "input 50 MB (bytes)": (dict(images=[BYTES_50MB]), RequestError,
                                "52.4 MB is over the"),
        "decompression bomb 30000x30000": (dict(images=[str(files / "bomb.png")]), RequestError,
                                           "refused as a possible decompression bomb"),
        "decompression bomb 12000x12000": (dict(images=[str(files / "bomb12k.png")]), RequestError,
                                           "refused as a possible decompression bomb"),
        "bomb as a mask": (dict(images=[files / "ok.png"], mask=bomb_png()), RequestError,
                           "mask: refused as a possible decompression bomb"),
        "data URL with a text/plain prefix": (dict(images=["data:text/plain;base64,aGVsbG8="]), RequestError,
                                              "a data URL must look like 'data:image/png;base64,...'"),
        "data URL without base64": (dict(images=["data:image/png,hello"]), RequestError,
                                    "a data URL must look like"),
        "data URL with broken base64": (dict(images=["data:image/png;base64,@@@"]), RequestError,
                                        "not valid base64"),
        "unknown API type": (dict(api_type="dalle"), ConfigError, "api_type='dalle' is not a known API type"),
        "base URL without scheme": (dict(base_url="api.openai.com/v1"), ConfigError,
                                    "base_url='api.openai.com/v1' is not an http(s) URL"),
        "base URL with another scheme": (dict(base_url="file:///etc"), ConfigError, "is not an http(s) URL"),
    }


CLIENT_IDS = list(client_cases(Path("/unused")))


@pytest.mark.parametrize("case", CLIENT_IDS)
async def test_client_refuses_bad_input_before_sending(emulator, files, case):
    kw, exc, message = client_cases(files)[case]
    kw = dict(kw)
    if kw.get("images") == [BYTES_50MB]:
        kw["images"] = [make_png() + bytes(50 * MB)]     # made only when this case runs
    kw.setdefault("prompt", "a red fox")
    api_type = kw.get("api_type") if kw.get("api_type") in ("openrouter_chat", "openai_responses") else "openai_images"
    if "base_url" not in kw and kw.get("api_type") != "dalle":
        kw["base_url"] = emulator.base_url_for(api_type)
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"), token=TOKEN)
    rec = Recorder()
    t0 = time.monotonic()
    async with ImageClient(cfg) as client:
        with pytest.raises(exc) as info:
            await client.generate(ImageRequest(**kw), on_event=rec)
    text = str(info.value)
    assert message in text, text
    assert "\n" not in text and len(text) < 400, text        # one readable line
    assert "object at 0x" not in text, text                  # no Python reprs in a user's message
    assert emulator.request_count == 0, "something was sent"
    assert rec.events == [], "an event was emitted for a request that was never sent"
    assert time.monotonic() - t0 < 2.0


def test_config_refuses_unknown_api_and_schemeless_url_with_the_variable_name(monkeypatch):
    with pytest.raises(ConfigError, match="api_type='dalle' is not a known API type; use one of"):
        ImageConfig(api_type="dalle")
    with pytest.raises(ConfigError, match="IMAGE_API_TYPE='dalle'"):
        ImageConfig.from_env({"IMAGE_API_TYPE": "dalle"})
    with pytest.raises(ConfigError, match="IMAGE_BASE_URL='localhost:8000/v1' is not an http"):
        ImageConfig.from_env({"IMAGE_BASE_URL": "localhost:8000/v1"})


async def test_missing_token_sends_nothing(emulator):
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"))
    async with ImageClient(cfg) as client:
        with pytest.raises(ConfigError, match="IMAGE_AUTH_TOKEN.*nothing was sent"):
            await client.generate(ImageRequest("a fox"))
    assert emulator.request_count == 0


# ---------------------------------------------------------------------------------------------
# 1b. through the magic
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def ip(ip, emulator_thread, monkeypatch, files):
    """conftest's `ip`, working in the folder of bad files, with the variables the cases name, and
    the emulator's log emptied (so request_count 0 means nothing was sent)."""
    shell, rec = ip
    monkeypatch.chdir(files)
    shell.user_ns.update(bad_url="data:text/plain;base64,aGVsbG8=", bytes_50mb=make_png() + bytes(50 * MB),
                         bomb=bomb_png(), text_var="just words")
    shell.user_ns.pop("nosuchvar", None)
    emulator_thread.reset()
    try:
        yield shell, rec
    finally:
        for k in ("bad_url", "bytes_50mb", "bomb", "text_var"):
            shell.user_ns.pop(k, None)


MAGIC_CASES = [
    ("empty prompt", "%%imagegen\n   \n", "empty prompt"),
    ("empty prompt (line)", "%imagegen --size 1024x1024", "empty prompt"),
    ("n=0", "%%imagegen -n 0\na cat", "at least 1 image"),
    ("n huge", "%%imagegen -n 5000\na cat", "n=5000: ask for 1 to 10 images"),
    ("size unknown for the API", "%%imagegen --size 999x999\na cat", "size '999x999' is not available for gpt-image-1"),
    ("size unknown for openrouter", "%%imagegen --api openrouter --size 5k\na cat", "size '5K' must look like"),
    ("not an image (file)", "%%imagegen --image notes.png\na cat", "not a PNG, JPEG, WebP or GIF image"),
    ("not an image (variable)", "%%imagegen --image text_var\na cat", "text_var"),
    ("50 MB input (file)", "%%imagegen --image huge.png\na cat", "huge.png is 52.4 MB"),
    ("50 MB input (variable)", "%%imagegen --image bytes_50mb\na cat", "52.4 MB is over the"),
    ("decompression bomb (file)", "%%imagegen --image bomb.png\na cat", "refused as a possible decompression bomb"),
    ("decompression bomb 12k (file)", "%%imagegen --image bomb12k.png\na cat", "possible decompression bomb"),
    ("decompression bomb (variable)", "%%imagegen --image bomb\na cat", "refused as a possible decompression bomb"),
    ("data URL with a bad prefix", "%%imagegen --image bad_url\na cat", "a data URL must look like"),
    ("unknown API type", "%%imagegen --api dalle\na cat", "'dalle' is not a known API"),
    ("base URL without scheme", "%%imagegen --base-url api.openai.com/v1\na cat", "not an http(s) URL"),
    ("missing variable", "%%imagegen\na {nosuchvar} in a hat", "no variable named 'nosuchvar'"),
    ("missing variable in an option", "%%imagegen --size {nosuchvar}\na cat", "no variable named 'nosuchvar'"),
]


def _one_line_usage_error(shell, rec, emulator_thread, capsys, code, message):
    from IPython.core.error import UsageError
    # shown as one error box, the cell does not fail (Run All goes on), nothing is sent
    res = shell.run_cell(code, store_history=False)
    text = refused(res, rec)
    assert message in text and "object at 0x" not in text, text
    assert capsys.readouterr().err == "" and emulator_thread.request_count == 0
    # the same with --raise-error: the cell fails with the one line
    res = shell.run_cell(code.replace("imagegen", "imagegen --raise-error", 1), store_history=False)
    err = capsys.readouterr().err
    assert isinstance(res.error_in_exec, UsageError), (res.error_in_exec, err)
    text = str(res.error_in_exec)
    assert message in text, text
    assert "\n" not in text and "object at 0x" not in text, text
    assert err.startswith("UsageError: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    assert emulator_thread.request_count == 0, "something was sent"
    assert rec.messages == [], "something was displayed"


@pytest.mark.parametrize("name, code, message", MAGIC_CASES, ids=[c[0] for c in MAGIC_CASES])
def test_magic_refuses_bad_input_in_one_line(ip, emulator_thread, capsys, name, code, message):
    shell, rec = ip
    _one_line_usage_error(shell, rec, emulator_thread, capsys, code, message)


@pytest.mark.parametrize("var, value, message", [
    ("IMAGE_API_TYPE", "dalle", "IMAGE_API_TYPE='dalle' is not a known API type"),
    ("IMAGE_BASE_URL", "localhost:8000/v1", "IMAGE_BASE_URL='localhost:8000/v1' is not an http(s) URL"),
])
def test_magic_bad_environment_is_one_line(ip, emulator_thread, capsys, monkeypatch, var, value, message):
    shell, rec = ip
    monkeypatch.setenv(var, value)
    _one_line_usage_error(shell, rec, emulator_thread, capsys, "%imagegen a lighthouse", message)


def test_magic_works_after_the_bad_input(ip, emulator_thread):
    """The refusals leave nothing behind: a good cell right after works."""
    shell, rec = ip
    res = shell.run_cell("%%imagegen --image ok.png\nthe same, in blue", store_history=False)
    assert res.success and res.result.success, res.error_in_exec or res.result.error
    assert emulator_thread.request_count == 1


# ---------------------------------------------------------------------------------------------
# 2. untrusted results
# ---------------------------------------------------------------------------------------------
BIG = make_png() + b"\0" * (3 * MB)


def _images_answer(items):
    return web.json_response({"created": 1, "data": items})


async def _chunked(request, body: bytes, content_type: str):
    resp = web.StreamResponse()
    resp.content_type = content_type
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(0, len(body), 1 << 16):
        await resp.write(body[i:i + (1 << 16)])
    await resp.write_eof()
    return resp


def _corrupt_png() -> bytes:
    d = make_png((64, 64))
    return d[:16] + b"\x00" * (len(d) - 16)      # the signature survives, the chunks do not


async def _generations(request: web.Request):
    """The images API answering with whatever X-Kind asks for."""
    kind = request.headers["X-Kind"]
    base = f"http://127.0.0.1:{request.url.port}"
    b64 = {"b64-bomb": bomb_png(30000, 30000), "b64-bomb12k": bomb_png(12000, 12000),
           "b64-corrupt": _corrupt_png(), "b64-huge": BIG}
    if kind in b64:
        return _images_answer([{"b64_json": base64.b64encode(b64[kind]).decode()}])
    if kind == "b64-huge-chunked":
        body = json.dumps({"created": 1, "data": [{"b64_json": base64.b64encode(BIG).decode()}]}).encode()
        return await _chunked(request, body, "application/json")
    urls = {"file": "file:///etc/passwd", "ftp": "ftp://127.0.0.1/x.png", "javascript": "javascript:alert(1)"}
    return _images_answer([{"url": urls.get(kind, f"{base}/{kind}?sig=SIGNED-QUERY")}])


async def _ok(request):
    return web.Response(body=make_png(), content_type="image/png")


async def _huge(request):
    return web.Response(body=BIG, content_type="image/png")


async def _huge_chunked(request):
    return await _chunked(request, BIG, "image/png")


async def _html(request):
    return web.Response(text="<html><body>login</body></html>", content_type="text/html")


async def _not_an_image(request):
    return web.Response(body=b"MZ\x90\x00 an executable, not a picture", content_type="image/png")


async def _slow(request):
    await asyncio.sleep(3)
    return web.Response(body=make_png(), content_type="image/png")


async def _to_file(request):
    raise web.HTTPFound("file:///etc/passwd")


async def _loop(request):
    raise web.HTTPFound("/loop")


async def _bomb_download(request):
    return web.Response(body=bomb_png(30000, 30000), content_type="image/png")


ROUTES = {"/v1/images/generations": _generations, "/ok": _ok, "/huge": _huge, "/huge-chunked": _huge_chunked,
          "/html": _html, "/not-an-image": _not_an_image, "/slow": _slow, "/to-file": _to_file, "/loop": _loop,
          "/bomb": _bomb_download}

UNTRUSTED = [
    ("file", "an image URL has an unsupported scheme: 'file:///etc/passwd'"),
    ("ftp", "an image URL has an unsupported scheme: 'ftp://"),
    ("javascript", "unsupported scheme"),
    ("huge", "is 3.1 MB, over the 1.0 MB download limit"),
    ("huge-chunked", "is over the 1.0 MB download limit"),
    ("html", "served text/html, not an image"),
    ("not-an-image", "is not a PNG, JPEG, WebP or GIF image"),
    ("slow", "timed out after 0.3 s"),
    ("to-file", "redirected to a URL that is not http(s)"),
    ("loop", "too many redirects"),
    ("bomb", "possible decompression bomb"),
    ("b64-huge", "the response is 4.2 MB, over the 1.0 MB limit; refused"),
    ("b64-huge-chunked", "the response is over the 1.0 MB limit; refused"),
    ("b64-bomb", "possible decompression bomb"),
    ("b64-bomb12k", "possible decompression bomb"),
    ("b64-corrupt", "damaged and cannot be decoded"),
]


@pytest.fixture
async def untrusted_server():
    async with TinyServer(ROUTES) as srv:
        yield srv


def _untrusted_client(srv) -> ImageClient:
    cfg = ImageConfig(api_type="openai_images", base_url=srv.url + "/v1", token=TOKEN,
                      max_download_bytes=1 * MB, max_response_bytes=1 * MB, download_timeout=0.3,
                      backoff_base=0.01, max_attempts=2)
    return ImageClient(cfg)


@pytest.mark.parametrize("kind, message", UNTRUSTED, ids=[u[0] for u in UNTRUSTED])
async def test_untrusted_results_end_in_a_clear_error(untrusted_server, kind, message):
    srv = untrusted_server
    t0 = time.monotonic()
    async with _untrusted_client(srv) as client:
        resp = await client.generate(ImageRequest("a fox", headers={"X-Kind": kind}))
    took = time.monotonic() - t0
    assert not resp.success and not resp.artifacts, resp
    assert message in resp.error, resp.error
    assert "\n" not in resp.error and "SIGNED-QUERY" not in resp.error, resp.error   # signed query strings dropped
    assert resp.attempts == 1, "a refused result is not an API failure to retry"
    assert took < 3.0, f"took {took:.1f} s"
    downloads = [h for h in srv.hits if not h["path"].startswith("/v1/")]
    for h in downloads:       # the API key goes to the API only, never to an image host
        assert "Authorization" not in h["headers"] and TOKEN not in json.dumps(h["headers"])
    if kind in ("file", "ftp", "javascript"):
        assert downloads == [], "a non-http URL was fetched"


async def test_url_result_is_downloaded_from_the_emulator_without_the_key(emulator):
    """The positive case over the real emulator: URL results arrive, verified, and the file
    request carries no Authorization header."""
    emulator.add_faults("url")
    cfg = ImageConfig(api_type="openrouter_chat", base_url=emulator.base_url_for("openrouter_chat"), token=TOKEN)
    async with ImageClient(cfg) as client:
        resp = await client.generate(ImageRequest("a kite"))
    assert resp.success, resp.error
    art = resp.artifacts[0]
    assert art.source_url.startswith(emulator.url + "/files/") and art.verify()


async def test_downloads_are_size_capped_against_the_emulator(emulator):
    """The emulator's own files are PNGs of tens of kB: a 10 kB cap refuses them with a clear error."""
    emulator.add_faults("url")
    cfg = ImageConfig(api_type="openrouter_chat", base_url=emulator.base_url_for("openrouter_chat"), token=TOKEN,
                      max_download_bytes=10_000)
    async with ImageClient(cfg) as client:
        resp = await client.generate(ImageRequest("a kite"))
    assert not resp.success and "over the 10 kB download limit" in resp.error, resp.error


async def test_response_cap_against_the_emulator(emulator):
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"), token=TOKEN,
                      max_response_bytes=20_000)
    async with ImageClient(cfg) as client:
        resp = await client.generate(ImageRequest("a kite"))
    assert not resp.success and "over the 20 kB limit; refused" in resp.error, resp.error
    assert resp.attempts == 1


def test_artifacts_decode_lazily_and_refuse_bombs_before_decoding():
    from jupyter_imagegen import display
    good = Artifact(make_png((40, 30)))
    assert good._pixels_ref is None                 # nothing decoded on construction
    assert (good.width, good.height) == (40, 30)   # the size comes from the header
    assert good._pixels_ref is None
    assert good.image.size == (40, 30) and good._pixels_ref() is not None
    for bomb in (bomb_png(30000, 30000), bomb_png(12000, 12000)):
        art = Artifact(bomb)
        repr(art)                                   # no crash, no decode
        assert art.verify() is False
        with pytest.raises(Exception, match="decompression bomb"):
            art.image
        t0 = time.monotonic()
        html = display.gallery_html([art])          # the gallery shows a note instead of decoding
        assert time.monotonic() - t0 < 1.0
        assert "cannot be decoded" in html and "<img " not in html
    damaged = Artifact(_corrupt_png())
    assert damaged.verify() is False
    assert "cannot be decoded" in display.gallery_html([damaged])
