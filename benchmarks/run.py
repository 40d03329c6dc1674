"""Side-by-side benchmarks, printed as a table of ratios (issue 7 items 1-4).

    python -m benchmarks.run            # full run, about 1-2 minutes
    python -m benchmarks.run --quick    # tiny sizes, a few seconds (what the smoke test runs)
    python -m benchmarks.run --json results.json

Servers: a fixed-payload loopback server (benchmarks/server.py, in a child process so it has the
other core; it answers precomputed bodies in the real wire shapes after a fixed latency) and, for
one fan-out row, the emulator (which draws every image). Ratios are this client / baseline, so
below 1 is faster. All timings are medians of interleaved rounds (every round runs every variant
once, in a fresh random order), after warm-up rounds.

1. per-request overhead, server latency 0 (the worst case for a ratio): this client's
   `generate()` vs a bare aiohttp POST + json.loads + base64 decode of the same body, and vs the
   official openai SDK (`images.generate`, `responses.create`) + base64 decode;
2. fan-out: n=16 on a one-image-per-call format, 300 ms latency, max_concurrency=16: wall / latency;
3. a 4096x4096 PNG answer: response bytes -> PIL image vs Pillow decoding the PNG bytes, and
   tracemalloc peaks (Python allocations: the payload copies; Pillow's pixel buffer is allocated
   outside Python's allocator and is the same on both sides);
4. notebook output bytes per image when %%imagegen renders n=4: previews vs full size;
5. time to first visible pixels, streaming vs not (benchmarks/streaming.py, on the emulator).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

if __package__ in (None, ""):  # `python benchmarks/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import aiohttp
from PIL import Image

from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.model import Artifact

from benchmarks import payloads
from benchmarks.server import ServerProcess

TOKEN = "sk-bench-0123456789abcdef"
PROMPT = "a lighthouse at dusk, watercolour"
REPO = Path(__file__).resolve().parents[1]


# -- results ------------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    ours: float
    base: float
    unit: str
    goal: str = ""                       # e.g. "<= 1.10"
    met: Optional[bool] = None
    note: str = ""
    ratio: Optional[float] = None

    def __post_init__(self):
        if self.ratio is None and self.base:
            self.ratio = self.ours / self.base


@dataclass
class Report:
    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    machine: Dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.3f} s"
    if unit == "B":
        for u, d in (("MB", 1e6), ("KB", 1e3)):
            if v >= d:
                return f"{v / d:.1f} {u}"
        return f"{v:.0f} B"
    return f"{v:.3g} {unit}".strip()


def print_table(report: Report, out=sys.stdout) -> None:
    head = ("benchmark", "this client", "baseline", "ratio", "goal", "met?")
    lines = []
    for r in report.rows:
        met = "—" if r.met is None else ("yes" if r.met else "NO")
        lines.append((r.name, _fmt(r.ours, r.unit), _fmt(r.base, r.unit),
                      f"{r.ratio:.2f}x" if r.ratio is not None else "—", r.goal or "—", met))
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    sep = "-+-".join("-" * w for w in widths)
    fmt = lambda cols: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))
    print(fmt(head), file=out)
    print(sep, file=out)
    for cols in lines:
        print(fmt(cols), file=out)
    for r in report.rows:
        if r.note:
            print(f"  * {r.name}: {r.note}", file=out)
    for n in report.notes:
        print(f"  * {n}", file=out)
    m = report.machine
    print(f"machine: {m.get('platform')}, {m.get('cpus')} cores, Python {m.get('python')}, "
          f"aiohttp {m.get('aiohttp')}, Pillow {m.get('pillow')}, openai {m.get('openai')}; "
          f"load average at start {m.get('load_average_at_start')}", file=out)


def machine_info() -> Dict[str, Any]:
    import PIL
    try:
        import openai
        oa = openai.__version__
    except ImportError:
        oa = "not installed"
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "aiohttp": aiohttp.__version__,
            "pillow": PIL.__version__, "openai": oa,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None}


def median(xs: List[float]) -> float:
    return statistics.median(xs)


async def interleaved(variants: Dict[str, Callable[[], Awaitable[Any]]], rounds: int, warmup: int,
                      seed: int = 7) -> Dict[str, List[float]]:
    """Run every variant once per round in a random order; per-variant wall times (s)."""
    rng = random.Random(seed)
    times: Dict[str, List[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(warmup + rounds):
        rng.shuffle(names)
        for name in names:
            t0 = time.perf_counter()
            await variants[name]()
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    return times


# -- 1. per-request overhead ----------------------------------------------------------------------
def _client(api_type: str, base_url: str, **kw) -> ImageClient:
    kw.setdefault("max_concurrency", 16)
    return ImageClient(ImageConfig(api_type=api_type, base_url=base_url, token=TOKEN, backoff_base=0, **kw))


def _sdk(base_url: str):
    try:
        from openai import AsyncOpenAI
    except ImportError:
        return None
    return AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0)


def _extract(api: str, payload: Dict[str, Any]) -> bytes:
    """The bare baseline's parse: the minimum to get the image bytes out of each wire shape."""
    if api == "openai_images":
        return base64.b64decode(payload["data"][0]["b64_json"])
    if api == "openai_responses":
        item = next(o for o in payload["output"] if o["type"] == "image_generation_call")
        return base64.b64decode(item["result"])
    url = payload["choices"][0]["message"]["images"][0]["image_url"]["url"]
    return base64.b64decode(url[url.index(",") + 1:])


async def bench_overhead(report: Report, server: ServerProcess, payload: str, label: str, rounds: int,
                         warmup: int, apis=("openai_images", "openai_responses", "openrouter_chat")) -> None:
    clients, variants, closers = {}, {}, []
    session = aiohttp.ClientSession()
    closers.append(session.close)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sdk_used = False
    for api in apis:
        base = server.base(payload, api)
        client = _client(api, base)
        clients[api] = client
        closers.append(client.close)
        request = ImageRequest(PROMPT)
        resolved, provider = client.resolve(request)
        call = provider.build(resolved)

        async def ours(client=client):
            resp = await client.generate(ImageRequest(PROMPT))
            assert resp.success, resp.error
            return resp.artifacts[0].data

        async def bare(url=call.url, body=call.json, api=api):
            async with session.post(url, json=body, headers=headers) as r:
                raw = await r.read()
                assert r.status == 200
            return _extract(api, json.loads(raw))

        variants[f"{api}/client"] = ours
        variants[f"{api}/bare"] = bare
        if api in ("openai_images", "openai_responses"):
            sdk = _sdk(base)
            if sdk is not None:
                sdk_used = True
                closers.append(sdk.close)
                if api == "openai_images":
                    async def via_sdk(sdk=sdk):
                        r = await sdk.images.generate(model="gpt-image-1", prompt=PROMPT)
                        return base64.b64decode(r.data[0].b64_json)
                else:
                    async def via_sdk(sdk=sdk):
                        r = await sdk.responses.create(model="gpt-4.1-mini", input=PROMPT,
                                                       tools=[{"type": "image_generation"}],
                                                       tool_choice={"type": "image_generation"})
                        item = next(o for o in r.output if o.type == "image_generation_call")
                        return base64.b64decode(item.result)
                variants[f"{api}/sdk"] = via_sdk
    try:
        gc.collect()
        times = await interleaved(variants, rounds, warmup)
    finally:
        for close in reversed(closers):
            await close()
    for api in apis:
        c, b = median(times[f"{api}/client"]), median(times[f"{api}/bare"])
        report.add(Row(f"1. overhead {label}, {api}: vs bare aiohttp", c, b, "s", "<= 1.10", c / b <= 1.10,
                       note="" if api != apis[0] else
                       f"{rounds} interleaved rounds, server latency 0; client - bare = "
                       f"{(c - b) * 1e6:+.0f} us per request"))
        if f"{api}/sdk" in times:
            s = median(times[f"{api}/sdk"])
            sdk_name = "images.generate" if api == "openai_images" else "responses.create"
            report.add(Row(f"1. overhead {label}, {api}: vs openai SDK {sdk_name}", c, s, "s", "< 1.00", c < s))
    if not sdk_used:
        report.notes.append("openai SDK rows skipped: `pip install openai` (the `bench` extra)")


# -- 2. fan-out ------------------------------------------------------------------------------------
async def bench_fanout(report: Report, server: ServerProcess, sizes: Dict[str, str], latency_ms: int, n: int,
                       reps: int, emulator_url: Optional[str] = None) -> None:
    latency = latency_ms / 1000
    for api, payload in (("openrouter_chat", "small"), ("openrouter_chat", "medium"), ("openai_responses", "medium")):
        async with _client(api, server.base(payload, api, latency_ms), max_concurrency=n) as client:
            await client.generate(ImageRequest(PROMPT))  # warm-up: connection + imports
            walls = []
            for _ in range(reps):
                t0 = time.perf_counter()
                resp = await client.generate(ImageRequest(PROMPT, n=n))
                walls.append(time.perf_counter() - t0)
                assert resp.success and len(resp.artifacts) == n, resp.error
        w = median(walls)
        report.add(Row(f"2. fan-out n={n}, {api}, {sizes[payload]}, {latency_ms} ms: wall / latency", w, latency,
                       "s", "<= 1.50", w / latency <= 1.5,
                       note=f"max_concurrency={n}; one call after another would be {n}x; the {sizes['medium']} "
                            f"rows include parsing {n} base64 images on one core"
                       if payload == "small" else ""))
    if emulator_url:
        base = emulator_url.rstrip("/") + "/api/v1"
        async with _client("openrouter_chat", base, max_concurrency=n) as client:
            await client.generate(ImageRequest(PROMPT))
            walls = []
            for _ in range(max(1, reps // 2)):
                t0 = time.perf_counter()
                resp = await client.generate(ImageRequest(PROMPT, n=n))
                walls.append(time.perf_counter() - t0)
                assert resp.success and len(resp.artifacts) == n, resp.error
        w = median(walls)
        report.add(Row(f"2. fan-out n={n}, openrouter_chat, emulator ({latency_ms} ms): wall / latency", w, latency,
                       "s", note="informative: includes the emulator drawing and PNG-encoding "
                                 f"{n} images on this machine's cores"))


class EmulatorProcess:
    def __init__(self, latency: float):
        self.latency = latency
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "jupyter_imagegen.emulator", "--port", "0",
                                      "--latency", str(self.latency), "--token", TOKEN],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, cwd=str(REPO))
        line = self.proc.stdout.readline().strip()
        if "listening on " not in line:
            self.__exit__()
            raise RuntimeError(f"the emulator did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1]
        return self

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc and self.proc.stdout:
            self.proc.stdout.close()


# -- 3. large payload ------------------------------------------------------------------------------
try:  # the client checks received images (header + structure, no pixel decode) before returning them
    from jupyter_imagegen.client import received_image_problem
except ImportError:  # an older client
    received_image_problem = None


def _client_body_to_image(provider, body: bytes, url: str):
    """What the client does from the response bytes: json.loads, provider.parse, the received-image
    check, Artifact, .image."""
    parsed = provider.parse(json.loads(body), url)
    ref = parsed.images[0]
    if received_image_problem is not None:
        assert received_image_problem(ref.data) is None
    art = Artifact(ref.data, ref.mime_type)
    return art.image


def _pillow(png: bytes):
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


def _traced_peak(fn: Callable[[], Any]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del result
    return peak


async def _traced_peak_async(coro_fn: Callable[[], Awaitable[Any]]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = await coro_fn()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    del result
    return peak


async def bench_large(report: Report, server: ServerProcess, payload: str, png: bytes, rounds: int) -> None:
    side = Image.open(io.BytesIO(png)).size[0]
    label = f"{side}px PNG {_fmt(len(png), 'B')}"
    from jupyter_imagegen.providers import get_provider
    provider = get_provider("openai_images")
    body = payloads.encode(payloads.images_body(png))
    url = server.base(payload, "openai_images") + "/images/generations"

    # 3a: response bytes -> PIL image, in process: the client's path, the floor of this wire format
    # (json.loads + base64 decode + Pillow, nothing else) and Pillow alone on the PNG bytes
    def floor():
        return _pillow(_extract("openai_images", json.loads(body)))

    fns = {"client": lambda: _client_body_to_image(provider, body, url), "floor": floor,
           "pillow": lambda: _pillow(png)}
    times: Dict[str, List[float]] = {k: [] for k in fns}
    rng = random.Random(3)
    for i in range(rounds + 1):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            im = fns[name]()
            dt = time.perf_counter() - t0
            assert im.size == (side, side)
            del im
            if i:
                times[name].append(dt)
    c, f, b = median(times["client"]), median(times["floor"]), median(times["pillow"])
    report.add(Row(f"3. {label}: response bytes -> PIL vs Pillow decode", c, b, "s", "<= 1.20", c / b <= 1.2,
                   note="client: json.loads + provider.parse (base64) + its received-image check + Artifact.image; baseline: "
                        f"Image.open(BytesIO(png)).load(). The wire format's own floor (json.loads + "
                        f"b64decode + Pillow, nothing else) is {f / b:.2f}x Pillow here"))
    report.add(Row(f"3. {label}: response bytes -> PIL vs the floor (json + b64 + Pillow)", c, f, "s",
                   "<= 1.10", c / f <= 1.10))

    # 3b: end to end over HTTP (POST, read, parse, decode to PIL) vs bare aiohttp doing the same
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with _client("openai_images", server.base(payload, "openai_images"), max_response_bytes=1 << 30) as client, \
            aiohttp.ClientSession() as session:
        req_json = client.resolve(ImageRequest(PROMPT))[1].build(client.resolve(ImageRequest(PROMPT))[0]).json

        async def ours():
            resp = await client.generate(ImageRequest(PROMPT))
            assert resp.success, resp.error
            return resp.image

        async def bare():
            async with session.post(url, json=req_json, headers=headers) as r:
                raw = await r.read()
            data = _extract("openai_images", json.loads(raw))
            return _pillow(data)

        await bare()  # the server builds and caches its 47 MB answer on the first request
        times = await interleaved({"client": ours, "bare": bare}, rounds, 1)
        c, b = median(times["client"]), median(times["bare"])
        report.add(Row(f"3. {label}: end to end over HTTP -> PIL vs bare aiohttp", c, b, "s", "<= 1.10",
                       c / b <= 1.10))

        # 3c: tracemalloc peaks, end to end
        pc = await _traced_peak_async(ours)
        pb = await _traced_peak_async(bare)
    report.add(Row(f"3. {label}: peak traced memory, end to end vs bare aiohttp", pc, pb, "B",
                   "<= bare + 1 payload", pc - pb <= len(png),
                   note=f"in payloads (PNG sizes): client {pc / len(png):.2f}, bare aiohttp {pb / len(png):.2f}; "
                        f"the JSON answer is {len(body) / len(png):.2f} payloads"))

    # 3d: from the PNG bytes: Artifact(...).image vs Pillow directly
    pa = _traced_peak(lambda: Artifact(png, "image/png").image)
    pp = _traced_peak(lambda: _pillow(png))
    report.add(Row(f"3. {label}: peak traced memory, PNG bytes -> PIL vs Pillow", pa, pp, "B",
                   "<= Pillow + 1 payload", pa - pp <= len(png), ratio=None if not pp else pa / pp,
                   note=f"extra over Pillow: {(pa - pp) / len(png):.2f} payloads"))


# -- 4. notebook output bytes -------------------------------------------------------------------
def _notebook_bytes(outputs) -> int:
    """Bytes the outputs take in an .ipynb (their mimebundles as nbformat stores them)."""
    total = 0
    for o in outputs:
        total += len(json.dumps({"output_type": "display_data", "data": o.data, "metadata": o.metadata or {}},
                                indent=1))
    return total


def bench_notebook(report: Report, server: ServerProcess, payload: str, png: bytes, n: int) -> None:
    try:
        from IPython.core.interactiveshell import InteractiveShell
        from IPython.utils.capture import capture_output
        import jupyter_imagegen.magic  # noqa: F401
    except ImportError as e:
        report.notes.append(f"4. skipped: {e}")
        return
    side = Image.open(io.BytesIO(png)).size[0]
    env_keys = ("IMAGE_API_TYPE", "IMAGE_BASE_URL", "IMAGE_AUTH_TOKEN", "IMAGE_CACHE", "IMAGE_MODEL")
    saved = {k: os.environ.get(k) for k in env_keys}
    os.environ.update(IMAGE_API_TYPE="openai_images", IMAGE_BASE_URL=server.base(payload, "openai_images"),
                      IMAGE_AUTH_TOKEN=TOKEN, IMAGE_CACHE="0")
    os.environ.pop("IMAGE_MODEL", None)
    shell = InteractiveShell.instance()
    results = {}
    try:
        shell.run_line_magic("load_ext", "jupyter_imagegen")
        for label, opts in (("preview", ""), ("full", "--preview-size 0")):
            with capture_output() as cap:
                shell.run_cell_magic("imagegen", f"-n {n} --quiet {opts}".strip(), PROMPT)
            results[label] = _notebook_bytes(cap.outputs) / n
    finally:
        try:
            shell.run_line_magic("unload_ext", "jupyter_imagegen")
        except Exception:
            pass
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    raw = len(png)
    report.add(Row(f"4. notebook bytes/image, %%imagegen -n {n}, 512 px previews vs the PNG", results["preview"], raw,
                   "B", note=f"{side}x{side} PNGs of {raw / 1e6:.2f} MB; the gallery HTML with downscaled "
                             "JPEG previews (data URLs), measured as stored in the .ipynb"))
    report.add(Row(f"4. notebook bytes/image, %%imagegen -n {n} --preview-size 0 (full) vs the PNG",
                   results["full"], raw, "B", note="full size: the PNG itself as a base64 data URL"))


# -- main -------------------------------------------------------------------------------------------
@dataclass
class Settings:
    small: int = 64            # overhead payload side (px)
    medium: int = 1024         # typical model output
    large: int = 4096
    rounds_small: int = 300
    rounds_medium: int = 40
    rounds_large: int = 8
    fanout_n: int = 16
    fanout_latency_ms: int = 300
    fanout_reps: int = 5
    notebook_n: int = 4
    emulator: bool = True
    stream_partials: tuple = (0, 3)
    stream_delays: tuple = (0.5,)
    stream_rounds: int = 3


QUICK = Settings(small=32, medium=128, large=256, rounds_small=5, rounds_medium=3, rounds_large=2,
                 fanout_n=4, fanout_latency_ms=50, fanout_reps=2, notebook_n=4, emulator=False,
                 stream_partials=(0, 2), stream_delays=(0.05,), stream_rounds=1)


async def _run_async(report: Report, s: Settings, server: ServerProcess, pngs: Dict[str, bytes], log) -> None:
    sizes = {"small": f"{s.small}px PNG {_fmt(len(pngs['small']), 'B')}",
             "medium": f"{s.medium}px PNG {_fmt(len(pngs['medium']), 'B')}"}
    log(f"1. per-request overhead ({s.small}px and {s.medium}px payloads)...")
    await bench_overhead(report, server, "small", sizes["small"], s.rounds_small, max(2, s.rounds_small // 20))
    await bench_overhead(report, server, "medium", sizes["medium"], s.rounds_medium, 2,
                         apis=("openai_images", "openai_responses"))
    log("2. fan-out...")
    emu_url = None
    if s.emulator:
        try:
            with EmulatorProcess(s.fanout_latency_ms / 1000) as emu:
                await bench_fanout(report, server, sizes, s.fanout_latency_ms, s.fanout_n, s.fanout_reps,
                                   emulator_url=emu.url)
                emu_url = emu.url
        except RuntimeError as e:
            report.notes.append(f"2. emulator row skipped: {e}")
    if emu_url is None and not any(r.name.startswith("2.") for r in report.rows):
        await bench_fanout(report, server, sizes, s.fanout_latency_ms, s.fanout_n, s.fanout_reps)
    log("3. large payload...")
    await bench_large(report, server, "large", pngs["large"], s.rounds_large)
    log("5. streaming: time to first visible pixels...")
    from benchmarks import streaming
    for r in await streaming.bench(apis=("openai_images",), partials=s.stream_partials, delays=s.stream_delays,
                                   rounds=s.stream_rounds, log=None):
        report.add(Row(f"5. first pixels, openai_images K={r.partials} ({r.delay:g} s per image): stream vs plain",
                       r.stream_first, r.plain_first, "s", note=f"final image x{r.final_overhead:.2f}"))


def run_all(s: Settings, workdir: Path, log=print) -> Report:
    report = Report(machine=machine_info())
    t0 = time.perf_counter()
    log(f"making payloads ({s.small}, {s.medium} and {s.large} px)...")
    pngs = {"small": payloads.png_bytes(s.small, s.small), "medium": payloads.png_bytes(s.medium, s.medium),
            "large": payloads.png_bytes(s.large, s.large, compress_level=1)}
    for name, data in pngs.items():
        (workdir / f"{name}.png").write_bytes(data)
    with ServerProcess(workdir) as server:
        asyncio.run(_run_async(report, s, server, pngs, log))
        log("4. notebook output (%%imagegen in an IPython shell)...")
        bench_notebook(report, server, "medium", pngs["medium"], s.notebook_n)
    report.notes.append(f"total benchmark time {time.perf_counter() - t0:.0f} s")
    return report


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (seconds; for smoke tests)")
    ap.add_argument("--rounds", type=int, help="rounds for the small-payload overhead rows (default 300)")
    ap.add_argument("--no-emulator", action="store_true", help="skip the fan-out row against the emulator")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.rounds:
        s.rounds_small = args.rounds
    if args.no_emulator:
        s.emulator = False
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
        report = run_all(s, Path(tmp), log=lambda m: print(m, file=sys.stderr, flush=True))
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": report.machine, "rows": [asdict(r) for r in report.rows],
                                               "notes": report.notes}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
