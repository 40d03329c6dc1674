"""Files someone sent you: a re-run of their image never sends your key where their file says.

An image saved by jupyter-imagegen records the request that made it, base URL included. A
request rebuilt from such a file (``%imagegen --from``, ``load(...).rerun()``) goes to *your*
configured API: the recorded API type and base URL are shown, and used only when you pass them
(``--base-url`` / ``--api``, ``base_url=`` / ``api_type=``). The input images a file names are
read only when their bytes match the recorded checksum. Tested with a second emulator standing
in for the stranger's server: it accepts the same key, so a request sent there would succeed.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from _image_helpers import make_png
from _magic_helpers import refused
from jupyter_imagegen import load
from jupyter_imagegen.emulator import EmulatorThread
from jupyter_imagegen.loading import RecordedAPINotUsed
from jupyter_imagegen.saving import SCHEMA, embed_metadata, sidecar_path

TOKEN = "sk-hostile-files-SECRET-0a1b2c3d4e5f6a7b"


@pytest.fixture(scope="module")
def stranger():
    """The server a hostile file points at (it would accept our key)."""
    with EmulatorThread(token=TOKEN) as emu:
        yield emu


def hostile_image(folder: Path, *, api_type: str, base_url: str, where: str = "sidecar",
                  images=None, model: str = "gpt-image-1") -> Path:
    """A PNG whose recorded request names `base_url` (in a sidecar, or embedded only)."""
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"prompt": "a lighthouse", "model": model, "api_type": api_type, "base_url": base_url, "n": 1,
                "size": None, "params": {}, "images": images or [], "mask": None}
    doc = {"schema": SCHEMA, "prompt": "a lighthouse", "model": model, "api_type": api_type, "request": settings}
    path = folder / "their.png"
    if where == "sidecar":
        path.write_bytes(make_png())
        sidecar_path(path).write_text(json.dumps({**doc, "file": path.name}))
    else:
        path.write_bytes(embed_metadata(make_png(), doc))
    return path


@pytest.mark.parametrize("where", ["sidecar", "embedded"])
@pytest.mark.parametrize("recorded_api", ["openai_images", "openrouter_chat"])
def test_from_a_strangers_file_goes_to_your_api(ip, stranger, emulator_thread, tmp_path, where, recorded_api):
    shell, rec = ip
    path = hostile_image(tmp_path / "inbox", api_type=recorded_api, base_url=stranger.base_url_for(recorded_api),
                         where=where)
    before, theirs = emulator_thread.request_count, stranger.request_count
    shell.run_cell(f"%imagegen --from {path} --out again", store_history=False)
    resp = shell.user_ns["again"]
    assert resp.success, resp.error
    assert stranger.request_count == theirs, "the stranger's server received a request"
    assert emulator_thread.request_count == before + 1
    assert resp.api_type == "openai_images" and resp.api_url.startswith(emulator_thread.base_url_for("openai_images"))
    if recorded_api != "openai_images":      # the recorded model belongs to the other API
        assert resp.model == "gpt-image-1"
    # the log says where the file's request went and where this one goes
    log = json.dumps(rec.messages)
    assert stranger.base_url_for(recorded_api) in log and "your configured API" in log, log[-2000:]
    assert f"at 127.0.0.1:{emulator_thread.port}" in log      # the start line names the host


def test_load_rerun_goes_to_your_api_and_says_so(ip, stranger, emulator_thread, tmp_path):
    path = hostile_image(tmp_path / "inbox", api_type="openai_images",
                         base_url=stranger.base_url_for("openai_images"))
    theirs = stranger.request_count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resp = load(path).rerun()
    assert resp.success and stranger.request_count == theirs
    notes = [str(w.message) for w in caught if issubclass(w.category, RecordedAPINotUsed)]
    assert notes and stranger.base_url_for("openai_images") in notes[0]
    assert load(path).to_request().base_url is None


def test_an_explicit_base_url_is_your_choice(ip, stranger, emulator_thread, tmp_path):
    """--base-url (and base_url=) send the request where you say, the file's URL included."""
    shell, _ = ip
    url = stranger.base_url_for("openai_images")
    path = hostile_image(tmp_path / "inbox", api_type="openai_images", base_url=url)
    theirs = stranger.request_count
    shell.run_cell(f"%imagegen --from {path} --base-url {url} --out again", store_history=False)
    assert shell.user_ns["again"].success and stranger.request_count == theirs + 1
    assert load(path).rerun(base_url=url).success and stranger.request_count == theirs + 2


def test_the_same_api_keeps_the_recorded_model_and_says_nothing(ip, emulator_thread, tmp_path):
    shell, rec = ip
    path = hostile_image(tmp_path / "mine", api_type="openai_images",
                         base_url=emulator_thread.base_url_for("openai_images"), model="gpt-image-1-mini")
    shell.run_cell(f"%imagegen --from {path} --out again", store_history=False)
    resp = shell.user_ns["again"]
    assert resp.success and resp.model == "gpt-image-1-mini"
    assert "your configured API" not in json.dumps(rec.messages)


@pytest.mark.parametrize("desc", [
    {"file": "../private/secret.png"},                                  # out of the image's folder
    {"file": "secret.png", "sha256": None},                             # no checksum to check it by
    {"source": "{outside}"},                                            # an absolute path, no checksum
    {"source": "{outside}", "sha256": "0" * 64},                        # the checksum does not match
], ids=["dot-dot", "no-checksum", "absolute-no-checksum", "absolute-wrong-checksum"])
def test_input_images_named_by_a_file_are_read_only_when_they_match(ip, stranger, emulator_thread, tmp_path, desc):
    """A file cannot make you read (and send) another file of yours."""
    shell, rec = ip
    outside = tmp_path / "private" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes(make_png((10, 10), (9, 9, 9)))
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "secret.png").write_bytes(outside.read_bytes())
    desc = {k: (v.format(outside=outside) if isinstance(v, str) else v) for k, v in desc.items()}
    path = hostile_image(tmp_path / "inbox", api_type="openai_images", base_url=stranger.base_url_for("openai_images"),
                         images=[desc])
    before = emulator_thread.request_count
    result = shell.run_cell(f"%imagegen --from {path}", store_history=False)
    assert "--image" in refused(result, rec)
    assert emulator_thread.request_count == before, "nothing was sent"
    with pytest.raises(FileNotFoundError):
        load(path).to_request()


def recorded_image(folder: Path, **request) -> Path:
    """A PNG with a sidecar recording `request` (on top of a plain one for this API)."""
    path = hostile_image(folder, api_type="openai_images", base_url=None)
    side = json.loads(sidecar_path(path).read_text())
    side["request"].update(request)
    sidecar_path(path).write_text(json.dumps(side))
    return path


@pytest.mark.parametrize("field, value, says", [
    ("timeout", float("inf"), "timeout"), ("timeout", float("nan"), "timeout"), ("timeout", 10 ** 9, "timeout"),
    ("timeout", "soon", "timeout"), ("max_attempts", 1_000_000, "max_attempts"), ("max_attempts", True, "max_attempts"),
    ("output_format", {}, "output_format"), ("aspect_ratio", 3, "aspect_ratio"), ("model", {}, "model"),
    ("n", "2", "n"), ("params", ["x"], "params"), ("seed", 1.5, "seed"), ("stream", "yes", "stream"),
])
def test_a_recorded_value_of_the_wrong_kind_is_a_clear_error(ip, emulator_thread, tmp_path, field, value, says):
    """Nothing is sent, and the error names the field (never OverflowError/AttributeError)."""
    shell, rec = ip
    path = recorded_image(tmp_path / "inbox", **{field: value})
    before = emulator_thread.request_count
    result = shell.run_cell(f"%imagegen --from {path}", store_history=False)
    assert says in refused(result, rec)
    assert emulator_thread.request_count == before


def test_recorded_params_cannot_replace_what_the_client_builds(ip, emulator_thread, tmp_path):
    shell, _ = ip
    path = recorded_image(tmp_path / "inbox", model="gpt-image-1-mini",
                          params={"stream": True, "model": "dall-e-2", "n": 9, "prompt": "other", "moderation": "low"})
    shell.run_cell(f"%imagegen --from {path} --out again", store_history=False)
    resp = shell.user_ns["again"]
    assert resp.success, resp.error
    sent = emulator_thread.requests[-1]
    assert sent["model"] == "gpt-image-1-mini" and sent.get("stream") in (None, False), sent
    assert "moderation" in sent["body_keys"] and sent.get("n") in (None, 1), sent


def _doc_variants():
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "nested 100,000 deep": lambda doc: json.dumps(doc)[:-1] + ', "x": ' + deep + "}",
        "schema is a number": lambda doc: json.dumps({**doc, "schema": 5}),
        "image is a string": lambda doc: json.dumps({**doc, "image": "abc"}),
        "image index is infinite": lambda doc: json.dumps({**doc, "image": {"index": 1e400}}),
        "request is a list": lambda doc: json.dumps({**doc, "request": ["x"]}),
        "prompt is a number": lambda doc: json.dumps({**doc, "prompt": 5}),
        "not JSON": lambda doc: "{not json",
    }


@pytest.mark.parametrize("where", ["sidecar", "embedded"])
@pytest.mark.parametrize("variant", list(_doc_variants()))
def test_malformed_metadata_is_a_clear_error_never_a_traceback(ip, emulator_thread, tmp_path, where, variant):
    """`load()` still loads the image (its metadata unused, the reason in metadata_problem);
    `--from` says what is wrong with the file; nothing is sent."""
    shell, rec = ip
    doc = {"schema": SCHEMA, "prompt": "a lighthouse", "request": {"prompt": "a lighthouse"},
           "image": {"index": 0}}
    text = _doc_variants()[variant](doc)
    folder = tmp_path / "inbox"
    folder.mkdir()
    path = folder / "their.png"
    if where == "sidecar":
        path.write_bytes(make_png())
        sidecar_path(path).write_text(text)
    else:   # the document as the iTXt chunk holds it (written by hand: it is not valid JSON)
        from jupyter_imagegen.saving import DOC_KEY, _png_chunk
        png = make_png()
        chunk = _png_chunk(b"iTXt", DOC_KEY.encode() + b"\x00\x00\x00\x00\x00" + text.encode())
        path.write_bytes(png[:33] + chunk + png[33:])          # right after IHDR
    loaded = load(path)
    assert loaded.metadata == {} and loaded.data == path.read_bytes()
    if where == "sidecar" or variant not in ("not JSON", "nested 100,000 deep"):
        assert loaded.metadata_problem, "the reason is kept"   # (embedded text that is no JSON object: none)
    before = emulator_thread.request_count
    rec.messages.clear()
    result = shell.run_cell(f"%imagegen --from {path}", store_history=False)
    assert refused(result, rec).startswith(f"--from {path}:")
    assert emulator_thread.request_count == before
    if where == "sidecar":           # the sidecar path itself: a clear ValueError
        with pytest.raises((ValueError, FileNotFoundError)):
            load(sidecar_path(path))


def test_params_with_names_that_are_not_text_are_refused_before_sending(emulator_thread):
    from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest, RequestError
    cfg = ImageConfig(api_type="openai_images", base_url=emulator_thread.base_url_for("openai_images"), token=TOKEN,
                      cache=True)
    client = ImageClient(cfg)
    for params in ({1: "x"}, {"x": {1: 1, "a": 2}}, {"x": [{2: 3}]}):
        with pytest.raises(RequestError, match="names are not text"):
            client.generate_sync(ImageRequest("a fox", params=params))
    with pytest.raises(RequestError, match="headers"):
        client.generate_sync(ImageRequest("a fox", headers={"X-A": 1}))
    client.close_sync()
