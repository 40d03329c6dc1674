"""A real Jupyter kernel (jupyter_client + ipykernel) running %%imagegen against the emulator.

The emulator runs in this test process on 127.0.0.1; the kernel gets its URL and token through
IMAGE_* environment variables, as a user's notebook would.
"""
from __future__ import annotations

import json
import sys
import time

import pytest

pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")

from kernels import execute, kernel_env, outputs, running_kernel  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

TOKEN = "sk-kernel-test-token-0123456789"


@pytest.fixture(scope="module")
def kernel(emulator_thread, tmp_path_factory):
    """A python kernel of *this* interpreter (a private kernelspec, so the editable install and
    the test dependencies are the ones the kernel imports)."""
    workdir = tmp_path_factory.mktemp("kernel-cwd")
    env = kernel_env(
        sys.executable,
        IMAGE_BASE_URL=emulator_thread.base_url_for("openai_images"),
        IMAGE_AUTH_TOKEN=TOKEN,
        IMAGE_API_TYPE="openai_images",
        IMAGE_CACHE="0",
        IMAGE_CACHE_DIR=str(workdir / "cache"),
        PYTHONWARNINGS="default",
    )
    with running_kernel(sys.executable, env=env, cwd=workdir, workdir=workdir) as k:
        yield k.km, k.kc, workdir


def test_cell_magic_in_a_kernel_shows_live_log_then_images(kernel):
    km, kc, workdir = kernel
    reply, msgs = execute(kc, "%load_ext jupyter_imagegen")
    assert reply["status"] == "ok", reply

    code = "%%imagegen -n 2 --fault 429:retry_after=0.3 --save out --out fox\na red fox in fresh snow"
    reply, msgs = execute(kc, code)
    assert reply["status"] == "ok", reply
    shown = outputs(msgs, "display_data")
    updates = outputs(msgs, "update_display_data")
    errors = [m for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == "stderr"]
    assert not errors, errors

    # the event log: one display_data, then updates carrying the same display_id
    log_id = shown[0]["content"]["transient"]["display_id"]
    assert "imagegen-log" in shown[0]["content"]["data"]["text/html"]
    assert len(updates) >= 3
    assert {u["content"]["transient"]["display_id"] for u in updates} == {log_id}
    final_log = updates[-1]["content"]["data"]["text/plain"]
    assert "429 rate limited — retried after" in final_log and "done: 2 images" in final_log

    # the gallery: a second display_data with two inline images; each image is also a standard
    # image output (the gallery's own output carries the first)
    gallery = [m for m in shown if "<img" in m["content"]["data"].get("text/html", "")]
    assert len(gallery) == 1
    html = gallery[0]["content"]["data"]["text/html"]
    assert html.count("<img ") == 2 and "data:image/" in html
    images = [m for m in shown if {"image/png", "image/jpeg"} & set(m["content"]["data"])]
    assert len(images) == 2 and images[0] is gallery[0]

    # the return value: nothing more on screen (no Out[]), though `_` holds it (below)
    assert outputs(msgs, "execute_result") == []

    # the token never reaches the notebook
    assert TOKEN not in json.dumps([m["content"] for m in msgs])

    saved = sorted((workdir / "out").glob("*.png"))  # each image also has a .json sidecar
    assert len(saved) == 2

    # `_` and --out hold the response; its first image is a PIL image Jupyter can show itself
    reply, msgs = execute(kc, "print(_ is fox, type(fox.image).__module__, len(fox.paths))\nfox.image")
    assert reply["status"] == "ok", reply
    text = "".join(m["content"]["text"] for m in outputs(msgs, "stream"))
    assert "True PIL." in text and text.strip().endswith("2")
    png = outputs(msgs, "execute_result")[0]["content"]["data"]
    assert "image/png" in png

    # a later display of the response renders the full gallery again (display_data: one output per
    # image, IPython leaves the display to the response's _ipython_display_)
    reply, msgs = execute(kc, "fox")
    shown = outputs(msgs, "display_data")
    assert "<img" in shown[0]["content"]["data"]["text/html"] and len(shown) == 2


def test_bad_option_is_one_line_in_the_kernel(kernel):
    km, kc, workdir = kernel
    execute(kc, "%load_ext jupyter_imagegen")
    # shown as one error box and the cell does not fail, so Run All goes on past it
    reply, msgs = execute(kc, "%%imagegen --sizee 12\na cat")
    assert reply["status"] == "ok", reply
    shown = outputs(msgs, "display_data", "update_display_data")
    assert len(shown) == 1 and not outputs(msgs, "stream", "error")
    text = shown[0]["content"]["data"]["text/plain"]
    assert text.startswith("UsageError: unknown option --sizee; did you mean --size?") and "\n" not in text
    # --raise-error: the cell fails with that one line (stderr), as a script or CI may want
    reply, msgs = execute(kc, "%%imagegen --raise-error --sizee 12\na cat")
    assert reply["status"] == "error" and reply["ename"] == "UsageError"
    assert not outputs(msgs, "display_data", "update_display_data")
    stderr = "".join(m["content"]["text"] for m in outputs(msgs, "stream"))
    assert stderr.strip().count("\n") == 0 and "unknown option --sizee; did you mean --size?" in stderr


#: run in the kernel: wait (5 s at most) until the background loop has no task left, i.e. the
#: interrupted call's job has ended (cleanup included) and nothing can send any more; then print
#: the generate tasks left on the kernel's own loop
NO_TASK_LEFT = """\
import asyncio, time
from jupyter_imagegen import loop_thread
async def _background_tasks():
    return len(asyncio.all_tasks()) - 1
_deadline = time.monotonic() + 5
while loop_thread.shared().call(_background_tasks(), timeout=5) and time.monotonic() < _deadline:
    time.sleep(0.01)
print(sorted(t.get_coro().__qualname__ for t in asyncio.all_tasks() if 'generate' in t.get_coro().__qualname__))
print('background tasks:', loop_thread.shared().call(_background_tasks(), timeout=5))
"""


def test_interrupt_kernel_mid_retry_then_next_cell_works(kernel, emulator_thread):
    km, kc, workdir = kernel
    execute(kc, "%load_ext jupyter_imagegen")
    before = emulator_thread.request_count
    msg_id = kc.execute("%%imagegen --fault 429:retry_after=5\na slow lighthouse")
    # wait until the retry wait has begun (the log shows "retrying"), then interrupt
    deadline = time.monotonic() + 15
    seen_retry = False
    while not seen_retry:
        assert time.monotonic() < deadline, "no retry event"
        msg = kc.get_iopub_msg(timeout=10)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "update_display_data":
            seen_retry = "retrying in" in msg["content"]["data"]["text/plain"]
    t0 = time.monotonic()
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=10)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    took = time.monotonic() - t0
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] in ("GenerationCancelled", "KeyboardInterrupt")
    assert took < 2.0, f"interrupt took {took:.1f} s"
    # ipykernel aborts requests that arrive while it is still unwinding the failed cell
    # (stop_on_error): wait for the interrupted cell's idle status, as a frontend does
    while True:
        msg = kc.get_iopub_msg(timeout=10)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            break

    # no task left behind on the kernel loop nor on the background loop, no retry was sent, and
    # the next cell works
    reply, msgs = execute(kc, NO_TASK_LEFT)
    assert reply["status"] == "ok", reply
    printed = "".join(m["content"]["text"] for m in outputs(msgs, "stream"))
    assert "[]" in printed and "background tasks: 0" in printed, printed
    assert emulator_thread.request_count == before + 1, "a retry was sent after the interrupt"
    reply, msgs = execute(kc, "%imagegen a quick lighthouse")
    assert reply["status"] == "ok", reply
    assert any("<img" in m["content"]["data"].get("text/html", "") for m in outputs(msgs, "display_data"))


def test_interrupting_a_python_call_ends_with_one_line(kernel):
    """Interrupting compare() (or history[N].rerun(), load(...).rerun()) in a cell, with or
    without %load_ext: the cell ends with one line, not a traceback through the package."""
    km, kc, workdir = kernel
    msg_id = kc.execute("from jupyter_imagegen import compare, ImageRequest\n"
                        "slow = ImageRequest('a slow fox', headers={'X-Emulator-Fault': 'slow_headers:delay=10'})\n"
                        "grid = compare(models=['gpt-image-1', 'gpt-image-1-mini'], base=slow, record=False)\n")
    time.sleep(2.0)
    km.interrupt_kernel()
    errors = []
    while True:
        msg = kc.get_iopub_msg(timeout=15)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "error":
            errors.append(msg["content"])
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            break
    assert len(errors) == 1 and errors[0]["ename"] == "GenerationCancelled"
    (line,) = errors[0]["traceback"]
    assert line.startswith("GenerationCancelled: image generation cancelled after") and "\n" not in line



def test_kernel_shutdown_closes_the_session_quietly(kernel):
    """Last in this module: the shared aiohttp session is closed at exit, without warnings."""
    km, kc, workdir = kernel
    execute(kc, "%load_ext jupyter_imagegen")
    reply, msgs = execute(kc, "%imagegen one more lighthouse\n"
                              "from jupyter_imagegen.runtime import runtime\n"
                              "assert not runtime.current_client._session.closed")
    assert reply["status"] == "ok", reply
    kc.stop_channels()
    km.shutdown_kernel(now=False)
    log = (workdir / "kernel-stderr.txt").read_text()
    assert "Unclosed" not in log and "Traceback" not in log, log
