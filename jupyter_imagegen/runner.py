"""Running the async client from a kernel (or from plain Python).

* `run_sync(coro)` blocks until `coro` is done, so "Run all" stays in order:

  - no running loop (plain python, terminal IPython, tests): a private event loop kept for the
    whole process, so the shared client's aiohttp session stays valid from call to call;
  - a running loop (ipykernel runs cells inside its asyncio loop): `nest_asyncio` is applied to
    that loop once and the coroutine runs to completion inside it.

  Ctrl-C / "interrupt kernel" while it waits: the task is cancelled (a SIGINT handler that only
  cancels is installed for the duration, so the interrupt never lands in the middle of aiohttp
  or of another task), its cancellation is awaited (no orphan task, connection closed) and
  `GenerationCancelled` (a `KeyboardInterrupt`) is raised. A second Ctrl-C stops waiting for
  the cancellation to finish.

* `spawn(coro)` schedules a task on the running (kernel) loop and returns it at once: the widget's
  Generate button uses it; its Cancel button calls `task.cancel()`.

* `get_client(config)` / `close_client()`: one `ImageClient` per kernel, reused while its
  configuration is unchanged, closed on `%unload_ext` and at interpreter exit.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import signal
import threading
import time
from typing import Any, Awaitable, Callable, Optional, Set

log = logging.getLogger("jupyter_imagegen")

__all__ = ["GenerationCancelled", "run_sync", "spawn", "get_client", "close_client", "aclose_client",
           "background_tasks", "cancel_background"]

#: how long run_sync waits for a cancelled task to finish its cleanup
CANCEL_TIMEOUT = 5.0


from .errors import GenerationCancelled  # noqa: E402  (moved to errors; re-exported here)


_lock = threading.RLock()
_thread_loops = threading.local()     # per-thread private loop for run_sync without a running loop
_client = None                        # the per-kernel ImageClient
_background: Set["asyncio.Future[Any]"] = set()
_atexit_registered = False


# --------------------------------------------------------------------------------------------
# loops
# --------------------------------------------------------------------------------------------
def _running_loop() -> Optional[asyncio.AbstractEventLoop]:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _private_loop() -> asyncio.AbstractEventLoop:
    loop = getattr(_thread_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _thread_loops.loop = loop
        _register_atexit()
    return loop


def _ensure_nested(loop: asyncio.AbstractEventLoop) -> None:
    """Allow run_until_complete inside the already running `loop` (the kernel's)."""
    if getattr(loop, "_nest_patched", False):
        return
    try:
        import nest_asyncio
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise RuntimeError("blocking inside a running event loop needs nest_asyncio: pip install nest-asyncio") from e
    try:
        nest_asyncio.apply(loop)
    except ValueError as e:  # uvloop and other non-asyncio loops cannot be patched
        raise RuntimeError(f"cannot block inside this running event loop ({type(loop).__name__}): "
                           "use `await client.generate(...)` instead") from e


def prepare_loop() -> None:
    """Make the running loop (the kernel's) re-entrant now, ahead of the first blocking call.

    nest_asyncio must not be applied from inside the loop iteration that then blocks: that
    iteration's unpatched ``_run_once`` has already counted its ready callbacks, the nested run
    drains them, and the outer iteration then pops from an empty deque (IndexError kills the
    kernel). `%load_ext jupyter_imagegen` and the form call this in an earlier cell.
    """
    loop = _running_loop()
    if loop is not None:
        _ensure_nested(loop)


class _Interrupt:
    """SIGINT during run_sync: the first one cancels the task, a second one stops waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: "asyncio.Future[Any]"):
        self.loop, self.task = loop, task
        self.count = 0

    @property
    def fired(self) -> bool:
        return self.count > 0

    def on_sigint(self) -> None:  # runs as a loop callback
        self.count += 1
        if self.count == 1 and not self.task.done():
            self.task.cancel()
        elif self.count > 1:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self):
        """Route SIGINT to `on_sigint` for the duration (main thread, Python-level handler only)."""
        if threading.current_thread() is not threading.main_thread():
            yield False
            return
        prev = signal.getsignal(signal.SIGINT)
        if not callable(prev) or signal.SIGINT in getattr(self.loop, "_signal_handlers", {}):
            # SIG_IGN / SIG_DFL (someone chose that), or the loop already routes SIGINT itself
            yield False
            return
        prev_wakeup = signal.set_wakeup_fd(-1)
        signal.set_wakeup_fd(prev_wakeup)
        try:
            # a Unix loop wakes its selector through the signal wakeup fd: this works for real
            # signals and for _thread.interrupt_main() alike
            self.loop.add_signal_handler(signal.SIGINT, self.on_sigint)
            via_loop = True
        except (NotImplementedError, RuntimeError, ValueError, AttributeError):
            via_loop = False
            try:
                signal.signal(signal.SIGINT, lambda *_: self.loop.call_soon_threadsafe(self.on_sigint))
            except (ValueError, OSError):  # pragma: no cover
                yield False
                return
        try:
            yield True
        finally:
            if via_loop:
                with contextlib.suppress(Exception):
                    self.loop.remove_signal_handler(signal.SIGINT)
            with contextlib.suppress(Exception):
                signal.signal(signal.SIGINT, prev)
            if prev_wakeup != -1:
                with contextlib.suppress(Exception):
                    signal.set_wakeup_fd(prev_wakeup)


def _settle(task: "asyncio.Future[Any]") -> None:
    """Mark a finished task's outcome as retrieved (no 'exception was never retrieved' log)."""
    if task.done() and not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()


def _finish_cancel(loop: asyncio.AbstractEventLoop, task: "asyncio.Future[Any]", timeout: float) -> None:
    """Cancel `task` and run the loop until its cancellation (cleanup included) is done."""
    __tracebackhide__ = True
    deadline = time.monotonic() + timeout
    if not task.done():
        task.cancel()
    while not task.done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            log.warning("the cancelled image task did not finish within %.0f s; leaving it", timeout)
            break
        try:
            loop.run_until_complete(asyncio.wait([task], timeout=remaining))
        except KeyboardInterrupt:  # pressed again: stop waiting
            break
    _settle(task)


def run_sync(awaitable: Awaitable[Any], *, cancel_timeout: float = CANCEL_TIMEOUT) -> Any:
    """Run `awaitable` to completion and return its result, from synchronous code.

    Works with no event loop and inside a running one (Jupyter). On Ctrl-C / kernel interrupt the
    task is cancelled and awaited, then `GenerationCancelled` (a KeyboardInterrupt) is raised.
    """
    __tracebackhide__ = True
    loop = _running_loop()
    if loop is not None:
        _ensure_nested(loop)
    else:
        loop = _private_loop()
    if inspect.iscoroutine(awaitable):
        task = loop.create_task(awaitable)
    else:
        task = asyncio.ensure_future(awaitable, loop=loop)
    state = _Interrupt(loop, task)
    with state.installed():
        try:
            result = loop.run_until_complete(task)
        except KeyboardInterrupt:
            # our handler was not installed (or a second Ctrl-C): the interrupt surfaced here
            state.count += 1
        except asyncio.CancelledError:
            if not state.fired:
                raise
        else:
            if not state.fired:
                return result
        _finish_cancel(loop, task, cancel_timeout)
    raise GenerationCancelled() from None


def spawn(awaitable: Awaitable[Any], *, loop: Optional[asyncio.AbstractEventLoop] = None,
          on_done: Optional[Callable[["asyncio.Future[Any]"], Any]] = None) -> "asyncio.Future[Any]":
    """Schedule `awaitable` as a task on the running (kernel) loop and return the task at once.

    The task is kept referenced until it finishes; an exception nobody looked at is logged (not
    lost, not "never retrieved"). `task.cancel()` cancels it (the widget's Cancel button).
    """
    if loop is None:
        loop = _running_loop()
        if loop is None:
            raise RuntimeError("spawn() needs a running event loop (a Jupyter kernel or an async test); "
                               "in plain code use run_sync()")
    if inspect.iscoroutine(awaitable):
        task = loop.create_task(awaitable)
    else:
        task = asyncio.ensure_future(awaitable, loop=loop)
    _background.add(task)

    def _done(t: "asyncio.Future[Any]") -> None:
        _background.discard(t)
        if not t.cancelled() and t.exception() is not None:
            log.error("background image task failed", exc_info=t.exception())
    task.add_done_callback(_done)
    if on_done is not None:
        task.add_done_callback(on_done)
    return task


def background_tasks() -> Set["asyncio.Future[Any]"]:
    """The spawned tasks still running."""
    return {t for t in _background if not t.done()}


def cancel_background() -> int:
    """Cancel every spawned task; returns how many were cancelled."""
    n = 0
    for t in list(_background):
        if not t.done():
            t.cancel()
            n += 1
    return n


# --------------------------------------------------------------------------------------------
# the per-kernel client
# --------------------------------------------------------------------------------------------
def get_client(config=None):
    """The kernel's shared ImageClient, reused while `config` (default: from the environment)
    is unchanged; a different config closes the old client and makes a new one.

    Per-call choices (model, API, base URL, timeout, retries) belong in the ImageRequest: they do
    not need a new client. Changing IMAGE_* in the environment does.
    """
    global _client
    from .client import ImageClient
    from .config import ImageConfig
    if config is None:
        config = ImageConfig.from_env()
    with _lock:
        old = _client
        if old is not None and old.config == config:
            return old
        _client = ImageClient(config)
        _register_atexit()
    if old is not None:
        _close_client_obj(old)
    return _client


def current_client():
    """The shared client if one was made (None otherwise); does not create one."""
    return _client


async def _aclose(client) -> None:
    await client.close()
    # let the transports' close callbacks run before the loop may be closed
    await asyncio.sleep(0)
    await asyncio.sleep(0)


def _close_client_obj(client) -> None:
    session = getattr(client, "_session", None)
    if session is None or session.closed:
        return
    loop: Optional[asyncio.AbstractEventLoop] = getattr(client, "_session_loop", None)
    running = _running_loop()
    try:
        if loop is None or loop.is_closed():
            session.detach()  # its loop is gone: nothing can be awaited; drop it quietly
            client._session = None
        elif loop is running:
            # called from code running on the session's loop (a cell, a callback)
            if threading.current_thread() is threading.main_thread() or getattr(loop, "_nest_patched", False):
                run_sync(_aclose(client))
            else:  # pragma: no cover
                _background.add(loop.create_task(_aclose(client)))
        elif loop.is_running():
            # the loop runs in another thread
            fut = asyncio.run_coroutine_threadsafe(_aclose(client), loop)
            fut.result(timeout=5)
        else:
            loop.run_until_complete(_aclose(client))
    except Exception:  # closing must never break unload / exit
        log.debug("closing the image client failed", exc_info=True)


def close_client() -> None:
    """Close the shared client and its aiohttp session (idempotent). Called on unload and at exit."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        _close_client_obj(client)


async def aclose_client() -> None:
    """`close_client` for async code running on the client's loop."""
    global _client
    with _lock:
        client, _client = _client, None
    if client is not None:
        await _aclose(client)


def _atexit() -> None:
    cancel_background()
    close_client()
    loop = getattr(_thread_loops, "loop", None)
    if loop is not None and not loop.is_closed() and not loop.is_running():
        with contextlib.suppress(Exception):
            loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        _thread_loops.loop = None


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_atexit)
        _atexit_registered = True
