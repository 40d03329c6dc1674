"""Several generations at once share one client without mixing anything up.

* in one process: three `generate` calls, each with its own display view (as the magic makes
  them) and a form, all in flight at the same time over one ImageClient (the emulator's latency
  makes them overlap; the log proves they did). Each has its own request_id; each event callback
  and each view receives only its own events (a 503-retrying call's retries appear in its view
  only); each response holds its own prompt's images: a seeded request's bytes equal what the
  same prompt and seed give alone, and sizes follow each request;
* in a real kernel: a form's request in flight while two %%imagegen cells run; each cell's output
  messages update only that cell's display ids, each result (`--out`, `form.value`) answers its
  own prompt, and the kernel history has one entry per request.
"""
from __future__ import annotations

import asyncio
import json
import sys

import pytest

from _reliab_helpers import Recorder
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.display import GenerationView
from kernels import kernel_env, running_kernel

TOKEN = "sk-concurrency-token-0123456789abcdef"


def overlapping(entries) -> bool:
    """True when every logged request was in flight at one common moment."""
    starts = [e["time"] for e in entries]
    ends = [e["time"] + e["elapsed"] for e in entries]
    return max(starts) < min(ends)


def img_count(output) -> int:
    return sum(o["data"].get("text/html", "").count("<img ") for o in output.outputs)


async def test_three_calls_with_views_and_a_form_at_once(emulator):
    ipywidgets = pytest.importorskip("ipywidgets")
    from jupyter_imagegen.widget import ImageGenForm

    emulator.latency = 0.4          # every answer takes that long: the calls overlap
    cfg = ImageConfig(api_type="openrouter_chat", base_url=emulator.base_url_for("openrouter_chat"), token=TOKEN,
                      backoff_base=0.01)
    client = ImageClient(cfg)
    runs = {
        "A": ImageRequest("a red fox in the snow (run A)", aspect_ratio="16:9", seed=11),
        "B": ImageRequest("a blue whale at sea (run B)", api_type="openai_images", size="1024x1536", n=2,
                          base_url=emulator.base_url_for("openai_images")),
        "C": ImageRequest("a green owl at night (run C)", api_type="openai_responses",
                          base_url=emulator.base_url_for("openai_responses"), max_attempts=3,
                          headers={"X-Emulator-Fault": "503:retry_after=0.1"}),
    }
    views = {k: GenerationView(output=ipywidgets.Output(), title=f"view {k}") for k in runs}
    recs = {k: Recorder() for k in runs}

    def callback(k):
        def on_event(event):
            recs[k](event)
            views[k].on_event(event)
        return on_event

    async def one(k):
        views[k].start(runs[k].prompt)
        resp = await client.generate(runs[k], on_event=callback(k))
        views[k].show_response(resp)
        return resp

    form = ImageGenForm(client=client, prompt="a yellow kite over a beach (run F)", size="9:16",
                        request_options={"seed": 22})
    form.generate_button.click()
    assert form.task is not None, form.message_text
    results = dict(zip(runs, await asyncio.gather(*(one(k) for k in runs))))
    results["F"] = await asyncio.wait_for(form.wait(), 20)
    log = emulator.requests

    # they really ran at the same time: the first attempt of each overlapped
    firsts = {}
    for e in log:
        firsts.setdefault(e["prompt"], e)
    assert len(firsts) == 4 and overlapping(list(firsts.values())), [(e["time"], e["elapsed"]) for e in log]

    # one request id each; every callback got only its own events
    rids = {k: r.request_id for k, r in results.items()}
    assert len(set(rids.values())) == 4
    for k, rec in recs.items():
        assert rec.events and {e.request_id for e in rec.events} == {rids[k]}, k
    form_lines = form.view.log.to_text()

    # each view shows only its own story
    texts = {k: v.log.to_text() for k, v in views.items()}
    texts["F"] = form_lines
    assert texts["C"].count("503 service unavailable — retried") == 2 and "failed" in texts["C"]
    for k in ("A", "B", "F"):
        assert "503" not in texts[k] and "retr" not in texts[k], (k, texts[k])
        assert texts[k].count("attempt ") == 1, (k, texts[k])
    assert "done: 1 image" in texts["A"] and "done: 2 images" in texts["B"] and "done: 1 image" in texts["F"]
    assert img_count(views["A"]._surface.output) == 1
    assert img_count(views["B"]._surface.output) == 2
    assert img_count(views["C"]._surface.output) == 0 and "503" in json.dumps(views["C"]._surface.output.outputs)
    assert img_count(form.output) == 1

    # each response answers its own prompt
    a, b, c, f = (results[k] for k in "ABCF")
    assert a.success and b.success and f.success and not c.success
    assert a.request.prompt in a.text and "run F" not in a.text
    assert f.request.prompt in f.text and "run A" not in f.text
    assert "HTTP 503" in c.error and c.attempts == 3
    assert [x.size for x in a.artifacts] == [(1344, 768)]
    assert [x.size for x in b.artifacts] == [(1024, 1536), (1024, 1536)]
    assert [x.size for x in f.artifacts] == [(768, 1344)]
    by_prompt = {e["prompt"]: e for e in log}
    assert set(by_prompt) == {runs["A"].prompt, runs["B"].prompt, runs["C"].prompt, f.request.prompt}
    # seeded images are what that prompt and seed give on their own: the bytes did not cross
    alone_a = await client.generate(runs["A"].replace())
    alone_f = await client.generate(f.request.replace())
    assert alone_a.artifacts[0].data == a.artifacts[0].data
    assert alone_f.artifacts[0].data == f.artifacts[0].data
    assert a.artifacts[0].data != f.artifacts[0].data
    form.close()
    await client.close()


# ---------------------------------------------------------------------------------------------
# a real kernel: a form in flight while two magics run
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def kernel(emulator_thread, tmp_path):
    """A kernel of this interpreter (tests/kernels.py) whose IMAGE_* point at the emulator, which
    takes 0.6 s over every answer (so the requests overlap)."""
    pytest.importorskip("ipykernel")
    env = kernel_env(sys.executable, IMAGE_AUTH_TOKEN=TOKEN, IMAGE_API_TYPE="openrouter_chat",
                     IMAGE_BASE_URL=emulator_thread.base_url_for("openrouter_chat"), IMAGE_CACHE="0")
    emulator_thread.latency = 0.6
    try:
        with running_kernel(sys.executable, env=env, cwd=tmp_path, workdir=tmp_path) as k:
            yield k.kc, emulator_thread
    finally:
        emulator_thread.latency = 0.0


def run_cell(kc, code, timeout=60):
    msgs = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=msgs.append)
    assert reply["content"]["status"] == "ok", reply["content"]
    return msgs


def display_ids(msgs, msg_type):
    return {m["content"].get("transient", {}).get("display_id") for m in msgs if m["msg_type"] == msg_type}


@pytest.mark.kernel
@pytest.mark.timeout(120)
def test_a_form_and_two_magics_in_one_kernel(kernel):
    kc, emu = kernel
    run_cell(kc, "%load_ext jupyter_imagegen\n"
                 "from jupyter_imagegen.widget import ImageGenForm\n"
                 "from jupyter_imagegen import history\n"
                 "history.clear()\n"
                 "form = ImageGenForm(prompt='a yellow kite over a beach (form)', size='1:1', "
                 "request_options={'headers': {'X-Emulator-Fault': 'slow_headers:delay=3'}})")
    form_msgs = run_cell(kc, "form.generate_button.click()\nassert form.running")
    one = run_cell(kc, "%%imagegen --aspect 16:9 --fault 429:retry_after=0.2 --out one\n"
                       "a red fox in the snow (magic one)")
    two = run_cell(kc, "%%imagegen --aspect 9:16 --out two\na blue whale at sea (magic two)")
    check = run_cell(kc, "\n".join([
        "import json",
        "f = await form.wait(20)",
        "print(json.dumps({",
        "  'rids': [one.request_id, two.request_id, f.request_id],",
        "  'ok': [one.success, two.success, f.success],",
        "  'texts': [one.text, two.text, f.text],",
        "  'sizes': [[a.size for a in r.artifacts] for r in (one, two, f)],",
        "  'form_log': form.view.log.to_text(),",
        "  'history': [(e.response.request_id, e.prompt) for e in history.entries()],",
        "}))",
    ]))
    out = json.loads("".join(m["content"].get("text", "") for m in check if m["msg_type"] == "stream"))
    # the three requests overlapped: the form's (3 s) was in flight while both magics ran
    log = emu.requests
    form_entry = next(e for e in log if "(form)" in (e["prompt"] or ""))
    magic_entries = [e for e in log if "(magic" in (e["prompt"] or "")]
    assert len(magic_entries) == 3       # one 429 + its retry, and the second magic
    assert all(form_entry["time"] < e["time"] < form_entry["time"] + form_entry["elapsed"] for e in magic_entries)

    assert out["ok"] == [True, True, True]
    assert len(set(out["rids"])) == 3
    assert "magic one" in out["texts"][0] and "magic two" in out["texts"][1] and "(form)" in out["texts"][2]
    assert out["sizes"] == [[[1344, 768]], [[768, 1344]], [[1024, 1024]]]
    assert "429" not in out["form_log"] and out["form_log"].count("attempt ") == 1, out["form_log"]
    assert sorted(p for _, p in out["history"]) == sorted([
        "a red fox in the snow (magic one)", "a blue whale at sea (magic two)", "a yellow kite over a beach (form)"])
    assert {rid for rid, _ in out["history"]} == set(out["rids"])

    # each cell's messages update only that cell's own display ids; the form's cell shows nothing
    # of theirs (its output lives in its widget)
    ids_one, ids_two = display_ids(one, "display_data"), display_ids(two, "display_data")
    assert None not in ids_one and None not in ids_two and not ids_one & ids_two
    assert display_ids(one, "update_display_data") <= ids_one
    assert display_ids(two, "update_display_data") <= ids_two
    assert not [m for m in form_msgs if m["msg_type"] in ("display_data", "update_display_data")]
    def plain(msgs):     # the text of the cell's outputs (not the images' base64)
        return "\n".join(m["content"].get("data", {}).get("text/plain", "") + m["content"].get("text", "")
                         for m in msgs)
    text_one, text_two = plain(one), plain(two)
    assert "429 rate limited — retrying" in text_one and "retr" not in text_two, (text_one, text_two)
    assert "(form)" not in text_one + text_two and "magic two" not in text_one and "magic one" not in text_two


BLOCKING_CALL_INSIDE_A_RUNNING_LOOP = """
import asyncio
from jupyter_imagegen import loop_thread

order = []

async def work():
    await asyncio.sleep(0.05)
    return "cell done"

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)

def cell():                      # ipykernel runs a cell inside one callback of its running loop
    order.append(loop_thread.shared().run(lambda post: work()))
    loop.call_later(0.1, loop.stop)

loop.call_soon(cell)                              # a blocking %%imagegen...
loop.call_soon(lambda: order.append("next cell"))  # ...while the next queued cell is ready
loop.run_forever()
print(order)
"""


def test_a_blocking_call_never_runs_the_callers_loop():
    """The kernel's loop is never re-entered: work queued on it behind a blocking image call
    (the next cell of Run All) runs after that call, not inside it."""
    import subprocess
    proc = subprocess.run([sys.executable, "-c", BLOCKING_CALL_INSIDE_A_RUNNING_LOOP], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "['cell done', 'next cell']", proc.stdout


# ---------------------------------------------------------------------------------------------
# limits: the fan-out limit bounds one request's calls; the pool bounds connections per host;
# neither caps the other (the pool used to be 2x the fan-out limit: 8 in flight at most)
# ---------------------------------------------------------------------------------------------
def most_in_flight(entries) -> int:
    """The largest number of logged requests in flight at one moment."""
    spans = [(e["time"], e["time"] + e["elapsed"]) for e in entries]
    return max(sum(1 for s, end in spans if s <= t < end) for t, _ in spans)


async def _generate_all(emulator, requests, **config):
    emulator.latency = 0.3
    cfg = ImageConfig(api_type="openrouter_chat", base_url=emulator.base_url_for("openrouter_chat"), token=TOKEN,
                      backoff_base=0, **config)
    async with ImageClient(cfg) as client:
        responses = await asyncio.gather(*(client.generate(r) for r in requests))
    assert all(r.success for r in responses), [r.error for r in responses if not r.success]
    return [e for e in emulator.requests if e["path"].endswith("/chat/completions")]


async def test_a_fan_out_of_eight_is_in_flight_at_once_by_default(emulator):
    assert ImageConfig().max_concurrency >= 8
    log = await _generate_all(emulator, [ImageRequest("a fox", n=8)])
    assert len(log) == 8 and most_in_flight(log) == 8


async def test_max_concurrency_still_bounds_one_fan_out(emulator):
    log = await _generate_all(emulator, [ImageRequest("a fox", n=6)], max_concurrency=2)
    assert len(log) == 6 and most_in_flight(log) == 2


async def test_independent_calls_are_not_capped_by_the_fan_out_limit(emulator):
    log = await _generate_all(emulator, [ImageRequest(f"a fox {i}") for i in range(20)], max_concurrency=1)
    assert len(log) == 20 and most_in_flight(log) == 20


async def test_max_connections_bounds_calls_to_one_host(emulator):
    log = await _generate_all(emulator, [ImageRequest(f"a fox {i}") for i in range(12)], max_connections=5)
    assert len(log) == 12 and most_in_flight(log) == 5
