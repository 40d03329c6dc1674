"""Side-by-side benchmarks, printed as a table of ratios with their spread, goals and verdicts
(issue 7 items 1-4, issue 12).

    python -m benchmarks.run            # full run, a few minutes
    python -m benchmarks.run --quick    # tiny sizes, seconds (what the smoke test runs)
    python -m benchmarks.run --json results.json

Servers: a fixed-payload loopback server (benchmarks/server.py, in a child process so it has the
other core; it answers precomputed bodies in the real wire shapes after a fixed latency, or a
distinct image on every call under its /d/ routes) and, for one fan-out row, the emulator (which
draws every image). Ratios are this client / baseline, so below 1 is faster (throughput rows: above
1 is faster). Timings are medians of interleaved rounds (every round runs every variant once, in a
fresh random order) after warm-up rounds; the spread column is the interquartile range of the
per-round ratios (min-max when there are fewer than 4 rounds). Every row with a goal says MET or
MISS; rows without one say "report".

1. per request, server latency 0 (the worst case for a ratio): an 8 kB answer to a loaded PIL
   image (`generate()` + `.artifacts[0].image` vs bare aiohttp POST + json.loads + base64 decode +
   Pillow open/load; and vs the official openai SDK doing the same), Pillow opens per image; a
   1024 px (2 MB) answer to bytes on all three formats;
2. fan-out and concurrency: n=16 with max_concurrency=16, 300 ms latency; n=8 with the default
   settings beside max_concurrency=16; 64 independent generate() calls at once on one default
   client vs one default aiohttp session (throughput);
3. a 4096x4096 PNG answer: response bytes -> PIL image vs Pillow decoding the PNG bytes,
   tracemalloc peaks, and the peak RSS of one generate() per format in a fresh process
   (benchmarks/peak_rss.py) against the format's floor;
4. notebook output bytes per image when %%imagegen renders n=4: previews vs full size;
5. time to first visible pixels, streaming vs not (benchmarks/streaming.py, on the emulator);
6. in a real Jupyter kernel (benchmarks/kernel.py): RSS over 600 `%%imagegen --no-cache` cells of
   distinct 1.4 MB images, and a `%%imagegen -n 4` cell vs a `await client.generate(n=4)` cell.
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
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

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
APIS = ("openai_images", "openai_responses", "openrouter_chat")
MB = 1e6


# -- results ------------------------------------------------------------------------------------
def spread_of(ratios: Sequence[float]) -> Tuple[Optional[List[float]], str]:
    """The interquartile range of per-round ratios (min-max when fewer than 4)."""
    xs = sorted(x for x in ratios if x == x)
    if not xs:
        return None, ""
    if len(xs) >= 4:
        q = statistics.quantiles(xs, n=4, method="inclusive")
        return [q[0], q[2]], f"IQR of {len(xs)}"
    if len(xs) == 1:
        return [xs[0], xs[0]], "1 run"
    return [xs[0], xs[-1]], f"min-max of {len(xs)}"


@dataclass
class Row:
    name: str
    ours: float
    base: float
    unit: str
    goal: str = ""                       # e.g. "<= 1.10x"; "" = a report row
    met: Optional[bool] = None           # None: no goal (or not judged in --quick)
    note: str = ""
    ratio: Optional[float] = None
    per_round: List[float] = field(default_factory=list)   # the per-round ratios the spread is of
    spread: Optional[List[float]] = None                   # [low, high]
    spread_kind: str = ""                                  # "IQR of 40", "min-max of 3", "exact"
    base_unit: str = ""                  # the baseline's unit when it differs from `unit`

    def __post_init__(self):
        if self.ratio is None and self.base:
            self.ratio = self.ours / self.base
        if self.spread is None and self.per_round:
            self.spread, self.spread_kind = spread_of(self.per_round)

    @property
    def verdict(self) -> str:
        if not self.goal:
            return "report"
        if self.met is None:
            return "—"
        return "MET" if self.met else "MISS"


@dataclass
class Report:
    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    machine: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row


def _fmt(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.3f} s"
    if unit in ("B", "B/cell"):
        tail = "/cell" if unit == "B/cell" else ""
        sign = "-" if v < 0 else ""
        for u, d in (("MB", 1e6), ("KB", 1e3)):
            if abs(v) >= d:
                return f"{sign}{abs(v) / d:.2f} {u}{tail}" if u == "MB" and tail else f"{sign}{abs(v) / d:.1f} {u}{tail}"
        return f"{v:.0f} B{tail}"
    return f"{v:.3g} {unit}".strip()


def _fmt_spread(r: Row) -> str:
    if r.spread_kind == "exact":
        return "exact"
    if not r.spread:
        return "—"
    lo, hi = r.spread
    return f"{lo:.2f}–{hi:.2f}x ({r.spread_kind})"


def print_table(report: Report, out=sys.stdout) -> None:
    head = ("benchmark", "this client", "baseline", "ratio", "spread of the ratio", "goal", "verdict")
    lines = []
    for r in report.rows:
        lines.append((r.name, _fmt(r.ours, r.unit), _fmt(r.base, r.base_unit or r.unit),
                      f"{r.ratio:.2f}x" if r.ratio is not None else "—", _fmt_spread(r), r.goal or "—", r.verdict))
    widths = [max(len(x[i]) for x in [head] + lines) for i in range(len(head))]
    sep = "-+-".join("-" * w for w in widths)
    fmt = lambda cols: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths)))  # noqa: E731
    print(fmt(head), file=out)
    print(sep, file=out)
    for cols in lines:
        print(fmt(cols), file=out)
    for r in report.rows:
        if r.note:
            print(f"  * {r.name}: {r.note}", file=out)
    for n in report.notes:
        print(f"  * {n}", file=out)
    judged = [r for r in report.rows if r.goal and r.met is not None]
    missed = [r for r in judged if not r.met]
    print(f"goals: {len(judged) - len(missed)} of {len(judged)} met, {len(missed)} MISSED"
          + "".join(f"\n  MISS: {r.name} ({r.ratio:.2f}x, goal {r.goal})" for r in missed), file=out)
    if report.timings:
        print("time per section: " + ", ".join(f"{k} {v:.0f} s" for k, v in report.timings.items()), file=out)
    m = report.machine
    print(f"machine: {m.get('platform')}, {m.get('cpus')} cores, Python {m.get('python')}, "
          f"aiohttp {m.get('aiohttp')}, Pillow {m.get('pillow')}, openai {m.get('openai')}; "
          f"load average at start {m.get('load_average_at_start')}, at end {m.get('load_average_at_end')}", file=out)


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


def per_round(ours: List[float], base: List[float]) -> List[float]:
    """ours[i] / base[i]: both ran in round i."""
    return [o / b for o, b in zip(ours, base) if b]


_OPS = {"<=": lambda a, b: a <= b, "<": lambda a, b: a < b, ">=": lambda a, b: a >= b}


def ratio_row(name: str, ours: Sequence[float], base: Sequence[float], unit: str,
              goal: Optional[Tuple[str, float]] = None, **kw: Any) -> Row:
    """A row from paired per-round measurements (ours[i] and base[i] ran in round i): the columns
    are each side's median, the ratio the median of the per-round ratios (so it lies inside its
    spread), the verdict that ratio against `goal` (e.g. ("<=", 1.10))."""
    pr = per_round(list(ours), list(base))
    ratio = median(pr)
    goal_text, met = "", None
    if goal is not None:
        op, limit = goal
        goal_text, met = f"{op} {limit:.2f}x", _OPS[op](ratio, limit)
    return Row(name, median(ours), median(base), unit, goal_text, met, ratio=ratio, per_round=pr, **kw)


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


def _client(api_type: str, base_url: str, **kw) -> ImageClient:
    """A client tuned for the tuned rows (max_concurrency=16 unless given, no backoff)."""
    kw.setdefault("max_concurrency", 16)
    return ImageClient(ImageConfig(api_type=api_type, base_url=base_url, token=TOKEN, backoff_base=0, **kw))


def _default_client(api_type: str, base_url: str) -> ImageClient:
    """A client with the package's default settings: only the endpoint and the key given."""
    return ImageClient(ImageConfig(api_type=api_type, base_url=base_url, token=TOKEN))


def _sdk(base_url: str):
    try:
        from openai import AsyncOpenAI
    except ImportError:
        return None
    return AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0)


def png_label(png: bytes) -> str:
    """'1024px 2.05 MB PNG'"""
    side = Image.open(io.BytesIO(png)).size[0]
    size = f"{len(png) / MB:.2f} MB" if len(png) >= MB else f"{len(png) / 1e3:.1f} KB"
    return f"{side}px {size} PNG"


def _pillow(png: bytes):
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


def _request_json(client: ImageClient) -> Tuple[str, Dict[str, Any]]:
    resolved, provider = client.resolve(ImageRequest(PROMPT))
    call = provider.build(resolved)
    return call.url, call.json


async def count_pillow_work(coro_fn: Callable[[], Awaitable[Any]]) -> Tuple[int, int]:
    """(opens, pixel decodes) Pillow does during one call: every image file Pillow constructs
    (`Image.open` or a format plugin called directly: `ImageFile.__init__` parses the header) and
    every `ImageFile.load()` that decodes pixels (one with tiles left to read). Counted by
    wrapping those two methods of PIL.ImageFile.ImageFile meanwhile (PNG and JPEG inherit both)."""
    from PIL import ImageFile
    cls = ImageFile.ImageFile
    real_init, real_load = cls.__init__, cls.load
    counts = {"opens": 0, "decodes": 0}

    def init(self, *a, **kw):
        counts["opens"] += 1
        return real_init(self, *a, **kw)

    def load(self, *a, **kw):
        if getattr(self, "tile", None):
            counts["decodes"] += 1
        return real_load(self, *a, **kw)

    cls.__init__, cls.load = init, load
    try:
        await coro_fn()
    finally:
        cls.__init__, cls.load = real_init, real_load
    return counts["opens"], counts["decodes"]


async def _in_process(server: ServerProcess, payload: str, api: str, rounds: int, warmup: int
                      ) -> Dict[str, List[float]]:
    """From an answer's bytes to a loaded PIL image without HTTP: the client's own generate() on
    a stub session vs json.loads + base64 decode + Pillow; interleaved rounds."""
    png = (server.payload_dir / f"{payload}.png").read_bytes()
    body = payloads.encode({"openai_images": payloads.images_body, "openai_responses": payloads.responses_body,
                            "openrouter_chat": payloads.chat_body}[api](png))
    stub = ImageClient(ImageConfig(api_type=api, base_url=server.base(payload, api), token=TOKEN),
                       session=StubSession(body))

    async def client():
        resp = await stub.generate(ImageRequest(PROMPT))
        assert resp.success, resp.error
        return resp.artifacts[0].image

    async def floor():
        return _pillow(payloads.extract(api, json.loads(body)))

    try:
        return await interleaved({"client": client, "floor": floor}, rounds, warmup, seed=21)
    finally:
        await stub.close()


# -- 1. per request -------------------------------------------------------------------------------
async def bench_overhead(report: Report, server: ServerProcess, payload: str, label: str, detail: str, rounds: int,
                         warmup: int, goal: float, ends: Sequence[str], sdk_end: str,
                         apis: Sequence[str] = APIS) -> None:
    """This client vs bare aiohttp (and the openai SDK) per request at latency 0.

    One interleaved set of variants per format; each timed run of ours and of bare is split where
    the image bytes are there, then ends with a loaded PIL image (ours: `.artifacts[0].image`;
    bare: Image.open(...).load()). `ends` picks the rows: "pil" (the same end work: a loaded PIL
    image on both sides) and/or "bytes" (ours: generate() returns; bare: the bytes decoded from
    base64). The SDK variant ends at `sdk_end`."""
    variants, closers = {}, []
    splits: Dict[str, List[float]] = {}       # time to the bytes, per run (warm-up runs included)
    session = aiohttp.ClientSession()
    closers.append(session.close)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    sdk_used = False
    sdk_finish = _pillow if sdk_end == "pil" else (lambda data: data)
    for api in apis:
        base = server.base(payload, api)
        client = _client(api, base)
        closers.append(client.close)
        url, body = _request_json(client)
        splits[f"{api}/client"], splits[f"{api}/bare"] = [], []

        async def ours(client=client, split=splits[f"{api}/client"]):
            t0 = time.perf_counter()
            resp = await client.generate(ImageRequest(PROMPT))
            split.append(time.perf_counter() - t0)
            assert resp.success, resp.error
            return resp.artifacts[0].image

        async def bare(url=url, body=body, api=api, split=splits[f"{api}/bare"]):
            t0 = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as r:
                raw = await r.read()
                assert r.status == 200
            data = payloads.extract(api, json.loads(raw))
            split.append(time.perf_counter() - t0)
            return _pillow(data)

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
                        return sdk_finish(base64.b64decode(r.data[0].b64_json))
                else:
                    async def via_sdk(sdk=sdk):
                        r = await sdk.responses.create(model="gpt-4.1-mini", input=PROMPT,
                                                       tools=[{"type": "image_generation"}],
                                                       tool_choice={"type": "image_generation"})
                        item = next(o for o in r.output if o.type == "image_generation_call")
                        return sdk_finish(base64.b64decode(item.result))
                variants[f"{api}/sdk"] = via_sdk
    opens: Dict[str, Tuple[int, int]] = {}
    try:
        gc.collect()
        times = await interleaved(variants, rounds, warmup)
        if "pil" in ends:
            for api in apis:
                opens[api] = await count_pillow_work(variants[f"{api}/client"])
            bare_opens = await count_pillow_work(variants[f"{apis[0]}/bare"])
            inproc = await _in_process(server, payload, apis[0], rounds, warmup)
    finally:
        for close in reversed(closers):
            await close()
    to_bytes = {k: v[warmup:warmup + rounds] for k, v in splits.items()}
    inproc_note = "" if "pil" not in ends else (
        f"; without HTTP, from the {apis[0]} answer's bytes in process (the client on a stub session): client "
        f"{median(inproc['client']) * 1e6:.0f} us vs json.loads + b64decode + Pillow "
        f"{median(inproc['floor']) * 1e6:.0f} us")
    how = {"pil": ("-> PIL image", "both sides end with a loaded PIL image (ours: generate() + .artifacts[0].image; "
                                   "bare: POST + json.loads + b64decode + Image.open().load())"),
           "bytes": ("-> bytes", "ours: generate() returned; bare: POST + json.loads + b64decode (no pixel decode)")}
    for api in apis:
        for end in ends:
            ours_t = times[f"{api}/client"] if end == "pil" else to_bytes[f"{api}/client"]
            bare_t = times[f"{api}/bare"] if end == "pil" else to_bytes[f"{api}/bare"]
            first = api == apis[0]
            report.add(ratio_row(f"1. {label} {how[end][0]}, {api}: vs bare aiohttp", ours_t, bare_t, "s",
                                 ("<=", goal),
                                 note="" if not first else
                                 f"{detail}; {rounds} interleaved rounds, server latency 0; {how[end][1]}; "
                                 f"client - bare = {(median(ours_t) - median(bare_t)) * 1e6:+.0f} us per request"
                                 + (inproc_note if end == "pil" else "")))
        if f"{api}/sdk" in times:
            sdk_name = "images.generate" if api == "openai_images" else "responses.create"
            ours_t = times[f"{api}/client"] if sdk_end == "pil" else to_bytes[f"{api}/client"]
            report.add(ratio_row(f"1. {label} {how[sdk_end][0]}, {api}: vs openai SDK {sdk_name}", ours_t,
                                 times[f"{api}/sdk"], "s", ("<", 1.0)))
    if "pil" in ends:
        worst = max(o for o, _ in opens.values())
        report.add(Row(f"1. {label}: Pillow opens per image, generate() + .image vs bare", worst, bare_opens[0],
                       "opens", "<= 1", worst <= 1, spread_kind="exact",
                       note="image files Pillow opened (header parses) / pixel decodes during one call "
                            "(generate() and .artifacts[0].image): "
                            + ", ".join(f"{a} {o}/{d}" for a, (o, d) in opens.items())
                            + f"; the bare baseline {bare_opens[0]}/{bare_opens[1]}"))
    if not sdk_used and not any("openai SDK rows skipped" in n for n in report.notes):
        report.notes.append("openai SDK rows skipped: `pip install openai` (the `bench` extra)")


# -- 2. fan-out and concurrency --------------------------------------------------------------------
async def _fanout_walls(client: ImageClient, n: int) -> float:
    t0 = time.perf_counter()
    resp = await client.generate(ImageRequest(PROMPT, n=n))
    wall = time.perf_counter() - t0
    assert resp.success and len(resp.artifacts) == n, resp.error
    return wall


def _bare_fanout(session: aiohttp.ClientSession, api: str, url: str, body: Dict[str, Any], n: int
                 ) -> Callable[[], Awaitable[float]]:
    """Bare aiohttp doing what a fan-out of n does: n POSTs at once on one session, each read,
    json.loads, base64-decoded and opened + loaded by Pillow; returns a timer of one fan-out."""
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def one():
        async with session.post(url, json=body, headers=headers) as r:
            raw = await r.read()
            assert r.status == 200
        return _pillow(payloads.extract(api, json.loads(raw)))

    async def fanout() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t0

    return fanout


async def _fanout_reps(runs: Dict[str, Callable[[], Awaitable[float]]], reps: int, seed: int) -> Dict[str, List[float]]:
    """One warm-up run of each, then `reps` interleaved rounds (random order each round)."""
    walls: Dict[str, List[float]] = {k: [] for k in runs}
    for name in runs:
        await runs[name]()
    rng = random.Random(seed)
    for _ in range(reps):
        order = list(runs)
        rng.shuffle(order)
        for name in order:
            walls[name].append(await runs[name]())
    return walls


async def bench_fanout(report: Report, server: ServerProcess, sizes: Dict[str, str], latency_ms: int, n: int,
                       reps: int, emulator_url: Optional[str] = None) -> None:
    """n one-image calls with max_concurrency=n, interleaved with bare aiohttp doing the same n
    calls at once (the reference in the note: what the same end work costs without the client)."""
    latency = latency_ms / 1000
    for api, payload in (("openrouter_chat", "small"), ("openrouter_chat", "medium"), ("openai_responses", "medium")):
        async with _client(api, server.base(payload, api, latency_ms), max_concurrency=n) as client, \
                aiohttp.ClientSession() as session:
            url, body = _request_json(client)
            walls = await _fanout_reps({"client": lambda: _fanout_walls(client, n),
                                        "bare": _bare_fanout(session, api, url, body, n)}, reps, seed=9)
        bare = f"bare aiohttp doing the same {n} calls at once (each to a loaded PIL image): " \
               f"{median(walls['bare']) / latency:.2f}x"
        report.add(ratio_row(f"2. fan-out n={n}, {api}, {sizes[payload]}, {latency_ms} ms, max_concurrency={n}: "
                             "wall/latency", walls["client"], [latency] * reps, "s", ("<=", 1.5),
                             note=(f"one call after another would be {n}x; {reps} reps interleaved with {bare}"
                                   if payload == "small" else bare)))
    if emulator_url:
        base = emulator_url.rstrip("/") + "/api/v1"
        async with _client("openrouter_chat", base, max_concurrency=n) as client:
            await client.generate(ImageRequest(PROMPT))
            walls = [await _fanout_walls(client, n) for _ in range(max(1, reps // 2))]
        report.add(ratio_row(f"2. fan-out n={n}, openrouter_chat, emulator, {latency_ms} ms, max_concurrency={n}: "
                             "wall/latency", walls, [latency] * len(walls), "s",
                             note="informative: includes the emulator drawing and PNG-encoding "
                                  f"{n} images on this machine's cores"))


async def bench_fanout_default(report: Report, server: ServerProcess, sizes: Dict[str, str], latency_ms: int,
                               n: int, reps: int, goal: float = 1.10) -> None:
    """n one-image calls (an openrouter_chat fan-out) with the package's default settings, beside
    max_concurrency=16 and beside bare aiohttp doing the same n calls at once (gathered, each
    ending with a loaded PIL image like the client's); on the small payload (the goal: what the
    default settings cost) and on the medium one (typical output: adds decoding n images).
    Interleaved reps after one warm-up fan-out of each."""
    api = "openrouter_chat"
    latency = latency_ms / 1000
    for payload in ("small", "medium"):
        base = server.base(payload, api, latency_ms)
        default, tuned = _default_client(api, base), _client(api, base, max_concurrency=16)
        session = aiohttp.ClientSession()
        url, body = _request_json(default)
        try:
            resolved, provider = default.resolve(ImageRequest(PROMPT, n=n))
            calls = provider.calls_needed(resolved)
            assert calls == n, f"{api} makes {calls} calls for n={n}: not a one-image-per-call fan-out"
            walls = await _fanout_reps({"default": lambda: _fanout_walls(default, n),
                                        "tuned": lambda: _fanout_walls(tuned, n),
                                        "bare": _bare_fanout(session, api, url, body, n)}, reps, seed=11)
        finally:
            await default.close()
            await tuned.close()
            await session.close()
        cfg = default.config
        lat = [latency] * reps
        bare_note = (f"bare aiohttp doing the same {n} calls at once (one session, each to a loaded PIL image): "
                     f"{median(walls['bare']) / latency:.2f}x the latency")
        is_goal = payload == "small"
        report.add(ratio_row(f"2. fan-out n={n}, {api}, {sizes[payload]}, {latency_ms} ms, DEFAULT settings: "
                             "wall/latency", walls["default"], lat, "s", ("<=", goal) if is_goal else None,
                             note=(f"ImageClient(ImageConfig(api_type, base_url, token)): max_concurrency="
                                   f"{cfg.max_concurrency} (the default), {calls} calls; {reps} reps interleaved "
                                   f"with the tuned client and bare aiohttp; {bare_note}" if is_goal else
                                   f"report: the goal is on the small payload (what the settings cost); {bare_note}")))
        report.add(ratio_row(f"2. fan-out n={n}, {api}, {sizes[payload]}, {latency_ms} ms, max_concurrency=16: "
                             "wall/latency", walls["tuned"], lat, "s"))


async def bench_concurrent(report: Report, server: ServerProcess, label: str, calls: int, latency_ms: int,
                           rounds: int, goal: float = 0.90) -> None:
    """`calls` independent generate() calls gathered at once on one default client vs the same
    number of bare aiohttp calls on one default ClientSession, each ending with a loaded PIL image."""
    api = "openai_images"
    base = server.base("tiny", api, latency_ms)
    client = _default_client(api, base)
    session = aiohttp.ClientSession()
    limit = session.connector.limit
    url, body = _request_json(client)
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def one_ours():
        resp = await client.generate(ImageRequest(PROMPT))
        assert resp.success, resp.error
        return resp.artifacts[0].image

    async def one_bare():
        async with session.post(url, json=body, headers=headers) as r:
            raw = await r.read()
            assert r.status == 200
        return _pillow(payloads.extract(api, json.loads(raw)))

    async def ours():
        await asyncio.gather(*(one_ours() for _ in range(calls)))

    async def bare():
        await asyncio.gather(*(one_bare() for _ in range(calls)))

    try:
        times = await interleaved({"client": ours, "bare": bare}, rounds, 2, seed=5)
        in_flight = {}
        for name, fn in (("client", ours), ("bare", bare)):  # one more round each, counted by the server
            await server.stats(reset=True)
            await fn()
            in_flight[name] = (await server.stats())["max_in_flight"]
    finally:
        await client.close()
        await session.close()
    tc, tb = median(times["client"]), median(times["bare"])
    report.add(ratio_row(f"2. {calls} concurrent calls, {label}, {latency_ms} ms, one DEFAULT client: "
                         "throughput vs bare aiohttp", [calls / t for t in times["client"]],
                         [calls / t for t in times["bare"]], "calls/s", (">=", goal),
                         note=f"{rounds} interleaved rounds after 2 warm-up; wall {tc * 1e3:.0f} ms vs "
                              f"{tb * 1e3:.0f} ms for {calls} calls ({(tc - tb) / calls * 1e6:+.0f} us per call); "
                              f"bare: one aiohttp.ClientSession() (connector limit {limit}); both end every call "
                              f"with a loaded PIL image; requests in flight at once at the server: this client "
                              f"{in_flight['client']}, bare {in_flight['bare']}"))


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
class _StubResponse:
    """What the client reads of an aiohttp response, answering a precomputed body (no socket)."""

    def __init__(self, body: bytes):
        self.status = 200
        self.headers = {"Content-Type": "application/json"}
        self.content_length = len(body)
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def __aenter__(self) -> "_StubResponse":
        return self

    async def __aexit__(self, *exc: Any) -> bool:
        return False


class StubSession:
    """A stand-in for the caller's aiohttp session (`ImageClient(session=...)`): every request is
    answered with `body` at once, so the client's own generate() runs from the response bytes on,
    without HTTP. Fails loudly (AttributeError) if the client starts using more of the session."""
    closed = False

    def __init__(self, body: bytes):
        self.body = body

    def request(self, method: str, url: str, **kwargs: Any) -> _StubResponse:
        return _StubResponse(self.body)

    async def close(self) -> None:
        pass


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


async def bench_large(report: Report, server: ServerProcess, payload: str, png: bytes, rounds: int,
                      mem_reps: int) -> None:
    side = Image.open(io.BytesIO(png)).size[0]
    label = png_label(png)
    body = payloads.encode(payloads.images_body(png))
    url = server.base(payload, "openai_images") + "/images/generations"

    # 3a: response bytes -> PIL image, in process: the client's own generate() on a stub session
    # answering the body (no HTTP), the floor of this wire format (json.loads + base64 decode +
    # Pillow, nothing else) and Pillow alone on the PNG bytes
    stub = ImageClient(ImageConfig(api_type="openai_images", base_url=server.base(payload, "openai_images"),
                                   token=TOKEN, max_response_bytes=1 << 30), session=StubSession(body))

    async def client_from_bytes():
        resp = await stub.generate(ImageRequest(PROMPT))
        assert resp.success, resp.error
        return resp.artifacts[0].image

    async def floor():
        return _pillow(payloads.extract("openai_images", json.loads(body)))

    async def pillow():
        return _pillow(png)

    fns = {"client": client_from_bytes, "floor": floor, "pillow": pillow}
    times: Dict[str, List[float]] = {k: [] for k in fns}
    rng = random.Random(3)
    for i in range(rounds + 1):
        order = list(fns)
        rng.shuffle(order)
        for name in order:
            gc.collect()
            t0 = time.perf_counter()
            im = await fns[name]()
            dt = time.perf_counter() - t0
            assert im.size == (side, side)
            del im
            if i:
                times[name].append(dt)
    await stub.close()
    f, b = median(times["floor"]), median(times["pillow"])
    report.add(ratio_row(f"3. {label}: answer bytes -> PIL vs Pillow decode", times["client"], times["pillow"], "s",
                         ("<=", 1.20),
                         note="client: its own generate() on a stub session answering the body in memory (json.loads, "
                              "parse, base64, its checks and decode) + .artifacts[0].image; baseline: "
                              "Image.open(BytesIO(png)).load(). The wire format's own floor (json.loads + "
                              f"b64decode + Pillow, nothing else) is {f / b:.2f}x Pillow here"))
    report.add(ratio_row(f"3. {label}: answer bytes -> PIL vs json + b64 + Pillow", times["client"], times["floor"],
                         "s", ("<=", 1.10)))

    # 3b: end to end over HTTP (POST, read, parse, decode to PIL) vs bare aiohttp doing the same
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with _client("openai_images", server.base(payload, "openai_images"), max_response_bytes=1 << 30) as client, \
            aiohttp.ClientSession() as session:
        req_json = _request_json(client)[1]

        async def ours():
            resp = await client.generate(ImageRequest(PROMPT))
            assert resp.success, resp.error
            return resp.image

        async def bare():
            async with session.post(url, json=req_json, headers=headers) as r:
                raw = await r.read()
            data = payloads.extract("openai_images", json.loads(raw))
            return _pillow(data)

        await bare()  # the server builds and caches its 47 MB answer on the first request
        times = await interleaved({"client": ours, "bare": bare}, rounds, 1)
        report.add(ratio_row(f"3. {label}: end to end over HTTP -> PIL vs bare aiohttp", times["client"],
                             times["bare"], "s", ("<=", 1.10)))

        # 3c: tracemalloc peaks, end to end (alternating, mem_reps each)
        pcs, pbs = [], []
        for _ in range(mem_reps):
            pcs.append(await _traced_peak_async(ours))
            pbs.append(await _traced_peak_async(bare))
    pc, pb = median(pcs), median(pbs)
    report.add(Row(f"3. {label}: tracemalloc peak, end to end vs bare aiohttp", pc, pb, "B",
                   "<= bare + 1 payload", pc - pb <= len(png), per_round=per_round(pcs, pbs),
                   note=f"in payloads (PNG sizes): client {pc / len(png):.2f}, bare aiohttp {pb / len(png):.2f}; "
                        f"the JSON answer is {len(body) / len(png):.2f} payloads; tracemalloc sees Python's "
                        "allocations (not Pillow's pixel buffers)"))

    # 3d: from the PNG bytes: Artifact(...).image vs Pillow directly
    pas, pps = [], []
    for _ in range(mem_reps):
        pas.append(_traced_peak(lambda: Artifact(png, "image/png").image))
        pps.append(_traced_peak(lambda: _pillow(png)))
    pa, pp = median(pas), median(pps)
    report.add(Row(f"3. {label}: tracemalloc peak, PNG bytes -> PIL vs Pillow", pa, pp, "B",
                   "<= Pillow + 1 payload", pa - pp <= len(png), ratio=None if not pp else pa / pp,
                   per_round=per_round(pas, pps), note=f"extra over Pillow: {(pa - pp) / len(png):.2f} payloads"))


def _peak_rss_once(server: ServerProcess, api: str, side: str) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.peak_rss", "--api", api, "--url", server.base("large", api),
           "--warm-url", server.base("tiny", api), "--side", side]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"peak_rss {api} {side} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


async def bench_peak_rss(report: Report, server: ServerProcess, png: bytes, reps: int) -> None:
    """Peak RSS of one generate() of the large answer + `.artifacts[0].image`, per format, in a
    fresh process each time (benchmarks/peak_rss.py), against the format's floor: the body bytes,
    the base64 text json.loads makes of them, the PNG bytes and the decoded pixels, all alive at
    once. A bare aiohttp process doing the same (read, json.loads, b64decode, Pillow load) is
    measured too, for reference."""
    label = png_label(png)
    P = len(png)
    b64_len = 4 * ((P + 2) // 3)
    with Image.open(io.BytesIO(png)) as im:
        pixels = im.size[0] * im.size[1] * len(im.getbands())
    bodies = {"openai_images": payloads.encode(payloads.images_body(png)),
              "openai_responses": payloads.encode(payloads.responses_body(png)),
              "openrouter_chat": payloads.encode(payloads.chat_body(png))}
    paths = {"openai_images": "/images/generations", "openai_responses": "/responses",
             "openrouter_chat": "/chat/completions"}
    async with aiohttp.ClientSession() as session:  # the server builds each answer once, on its first request
        for api in APIS:
            async with session.post(server.base("large", api) + paths[api], json={}) as r:
                assert len(await r.read()) == len(bodies[api])
    loop = asyncio.get_running_loop()
    runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {(a, s): [] for a in APIS for s in ("client", "bare")}
    rng = random.Random(13)
    for _ in range(reps):
        order = list(runs)
        rng.shuffle(order)
        for key in order:
            runs[key].append(await loop.run_in_executor(None, _peak_rss_once, server, *key))
    for api in APIS:
        B = len(bodies[api])
        floor = B + b64_len + P + pixels
        ours = [r["peak"] - r["before"] for r in runs[(api, "client")]]
        bare = [r["peak"] - r["before"] for r in runs[(api, "bare")]]
        held = [r["after"] - r["before"] for r in runs[(api, "client")]]
        held_bare = [r["after"] - r["before"] for r in runs[(api, "bare")]]
        o, b = median(ours), median(bare)
        how = runs[(api, "client")][0]["how"]
        report.add(Row(f"3. {label}: peak RSS, generate() + .image, {api}: vs the floor", o, floor, "B",
                       "<= floor + 1 payload", o <= floor + P, per_round=[x / floor for x in ours],
                       note=f"extra payload copies over the floor: {(o - floor) / P:+.2f} (bare aiohttp "
                            f"{(b - floor) / P:+.2f}); peak {o / P:.2f} payloads (bare {b / P:.2f}), floor "
                            f"{floor / P:.2f} = body {B / P:.2f} + base64 text {b64_len / P:.2f} + PNG 1.00 + "
                            f"pixels {pixels / P:.2f}; RSS still held after the call with the result alive: "
                            f"{median(held) / P:.2f} payloads (bare {median(held_bare) / P:.2f}); "
                            f"a fresh process per run, {reps} run(s) each, peak = {how}"))


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
        import jupyter_imagegen.magic  # noqa: F401  (the extension must import)
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
                   "B", spread_kind="exact",
                   note=f"{side}x{side} PNGs of {raw / 1e6:.2f} MB; the gallery HTML with downscaled "
                        "JPEG previews (data URLs), measured as stored in the .ipynb"))
    report.add(Row(f"4. notebook bytes/image, %%imagegen -n {n} --preview-size 0 (full) vs the PNG",
                   results["full"], raw, "B", spread_kind="exact",
                   note="full size: the PNG itself as a base64 data URL"))


# -- 6. a real Jupyter kernel ---------------------------------------------------------------------
def _kernel(workdir: Path, server: ServerProcess, payload: str, api: str, distinct: bool = True):
    from benchmarks.kernel import BenchKernel, kernel_env
    env = kernel_env(IMAGE_API_TYPE=api, IMAGE_BASE_URL=server.base(payload, api, 0, distinct=distinct),
                     IMAGE_AUTH_TOKEN=TOKEN, IMAGE_CACHE_DIR=str(workdir / "cache"), TMPDIR=str(workdir / "tmp"))
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    return BenchKernel(workdir, env)


_TRIM = ("import gc as _gc, ctypes as _ct\n_gc.collect()\n"
         "try:\n    _ct.CDLL('libc.so.6').malloc_trim(0)\nexcept Exception:\n    pass")


def bench_kernel_memory(report: Report, server: ServerProcess, workdir: Path, png: bytes, cells: int,
                        marks: Sequence[int], enforce: bool, goal_mb: float = 0.5) -> None:
    """`cells` x `%%imagegen --no-cache` (one distinct image each) sent at once to a real kernel;
    its VmRSS when each cell goes idle. Growth per cell from marks[0] to marks[-1] (the goal), and
    its spread over windows of that range; afterwards, what freeing each holder gives back."""
    P = len(png)
    api = "openai_images"
    with _kernel(workdir, server, "kmem", api) as k:
        k.run("%load_ext jupyter_imagegen")
        rss_loaded = k.rss()
        rss: Dict[int, int] = {}

        def on_done(i: int, _dt: float) -> None:
            rss[i + 1] = k.rss()

        t0 = time.perf_counter()
        k.run_all([f"%%imagegen --no-cache\n{PROMPT}"] * cells, on_done, timeout=max(600.0, cells * 2.0))
        wall = time.perf_counter() - t0
        rss_end = k.rss()
        # where the memory is: give back what each holder keeps, one after the other
        k.run(_TRIM)
        rss_trim = k.rss()
        k.run("%reset -f out\n" + _TRIM)
        rss_out = k.rss()
        k.run("from jupyter_imagegen import history as _h\n_h.clear()\n" + _TRIM)
        rss_hist = k.rss()
    first, last = marks[0], marks[-1]
    growth = (rss[last] - rss[first]) / (last - first)
    window = max(1, (last - first) // 11)
    slopes = [(rss[a + window] - rss[a]) / window for a in range(first, last - window + 1, window)]
    checkpoints = ", ".join(f"cell {m}: {rss[m] / MB:.0f} MB" for m in marks)
    name = (f"6. kernel RSS growth per cell {first}->{last}, %%imagegen --no-cache, {png_label(png)} distinct: "
            "vs 1 PNG/cell")
    report.add(Row(name, growth, P, "B/cell", f"<= {goal_mb:g} MB/cell" if enforce else "",
                   (growth <= goal_mb * MB) if enforce else None, per_round=[x / P for x in slopes],
                   base_unit="B",
                   ratio=growth / P,
                   note=f"kernel VmRSS after %load_ext {rss_loaded / MB:.0f} MB, {checkpoints}; growth per cell "
                        + ", ".join(f"{a}->{b}: {(rss[b] - rss[a]) / (b - a) / MB:.2f} MB"
                                    for a, b in zip(marks, marks[1:])) + "; "
                        f"{cells} cells sent at once (Run All) took {wall:.1f} s ({wall / cells * 1e3:.0f} ms/cell); "
                        f"ratio = PNG payloads kept per cell; spread over {len(slopes)} windows of {window} cells. "
                        f"After the run: {rss_end / MB:.0f} MB; gc + malloc_trim -> {rss_trim / MB:.0f} MB; "
                        f"%reset -f out (Out/_N) -> {rss_out / MB:.0f} MB ({(rss_out - rss_trim) / MB:+.0f}); "
                        f"history.clear() -> {rss_hist / MB:.0f} MB ({(rss_hist - rss_out) / MB:+.0f})"
                        + ("" if enforce else "; --quick: no goal")))


def bench_kernel_cell(report: Report, server: ServerProcess, workdir: Path, png: bytes, apis: Sequence[str],
                      rounds: int, warmup: int, n: int = 4, goal: float = 1.30) -> None:
    """In one kernel per format: a `%%imagegen -n N --no-cache` cell vs a cell that awaits the
    same request on a plain ImageClient (made from the same IMAGE_* environment), each timed from
    its execute_request to the kernel's idle status; interleaved rounds. Two more cells in the same
    rounds say where the difference goes (the note): the magic with --quiet (no live event log),
    and the plain call followed by the N notebook previews made one after another on the kernel's
    thread (`Artifact.preview()`, what the gallery shows; skipped if the package has no such method)."""
    magic = f"%%imagegen -n {n} --no-cache\n{PROMPT}"
    plain = (f"resp = await client.generate(ImageRequest({PROMPT!r}, n={n}))\n"
             f"assert resp.success and len(resp.artifacts) == {n}, resp.error")
    cells = {"magic": magic, "plain": plain, "magic --quiet": magic.replace("--no-cache", "--no-cache --quiet")}
    if hasattr(Artifact, "preview"):
        cells["plain + previews"] = plain + "\n_previews = [a.preview() for a in resp.artifacts]"
    for api in apis:
        with _kernel(workdir / api, server, "medium", api) as k:
            k.run("%load_ext jupyter_imagegen\nfrom jupyter_imagegen import ImageClient, ImageConfig, ImageRequest\n"
                  "client = ImageClient(ImageConfig.from_env())")
            times: Dict[str, List[float]] = {name: [] for name in cells}
            rng = random.Random(17)
            for i in range(warmup + rounds):
                order = list(cells)
                rng.shuffle(order)
                for name in order:
                    dt = k.run(cells[name])
                    if i >= warmup:
                        times[name].append(dt)
            calls = k.value("client.resolve(ImageRequest('x', n=%d))[1].calls_needed("
                            "client.resolve(ImageRequest('x', n=%d))[0])" % (n, n))
            k.run("await client.close()")
        where = "; in the same rounds: " + ", ".join(
            f"{name} {median(times[name]) * 1e3:.0f} ms" for name in cells if name not in ("magic", "plain"))
        report.add(ratio_row(f"6. %%imagegen -n {n} cell vs awaited generate(n={n}) cell, {api}, "
                             f"{png_label(png)} distinct", times["magic"], times["plain"], "s", ("<=", goal),
                             note=(f"`%%imagegen -n {n} --no-cache` vs `resp = await client.generate(ImageRequest("
                                   f"prompt, n={n}))` in the same kernel, each cell timed from execute_request to its "
                                   f"idle status; {rounds} interleaved rounds after {warmup} warm-up; {calls} HTTP "
                                   "call(s) per cell; the plain cell's client: `ImageClient(ImageConfig.from_env())` "
                                   "made once, awaited on the kernel's own loop" if api == apis[0] else
                                   f"{calls} HTTP call(s) per cell") + where))


# -- main -------------------------------------------------------------------------------------------
@dataclass
class Settings:
    tiny: int = 54             # an 8 kB answer (per-request and concurrency rows)
    small: int = 64            # the fan-out rows' small payload
    medium: int = 1024         # typical model output (about 2 MB)
    large: int = 4096
    rounds_tiny: int = 200
    rounds_medium: int = 30
    rounds_large: int = 5
    mem_reps: int = 2
    fanout_n: int = 16
    fanout_latency_ms: int = 300
    fanout_reps: int = 4
    default_fanout_n: int = 8
    concurrent_calls: int = 64
    concurrent_latency_ms: int = 50
    concurrent_rounds: int = 15
    peak_rss_reps: int = 2
    notebook_n: int = 4
    emulator: bool = True
    stream_partials: tuple = (0, 3)
    stream_delays: tuple = (0.5,)
    stream_rounds: int = 3
    kernel: bool = True
    kmem_side: int = 1024      # about 1.4 MB with fine=1.5
    kmem_cells: int = 600
    kmem_marks: tuple = (50, 200, 600)
    kmem_enforce: bool = True
    kcell_apis: tuple = ("openai_images", "openrouter_chat")
    kcell_rounds: int = 6
    kcell_warmup: int = 1


QUICK = Settings(small=32, medium=128, large=256, rounds_tiny=5, rounds_medium=3, rounds_large=2, mem_reps=1,
                 fanout_n=4, fanout_latency_ms=50, fanout_reps=2, default_fanout_n=4, concurrent_calls=16,
                 concurrent_rounds=2, peak_rss_reps=1, notebook_n=4, emulator=False, stream_partials=(0, 2),
                 stream_delays=(0.05,), stream_rounds=1, kmem_side=128, kmem_cells=30, kmem_marks=(10, 20, 30),
                 kmem_enforce=False, kcell_apis=("openai_images",), kcell_rounds=2, kcell_warmup=1)


class _Sections:
    """Logs each section as it starts and keeps its wall time for the table's footer."""

    def __init__(self, report: Report, log):
        self.report, self.log = report, log
        self.t0 = time.perf_counter()
        self.current: Optional[Tuple[str, float]] = None

    def __call__(self, key: str, text: str) -> None:
        self.end()
        self.log(f"[{time.perf_counter() - self.t0:5.0f} s] {text}")
        self.current = (key, time.perf_counter())

    def end(self) -> None:
        if self.current:
            key, t = self.current
            self.report.timings[key] = self.report.timings.get(key, 0.0) + time.perf_counter() - t
            self.current = None


async def _run_async(report: Report, s: Settings, server: ServerProcess, pngs: Dict[str, bytes], section) -> None:
    sizes = {k: png_label(pngs[k]) for k in ("small", "medium")}
    tiny_body = len(payloads.encode(payloads.images_body(pngs["tiny"])))
    tiny = f"{tiny_body / 1e3:.1f} KB answer"
    section("1", f"1. per request ({tiny}; {sizes['medium']})...")
    await bench_overhead(report, server, "tiny", tiny, f"the answer carries a {png_label(pngs['tiny'])}",
                         s.rounds_tiny, max(2, s.rounds_tiny // 20), 1.05, ends=("pil",), sdk_end="pil")
    await bench_overhead(report, server, "medium", sizes["medium"], "typical model output",
                         s.rounds_medium, 2, 1.10, ends=("pil", "bytes"), sdk_end="bytes")
    section("2", "2. fan-out and concurrency...")
    emu_done = False
    if s.emulator:
        try:
            with EmulatorProcess(s.fanout_latency_ms / 1000) as emu:
                await bench_fanout(report, server, sizes, s.fanout_latency_ms, s.fanout_n, s.fanout_reps,
                                   emulator_url=emu.url)
                emu_done = True
        except RuntimeError as e:
            report.notes.append(f"2. emulator row skipped: {e}")
    if not emu_done and not any(r.name.startswith("2. fan-out") for r in report.rows):
        await bench_fanout(report, server, sizes, s.fanout_latency_ms, s.fanout_n, s.fanout_reps)
    await bench_fanout_default(report, server, sizes, s.fanout_latency_ms, s.default_fanout_n, s.fanout_reps)
    await bench_concurrent(report, server, tiny, s.concurrent_calls, s.concurrent_latency_ms, s.concurrent_rounds)
    section("3", "3. large payload...")
    await bench_large(report, server, "large", pngs["large"], s.rounds_large, s.mem_reps)
    section("3-rss", "3. peak RSS per format (fresh processes)...")
    await bench_peak_rss(report, server, pngs["large"], s.peak_rss_reps)
    section("5", "5. streaming: time to first visible pixels...")
    from benchmarks import streaming
    for r in await streaming.bench(apis=("openai_images",), partials=s.stream_partials, delays=s.stream_delays,
                                   rounds=s.stream_rounds, log=None):
        report.add(Row(f"5. first pixels, openai_images K={r.partials} ({r.delay:g} s per image): stream vs plain",
                       r.stream_first, r.plain_first, "s", per_round=r.first_ratios,
                       note=f"final image x{r.final_overhead:.2f}"))


def run_all(s: Settings, workdir: Path, log=print) -> Report:
    report = Report(machine=machine_info())
    section = _Sections(report, log)
    section("payloads", f"making payloads ({s.tiny}, {s.small}, {s.medium}, {s.kmem_side} and {s.large} px)...")
    pngs = {"tiny": payloads.png_bytes(s.tiny, s.tiny), "small": payloads.png_bytes(s.small, s.small),
            "medium": payloads.png_bytes(s.medium, s.medium),
            "kmem": payloads.png_bytes(s.kmem_side, s.kmem_side, fine=1.5),
            "large": payloads.png_bytes(s.large, s.large, compress_level=1)}
    for name, data in pngs.items():
        (workdir / f"{name}.png").write_bytes(data)
    with ServerProcess(workdir) as server:
        asyncio.run(_run_async(report, s, server, pngs, section))
        section("4", "4. notebook output (%%imagegen in an IPython shell)...")
        bench_notebook(report, server, "medium", pngs["medium"], s.notebook_n)
        if s.kernel:
            section("6-cell", f"6. kernel: %%imagegen -n 4 cell vs an awaited generate() cell ({', '.join(s.kcell_apis)})...")
            bench_kernel_cell(report, server, workdir / "kcell", pngs["medium"], s.kcell_apis, s.kcell_rounds,
                              s.kcell_warmup)
            section("6-mem", f"6. kernel: RSS over {s.kmem_cells} %%imagegen cells...")
            bench_kernel_memory(report, server, workdir / "kmem", pngs["kmem"], s.kmem_cells, s.kmem_marks,
                                s.kmem_enforce)
    section.end()
    report.notes.append(f"total benchmark time {time.perf_counter() - section.t0:.0f} s")
    if hasattr(os, "getloadavg"):
        report.machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (seconds; for smoke tests)")
    ap.add_argument("--rounds", type=int, help="rounds for the 8 kB per-request rows (default 200)")
    ap.add_argument("--no-emulator", action="store_true", help="skip the fan-out row against the emulator")
    ap.add_argument("--no-kernel", action="store_true", help="skip the rows that run a Jupyter kernel (6.)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.rounds:
        s.rounds_tiny = args.rounds
    if args.no_emulator:
        s.emulator = False
    if args.no_kernel:
        s.kernel = False
    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
        report = run_all(s, Path(tmp), log=lambda m: print(m, file=sys.stderr, flush=True))
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": report.machine, "rows": [asdict(r) for r in report.rows],
                                               "notes": report.notes, "timings": report.timings}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
