"""Saving images with embedded metadata + sidecar, and loading them back (real HTTP to the emulator)."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import struct
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from _image_helpers import make_png
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest, load
from jupyter_imagegen.loading import request_from_settings
from jupyter_imagegen.saving import SCHEMA, embed_metadata, read_embedded, save_response, sidecar_path, slugify
from jupyter_imagegen.model import Artifact, ImageResponse

#: recognisable, so a grep over every written byte finds it if it leaks
TOKEN = "sk-SAVING-LEAKCHECK-7f3a9c1e5b2d4f6a8c0e"


def client_for(emu, api_type="openai_images", **kw):
    cfg = ImageConfig(api_type=api_type, base_url=emu.base_url_for(api_type), token=TOKEN, backoff_base=0.01, **kw)
    return ImageClient(cfg)


def pixels(data: bytes):
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.mode, im.size, im.tobytes()


def png_chunks(data: bytes):
    pos, out = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((kind, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def assert_no_token_anywhere(directory: Path):
    needles = [TOKEN.encode(), TOKEN[8:30].encode()]
    files = [p for p in directory.rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        for n in needles:
            assert n not in data, f"the token leaked into {p.name}"
        assert b"Authorization" not in data and b"Bearer" not in data, p.name


# ---------------------------------------------------------------------------------------------
# round trip per format
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, background", [("png", None), ("jpeg", None), ("webp", None), ("webp", "transparent"),
                                             ("png", "transparent")])
async def test_metadata_round_trip_keeps_pixels(emulator, tmp_path, fmt, background):
    prompt = "A red fox, in snow! — “quoted” & <tagged> é"
    async with client_for(emulator) as client:
        resp = await client.generate(ImageRequest(prompt, output_format=fmt, background=background, n=2,
                                                  size="1024x1536", quality="low", seed=42,
                                                  params={"moderation": "low"}))
    assert resp.success, resp.error
    originals = [a.data for a in resp.artifacts]
    out = tmp_path / "out"
    res = save_response(resp, out)
    assert res.errors == [] and len(res.paths) == 2 and res.paths == resp.paths
    ext = {"png": "png", "jpeg": "jpg", "webp": "webp"}[fmt]
    for i, (path, art, orig) in enumerate(zip(res.paths, resp.artifacts, originals), start=1):
        p = Path(path)
        assert re.fullmatch(rf"\d{{8}}-\d{{6}}-a-red-fox-in-snow-quoted-tagged-e-{i}\.{ext}", p.name), p.name
        assert art.path == path and art.data == orig          # the in-memory artifact keeps the bytes received
        written = p.read_bytes()
        assert written != orig                                # metadata was added...
        assert pixels(written) == pixels(orig)                # ...without touching a pixel
        # and the compressed image data itself is byte-for-byte what the API sent
        if fmt == "png":
            assert [b for k, b in png_chunks(written) if k == b"IDAT"] == [b for k, b in png_chunks(orig) if k == b"IDAT"]
            with Image.open(p) as im:
                assert im.text["prompt"] == prompt and im.text["model"] == "gpt-image-1"
                assert im.text["api"] == "openai_images" and im.text["Description"] == prompt
        elif fmt == "jpeg":
            sos = orig.index(b"\xff\xda")
            assert written.endswith(orig[sos:])
            with Image.open(p) as im:
                assert "xmp" in im.info and prompt in html.unescape(im.info["xmp"].decode("utf-8"))
                assert im.getexif().get(0x010E, "").startswith("A red fox, in snow!")
        else:
            with Image.open(p) as im:
                assert "xmp" in im.info and prompt in html.unescape(im.info["xmp"].decode("utf-8"))
        # the prompt is readable by a plain grep of the file
        assert b"A red fox, in snow!" in written

        # load: from the sidecar
        loaded = load(path)
        assert loaded.source == "sidecar"
        assert loaded.prompt == prompt and loaded.model == "gpt-image-1" and loaded.api_type == "openai_images"
        assert loaded.data == written and pixels(loaded.data) == pixels(orig)
        assert loaded.metadata["schema"] == SCHEMA
        assert loaded.metadata["image"]["original_sha256"] == hashlib.sha256(orig).hexdigest()
        assert loaded.metadata["sha256"] == hashlib.sha256(written).hexdigest()
        side = json.loads(sidecar_path(path).read_text())
        assert side["response"]["attempts"] == 1 and side["response"]["usage"]["total_tokens"] > 0
        assert side["response"]["elapsed"] >= 0 and side["file"] == p.name
        # load: from the embedded chunks alone
        sidecar_path(path).rename(tmp_path / f"moved-{i}.json")
        loaded = load(path)
        assert loaded.source == "embedded" and loaded.prompt == prompt
        # the request again, for your configured API: the file's API type and base URL are not used
        req = loaded.to_request(config=ImageConfig(api_type="openai_images"))
        assert (req.prompt, req.model, req.api_type, req.base_url, req.n, req.size, req.quality, req.output_format,
                req.background, req.seed, req.params) == \
            (prompt, "gpt-image-1", None, None, 2, "1024x1536", "low", fmt, background, 42, {"moderation": "low"})
    assert_no_token_anywhere(tmp_path)


async def test_revised_prompt_is_embedded(emulator, tmp_path):
    async with client_for(emulator, "openai_responses") as client:
        resp = await client.generate(ImageRequest("a lighthouse at dusk"))
    assert resp.success and resp.artifacts[0].revised_prompt
    res = save_response(resp, tmp_path)
    revised = resp.artifacts[0].revised_prompt
    loaded = load(res.paths[0])
    assert loaded.revised_prompt == revised
    assert read_embedded(res.paths[0])["revised_prompt"] == revised
    with Image.open(res.paths[0]) as im:
        if im.format == "PNG":
            assert im.text["revised_prompt"] == revised
    assert loaded.api_type == "openai_responses"
    # re-run on the same API: the recorded model; on another API (the configured one) the
    # model is left to that API's default, and nothing names the file's API as the destination
    same = loaded.to_request(config=ImageConfig(api_type="openai_responses"))
    other = loaded.to_request(config=ImageConfig(api_type="openrouter_chat"))
    assert (same.api_type, same.model) == (None, resp.model)
    assert (other.api_type, other.model) == (None, None)


async def test_no_token_in_any_file_even_when_passed_in_the_request(emulator, tmp_path):
    src = tmp_path / "inputs" / "sketch.png"
    src.parent.mkdir()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(src)
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"))
    async with ImageClient(cfg) as client:
        req = ImageRequest("make it blue", token=TOKEN, images=[str(src)],
                           headers={"Authorization": f"Bearer {TOKEN}", "X-Title": "test"},
                           params={"user": "someone"})
        resp = await client.generate(req)
    assert resp.success, resp.error
    resp.request.params["api_key"] = TOKEN     # as if a credential had been passed as a body field
    out = tmp_path / "out"
    res = save_response(resp, out, redact=[TOKEN])
    assert res.errors == [] and len(res.paths) == 1 and len(res.inputs) == 1
    assert_no_token_anywhere(out)
    side = json.loads(sidecar_path(res.paths[0]).read_text())
    assert "headers" not in json.dumps(side["request"]) and "token" not in side["request"]
    assert side["request"]["params"] == {"user": "someone"}


async def test_input_images_are_copied_and_found_again(emulator, tmp_path):
    src = tmp_path / "sketch.png"
    Image.new("RGB", (64, 48), (200, 40, 40)).save(src)
    async with client_for(emulator) as client:
        resp = await client.generate(ImageRequest("put a hat on it", images=[str(src)]))
    assert resp.success, resp.error
    res = save_response(resp, tmp_path / "out")
    assert len(res.inputs) == 1 and Path(res.inputs[0]).read_bytes() == src.read_bytes()
    assert re.fullmatch(r"\d{8}-\d{6}-put-a-hat-on-it-input-1\.png", Path(res.inputs[0]).name)
    loaded = load(res.paths[0])
    assert loaded.settings["images"][0]["source"] == str(src.resolve())
    assert loaded.request.images == [res.inputs[0]]           # the copy next to the image
    copy = Path(res.inputs[0])
    copy.write_bytes(b"changed")
    assert loaded.request.images == [str(src.resolve())]      # changed: else the original file
    src.unlink()
    with pytest.raises(FileNotFoundError, match="input image"):
        loaded.request
    assert loaded.to_request(images=[]).images == []           # an override stands in for it


def test_names_never_collide_within_the_same_second(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(png, format="PNG")
    now = time.time()

    def resp():
        return ImageResponse(request_id="x", success=True, artifacts=[Artifact(png.getvalue(), index=0)],
                             model="m", api_type="openai_images", request=ImageRequest("Same prompt"))

    results = []

    def worker():
        for _ in range(5):
            results.append(save_response(resp(), tmp_path, now=now))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    paths = [p for r in results for p in r.paths]
    assert len(paths) == 30 and len(set(paths)) == 30
    assert all(r.errors == [] for r in results)
    images = sorted(p.name for p in tmp_path.glob("*.png"))
    sidecars = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(images) == 30 and len(sidecars) == 30
    assert [n[:-4] for n in images] == [n[:-5] for n in sidecars]    # every image has its own sidecar
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    assert f"{stamp}-same-prompt-1.png" in images and f"{stamp}-same-prompt-1-2.png" in images
    for p in tmp_path.glob("*.json"):
        assert json.loads(p.read_text())["file"] == p.with_suffix(".png").name


def test_save_problems_are_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = ImageResponse(request_id="x", success=True, artifacts=[Artifact(make_png())], request=ImageRequest("p"))
    res = save_response(r, blocker / "sub")
    assert res.paths == [] and res.errors and "could not create" in res.errors[0]
    empty = ImageResponse(request_id="x", success=False, request=ImageRequest("p"))
    assert save_response(empty, tmp_path / "none") == ([], [], [], [])


def test_very_long_prompt_in_jpeg_fits_and_the_sidecar_has_it_all(tmp_path):
    prompt = "a very long prompt " * 5000        # ~95 KB: more than one JPEG segment holds
    r = ImageResponse(request_id="x", success=True, artifacts=[Artifact(make_png(fmt="JPEG"))], model="m",
                      api_type="openai_images", request=ImageRequest(prompt))
    res = save_response(r, tmp_path)
    assert res.errors == []
    data = Path(res.paths[0]).read_bytes()
    assert pixels(data) == pixels(r.artifacts[0].data)
    emb = read_embedded(data)
    assert emb["truncated"] is True and prompt.startswith(emb["prompt"])
    assert load(res.paths[0]).prompt == prompt.strip() or load(res.paths[0]).prompt == prompt


def test_load_without_metadata_and_from_the_sidecar_path(tmp_path):
    p = tmp_path / "plain.png"
    p.write_bytes(make_png())
    loaded = load(p)
    assert loaded.metadata == {} and loaded.source is None and loaded.prompt is None
    with pytest.raises(ValueError, match="no jupyter-imagegen metadata"):
        loaded.request
    r = ImageResponse(request_id="x", success=True, artifacts=[Artifact(make_png(mode="RGBA", color=(1, 2, 3, 4)))],
                      model="m", api_type="openai_images", request=ImageRequest("from the sidecar"))
    res = save_response(r, tmp_path)
    assert load(res.sidecars[0]).path == res.paths[0]
    assert load(res.sidecars[0]).prompt == "from the sidecar"
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.png")
    bundle, md = load(res.paths[0])._repr_mimebundle_()
    assert "from the sidecar" in bundle["text/html"] and "<img " in bundle["text/html"]
    # the image is a standard image output too (what nbconvert's LaTeX and GitHub show)
    assert base64.b64decode(bundle["image/png"]) == Path(res.paths[0]).read_bytes() and md["image/png"]["width"] > 0


def test_embed_leaves_other_and_damaged_files_alone():
    gif = make_png(fmt="GIF")
    assert embed_metadata(gif, {"prompt": "x"}) == gif
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR"   # truncated
    assert embed_metadata(broken, {"prompt": "x"}) == broken
    assert read_embedded(broken) is None


def test_request_from_settings_rejects_empty_metadata():
    with pytest.raises(ValueError):
        request_from_settings({})
    req = request_from_settings({"prompt": "p", "model": "m", "n": 2, "images": []}, size="auto")
    assert (req.prompt, req.model, req.n, req.size) == ("p", "m", 2, "auto")


def test_slugify():
    assert slugify("A red fox, in snow!") == "a-red-fox-in-snow"
    assert slugify("") == "image" and slugify("日本") == "image"
    assert len(slugify("word " * 40)) <= 40


async def test_sidecars_are_private_and_images_shareable(emulator, tmp_path):
    """A sidecar holds the answer's text and usage: 0600. The image keeps the usual mode."""
    import stat
    old = os.umask(0o022)
    try:
        async with client_for(emulator, "openai_images") as client:
            resp = await client.generate(ImageRequest("a lighthouse", n=2))
        res = save_response(resp, tmp_path / "out")
    finally:
        os.umask(old)
    assert len(res.paths) == 2
    for p in map(Path, res.paths):
        assert stat.S_IMODE(sidecar_path(p).stat().st_mode) == 0o600
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
