"""``python -m jupyter_imagegen.emulator [--host H] [--port P] [--token T] [--latency S] [--stream-delay S] [--fault SPEC]``

Prints ``jupyter-imagegen emulator listening on http://HOST:PORT`` once bound, then serves
until SIGINT / SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import List, Optional

from .server import Emulator


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jupyter_imagegen.emulator",
                                description="Serve the OpenRouter / OpenAI image APIs on loopback, "
                                            "with real images and fault injection.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    p.add_argument("--token", default=os.environ.get("IMAGE_EMULATOR_TOKEN"),
                   help="the only bearer token accepted (default: $IMAGE_EMULATOR_TOKEN, "
                        "else any non-empty token)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds to sleep before every API answer")
    p.add_argument("--stream-delay", type=float, default=0.0, metavar="S",
                   help="seconds before each partial / final image of a streamed answer")
    p.add_argument("--fault", action="append", default=[], metavar="SPEC",
                   help="queue a fault for the next API request (repeatable), e.g. 429:retry_after=1")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request to stderr")
    return p


async def _serve(args: argparse.Namespace) -> None:
    emu = Emulator(token=args.token, latency=args.latency, host=args.host, port=args.port,
                   access_log=args.access_log, stream_delay=args.stream_delay)
    if args.fault:
        emu.add_faults(*args.fault)
    await emu.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(stop.set))
    print(f"jupyter-imagegen emulator listening on {emu.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await emu.stop()


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.access_log:
        import logging
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:
        pass
    except ValueError as e:  # a bad --fault
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
