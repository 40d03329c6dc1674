"""The shared renderer: previews, gallery, error box, event log, and the three surfaces
(notebook display handles, an ipywidgets.Output, a terminal)."""
from __future__ import annotations

import base64
import io

import pytest
from IPython.display import display
from IPython.testing import globalipapp

from _image_helpers import make_png
from _magic_helpers import recording_display
from jupyter_imagegen import events as ev
from jupyter_imagegen.display import (EventLog, GenerationView, clear_shown, error_html, gallery_html, mark_shown,
                                      preview, response_html, response_mimebundle, response_outputs, response_text)
from jupyter_imagegen.events import Event
from jupyter_imagegen.model import Artifact, ImageRequest, ImageResponse

TOKEN = "sk-display-secret-0123456789"


def ok_response(n=1, size=(64, 48), **kw) -> ImageResponse:
    arts = [Artifact(make_png(size=size, color=(40 * i, 90, 160)), index=i) for i in range(n)]
    return ImageResponse(request_id="r1", success=True, artifacts=arts, elapsed=1.25, attempts=2,
                         model="gpt-image-1", api_type="openai_images",
                         request=ImageRequest("a <b>bold</b> fox"), **kw)


def failed_response() -> ImageResponse:
    return ImageResponse(request_id="r2", success=False, error=f"HTTP 401: bad key <{TOKEN}>", status_code=401,
                         suggestions=["Check IMAGE_AUTH_TOKEN & try <again>"],
                         api_url="http://127.0.0.1:1/v1/images/generations",
                         auth_hint="token sk-d...6789 from IMAGE_AUTH_TOKEN")


def events(*specs):
    return [Event(t, "rid123", d) for t, d in specs]


RETRY_RUN = events(
    (ev.GENERATION_STARTED, {"model": "gpt-image-1", "api_type": "openai_images", "n": 1}),
    (ev.API_CALL, {"attempt": 1, "max_attempts": 3}),
    (ev.API_RETRY, {"attempt": 1, "status_code": 429, "delay": 2.0, "reason": "HTTP 429: slow <down>"}),
    (ev.API_CALL, {"attempt": 2, "max_attempts": 3}),
    (ev.GENERATION_COMPLETED, {"artifact_count": 1, "elapsed": 2.3, "attempts": 2}),
)


# ---------------------------------------------------------------------------------------------
# previews
# ---------------------------------------------------------------------------------------------
def test_preview_downscales_large_images_and_keeps_the_artifact():
    art = Artifact(make_png(size=(2048, 1024)))
    mime, data, (w, h) = preview(art, 512)
    assert mime == "image/jpeg" and (w, h) == (512, 256)
    assert art.size == (2048, 1024) and art.mime_type == "image/png"   # the full image is untouched
    assert len(data) < len(art.data) or len(art.data) < 20_000


def test_preview_keeps_transparency_as_png():
    art = Artifact(make_png(size=(1200, 600), color=(10, 20, 30, 0), mode="RGBA"))
    mime, data, (w, h) = preview(art, 300)
    assert mime == "image/png" and (w, h) == (300, 150)


def test_preview_small_or_full_size_uses_the_original_bytes():
    small = Artifact(make_png(size=(100, 80)))
    assert preview(small, 512) == ("image/png", small.data, (100, 80))
    big = Artifact(make_png(size=(900, 900)))
    assert preview(big, 0)[1] == big.data


# ---------------------------------------------------------------------------------------------
# gallery, text, error box
# ---------------------------------------------------------------------------------------------
def test_single_image_gallery_has_size_caption_and_escaped_revised_prompt():
    resp = ok_response()
    resp.artifacts[0].revised_prompt = "a fox <script>alert(1)</script>"
    html = response_html(resp)
    assert html.count("<img ") == 1 and 'src="data:image/png;base64,' in html
    assert "64×48" in html and "PNG" in html
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert 'alt="a &lt;b&gt;bold&lt;/b&gt; fox"' in html


def test_several_images_make_a_grid():
    resp = ok_response(n=3)
    html = gallery_html(resp.artifacts)
    assert "display: grid" in html and html.count("<figure") == 3
    assert "#1" in html and "#3" in html


def test_model_text_and_partial_failures_are_shown():
    resp = ok_response(n=1, text="Here is your <fox>", errors=["image 2: HTTP 500"])
    html = response_html(resp)
    assert "Here is your &lt;fox&gt;" in html
    assert "1 of the images failed" in html and "image 2: HTTP 500" in html
    text = response_text(resp)
    assert text.startswith("ImageResponse: 1 image from gpt-image-1 (openai_images) in 1.2 s, 2 attempts")
    assert "failed: image 2: HTTP 500" in text


def test_error_box_has_suggestions_masked_key_and_no_token():
    resp = failed_response()
    html = response_html(resp, redact=[TOKEN])
    assert "imagegen-error" in html and "HTTP 401" in html
    assert "Check IMAGE_AUTH_TOKEN &amp; try &lt;again&gt;" in html
    assert "token sk-d...6789 from IMAGE_AUTH_TOKEN" in html
    assert TOKEN not in html and "sk-d...6789" in html
    text = response_text(resp, redact=[TOKEN])
    assert TOKEN not in text and "key: token sk-d...6789" in text and "- Check IMAGE_AUTH_TOKEN" in text
    assert error_html("x", title="T <1>").count("T &lt;1&gt;") == 1


def test_mimebundle_and_the_shown_mark():
    resp = ok_response()
    bundle = resp._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"} and "<img " in bundle["text/html"]
    mark_shown(resp)
    compact = resp._repr_mimebundle_()
    assert set(compact) == {"text/plain"} and "shown above" in compact["text/plain"]
    clear_shown(resp)
    assert "<img " in response_mimebundle(resp)["text/html"]
    assert set(response_mimebundle(resp, include=["text/plain"])) == {"text/plain"}


def test_displaying_a_response_gives_every_image_a_standard_image_output():
    """display(resp): one display_data per image under image/png or image/jpeg (what nbconvert's
    LaTeX, GitHub and VS Code show), with its size in the metadata; the first also carries the
    gallery (for HTML consumers), the others an HTML comment, so no consumer shows an image twice."""
    shell = globalipapp.get_ipython()
    resp = ok_response(n=3)
    with recording_display(shell) as rec:
        display(resp)
    msgs = rec.of_type("display_data")
    assert len(msgs) == 3 and len(rec.images()) == 3
    for m, art in zip(msgs, resp.artifacts):
        assert m["data"]["image/png"] == base64.b64encode(art.data).decode()      # small: the bytes themselves
        assert m["metadata"]["image/png"] == {"width": 64, "height": 48}
    assert msgs[0]["data"]["text/html"].count("<img ") == 3
    assert msgs[0]["data"]["text/plain"].startswith("ImageResponse: 3 images")
    assert all("<img" not in m["data"]["text/html"] and "text/plain" not in m["data"] for m in msgs[1:])
    # marked as shown (the magic's return value while its cell runs): nothing at all, so no Out[]
    mark_shown(resp)
    with recording_display(shell) as rec:
        display(resp)
        data, _ = shell.display_formatter.format(resp)
    assert rec.messages == [] and data == {}


def test_webp_and_large_images_are_previewed_as_png_or_jpeg():
    from PIL import Image
    big = Image.new("RGB", (1500, 900), "teal")
    buf = io.BytesIO()
    big.save(buf, format="WEBP")
    art = Artifact(data=buf.getvalue(), mime_type="image/webp")
    (data, md), = response_outputs(ImageResponse("r", success=True, artifacts=[art]))
    assert set(data) == {"image/jpeg", "text/html", "text/plain"}
    assert md["image/jpeg"] == {"width": 512, "height": 307}
    assert Image.open(io.BytesIO(base64.b64decode(data["image/jpeg"]))).size == (512, 307)


# ---------------------------------------------------------------------------------------------
# the event log
# ---------------------------------------------------------------------------------------------
def test_a_retry_wait_counts_down_in_its_line():
    """"429 rate limited — retrying in 3 s … 2 s … 1 s", then "retried after 3 s" once the next
    attempt starts; the server's message is shortened at a word, never mid-word."""
    log = EventLog()
    said = "Rate limit reached for gpt-image-1 on requests per min. " * 4
    log.add_event(Event(ev.API_RETRY, "r", {"attempt": 1, "status_code": 429, "delay": 3.0, "index": 0,
                                            "reason": f"HTTP 429: {said}"}))
    (line, (deadline, *_)), = log.countdowns.items()
    assert [log.text_of(line, deadline - left).split(" (")[0] for left in (3.0, 2.2, 1.4, 0.6, 0.0)] == [
        "429 rate limited — retrying in 3 s", "429 rate limited — retrying in 3 s",
        "429 rate limited — retrying in 2 s", "429 rate limited — retrying in 1 s", "429 rate limited — retrying now"]
    shown = log.text_of(line).split(" · ", 1)[1]
    assert shown.endswith("…") and said.startswith(shown[:-1]) and len(shown) <= 160
    assert said[len(shown) - 1] == " "                     # cut where a word ends
    assert log.counting()
    log.add_event(Event(ev.API_CALL, "r", {"attempt": 2, "max_attempts": 3, "index": 0}))
    assert not log.counting() and log.to_text().count("429 rate limited — retried after 3 s (attempt 1 failed)") == 1


def test_the_view_draws_a_countdown_each_second(recorder):
    view = GenerationView()
    asked = []
    view.schedule = lambda seconds, fn: asked.append((seconds, fn))
    view.on_event(Event(ev.API_RETRY, "r", {"attempt": 1, "status_code": 503, "delay": 3.0, "reason": "HTTP 503: x"}))
    assert [s for s, _ in asked] == [2.0, 1.0]                      # at "2 s" and at "1 s"
    before = len(recorder.messages)
    asked[0][1]()
    assert len(recorder.messages) == before + 1 and recorder.messages[-1]["msg_type"] == "update_display_data"
    view.on_event(Event(ev.API_CALL, "r", {"attempt": 2, "max_attempts": 3}))
    before = len(recorder.messages)
    asked[1][1]()                                                   # the wait is over: nothing to draw
    assert len(recorder.messages) == before


def test_event_log_lines():
    log = EventLog()
    for e in RETRY_RUN:
        log.add_event(e)
    text = log.to_text()
    assert log.state == "done"
    assert "started: gpt-image-1 via openai_images" in text
    assert "attempt 1/3" in text and "attempt 2/3" in text
    assert "429 rate limited — retried after 2 s (attempt 1 failed) · slow <down>" in text
    assert "done: 1 image in 2.3 s" in text
    html = log.to_html()
    assert "slow &lt;down&gt;" in html and "<down>" not in html
    assert 'data-state="done"' in html and "rid123" in html


def test_event_log_failure_and_cancel():
    log = EventLog()
    log.add_event(Event(ev.GENERATION_FAILED, "r", {"error": "HTTP 500: boom", "status_code": 500}))
    assert log.state == "failed" and "failed (HTTP 500)" in log.to_text()
    log = EventLog()
    log.add_event(Event(ev.GENERATION_FAILED, "r", {"error": "cancelled", "cancelled": True}))
    assert log.state == "cancelled" and "cancelled after" in log.to_text()
    log.cancel()  # idempotent
    assert log.to_text().count("cancelled after") == 1


# ---------------------------------------------------------------------------------------------
# surfaces
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def recorder():
    with recording_display(globalipapp.get_ipython()) as rec:
        yield rec


def test_notebook_view_updates_one_handle(recorder):
    view = GenerationView()
    assert view.mode == "notebook"
    for e in RETRY_RUN:
        view.on_event(e)
    view.show_response(ok_response(n=2))
    kinds = [m["msg_type"] for m in recorder.messages]
    # the log: one output updated in place; then one output per image
    assert kinds == ["display_data"] + ["update_display_data"] * (len(RETRY_RUN) - 1) + ["display_data"] * 2
    log_id = recorder.messages[0]["display_id"]
    assert {m["display_id"] for m in recorder.messages[:-2]} == {log_id}
    first, second = recorder.messages[-2:]
    assert log_id not in (first["display_id"], second["display_id"])
    assert first["data"]["text/html"].count("<img ") == 2 and "image/png" in first["data"]
    assert "<img" not in second["data"]["text/html"] and "image/png" in second["data"]


def test_notebook_view_quiet_and_error(recorder):
    view = GenerationView(quiet=True, redact=[TOKEN])
    for e in RETRY_RUN[:3]:
        view.on_event(e)
    assert recorder.messages == []
    view.show_response(failed_response())
    assert len(recorder.messages) == 1 and TOKEN not in str(recorder.messages)
    view = GenerationView(quiet=True)
    view.cancelled()
    assert "cancelled" in recorder.messages[-1]["data"]["text/plain"]


def test_partial_images_update_the_result_slot(recorder):
    view = GenerationView()
    view.on_event(RETRY_RUN[0])
    for i in range(2):
        view.on_event(Event(ev.PARTIAL_IMAGE, "rid123", {"partial_index": i, "artifact": Artifact(make_png())}))
    view.show_response(ok_response())
    result = [m for m in recorder.messages if m["display_id"] != recorder.messages[0]["display_id"]]
    assert [m["msg_type"] for m in result] == ["display_data", "update_display_data", "update_display_data"]


def test_output_widget_view_rewrites_outputs_in_place():
    ipywidgets = pytest.importorskip("ipywidgets")
    out = ipywidgets.Output()
    view = GenerationView(output=out)
    assert view.mode == "output"
    view.start()
    assert len(out.outputs) == 1 and "waiting" in out.outputs[0]["data"]["text/html"]
    for e in RETRY_RUN:
        view.on_event(e)
        assert len(out.outputs) == 1       # the log is replaced, not appended
    assert "done: 1 image" in out.outputs[0]["data"]["text/plain"]
    view.show_response(ok_response(n=2))
    assert len(out.outputs) == 3 and out.outputs[1]["data"]["text/html"].count("<img ") == 2
    assert all("image/png" in o["data"] for o in out.outputs[1:])
    view.show_response(ok_response(n=1))      # a shorter result empties the slot left over
    assert len(out.outputs) == 3 and out.outputs[2]["data"] == {"text/plain": "", "text/html": ""}
    view.reset()
    assert out.outputs == ()
    view.show_error("bad prompt", suggestions=["write more"])
    assert len(out.outputs) == 1 and "write more" in out.outputs[0]["data"]["text/html"]


def test_terminal_view_prints_new_lines_only():
    buf = io.StringIO()
    view = GenerationView(mode="terminal", stream=buf)
    for e in RETRY_RUN:
        view.on_event(e)
    view.show_response(ok_response())
    lines = buf.getvalue().splitlines()
    assert lines[0] == "imagegen"
    assert sum("attempt 1/3" in line for line in lines) == 1      # each log line printed once
    assert any(line.startswith("ImageResponse: 1 image") for line in lines)


def test_a_reused_view_does_not_pile_up_titles():
    view = GenerationView(mode="terminal", stream=io.StringIO())
    for prompt in ("p1", "p2", "p3"):
        view.reset()
        view.start(prompt)
    assert view.log.title == "imagegen · p3"


def test_notebook_view_keeps_the_latest_partial_of_each_image(recorder):
    """-n 2 with streaming: partials of image 0 and 1 used to replace each other in the one result
    output; now the latest partial of each index is shown together, in one handle updated in place."""
    view = GenerationView(quiet=True)
    colours = {0: (220, 30, 30), 1: (30, 30, 220)}

    def partial(i, k):
        art = Artifact(make_png(size=(40 + 8 * i, 30 + k), color=colours[i]), index=i)
        return Event(ev.PARTIAL_IMAGE, "rid-p", {"index": i, "partial_index": k, "artifact": art})

    for e in (partial(0, 0), partial(1, 0), partial(0, 1), partial(1, 1)):
        view.on_event(e)
    results = recorder.galleries()
    assert len(results) == 4
    assert len({m["display_id"] for m in results}) == 1            # ONE output, updated in place
    assert [m["msg_type"] for m in results] == ["display_data"] + ["update_display_data"] * 3
    last = results[-1]["data"]["text/html"]
    assert last.count("<img ") == 2                                   # both images, not just the last one
    assert 'width="40" height="31"' in last and 'width="48" height="31"' in last   # the latest partial of each
    assert results[1]["data"]["text/html"].count("<img ") == 2
    # image 0 comes first whatever order the partials arrive in
    assert last.index('width="40"') < last.index('width="48"')
    # the final response still replaces the partials in the same handle
    view.show_response(ok_response(n=2))
    final = [m for m in recorder.messages if m["display_id"] == results[0]["display_id"]][-1]
    assert final["data"]["text/html"].count("<img ") == 2 and "image/png" in final["data"]
    # a reset view starts without the old partials
    view.reset()
    view.on_event(partial(1, 2))
    assert recorder.galleries()[-1]["data"]["text/html"].count("<img ") == 1
