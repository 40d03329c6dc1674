"""The request cache: hits, misses on any change, no token on disk, concurrent writers, LRU cap."""
from __future__ import annotations

import io
import multiprocessing
import os

import pytest
from PIL import Image

from _image_helpers import make_png
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.cache import RequestCache
from jupyter_imagegen.model import Artifact, ImageResponse

TOKEN = "sk-cache-test-SECRET-4242424242424242"


def client_for(emu, tmp_path, api_type="openai_images", **kw):
    cfg = ImageConfig(api_type=api_type, base_url=emu.base_url_for(api_type), token=TOKEN, backoff_base=0.01,
                      cache=True, cache_dir=str(tmp_path / "cache"), **kw)
    return ImageClient(cfg)


async def test_identical_request_hits_without_http(emulator, tmp_path):
    events = []
    async with client_for(emulator, tmp_path) as client:
        first = await client.generate(ImageRequest("a teapot", n=2))
        second = await client.generate(ImageRequest("a teapot", n=2), on_event=events.append)
    assert emulator.request_count == 1
    assert not first.from_cache and second.from_cache
    assert [a.data for a in first.artifacts] == [a.data for a in second.artifacts]
    assert [e.type for e in events] == ["generation_started", "cache_hit", "generation_completed"]
    assert "from cache" in events[1].describe()


@pytest.mark.parametrize("change", [
    dict(prompt="a teapot!"), dict(model="gpt-image-1-mini"), dict(size="1024x1536"), dict(n=2),
    dict(quality="low"), dict(output_format="webp"), dict(seed=7), dict(params={"moderation": "low"}),
    dict(api_type="openai_responses"),
])
async def test_any_change_misses(emulator, tmp_path, change):
    base = dict(prompt="a teapot")
    async with client_for(emulator, tmp_path) as client:
        await client.generate(ImageRequest(**base))
        await client.generate(ImageRequest(**{**base, **change}))
    assert emulator.request_count == 2


async def test_input_image_bytes_are_part_of_the_key(emulator, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(make_png((16, 16), (255, 0, 0)))
    b.write_bytes(make_png((16, 16), (255, 0, 0)))
    async with client_for(emulator, tmp_path) as client:
        await client.generate(ImageRequest("edit", images=[str(a)]))
        await client.generate(ImageRequest("edit", images=[str(b)]))   # same bytes, other name: hit
        assert emulator.request_count == 1
        b.write_bytes(make_png((16, 16), (0, 255, 0)))
        await client.generate(ImageRequest("edit", images=[str(b)]))   # other bytes: miss
    assert emulator.request_count == 2


async def test_opt_out_and_fresh(emulator, tmp_path):
    async with client_for(emulator, tmp_path) as client:
        r1 = await client.generate(ImageRequest("a teapot"))
        await client.generate(ImageRequest("a teapot", cache=False))
        assert emulator.request_count == 2
        r3 = await client.generate(ImageRequest("a teapot", fresh=True))
        assert emulator.request_count == 3
        r4 = await client.generate(ImageRequest("a teapot"))
    assert emulator.request_count == 3
    assert r4.from_cache and r4.artifacts[0].data == r3.artifacts[0].data != r1.artifacts[0].data


async def test_failures_are_not_cached(emulator, tmp_path):
    emulator.add_faults("400")
    async with client_for(emulator, tmp_path) as client:
        bad = await client.generate(ImageRequest("a teapot"))
        good = await client.generate(ImageRequest("a teapot"))
    assert not bad.success and good.success and not good.from_cache


async def test_token_never_written(emulator, tmp_path):
    async with client_for(emulator, tmp_path) as client:
        await client.generate(ImageRequest("a teapot", n=2))
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert TOKEN.encode() not in p.read_bytes()
        assert TOKEN[-8:].encode() not in p.read_bytes()


def _writer(cache_dir, key, seed, rounds):
    cache = RequestCache(cache_dir)
    for i in range(rounds):
        arts = [Artifact(make_png((16, 16), (seed * 40 % 256, i % 256, 0)))]
        cache.put(key, ImageResponse(request_id=f"{seed}-{i}", success=True, artifacts=arts))
        got = cache.get(key)
        assert got is None or len(got[0]) == 1


def test_two_processes_writing_at_once_never_corrupt(tmp_path):
    cache_dir = str(tmp_path / "cache")
    key = "ab" * 32
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(cache_dir, key, s, 60)) for s in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    arts, meta = RequestCache(cache_dir).get(key)
    assert len(arts) == 1 and arts[0].verify()
    leftovers = [p for p in (tmp_path / "cache").rglob(".*")]
    assert leftovers == [], leftovers


def test_lru_eviction_keeps_recent(tmp_path):
    cache = RequestCache(tmp_path / "c", max_bytes=10_000)
    big = io.BytesIO()
    Image.effect_noise((48, 48), 80).convert("RGB").save(big, format="PNG")  # ~7 kB, incompressible
    keys = [f"{i:02d}" * 32 for i in range(3)]
    for k in keys:
        cache.put(k, ImageResponse(request_id=k, success=True, artifacts=[Artifact(big.getvalue())]))
        os.utime(cache._entry(k), (1000 + len(os.listdir(tmp_path / "c")),) * 2)
    assert cache.size() <= 10_000
    assert cache.get(keys[-1]) is not None
    assert cache.get(keys[0]) is None
