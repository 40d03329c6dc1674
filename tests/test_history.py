"""The kernel's history: recording, numbering, bounds, no token, thumbnails, re-running."""
from __future__ import annotations

import pickle

import pytest

from _image_helpers import make_png
import jupyter_imagegen
from jupyter_imagegen import ImageRequest, history
from jupyter_imagegen.runtime import runtime
from jupyter_imagegen.history import History
from jupyter_imagegen.model import Artifact, ImageResponse, Usage

TOKEN = "sk-HISTORY-LEAKCHECK-0a1b2c3d4e5f60718293"


@pytest.fixture
def env(emulator_thread, emulator_env):
    """IMAGE_* pointing at the emulator (the request cache on, in a temp folder), no fault queued,
    a clean history; yields the emulator."""
    emulator_env(emulator_thread, cache=True)
    emulator_thread.clear_faults()
    history.clear()
    try:
        yield emulator_thread
    finally:
        history.clear()
        runtime.close()


def fake(prompt="a fox", n=1, ok=True, **kw) -> ImageResponse:
    req = ImageRequest(prompt, model="gpt-image-1", api_type="openai_images", token=TOKEN,
                       headers={"Authorization": f"Bearer {TOKEN}", "X-Emulator-Fault": "500", "X-Title": "t"})
    arts = [Artifact(make_png((600, 400), (i * 40, 80, 120)), index=i) for i in range(n)] if ok else []
    return ImageResponse(request_id=req.request_id, success=ok, artifacts=arts, request=req, model="gpt-image-1",
                         api_type="openai_images", elapsed=1.25, attempts=2,
                         usage=Usage(10, 20, 30, 0.0123), error=None if ok else "HTTP 400: no", **kw)


def test_module_is_the_history_and_is_exported():
    assert jupyter_imagegen.history is history
    from jupyter_imagegen import history as h2
    assert h2 is history and bool(history) is True
    assert "history" in jupyter_imagegen.__all__ and "load" in jupyter_imagegen.__all__


def test_record_numbering_and_access():
    h = History()
    entries = [h.record(fake(f"prompt {i}")) for i in range(1, 5)]
    assert [e.number for e in entries] == [1, 2, 3, 4]
    assert h[3] is entries[2] and h[-1] is entries[3] and h[-4] is entries[0]
    assert h[1:3] == entries[1:3] and len(h) == 4 and list(h) == entries
    with pytest.raises(IndexError, match="numbered from 1"):
        h[0]
    with pytest.raises(IndexError, match="no history entry #9"):
        h[9]
    with pytest.raises(IndexError):
        h[-5]
    resp = entries[0].response
    assert h.record(resp) is entries[0]            # the same response twice: one entry
    e = entries[1]
    assert (e.prompt, e.model, e.api_type, e.elapsed, e.attempts, e.cost, e.success) == \
        ("prompt 2", "gpt-image-1", "openai_images", 1.25, 2, 0.0123, True)
    assert e.usage.total_tokens == 30 and e.settings["prompt"] == "prompt 2"


def test_no_token_is_kept():
    h = History()
    e = h.record(fake())
    assert e.request.token is None
    assert e.request.headers == {"X-Title": "t"}              # credentials and the fault header dropped
    assert TOKEN not in repr(vars(e)) and TOKEN not in h.table_html() and TOKEN not in repr(e.settings)
    assert TOKEN.encode() not in pickle.dumps((e.request, e.settings))


def test_bounded_entries_and_what_they_really_hold():
    from jupyter_imagegen.memory import memory
    h = History(max_entries=3)
    first = fake("first", n=2)
    e1 = h.record(first)
    original = [a.data for a in first.artifacts]
    assert e1.bytes == sum(len(d) for d in original)
    assert h.bytes_in_memory == e1.memory_cost() >= e1.bytes   # bytes (and kept pixels, previews)
    thumbs = e1.thumbnails()
    assert len(thumbs) == 2 and all(t[1] and max(t[2]) <= 96 for t in thumbs)
    assert h.bytes_in_memory > e1.bytes                        # the thumbnails are counted too
    thumb_bytes = sum(len(t[1]) for t in thumbs)
    for a in first.artifacts:
        a.spill()                                              # what the memory budget does
    assert h.bytes_in_memory == thumb_bytes and not any(a.in_memory for a in first.artifacts)
    assert e1.thumbnails() == thumbs                           # kept: showing the table reads nothing back
    assert not any(a.in_memory for a in first.artifacts)
    assert [a.data for a in e1.artifacts] == original          # read back when used
    assert h.bytes_in_memory == e1.bytes + thumb_bytes
    assert memory.stats()["read_back"] >= 2
    for i in range(3):
        h.record(fake(f"more {i}"))
    assert len(h) == 3 and [e.number for e in h] == [2, 3, 4]
    with pytest.raises(IndexError, match="dropped"):
        h[1]


def test_table_renders_thumbnails_escaped_prompts_and_failures():
    h = History()
    h.record(fake("<script>alert(1)</script> a fox", n=2))
    h.record(fake("a failed one", ok=False, status_code=400))
    html = h.table_html()
    assert html.count("<img ") == 2 and "<script>" not in html and "&lt;script&gt;" in html
    assert "failed" in html and "HTTP 400" in html and "$0.0123" in html
    assert html.index("a failed one") < html.index("a fox")      # newest first
    text = h.text()
    assert "#2" in text and "#1" in text
    bundle = h._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert History().table_html().count("no requests yet") == 1


def test_entry_displays_its_gallery():
    e = History().record(fake("a fox", n=2))
    bundle = e._repr_mimebundle_()
    assert "<img " in bundle["text/html"] and "history #1" in bundle["text/html"]
    # displayed in a cell: one standard image output per image, the gallery on the first
    from IPython.display import display
    from IPython.testing import globalipapp
    from _magic_helpers import recording_display
    with recording_display(globalipapp.get_ipython()) as rec:
        display(e)
    assert len(rec.messages) == 2 and len(rec.images()) == 2
    assert "history #1" in rec.messages[0]["data"]["text/html"] and rec.messages[0]["data"]["text/html"].count("<img ") == 2


def test_rerun_sends_the_same_request_and_records_it(env):
    emu = env
    client = runtime.client()
    req = ImageRequest("a lighthouse at dusk", size="1024x1536", quality="low", n=2, fresh=True)
    resp = client.generate_sync(req)
    assert resp.success
    entry = history.record(resp, source="magic")
    before = emu.request_count
    sent = emu.requests[-1]
    # unchanged: answered from the request cache, no HTTP call
    again = entry.rerun()
    assert again.success and again.from_cache and emu.request_count == before
    assert [a.data for a in again.artifacts] == [a.data for a in resp.artifacts]
    assert history[-1].rerun_of == entry.number and history[-1].source == "rerun"
    # a new sample: the very same request goes out again
    fresh = history[entry.number].rerun(fresh=True)
    assert fresh.success and not fresh.from_cache and emu.request_count == before + 1
    resent = emu.requests[-1]
    for key in ("path", "model", "prompt", "n", "size", "quality", "output_format", "background"):
        assert resent.get(key) == sent.get(key), key
    # overrides win
    other = entry.rerun(size="1536x1024", n=1)
    assert emu.requests[-1]["size"] == "1536x1024" and other.artifacts[0].size == (1536, 1024)
    assert len(history) == 4
    # an entry's image as an input of a new request
    edit = client.generate_sync(ImageRequest("add a moon", images=[history[entry.number].artifacts[0]]))
    assert edit.success and emu.requests[-1]["input_images"] == 1


def test_failed_requests_are_recorded(env):
    emu = env
    emu.add_faults("400")
    resp = runtime.client().generate_sync(ImageRequest("a fox", cache=False))
    entry = history.record(resp, source="form")
    assert not entry.success and entry.status_code == 400 and entry.error and entry.source == "form"
    assert "failed" in history.table_html()
