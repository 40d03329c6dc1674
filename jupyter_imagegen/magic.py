"""`%%imagegen` / `%imagegen`: generate images from a notebook cell.

    %load_ext jupyter_imagegen

    %%imagegen -n 4 --aspect 16:9 --out fox
    a red fox in fresh snow, {style}

    %imagegen --size 1024x1024 a lighthouse at dusk

Options come from IPython's `magic_arguments`, so `%%imagegen?` shows them. The cell body (or,
for the line form, the text after the options) is the prompt; `{name}` / `{expr}` are replaced
by notebook values as IPython does for shell commands (`{{` and `}}` for literal braces), and an
unknown name is an error rather than left as is. Every mistake in the options, the prompt or the
configuration is a one-line ``UsageError`` and nothing is sent.

The magic blocks until the images are there (so "Run all" stays in order), shows a live event
log updated in place, then the gallery; it returns the ImageResponse (so ``_`` works). Interrupt
the kernel to cancel: the request is cancelled cleanly and the cell stops with KeyboardInterrupt.
``--stream`` (``--partials K``) shows the image forming: each partial image replaces the last in
one output, then the final image takes its place; interrupting drops the stream at once.

Exploring: ``--compare model=a,b`` (repeatable) and several prompts separated by a line ``---``
run every combination concurrently into one labelled grid (a `CompareResult`); ``--save DIR``
writes each image with its metadata before it is shown; ``--from PATH`` re-runs the request
that made a saved image, ``--rerun N`` history entry N (other options override); every request
is recorded in `jupyter_imagegen.history`, shown by ``%imagegen_history``.
"""
from __future__ import annotations

import argparse
import keyword
import os
import re
import string
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring

from . import events as ev
from . import history
from .compare import GRID_PREVIEW_MAX_SIDE, acompare, parse_compare_spec, split_prompts
from .config import validate_api_type, validate_base_url
from .display import DEFAULT_PREVIEW_MAX_SIDE, GenerationView, clear_shown, mark_shown, refusal_message
from .errors import ConfigError, GenerationCancelled, RequestError
from .history import HistoryEntry
from .loading import LoadedImage, load
from .model import Artifact, ImageRequest, ImageResponse, InputImage
from .runtime import runtime, save_dir_problem
from .saving import save_response, slugify

__all__ = ["ImageGenMagics", "load_ipython_extension", "unload_ipython_extension", "expand_variables",
           "split_options", "resolve_image", "save_artifacts", "build_request", "FAULT_HEADER", "slugify",
           "explicit_options", "apply_overrides", "parse_compare_options"]

#: the emulator's fault-injection header (sent by --fault; real APIs ignore it)
FAULT_HEADER = "X-Emulator-Fault"

API_ALIASES = {
    "openrouter": "openrouter_chat", "chat": "openrouter_chat",
    "openai": "openai_images", "images": "openai_images",
    "responses": "openai_responses",
}
QUALITIES = ("low", "medium", "high", "auto", "standard", "hd")
FORMATS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp"}
BACKGROUNDS = ("transparent", "opaque", "auto")


# --------------------------------------------------------------------------------------------
# option value types (argparse turns ArgumentTypeError into "argument --x: message")
# --------------------------------------------------------------------------------------------
def _api(value: str) -> str:
    v = value.strip().lower().replace("-", "_")
    v = API_ALIASES.get(v, v)
    try:
        return validate_api_type(v, "--api")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a known API; use openrouter_chat, openai_images or openai_responses") from None


def _base_url(value: str) -> str:
    try:
        return validate_base_url(value, "--base-url")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).replace("--base-url=", "")) from None


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of images (1, 2, 4...), got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"ask for at least 1 image, got {n}")
    return n


def _retries(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of retries (0, 1, 2...), got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"retries cannot be negative, got {n}")
    return n


def _whole(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None


def _seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not s > 0 or s != s or s == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return s


def _pixels(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels (0 = full size), got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of pixels (0 = full size), got {n}")
    return n


def _partials(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 0 to 3 partial images, got {value!r}") from None
    if not 0 <= n <= 3:
        raise argparse.ArgumentTypeError(f"expected 0 to 3 partial images, got {n}")
    return n


#: partial images shown by --stream when --partials is not given
DEFAULT_PARTIALS = 2


def _size(value: str) -> str:
    """Normalised only (1024X1024 / 1024×1024 -> 1024x1024, 2k -> 2K); which sizes exist depends
    on the API and the model, so the provider checks it (before anything is sent)."""
    v = value.strip().lower().replace("×", "x")
    return v.upper() if v.endswith("k") else v


def _choice(options: Sequence[str], what: str, mapping: Optional[Dict[str, str]] = None):
    def check(value: str) -> str:
        v = value.strip().lower()
        if mapping is not None and v in mapping:
            return mapping[v]
        if v in options:
            return v
        raise argparse.ArgumentTypeError(f"{value!r} is not a {what}; use one of: {', '.join(options)}")
    return check


def _identifier(value: str) -> str:
    if not value.isidentifier() or keyword.iskeyword(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a valid Python variable name")
    return value


# --------------------------------------------------------------------------------------------
# pure helpers (tested directly)
# --------------------------------------------------------------------------------------------
_FORMATTER = string.Formatter()


def expand_variables(text: str, ns: Dict[str, Any], *, where: str = "the prompt") -> str:
    """Replace `{name}` / `{expr}` with values from `ns`, as IPython does for shell commands.

    `{{` and `}}` are literal braces. Unlike IPython's lenient expansion, a name that is not
    defined (or an expression that fails) raises UsageError with one readable line.
    """
    if "{" not in text and "}" not in text:
        return text
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as e:
        raise UsageError(f"unbalanced braces in {where} ({e}); write {{{{ and }}}} for literal braces") from None
    out: List[str] = []
    for literal, field, spec, conversion in parsed:
        out.append(literal)
        if field is None:
            continue
        expr = f"{field}:{spec}" if spec else field  # as IPython's FullEvalFormatter: ':' is slicing
        if not expr.strip():
            raise UsageError(f"empty {{}} in {where}: put a variable name inside, or write {{{{}}}} for literal braces")
        try:
            value = eval(expr, ns)  # noqa: S307 - the user's own notebook namespace, like IPython
        except NameError as e:
            name = getattr(e, "name", None) or expr
            raise UsageError(f"{{{expr}}} in {where}: no variable named {name!r} in the notebook "
                             f"(write {{{{ and }}}} for literal braces)") from None
        except SyntaxError:
            raise UsageError(f"{{{expr}}} in {where} is not a variable name or expression "
                             f"(write {{{{ and }}}} for literal braces)") from None
        except Exception as e:
            raise UsageError(f"{{{expr}}} in {where} failed: {type(e).__name__}: {e}") from None
        if conversion == "r":
            value = repr(value)
        elif conversion == "a":
            value = ascii(value)
        out.append(str(value))
    return "".join(out)


_TOKEN = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'[^']*'|\S+)""")


def _unquote(tok: str) -> str:
    if len(tok) >= 2 and tok[0] == tok[-1] and tok[0] in "\"'":
        inner = tok[1:-1]
        return re.sub(r'\\(["\\])', r"\1", inner) if tok[0] == '"' else inner
    return tok


def split_options(line: str, parser: argparse.ArgumentParser) -> Tuple[List[str], str]:
    """Split `--opt value ... prompt words` into (option tokens, the rest verbatim).

    Options end at the first word that does not start with '-' (or at `--`); the rest of the line
    is kept as typed, so a prompt like `a cat's "best" hat` needs no quoting.
    """
    argv: List[str] = []
    pos = 0
    actions = parser._option_string_actions
    while True:
        m = _TOKEN.match(line, pos)
        if not m:
            return argv, ""
        raw = m.group(1)
        if raw == "--":
            return argv, line[m.end():].strip()
        if not raw.startswith("-") or raw == "-" or re.match(r"^-\d", raw):
            return argv, line[m.start(1):].strip()
        pos = m.end()
        argv.append(raw)
        if "=" in raw:
            continue
        action = actions.get(raw)
        if action is None or action.nargs == 0:
            continue  # a flag, an attached short value (-n2) or an unknown option argparse will report
        v = _TOKEN.match(line, pos)
        if v:
            argv.append(_unquote(v.group(1)))
            pos = v.end()


def _pil_like(value: Any) -> bool:
    return hasattr(value, "save") and hasattr(value, "mode") and hasattr(value, "size")


def resolve_image(spec: str, ns: Dict[str, Any], *, option: str = "--image") -> InputImage:
    """`--image SPEC`: a notebook variable (PIL image, Artifact, ImageResponse -> its first image,
    bytes, a path string) or a file path. Raises UsageError with one line."""
    label = f"{option} {spec}"
    value: Any
    if spec.isidentifier() and spec in ns:
        value = ns[spec]
    elif Path(spec).expanduser().is_file():
        value = str(Path(spec).expanduser())
    else:
        try:
            compile(spec, "<image>", "eval")
            is_expr = not spec.isidentifier() and any(c in spec for c in ".[(")
        except SyntaxError:
            is_expr = False
        value = None
        if is_expr:
            env = ns
            if "history" not in ns:  # --image history[3] works without importing it
                env = {**ns, "history": history}
            try:
                value = eval(spec, env)  # noqa: S307 - e.g. --image resp.artifacts[1]
            except Exception:
                value = None
        if value is None:
            raise UsageError(f"{label}: no notebook variable named {spec!r} and no such file")
    if isinstance(value, LoadedImage):
        value = value.artifact
    if isinstance(value, HistoryEntry):
        arts = value.artifacts
        if not arts:
            raise UsageError(f"{label}: history entry #{value.number} has no images"
                             + (f" (it failed: {value.error})" if value.error else ""))
        value = arts[0]
    if isinstance(value, ImageResponse):
        if not value.artifacts:
            raise UsageError(f"{label}: that ImageResponse has no images"
                             + (f" (it failed: {value.error})" if value.error else ""))
        value = value.artifacts[0]
    if not isinstance(value, (InputImage, Artifact, bytes, bytearray, memoryview, str, os.PathLike)) \
            and not _pil_like(value):
        raise UsageError(f"{label}: the variable holds a {type(value).__name__}; expected a PIL image, an "
                         "Artifact, an ImageResponse, bytes or a file path")
    try:
        return InputImage.from_any(value, label=label)
    except RequestError as e:
        raise UsageError(str(e)) from None


def save_artifacts(resp: ImageResponse, directory: os.PathLike | str, prompt: str) -> Tuple[List[str], List[str]]:
    """Kept for compatibility: `jupyter_imagegen.saving.save_response` (metadata + sidecar)."""
    res = save_response(resp, directory, prompt=prompt)
    return res.paths, res.errors


def build_request(args: argparse.Namespace, prompt: str, images: Sequence[InputImage],
                  mask: Optional[InputImage]) -> ImageRequest:
    headers = {FAULT_HEADER: args.fault[0]} if args.fault else {}
    stream, partials = _stream_options(args)
    return ImageRequest(
        prompt=prompt, model=args.model, api_type=args.api, base_url=args.base_url, n=args.n,
        size=args.size, aspect_ratio=args.aspect, quality=args.quality, output_format=args.format,
        background=args.background, images=list(images), mask=mask, headers=headers,
        timeout=args.timeout, max_attempts=None if args.retries is None else args.retries + 1,
        seed=args.seed, fresh=args.fresh, cache=False if (args.no_cache or args.fault) else None,
        stream=stream, partial_images=partials,
    )


def _stream_options(args: argparse.Namespace) -> Tuple[bool, Optional[int]]:
    """--stream / --partials K -> (stream, partial_images); --partials implies --stream."""
    stream = bool(getattr(args, "stream", False)) or getattr(args, "partials", None) is not None
    if not stream:
        return False, None
    return True, DEFAULT_PARTIALS if args.partials is None else args.partials


class FaultSequence:
    """--fault SPEC...: the first attempt carries the first fault, each retry the next one.

    The client reads `request.headers` on every attempt and emits api_retry before waiting, so
    advancing on api_retry changes the header of the next attempt.
    """

    def __init__(self, request: ImageRequest, faults: Sequence[str]):
        self.request, self.faults, self.step = request, list(faults), 0

    def on_event(self, event) -> None:
        if self.faults and event.type == ev.API_RETRY:
            self.step += 1
            if self.step < len(self.faults):
                self.request.headers[FAULT_HEADER] = self.faults[self.step]
            else:
                self.request.headers.pop(FAULT_HEADER, None)


#: option dest -> ImageRequest field, for --from / --rerun overrides
_OVERRIDES = {"model": "model", "api": "api_type", "base_url": "base_url", "n": "n", "size": "size",
              "aspect": "aspect_ratio", "quality": "quality", "format": "output_format",
              "background": "background", "timeout": "timeout", "seed": "seed"}


def explicit_options(argv: Sequence[str], parser: argparse.ArgumentParser) -> set:
    """The dests of the options actually written on the line (not argparse defaults)."""
    actions = parser._option_string_actions
    found = set()
    for tok in argv:
        if not tok.startswith("-") or re.match(r"^-\d", tok):
            continue
        action = actions.get(tok.split("=", 1)[0])
        if action is None and not tok.startswith("--"):
            action = actions.get(tok[:2])          # -n2
        if action is not None:
            found.add(action.dest)
    return found


def apply_overrides(base: ImageRequest, args: argparse.Namespace, explicit: set, prompt: str,
                    images: Sequence[InputImage], mask: Optional[InputImage]) -> ImageRequest:
    """--from / --rerun: the recorded request, with what the line (and the cell body) says on top."""
    changes: Dict[str, Any] = {}
    for dest, name in _OVERRIDES.items():
        if dest in explicit:
            changes[name] = getattr(args, dest)
    if "size" in explicit and "aspect" not in explicit:
        changes["aspect_ratio"] = None       # one or the other
    if "aspect" in explicit and "size" not in explicit:
        changes["size"] = None
    if "api" in explicit and "model" not in explicit and args.api != base.api_type:
        changes["model"] = None              # the recorded model belongs to the other API
    if "retries" in explicit:
        changes["max_attempts"] = args.retries + 1
    if "stream" in explicit or "partials" in explicit:
        changes["stream"], changes["partial_images"] = _stream_options(args)
    if prompt:
        changes["prompt"] = prompt
    if "image" in explicit:
        changes["images"] = list(images)
    if "mask" in explicit:
        changes["mask"] = mask
    headers = {k: v for k, v in (base.headers or {}).items() if k.lower() != FAULT_HEADER.lower()}
    if args.fault:
        headers[FAULT_HEADER] = args.fault[0]
    changes.update(headers=headers, fresh=args.fresh, token=None,
                   cache=False if (args.no_cache or args.fault) else None)
    return base.replace(**changes)


_COMPARE_TYPES = {"model": str.strip, "size": _size, "aspect": str.strip, "api": _api,
                  "quality": _choice(QUALITIES, "quality")}


def parse_compare_options(specs: Sequence[str]) -> Dict[str, List[str]]:
    """`--compare model=a,b --compare size=...` -> {"model": [...], "size": [...]} (UsageError)."""
    dims: Dict[str, List[str]] = {}
    for spec in specs:
        try:
            key, values = parse_compare_spec(spec)
            values = [_COMPARE_TYPES[key](v) for v in values]
        except ValueError as e:
            raise UsageError(str(e)) from None
        except argparse.ArgumentTypeError as e:
            raise UsageError(f"--compare {spec}: {e}") from None
        for v in values:
            if v not in dims.setdefault(key, []):
                dims[key].append(v)
    return dims


# --------------------------------------------------------------------------------------------
# the magic
# --------------------------------------------------------------------------------------------
_EPILOG = """\
examples:
  %%imagegen -n 4 --aspect 16:9 --out foxes
  a red fox in fresh snow, {style}

  %imagegen --size 1024x1024 --save images/ a lighthouse at dusk
  %%imagegen --image foxes --image sketch.png
  make the fox wear the hat from the second image

  %%imagegen --compare model=gpt-image-1,gpt-image-1-mini --compare size=1024x1024,1536x1024
  a red fox in fresh snow
  ---
  a lighthouse at dusk

  %%imagegen --stream --partials 3          (watch it form; interrupt to stop a bad one early)
  a red fox in fresh snow

  %imagegen --from images/20250101-120000-a-lighthouse-at-dusk-1.png --size 1536x1024
  %imagegen --rerun 3 --fresh          (entry 3 of %imagegen_history; --image history[3] uses its image)

configuration: IMAGE_AUTH_TOKEN (required), IMAGE_API_TYPE, IMAGE_BASE_URL, IMAGE_MODEL,
IMAGE_TIMEOUT, IMAGE_MAX_RETRIES; the options override them for one call. Identical requests
are answered from the on-disk cache (IMAGE_CACHE_DIR) at no cost: --fresh asks again,
--no-cache or IMAGE_CACHE=0 skips it.
The result is returned (use `_`), and `--out VAR` stores it: VAR.image is a PIL image,
VAR.artifacts the full-size images, VAR.paths the saved files (a CompareResult for --compare:
VAR.grid[row][col] is an ImageResponse).
"""


@magics_class
class ImageGenMagics(Magics):
    """The %%imagegen magic. One instance per shell."""

    def __init__(self, shell=None):
        super().__init__(shell)
        self._shown: List[ImageResponse] = []

    @no_var_expand
    @magic_arguments()
    @kwds(epilog=_EPILOG)
    @argument("--api", type=_api, metavar="API",
              help="wire format: openrouter_chat, openai_images or openai_responses (default IMAGE_API_TYPE)")
    @argument("--model", metavar="MODEL", help="model name (default IMAGE_MODEL, else the API's default)")
    @argument("--base-url", dest="base_url", type=_base_url, metavar="URL",
              help="API base URL, e.g. https://api.openai.com/v1 (default IMAGE_BASE_URL)")
    @argument("-n", type=_count, default=1, metavar="N", help="how many images (default 1)")
    @argument("--size", type=_size, metavar="WxH",
              help="image size, e.g. 1024x1024, 1536x1024 or auto (OpenRouter: 1K, 2K, 4K)")
    @argument("--aspect", type=str.strip, metavar="RATIO", help="aspect ratio W:H, e.g. 16:9 (instead of --size)")
    @argument("--quality", type=_choice(QUALITIES, "quality"), metavar="Q", help=f"{', '.join(QUALITIES)}")
    @argument("--format", type=_choice(tuple(FORMATS), "format", FORMATS), metavar="FMT",
              help="output format: png, jpeg or webp")
    @argument("--background", type=_choice(BACKGROUNDS, "background"), metavar="BG",
              help="transparent, opaque or auto")
    @argument("--image", action="append", default=[], metavar="PATH_OR_VAR",
              help="an input image to edit or combine (repeatable): a file, or a notebook variable "
                   "holding a PIL image, an Artifact, an ImageResponse (its first image) or bytes")
    @argument("--mask", metavar="PATH_OR_VAR", help="a mask for the edit (transparent = area to change)")
    @argument("--out", type=_identifier, metavar="VAR", help="store the ImageResponse in this notebook variable")
    @argument("--save", metavar="DIR",
              help="write the full-size images to DIR (created if needed) as timestamp-prompt-N.ext, with the "
                   "prompt and settings embedded in the file and in a JSON sidecar (timestamp-prompt-N.json)")
    @argument("--compare", action="append", default=[], metavar="KEY=V1,V2",
              help="compare side by side (repeatable): model=a,b,c, size=..., aspect=..., api=..., quality=...; "
                   "several prompts: separate them with a line '---' in the cell. Every combination runs "
                   "concurrently into one labelled grid")
    @argument("--from", dest="from_path", metavar="PATH",
              help="re-run the request that made a saved image (read from its sidecar or embedded metadata); "
                   "options on the line override, a cell body replaces the prompt")
    @argument("--rerun", type=_whole, metavar="N",
              help="re-run entry N of %%imagegen_history (options on the line override)")
    @argument("--stream", action="store_true",
              help="show the image forming: the API streams partial images, each replacing the last in "
                   f"place until the final one (default {DEFAULT_PARTIALS} partials; OpenRouter streams the "
                   "final image only). Interrupt the kernel to stop a bad one early")
    @argument("--partials", type=_partials, metavar="K",
              help="how many partial images to stream, 0-3 (implies --stream; 0 streams the final image only)")
    @argument("--retries", type=_retries, metavar="N", help="retries after the first attempt (default 2)")
    @argument("--timeout", type=_seconds, metavar="S", help="seconds allowed for one attempt (default 120)")
    @argument("--preview-size", dest="preview_size", type=_pixels, default=DEFAULT_PREVIEW_MAX_SIDE, metavar="PX",
              help=f"longest side of the previews embedded in the notebook (default {DEFAULT_PREVIEW_MAX_SIDE}; "
                   "0 = full size); the saved and returned images are always full size")
    @argument("--quiet", action="store_true", help="no event log: only the images (and errors)")
    @argument("--seed", type=_whole, metavar="N", help="a seed: another seed is another sample (and cache entry)")
    @argument("--fresh", action="store_true", help="ignore a cached answer: call the API and store the new result")
    @argument("--no-cache", dest="no_cache", action="store_true",
              help="neither read nor write the request cache (IMAGE_CACHE=0 turns it off for good)")
    @argument("--fault", action="append", default=[], metavar="SPEC",
              help="emulator only (real APIs ignore it): make the built-in emulator fail an attempt, e.g. "
                   "'429:retry_after=2', '503' or 'reset'. Repeatable: the first attempt gets the first "
                   "fault, the first retry the second, and so on; later attempts are normal. "
                   "Sent as the X-Emulator-Fault header; implies --no-cache")
    @argument("prompt", nargs="*", help="line form only: the prompt (the cell form takes it from the cell body)")
    @line_cell_magic
    def imagegen(self, line: str, cell: Optional[str] = None):
        """Generate images from a prompt: the cell body, or the rest of the line for %imagegen.

        `{name}` in the prompt is replaced by the notebook variable `name`.
        """
        __tracebackhide__ = True
        try:
            return self._run(line, cell)
        except GenerationCancelled as e:
            # re-raised here so the traceback ends at the magic, not deep in the runtime (in a
            # kernel, `_show_cancelled` shows it as one line)
            raise e.with_traceback(None) from None

    # -- implementation -------------------------------------------------------------------------
    def _parse(self, line: str, cell: Optional[str]) -> Tuple[argparse.Namespace, str, set]:
        ns = self.shell.user_ns
        parser = self.imagegen.parser
        argv, rest = split_options(line, parser)
        argv = [expand_variables(tok, ns, where="the options") for tok in argv]
        try:
            args = parser.parse_args(argv)
        except UsageError as e:
            raise UsageError(f"{e}  (%imagegen? lists the options)") from None
        if cell is None:
            m = re.fullmatch(r"""(["'])(.*)\1""", rest, re.S)
            source, where = (m.group(2) if m else rest), "the prompt"
        else:
            if rest:
                raise UsageError(f"unexpected text after the options: {rest!r}; the prompt goes in the "
                                 "cell body (quote option values that contain spaces)")
            source, where = cell, "the prompt"
        prompt = expand_variables(source, ns, where=where).strip()
        if not prompt and not args.from_path and args.rerun is None:
            raise UsageError("empty prompt: write what the image should show "
                             + ("in the cell body below %%imagegen" if cell is not None else "after %imagegen"))
        return args, prompt, explicit_options(argv, parser)

    def _recorded_request(self, args: argparse.Namespace) -> Tuple[Optional[ImageRequest], str]:
        """--from PATH / --rerun N: the request to start from, and a label for the log."""
        if args.from_path and args.rerun is not None:
            raise UsageError("use either --from PATH or --rerun N, not both")
        if args.from_path:
            spec = args.from_path
            try:
                loaded = load(spec)
            except (OSError, ValueError) as e:
                raise UsageError(f"--from {spec}: {e}") from None
            if not loaded.metadata:
                raise UsageError(f"--from {spec}: the image carries no jupyter-imagegen metadata "
                                 "(no sidecar .json next to it, nothing embedded)")
            try:
                base = loaded.to_request(**({"images": [], "mask": None} if args.image else {}))
            except FileNotFoundError as e:
                raise UsageError(f"--from {spec}: {e}; give it again with --image") from None
            except (ValueError, TypeError) as e:
                raise UsageError(f"--from {spec}: {e}") from None
            return base, f"re-run of {Path(spec).name}"
        if args.rerun is not None:
            try:
                entry = history[args.rerun]
                base = entry.to_request()
            except (IndexError, TypeError, ValueError) as e:
                raise UsageError(f"--rerun {args.rerun}: {e}") from None
            return base, f"re-run of #{entry.number}"
        return None, ""

    def _run(self, line: str, cell: Optional[str]):
        __tracebackhide__ = True
        args, prompt, explicit = self._parse(line, cell)
        ns = self.shell.user_ns
        images = [resolve_image(spec, ns) for spec in args.image]
        mask = resolve_image(args.mask, ns, option="--mask") if args.mask else None
        compare_dims = parse_compare_options(args.compare)
        prompts = split_prompts(prompt) if cell is not None else ([prompt] if prompt else [])
        recorded, label = self._recorded_request(args)
        if recorded is not None:
            request = apply_overrides(recorded, args, explicit, prompts[0] if len(prompts) == 1 else "", images, mask)
        else:
            request = build_request(args, prompts[0], images, mask)
        try:
            client = runtime.client()
        except ConfigError as e:
            raise UsageError(str(e)) from None
        if args.save:  # checked now (created when the images are there), not after paying for them
            problem = save_dir_problem(args.save)
            if problem:
                raise UsageError(f"--save {args.save}: {problem}")

        if compare_dims or len(prompts) > 1:
            return self._compare(args, explicit, request, prompts, compare_dims, client)

        # the log appears with the first event: the client validates the request and the token
        # before its first event, so a request refused before sending shows one line only
        view = GenerationView(quiet=args.quiet, preview_max_side=args.preview_size or None,
                              redact=[client.config.token], title=f"imagegen · {label}" if label else "imagegen")
        faults = FaultSequence(request, args.fault)
        try:
            resp = runtime.run(request, view=view, client=client, save=args.save, source="magic",
                               on_event=faults.on_event)
        except (RequestError, ConfigError) as e:  # bad request / no token: nothing was sent
            raise UsageError(refusal_message(e)) from None
        if args.out:
            ns[args.out] = resp
        # the gallery is on screen: the Out[] of this cell shows one line instead of a second copy
        mark_shown(resp)
        self._shown.append(resp)
        return resp

    def _compare(self, args: argparse.Namespace, explicit: set, request: ImageRequest, prompts: List[str],
                 dims: Dict[str, List[str]], client):
        """--compare / several prompts: every combination at once, one live grid."""
        faults: Dict[str, FaultSequence] = {}

        def on_start(result) -> None:
            if args.fault:
                for c in result.cells:
                    faults[c.request.request_id] = FaultSequence(c.request, args.fault)

        def on_event(event) -> None:
            fs = faults.get(event.request_id)
            if fs is not None:
                fs.on_event(event)

        preview = args.preview_size if "preview_size" in explicit else GRID_PREVIEW_MAX_SIDE
        try:
            result = runtime.block(lambda post: acompare(
                prompts=prompts if len(prompts) > 1 else None, models=dims.get("model"), sizes=dims.get("size"),
                apis=dims.get("api"), aspects=dims.get("aspect"), qualities=dims.get("quality"), base=request,
                client=client, save=args.save, live=True, preview_size=preview or None, on_event=on_event,
                on_start=on_start, redact=[client.config.token], ui=post))
        except (RequestError, ConfigError) as e:  # no cell could be sent: nothing was sent or shown
            raise UsageError(refusal_message(e)) from None
        if args.out:
            self.shell.user_ns[args.out] = result
        mark_shown(result)
        self._shown.append(result)
        return result

    @magic_arguments()
    @argument("-n", type=_count, default=20, metavar="N", help="show the latest N entries (default 20)")
    @argument("--all", action="store_true", help="show every entry kept (the latest 500)")
    @argument("--clear", action="store_true", help="forget the history")
    @line_magic
    def imagegen_history(self, line: str = ""):
        """Show the kernel's image requests as a table with thumbnails (newest first).

        From Python: `from jupyter_imagegen import history`; `history[3].rerun()` sends entry 3
        again, `history[3].artifacts[0]` is its first image (`--image history[3]` in the magic),
        `%imagegen --rerun 3` re-runs it with other options on top.
        """
        try:
            args = parse_argstring(self.imagegen_history, line)
        except UsageError as e:
            raise UsageError(f"{e}  (%imagegen_history? lists the options)") from None
        if args.clear:
            n = len(history)
            history.clear()
            print(f"imagegen history: {n} entr{'y' if n == 1 else 'ies'} forgotten")
            return None
        history.show(None if args.all else args.n)
        return None

    def _post_run_cell(self, *_: Any) -> None:
        """After the cell: the returned response displays in full again (e.g. typing `_`)."""
        shown, self._shown = self._shown, []
        for resp in shown:
            clear_shown(resp)


def _show_cancelled(shell, etype, value, tb, tb_offset=None):
    """`GenerationCancelled` in a cell: one line, no traceback (the cell still ends in error, so
    the cells queued after it are not run, as after any interrupt)."""
    shell._showtraceback(etype, value, [f"{etype.__name__}: {value}"])


# Abbreviated long options (--qual for --quality) would make typos silently mean something else.
ImageGenMagics.imagegen.parser.allow_abbrev = False
ImageGenMagics.imagegen_history.parser.allow_abbrev = False

_loaded: Dict[int, ImageGenMagics] = {}


def load_ipython_extension(ipython) -> None:
    """`%load_ext jupyter_imagegen`: register %%imagegen / %imagegen."""
    if id(ipython) in _loaded:
        return
    magics = ImageGenMagics(ipython)
    ipython.register_magics(magics)
    ipython.events.register("post_run_cell", magics._post_run_cell)
    if not ipython.custom_exceptions:  # never replace a handler someone else set
        ipython.set_custom_exc((GenerationCancelled,), _show_cancelled)
    _loaded[id(ipython)] = magics


def unload_ipython_extension(ipython) -> None:
    """`%unload_ext jupyter_imagegen`: remove the magics and close the shared HTTP session."""
    magics = _loaded.pop(id(ipython), None)
    if magics is not None:
        try:
            ipython.events.unregister("post_run_cell", magics._post_run_cell)
        except ValueError:
            pass
        magics._post_run_cell()
    if ipython.custom_exceptions == (GenerationCancelled,):
        ipython.set_custom_exc((), None)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("imagegen", None)
    ipython.magics_manager.magics["line"].pop("imagegen_history", None)
    runtime.close()
