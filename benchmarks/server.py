"""A fixed-payload loopback server in the real wire shapes, with a fixed latency per request.

Unlike the emulator it draws nothing per request: the answers are precomputed from PNG files, so a
benchmark measures the client, not the server. Routes (NAME = a PNG file NAME.png in --dir, MS =
latency in milliseconds):

    POST /p/NAME/MS/v1/images/generations      (and /images/edits)  honours "n"
    POST /p/NAME/MS/v1/responses
    POST /p/NAME/MS/api/v1/chat/completions
    GET  /stats[?reset=1]      the most requests in flight at once (since the last reset)

The same under /d/ instead of /p/ answers a *distinct* image every time: NAME.png with a tEXt
chunk carrying a counter inserted before IEND (`payloads.with_counter`), so every answer (and,
for "n", every image of it) has bytes no cache has seen. Costs the server one base64 encoding
per image per call.

`python -m benchmarks.server --dir DIR [--port 0]` prints `listening on http://127.0.0.1:PORT`.
`ServerProcess(dir)` runs it in a child process (the other core), as the benchmarks do.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import aiohttp
from aiohttp import web

try:
    from . import payloads
except ImportError:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import payloads

REPO = Path(__file__).resolve().parents[1]


def make_app(payload_dir: Path) -> web.Application:
    cache: Dict[Tuple[str, str, int], bytes] = {}
    templates: Dict[Tuple[str, int], List[bytes]] = {}
    pngs: Dict[str, bytes] = {}
    counter = itertools.count(1)

    def png_for(name: str) -> bytes:
        if name not in pngs:
            path = payload_dir / f"{name}.png"
            if not path.is_file():
                raise web.HTTPNotFound(text=json.dumps({"error": {"message": f"no payload {name}"}}),
                                       content_type="application/json")
            pngs[name] = path.read_bytes()
        return pngs[name]

    def body_for(name: str, api: str, n: int) -> bytes:
        key = (name, api, n)
        if key not in cache:
            png = png_for(name)
            body = payloads.images_body(png, n) if api == "images" else payloads.BODIES[api](png)
            cache[key] = payloads.encode(body)
        return cache[key]

    def distinct_body_for(name: str, api: str, n: int) -> bytes:
        png = png_for(name)
        if (api, n) not in templates:
            templates[(api, n)] = payloads.template(api, n)
        return payloads.fill(templates[(api, n)], [payloads.with_counter(png, next(counter)) for _ in range(n)])

    stats = {"in_flight": 0, "max_in_flight": 0, "requests": 0}

    def route(api: str, distinct: bool = False):
        async def handler(request: web.Request) -> web.Response:
            stats["in_flight"] += 1
            stats["requests"] += 1
            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
            try:
                return await answer(request)
            finally:
                stats["in_flight"] -= 1

        async def answer(request: web.Request) -> web.Response:
            raw = await request.read()
            n = 1
            if api == "images" and request.content_type == "application/json":
                try:
                    n = int(json.loads(raw).get("n") or 1)
                except (ValueError, AttributeError, TypeError):
                    n = 1
            body = (distinct_body_for if distinct else body_for)(request.match_info["name"], api, n)
            ms = int(request.match_info["ms"])
            if ms > 0:
                await asyncio.sleep(ms / 1000)
            return web.Response(body=body, content_type="application/json")
        return handler

    async def get_stats(request: web.Request) -> web.Response:
        """Requests in flight at once (the most since the last reset) and requests answered;
        `?reset=1` starts counting again."""
        out = web.json_response(dict(stats))
        if request.query.get("reset"):
            stats["max_in_flight"] = stats["in_flight"]
            stats["requests"] = 0
        return out

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_get("/stats", get_stats)
    for kind, distinct in (("p", False), ("d", True)):
        p = f"/{kind}/{{name}}/{{ms:\\d+}}"
        app.router.add_post(p + "/v1/images/generations", route("images", distinct))
        app.router.add_post(p + "/v1/images/edits", route("images", distinct))
        app.router.add_post(p + "/v1/responses", route("responses", distinct))
        app.router.add_post(p + "/api/v1/chat/completions", route("chat", distinct))
        app.router.add_post(p + "/v1/chat/completions", route("chat", distinct))
    return app


async def _serve(payload_dir: Path, port: int) -> None:
    runner = web.AppRunner(make_app(payload_dir), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{bound}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


class ServerProcess:
    """The fixed-payload server in a child process; `.url` once started."""

    def __init__(self, payload_dir: Path):
        self.payload_dir = Path(payload_dir)
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""

    def start(self) -> "ServerProcess":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.server", "--dir", str(self.payload_dir)],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=str(REPO), env=env,
                                     text=True)
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        self.url = line.split(" ", 2)[2]
        return self

    def base(self, name: str, api_type: str, latency_ms: int = 0, distinct: bool = False) -> str:
        """The base URL (IMAGE_BASE_URL) of payload `name` in `api_type`'s wire shape; `distinct`:
        a different image (tEXt counter) on every call."""
        prefix = "/api/v1" if api_type == "openrouter_chat" else "/v1"
        return f"{self.url}/{'d' if distinct else 'p'}/{name}/{latency_ms}{prefix}"

    async def stats(self, reset: bool = False) -> dict:
        """The server's request counters (see `/stats`)."""
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{self.url}/stats", params={"reset": "1"} if reset else {}) as r:
                return await r.json()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.server")
    ap.add_argument("--dir", required=True, help="folder of NAME.png payloads")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        asyncio.run(_serve(Path(args.dir), args.port))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
