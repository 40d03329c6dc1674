"""The background loop thread every HTTP call runs on (`loop_thread.LoopThread`): blocking runs,
posted callables on the caller's thread, Ctrl-C, jobs, stopping."""
from __future__ import annotations

import _thread
import asyncio
import threading
import time

import pytest

from _magic_helpers import background_tasks
from jupyter_imagegen.errors import GenerationCancelled
from jupyter_imagegen.loop_thread import LoopThread, shared


@pytest.fixture
def loops():
    lt = LoopThread(name="test-loop")
    try:
        yield lt
    finally:
        lt.stop()


def test_run_returns_the_result_and_runs_posts_on_the_callers_thread_in_order(loops):
    seen = []

    async def work(post):
        for i in range(5):
            post(lambda i=i: seen.append((i, threading.current_thread().name)))
            await asyncio.sleep(0.001)
        return threading.current_thread().name

    worker = loops.run(work)
    assert worker == "test-loop"
    me = threading.current_thread().name
    assert seen == [(i, me) for i in range(5)]      # all of them, in order, here, before run returned


def test_run_raises_the_coroutines_exception(loops):
    async def boom(post):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        loops.run(boom)
    assert loops.run(lambda post: asyncio.sleep(0, result=42)) == 42   # still usable


def test_a_failing_post_does_not_lose_the_result(loops, caplog):
    async def work(post):
        post(lambda: 1 / 0)
        return "image"

    assert loops.run(work) == "image"
    assert "display update failed" in caplog.text


def test_interrupt_cancels_within_half_a_second_and_cleanup_runs(loops):
    events = []

    async def work(post):
        try:
            await asyncio.sleep(10)
        finally:
            events.append("cleanup started")
            await asyncio.sleep(0.05)        # cleanup that itself awaits
            events.append("cleanup done")

    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(GenerationCancelled) as info:
            loops.run(work)
    finally:
        timer.cancel()
    took = time.monotonic() - t0
    assert took < 0.3 + 0.5, f"took {took:.2f} s"
    assert events == ["cleanup started", "cleanup done"]       # waited for the cleanup
    assert isinstance(info.value, KeyboardInterrupt)
    assert "cancelled after 0." in str(info.value)
    assert loops.run(lambda post: asyncio.sleep(0, result="next")) == "next"


def test_interrupt_does_not_wait_for_a_cleanup_that_hangs(loops):
    async def stubborn(post):
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.shield(asyncio.sleep(3))

    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(GenerationCancelled):
            loops.run(stubborn, cancel_wait=0.3)
    finally:
        timer.cancel()
    assert time.monotonic() - t0 < 1.0


def test_blocking_from_the_loop_thread_itself_is_refused(loops):
    async def inner():
        with pytest.raises(RuntimeError, match="own thread"):
            loops.run(lambda post: asyncio.sleep(0))
        return "refused"

    assert loops.call(inner(), timeout=5) == "refused"


def test_job_cancel_completes_the_future_only_after_cleanup(loops):
    cleaned = threading.Event()

    async def work():
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0.1)
            cleaned.set()

    job = loops.submit(work())
    time.sleep(0.05)
    done = threading.Event()
    job.add_done_callback(lambda j: done.set())
    assert job.cancel() and not job.done()
    assert done.wait(2) and cleaned.is_set() and job.cancelled()
    assert not job.cancel()              # nothing left to cancel


def test_stop_cancels_running_jobs_and_joins(loops):
    job = loops.submit(asyncio.sleep(30))
    thread = loops._thread
    loops.stop()
    assert job.cancelled() and not thread.is_alive()
    # started again on next use
    assert loops.call(asyncio.sleep(0, result=1), timeout=5) == 1


def test_blocking_inside_a_running_loop_does_not_step_that_loop():
    """The kernel situation: a cell blocks inside the kernel's running loop; the loop's other
    ready callbacks (the next queued cell) must not run until the cell returns."""
    order = []

    async def kernel():
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: order.append("next cell"))
        order.append(shared().run(lambda post: asyncio.sleep(0.05, result="blocking call")))
        await asyncio.sleep(0)

    asyncio.run(kernel())
    assert order == ["blocking call", "next cell"]
    assert not background_tasks()
