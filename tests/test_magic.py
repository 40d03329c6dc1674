"""%%imagegen / %imagegen driven through an IPython shell against the emulator (real HTTP on
127.0.0.1), plus what it relies on in the runtime (interrupts, the shared client)."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
from IPython.core.error import UsageError

from _image_helpers import make_png
from _magic_helpers import background_tasks, interrupt_when, refused
from jupyter_imagegen.errors import GenerationCancelled
from jupyter_imagegen.runtime import runtime
from jupyter_imagegen.magic import ImageGenMagics
from jupyter_imagegen.magic_options import expand_variables, split_options
from jupyter_imagegen.saving import slugify
from jupyter_imagegen.model import Artifact, ImageResponse

TOKEN = "sk-magic-test-token-0123456789"


def run(shell, code: str):
    return shell.run_cell(code, store_history=False)


def last_request(emulator_thread):
    return emulator_thread.requests[-1]


# ---------------------------------------------------------------------------------------------
# option parsing: good
# ---------------------------------------------------------------------------------------------
def test_options_reach_the_request(ip, emulator_thread):
    shell, rec = ip
    before = emulator_thread.request_count
    res = run(shell, "%%imagegen -n 2 --size 1024x1536 --quality low --format jpeg --background opaque "
                     "--retries 1 --timeout 9 --model gpt-image-1-mini --api openai --out r\n"
                     "  a red fox in fresh snow  \n")
    assert res.success, res.error_in_exec
    resp = shell.user_ns["r"]
    assert isinstance(resp, ImageResponse) and resp.success
    assert res.result is resp
    assert emulator_thread.request_count == before + 1
    sent = last_request(emulator_thread)
    assert sent["prompt"] == "a red fox in fresh snow"
    assert sent["model"] == "gpt-image-1-mini"
    assert (sent["n"], sent["size"], sent["quality"], sent["output_format"], sent["background"]) == \
        (2, "1024x1536", "low", "jpeg", "opaque")
    assert [a.mime_type for a in resp.artifacts] == ["image/jpeg", "image/jpeg"]
    assert resp.artifacts[0].size == (1024, 1536)
    req = resp.request
    assert (req.max_attempts, req.timeout, req.api_type) == (2, 9.0, "openai_images")


def test_size_and_aspect_are_checked_by_the_chosen_api(ip, emulator_thread):
    shell, rec = ip
    shell.user_ns["or_url"] = emulator_thread.base_url_for("openrouter_chat")
    res = run(shell, "%imagegen --api openrouter --base-url {or_url} --size 2k --model google/gemini-2.5-flash-image a fox")
    assert res.success and res.result.success, res.error_in_exec or res.result.error
    assert last_request(emulator_thread)["image_size"] == "2K"
    res = run(shell, "%imagegen --size 1024X1024 a fox")
    assert res.result.success and last_request(emulator_thread)["size"] == "1024x1024"


@pytest.mark.parametrize("line, prompt", [
    ("%imagegen a cat's \"best\" hat", 'a cat\'s "best" hat'),
    ("%imagegen -n 2 --size=1024x1024 a fox", "a fox"),
    ("%imagegen -n2 'a quoted prompt'", "a quoted prompt"),
    ("%imagegen --quiet -- --a prompt that starts with dashes", "--a prompt that starts with dashes"),
    ("%imagegen --aspect 16:9 a wide valley", "a wide valley"),
])
def test_line_form_keeps_the_prompt_as_typed(ip, emulator_thread, line, prompt):
    shell, rec = ip
    res = run(shell, line)
    assert res.success, res.error_in_exec
    assert last_request(emulator_thread)["prompt"] == prompt


def test_split_options_stops_at_the_prompt():
    parser = ImageGenMagics.imagegen.parser
    assert split_options('-n 2 --image "my file.png" --quiet a fox -n 3', parser) == \
        (["-n", "2", "--image", "my file.png", "--quiet"], "a fox -n 3")
    assert split_options("--size=512x512 -n3", parser) == (["--size=512x512", "-n3"], "")
    assert split_options("-- -n 2", parser) == ([], "-n 2")


def test_help_lists_every_option(ip, capsys):
    shell, rec = ip
    doc = ImageGenMagics.imagegen.__doc__
    for opt in ("--api", "--model", "--base-url", "-n", "--size", "--aspect", "--quality", "--format",
                "--background", "--image", "--out", "--save", "--retries", "--timeout", "--quiet", "--fault"):
        assert re.search(rf"(^|\s){re.escape(opt)}\b", doc), opt
    assert "emulator only" in doc
    run(shell, "%%imagegen?")
    out = capsys.readouterr().out
    assert "--aspect" in out and "::" not in out
    # after IPython's "Docstring:" label, the help starts with the usage line
    assert re.search(r"Docstring:\s*(\x1b\[[0-9;]*m)*\s*%%imagegen \[options\]\n", out), out[:300]


# ---------------------------------------------------------------------------------------------
# option parsing and input errors: one line, nothing sent, nothing displayed
# ---------------------------------------------------------------------------------------------
BAD = [
    ("%%imagegen --colour red\na cat", "unknown option --colour"),
    ("%%imagegen --qual low\na cat", "unknown option --qual; did you mean --quality?"),
    ("%%imagegen --sise 10\na cat", "unknown option --sise; did you mean --size?"),
    ("%%imagegen --n 2\na cat", "unknown option --n; did you mean -n?"),
    ("%%imagegen -n x\na cat", "argument -n: expected a whole number"),
    ("%%imagegen -n 0\na cat", "at least 1 image"),
    ("%%imagegen --size big\na cat", "size 'big' is not available for gpt-image-1"),
    ("%%imagegen --aspect 16/9\na cat", "aspect ratio '16/9' must look like '16:9'"),
    ("%%imagegen --api dalle\na cat", "'dalle' is not a known API"),
    ("%%imagegen --base-url ftp://x\na cat", "not an http(s) URL"),
    ("%%imagegen --quality ultra\na cat", "not a quality"),
    ("%%imagegen --timeout -3\na cat", "positive number of seconds"),
    ("%%imagegen --retries many\na cat", "whole number of retries"),
    ("%%imagegen --out 1abc\na cat", "not a valid Python variable name"),
    ("%%imagegen --size 1024x1024 --aspect 16:9\na cat", "either a size or an aspect ratio"),
    ("%%imagegen -n 2 a cat\nin a hat", "unexpected text after the options"),
    ("%%imagegen\n   \n", "empty prompt"),
    ("%imagegen", "empty prompt"),
    ("%imagegen -n 2", "empty prompt"),
    ("%%imagegen\na {colour} cat", "no variable named 'colour'"),
    ("%%imagegen\na {1 +} cat", "is not a variable name or expression"),
    ("%%imagegen\na } cat", "unbalanced braces"),
    ("%%imagegen --image nosuchthing\na cat", "--image nosuchthing: no notebook variable named 'nosuchthing' and no such file"),
    ("%%imagegen --image not_an_image\na cat", "holds a dict"),
    ("%%imagegen --model {nomodel}\na cat", "no variable named 'nomodel'"),
]


@pytest.mark.parametrize("code, message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_is_one_line_and_nothing_is_sent(ip, emulator_thread, capsys, code, message):
    shell, rec = ip
    shell.user_ns["not_an_image"] = {"a": 1}
    before = emulator_thread.request_count
    res = run(shell, code)
    assert message in refused(res, rec)             # shown, and the cell does not fail
    assert capsys.readouterr().err == ""
    assert emulator_thread.request_count == before
    # --raise-error: the cell fails with the same one line (a script, or Run All that should stop)
    res = run(shell, code.replace("imagegen", "imagegen --raise-error", 1))
    assert isinstance(res.error_in_exec, UsageError), res.error_in_exec
    err = capsys.readouterr().err
    assert message in str(res.error_in_exec)
    assert err.startswith("UsageError: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err
    assert emulator_thread.request_count == before
    assert rec.messages == []


def test_missing_token_names_the_variable_and_sends_nothing(ip, emulator_thread, monkeypatch):
    shell, rec = ip
    monkeypatch.delenv("IMAGE_AUTH_TOKEN")
    before = emulator_thread.request_count
    res = run(shell, "%imagegen a lighthouse")
    message = refused(res, rec)
    assert "IMAGE_AUTH_TOKEN" in message and "nothing was sent" in message
    assert emulator_thread.request_count == before


def test_bad_environment_is_one_line(ip, emulator_thread, monkeypatch):
    shell, rec = ip
    monkeypatch.setenv("IMAGE_API_TYPE", "dalle")
    res = run(shell, "%imagegen a lighthouse")
    assert "IMAGE_API_TYPE" in refused(res, rec)


# ---------------------------------------------------------------------------------------------
# interpolation
# ---------------------------------------------------------------------------------------------
def test_interpolation_of_variables_and_expressions(ip, emulator_thread):
    shell, rec = ip
    shell.user_ns.update(animal="fox", n_legs=4, size="1536x1024")
    res = run(shell, "%%imagegen --size {size}\na {animal.upper()} with {n_legs} legs, {{literal}} braces")
    assert res.success, res.error_in_exec
    assert last_request(emulator_thread)["prompt"] == "a FOX with 4 legs, {literal} braces"
    assert last_request(emulator_thread)["size"] == "1536x1024"
    res = run(shell, "%imagegen a {animal} on the line")
    assert res.success and last_request(emulator_thread)["prompt"] == "a fox on the line"


def test_expand_variables_directly():
    ns = {"x": [1, 2, 3], "s": "hi"}
    assert expand_variables("{x[1:]} {s!r} {{x}}", ns) == "[2, 3] 'hi' {x}"
    assert expand_variables("no braces", {}) == "no braces"
    with pytest.raises(UsageError, match="no variable named 'y'"):
        expand_variables("{y}", ns)
    with pytest.raises(UsageError, match="ZeroDivisionError"):
        expand_variables("{1/0}", ns)


def test_slugify():
    assert slugify("A red fox, in snow!") == "a-red-fox-in-snow"
    assert slugify("Ünïcödé ✨") == "unicode"
    assert slugify("✨✨") == "image"
    assert len(slugify("word " * 40)) <= 40


# ---------------------------------------------------------------------------------------------
# --out, --save, the return value
# ---------------------------------------------------------------------------------------------
def test_out_stores_the_response_and_underscore_works(ip, emulator_thread, capsys):
    shell, rec = ip
    res = run(shell, "%%imagegen --out pic\na lighthouse at dusk")
    assert res.success
    pic = shell.user_ns["pic"]
    assert res.result is pic and shell.user_ns["_"] is pic
    assert pic.image.size == pic.artifacts[0].size  # a PIL image
    # the gallery was displayed once; the displayhook showed nothing more (no Out[] line: in a
    # kernel no execute_result is sent), though `_` and Out[n] hold the response
    assert len(rec.galleries()) == 1
    assert shell.user_ns["Out"][shell.execution_count - 1] is pic
    assert "ImageResponse" not in capsys.readouterr().out
    # displayed later (a new cell), the response renders in full again
    rec.messages.clear()
    run(shell, "pic")
    assert len(rec.galleries()) == 1 and len(rec.images()) == 1


def test_failed_response_is_stored_too(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --fault 400 --out bad\na lighthouse")
    assert res.success  # the cell ran; the API said no
    assert shell.user_ns["bad"].success is False


def test_save_writes_files_before_display(ip, emulator_thread, tmp_path):
    shell, rec = ip
    out_dir = tmp_path / "renders"
    rec.probe = lambda: sorted(p.name for p in out_dir.glob("*.png")) if out_dir.exists() else []
    res = run(shell, f"%%imagegen -n 2 --save {out_dir} --out r\nA red fox, in snow!")
    assert res.success, res.error_in_exec
    resp = shell.user_ns["r"]
    files = sorted(out_dir.glob("*.png"))   # each with its JSON sidecar (see test_saving.py)
    assert [str(p) for p in files] == sorted(resp.paths) and len(files) == 2
    assert sorted(p.stem for p in out_dir.glob("*.json")) == [p.stem for p in files]
    for p in files:
        assert re.fullmatch(r"\d{8}-\d{6}-a-red-fox-in-snow-[12]\.png", p.name), p.name
        # the prompt is embedded; the pixels are the ones the API sent
        assert b"A red fox, in snow!" in p.read_bytes()
        from PIL import Image
        assert Image.open(p).tobytes() in [a.image.tobytes() for a in resp.artifacts]
    gallery = rec.galleries()[0]
    assert gallery["probe"] == [p.name for p in files]      # on disk before the gallery was shown
    assert gallery["data"]["text/html"].count("saved: <a href=") == 2   # links JupyterLab opens
    # the same prompt again in the same second: new names, nothing overwritten
    res = run(shell, f"%%imagegen -n 2 --save {out_dir}\nA red fox, in snow!")
    assert len(list(out_dir.glob("*.png"))) == 4


def test_save_into_an_impossible_directory_is_one_line(ip, emulator_thread, tmp_path):
    shell, rec = ip
    blocker = tmp_path / "file"
    blocker.write_text("x")
    before = emulator_thread.request_count
    res = run(shell, f"%imagegen --save {blocker}/sub a fox")
    assert "--save" in refused(res, rec)
    assert emulator_thread.request_count == before


# ---------------------------------------------------------------------------------------------
# --image from files and notebook variables
# ---------------------------------------------------------------------------------------------
def test_image_from_file_and_variables(ip, emulator_thread, tmp_path):
    from PIL import Image
    shell, rec = ip
    path = tmp_path / "sketch.png"
    path.write_bytes(make_png())
    shell.user_ns.update(
        pil_img=Image.new("RGB", (40, 30), (0, 120, 0)),
        art=Artifact(make_png(color=(0, 0, 200))),
        raw=make_png(color=(9, 9, 9)),
        prev=ImageResponse(request_id="x", success=True, artifacts=[Artifact(make_png(color=(1, 2, 3)))]),
    )
    res = run(shell, f"%%imagegen --image {path} --image pil_img --image art --image raw --image prev "
                     "--image prev.artifacts[0]\nput them together")
    assert res.success, res.error_in_exec
    sent = last_request(emulator_thread)
    assert sent["path"].endswith("/images/edits") and sent["input_images"] == 6


def test_image_from_an_empty_response_is_one_line(ip, emulator_thread):
    shell, rec = ip
    shell.user_ns["empty"] = ImageResponse(request_id="x", success=False, error="HTTP 500")
    res = run(shell, "%imagegen --image empty edit it")
    assert "has no images" in refused(res, rec)


# ---------------------------------------------------------------------------------------------
# the live event log: one handle, updated in place
# ---------------------------------------------------------------------------------------------
def test_event_log_updates_in_place(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --fault 429:retry_after=0.2 --fault 503:retry_after=0.1\na lighthouse")
    assert res.success and res.result.success, res.result
    shown = rec.of_type("display_data")
    updates = rec.of_type("update_display_data")
    # exactly two outputs: the log and the gallery; everything else updated the log
    assert len(shown) == 2
    log_id = shown[0]["display_id"]
    assert log_id and "imagegen-log" in shown[0]["data"]["text/html"]
    assert "<img " in shown[1]["data"]["text/html"] and shown[1]["display_id"] != log_id
    assert len(updates) >= 5 and {u["display_id"] for u in updates} == {log_id}
    # each update is the whole log so far (it grows; nothing was appended as a new output)
    texts = [shown[0]["data"]["text/plain"]] + [u["data"]["text/plain"] for u in updates]
    assert all(len(a.splitlines()) <= len(b.splitlines()) for a, b in zip(texts, texts[1:]))
    final = texts[-1]
    for needle in ("started: gpt-image-1", "attempt 1/3", "429 rate limited — retried after 0.2 s", "attempt 2/3",
                   "503 service unavailable — retried after 0.1 s", "attempt 3/3", "done: 1 image in"):
        assert needle in final, (needle, final)
    assert 'data-state="done"' in updates[-1]["data"]["text/html"]
    sent = emulator_thread.requests[-3:]
    assert [r["status"] for r in sent] == [429, 503, 200]


def test_quiet_shows_only_the_images(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --quiet --fault 429:retry_after=0.1\na lighthouse")
    assert res.success
    assert rec.of_type("update_display_data") == []
    assert len(rec.messages) == 1 and "<img " in rec.messages[0]["data"]["text/html"]


def test_api_error_renders_a_box_with_suggestions_and_masked_key(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --fault 401 --out r\na lighthouse")
    resp = shell.user_ns["r"]
    assert res.success and not resp.success and resp.status_code == 401
    box = rec.of_type("display_data")[-1]["data"]["text/html"]
    assert "imagegen-error" in box and "HTTP 401" in box
    assert resp.suggestions and resp.suggestions[0].split("(")[0].strip()[:20] in box
    assert "sk-m...6789" in box
    everything = json.dumps(rec.messages)
    assert TOKEN not in everything
    assert "failed (HTTP 401)" in rec.of_type("update_display_data")[-1]["data"]["text/plain"]


def test_cache_hit_is_shown_in_the_log(ip, emulator_thread, monkeypatch):
    shell, rec = ip
    monkeypatch.delenv("IMAGE_CACHE")        # the magic's default: cache on
    before = emulator_thread.request_count
    assert run(shell, "%imagegen a cached lighthouse").success
    assert run(shell, "%imagegen a cached lighthouse").success
    assert emulator_thread.request_count == before + 1
    assert "from cache" in rec.of_type("update_display_data")[-1]["data"]["text/plain"]
    assert run(shell, "%imagegen --fresh a cached lighthouse").success
    assert emulator_thread.request_count == before + 2


# ---------------------------------------------------------------------------------------------
# interrupt mid-retry
# ---------------------------------------------------------------------------------------------
def test_interrupt_mid_retry_cancels_cleanly(ip, emulator_thread, capsys):
    shell, rec = ip
    retrying = lambda: any("retrying in" in m["data"].get("text/plain", "") for m in rec.messages)  # noqa: E731
    t, fired = interrupt_when(retrying, 0.3)
    t0 = time.monotonic()
    try:
        res = run(shell, "%%imagegen --fault 429:retry_after=5\na slow lighthouse")
    finally:
        t.join(5)
    took = time.monotonic() - t0
    assert fired
    assert isinstance(res.error_in_exec, KeyboardInterrupt)
    assert isinstance(res.error_in_exec, GenerationCancelled)
    assert took < 1.5, f"took {took:.2f} s"       # 0.3 s + the first attempt; the 5 s wait was cut
    assert not background_tasks()   # no orphan task
    final = rec.messages[-1]
    assert final["msg_type"] == "update_display_data" and "cancelled after" in final["data"]["text/plain"]
    assert emulator_thread.request_count and last_request(emulator_thread)["status"] == 429  # no second attempt sent
    capsys.readouterr()
    # the session stays usable: the next cell works
    rec.messages.clear()
    res = run(shell, "%imagegen a quick lighthouse")
    assert res.success and res.result.success
    assert len(rec.galleries()) == 1


def test_interrupt_during_a_request_in_flight(ip, emulator_thread):
    shell, rec = ip
    calling = lambda: any("attempt 1/" in m["data"].get("text/plain", "") for m in rec.messages)  # noqa: E731
    t, fired = interrupt_when(calling, 0.3)
    t0 = time.monotonic()
    try:
        res = run(shell, "%%imagegen --fault slow_headers:delay=5\na lighthouse that takes long")
    finally:
        t.join(5)
    assert fired and isinstance(res.error_in_exec, GenerationCancelled)
    assert time.monotonic() - t0 < 1.5
    assert not background_tasks()
    assert "cancelled after" in rec.messages[-1]["data"]["text/plain"]
    assert run(shell, "%imagegen the next one").result.success


# ---------------------------------------------------------------------------------------------
# the per-kernel client
# ---------------------------------------------------------------------------------------------
def test_one_client_reused_and_closed_without_warnings(ip, emulator_thread):
    shell, rec = ip
    assert run(shell, "%imagegen one").success
    client = runtime.current_client
    assert client is not None
    assert run(shell, "%imagegen --model gpt-image-1-mini two").success
    assert runtime.current_client is client          # per-call options do not make a new client
    session = client._session
    assert session is not None and not session.closed
    gc.collect()      # what earlier tests left behind (a kernel client's sockets) is not ours to report
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime.close()
        del client
        gc.collect()
    assert session.closed
    assert runtime.current_client is None
    assert not [w for w in caught if "Unclosed" in str(w.message)], [str(w.message) for w in caught]


def test_unload_removes_the_magics_and_closes_the_client(ip, emulator_thread):
    shell, rec = ip
    assert run(shell, "%imagegen one").success
    session = runtime.current_client._session
    shell.extension_manager.unload_extension("jupyter_imagegen")
    try:
        assert "imagegen" not in shell.magics_manager.magics["cell"]
        assert "imagegen" not in shell.magics_manager.magics["line"]
        assert session.closed and runtime.current_client is None
    finally:
        shell.extension_manager.load_extension("jupyter_imagegen")
    assert run(shell, "%imagegen two").success


# ---------------------------------------------------------------------------------------------
# issue 5: --compare and '---' prompts, --save metadata, --from, history, %imagegen_history
# ---------------------------------------------------------------------------------------------
COMPARE_MODELS = ("gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5")


def test_compare_models_and_prompts_renders_one_grid(ip, emulator_thread, capsys):
    from jupyter_imagegen.compare import CompareResult
    shell, rec = ip
    before = emulator_thread.request_count
    res = run(shell, f"%%imagegen --compare model={','.join(COMPARE_MODELS)} --quality low --out g\n"
                     "a red fox in snow\n---\na lighthouse at {{dusk}}\n")
    assert res.success, res.error_in_exec
    grid = shell.user_ns["g"]
    assert isinstance(grid, CompareResult) and res.result is grid
    assert grid.shape == (2, 3) and grid.row_labels == ["a red fox in snow", "a lighthouse at {dusk}"]
    assert grid.col_labels == list(COMPARE_MODELS) and grid.ok == 6
    assert emulator_thread.request_count == before + 6
    sent = emulator_thread.requests[-6:]
    assert sorted((r["prompt"], r["model"]) for r in sent) == \
        sorted((p, m) for p in ("a red fox in snow", "a lighthouse at {dusk}") for m in COMPARE_MODELS)
    assert all(r["quality"] == "low" for r in sent)
    # one output, updated in place; the final state holds the six images, and each image is also
    # a standard image output of its own
    shown = rec.of_type("display_data")
    assert len(shown) == 6 and "imagegen-compare" in shown[0]["data"]["text/html"]
    assert len(rec.images()) == 6
    final = ([shown[0]] + rec.of_type("update_display_data"))[-1]["data"]["text/html"]
    assert final.count("<img ") == 6 and final.count("<table") == 1
    assert "prompt \\ model" in final
    out = capsys.readouterr().out
    assert "[1,2]" not in out                                              # no second grid as Out[]
    assert "<table" in grid._repr_mimebundle_()["text/html"]               # displayed later: in full
    # recorded in the history, one entry per cell
    from jupyter_imagegen import history
    assert [e.source for e in history[-6:]] == ["compare"] * 6


def test_compare_keeps_a_failing_cell_in_place_and_saves_the_rest(ip, emulator_thread, tmp_path):
    from jupyter_imagegen import load
    shell, rec = ip
    out = tmp_path / "grid"
    res = run(shell, f"%%imagegen --compare model=gpt-image-1,no-such-model --compare size=1024x1024,1536X1024 "
                     f"--save {out} --out g\na red fox")
    assert res.success, res.error_in_exec
    g = shell.user_ns["g"]
    assert g.shape == (2, 2) and (g.row_title, g.col_title) == ("model", "size")
    assert g.row_labels == ["gpt-image-1", "no-such-model"] and g.col_labels == ["1024x1024", "1536x1024"]
    assert (g.ok, g.failed) == (2, 2)
    assert all(r.success for r in g.grid[0]) and all(r.status_code == 400 for r in g.grid[1])
    html = rec.galleries()[-1]["data"]["text/html"]
    assert html.count("imagegen-error") == 2 and html.count("<img ") == 2 and len(rec.images()) == 2
    files = sorted(out.glob("*.png"))
    assert len(files) == 2 and all(load(p).prompt == "a red fox" for p in files)


@pytest.mark.parametrize("code, message", [
    ("%%imagegen --compare colour=red,blue\na cat", "KEY one of model, size, aspect, api, quality"),
    ("%%imagegen --compare model=\na cat", "no values"),
    ("%%imagegen --compare api=dalle,openai\na cat", "'dalle' is not a known API"),
    ("%%imagegen --compare quality=ultra\na cat", "not a quality"),
    ("%%imagegen --compare model=gpt-image-1,gpt-image-1-mini --size 12x12\na cat", "12x12"),
    ("%imagegen --from nowhere.png", "--from nowhere.png: no such file"),
    ("%imagegen --rerun 99999", "--rerun 99999: no history entry #99999"),
    ("%imagegen --rerun 0", "numbered from 1"),
])
def test_bad_compare_and_rerun_input_is_one_line(ip, emulator_thread, capsys, code, message):
    shell, rec = ip
    before = emulator_thread.request_count
    res = run(shell, code)
    assert message in refused(res, rec)
    assert emulator_thread.request_count == before


def test_from_reruns_exactly_the_saved_request(ip, emulator_thread, tmp_path):
    shell, rec = ip
    sketch = tmp_path / "sketch.png"
    sketch.write_bytes(make_png())
    out = tmp_path / "saved"
    res = run(shell, f"%%imagegen --save {out} --image {sketch} --model gpt-image-1-mini --size 1024x1536 "
                     f"--quality low --format webp --background transparent --seed 7 --out first\n"
                     "a red fox wearing a hat")
    assert res.success, res.error_in_exec
    original = last_request(emulator_thread)
    saved = shell.user_ns["first"].paths[0]
    assert saved.endswith(".webp")
    keys = ("path", "model", "prompt", "n", "size", "quality", "output_format", "background", "input_images",
            "body_keys")
    assert original["content_type"].startswith("multipart/form-data")

    assert run(shell, f"%imagegen --from {saved} --out again").success
    again = last_request(emulator_thread)
    assert {k: again.get(k) for k in keys} == {k: original.get(k) for k in keys}
    assert shell.user_ns["again"].request.seed == 7
    # without the sidecar: from the metadata embedded in the WebP file
    Path(saved).with_suffix(".json").unlink()
    assert run(shell, f"%imagegen --from {saved}").success
    assert {k: last_request(emulator_thread).get(k) for k in keys} == {k: original.get(k) for k in keys}
    # options on the line override, a cell body replaces the prompt
    assert run(shell, f"%%imagegen --from {saved} --size 1536x1024 -n 2\na red fox wearing a crown").success
    changed = last_request(emulator_thread)
    assert (changed["size"], str(changed["n"]), changed["prompt"], changed["model"], changed["input_images"]) == \
        ("1536x1024", "2", "a red fox wearing a crown", "gpt-image-1-mini", 1)
    # an image without metadata says so
    plain = tmp_path / "plain.png"
    plain.write_bytes(make_png())
    rec.messages.clear()
    res = run(shell, f"%imagegen --from {plain}")
    assert "no jupyter-imagegen metadata" in refused(res, rec)


def test_history_records_the_magic_and_reruns_and_feeds_inputs(ip, emulator_thread, capsys):
    from jupyter_imagegen import history
    shell, rec = ip
    history.clear()
    assert run(shell, "%%imagegen --size 1024x1536 --quality low\na lighthouse at dusk").success
    entry = history[-1]
    assert entry.source == "magic" and entry.prompt == "a lighthouse at dusk" and entry.success
    assert entry.attempts == 1 and entry.usage is not None and entry.request.token is None
    original = last_request(emulator_thread)
    n = entry.number
    assert run(shell, f"%imagegen --rerun {n}").success
    keys = ("path", "model", "prompt", "n", "size", "quality", "output_format")
    assert {k: last_request(emulator_thread).get(k) for k in keys} == {k: original.get(k) for k in keys}
    assert run(shell, f"%imagegen --rerun {n} --size 1536x1024").success
    assert last_request(emulator_thread)["size"] == "1536x1024"
    # an entry's image as an input, without importing anything
    assert run(shell, f"%imagegen --image history[{n}] --image history[-1].artifacts[0] add a moon").success
    assert last_request(emulator_thread)["input_images"] == 2
    # failures are recorded too
    run(shell, "%imagegen --fault 400 a failing one")
    assert not history[-1].success and history[-1].status_code == 400
    assert len(history) == 5
    # %imagegen_history: one table with thumbnails, newest first, no token
    rec.messages.clear()
    assert run(shell, "%imagegen_history").success
    assert len(rec.messages) == 1
    table = rec.messages[0]["data"]["text/html"]
    assert "imagegen-history" in table and table.count("<img ") >= 4
    assert table.index("a failing one") < table.index("a lighthouse at dusk") and TOKEN not in table
    rec.messages.clear()
    run(shell, "%imagegen_history -n 2")
    assert "latest 2 of 5" in rec.messages[0]["data"]["text/html"]
    rec.messages.clear()
    res = run(shell, "%imagegen_history --bogus")
    assert "unrecognized arguments: --bogus" in refused(res, rec)
    run(shell, "%imagegen_history --clear")
    assert len(history) == 0 and "5 entries forgotten" in capsys.readouterr().out


def test_unload_removes_the_history_magic(ip, emulator_thread):
    shell, rec = ip
    assert "imagegen_history" in shell.magics_manager.magics["line"]
    shell.extension_manager.unload_extension("jupyter_imagegen")
    try:
        assert "imagegen_history" not in shell.magics_manager.magics["line"]
    finally:
        shell.extension_manager.load_extension("jupyter_imagegen")


def test_interrupting_a_compare_cancels_every_cell(ip, emulator_thread):
    shell, rec = ip
    before = emulator_thread.request_count
    t, fired = interrupt_when(lambda: emulator_thread.request_count >= before + 3, 0.3)
    t0 = time.monotonic()
    try:
        res = run(shell, f"%%imagegen --compare model={','.join(COMPARE_MODELS)} --fault 429:retry_after=5\na fox")
    finally:
        t.join(5)
    assert fired
    assert isinstance(res.error_in_exec, GenerationCancelled)
    assert time.monotonic() - t0 < 2.0
    assert not background_tasks()
    assert emulator_thread.request_count == before + 3                      # no retry was sent
    final = rec.messages[-1]["data"]
    assert final["text/plain"].count("cancelled") == 3
    assert run(shell, "%imagegen a quick lighthouse").success  # the next cell works


# ---------------------------------------------------------------------------------------------
# --stream / --partials: the image forms in place; interrupt drops the stream
# ---------------------------------------------------------------------------------------------
def _result_messages(rec):
    log_id = rec.of_type("display_data")[0]["display_id"]
    return [m for m in rec.messages if m["display_id"] != log_id]


def test_stream_partials_update_one_output_in_place(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --partials 3 --out r\na fox forming")
    assert res.success and shell.user_ns["r"].success, res.error_in_exec
    sent = last_request(emulator_thread)
    assert sent["stream"] is True and "partial_images" in sent["body_keys"]
    assert [k for k, _ in sent["stream_images"]] == ["partial"] * 3 + ["final"]
    assert len(rec.of_type("display_data")) == 2, "the log and one image output, not one per partial"
    result = _result_messages(rec)
    assert [m["msg_type"] for m in result] == ["display_data"] + ["update_display_data"] * 3
    assert len({m["display_id"] for m in result}) == 1
    assert [m["data"]["text/plain"] for m in result[:3]] == [f"partial image {i}" for i in (1, 2, 3)]
    assert "<img " in result[-1]["data"]["text/html"] and "ImageResponse" in result[-1]["data"]["text/plain"]
    log = rec.of_type("update_display_data")
    assert "partial image 3" in [m for m in log if m["display_id"] != result[0]["display_id"]][-1]["data"]["text/plain"]
    req = shell.user_ns["r"].request
    assert (req.stream, req.partial_images) == (True, 3)


def test_stream_default_and_zero_partials(ip, emulator_thread):
    shell, rec = ip
    assert run(shell, "%imagegen --stream a fox").result.success
    assert [k for k, _ in last_request(emulator_thread)["stream_images"]] == ["partial", "partial", "final"]
    rec.messages.clear()
    assert run(shell, "%imagegen --partials 0 a fox").result.success
    sent = last_request(emulator_thread)
    assert sent["stream"] is True and [k for k, _ in sent["stream_images"]] == ["final"]
    assert [m["msg_type"] for m in _result_messages(rec)] == ["display_data"]
    assert run(shell, "%imagegen a fox").result.request.stream is False


def test_stream_works_for_the_other_formats(ip, emulator_thread):
    shell, rec = ip
    for api in ("openai_responses", "openrouter_chat"):
        shell.user_ns["url"] = emulator_thread.base_url_for(api)
        rec.messages.clear()
        res = run(shell, f"%imagegen --api {api} --base-url {{url}} --partials 2 a fox")
        assert res.success and res.result.success, res.error_in_exec or res.result.error
        assert last_request(emulator_thread)["stream"] is True
        parts = 0 if api == "openrouter_chat" else 2
        assert [m["msg_type"] for m in _result_messages(rec)] == ["display_data"] + ["update_display_data"] * parts


def test_stream_retries_a_broken_stream_in_the_same_output(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --partials 2 --fault stream_break\na fox")
    assert res.success and res.result.success and res.result.attempts == 2
    assert len(rec.of_type("display_data")) == 2
    text = rec.of_type("update_display_data")[-2]["data"]["text/plain"]
    assert "stream broke" in text and "attempt 2/3" in text


def test_help_lists_the_stream_options():
    doc = ImageGenMagics.imagegen.__doc__
    assert re.search(r"(^|\s)--stream\b", doc) and re.search(r"(^|\s)--partials\b", doc)


@pytest.mark.parametrize("code, message", [
    ("%imagegen --partials 4 a fox", "expected 0 to 3 partial images"),
    ("%imagegen --partials x a fox", "expected 0 to 3 partial images"),
    ("%imagegen --stream --model dall-e-3 a fox", "cannot stream"),
])
def test_bad_stream_options_are_one_line(ip, emulator_thread, capsys, code, message):
    shell, rec = ip
    before = emulator_thread.request_count
    res = run(shell, code)
    assert message in refused(res, rec)
    assert emulator_thread.request_count == before
    capsys.readouterr()


def test_rerun_with_partials(ip, emulator_thread):
    from jupyter_imagegen import history
    shell, rec = ip
    assert run(shell, "%imagegen a lighthouse").success
    n = history[-1].number
    assert run(shell, f"%imagegen --rerun {n} --partials 1").result.success
    assert last_request(emulator_thread)["stream"] is True and len(last_request(emulator_thread)["stream_images"]) == 2


def test_interrupt_mid_stream_drops_the_connection(ip, emulator_thread):
    shell, rec = ip
    partial = lambda: any(m["data"].get("text/plain") == "partial image 1" for m in rec.messages)  # noqa: E731
    t, fired = interrupt_when(partial, 0.1)
    t0 = time.monotonic()
    try:
        res = run(shell, "%%imagegen --partials 3 --fault stream_slow:delay=1\na slowly drawn fox")
    finally:
        t.join(5)
    done = time.monotonic()
    assert fired and isinstance(res.error_in_exec, GenerationCancelled)
    assert done - t0 < 1.8, f"took {done - t0:.2f} s"   # first partial at 1 s, +0.1 s; the full stream is 4 s
    assert not background_tasks()
    assert "cancelled after" in rec.messages[-1]["data"]["text/plain"]
    # the emulator sees the client go away during its next 1 s "drawing" pause
    while last_request(emulator_thread).get("outcome") != "client_disconnected" and time.monotonic() - done < 0.5:
        time.sleep(0.01)
    entry = last_request(emulator_thread)
    assert entry["outcome"] == "client_disconnected" and [k for k, _ in entry["stream_images"]] == ["partial"]
    assert run(shell, "%imagegen the next one").result.success


# ---------------------------------------------------------------------------------------------
# API errors: once, readable, with a suggestion that fits (both vendors' shapes)
# ---------------------------------------------------------------------------------------------
def _final(rec) -> List[Dict[str, Any]]:
    """What the cell shows at the end: the last version of every output."""
    last: Dict[Any, Dict[str, Any]] = {}
    for i, m in enumerate(rec.messages):
        last[m["display_id"] or i] = m["data"]
    return list(last.values())


ERRORS = [
    # (api, fault, what the box says, the code shown, a suggestion that fits)
    ("openai_images", "400:kind=size", "Invalid value: '800x600'", "invalid_value",
     "gpt-image-1 takes --size 1024x1024, 1536x1024, 1024x1536 or auto"),
    ("openrouter_chat", "400:kind=size", "Provider returned error (Google: Unsupported image size.", None,
     "OpenRouter takes a scale, --size 1K, 2K, 4K"),
    ("openai_images", "401", "Incorrect API key provided", "invalid_api_key", "The API rejected the key"),
    ("openrouter_chat", "401", "User not found.", None, "The API rejected the key"),
    ("openai_images", "402", "You exceeded your current quota", "insufficient_quota", "add credits"),
    ("openrouter_chat", "402", "This request requires more credits", None, "add credits"),
    ("openai_images", "404", "The model `gpt-image-1` does not exist", "model_not_found",
     "models for openai_images include gpt-image-1, gpt-image-1-mini, dall-e-3, dall-e-2"),
    ("openrouter_chat", "404", "No endpoints found for google/gemini-2.5-flash-image.", None,
     "models for openrouter_chat include google/gemini-2.5-flash-image"),
]


@pytest.mark.parametrize("api, fault, says, code, suggestion", ERRORS, ids=[f"{e[0]}-{e[1]}" for e in ERRORS])
def test_an_api_error_is_shown_once_and_readable(ip, emulator_thread, emulator_env, api, fault, says, code, suggestion):
    shell, rec = ip
    emulator_env(emulator_thread, api=api)
    res = run(shell, f"%%imagegen --fault {fault}\na lighthouse")
    assert res.error_in_exec is None and res.result.success is False      # shown, not raised
    shown = _final(rec)
    html = "".join(d.get("text/html", "") for d in shown)
    text = "\n".join(d.get("text/plain", "") for d in shown)
    status = fault.split(":")[0]
    for rendered in (html, text):
        assert rendered.count(says.replace("'", "&#x27;") if rendered is html else says) == 1, rendered
        assert suggestion in rendered
        assert "HTTP 4" not in rendered.replace(f"HTTP {status}", "")           # the status, said in the title
        assert f"HTTP {status}: " not in rendered                              # ... not before the message too
        assert '{"error"' not in rendered and "&quot;error&quot;" not in rendered   # never the raw body
        assert "sk-t" not in rendered or "..." in rendered
    head = re.search(r"<b>Image generation failed</b> <span[^>]*>\(([^)]*)\)", html).group(1)
    assert head == " · ".join(x for x in (f"HTTP {status}", code) if x)
    assert "token sk-" in html and "from IMAGE_AUTH_TOKEN" in html          # the key that was used, masked
    # --debug adds the answer as it was sent, folded away
    rec.messages.clear()
    run(shell, f"%%imagegen --debug --fault {fault}\na lighthouse")
    html = "".join(d.get("text/html", "") for d in _final(rec))
    assert "the answer as sent (--debug)" in html and "&quot;error&quot;" in html


def test_a_retry_wait_counts_down_live_in_the_cell(ip, emulator_thread):
    shell, rec = ip
    res = run(shell, "%%imagegen --fault 429:retry_after=3\na lighthouse")
    assert res.result.success
    log_id = rec.messages[0]["display_id"]
    lines = [re.search(r"429 rate limited — [a-z ]+\d* s?", m["data"]["text/plain"])
             for m in rec.messages if m["display_id"] == log_id]
    seen = [m.group(0).strip() for m in lines if m]
    counted = [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]]
    assert counted == ["429 rate limited — retrying in 3 s", "429 rate limited — retrying in 2 s",
                       "429 rate limited — retrying in 1 s", "429 rate limited — retried after 3 s"], seen


@pytest.mark.parametrize("api, option, asked, sent, wire", [
    ("openrouter_chat", "--size 5000x5000", ("size", "5000x5000"), ("aspect_ratio", "1:1"),
     lambda got: got["aspect_ratio"] == "1:1" and got["image_size"] is None and "size" not in got),
    ("openai_images", "--aspect 16:9", ("aspect", "16:9"), ("size", "1536x1024"),
     lambda got: got["size"] == "1536x1024" and "aspect_ratio" not in got["body_keys"]),
])
def test_what_the_api_cannot_take_is_said_with_what_was_sent(ip, emulator_thread, emulator_env, api, option,
                                                             asked, sent, wire):
    """Never silently replaced: the log says what was sent instead, the response and the history
    keep it (and --quiet shows it with the images)."""
    from jupyter_imagegen import history
    shell, rec = ip
    emulator_env(emulator_thread, api=api)
    res = run(shell, f"%%imagegen {option} --out r\na lighthouse")
    resp = shell.user_ns["r"]
    assert res.error_in_exec is None and resp.success
    notice = f"{asked[0]} {asked[1]} was sent as {sent[0]} {sent[1]}: "
    assert resp.notices and resp.notices[0].startswith(notice) and resp.sent == {sent[0]: sent[1]}
    assert wire(emulator_thread.requests[-1])            # what the emulator received
    log = [m for m in rec.messages if "imagegen-log" in m["data"].get("text/html", "")][-1]["data"]["text/plain"]
    assert notice in log
    assert history[-1].settings["sent"] == {sent[0]: sent[1]}
    assert f"(sent {sent[0]}={sent[1]})" in history._repr_mimebundle_()["text/html"]
    rec.messages.clear()
    run(shell, f"%%imagegen --quiet {option}\na lighthouse at night")
    assert notice in "".join(m["data"].get("text/html", "") for m in rec.messages)
