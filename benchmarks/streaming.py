"""Time to first visible pixels, streaming vs not, on the emulator (issue 8, item 4).

    python -m benchmarks.streaming                      # delay 0.5 s, K = 0..3, 3 rounds (~1 min)
    python -m benchmarks.streaming --delay 0.2 --delay 0 --partials 1,3 --rounds 5
    python -m benchmarks.streaming --quick              # seconds (smoke test)
    python -m benchmarks.streaming --json streaming.json

The model: drawing an image takes ``(K + 1) * delay`` seconds and a streaming API sends a partial
image every ``delay`` seconds on the way (the emulator's ``stream_delay``), the final one at the
end. The plain (non-stream) request gets the same drawing time as server latency, so both
finish drawing at the same moment; streaming only changes when the first pixels can be shown
and what the extra partial images cost.

"Visible" is measured where the user sees it: the client's events go to a
`display.GenerationView` (the renderer the magic and the form use) drawing into an Output-like
recorder; the clock stops when an output first holds an ``<img``, i.e. after the preview was
encoded. Plain: the gallery after `generate()` returns. Streaming: the first partial image (or
the final one when K = 0 or the API sends no partials, like OpenRouter). Medians of interleaved
rounds (each round runs every variant once, in a fresh random order) after one warm-up round.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # `python benchmarks/streaming.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.display import GenerationView
from jupyter_imagegen.emulator import EmulatorThread

TOKEN = "sk-bench-stream-0123456789abcdef"
PROMPT = "a lighthouse at dusk, watercolour"
PARTIAL_APIS = ("openai_images", "openai_responses")
ALL_APIS = PARTIAL_APIS + ("openrouter_chat",)


class OutputRecorder:
    """Stands in for an ipywidgets.Output: notes when an image is first on screen."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.first_image: Optional[float] = None
        self.updates = 0
        self._outputs: tuple = ()

    @property
    def outputs(self) -> tuple:
        return self._outputs

    @outputs.setter
    def outputs(self, value: tuple) -> None:
        self._outputs = value
        self.updates += 1
        if self.first_image is None and any("<img " in o["data"].get("text/html", "") for o in value):
            self.first_image = time.perf_counter() - self.t0


@dataclass
class Sample:
    first: float           # s to the first image on screen
    final: float           # s to the final image on screen
    partial_bytes: int     # bytes of partial images received


@dataclass
class Row:
    api: str
    partials: int
    delay: float
    plain_first: float
    stream_first: float
    plain_final: float
    stream_final: float
    partial_kb: float
    #: per round: stream_first / plain_first (both ran in that round)
    first_ratios: List[float] = field(default_factory=list)

    @property
    def speedup(self) -> float:
        return self.plain_first / self.stream_first if self.stream_first else float("nan")

    @property
    def final_overhead(self) -> float:
        return self.stream_final / self.plain_final if self.plain_final else float("nan")


async def one_run(emu: EmulatorThread, client: ImageClient, api: str, k: int, delay: float, stream: bool) -> Sample:
    # same drawing time either way: as a pause before the answer, or between the stream's images
    emu.latency = 0.0 if stream else (k + 1) * delay
    emu.stream_delay = delay
    out = OutputRecorder()
    view = GenerationView(output=out, title="bench")
    view.start(PROMPT)
    partial_bytes = 0

    def on_event(event) -> None:
        nonlocal partial_bytes
        if event.type == "partial_image":
            partial_bytes += len(event.data["artifact"].data)
        view.on_event(event)

    req = ImageRequest(PROMPT, stream=stream, partial_images=k if (stream and api in PARTIAL_APIS) else None,
                       cache=False)
    out.t0 = time.perf_counter()
    resp = await client.generate(req, on_event=on_event)
    if not resp.success:
        raise RuntimeError(f"{api} stream={stream}: {resp.error}")
    view.show_response(resp)
    final = time.perf_counter() - out.t0
    if out.first_image is None:
        raise RuntimeError("no image was shown")
    return Sample(out.first_image, final, partial_bytes)


async def bench(apis: Sequence[str] = ALL_APIS, partials: Sequence[int] = (0, 1, 2, 3),
                delays: Sequence[float] = (0.5,), rounds: int = 3, warmup: int = 1,
                log=print) -> List[Row]:
    """Every (api, K, delay) as plain and streaming; returns one Row each (medians)."""
    rows: List[Row] = []
    with EmulatorThread(token=TOKEN) as emu:
        clients = {api: ImageClient(ImageConfig(api_type=api, base_url=emu.base_url_for(api), token=TOKEN,
                                                cache=False, timeout=120))
                   for api in apis}
        try:
            for delay in delays:
                for api in apis:
                    for k in partials:
                        if k and api not in PARTIAL_APIS:
                            continue          # OpenRouter streams no partial images
                        samples: Dict[bool, List[Sample]] = {False: [], True: []}
                        for r in range(warmup + rounds):
                            order = [False, True]
                            random.shuffle(order)
                            for stream in order:
                                s = await one_run(emu, clients[api], api, k, delay, stream)
                                if r >= warmup:
                                    samples[stream].append(s)
                        med = lambda xs: statistics.median(xs)  # noqa: E731
                        row = Row(api, k, delay,
                                  med([s.first for s in samples[False]]), med([s.first for s in samples[True]]),
                                  med([s.final for s in samples[False]]), med([s.final for s in samples[True]]),
                                  med([s.partial_bytes for s in samples[True]]) / 1024,
                                  [st.first / pl.first for st, pl in zip(samples[True], samples[False])])
                        rows.append(row)
                        if log:
                            log(f"  {api:17} K={k} delay={delay:g}s: first {row.plain_first:.3f} -> "
                                f"{row.stream_first:.3f} s")
        finally:
            for c in clients.values():
                await c.close()
    return rows


def print_table(rows: List[Row], out=sys.stdout) -> None:
    head = ("| API | K | delay | first pixels, plain | first pixels, stream | speed-up | final, plain "
            "| final, stream | final stream/plain | partials received |")
    print(head, file=out)
    print("|" + "---|" * head.count(" | ") + "---|", file=out)
    for r in rows:
        print(f"| {r.api} | {r.partials} | {r.delay:g} s | {r.plain_first:.3f} s | {r.stream_first:.3f} s "
              f"| {r.speedup:.2f}x | {r.plain_final:.3f} s | {r.stream_final:.3f} s | {r.final_overhead:.2f} "
              f"| {r.partial_kb:.0f} kB |", file=out)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nmachine: {platform.platform()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"load {load:.2f} at the end; images 1024x1024 PNG drawn by the emulator", file=out)


def _ints(text: str) -> List[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0,1,3, got {text!r}") from None
    if not vals or any(not 0 <= v <= 3 for v in vals):
        raise argparse.ArgumentTypeError("partials are 0 to 3")
    return vals


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.streaming", description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay", type=float, action="append", metavar="S",
                    help="seconds between partial images (repeatable; default 0.5)")
    ap.add_argument("--partials", type=_ints, default=[0, 1, 2, 3], metavar="K,K",
                    help="partial image counts to try (default 0,1,2,3)")
    ap.add_argument("--api", action="append", choices=ALL_APIS, help="APIs (repeatable; default all three)")
    ap.add_argument("--rounds", type=int, default=3, help="measured rounds per variant (default 3)")
    ap.add_argument("--quick", action="store_true", help="delay 0.05 s, K 0 and 2, one round (seconds)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    delays = args.delay or ([0.05] if args.quick else [0.5])
    partials = [0, 2] if args.quick else args.partials
    rounds = 1 if args.quick else max(1, args.rounds)
    apis = args.api or list(ALL_APIS)
    print(f"streaming vs plain on the emulator: delays {delays} s, K {partials}, {rounds} round(s)", file=sys.stderr)
    rows = asyncio.run(bench(apis, partials, delays, rounds, warmup=0 if args.quick else 1,
                             log=lambda s: print(s, file=sys.stderr)))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"rows": [{**asdict(r), "speedup": r.speedup, "final_overhead": r.final_overhead} for r in rows]},
            indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
