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


# ---------------------------------------------------------------------------------------------
# entries are read like a network answer: a bad one is dropped and the request sent again
# ---------------------------------------------------------------------------------------------
def _bomb_png() -> bytes:
    """A valid PNG whose header claims 100,000 x 100,000 pixels (the data is tiny)."""
    import struct
    import zlib
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _sha(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def _corrupt(kind: str, entry, outside):
    """Damage the cache entry folder `entry` as `kind` says; `outside` is a real PNG elsewhere."""
    import json
    meta_p = entry / "meta.json"
    meta = json.loads(meta_p.read_text())
    img = meta["images"][0]
    first = entry / img["file"]
    if kind == "traversal":              # a relative path out of the entry, checksum matching
        img["file"] = os.path.relpath(outside, entry)
        img["sha256"] = _sha(outside.read_bytes())
    elif kind == "absolute":
        img["file"] = str(outside)
        img["sha256"] = _sha(outside.read_bytes())
    elif kind == "symlink":              # the entry's own file name, linked elsewhere
        first.unlink()
        first.symlink_to(outside)
        img["sha256"] = _sha(outside.read_bytes())
    elif kind == "truncated":            # cut in half, checksum updated: only a full decode notices
        data = first.read_bytes()[: first.stat().st_size // 2]
        first.write_bytes(data)
        img["sha256"] = _sha(data)
    elif kind == "not-an-image":
        first.write_bytes(b"#!/bin/sh\necho hello\n")
        img["sha256"] = _sha(first.read_bytes())
    elif kind == "bomb":
        first.write_bytes(_bomb_png())
        img["sha256"] = _sha(first.read_bytes())
    elif kind == "checksum":
        first.write_bytes(make_png((8, 8), (0, 0, 255)))
    elif kind == "deep":                 # 100,000 levels: json.loads raises RecursionError
        meta_p.write_text("[" * 100_000 + "]" * 100_000)
        return
    elif kind == "deep-usage":           # parses, but deeper than anything we write
        meta["usage"] = json.loads("[" * 500 + "]" * 500)
    elif kind == "wrong-types":
        meta["images"] = "0.png"
    elif kind == "wrong-field-types":
        meta["text"] = {"a": 1}
        img["revised_prompt"] = 5
    elif kind == "other-entry":
        meta["key"] = "0" * 64
    elif kind == "huge":
        meta["text"] = "x" * (5 * 1024 * 1024)
    elif kind == "not-json":
        meta_p.write_bytes(b"\xff\xfe garbage")
        return
    elif kind in ("fifo-meta", "fifo-image"):   # reading a FIFO blocks until a writer comes: never
        target = meta_p if kind == "fifo-meta" else first
        target.unlink()
        os.mkfifo(target)
        return
    elif kind == "meta-is-a-folder":
        meta_p.unlink()
        meta_p.mkdir()
        return
    elif kind == "entry-is-a-link":      # the entry folder itself, linked to a copy elsewhere
        import shutil
        copy = outside.parent / "copied-entry"
        shutil.copytree(entry, copy)
        shutil.rmtree(entry)
        entry.symlink_to(copy)
        return
    elif kind == "shard-is-a-link":      # the shard folder linked elsewhere (with a valid entry in it)
        import shutil
        shard = entry.parent
        elsewhere = outside.parent / "shard"
        shutil.copytree(shard, elsewhere)
        shutil.rmtree(shard)
        shard.symlink_to(elsewhere)
        return
    meta_p.write_text(json.dumps(meta))


CORRUPTIONS = ["traversal", "absolute", "symlink", "truncated", "not-an-image", "bomb", "checksum", "deep",
               "deep-usage", "wrong-types", "wrong-field-types", "other-entry", "huge", "not-json", "fifo-meta",
               "fifo-image", "meta-is-a-folder", "entry-is-a-link", "shard-is-a-link"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
async def test_a_bad_entry_is_dropped_and_fetched_again(emulator, tmp_path, kind, caplog):
    outside = tmp_path / "private" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes(make_png((20, 20), (1, 2, 3)))
    before = outside.read_bytes()
    async with client_for(emulator, tmp_path) as client:
        assert (await client.generate(ImageRequest("a teapot"))).success
        [entry] = [e for e, _, _ in client.cache.entries()]
        _corrupt(kind, entry, outside)
        second = await client.generate(ImageRequest("a teapot"))      # never raises
        third = await client.generate(ImageRequest("a teapot"))
    assert second.success and not second.from_cache, second.error
    assert emulator.request_count == 2, "the bad entry was not used: the request went out again"
    assert third.from_cache and [a.data for a in third.artifacts] == [a.data for a in second.artifacts]
    assert all(a.data != before for a in second.artifacts + third.artifacts)
    assert outside.read_bytes() == before, "the file outside the cache is untouched"
    assert "unusable" in caplog.text and "dropped" in caplog.text
    if kind in ("entry-is-a-link", "shard-is-a-link"):   # the link went, what it pointed to stayed
        copies = list((outside.parent).glob("*/**/meta.json"))
        assert copies, "the linked folder's entry was deleted"


@pytest.mark.timeout(20)
def test_eviction_and_clear_never_leave_the_cache(emulator_thread, tmp_path):
    """A link planted in the cache folder (or a cache folder that is really a project folder)
    must not lead eviction or clear() to anything that is not an entry of ours."""
    victim = tmp_path / "home"
    (victim / "projects" / "thesis").mkdir(parents=True)
    (victim / "projects" / "thesis" / "chapter1.tex").write_text("precious")
    (victim / "ab").mkdir()
    (victim / "ab" / "notes.txt").write_text("precious too")
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "zz").symlink_to(victim / "projects")      # a link where a shard would be
    (cache_dir / "ab").symlink_to(victim / "ab")             # a link with a shard's very name
    cfg = ImageConfig(api_type="openai_images", base_url=emulator_thread.base_url_for("openai_images"),
                      token=TOKEN, cache=True, cache_dir=str(cache_dir), cache_max_bytes=1000)
    client = ImageClient(cfg)
    for prompt in ("one", "two", "three"):                   # each put evicts down to 1 kB
        assert client.generate_sync(ImageRequest(prompt)).success
    client.close_sync()
    RequestCache(cache_dir).clear()
    assert (victim / "projects" / "thesis" / "chapter1.tex").read_text() == "precious"
    assert (victim / "ab" / "notes.txt").read_text() == "precious too"
    # a cache folder pointed at a folder with other things in it: clear() removes only entries
    mixed = tmp_path / "mixed"
    (mixed / "src").mkdir(parents=True)
    (mixed / "src" / "main.py").write_text("print('hi')")
    cache = RequestCache(mixed)
    client = ImageClient(cfg.replace(cache_dir=str(mixed), cache_max_bytes=10 ** 9))
    assert client.generate_sync(ImageRequest("four")).success
    client.close_sync()
    assert cache.entries()
    cache.clear()
    assert not cache.entries() and (mixed / "src" / "main.py").read_text() == "print('hi')"


def test_a_cached_answer_is_scrubbed_when_read_back(emulator_thread, tmp_path):
    """An entry written by an older version (or another program) may hold the key: it is
    scrubbed on the way out like an answer."""
    import json
    cfg = ImageConfig(api_type="openai_images", base_url=emulator_thread.base_url_for("openai_images"),
                      token=TOKEN, cache=True, cache_dir=str(tmp_path / "cache"))
    client = ImageClient(cfg)
    assert client.generate_sync(ImageRequest("a teapot")).success
    [(entry, _, _)] = client.cache.entries()
    meta = json.loads((entry / "meta.json").read_text())
    meta.update(text=f"echo {TOKEN}", revised_prompt=f"a teapot {TOKEN}", model=f"m/{TOKEN}",
                usage={"total_tokens": 3, "echo": {"authorization": f"Bearer {TOKEN}", TOKEN: [TOKEN]}})
    meta["images"][0]["revised_prompt"] = TOKEN
    (entry / "meta.json").write_text(json.dumps(meta))
    hit = client.generate_sync(ImageRequest("a teapot"))
    client.close_sync()
    assert hit.from_cache
    shown = json.dumps([hit.text, hit.revised_prompt, hit.model, hit.usage.raw, hit.artifacts[0].revised_prompt])
    assert TOKEN not in shown and TOKEN[6:18] not in shown and "sk-c...4242" in shown, shown


def test_cache_files_are_private(emulator_thread, tmp_path):
    import stat
    cfg = ImageConfig(api_type="openai_images", base_url=emulator_thread.base_url_for("openai_images"),
                      token=TOKEN, cache=True, cache_dir=str(tmp_path / "cache"))
    old = os.umask(0o022)
    try:
        client = ImageClient(cfg)
        resp = client.generate_sync(ImageRequest("a private teapot", n=2))
        client.close_sync()
    finally:
        os.umask(old)
    assert resp.success
    paths = [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]
    assert len(paths) >= 6
    for p in paths:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), f"{p.relative_to(tmp_path)} is {oct(mode)}"


def test_an_existing_cache_folder_keeps_its_mode_and_links_are_not_written_through(emulator_thread, tmp_path):
    """IMAGE_CACHE_DIR may name a folder you share (0775, setgid): its mode stays; what we create
    in it is private. A link planted where the entry's shard goes is removed, never written
    through (a planted link had made a put chmod and empty the folder it pointed to)."""
    import stat
    from jupyter_imagegen.cache import request_key
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    victim = tmp_path / "victim"
    victim.mkdir()
    os.chmod(victim, 0o755)
    cfg = ImageConfig(api_type="openai_images", base_url=emulator_thread.base_url_for("openai_images"),
                      token=TOKEN, cache=True, cache_dir=str(shared))
    client = ImageClient(cfg)
    key = request_key(client.resolve(ImageRequest("a teapot"))[0])
    (victim / key).mkdir()
    (victim / key / "precious.txt").write_text("precious")
    (shared / key[:2]).symlink_to(victim)
    assert client.generate_sync(ImageRequest("a teapot")).success
    assert client.generate_sync(ImageRequest("a teapot")).from_cache
    client.close_sync()
    assert stat.S_IMODE(shared.stat().st_mode) == 0o2775
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755 and (victim / key / "precious.txt").read_text() == "precious"
    # (a setgid folder passes its setgid bit on: the permission bits are what count)
    assert not (shared / key[:2]).is_symlink() and (shared / key[:2]).stat().st_mode & 0o777 == 0o700
    assert (shared / key[:2] / key).stat().st_mode & 0o777 == 0o700
