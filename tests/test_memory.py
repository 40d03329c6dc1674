"""The image memory budget: bytes beyond it move to a private spool file and come back when used;
decoded pixels are not kept after the preview; previews match their image."""
from __future__ import annotations

import gc
import os
import stat

import pytest
from PIL import Image, ImageChops, ImageStat

from _image_helpers import make_png
from jupyter_imagegen.errors import ConfigError
from jupyter_imagegen.memory import ENV_MEMORY_BUDGET, DEFAULT_BUDGET, budget_from_env, memory
from jupyter_imagegen.model import Artifact


def noisy_png(side: int, seed: int) -> bytes:
    """A PNG that does not compress away (so its size is like a real image's)."""
    import io
    import random
    rnd = random.Random(seed)
    im = Image.frombytes("RGB", (side, side), bytes(rnd.getrandbits(8) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def budget():
    """Set the process's budget for one test (restored after, and the spill undone)."""
    old = memory.budget

    def set_to(nbytes: int) -> None:
        memory.set_budget(nbytes)
    try:
        yield set_to
    finally:
        memory.set_budget(old)


def test_over_the_budget_the_oldest_move_to_a_private_spool_file_and_come_back(budget):
    payloads = [noisy_png(64, i) for i in range(6)]
    size = len(payloads[0])
    budget(int(size * 3.5))
    arts = [Artifact(p) for p in payloads]
    assert [a.in_memory for a in arts] == [False, False, False, True, True, True]
    spool = memory.spool_path(arts[0], ".png")
    assert os.path.dirname(spool) == memory.stats()["spool_dir"]
    assert stat.S_IMODE(os.stat(spool).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(spool)).st_mode) == 0o700
    with open(spool, "rb") as f:
        assert f.read() == payloads[0]
    # using the oldest reads it back, makes it the newest, and moves the next oldest out
    assert arts[0].data == payloads[0] and arts[0].in_memory
    assert not arts[3].in_memory and arts[5].in_memory
    # everything still reads back equal (size, equality, hashing, the PIL view all work)
    for a, p in zip(arts, payloads):
        assert a.data == p and len(a) == len(p) and a == Artifact(p) and a.image.size == (64, 64)
    assert memory.resident <= memory.budget + size


def test_touching_keeps_an_artifact_in_memory(budget):
    payloads = [noisy_png(48, 10 + i) for i in range(4)]
    budget(int(len(payloads[0]) * 2.5))
    first = Artifact(payloads[0])
    second = Artifact(payloads[1])
    first.data                                 # used: now the most recent
    Artifact(payloads[2])                      # over the budget: the least recently used goes
    assert first.in_memory and not second.in_memory


def test_a_collected_artifact_leaves_nothing_behind(budget):
    budget(0)
    art = Artifact(noisy_png(32, 99))
    Artifact(noisy_png(32, 98))                # pushes `art` out to its spool file
    path = memory.spool_path(art, ".png")
    assert os.path.exists(path)
    before = memory.stats()["artifacts"]
    del art
    gc.collect()
    assert not os.path.exists(path) and memory.stats()["artifacts"] < before


def test_the_budget_comes_from_the_environment():
    assert budget_from_env({}) == DEFAULT_BUDGET
    assert budget_from_env({ENV_MEMORY_BUDGET: "64"}) == 64 * 1024 * 1024
    assert budget_from_env({ENV_MEMORY_BUDGET: "0"}) == 0
    for bad in ("lots", "-1", "inf", "nan"):
        with pytest.raises(ConfigError, match=ENV_MEMORY_BUDGET):
            budget_from_env({ENV_MEMORY_BUDGET: bad})
    with pytest.raises(ValueError, match="whole number of bytes"):
        memory.set_budget(-5)


def test_pixels_are_let_go_after_the_preview_and_decoded_again_on_demand():
    art = Artifact(noisy_png(300, 5))
    im = art.decode(keep=True)                 # what the client does to check an answer
    assert art.memory_cost() >= art.nbytes + 300 * 300 * 3
    mime, data, (w, h) = art.preview(100)
    assert art._pixels is None and art.memory_cost() == art.nbytes + len(data)
    del im
    gc.collect()
    assert art._pixels_ref() is None           # nobody holds the pixels any more
    again = art.image                          # decoded again, the same pixels
    assert again.size == (300, 300) and again.tobytes() == Image.open(__import__("io").BytesIO(art.data)).convert("RGB").tobytes()
    assert art.image is again                  # while it is held, the same object


def test_a_spilled_artifact_drops_its_preview_and_makes_the_same_again():
    art = Artifact(make_png((800, 600), (200, 40, 40)))
    first = art.preview(128)
    art.spill()
    assert not art.in_memory and art.memory_cost() == 0
    assert art.preview(128) == first


def _mean_difference(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_previews_match_the_image(mode):
    import io
    base = Image.linear_gradient("L").resize((1024, 768))
    im = Image.merge("RGB", (base, base.rotate(90).resize((1024, 768)), Image.new("L", (1024, 768), 90)))
    if mode == "RGBA":
        im.putalpha(base)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    art = Artifact(buf.getvalue())
    mime, data, (w, h) = art.preview(256)
    assert (w, h) == (256, 192) and mime == ("image/png" if mode == "RGBA" else "image/jpeg")
    shown = Image.open(io.BytesIO(data))
    assert shown.size == (256, 192)
    reference = im.resize((256, 192), Image.LANCZOS)
    assert _mean_difference(shown, reference) < 2.0
    # a smaller preview is made from the one already made, and still matches
    small = Image.open(io.BytesIO(art.preview(64)[1]))
    assert small.size == (64, 48) and _mean_difference(small, im.resize((64, 48), Image.LANCZOS)) < 3.0


def test_pickling_and_copying_keep_the_bytes(budget):
    import copy
    import pickle
    budget(0)
    payload = noisy_png(40, 7)
    art = Artifact(payload, index=3)
    Artifact(noisy_png(40, 8))
    for twin in (pickle.loads(pickle.dumps(art)), copy.copy(art)):
        assert twin.data == payload and twin.index == 3 and twin is not art


def test_a_bad_budget_in_the_environment_warns_and_the_package_still_imports():
    import subprocess
    import sys
    env = dict(os.environ, IMAGE_MEMORY_BUDGET_MB="lots")
    out = subprocess.run([sys.executable, "-c", "import jupyter_imagegen.memory as m; print(m.memory.budget)"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(DEFAULT_BUDGET)
    assert "IMAGE_MEMORY_BUDGET_MB='lots' must be a number of megabytes" in out.stderr


def test_the_spool_folders_of_killed_kernels_are_removed(tmp_path):
    import subprocess
    import sys
    from jupyter_imagegen.memory import ImageMemory, SPOOL_PREFIX
    # a process that made a spool folder and was killed before its exit handlers ran
    code = ("import os, sys; from jupyter_imagegen.memory import ImageMemory; "
            f"m = ImageMemory(0, spool_parent={str(tmp_path)!r}); print(m._spool(), flush=True); "
            "os.kill(os.getpid(), 9)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    orphan = out.stdout.strip()
    assert os.path.isdir(orphan) and os.path.basename(orphan).startswith(SPOOL_PREFIX), out
    alive = tmp_path / f"{SPOOL_PREFIX}{os.getppid()}-keep"   # a running process's folder stays
    alive.mkdir()
    mine = ImageMemory(0, spool_parent=str(tmp_path))
    spool = mine._spool()
    assert not os.path.exists(orphan) and alive.is_dir() and os.path.isdir(spool)


def test_an_image_that_fits_the_preview_lets_its_pixels_go_too():
    art = Artifact(noisy_png(200, 3))
    art.decode(keep=True)
    mime, data, size = art.preview(512)        # shown as it is: no downscaled copy
    assert data is art.data and size == (200, 200)
    assert art._pixels is None and art.memory_cost() == art.nbytes
