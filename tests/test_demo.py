"""The README's main job: `jupyter-imagegen demo --out DIR` runs the quickstart end to end against
the built-in emulator and leaves the executed notebook and the PNGs in DIR.

Run as a user would, in a subprocess, with a key and base URL set in the environment that the
demo must ignore (they point at a closed local port, so a demo that used them would fail, and
nothing could leave the machine anyway).
"""
from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DECOY_TOKEN = "sk-decoy-the-demo-must-not-use-this-0123456789"


def _demo_command() -> list:
    script = Path(sys.executable).with_name("jupyter-imagegen")
    if script.is_file():
        return [str(script)]
    found = shutil.which("jupyter-imagegen")
    if found and Path(found).resolve().parent == Path(sys.executable).resolve().parent:
        return [found]
    return [sys.executable, "-m", "jupyter_imagegen.cli"]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE")}
    env.pop("IMAGEGEN_EMULATOR", None)  # the demo alone must make the notebook use the emulator
    env.update(IMAGE_AUTH_TOKEN=DECOY_TOKEN, IMAGE_BASE_URL="http://127.0.0.1:9/v1",
               IMAGE_API_TYPE="openai_images", IMAGE_MODEL="decoy-model", PYTHONUNBUFFERED="1")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    return output.get("data", {}).get("text/plain", "")


def _html(output) -> str:
    return output.get("data", {}).get("text/html", "")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path_factory.mktemp("demo") / "demo out"  # a space in the path, as users have
    cwd = tmp_path_factory.mktemp("cwd")  # not the repository: the demo must find its notebook itself
    proc = subprocess.run(_demo_command() + ["demo", "--out", str(out)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=400)
    return out, proc


@pytest.mark.kernel
@pytest.mark.timeout(450)
def test_demo_runs_and_prints_where_things_went(demo):
    out, proc = demo
    assert proc.returncode == 0, f"demo failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    m = re.search(r"^executed notebook: (.+)$", proc.stdout, re.M)
    assert m, proc.stdout
    executed = Path(m.group(1).strip())
    assert executed.is_file() and executed.parent == out
    assert re.search(rf"^images \(\d+\): {re.escape(str(out))}$", proc.stdout, re.M), proc.stdout
    took = re.search(r"^done in ([\d.]+) s$", proc.stdout, re.M)
    assert took and float(took.group(1)) < 90, f"the quickstart should take well under a minute: {took and took.group(0)}"


@pytest.mark.kernel
@pytest.mark.timeout(450)
def test_demo_writes_real_pngs(demo):
    from PIL import Image
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = sorted(out.rglob("*.png"))
    names = {p.name for p in pngs}
    assert len(pngs) >= 7 and {"heron.png", "fox-logo-4.png"} <= names, f"expected the saved images in {out}: {names}"
    for p in pngs:
        assert p.name in proc.stdout, f"{p.name} not listed in the demo's output"
        with Image.open(p) as im:
            assert im.format == "PNG"
            im.load()
            assert min(im.size) >= 256, im.size


@pytest.mark.kernel
@pytest.mark.timeout(450)
def test_executed_notebook_shows_images_and_no_errors(demo):
    import nbformat
    from PIL import Image
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(out / "quickstart.executed.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "every code cell ran"

    errors = [(i, o.get("ename")) for i, c in enumerate(code) for o in c.outputs if o.output_type == "error"]
    assert not errors, f"error outputs: {errors}"
    for c in code:  # no stderr; the deliberate mistake is one error box whose text is one line
        err = "".join(o.text for o in c.outputs if o.output_type == "stream" and o.name == "stderr")
        assert "Error" not in err and "Traceback" not in err, f"{c.source[:60]!r}: {err[:500]}"
        if "--size 800x600" in c.source:
            (box,) = [o for o in c.outputs if o.output_type == "display_data"]
            text = box.data["text/plain"]
            assert text.startswith("UsageError: size '800x600'") and "\n" not in text, text

    # the images: previews embedded in the HTML galleries, and Pillow images shown as image/png
    previews = []
    for c in code:
        for o in c.outputs:
            for mime, b64 in re.findall(r'src="data:(image/[a-z]+);base64,([A-Za-z0-9+/=]+)"', _html(o)):
                previews.append((c.source, mime, b64))
    assert len(previews) >= 15, f"only {len(previews)} images in the executed notebook"
    for _, _, b64 in previews[:5]:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im.load()
            assert min(im.size) >= 128
    pil_pngs = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(pil_pngs) >= 2, "the Pillow images (the sketch, the greyscale copy) display as image/png"

    def outputs_of(needle):
        cells = [c for c in code if needle in c.source]
        assert cells, needle
        return cells[0].outputs

    # n=4: one gallery of four
    gallery = [o for o in outputs_of("-n 4") if "imagegen-gallery" in _html(o)]
    assert gallery and _html(gallery[0]).count("<img ") == 4
    # the simulated 429 shows the retry in the live log, then the image
    log = "\n".join(_text(o) for o in outputs_of("--fault 429:retry_after=1"))
    assert "429 rate limited — retried after 1 s (attempt 1 failed) · " in log, log
    assert "attempt 2/3" in log
    # the API error: an error box, not an exception
    refused = outputs_of("--fault 400")
    assert any("imagegen-error" in _html(o) for o in refused)
    # aspect ratios: wide and tall images
    assert "1344x768" in "\n".join(_text(o) for o in outputs_of("--aspect 16:9"))
    assert "768x1344" in "\n".join(_text(o) for o in outputs_of("--aspect 9:16"))
    # the response used from Python
    assert any(_text(o) == "(1024, 1024)" for o in outputs_of(".artifacts[0].image.size"))
    # the cache answered the repeated prompt (the second cell with the same source)
    same = [c for c in code if c.source == code[[i for i, c in enumerate(code) if c.source.startswith("%%imagegen\n")][0]].source]
    assert len(same) == 2 and any("from cache" in _text(o) for o in same[1].outputs)


@pytest.mark.kernel
@pytest.mark.timeout(450)
def test_nbconvert_keeps_one_image_per_generated_image(demo):
    """Exported to markdown and to LaTeX (the road to PDF), the executed quickstart keeps every
    image the magics made exactly once: each is a standard image output, and the HTML gallery
    (which shows them all) rides on the first of them only."""
    import nbformat
    from nbconvert import LatexExporter, MarkdownExporter
    out, _ = demo
    nb = nbformat.read(out / "quickstart.executed.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]

    def images(cells):
        return sum(1 for c in cells for o in c.outputs if {"image/png", "image/jpeg"} & set(o.get("data", {})))
    magic = [c for c in code if c.source.lstrip().startswith("%")]
    generated = images(magic)
    figures = sum(_html(o).count('<figure class="imagegen-figure"') for c in magic for o in c.outputs)
    assert generated >= 12 and figures == generated      # one image output per image in a gallery
    others = images([c for c in code if c not in magic])  # Pillow images shown by plain Python cells
    assert others >= 2

    # LaTeX converts markdown cells with pandoc (not needed here: the outputs are what is tested)
    code_only = nbformat.from_dict({**nb, "cells": code})
    latex, _ = LatexExporter().from_notebook_node(code_only)
    shown = re.findall(r"\\adjustimage\{max size=\{[^}]*\}\{[^}]*\}\}\{(output_[\d_]+\.(?:png|jpg))\}", latex)
    assert len(shown) == generated + others, latex[:2000]

    markdown, resources = MarkdownExporter().from_notebook_node(nb)
    in_galleries = sum(m.count("<img ") for m in re.findall(r'<div class="imagegen-gallery".*?</div>', markdown, re.S))
    extracted = len(re.findall(r"!\[[^\]]*\]\([^)]+\)", markdown))
    assert in_galleries == generated and extracted == others, (in_galleries, extracted)


def test_demo_used_the_emulator_and_leaked_no_key(demo):
    out, proc = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "quickstart.executed.ipynb").read_text(encoding="utf-8")
    assert "backend: the built-in emulator" in text
    assert DECOY_TOKEN not in text and DECOY_TOKEN[:12] not in text, "the demo used the caller's key"
    assert "127.0.0.1:9/" not in text and "decoy-model" not in text
    # the emulator's throwaway key appears only masked (emul...abcd), never whole
    assert not re.search(r"emulator-[0-9a-f]{16}", text), "a whole key was written into the notebook"
    assert re.search(r"emul\.\.\.[0-9a-f]{4}", text), "the error box shows the masked key"
    assert DECOY_TOKEN not in proc.stdout + proc.stderr
