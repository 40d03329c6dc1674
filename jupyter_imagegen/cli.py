"""`jupyter-imagegen` console script: `demo` runs the quickstart notebook against the built-in emulator;
`emulator` serves the emulator; `generate` makes images from the shell."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

DEMO_NOTEBOOK = "quickstart.ipynb"


def _find_notebook(name: str) -> Path:
    given = Path(name).expanduser()
    if given.suffix == ".ipynb" and given.is_file():  # an explicit path wins
        return given.resolve()
    here = Path(__file__).resolve().parent
    # the package's own copy (wheel), then the repository's (editable install)
    for cand in (here / "notebooks" / name, here.parent / "notebooks" / name):
        if cand.is_file():
            return cand
    raise SystemExit(f"error: cannot find {name}: expected it in {here / 'notebooks'} or {here.parent / 'notebooks'}")


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError:
        print("error: the demo needs nbclient and ipykernel: pip install 'jupyter-imagegen[demo]'", file=sys.stderr)
        return 2
    src = _find_notebook(args.notebook)
    out = Path(args.out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    env_backup = dict(os.environ)
    # the demo never spends money: the notebook starts the emulator when no token is set
    for var in ("IMAGE_AUTH_TOKEN", "IMAGE_BASE_URL", "IMAGE_API_TYPE", "IMAGE_MODEL"):
        os.environ.pop(var, None)
    os.environ["IMAGEGEN_OUT"] = str(out)
    print(f"running {src.name} against the built-in emulator (no API key needed)...", flush=True)
    nb = nbformat.read(src, as_version=4)
    t0 = time.monotonic()
    try:
        client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(out)}})
        client.execute()
    except Exception as e:  # nbclient's CellExecutionError carries the cell's traceback text
        failed = out / f"{src.stem}.failed.ipynb"
        nbformat.write(nb, failed)
        print(f"error: the notebook failed ({type(e).__name__}); partial result in {failed}\n{e}", file=sys.stderr)
        return 1
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    executed = out / f"{src.stem}.executed.ipynb"
    nbformat.write(nb, executed)
    images = sorted(p for p in out.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    print(f"done in {time.monotonic() - t0:.1f} s")
    print(f"executed notebook: {executed}")
    print(f"images ({len(images)}): {out}")
    for p in images[:50]:
        print(f"  {p.relative_to(out)}")
    return 0


def cmd_emulator(args: argparse.Namespace) -> int:
    from .emulator.__main__ import main as emu_main
    argv = ["--host", args.host, "--port", str(args.port)]
    if args.token:
        argv += ["--token", args.token]
    if args.latency:
        argv += ["--latency", str(args.latency)]
    return emu_main(argv) or 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .client import ImageClient
    from .config import ImageConfig
    from .errors import ImageGenError
    from .model import ImageRequest
    try:
        cfg = ImageConfig.from_env(api_type=args.api, base_url=args.base_url, model=args.model)
        client = ImageClient(cfg, on_event=lambda e: print(f"  {e.describe()}", file=sys.stderr))
        req = ImageRequest(args.prompt, n=args.n, size=args.size, aspect_ratio=args.aspect,
                           quality=args.quality, output_format=args.format, images=args.image or [])
        resp = client.generate_sync(req)
        client.close_sync()
    except ImageGenError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not resp.success:
        print(f"error: {resp.error}", file=sys.stderr)
        for s in resp.suggestions:
            print(f"  hint: {s}", file=sys.stderr)
        return 1
    out = Path(args.out)
    for a in resp.artifacts:
        p = a.save(out / f"image-{int(time.time())}-{a.index}{a.extension}")
        print(p)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="jupyter-imagegen", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="run the quickstart notebook against the built-in emulator")
    d.add_argument("--out", default="imagegen-out", help="folder for the executed notebook and images")
    d.add_argument("--notebook", default=DEMO_NOTEBOOK)
    d.add_argument("--timeout", type=int, default=300, help="seconds per cell")
    d.set_defaults(func=cmd_demo)
    e = sub.add_parser("emulator", help="serve the emulator on loopback")
    e.add_argument("--host", default="127.0.0.1")
    e.add_argument("--port", type=int, default=0)
    e.add_argument("--token")
    e.add_argument("--latency", type=float, default=0.0)
    e.set_defaults(func=cmd_emulator)
    g = sub.add_parser("generate", help="generate images from the shell (uses IMAGE_* variables)")
    g.add_argument("prompt")
    g.add_argument("--api"), g.add_argument("--base-url"), g.add_argument("--model")
    g.add_argument("-n", type=int, default=1)
    g.add_argument("--size"), g.add_argument("--aspect"), g.add_argument("--quality"), g.add_argument("--format")
    g.add_argument("--image", action="append")
    g.add_argument("--out", default=".")
    g.set_defaults(func=cmd_generate)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
