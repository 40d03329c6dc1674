"""compare(): every combination concurrently, one labelled grid, per-cell errors (real HTTP to the emulator)."""
from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest

from _magic_helpers import recording_display
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest, history, load
from jupyter_imagegen.runtime import runtime
from jupyter_imagegen.compare import CompareResult, acompare, compare, parse_compare_spec, split_prompts
from kernels import kernel_env, run_notebook, running_kernel

TOKEN = "sk-COMPARE-LEAKCHECK-5e6f7a8b9c0d1e2f3a4b"
MODELS = ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"]
PROMPTS = ["a red fox in snow", "a lighthouse at dusk"]


def client_for(emu, tmp_path=None, api_type="openai_images", **kw):
    if tmp_path is not None:
        kw.update(cache=True, cache_dir=str(tmp_path / "cache"))
    cfg = ImageConfig(api_type=api_type, base_url=emu.base_url_for(api_type), token=TOKEN, backoff_base=0.01, **kw)
    return ImageClient(cfg)


def sent_combinations(emu):
    return sorted((r["prompt"], r["model"]) for r in emu.requests)


# ---------------------------------------------------------------------------------------------
# shape and labels
# ---------------------------------------------------------------------------------------------
async def test_grid_shape_and_labels(emulator):
    async with client_for(emulator) as client:
        result = await acompare(prompts=PROMPTS, models=MODELS, client=client, quality="low", record=False)
    assert isinstance(result, CompareResult)
    assert result.shape == (2, 3) and len(result.grid) == 2 and all(len(r) == 3 for r in result.grid)
    assert result.row_dims == ["prompt"] and result.col_dims == ["model"]
    assert result.row_labels == PROMPTS and result.col_labels == MODELS
    for r, prompt in enumerate(PROMPTS):
        for c, model in enumerate(MODELS):
            resp = result.grid[r][c]
            assert resp.success and resp.request.prompt == prompt and resp.model == model
            assert resp.request.quality == "low"
    # every combination was sent exactly once
    assert emulator.request_count == 6
    assert sent_combinations(emulator) == sorted((p, m) for p in PROMPTS for m in MODELS)
    assert result["a lighthouse at dusk", "gpt-image-1-mini"] is result.grid[1][1]
    assert result[1, 2] is result.grid[1][2] and result[0] is result.grid[0][0]
    with pytest.raises(KeyError, match="no column labelled"):
        result["a red fox in snow", "dall-e-9"]

    html = result.html()
    assert html.count("<table") == 1                       # ONE grid
    assert 'data-rows="2" data-cols="3"' in html
    thead, tbody = html.split("<tbody>")
    for m in MODELS:
        assert f">{m}</th>" in thead
    assert "prompt \\ model" in thead
    rows = re.findall(r"<tr>(.*?)</tr>", tbody)
    assert len(rows) == 2
    for row, prompt in zip(rows, PROMPTS):
        assert prompt in re.findall(r'<th scope="row"[^>]*>(.*?)</th>', row)[0]
        assert row.count("<td") == 3 and row.count("<img ") == 3
    # previews are downscaled (the emulator draws 1024 px images)
    for w, h in re.findall(r'<img [^>]*width="(\d+)" height="(\d+)"', html):
        assert max(int(w), int(h)) <= 256
    text = result.text()
    assert "2 prompts × 3 models" in text and "6 ok" in text
    bundle = result._repr_mimebundle_()
    assert bundle["text/html"] == html and "[1,2]" in bundle["text/plain"]
    assert TOKEN not in html and TOKEN not in text


async def test_more_than_two_dimensions_combine_labels(emulator):
    async with client_for(emulator) as client:
        result = await acompare(prompts=PROMPTS, models=MODELS[:2], sizes=["1024x1024", "1536x1024"], client=client,
                                record=False)
    assert result.shape == (2, 4)
    assert result.col_title == "model · size"
    assert result.col_labels == ["gpt-image-1 · 1024x1024", "gpt-image-1 · 1536x1024",
                                 "gpt-image-1-mini · 1024x1024", "gpt-image-1-mini · 1536x1024"]
    for c, label in enumerate(result.col_labels):
        model, size = label.split(" · ")
        for r in range(2):
            resp = result.grid[r][c]
            assert resp.model == model and resp.artifacts[0].size == tuple(int(x) for x in size.split("x"))
    assert "model · size" in result.html()
    assert result["a red fox in snow", ("gpt-image-1-mini", "1536x1024")] is result.grid[0][3]


async def test_one_varied_setting_is_one_row_and_layout_can_be_forced(emulator):
    async with client_for(emulator) as client:
        one = await acompare(prompts="a fox", models=MODELS, client=client, record=False)
        forced = await acompare(prompts=PROMPTS, models=MODELS, rows="model", client=client, record=False)
        same = await acompare(prompts="a fox", client=client, record=False)
    assert one.shape == (1, 3) and one.row_dims == [] and one.col_labels == MODELS
    assert "prompt: a fox" in one.html()
    assert forced.shape == (3, 2) and forced.row_labels == MODELS and forced.col_labels == PROMPTS
    assert same.shape == (1, 1) and same.grid[0][0].success
    with pytest.raises(Exception, match="prompt"):
        await acompare(models=MODELS, client=client, record=False)


# ---------------------------------------------------------------------------------------------
# partial failures stay in their cells
# ---------------------------------------------------------------------------------------------
async def test_a_failing_column_keeps_its_errors_in_place(emulator):
    async with client_for(emulator) as client:
        result = await acompare(prompts=PROMPTS, models=["gpt-image-1", "no-such-model"], client=client, record=False)
    assert result.ok == 2 and result.failed == 2
    for r in range(2):
        good, bad = result.grid[r]
        assert good.success and good.artifacts
        assert not bad.success and bad.status_code == 400 and "no-such-model" in bad.error
    tbody = result.html().split("<tbody>")[1]
    for row in re.findall(r"<tr>(.*?)</tr>", tbody):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        assert "<img " in cells[0] and "imagegen-error" not in cells[0]
        assert "imagegen-error" in cells[1] and "HTTP 400" in cells[1] and "<img " not in cells[1]
    assert "2 failed" in result.text()


async def test_a_queued_fault_fails_one_cell_and_a_retry_heals_another(emulator):
    emulator.add_faults("400", "ok", "503")    # cell 0: refused; cell 1: fine; cell 2: 503 then retried
    async with client_for(emulator) as client:
        result = await acompare(prompts="a fox", models=MODELS, client=client, concurrency=1, record=False)
    first, second, third = result.grid[0]
    assert not first.success and first.status_code == 400
    assert second.success and second.attempts == 1
    assert third.success and third.attempts == 2
    assert (result.ok, result.failed) == (2, 1)
    assert emulator.request_count == 4


async def test_bad_input_in_one_cell_does_not_stop_the_others(emulator):
    from jupyter_imagegen.errors import ConfigError, RequestError
    async with client_for(emulator) as client:
        mixed = await acompare(prompts="a fox", sizes=["1024x1536", "1792x1024"], client=client, record=False)
        # no cell can be sent: the first problem is raised before anything is sent or shown
        with pytest.raises(RequestError, match="12x12"):
            await acompare(prompts="a fox", models=MODELS, size="12x12", client=client, record=False)
    assert mixed.grid[0][0].success
    bad = mixed.grid[0][1]
    assert not bad.success and "1792x1024" in bad.error and bad.attempts == 0
    assert emulator.request_count == 1
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"))
    async with ImageClient(cfg) as tokenless:
        with pytest.raises(ConfigError, match="IMAGE_AUTH_TOKEN"):
            await acompare(prompts=PROMPTS, models=MODELS, client=tokenless, record=False)
    assert emulator.request_count == 1


# ---------------------------------------------------------------------------------------------
# cache, saving, history, live display
# ---------------------------------------------------------------------------------------------
async def test_running_a_grid_again_is_answered_from_the_cache(emulator, tmp_path):
    async with client_for(emulator, tmp_path) as client:
        first = await acompare(prompts=PROMPTS, models=MODELS, client=client, record=False)
        assert emulator.request_count == 6
        second = await acompare(prompts=PROMPTS, models=MODELS, client=client, record=False)
    assert emulator.request_count == 6
    assert all(r.from_cache for r in second.responses) and second.ok == 6
    assert [[a.data for a in r.artifacts] for r in first.responses] == \
        [[a.data for a in r.artifacts] for r in second.responses]
    assert "6 from cache" in second.text()


async def test_save_writes_every_cell_with_metadata_and_history_records_them(emulator, tmp_path):
    history.clear()
    out = tmp_path / "grid"
    seen = []
    async with client_for(emulator) as client:
        result = await acompare(prompts=PROMPTS, models=MODELS[:2], client=client, save=str(out),
                                on_cell=lambda c: seen.append([Path(p).exists() for p in c.response.paths]))
    assert len(seen) == 4 and all(s == [True] for s in seen)   # on disk when the cell was reported
    images = sorted(out.glob("*.png"))
    assert len(images) == 4 and len(list(out.glob("*.json"))) == 4
    for p in images:
        meta = load(p)
        assert meta.prompt in PROMPTS and meta.model in MODELS[:2]
        assert meta.prompt.encode() in p.read_bytes()          # every file carries its prompt
    for f in out.iterdir():
        assert TOKEN.encode() not in f.read_bytes()
    assert sorted(result.paths) == sorted(str(p) for p in images)
    recorded = history[-4:]
    assert [e.source for e in recorded] == ["compare"] * 4
    assert sorted((e.prompt, e.model) for e in recorded) == sorted((p, m) for p in PROMPTS for m in MODELS[:2])
    assert all(e.paths for e in recorded)
    history.clear()


async def test_live_grid_is_one_display_updated_in_place(emulator):
    from IPython.testing import globalipapp
    with recording_display(globalipapp.get_ipython()) as rec:
        async with client_for(emulator) as client:
            result = await acompare(prompts=PROMPTS, models=MODELS, client=client, live=True, record=False)
    new = rec.of_type("display_data")
    # the grid: one output updated in place; when done, each of the 6 images also gets a standard
    # image output (in grid order; the grid's HTML rides on the first)
    assert len(new) == 6 and "imagegen-compare" in new[0]["data"]["text/html"]
    assert len(rec.images()) == 6 and all("<img" not in m["data"]["text/html"] for m in new[1:])
    updates = rec.of_type("update_display_data")
    assert updates and {u["display_id"] for u in updates} == {new[0]["display_id"]}
    assert updates[-1]["data"]["text/html"].count("<img ") == 6
    cells = sorted(result.cells, key=lambda c: (c.row, c.col))
    previews = [c.response.artifacts[0].preview(result.max_side) for c in cells]
    assert [m["data"][p[0]] for m, p in zip([updates[-1]] + new[1:], previews)] == \
        [base64.b64encode(p[1]).decode() for p in previews]
    # on screen already: displaying it shows nothing (no Out[] after the grid)
    with recording_display(globalipapp.get_ipython()) as rec:
        globalipapp.get_ipython().display_formatter.format(result)
    assert rec.messages == []
    assert "shown above" in result._repr_mimebundle_()["text/plain"]
    assert "text/html" not in result._repr_mimebundle_() and result._repr_html_() is None


# ---------------------------------------------------------------------------------------------
# the synchronous entry point, with the kernel's client from IMAGE_*
# ---------------------------------------------------------------------------------------------
def test_sync_compare_uses_the_kernel_client_and_its_cache(emulator_thread, emulator_env):
    emulator_env(emulator_thread, cache=True)
    import jupyter_imagegen
    try:
        before = emulator_thread.request_count
        result = jupyter_imagegen.compare(prompts=PROMPTS, models=MODELS[:2], record=False)
        assert result.shape == (2, 2) and result.ok == 4
        assert emulator_thread.request_count == before + 4
        again = compare(prompts=PROMPTS, models=MODELS[:2], record=False)
        assert again.ok == 4 and emulator_thread.request_count == before + 4
    finally:
        runtime.close()


def test_helpers():
    assert split_prompts("a fox\n---\n\na lighthouse\n  ---  \n\n---\n") == ["a fox", "a lighthouse"]
    assert split_prompts("one line --- not a separator") == ["one line --- not a separator"]
    assert parse_compare_spec("model=a, b,c") == ("model", ["a", "b", "c"])
    assert parse_compare_spec("aspect_ratio=1:1,16:9") == ("aspect", ["1:1", "16:9"])
    for bad in ("model", "colour=red", "model=", "prompt=a,b"):
        with pytest.raises(ValueError):
            parse_compare_spec(bad)


# ---------------------------------------------------------------------------------------------
# notebook level: a real kernel runs the notebook twice; the second run costs no HTTP call
# ---------------------------------------------------------------------------------------------
def _run_notebook(cells, workdir: Path, env_updates, kernel_dir: Path):
    """`cells` as a notebook run by nbclient in a new kernel of this interpreter (tests/kernels.py)
    working in `workdir`, with `env_updates` in its environment; returns the executed notebook."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    env = kernel_env(sys.executable, **env_updates)
    with running_kernel(sys.executable, env=env, cwd=workdir, workdir=kernel_dir) as kernel:
        return run_notebook(kernel, nb, timeout=90)


@pytest.mark.kernel
@pytest.mark.timeout(180)
def test_notebook_compare_3_models_x_2_prompts_then_rerun_is_free(emulator_thread, tmp_path):
    pytest.importorskip("ipykernel")
    env = {"IMAGE_AUTH_TOKEN": TOKEN, "IMAGE_API_TYPE": "openai_images",
           "IMAGE_BASE_URL": emulator_thread.base_url_for("openai_images"), "IMAGE_CACHE_DIR": str(tmp_path / "cache")}
    env_clear = ("IMAGE_CACHE", "IMAGE_MODEL")
    cells = [
        "import os\n" + "".join(f"os.environ.pop({k!r}, None)\n" for k in env_clear) +
        "from jupyter_imagegen import compare\n%load_ext jupyter_imagegen",
        f"%%imagegen --compare model={','.join(MODELS)} --save renders\n{PROMPTS[0]}\n---\n{PROMPTS[1]}",
        f"compare(prompts={PROMPTS!r}, models={MODELS!r})",
    ]

    def grids(cell):
        return [o for o in cell.outputs if "imagegen-compare" in o.get("data", {}).get("text/html", "")]

    before = emulator_thread.request_count
    nb = _run_notebook(cells, tmp_path, env, tmp_path / "k")
    assert emulator_thread.request_count == before + 6      # the Python cell was answered from the cache
    magic_cell, python_cell = nb.cells[1], nb.cells[2]
    # the magic: ONE labelled grid (updated in place while it ran), each image also a standard
    # image output, and no Out[] at all
    assert len(grids(magic_cell)) == 1
    assert sum(bool({"image/png", "image/jpeg"} & set(o.get("data", {}))) for o in magic_cell.outputs) == 6
    html = grids(magic_cell)[0]["data"]["text/html"]
    assert html.count("<table") == 1 and html.count("<img ") == 6 and "prompt \\ model" in html
    assert all(f">{m}</th>" in html for m in MODELS) and all(p in html for p in PROMPTS)
    assert not [o for o in magic_cell.outputs if o["output_type"] == "execute_result"]
    assert len(grids(python_cell)) == 1 and "6 from cache" in grids(python_cell)[0]["data"]["text/html"]
    saved = sorted((tmp_path / "renders").glob("*.png"))
    assert len(saved) == 6 and sorted(load(p).prompt for p in saved) == sorted(PROMPTS * 3)
    assert all(load(p).prompt.encode() in p.read_bytes() for p in saved)     # every file carries its prompt
    # the whole notebook again, in a new kernel: everything from the on-disk request cache
    nb2 = _run_notebook(cells, tmp_path, env, tmp_path / "k")
    assert emulator_thread.request_count == before + 6
    for cell in nb2.cells[1:]:
        assert len(grids(cell)) == 1 and "6 from cache" in grids(cell)[0]["data"]["text/html"]
    for f in tmp_path.rglob("*"):
        if f.is_file() and f.suffix in (".png", ".json", ".ipynb"):
            assert TOKEN.encode() not in f.read_bytes()
