"""The kernel runtime: the one pipeline every image request of a kernel goes through.

    config (IMAGE_*, request cache on) -> the shared client -> generate -> save -> history -> show

The magic, the form, `compare()`, ``--from``, ``--rerun``, ``history[N].rerun()`` and
``load(...).rerun()`` all call `Runtime.run` (blocking, for a cell) or `Runtime.execute` (a
coroutine, on the background loop). The HTTP work always runs on the process's background loop
thread (`loop_thread.shared()`), never on the kernel's own event loop; a blocking `run` keeps
the kernel's main thread waiting on a queue and applies the live display there, so outputs land
in the cell that asked for them.

`runtime` is the kernel's instance; its client is closed on ``%unload_ext`` and at exit.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, List, Optional, Sequence

from . import history
from .client import ImageClient
from .config import ENV_CACHE, ImageConfig
from .errors import GenerationCancelled
from .events import IMAGE_RECEIVED, Event
from .loop_thread import Job, LoopThread, Post, at_stop, shared
from .model import ImageRequest, ImageResponse
from .saving import save_response

log = logging.getLogger("jupyter_imagegen")

__all__ = ["Runtime", "Outcome", "runtime", "notebook_config", "save_dir_problem", "show_outcome", "one_line_cancel"]


def notebook_config(config: Optional[ImageConfig] = None) -> ImageConfig:
    """The configuration of a notebook run: `config` as given, else the IMAGE_* environment with
    the request cache on unless IMAGE_CACHE says otherwise. Raises ConfigError."""
    if config is not None:
        return config
    config = ImageConfig.from_env()
    if not os.environ.get(ENV_CACHE):
        config = config.replace(cache=True)
    return config


def save_dir_problem(folder: str) -> Optional[str]:
    """Why images could not be saved in `folder` (None when they can); creates nothing.
    Checked before a request is sent, not after paying for the images."""
    existing = Path(folder).expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write there ({existing} is not a writable directory)"
    return None


@dataclass
class Outcome:
    """One pipeline run: the response, and what saving it wrote or could not write."""
    response: ImageResponse
    paths: List[str] = field(default_factory=list)
    save_errors: List[str] = field(default_factory=list)


class Runtime:
    """The kernel's image runtime: one shared client on one background loop, one pipeline."""

    def __init__(self, loops: Optional[LoopThread] = None):
        self.loops = loops if loops is not None else shared()
        self._client: Optional[ImageClient] = None
        self._lock = threading.Lock()

    # -- the shared client --------------------------------------------------------------------
    def client(self, config: Optional[ImageConfig] = None) -> ImageClient:
        """The kernel's shared client for `config` (default: `notebook_config()`), reused while
        the configuration is unchanged; another configuration closes the old client."""
        config = notebook_config(config)
        with self._lock:
            old = self._client
            if old is not None and old.config == config:
                return old
            self._client = ImageClient(config)
        if old is not None:
            self._close(old)
        return self._client

    @property
    def current_client(self) -> Optional[ImageClient]:
        """The shared client if one was made (None otherwise); does not create one."""
        return self._client

    def close(self) -> None:
        """Close the shared client and its HTTP session (idempotent): unload and exit."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            self._close(client)

    def _close(self, client: ImageClient) -> None:
        if not self.loops.running or self.loops.in_thread():
            return
        try:
            self.loops.call(_close_client(client), timeout=5)
        except Exception:  # closing must never break unload / exit
            log.debug("closing the image client failed", exc_info=True)

    # -- the pipeline -------------------------------------------------------------------------
    async def execute(self, request: ImageRequest, *, client: Optional[ImageClient] = None,
                      on_event: Optional[Callable[[Event], Any]] = None, save: Optional[str] = None,
                      source: str = "python", rerun_of: Optional[int] = None, record: bool = True,
                      redact: Sequence[Optional[str]] = (), preview: Optional[int] = None) -> Outcome:
        """generate -> save (before anything is shown) -> history. Runs on the background loop.

        `preview` (a max side in px, 0 = full size) makes each image's preview in a worker thread
        as soon as the image arrives, so showing the response costs the kernel's thread nothing.
        Bad input raises (RequestError / ConfigError, nothing sent); API failures come back in
        the response."""
        client = client if client is not None else self.client()
        previews = _Previews(preview)
        resp = await client.generate(request, on_event=previews.watch(on_event))
        await previews.finish(resp)
        outcome = Outcome(resp)
        if save and resp.artifacts:
            tokens = [client.config.token, request.token, *redact]
            saved = await asyncio.get_running_loop().run_in_executor(None, functools.partial(
                save_response, resp, save, prompt=request.prompt, request=request, redact=tokens))
            outcome.paths, outcome.save_errors = list(saved.paths), list(saved.errors)
        if record:
            history.record(resp, source=source, request=request, rerun_of=rerun_of)
        return outcome

    def run(self, request: ImageRequest, *, view: Any = None, client: Optional[ImageClient] = None,
            save: Optional[str] = None, source: str = "python", rerun_of: Optional[int] = None,
            on_event: Optional[Callable[[Event], Any]] = None) -> ImageResponse:
        """`execute` from synchronous code (a cell): blocks until the response is there.

        `view` (a `display.GenerationView` or anything with its methods) gets every event, then
        the response, on the calling thread. `on_event` runs on the background loop, before the
        next step (the magic's --fault sequence). Ctrl-C cancels: `GenerationCancelled`.
        """
        client = client if client is not None else self.client()

        def make(post: Post) -> Coroutine[Any, Any, Outcome]:
            if view is not None and hasattr(view, "schedule"):
                # the view's timers (a retry's countdown) run on the background loop and post
                # back here: this thread is busy waiting for the run
                loop = self.loops.loop
                view.schedule = lambda seconds, fn: loop.call_soon_threadsafe(loop.call_later, seconds, post, fn)

            def events(event: Event) -> None:
                if on_event is not None:
                    on_event(event)
                if view is not None:
                    post(view.on_event, event)
            return self.execute(request, client=client, on_event=events, save=save, source=source,
                                rerun_of=rerun_of, preview=getattr(view, "preview_max_side", None))

        try:
            outcome = self.block(make)
        except GenerationCancelled as e:
            if view is not None:
                view.cancelled(str(e))
            raise
        if view is not None:
            show_outcome(view, outcome, save)
        return outcome.response

    def submit(self, coro: Coroutine[Any, Any, Any]) -> Job:
        """Start a coroutine on the background loop (the form); returns its Job at once."""
        return self.loops.submit(coro)

    def block(self, make: Callable[[Post], Coroutine[Any, Any, Any]]) -> Any:
        """Run ``make(post)`` on the background loop, blocking; `post` runs callables here."""
        one_line_cancel()   # interrupted in a cell: one line, whichever entry point blocked
        return self.loops.run(make)

    async def arun(self, request: ImageRequest, **kwargs: Any) -> ImageResponse:
        """`execute` awaited from any event loop (the HTTP work still runs on the background loop)."""
        if self.loops.in_thread():
            return (await self.execute(request, **kwargs)).response
        job = self.submit(self.execute(request, **kwargs))
        return (await asyncio.wrap_future(job.future)).response


class _Previews:
    """Previews made in worker threads while the response is still arriving (Pillow releases
    the GIL while it resizes and encodes): one per image as its `image_received` event comes,
    then any the events did not cover (answers from the cache)."""

    def __init__(self, max_side: Optional[int]):
        self.max_side = max_side
        self.pending: List["asyncio.Future[Any]"] = []

    def watch(self, on_event: Optional[Callable[[Event], Any]]) -> Optional[Callable[[Event], Any]]:
        if self.max_side is None:
            return on_event

        def events(event: Event) -> Any:
            if event.type == IMAGE_RECEIVED:
                self._start(event.data["artifact"])
            return on_event(event) if on_event is not None else None
        return events

    def _start(self, artifact: Any) -> None:
        loop = asyncio.get_running_loop()
        self.pending.append(loop.run_in_executor(None, artifact.preview, self.max_side))

    async def finish(self, resp: ImageResponse) -> None:
        if self.max_side is None:
            return
        if not self.pending:
            for artifact in resp.artifacts:
                self._start(artifact)
        # a preview that fails shows as "cannot be decoded" in the gallery, not here
        await asyncio.gather(*self.pending, return_exceptions=True)


def _show_cancelled(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    """`GenerationCancelled` in a cell: one line, no traceback through the package (the cell
    still ends in error, so the cells queued after it are not run, as after any interrupt)."""
    shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])


def one_line_cancel(shell: Any = None) -> None:
    """Have IPython show `GenerationCancelled` as one line in `shell` (default: the running one),
    unless something else already set IPython's custom exception handler (never replaced)."""
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - no IPython: nothing to do
            return
        shell = get_ipython()
    if shell is not None and not shell.custom_exceptions:
        shell.set_custom_exc((GenerationCancelled,), _show_cancelled)


def show_outcome(view: Any, outcome: Outcome, save: Optional[str]) -> None:
    """The end of a run on screen: 'saved N files', then the images (or the error)."""
    if outcome.paths:
        n = len(outcome.paths)
        view.note(f"saved {n} file{'s' if n != 1 else ''} to {save}")
    view.show_response(outcome.response, extra_errors=outcome.save_errors)


async def _close_client(client: ImageClient) -> None:
    await client.close()
    # let the transports' close callbacks run
    await asyncio.sleep(0)
    await asyncio.sleep(0)


#: the kernel's runtime
runtime = Runtime()
history.use_runner(runtime)
at_stop(runtime.close)
