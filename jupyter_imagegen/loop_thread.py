"""One background thread with its own asyncio loop, where every HTTP call of the process runs.

Why: a Jupyter kernel runs each cell on its own event loop. Blocking a cell by running the
client *inside* that loop (nest_asyncio) re-enters the kernel's loop: on ipykernel 7 the nested
loop then steps the next queued cell's task in the wrong context, and "Run all" hangs. Here the
caller's thread never runs a loop it does not own:

* `LoopThread.run(make)` blocks the calling thread (a cell, a script) until the coroutine that
  ``make(post)`` returns has finished on the background loop. Meanwhile the calling thread runs
  the callables the coroutine ``post``-s to it (the live display), in order, so they happen on
  the caller's thread, where the cell's outputs belong. Ctrl-C / "interrupt kernel" cancels the
  coroutine on the background loop, waits at most `CANCEL_WAIT` seconds for its cleanup, and
  raises `GenerationCancelled`.
* `LoopThread.submit(coro)` starts a coroutine there and returns a `Job` at once (the form).

`shared()` is the process's one instance (started on first use, stopped at exit).
"""
from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import queue
import threading
import time
from typing import Any, Callable, Coroutine, Optional, Sequence, TypeVar

from .errors import GenerationCancelled

log = logging.getLogger("jupyter_imagegen")

__all__ = ["LoopThread", "Job", "Post", "shared", "at_stop", "caller_poster", "call_logged", "CANCEL_WAIT"]

T = TypeVar("T")
#: `post(fn, *args)`: have `fn(*args)` run on the waiting caller's thread
Post = Callable[..., None]

#: after Ctrl-C, how long `run` waits for the cancelled coroutine's cleanup before returning
CANCEL_WAIT = 0.5
#: how often the waiting thread wakes up (so Ctrl-C is handled promptly everywhere)
_POLL = 0.05
_DONE = object()


class Job:
    """A coroutine running as a task on the background loop.

    `future` (a `concurrent.futures.Future`) holds its outcome and completes only once the task
    has really ended, cleanup included; cancel with `cancel()` (not ``future.cancel()``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]):
        self.loop = loop
        self.started = time.monotonic()
        self.future: "concurrent.futures.Future[Any]" = concurrent.futures.Future()
        self._task: Optional["asyncio.Task[Any]"] = None
        self._cancelling = False
        loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._cancelling:
            coro.close()
            self.future.cancel()
            return
        self._task = self.loop.create_task(coro)
        self._task.add_done_callback(self._settle)

    def _settle(self, task: "asyncio.Task[Any]") -> None:
        if task.cancelled():
            self.future.cancel()
        elif task.exception() is not None:
            self.future.set_exception(task.exception())
        else:
            self.future.set_result(task.result())

    def cancel(self) -> bool:
        """Ask the coroutine to stop (its HTTP call is closed); True when it was still running."""
        if self.future.done():
            return False
        self._cancelling = True
        self.loop.call_soon_threadsafe(self._cancel_task)
        return True

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    @property
    def cancel_requested(self) -> bool:
        return self._cancelling

    def done(self) -> bool:
        return self.future.done()

    def cancelled(self) -> bool:
        return self.future.cancelled()

    def result(self, timeout: Optional[float] = None) -> Any:
        return self.future.result(timeout)

    def add_done_callback(self, fn: Callable[["Job"], Any]) -> None:
        """`fn(job)` once the task has ended (on the background thread, or at once if it has)."""
        self.future.add_done_callback(lambda _f: fn(self))


class LoopThread:
    """A daemon thread running one asyncio loop, started on first use."""

    def __init__(self, name: str = "jupyter-imagegen-loop"):
        self.name = name
        self._lock = threading.Lock()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The background loop (the thread starts on first use)."""
        with self._lock:
            if self._loop is None or not self._thread.is_alive():
                ready = threading.Event()
                loop = asyncio.new_event_loop()

                def main() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    try:
                        loop.run_forever()
                    finally:
                        try:
                            loop.run_until_complete(loop.shutdown_asyncgens())
                        finally:
                            loop.close()

                thread = threading.Thread(target=main, name=self.name, daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def in_thread(self) -> bool:
        """True when called from the background thread itself."""
        return self._thread is not None and threading.current_thread() is self._thread

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what still runs, stop the loop and join the thread (idempotent)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or not thread.is_alive():
            return

        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout)
        except Exception:  # stopping must never raise (it runs at exit)
            log.debug("cancelling the background tasks failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    # -- running ------------------------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> Job:
        """Start `coro` on the background loop; returns its `Job` at once."""
        return Job(self.loop, coro)

    def call(self, coro: Coroutine[Any, Any, T], timeout: Optional[float] = None) -> T:
        """Run `coro` there and wait for its result (no posting, no interrupt handling)."""
        if self.in_thread():
            coro.close()
            raise RuntimeError("cannot wait for the background loop from its own thread")
        return self.submit(coro).result(timeout)

    def run(self, make: Callable[[Post], Coroutine[Any, Any, T]], *, cancel_wait: float = CANCEL_WAIT) -> T:
        """Block until ``make(post)``'s coroutine is done there; run what it posts here.

        Returns its result or raises its exception. Ctrl-C cancels it and raises
        `GenerationCancelled` within about `cancel_wait` seconds.
        """
        if self.in_thread():
            raise RuntimeError("a blocking image call cannot run on the background loop's own thread; "
                               "use `await` there")
        inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()

        def post(fn: Callable[..., Any], *args: Any) -> None:
            inbox.put((fn, args))

        job = self.submit(make(post))
        job.add_done_callback(lambda _job: inbox.put(_DONE))
        try:
            _drain(inbox, deadline=None)
        except KeyboardInterrupt:
            job.cancel()
            try:
                if not _drain(inbox, deadline=time.monotonic() + cancel_wait):
                    log.warning("the cancelled image request is still closing; not waiting for it")
            except KeyboardInterrupt:  # pressed again: stop waiting
                pass
            raise GenerationCancelled(elapsed=time.monotonic() - job.started) from None
        try:
            return job.result()
        except concurrent.futures.CancelledError:  # cancelled from elsewhere (the loop stopping)
            raise GenerationCancelled(elapsed=time.monotonic() - job.started) from None


def _drain(inbox: "queue.SimpleQueue[Any]", deadline: Optional[float]) -> bool:
    """Run posted callables until the job is done (True) or `deadline` passes (False)."""
    while True:
        timeout = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
        if timeout <= 0:
            return False
        try:
            item = inbox.get(timeout=timeout)
        except queue.Empty:
            continue
        if item is _DONE:
            return True
        call_logged(*item)


def call_logged(fn: Callable[..., Any], args: Sequence[Any] = ()) -> None:
    """`fn(*args)`, a posted display update: an error is logged, never raised (a display
    problem must not lose the response)."""
    try:
        fn(*args)
    except Exception:
        log.warning("a live display update failed", exc_info=True)


def caller_poster() -> Post:
    """`post(fn, *args)` for work that does not block its caller (the form): `fn` runs on the
    caller's running event loop (the kernel's), in order; at once when there is none."""
    try:
        loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    if loop is None or _shared.in_thread():
        return lambda fn, *args: call_logged(fn, args)

    def post(fn: Callable[..., Any], *args: Any) -> None:
        if not loop.is_closed():
            loop.call_soon_threadsafe(call_logged, fn, args)
    return post


_shared = LoopThread()
_atexit_hooks: list = []


def shared() -> LoopThread:
    """The process's one background loop thread."""
    return _shared


def at_stop(fn: Callable[[], Any]) -> None:
    """Run `fn()` at interpreter exit, before the background loop stops (close sessions)."""
    _atexit_hooks.append(fn)


def _at_exit() -> None:
    for fn in reversed(_atexit_hooks):
        try:
            fn()
        except Exception:
            log.debug("an exit hook failed", exc_info=True)
    _shared.stop()


atexit.register(_at_exit)
