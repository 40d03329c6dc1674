"""Cancelling stops at once, hangs up, and leaves everything usable.

* the client: cancelling `generate` while a request is in flight (each format, a fan-out, a URL
  download) or while it waits to retry (Retry-After or backoff) ends it within a second; the
  server sees the client hang up (EOF) and no ESTABLISHED connection to it is left in
  /proc/net/tcp; no retry is sent afterwards; `generation_failed(cancelled=True)` is the last
  event; no task is left; the same client then works;
* the magic: interrupting the kernel (SIGINT, as "interrupt kernel" does) mid-request or mid-wait
  stops the cell within a second with GenerationCancelled, the connection is closed, the next
  cell works;
* the form: Cancel does the same;
* a real kernel: shutting it down after a magic, or while a form's request is in flight, closes
  the aiohttp session without "Unclosed ..." or "Task was destroyed" on the kernel's stderr.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time

import pytest
from aiohttp import web

from _magic_helpers import background_tasks, interrupt_when
from _reliab_helpers import HangServer, Recorder, TinyServer, client_connections_to
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.errors import GenerationCancelled
from kernels import kernel_env, running_kernel

TOKEN = "sk-cancel-test-token-0123456789abcdef"
APIS = ("openrouter_chat", "openai_images", "openai_responses")
BASE_PATH = {"openrouter_chat": "/api/v1", "openai_images": "/v1", "openai_responses": "/v1"}


async def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def wait_until(condition, timeout=5.0) -> None:
    """From sync code: poll `condition()` until it holds or `timeout` s have passed (the
    assertion that follows says what was expected)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def generate_tasks():
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
            and "jupyter_imagegen" in repr(t.get_coro())]


def client_tasks():
    """Every task on this loop but the test's own and the emulator's server side (aiohttp's
    web_protocol, one per connection it serves): whatever could still send a request."""
    def source(task):
        return getattr(getattr(task.get_coro(), "cr_code", None), "co_filename", "")
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
            and not source(t).endswith(os.path.join("aiohttp", "web_protocol.py"))]


async def cancel_and_time(task, timeout=1.0):
    t0 = time.monotonic()
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=timeout)
    took = time.monotonic() - t0
    assert done, f"still running {timeout} s after cancel"
    assert task.cancelled()
    return took


async def assert_next_call_works(client, emu, api="openai_images"):
    resp = await client.generate(ImageRequest("the next one", api_type=api, base_url=emu.base_url_for(api)))
    assert resp.success, resp.error


# ---------------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("api, n", [(a, 1) for a in APIS] + [("openrouter_chat", 3)],
                         ids=list(APIS) + ["openrouter_chat-fanout-3"])
async def test_cancel_in_flight_hangs_up_at_once(emulator, api, n):
    async with HangServer() as hang:
        client = ImageClient(ImageConfig(api_type=api, base_url=hang.url + BASE_PATH[api], token=TOKEN,
                                         timeout=60))
        rec = Recorder()
        task = asyncio.ensure_future(client.generate(ImageRequest("never answered", n=n), on_event=rec))
        await wait_for(lambda: hang.requests == n)
        assert client_connections_to(hang.port) == n
        took = await cancel_and_time(task)
        assert took < 1.0, f"took {took:.2f} s"
        await wait_for(lambda: len(hang.closed_at) == n, timeout=1.0)       # the server saw EOF
        assert client_connections_to(hang.port) == 0
        last = rec.events[-1]
        assert last.type == "generation_failed" and last["cancelled"] is True
        assert not generate_tasks(), generate_tasks()
        await assert_next_call_works(client, emulator)
        await client.close()


@pytest.mark.parametrize("fault, cfg", [
    ("429:retry_after=30", {}),
    ("503", {"backoff_base": 30, "backoff_max": 60}),
    ("429:retry_after_date=30", {}),
], ids=["retry-after", "backoff", "retry-after-date"])
async def test_cancel_during_the_retry_wait(emulator, fault, cfg):
    emulator.add_faults(fault)
    client = ImageClient(ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"),
                                     token=TOKEN, **cfg))
    rec = Recorder()
    task = asyncio.ensure_future(client.generate(ImageRequest("rate limited"), on_event=rec))
    await wait_for(lambda: rec.of("api_retry"))
    assert rec.of("api_retry")[0]["delay"] >= 14       # it really meant to wait
    took = await cancel_and_time(task)
    assert took < 1.0
    # the cancelled call has ended (cleanup included); once no other task is left on this loop
    # either, nothing can send a retry any more
    await wait_for(lambda: not client_tasks(), timeout=1.0)
    assert emulator.request_count == 1, "a retry was sent after the cancel"
    assert rec.events[-1].type == "generation_failed" and rec.events[-1]["cancelled"]
    assert not generate_tasks()
    await assert_next_call_works(client, emulator)
    assert emulator.request_count == 2
    await client.close()


async def test_cancel_during_a_url_download():
    """The API answered with a URL; the download hangs; cancel closes the download too."""
    async with HangServer() as hang:
        async def generations(request):
            return web.json_response({"created": 1, "data": [{"url": hang.url + "/image.png"}]})

        async with TinyServer({"/v1/images/generations": generations}) as api:
            client = ImageClient(ImageConfig(api_type="openai_images", base_url=api.url + "/v1", token=TOKEN))
            task = asyncio.ensure_future(client.generate(ImageRequest("a kite")))
            await wait_for(lambda: hang.requests == 1)
            took = await cancel_and_time(task)
            assert took < 1.0
            await wait_for(lambda: len(hang.closed_at) == 1, timeout=1.0)
            assert client_connections_to(hang.port) == 0
            await client.close()


async def test_closing_the_client_mid_request_is_clean():
    """close() while a call is in flight: the call ends (cancelled or failed), nothing is left."""
    async with HangServer() as hang:
        client = ImageClient(ImageConfig(api_type="openai_images", base_url=hang.url + "/v1", token=TOKEN))
        task = asyncio.ensure_future(client.generate(ImageRequest("hang")))
        await wait_for(lambda: hang.requests == 1)
        task.cancel()
        await client.close()
        await asyncio.wait([task], timeout=1.0)
        assert task.done()
        await wait_for(lambda: len(hang.closed_at) == 1, timeout=1.0)
        assert client_connections_to(hang.port) == 0


# ---------------------------------------------------------------------------------------------
# the magic (SIGINT, as the kernel's "interrupt" sends it)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fault, marker, in_flight", [
    ("slow_headers:delay=10", "attempt 1/", True),
    ("429:retry_after=30", "retrying in", False),
], ids=["in-flight", "retry-wait"])
def test_interrupting_the_magic(ip, emulator_thread, fault, marker, in_flight):
    shell, rec = ip
    before = emulator_thread.request_count
    seen = lambda: any(marker in m["data"].get("text/plain", "") for m in rec.messages)  # noqa: E731
    t, fired = interrupt_when(seen)
    try:
        res = shell.run_cell(f"%%imagegen --fault {fault}\na slow lighthouse", store_history=False)
    finally:
        t.join(10)
    ended = time.monotonic()
    assert fired, "the interrupt was never sent"
    assert isinstance(res.error_in_exec, GenerationCancelled), res.error_in_exec
    assert ended - fired[0] < 1.0, f"stopped {ended - fired[0]:.2f} s after the interrupt"
    assert not background_tasks()      # the cancelled call has ended: nothing can send any more
    assert "cancelled" in rec.messages[-1]["data"]["text/plain"]
    if in_flight:                      # and its connection is closed (the session was fresh: its only one)
        wait_until(lambda: client_connections_to(emulator_thread.port) == 0, timeout=1.0)
    assert emulator_thread.request_count == before + 1, "a retry was sent after the interrupt"
    if in_flight:
        assert client_connections_to(emulator_thread.port) == 0, "the in-flight connection is still open"
    res = shell.run_cell("%imagegen the next lighthouse", store_history=False)
    assert res.success and res.result.success


# ---------------------------------------------------------------------------------------------
# the form's Cancel button
# ---------------------------------------------------------------------------------------------
async def test_form_cancel_hangs_up_and_the_form_works_again(emulator):
    widget = pytest.importorskip("jupyter_imagegen.widget")
    cfg = ImageConfig(api_type="openai_images", base_url=emulator.base_url_for("openai_images"), token=TOKEN)
    form = widget.ImageGenForm(config=cfg, prompt="a slow sunrise",
                               request_options={"headers": {"X-Emulator-Fault": "slow_headers:delay=10"}})
    form.generate_button.click()
    await wait_for(lambda: emulator.request_count == 1)
    await wait_for(lambda: client_connections_to(emulator.port) == 1)
    t0 = time.monotonic()
    form.cancel_button.click()
    await asyncio.wait([form.task], timeout=1.0)
    assert form.task.cancelled() and time.monotonic() - t0 < 1.0
    await wait_for(lambda: client_connections_to(emulator.port) == 0, timeout=1.0)
    assert not form.running and not form.generate_button.disabled
    assert not generate_tasks()
    form.request_options = {}
    form.generate_button.click()
    resp = await asyncio.wait_for(form.task, 10)
    assert resp.success and emulator.request_count == 2
    form.close()
    await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# a real kernel: shutdown closes the session without warnings
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def kernel(emulator_thread, tmp_path):
    """A kernel of this interpreter (tests/kernels.py) whose IMAGE_* point at the emulator."""
    pytest.importorskip("ipykernel")
    env = kernel_env(sys.executable, IMAGE_AUTH_TOKEN=TOKEN, IMAGE_API_TYPE="openai_images",
                     IMAGE_BASE_URL=emulator_thread.base_url_for("openai_images"), IMAGE_CACHE="0",
                     PYTHONTRACEMALLOC="0")
    with running_kernel(sys.executable, env=env, cwd=tmp_path, workdir=tmp_path) as k:
        yield k


#: registered first in the kernel, so its atexit handler runs last (LIFO): after the runtime's own
#: exit handler it records the aiohttp sessions/connectors still open and the generate tasks
#: still pending. (Objects alive at interpreter exit are never reported on stderr by aiohttp, so
#: the stderr check alone would see nothing.)
EXIT_PROBE = """
import atexit, gc, json, asyncio
def _imagegen_exit_probe(path={path!r}):
    import aiohttp
    gc.collect()
    objs = gc.get_objects()
    sessions = [repr(o) for o in objs if isinstance(o, aiohttp.ClientSession) and not o.closed]
    connectors = [repr(o) for o in objs if isinstance(o, aiohttp.BaseConnector) and not o.closed]
    tasks = [repr(o) for o in objs if isinstance(o, asyncio.Task) and not o.done()
             and 'jupyter_imagegen' in repr(o.get_coro())]
    with open(path, 'w') as f:
        json.dump({{"sessions": sessions, "connectors": connectors, "tasks": tasks}}, f)
atexit.register(_imagegen_exit_probe)
"""


def shutdown_and_probe(kernel, probe_path):
    t0 = time.monotonic()
    kernel.shutdown()
    took = time.monotonic() - t0
    assert probe_path.exists(), "the kernel did not run its exit handlers"
    return json.loads(probe_path.read_text()), kernel.stderr_text(), took


@pytest.mark.kernel
@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["after-a-magic", "form-request-in-flight", "submitted-generate-in-flight"])
def test_kernel_shutdown_closes_the_session_quietly(kernel, emulator_thread, tmp_path, scenario):
    probe_path = tmp_path / "exit-probe.json"
    assert kernel.execute(EXIT_PROBE.format(path=str(probe_path)))[0]["status"] == "ok"
    assert kernel.execute("%load_ext jupyter_imagegen")[0]["status"] == "ok"
    assert kernel.execute("%imagegen a lighthouse before shutdown\n"
                          "from jupyter_imagegen.runtime import runtime\n"
                          "assert not runtime.current_client._session.closed")[0]["status"] == "ok"
    if scenario != "after-a-magic":
        before = emulator_thread.request_count
        if scenario == "form-request-in-flight":
            code = ("from jupyter_imagegen.widget import ImageGenForm\n"
                    "form = ImageGenForm(prompt='a slow one', request_options={'headers': "
                    "{'X-Emulator-Fault': 'slow_headers:delay=20'}})\n"
                    "form.generate_button.click()\n"
                    "assert form.running")
        else:
            code = ("from jupyter_imagegen import ImageRequest\n"
                    "from jupyter_imagegen.runtime import runtime\n"
                    "job = runtime.submit(runtime.client().generate(ImageRequest('submitted', "
                    "headers={'X-Emulator-Fault': 'slow_headers:delay=20'})))")
        assert kernel.execute(code)[0]["status"] == "ok"
        wait_until(lambda: emulator_thread.request_count > before, timeout=10)
        assert emulator_thread.request_count > before, "the request never arrived"
    probe, log, took = shutdown_and_probe(kernel, probe_path)
    assert probe == {"sessions": [], "connectors": [], "tasks": []}, probe
    for bad in ("Unclosed", "Task was destroyed", "Traceback", "Exception ignored", "never retrieved"):
        assert bad not in log, f"{bad!r} on the kernel's stderr:\n{log}"
    assert took < 10, f"shutdown took {took:.1f} s"
    assert client_connections_to(emulator_thread.port) == 0, "the kernel left a connection open"


@pytest.mark.kernel
@pytest.mark.timeout(60)
def test_the_exit_probe_sees_an_unclosed_session(kernel, tmp_path):
    """The control for the test above: a session nobody closes is reported by the probe."""
    probe_path = tmp_path / "exit-probe.json"
    assert kernel.execute(EXIT_PROBE.format(path=str(probe_path)))[0]["status"] == "ok"
    assert kernel.execute("import aiohttp\nasync def make():\n    return aiohttp.ClientSession()\n"
                          "leaked = await make()")[0]["status"] == "ok"
    probe, log, took = shutdown_and_probe(kernel, probe_path)
    assert len(probe["sessions"]) == 1 and len(probe["connectors"]) == 1, probe
