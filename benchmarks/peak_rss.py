"""Peak RSS of one call in a fresh process, over the process's RSS just before the call.

    python -m benchmarks.peak_rss --api openai_images --url BASE --warm-url BASE --side client
    python -m benchmarks.peak_rss --api openai_images --url BASE --warm-url BASE --side bare

`run.py` starts this once per format and side (issue 12, item 6). The process imports
everything and makes one warm-up call of the same kind on a small answer (`--warm-url`: code
paths, the connection, the session), collects garbage and hands freed heap back to the system
(glibc `malloc_trim`), then reads VmRSS, resets the kernel's peak counter (writing 5 to
/proc/self/clear_refs resets VmHWM) and makes the measured call; the peak is VmHWM after it (or
`ru_maxrss` where the reset is refused). The result is held until the peak is read.

client: `ImageClient(ImageConfig(api_type, base_url, token))` (defaults otherwise),
`resp = await client.generate(ImageRequest(prompt))`, then `resp.artifacts[0].image`.
bare: one aiohttp session, `await r.read()`, `json.loads`, `base64.b64decode` of the image field,
`Image.open(BytesIO(png)).load()`. Both end holding a loaded PIL image (and its PNG bytes).

Prints one JSON line: before, peak, after (RSS with the result still held), how.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import io
import json
import resource
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import aiohttp
from PIL import Image

from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest

from benchmarks import payloads

TOKEN = "sk-bench-0123456789abcdef"
PROMPT = "a lighthouse at dusk, watercolour"
PATHS = {"openai_images": "/images/generations", "openai_responses": "/responses",
         "openrouter_chat": "/chat/completions"}
BODIES = {"openai_images": {"model": "gpt-image-1", "prompt": PROMPT},
          "openai_responses": {"model": "gpt-4.1-mini", "input": PROMPT, "tools": [{"type": "image_generation"}]},
          "openrouter_chat": {"model": "google/gemini-2.5-flash-image", "modalities": ["image", "text"],
                              "messages": [{"role": "user", "content": PROMPT}]}}


def status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return status("VmHWM") <= status("VmRSS") + (1 << 20)


def trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


async def main_async(args) -> dict:
    if args.side == "client":
        client = ImageClient(ImageConfig(api_type=args.api, base_url=args.url, token=TOKEN))

        async def call(base: str):
            resp = await client.generate(ImageRequest(PROMPT, base_url=base))
            assert resp.success, resp.error
            resp.artifacts[0].image
            return resp
        close = client.close
    else:
        session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def call(base: str):
            async with session.post(base + PATHS[args.api], json=BODIES[args.api], headers=headers) as r:
                raw = await r.read()
                assert r.status == 200, r.status
            png = payloads.extract(args.api, json.loads(raw))
            im = Image.open(io.BytesIO(png))
            im.load()
            return png, im
        close = session.close
    try:
        warm = await call(args.warm_url)
        del warm
        trim()
        before = status("VmRSS")
        exact = reset_peak()
        result = await call(args.url)
        peak = status("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        after = status("VmRSS")
        del result
    finally:
        await close()
    return {"before": before, "peak": peak, "after": after,
            "how": "VmHWM after clear_refs" if exact else "ru_maxrss (peak since start)"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peak_rss")
    ap.add_argument("--api", required=True, choices=sorted(PATHS))
    ap.add_argument("--url", required=True, help="base URL of the measured (large) answer")
    ap.add_argument("--warm-url", required=True, help="base URL of a small answer for the warm-up call")
    ap.add_argument("--side", choices=("client", "bare"), required=True)
    args = ap.parse_args(argv)
    print(json.dumps(asyncio.run(main_async(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
