"""The ipywidgets form driven from Python against the emulator (real HTTP on 127.0.0.1):
fields -> request, Generate as a task on the running loop, Cancel, history, reuse, use as input,
inline messages for bad fields (and nothing sent), the request cache, %imagegen_form."""
from __future__ import annotations

import asyncio
import datetime
import re
import time
from pathlib import Path

import pytest

from jupyter_imagegen.runtime import runtime
from jupyter_imagegen.config import SUGGESTED_MODELS, ImageConfig
from jupyter_imagegen.errors import RequestError
from jupyter_imagegen.model import ImageRequest, ImageResponse, InputImage
from jupyter_imagegen.widget import MAX_N, FormSettings, ImageGenForm, split_size

from _image_helpers import make_png
from _magic_helpers import background_tasks
from conftest import EMULATOR_TOKEN

pytestmark = pytest.mark.timeout(60)

#: the colour of the input pictures the form tests upload
BLUE = (30, 120, 200)


def make_form(emulator, *, cache=False, cache_dir=None, **fields) -> ImageGenForm:
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"),
                      token=EMULATOR_TOKEN, backoff_base=0.05, cache=cache, cache_dir=cache_dir)
    return ImageGenForm(config=cfg, **fields)


def log_text(form: ImageGenForm) -> str:
    return form.view.log.to_text()


def output_html(form: ImageGenForm) -> str:
    return "".join(o["data"].get("text/html", "") for o in form.output.outputs)


async def wait_for(condition, timeout=5.0, step=0.01):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(step)


async def run(form: ImageGenForm, timeout=20.0) -> ImageResponse:
    form.generate_button.click()
    assert form.task is not None, form.message_text
    return await asyncio.wait_for(form.task, timeout)


@pytest.fixture(autouse=True)
async def _close_forms():
    yield
    runtime.close()


# --------------------------------------------------------------------------------------------
# fields -> request
# --------------------------------------------------------------------------------------------
def test_request_reflects_the_fields():
    form = ImageGenForm(config=ImageConfig(api_type="openai_images", token="t" * 20), prompt="a fox",
                        size="1536x1024", n=2, quality="high", images=[make_png(color=BLUE)],
                        request_options={"timeout": 30, "max_attempts": 2})
    req = form.request
    assert isinstance(req, ImageRequest)
    assert (req.prompt, req.api_type, req.n, req.size, req.aspect_ratio, req.quality) == \
        ("a fox", "openai_images", 2, "1536x1024", None, "high")
    assert req.model is None and req.timeout == 30 and req.max_attempts == 2
    assert len(req.images) == 1 and isinstance(req.images[0], InputImage)
    form.size_input.value = "16:9"
    form.model_input.value = "gpt-image-1-mini"
    req = form.request
    assert (req.size, req.aspect_ratio, req.model) == (None, "16:9", "gpt-image-1-mini")
    assert form.request.request_id != req.request_id  # a new request every time


def test_split_size():
    assert split_size("") == (None, None)
    assert split_size(" 1024X1024 ") == ("1024x1024", None)
    assert split_size("auto") == ("auto", None)
    assert split_size("2k") == ("2K", None)
    assert split_size("3:2") == (None, "3:2")
    with pytest.raises(RequestError):
        split_size("big")


def test_model_suggestions_follow_the_api():
    form = ImageGenForm(config=ImageConfig(api_type="openai_images"))
    assert list(form.model_input.options) == SUGGESTED_MODELS["openai_images"]
    assert "gpt-image-1" in form.model_input.placeholder
    form.model_input.value = "dall-e-3"
    form.api_select.value = "openrouter_chat"
    assert list(form.model_input.options) == SUGGESTED_MODELS["openrouter_chat"]
    assert form.model_input.value == ""          # an OpenAI model would only be refused by OpenRouter
    assert "gemini" in form.model_input.placeholder
    assert "16:9" in form.size_input.options
    form.model_input.value = "my/custom-model"   # free text is kept across API changes
    form.api_select.value = "openai_responses"
    assert form.model_input.value == "my/custom-model"


# --------------------------------------------------------------------------------------------
# generate: a task, the log, the gallery, the history
# --------------------------------------------------------------------------------------------
async def test_generate_runs_as_a_task_and_fills_log_gallery_and_history(emulator):
    form = make_form(emulator, prompt="a red fox in snow", n=2)
    t0 = time.monotonic()
    form.generate_button.click()
    assert time.monotonic() - t0 < 0.5                       # the click returns at once
    assert isinstance(form.task, asyncio.Future) and not form.task.done()
    assert form.generate_button.disabled and not form.cancel_button.disabled
    assert form.running
    resp = await asyncio.wait_for(form.task, 20)
    assert resp.success and len(resp.artifacts) == 2
    assert form.value is resp and form.results == [resp]
    assert not form.generate_button.disabled and form.cancel_button.disabled and not form.running
    # the live log and the gallery are in the Output (rendered by display.GenerationView)
    text = log_text(form)
    assert "started" in text and "attempt 1/" in text and "done: 2 images" in text
    html = output_html(form)
    assert html.count("<img ") == 2 and 'data-state="done"' in html
    # the history: one card with two thumbnails, each with "use as input", and "reuse settings"
    assert len(form.history_box.children) == 1
    entry = form.history[0]
    assert entry.prompt == "a red fox in snow" and entry.settings.n == 2
    assert len(entry.use_buttons) == 2 and entry.reuse_button is not None
    assert "History" in form.history_title.value
    assert form.message_text == ""
    assert emulator.requests[-1]["prompt"] == "a red fox in snow"


async def test_the_loop_stays_free_while_generating(emulator):
    emulator.add_faults("slow_headers:delay=1")
    form = make_form(emulator, prompt="slow one")
    form.generate_button.click()
    ticks = 0
    while not form.task.done():         # other work runs on the same loop meanwhile
        await asyncio.sleep(0.02)
        ticks += 1
    assert ticks > 20
    assert form.value.success


async def test_history_is_newest_first_and_keeps_each_runs_settings(emulator):
    form = make_form(emulator, prompt="first prompt", size="1024x1024")
    r1 = await run(form)
    form.prompt_text.value = "second prompt"
    form.size_input.value = "1536x1024"
    form.quality_select.value = "low"
    r2 = await run(form)
    assert form.results == [r2, r1]
    assert "second prompt" in log_text(form) and "first prompt" not in log_text(form)   # one log per run
    assert output_html(form).count("imagegen-log") == 1
    assert [h.prompt for h in form.history] == ["second prompt", "first prompt"]
    assert form.history[1].settings.size == "1024x1024" and form.history[0].settings.quality == "low"
    assert form.history_box.children == (form.history[0].widget, form.history[1].widget)
    assert "2 runs" in form.history_title.value


async def test_max_history(emulator):
    form = make_form(emulator, prompt="p", max_history=2)
    for i in range(3):
        form.prompt_text.value = f"prompt {i}"
        await run(form)
    assert [h.prompt for h in form.history] == ["prompt 2", "prompt 1"]
    assert len(form.history_box.children) == 2


async def test_a_second_click_while_running_sends_nothing_more(emulator):
    emulator.add_faults("slow_headers:delay=0.5")
    form = make_form(emulator, prompt="once")
    form.generate_button.click()
    first = form.task
    form.generate_button.click()         # .click() fires even on a disabled button
    assert form.task is first and "already running" in form.message_text
    await first
    assert emulator.request_count == 1


async def test_retry_appears_in_the_log(emulator):
    emulator.add_faults("429:retry_after_ms=100")
    form = make_form(emulator, prompt="retry me")
    resp = await run(form)
    assert resp.success and resp.attempts == 2
    text = log_text(form)
    # the retry's line counts down while it waits ("retrying in ..."), then says it retried
    assert "429 rate limited — retried after 0.1 s (attempt 1 failed)" in text, text
    assert "429" in output_html(form)


async def test_api_failure_shows_the_error_box_and_is_not_history(emulator):
    emulator.add_faults("400:message=bad things")
    form = make_form(emulator, prompt="refused")
    resp = await run(form)
    assert not resp.success and form.value is resp
    assert form.results == [] and form.history_box.children == ()
    assert "imagegen-error" in output_html(form) and "bad things" in output_html(form)
    assert not form.generate_button.disabled


# --------------------------------------------------------------------------------------------
# cancel
# --------------------------------------------------------------------------------------------
async def _cancel_after_request_arrives(form, emulator):
    form.generate_button.click()
    task = form.task
    await wait_for(lambda: emulator.request_count >= 1)
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    form.cancel_button.click()
    done, _ = await asyncio.wait([task], timeout=1.0)
    elapsed = time.monotonic() - t0
    assert done, "the task did not finish within a second of Cancel"
    return task, elapsed


async def test_cancel_stops_a_slow_request_within_a_second(emulator):
    emulator.add_faults("slow_headers:delay=10")
    form = make_form(emulator, prompt="never arrives")
    task, elapsed = await _cancel_after_request_arrives(form, emulator)
    assert task.cancelled() and elapsed < 1.0
    assert form.value is None and form.history == []
    assert not form.generate_button.disabled and form.cancel_button.disabled
    assert form.view.log.state == "cancelled"
    assert "Cancel button" in log_text(form) and 'data-state="cancelled"' in output_html(form)
    # the form works again afterwards
    resp = await run(form)
    assert resp.success and emulator.request_count == 2


async def test_cancel_during_a_retry_wait(emulator):
    emulator.add_faults("429:retry_after=30")
    form = make_form(emulator, prompt="rate limited")
    form.generate_button.click()
    task = form.task
    await wait_for(lambda: "retrying" in log_text(form))
    t0 = time.monotonic()
    assert form.cancel() is True
    await asyncio.wait([task], timeout=1.0)
    assert task.cancelled() and time.monotonic() - t0 < 1.0
    # the form's task is done only once its job's coroutine has ended (cleanup included); with no
    # task left on the background loop either, nothing can send a retry any more
    await wait_for(lambda: form.job.done() and background_tasks() == 0)
    assert emulator.request_count == 1              # no retry was sent after Cancel
    assert form.cancel() is False                   # nothing left to cancel


async def test_cancel_closes_the_http_connection():
    """A bare TCP server that reads the request and never answers: after Cancel it sees the
    client close the connection (EOF) within a second — the HTTP call is really gone."""
    received = asyncio.Event()
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        while await reader.read(65536):   # the body, then b"" when the client hangs up
            pass
        closed.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cfg = ImageConfig(api_type="openai_images", base_url=f"http://127.0.0.1:{port}/v1",
                          token=EMULATOR_TOKEN, timeout=60)
        form = ImageGenForm(config=cfg, prompt="hang")
        form.generate_button.click()
        await asyncio.wait_for(received.wait(), 5)
        t0 = time.monotonic()
        form.cancel_button.click()
        await asyncio.wait_for(closed.wait(), 1.0)
        assert time.monotonic() - t0 < 1.0
        await asyncio.wait([form.task], timeout=1.0)
        assert form.task.cancelled()
        form.close()
        await asyncio.sleep(0.05)
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------------------------
# reuse settings / use as input
# --------------------------------------------------------------------------------------------
async def test_reuse_settings_restores_that_runs_fields(emulator):
    form = make_form(emulator, prompt="a blue bird", n=2, size="1536x1024", quality="high",
                     images=[make_png(color=BLUE)], model="gpt-image-1")
    await run(form)
    form.prompt_text.value = "something else"
    form.n_input.value = 1
    form.size_input.value = "3:2"
    form.quality_select.value = ""
    form.model_input.value = ""
    form.clear_inputs()
    form.history[0].reuse_button.click()
    s = form.settings
    assert (s.prompt, s.n, s.size, s.quality, s.model) == ("a blue bird", 2, "1536x1024", "high", "gpt-image-1")
    assert len(form.inputs) == 1 and form.input_images[0].data == make_png(color=BLUE)
    assert "restored" in form.message_text


async def test_reuse_settings_across_apis(emulator):
    form = make_form(emulator, prompt="openrouter run", size="16:9", api_type="openrouter_chat")
    await run(form)
    form.api_select.value = "openai_images"
    form.reuse(0)
    assert form.api_select.value == "openrouter_chat" and form.size_input.value == "16:9"
    assert list(form.model_input.options) == SUGGESTED_MODELS["openrouter_chat"]


async def test_use_as_input_feeds_a_result_back(emulator):
    form = make_form(emulator, prompt="a teapot", n=2)
    resp = await run(form)
    form.history[0].use_buttons[1].click()
    assert len(form.inputs) == 1
    slot = form.inputs[0]
    assert slot.image is not None and slot.image.data == resp.artifacts[1].data
    assert slot.name.startswith("result-2")
    assert len(form.inputs_box.children) == 1
    assert "as an input image" in form.message_text
    form.prompt_text.value = "the teapot, but red"
    form.n_input.value = 1
    resp2 = await run(form)
    assert resp2.success
    last = emulator.requests[-1]
    assert last["path"].endswith("/images/edits"), last
    assert form.history[0].settings.images[0].data == resp.artifacts[1].data


async def test_remove_an_input_image(emulator):
    form = make_form(emulator, prompt="x", images=[make_png(color=BLUE), make_png(color=(1, 2, 3))])
    assert len(form.inputs_box.children) == 2
    form.inputs[0].remove_button.click()
    assert len(form.inputs) == 1 and form.input_images[0].data == make_png(color=(1, 2, 3))
    assert len(form.inputs_box.children) == 1


def test_upload_through_the_file_upload_widget():
    form = ImageGenForm(config=ImageConfig(api_type="openai_images"), prompt="x")
    data = make_png(color=BLUE, fmt="JPEG")
    form.upload.value = ({"name": "photo.jpg", "type": "image/jpeg", "size": len(data),
                          "content": memoryview(data), "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    # the value now lists what will be sent (the button counts it), without the bytes
    assert [(v["name"], v["size"], len(v["content"])) for v in form.upload.value] == [("photo.jpg", len(data), 0)]
    assert len(form.inputs) == 1 and form.inputs[0].image.mime_type == "image/jpeg"
    assert form.inputs[0].image.name == "photo.jpg"
    # its card shows a thumbnail (an Image widget) and a remove button
    card = form.inputs_box.children[0]
    assert type(card.children[0]).__name__ == "Image"
    assert form.inputs[0].remove_button in card.children


# --------------------------------------------------------------------------------------------
# bad fields: an inline message, nothing sent
# --------------------------------------------------------------------------------------------
def _upload(form, name, data):
    form.upload.value = ({"name": name, "type": "image/png", "size": len(data), "content": memoryview(data),
                          "last_modified": datetime.datetime.now(datetime.timezone.utc)},)


@pytest.mark.parametrize("setup, message", [
    (lambda f: setattr(f.prompt_text, "value", "   "), "prompt is empty"),
    (lambda f: setattr(f.n_input, "value", 0), "ask for 1 to"),
    (lambda f: setattr(f.n_input, "value", MAX_N + 1), "ask for 1 to"),
    (lambda f: setattr(f.size_input, "value", "huge"), "size 'huge'"),
    (lambda f: _upload(f, "notes.txt", b"just some text, not an image"), "not a PNG, JPEG"),
    (lambda f: _upload(f, "broken.png", make_png(color=BLUE)[:60]), "damaged"),
    (lambda f: _upload(f, "big.png", make_png((600, 600), BLUE) + b"\0" * 5000), "limit"),
    (lambda f: _upload(f, "empty.png", b""), "empty"),
    (lambda f: setattr(f.size_input, "value", "333x333"), "not available"),        # the provider's check
    (lambda f: setattr(f.n_input, "value", 12), "n=12"),                           # gpt-image-1: 1 to 10
], ids=["empty-prompt", "n-zero", "n-too-big", "bad-size", "unreadable-upload", "damaged-upload",
        "too-large-upload", "empty-upload", "size-not-for-model", "n-over-model-limit"])
async def test_bad_fields_show_a_message_and_send_nothing(emulator, setup, message):
    form = make_form(emulator, prompt="fine prompt", max_upload_bytes=4000)
    setup(form)
    form.generate_button.click()
    assert form.task is None
    assert message in form.message_text, form.message_text
    assert 'data-kind="error"' in form.message.value
    assert not form.generate_button.disabled
    # nothing was submitted, and nothing runs on the background loop that could still send
    assert form.job is None
    await wait_for(lambda: background_tasks() == 0)
    assert emulator.request_count == 0
    if message not in ("not available", "n=12"):
        with pytest.raises(RequestError):
            form.request


async def test_a_refused_upload_blocks_until_removed(emulator):
    form = make_form(emulator, prompt="with input")
    _upload(form, "notes.txt", b"hello")
    assert form.inputs[0].error and "notes.txt" in form.message_text
    form.generate_button.click()
    assert form.task is None and "remove it" in form.message_text
    form.inputs[0].remove_button.click()
    assert form.message_text == ""
    resp = await run(form)
    assert resp.success and emulator.request_count == 1


async def test_missing_token_is_an_inline_message_and_nothing_is_sent(emulator):
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"))
    form = ImageGenForm(config=cfg, prompt="no key")
    form.generate_button.click()
    result = await asyncio.wait_for(form.task, 5)
    assert result is None and form.value is None
    assert "IMAGE_AUTH_TOKEN" in form.message_text and "%env" in form.message_text
    assert "IMAGE_AUTH_TOKEN" in output_html(form)
    assert emulator.request_count == 0 and not form.generate_button.disabled


# --------------------------------------------------------------------------------------------
# configuration and the cache
# --------------------------------------------------------------------------------------------
async def test_cache_answers_a_repeat_and_fresh_asks_again(emulator, tmp_path):
    form = make_form(emulator, prompt="cached fox", cache=True, cache_dir=str(tmp_path / "cache"))
    r1 = await run(form)
    r2 = await run(form)
    assert r1.success and r2.from_cache and emulator.request_count == 1
    assert "from cache" in log_text(form)
    assert "from cache" in form.history[0].widget.children[0].value
    form.fresh_check.value = True
    r3 = await run(form)
    assert not r3.from_cache and emulator.request_count == 2


async def test_default_configuration_comes_from_the_environment_with_the_cache_on(emulator, emulator_env,
                                                                                 monkeypatch):
    emulator_env(emulator, cache=True)
    form = ImageGenForm(prompt="from env")
    assert form.api_select.value == "openai_images"
    r1 = await run(form)
    r2 = await run(form)
    assert r1.success and r2.from_cache and emulator.request_count == 1
    client = runtime.current_client
    assert client is not None and client.cache is not None       # the kernel's shared client, as the magic
    assert EMULATOR_TOKEN not in output_html(form)
    monkeypatch.setenv("IMAGE_CACHE", "0")                         # IMAGE_CACHE=0 turns it off
    r3 = await run(form)
    assert not r3.from_cache and emulator.request_count == 2


async def test_a_given_client_is_used(emulator):
    from jupyter_imagegen.client import ImageClient
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"),
                      token=EMULATOR_TOKEN)
    async with ImageClient(cfg) as client:
        form = ImageGenForm(client=client, prompt="given client")
        resp = await run(form)
        assert resp.success and resp.api_type == "openai_images"


async def test_save_folder_writes_the_images(emulator, tmp_path):
    out = tmp_path / "pics" / "sub"
    form = make_form(emulator, prompt="saved lighthouse", n=2, save_dir=str(out))
    assert not out.exists()                                 # created only when the images are there
    resp = await run(form)
    files = sorted(p for p in out.iterdir() if p.suffix != ".json")
    assert len(files) == 2 and sorted(Path(p) for p in resp.paths) == files
    from PIL import Image
    with Image.open(files[0]) as im:                         # saved with the prompt embedded
        assert im.size == resp.artifacts[0].size and im.info.get("prompt") == "saved lighthouse"
    assert "saved 2 files" in log_text(form)


async def test_an_unwritable_save_folder_is_an_inline_message(emulator, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    form = make_form(emulator, prompt="x", save_dir=str(blocker / "sub"))
    form.generate_button.click()
    assert form.task is None and "cannot write there" in form.message_text
    assert emulator.request_count == 0


async def test_runs_are_recorded_in_the_kernel_history(emulator):
    from jupyter_imagegen import history
    form = make_form(emulator, prompt="recorded run")
    resp = await run(form)
    last = history.entries()[-1]
    assert last.source == "form" and last.prompt == "recorded run" and last.response is resp


async def test_wait_and_settings_roundtrip(emulator):
    form = make_form(emulator, prompt="p1", n=3, size="2:3")
    form.generate_button.click()
    resp = await form.wait(20)
    assert resp is form.value and resp.success and len(resp.artifacts) == 3
    s = form.settings
    assert isinstance(s, FormSettings) and "n=3" in s.summary() and "2:3" in s.summary()


def test_generate_without_a_running_loop_says_so():
    form = ImageGenForm(config=ImageConfig(api_type="openai_images", token="t" * 20), prompt="sync")
    form.generate_button.click()
    assert form.task is None and "running event loop" in form.message_text
    assert not form.generate_button.disabled


# --------------------------------------------------------------------------------------------
# %imagegen_form
# --------------------------------------------------------------------------------------------
def assert_refused(shell, capsys, line: str, match: str) -> None:
    """%imagegen_form `line` is refused with a message naming `match`, shown in the cell as one
    "UsageError: ..." box (not raised: the magic shows mistakes so Run All goes on); no form."""
    capsys.readouterr()
    assert shell.run_line_magic("imagegen_form", line) is None
    shown = capsys.readouterr().out
    assert shown.startswith("UsageError: ") and shown.strip().count("\n") == 0, shown
    assert re.search(match, shown) and "ImageGenForm" not in shown, shown


def test_imagegen_form_magic(monkeypatch, capsys):
    from IPython.testing import globalipapp
    shell = globalipapp.get_ipython()
    monkeypatch.setenv("IMAGE_API_TYPE", "openrouter_chat")
    shell.extension_manager.load_extension("jupyter_imagegen")
    try:
        shell.user_ns["style"] = "watercolour"
        shell.run_line_magic("imagegen_form", "--api openai -n 2 --size 16:9 --quality low --out f a fox, {style}")
        form = shell.user_ns["f"]
        assert isinstance(form, ImageGenForm)
        s = form.settings
        assert (s.prompt, s.api_type, s.n, s.size, s.quality) == ("a fox, watercolour", "openai_images", 2,
                                                                  "16:9", "low")
        assert_refused(shell, capsys, "--api nope", "--api")
        assert_refused(shell, capsys, "--bogus 1", "imagegen_form")
    finally:
        shell.extension_manager.unload_extension("jupyter_imagegen")
        shell.user_ns.pop("f", None)
        shell.user_ns.pop("style", None)
    assert "imagegen_form" not in shell.magics_manager.magics["line"]


def test_constructor_checks_its_arguments():
    from jupyter_imagegen.errors import ConfigError
    assert ImageGenForm(api_type="OpenAI-Images").api_select.value == "openai_images"
    with pytest.raises(ConfigError, match="api_type"):
        ImageGenForm(api_type="dalle")
    with pytest.raises(RequestError, match="quality"):
        ImageGenForm(quality="ultra")
    with pytest.raises(RequestError, match="either a size or an aspect"):
        ImageGenForm(size="1024x1024", aspect_ratio="16:9")
    with pytest.raises(TypeError):
        ImageGenForm(config={"api_type": "openai_images"})
    form = ImageGenForm(aspect_ratio="9:16", images=[b"not an image"])
    assert form.size_input.value == "9:16"
    assert form.inputs[0].error and "not a PNG" in form.message_text
    assert repr(form).startswith("<ImageGenForm ")


# --------------------------------------------------------------------------------------------
# "show progress": stream + partial images, updated in place; Cancel drops the stream
# --------------------------------------------------------------------------------------------
def test_show_progress_sets_stream_and_partials():
    cfg = ImageConfig(api_type="openai_images", token="t" * 20)
    form = ImageGenForm(config=cfg, prompt="a fox")
    assert form.progress_check.value is False and form.request.stream is False
    assert form.request.partial_images is None
    form.progress_check.value = True
    req = form.request
    assert (req.stream, req.partial_images) == (True, 2)
    assert form.settings.progress and "progress" in form.settings.summary()
    form = ImageGenForm(config=cfg, prompt="a fox", show_progress=True, partial_images=3)
    assert (form.request.stream, form.request.partial_images) == (True, 3)
    other = ImageGenForm(config=cfg)
    other.apply_settings(form.settings)                       # "reuse settings" keeps it
    assert other.progress_check.value is True
    for bad in (4, -1, "2", True):
        with pytest.raises(RequestError, match="partial"):
            ImageGenForm(config=cfg, partial_images=bad)


def _watch_outputs(form: ImageGenForm):
    """Every state of the Output's outputs during a run."""
    states = []
    form.output.observe(lambda change: states.append(change["new"]), names="outputs")
    return states


async def test_show_progress_updates_the_image_in_place(emulator):
    form = make_form(emulator, prompt="a fox forming", show_progress=True, partial_images=3)
    states = _watch_outputs(form)
    resp = await run(form)
    assert resp.success and len(resp.artifacts) == 1
    sent = emulator.requests[-1]
    assert sent["stream"] is True and [k for k, _ in sent["stream_images"]] == ["partial"] * 3 + ["final"]
    # never more than two outputs (the log and the image): each partial replaced the one before
    assert max(len(s) for s in states) == 2
    shown = [s[1]["data"]["text/plain"] for s in states if len(s) == 2]
    partial_lines = [t for i, t in enumerate(shown) if t.startswith("partial image") and (i == 0 or shown[i - 1] != t)]
    assert partial_lines == ["partial image 1", "partial image 2", "partial image 3"]
    assert "<img " in states[-1][1]["data"]["text/html"] and 'data-state="done"' in output_html(form)
    assert "partial image 3" in log_text(form)
    assert form.history[0].settings.progress and form.history[0].request.stream


async def test_cancel_mid_stream_drops_the_connection(emulator):
    emulator.stream_delay = 1.0
    form = make_form(emulator, prompt="slowly drawn", show_progress=True, partial_images=3)
    form.generate_button.click()
    task = form.task
    await wait_for(lambda: "partial image 1" in log_text(form), timeout=5)
    t0 = time.monotonic()
    form.cancel_button.click()
    await asyncio.wait([task], timeout=0.5)
    assert task.cancelled() and time.monotonic() - t0 < 0.5
    assert form.view.log.state == "cancelled" and "Cancel button" in log_text(form)
    assert form.value is None and form.history == []
    await wait_for(lambda: emulator.requests[-1].get("outcome") == "client_disconnected", timeout=0.5)
    assert [k for k, _ in emulator.requests[-1]["stream_images"]] == ["partial"]
    emulator.stream_delay = 0
    resp = await run(form)                                   # the form works again
    assert resp.success


def test_imagegen_form_magic_progress(monkeypatch, capsys):
    from IPython.testing import globalipapp
    shell = globalipapp.get_ipython()
    monkeypatch.setenv("IMAGE_API_TYPE", "openai_images")
    shell.extension_manager.load_extension("jupyter_imagegen")
    try:
        shell.run_line_magic("imagegen_form", "--partials 3 --out f a fox")
        form = shell.user_ns["f"]
        assert form.progress_check.value and form.partial_images == 3
        shell.run_line_magic("imagegen_form", "--stream --out f a fox")
        assert shell.user_ns["f"].progress_check.value and shell.user_ns["f"].partial_images == 2
        assert_refused(shell, capsys, "--partials 7 a fox", "partial")
    finally:
        shell.extension_manager.unload_extension("jupyter_imagegen")
        shell.user_ns.pop("f", None)


# --------------------------------------------------------------------------------------------
# "compare with"
# --------------------------------------------------------------------------------------------
def test_compare_field_parsing():
    from jupyter_imagegen.widget import parse_compare_field
    assert parse_compare_field("") == {}
    assert parse_compare_field(" model=a,b ; size=1024x1024,1536x1024  model=c") == {
        "model": ["a", "b", "c"], "size": ["1024x1024", "1536x1024"]}
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        parse_compare_field("colour=red")


async def test_compare_with_runs_every_combination_into_one_grid(emulator):
    form = make_form(emulator, prompt="a paper boat", compare="model=gpt-image-1,gpt-image-1-mini size=1024x1024,1536x1024")
    result = await run(form)
    assert result is form.compare_result and result.shape == (2, 2)
    assert emulator.request_count == 4
    assert result.ok == 4 and result.failed == 0
    assert {(c.response.request.model, c.response.artifacts[0].image.size) for c in result.cells} == {
        ("gpt-image-1", (1024, 1024)), ("gpt-image-1", (1536, 1024)),
        ("gpt-image-1-mini", (1024, 1024)), ("gpt-image-1-mini", (1536, 1024))}
    html_out = output_html(form)
    assert "gpt-image-1-mini" in html_out and html_out.count("<img") >= 4
    assert not form.running and not form.generate_button.disabled


async def test_bad_compare_field_sends_nothing(emulator):
    form = make_form(emulator, prompt="a paper boat", compare="colour=red,blue")
    form.generate_button.click()
    assert form.task is None and "KEY=V1,V2" in form.message_text
    assert emulator.request_count == 0


# --------------------------------------------------------------------------------------------
# messages follow the fields (issue 14, point 9)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, wrong, fixed, words", [
    ("prompt_text", "   ", "a fox", "prompt is empty"),
    ("n_input", 0, 2, "ask for 1 to"),
    ("size_input", "huge", "16:9", "size 'huge'"),
], ids=["prompt", "n", "size"])
async def test_a_message_goes_as_soon_as_its_field_is_fixed(emulator, field, wrong, fixed, words):
    form = make_form(emulator, prompt="fine prompt")
    widget = getattr(form, field)
    widget.value = wrong
    form.generate_button.click()
    assert form.task is None and words in form.message_text
    assert "imagegen-invalid" in widget._dom_classes            # the field is marked
    form.quality_select.value = "low"                           # another field: the message stays
    assert words in form.message_text
    widget.value = fixed                                        # fixed: gone, with no second click
    assert form.message_text == "" and form.message.value == ""
    assert "imagegen-invalid" not in widget._dom_classes
    assert emulator.request_count == 0


async def test_with_two_wrong_fields_fixing_one_leaves_the_other(emulator):
    form = make_form(emulator, prompt="")
    form.n_input.value = 0
    form.generate_button.click()
    assert "prompt is empty" in form.message_text and "ask for 1 to" in form.message_text
    form.prompt_text.value = "a fox"
    assert "prompt is empty" not in form.message_text and "ask for 1 to" in form.message_text
    assert "imagegen-invalid" not in form.prompt_text._dom_classes
    assert "imagegen-invalid" in form.n_input._dom_classes
    form.n_input.value = 3
    assert form.message_text == ""
    resp = await run(form)
    assert resp.success and len(resp.artifacts) == 3


async def test_the_providers_refusals_are_in_the_forms_words_and_go_when_fixed(emulator):
    form = make_form(emulator, prompt="a fox", size="333x333")
    form.generate_button.click()
    text = form.message_text
    assert "333x333" in text and "not available" in text
    assert "--" not in text and "aspect ratio such as 16:9 in Size" in text, text
    assert "imagegen-invalid" in form.size_input._dom_classes
    form.size_input.value = "1024x1024"
    assert form.message_text == ""

    form.n_input.value = 12                                     # gpt-image-1 takes 1 to 10
    form.generate_button.click()
    assert "n=12" in form.message_text and "OpenAI Images" in form.message_text
    assert "openai_images" not in form.message_text
    form.n_input.value = 10
    assert form.message_text == ""

    form.compare_input.value = "colour=red,blue"
    form.generate_button.click()
    assert form.message_text.startswith("✖ Compare 'colour=red,blue'"), form.message_text
    assert "cell" not in form.message_text                      # the form has no cell body
    form.compare_input.value = "quality=low,high"
    assert form.message_text == ""
    assert emulator.request_count == 0


def test_form_words():
    from jupyter_imagegen.widget import form_words
    assert form_words("use one of: 1024x1024 (or --aspect to pick the nearest)") == \
        "use one of: 1024x1024 (or write an aspect ratio such as 16:9 in Size: the nearest size is used)"
    assert form_words("n=20: ask for 1 to 16 images with openrouter_chat") == \
        "n=20: ask for 1 to 16 images with OpenRouter (chat)"
    assert form_words("raise the timeout (--timeout, IMAGE_TIMEOUT)") == \
        "raise the timeout (request_options={'timeout': seconds} or IMAGE_TIMEOUT)"
    assert form_words("pass --model or --quality") == "pass Model or Quality"
    assert form_words("dall-e-3 cannot edit images; gpt-image-1 non-empty") == \
        "dall-e-3 cannot edit images; gpt-image-1 non-empty"             # hyphenated words stay


async def test_the_upload_button_counts_the_images_that_will_be_sent(emulator):
    form = make_form(emulator, prompt="a teapot", n=2)
    assert form.upload.value == ()
    resp = await run(form)
    form.history[0].use_buttons[0].click()                       # "use as input"
    form.history[0].use_buttons[1].click()
    assert len(form.upload.value) == 2                           # "Add input images (2)"
    assert [v["name"] for v in form.upload.value] == [s.name for s in form.inputs]
    assert all(len(v["content"]) == 0 for v in form.upload.value)  # no second copy of the bytes
    _upload(form, "sketch.png", make_png(color=BLUE))
    assert len(form.upload.value) == 3
    _upload(form, "notes.txt", b"not an image")                  # refused: shown, not counted
    assert len(form.inputs) == 4 and len(form.upload.value) == 3
    form.remove_input(0)
    assert len(form.upload.value) == 2
    form.reuse(0)                                                # that run had no input images
    assert form.upload.value == ()
    form.add_input(resp)
    assert len(form.upload.value) == 1
    form.clear_inputs()
    assert form.upload.value == ()


# --------------------------------------------------------------------------------------------
# the cell keeps each run's images (issue 14, point 8)
# --------------------------------------------------------------------------------------------
async def test_without_a_kernel_cell_nothing_is_published_and_the_text_is_truthful(emulator):
    from jupyter_imagegen.widget import FALLBACK_TEXT, cell_parent, publish_to_cell
    form = make_form(emulator, prompt="a kite")
    bundle = form._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert cell_parent() is None and form.display_parent is None
    for _ in range(2):
        await run(form)
    assert len(form.results) == 2
    # what a saved notebook shows without the widget: no run count that goes stale
    assert form._repr_mimebundle_()["text/plain"] == FALLBACK_TEXT
    assert "result" not in FALLBACK_TEXT and "2 results" in repr(form)
    assert publish_to_cell({"msg_id": "x", "msg_type": "execute_request"}, [({"text/plain": "x"}, {})]) == 0


def _kernel_python(variant: str) -> str:
    import sys
    from kernels import ipykernel6_python
    return sys.executable if variant == "ipykernel7" else ipykernel6_python()


#: the form's cell, another cell, a cell that clicks Generate and returns (the run ends after it),
#: a cell that clicks again and waits for the run (it ends while this cell runs)
_FORM_CELLS = [
    "from jupyter_imagegen.widget import ImageGenForm\nform = ImageGenForm(n=1, prompt='a kite at dawn')\nform",
    "print('another cell')",
    "form.generate_button.click()",
]
_SECOND_RUN = ("form.prompt_text.value = 'a kite at dusk'\nform.generate_button.click()\nawait form.wait(20)\n"
               "print(len(form.results), 'runs')")


@pytest.mark.kernel
@pytest.mark.timeout(180)
@pytest.mark.parametrize("variant", ["ipykernel7", "ipykernel6"])
def test_each_run_leaves_an_ordinary_output_in_the_forms_cell(variant, emulator_thread, tmp_path):
    """In a real kernel (ipykernel 7 and 6): every run's images are display_data messages whose
    parent is the execute_request of the cell that displayed the form, whichever cell is running
    (or none) when the run ends; plain image outputs, no widget, no token."""
    import json

    from kernels import kernel_env, ipykernel_version, running_kernel
    from jupyter_imagegen.widget import FALLBACK_TEXT

    python = _kernel_python(variant)
    assert ipykernel_version(python).startswith("7." if variant == "ipykernel7" else "6.")
    env = kernel_env(python, IMAGE_BASE_URL=emulator_thread.base_url_for("openai_images"),
                     IMAGE_AUTH_TOKEN=EMULATOR_TOKEN, IMAGE_API_TYPE="openai_images", IMAGE_CACHE="0",
                     IMAGE_CACHE_DIR=str(tmp_path / "cache"))
    with running_kernel(python, env=env, cwd=tmp_path, workdir=tmp_path) as k:
        def images(msgs):
            return [m for m in msgs if m["msg_type"] == "display_data"
                    and {"image/png", "image/jpeg"} & set(m["content"]["data"])]

        # run 1 ends after every cell finished (no cell runs then)
        run_ = k.queued(_FORM_CELLS)
        run_.wait_all(60)
        form_cell, other, click = run_.cells
        assert [c.status for c in run_.cells] == ["ok"] * 3, run_.report()
        run_.wait_for(lambda: len(images(form_cell.msgs)) == 1, 20, "run 1's images in the form's cell")
        # run 2 ends while another cell runs (it waits for the run)
        second_run = k.queued([_SECOND_RUN])
        second_run.wait_all(60)
        second = second_run.cells[0]
        assert second.status == "ok" and "2 runs" in second.stream_text(), second_run.report()
        second_run.pump(0.5)
        late = [m for m in second_run.others if m["parent_header"].get("msg_id") == form_cell.msg_id]
        shown = images(form_cell.msgs) + images(late)
        assert len(shown) == 2, (run_.report(), second_run.report())
        widget = form_cell.outputs("execute_result", "display_data")[0]["content"]["data"]   # Out[1]: the form
        assert "application/vnd.jupyter.widget-view+json" in widget and widget["text/plain"] == FALLBACK_TEXT
        for m, prompt in zip(shown, ("a kite at dawn", "a kite at dusk")):
            data = m["content"]["data"]
            assert "application/vnd.jupyter.widget-view+json" not in data
            assert prompt in data.get("text/html", ""), data.get("text/html", "")[:300]
            assert m["parent_header"]["msg_id"] == form_cell.msg_id
            assert not m["content"].get("transient")
        # the other cells got none of it
        for c in (other, click, second):
            assert not images(c.msgs)
        assert EMULATOR_TOKEN not in json.dumps([m["content"] for m in run_.all_msgs() + second_run.all_msgs()])
        assert "Traceback" not in k.stderr_text(), k.stderr_text()[-2000:]


async def test_what_each_kind_of_run_leaves_in_the_cell(emulator, monkeypatch):
    """A run with images: the magic's outputs (a standard image output per image, the gallery on
    the first, the token masked); a failed or cancelled run and a refused field: nothing; a
    compare run: the grid's outputs. (The kernel test above sends them for real.)"""
    import jupyter_imagegen.widget as widget_mod
    sent = []
    monkeypatch.setattr(widget_mod, "publish_to_cell", lambda parent, outs: sent.append((parent, list(outs))) or len(outs))
    form = make_form(emulator, prompt="two kites", n=2)
    form.display_parent = {"msg_id": "cell-1", "msg_type": "execute_request"}

    await run(form)
    (parent, outs), = sent
    assert parent["msg_id"] == "cell-1" and len(outs) == 2
    assert all({"image/png", "image/jpeg"} & set(data) for data, _md in outs)
    assert "form run · two kites" in outs[0][0]["text/html"] and outs[0][0]["text/html"].count("<img") == 2
    assert outs[0][0]["text/plain"].startswith("form run · two kites\n")     # which prompt made them
    assert EMULATOR_TOKEN not in repr(outs)

    emulator.add_faults("500")
    form.request_options["max_attempts"] = 1
    failed = await run(form)
    assert not failed.success and len(sent) == 1                 # the error stays in the form
    form.prompt_text.value = ""
    task = form.task
    form.generate_button.click()
    assert form.task is task and "prompt is empty" in form.message_text and len(sent) == 1

    form.prompt_text.value = "boats"
    form.n_input.value = 1
    form.compare_input.value = "quality=low,high"
    grid = await run(form)
    assert grid.ok == 2 and len(sent) == 2
    assert sum(bool({"image/png", "image/jpeg"} & set(d)) for d, _m in sent[1][1]) == 2
