"""Helpers for the reliability tests (soak, bad input, secrets, cancellation, concurrency).

* `fd_count()`: open file descriptors of this process (/proc/self/fd);
* `LeakWatch`: records every warning and every event-loop exception report while active, so a
  test can assert that no "Unclosed client session / connector" was reported (aiohttp reports
  those both ways: a ResourceWarning and `loop.call_exception_handler`);
* `TinyServer`: a small aiohttp app on 127.0.0.1 for the answers the emulator does not give
  (a 400 that echoes the request headers, a file:// image URL, a huge or non-image download);
* `Recorder`: an event callback that keeps the events.
"""
from __future__ import annotations

import asyncio
import gc
import os
import warnings
from typing import Any, Callable, Dict, List, Optional

from aiohttp import web


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def settle_gc() -> None:
    for _ in range(3):
        gc.collect()


class LeakWatch:
    """Records warnings and loop exception reports; `unclosed()` lists the "Unclosed ..." ones.

        with LeakWatch(loop) as watch:
            ...
        assert not watch.unclosed()
    """

    def __init__(self, loop: Optional[asyncio.AbstractEventLoop] = None):
        self.loop = loop
        self.warnings: List[warnings.WarningMessage] = []
        self.loop_reports: List[Dict[str, Any]] = []
        self._cm = None
        self._old_handler = None

    def __enter__(self) -> "LeakWatch":
        self._cm = warnings.catch_warnings(record=True)
        self.warnings = self._cm.__enter__()
        warnings.simplefilter("always")
        if self.loop is not None:
            self._old_handler = self.loop.get_exception_handler()
            self.loop.set_exception_handler(lambda loop, ctx: self.loop_reports.append(ctx))
        return self

    def __exit__(self, *exc: Any) -> None:
        settle_gc()
        if self.loop is not None:
            self.loop.set_exception_handler(self._old_handler)
        self._cm.__exit__(*exc)

    def messages(self) -> List[str]:
        out = [f"{w.category.__name__}: {w.message}" for w in self.warnings]
        out += [str(ctx.get("message")) for ctx in self.loop_reports]
        return out

    def unclosed(self) -> List[str]:
        return [m for m in self.messages() if "Unclosed" in m or "unclosed" in m]


class Recorder:
    """An `on_event` callback that keeps every event."""

    def __init__(self):
        self.events: List[Any] = []

    def __call__(self, event) -> None:
        self.events.append(event)

    def types(self) -> List[str]:
        return [e.type for e in self.events]

    def of(self, t: str) -> List[Any]:
        return [e for e in self.events if e.type == t]


class TinyServer:
    """`async with TinyServer({"/path": handler, ...}) as srv:` — serves on 127.0.0.1 (or `host`,
    any 127.x address; on `port`, else an ephemeral one), `srv.url`."""

    def __init__(self, routes: Dict[str, Callable], methods: str = "*", host: str = "127.0.0.1", port: int = 0):
        self.routes = routes
        self.methods = methods
        self.host = host
        self.runner: Optional[web.AppRunner] = None
        self.port: Optional[int] = port or None
        self.hits: List[Dict[str, Any]] = []

    async def __aenter__(self) -> "TinyServer":
        app = web.Application()
        for path, handler in self.routes.items():
            app.router.add_route(self.methods, path, self._wrap(handler))
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port or 0)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            raise
        self.port = self.runner.addresses[0][1]
        return self

    def _wrap(self, handler):
        async def wrapped(request: web.Request):
            self.hits.append({"path": request.path, "headers": dict(request.headers)})
            return await handler(request)
        return wrapped

    async def __aexit__(self, *exc: Any) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A small, valid-looking PNG whose header claims `width` x `height` pixels (a decompression bomb).

    Only the IHDR is honest about nothing: the IDAT holds a few compressed bytes. Pillow reads the
    header (size) without decoding, which is exactly what a bomb exploits.
    """
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)   # 8-bit greyscale
    # one compressed row of zeros repeated: a tiny stream that would inflate to width*height bytes
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = comp.compress(row * 4) + comp.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def client_connections_to(port: int) -> int:
    """ESTABLISHED TCP connections of this machine whose *remote* port is `port` (the client
    side of connections to a local server), from /proc/net/tcp and tcp6."""
    n = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            remote, state = parts[2], parts[3]
            if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


class HangServer:
    """A bare TCP server that reads each request and never answers. `received` is set when a
    request arrived; `closed` counts the connections the client hung up (EOF), with times."""

    def __init__(self):
        self.server = None
        self.port: Optional[int] = None
        self.requests = 0
        self.received = asyncio.Event()
        self.closed_at: List[float] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import time
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            self.received.set()
            while await reader.read(65536):   # the body, then b"" when the client hangs up
                pass
            self.closed_at.append(time.monotonic())
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_at.append(time.monotonic())
        finally:
            writer.close()

    async def __aenter__(self) -> "HangServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.close()
        await self.server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
