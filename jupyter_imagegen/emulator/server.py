"""Running the emulator: :class:`Emulator` (async, on the caller's loop) and
:class:`EmulatorThread` (its own loop in a daemon thread, for sync code and notebooks)."""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, List, Optional, Union

from aiohttp import web

from .app import create_app
from .faults import Fault
from .state import EmulatorState

_BASE_PATHS = {"openai_images": "/v1", "openai_responses": "/v1", "openrouter_chat": "/api/v1"}


class Emulator:
    """The three image APIs on loopback, as a real HTTP server.

    >>> async with Emulator(token="sk-emulator-123") as emu:      # doctest: +SKIP
    ...     emu.openai_base_url                                    # http://127.0.0.1:PORT/v1

    ``token=None`` accepts any non-empty bearer token; a string requires exactly that token.
    ``latency`` seconds are slept before every API answer. ``port=0`` picks a free port.
    ``stream_delay`` seconds are slept before each image-bearing event of a ``"stream": true``
    answer (each partial image and the final image), like a model that is still drawing.
    """

    def __init__(self, token: Optional[str] = None, latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, *, access_log: bool = False, shutdown_timeout: float = 0.5,
                 stream_delay: float = 0.0):
        self.state = EmulatorState(token=token, latency=latency, stream_delay=stream_delay)
        self.host = host
        self._requested_port = int(port)
        self._port: Optional[int] = None
        self._access_log = access_log
        self._shutdown_timeout = shutdown_timeout
        self.app: Optional[web.Application] = None
        self._runner: Optional[web.AppRunner] = None

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> "Emulator":
        if self._runner is not None:
            return self
        self.app = create_app(self.state)
        self._handlers: set = set()
        self.app.middlewares.append(_track_handlers(self._handlers))
        kwargs: Dict[str, Any] = {"handle_signals": False, "shutdown_timeout": self._shutdown_timeout}
        if not self._access_log:
            kwargs["access_log"] = None
        runner = web.AppRunner(self.app, **kwargs)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses
        self._port = int(addresses[0][1]) if addresses else self._requested_port
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            # handlers still sleeping in a slow fault would outlive the server: end them first
            handlers = [t for t in getattr(self, "_handlers", ()) if not t.done()]
            for t in handlers:
                t.cancel()
            if handlers:
                await asyncio.wait(handlers, timeout=self._shutdown_timeout)
            await runner.cleanup()

    async def __aenter__(self) -> "Emulator":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._runner is not None

    # -- addresses -------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the emulator is not started yet (use 'async with Emulator()' or await start())")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (a wildcard host is reached through 127.0.0.1)."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def openrouter_base_url(self) -> str:
        return self.url + "/api/v1"

    def base_url_for(self, api_type: str) -> str:
        """The base URL a client of ``api_type`` (openai_images | openai_responses | openrouter_chat) uses."""
        try:
            return self.url + _BASE_PATHS[api_type]
        except KeyError:
            raise ValueError(f"unknown api_type {api_type!r}; expected one of {', '.join(_BASE_PATHS)}") from None

    # -- control ---------------------------------------------------------------------------------
    @property
    def token(self) -> Optional[str]:
        return self.state.token

    @token.setter
    def token(self, value: Optional[str]) -> None:
        self.state.token = value

    @property
    def latency(self) -> float:
        return self.state.latency

    @latency.setter
    def latency(self, value: float) -> None:
        self.state.latency = float(value)

    @property
    def stream_delay(self) -> float:
        return self.state.stream_delay

    @stream_delay.setter
    def stream_delay(self, value: float) -> None:
        self.state.stream_delay = float(value)

    def add_faults(self, *specs: Union[str, Fault]) -> List[Fault]:
        """Queue faults: each applies to one coming API request, in order (``"ok"`` lets one pass)."""
        return self.state.add_faults(*specs)

    def clear_faults(self) -> None:
        self.state.clear_faults()

    @property
    def pending_faults(self) -> List[str]:
        return self.state.pending_faults

    @property
    def requests(self) -> List[Dict[str, Any]]:
        """A copy of the request log (one dict per API request; no Authorization header)."""
        return self.state.requests

    @property
    def request_count(self) -> int:
        return self.state.request_count

    def reset(self) -> None:
        """Clear the request log, the fault queue and the stored files."""
        self.state.reset()

    def __repr__(self) -> str:
        where = self.url if self._runner is not None else "stopped"
        return f"<Emulator {where} requests={self.request_count}>"


class EmulatorThread:
    """An :class:`Emulator` serving from a daemon thread with its own event loop.

    ``EmulatorThread(token=...).start()`` returns once the port is bound; every method is
    thread-safe. Also a context manager (``with EmulatorThread() as emu: ...``).
    """

    def __init__(self, token: Optional[str] = None, latency: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0, **kwargs: Any):
        self.emulator = Emulator(token=token, latency=latency, host=host, port=port, **kwargs)
        self._thread: Optional[threading.Thread] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._ready = threading.Event()
        self._error: Optional[BaseException] = None

    def start(self, timeout: float = 30.0) -> "EmulatorThread":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._main, name="jupyter-imagegen-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the emulator did not start within {timeout} s")
        if self._error is not None:
            self._thread.join(5)
            self._thread = None
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.emulator.start())
        except BaseException as e:  # report to start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(self.emulator.stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if thread.is_alive() and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(loop.stop)
            except RuntimeError:  # the loop closed meanwhile
                pass
        thread.join(timeout)
        self._thread = None

    def __enter__(self) -> "EmulatorThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.emulator.running

    # delegated, thread-safe (the state is lock-protected; the addresses are fixed once started)
    @property
    def state(self) -> EmulatorState:
        return self.emulator.state

    @property
    def port(self) -> int:
        return self.emulator.port

    @property
    def url(self) -> str:
        return self.emulator.url

    @property
    def openai_base_url(self) -> str:
        return self.emulator.openai_base_url

    @property
    def openrouter_base_url(self) -> str:
        return self.emulator.openrouter_base_url

    def base_url_for(self, api_type: str) -> str:
        return self.emulator.base_url_for(api_type)

    @property
    def token(self) -> Optional[str]:
        return self.emulator.token

    @token.setter
    def token(self, value: Optional[str]) -> None:
        self.emulator.token = value

    @property
    def latency(self) -> float:
        return self.emulator.latency

    @latency.setter
    def latency(self, value: float) -> None:
        self.emulator.latency = value

    @property
    def stream_delay(self) -> float:
        return self.emulator.stream_delay

    @stream_delay.setter
    def stream_delay(self, value: float) -> None:
        self.emulator.stream_delay = value

    def add_faults(self, *specs: Union[str, Fault]) -> List[Fault]:
        return self.emulator.add_faults(*specs)

    def clear_faults(self) -> None:
        self.emulator.clear_faults()

    @property
    def pending_faults(self) -> List[str]:
        return self.emulator.pending_faults

    @property
    def requests(self) -> List[Dict[str, Any]]:
        return self.emulator.requests

    @property
    def request_count(self) -> int:
        return self.emulator.request_count

    def reset(self) -> None:
        self.emulator.reset()

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        return f"<EmulatorThread {where} requests={self.request_count}>"


def run_emulator_in_thread(**kwargs: Any) -> EmulatorThread:
    """Start an :class:`EmulatorThread` (keyword arguments as for :class:`Emulator`) and return it."""
    return EmulatorThread(**kwargs).start()


def _track_handlers(tasks: set):
    """A middleware that keeps the set of request handlers in flight (so stop() can end them)."""
    @web.middleware
    async def track(request, handler):
        task = asyncio.current_task()
        tasks.add(task)
        try:
            return await handler(request)
        finally:
            tasks.discard(task)
    return track
