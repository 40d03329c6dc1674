"""From a magic's line to an `ImageRequest`: the option value types, the line splitter,
`{variable}` expansion, input images named by variable or path, --from/--rerun overrides, the
--fault sequence and --compare specs. Shared by ``%%imagegen`` and ``%imagegen_form``; every
mistake is one readable `UsageError` line and nothing is sent.
"""
from __future__ import annotations

import argparse
import difflib
import keyword
import os
import re
import string
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from . import events as ev
from . import history
from .compare import parse_compare_spec
from .config import base_url_problem, validate_api_type, validate_base_url
from .errors import ConfigError, RequestError
from .history import HistoryEntry
from .loading import LoadedImage
from .model import Artifact, ImageRequest, ImageResponse, InputImage

__all__ = ["FAULT_HEADER", "API_ALIASES", "QUALITIES", "FORMATS", "BACKGROUNDS", "DEFAULT_PARTIALS",
           "expand_variables", "split_options", "resolve_image", "build_request", "explicit_options",
           "apply_overrides", "parse_compare_options", "FaultSequence", "stream_options",
           "opt_api", "opt_base_url", "opt_count", "opt_retries", "opt_whole", "opt_seconds", "opt_pixels",
           "opt_partials", "opt_size", "opt_choice", "opt_identifier", "whole_number", "request_arguments", "parse_line"]

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
def opt_api(value: str) -> str:
    v = value.strip().lower().replace("-", "_")
    v = API_ALIASES.get(v, v)
    try:
        return validate_api_type(v, "--api")
    except ConfigError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a known API; use openrouter_chat, openai_images or openai_responses") from None


def opt_base_url(value: str) -> str:
    problem = base_url_problem(value)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return validate_base_url(value, "--base-url")


def whole_number(expected: str, low: Optional[int] = None, high: Optional[int] = None,
                 out_of_range: Optional[str] = None) -> Callable[[str], int]:
    """An option type for a whole number in [low, high]: "expected <expected>, got ..." when it
    is not one; `out_of_range` (with ``{n}``) when it is outside."""
    def check(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value!r}") from None
        if (low is not None and n < low) or (high is not None and n > high):
            raise argparse.ArgumentTypeError((out_of_range or f"expected {expected}, got {{n}}").format(n=n))
        return n
    return check


opt_count = whole_number("a whole number of images (1, 2, 4...)", low=1,
                         out_of_range="ask for at least 1 image, got {n}")
opt_retries = whole_number("a whole number of retries (0, 1, 2...)", low=0,
                           out_of_range="retries cannot be negative, got {n}")
opt_whole = whole_number("a whole number")
opt_pixels = whole_number("a number of pixels (0 = full size)", low=0)
opt_partials = whole_number("0 to 3 partial images", low=0, high=3)


def opt_seconds(value: str) -> float:
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not s > 0 or s != s or s == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return s


#: partial images shown by --stream when --partials is not given
DEFAULT_PARTIALS = 2


def opt_size(value: str) -> str:
    """Normalised only (1024X1024 / 1024×1024 -> 1024x1024, 2k -> 2K); which sizes exist depends
    on the API and the model, so the provider checks it (before anything is sent)."""
    v = value.strip().lower().replace("×", "x")
    return v.upper() if v.endswith("k") else v


def opt_choice(options: Sequence[str], what: str, mapping: Optional[Dict[str, str]] = None):
    def check(value: str) -> str:
        v = value.strip().lower()
        if mapping is not None and v in mapping:
            return mapping[v]
        if v in options:
            return v
        raise argparse.ArgumentTypeError(f"{value!r} is not a {what}; use one of: {', '.join(options)}")
    return check


def opt_identifier(value: str) -> str:
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
        _check_known(raw, parser)
        if "=" in raw:
            continue
        action = actions.get(raw)
        if action is None or action.nargs == 0:
            continue  # a flag, an attached short value (-n2) or an unknown option argparse will report
        v = _TOKEN.match(line, pos)
        if v:
            argv.append(_unquote(v.group(1)))
            pos = v.end()


def _check_known(token: str, parser: argparse.ArgumentParser) -> None:
    """An option the magic does not have is a UsageError that names the closest one it has:
    "unknown option --sise; did you mean --size?"."""
    name = token.split("=", 1)[0]
    actions = parser._option_string_actions
    if name in actions or (not name.startswith("--") and name[:2] in actions):   # -n2: a short option's value
        return
    close = [name[1:]] if name.startswith("--") and name[1:] in actions else \
        difflib.get_close_matches(name, [o for o in actions if o.startswith("--")], n=1, cutoff=0.6)
    if not close and not name.startswith("--"):
        close = difflib.get_close_matches("-" + name, [o for o in actions if o.startswith("--")], n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise UsageError(f"unknown option {name}{hint}")


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


def build_request(args: argparse.Namespace, prompt: str, images: Sequence[InputImage],
                  mask: Optional[InputImage]) -> ImageRequest:
    headers = {FAULT_HEADER: args.fault[0]} if args.fault else {}
    stream, partials = stream_options(args)
    return ImageRequest(
        prompt=prompt, model=args.model, api_type=args.api, base_url=args.base_url, n=args.n,
        size=args.size, aspect_ratio=args.aspect, quality=args.quality, output_format=args.format,
        background=args.background, images=list(images), mask=mask, headers=headers,
        timeout=args.timeout, max_attempts=None if args.retries is None else args.retries + 1,
        seed=args.seed, fresh=args.fresh, cache=False if (args.no_cache or args.fault) else None,
        stream=stream, partial_images=partials,
    )


def stream_options(args: argparse.Namespace) -> Tuple[bool, Optional[int]]:
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
        changes["stream"], changes["partial_images"] = stream_options(args)
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


_COMPARE_TYPES = {"model": str.strip, "size": opt_size, "aspect": str.strip, "api": opt_api,
                  "quality": opt_choice(QUALITIES, "quality")}


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
# the options %%imagegen and %imagegen_form share (as IPython's script magics share theirs)
# --------------------------------------------------------------------------------------------
_SHARED_ARGUMENTS = [
    argument("--api", type=opt_api, metavar="API",
             help="wire format: openrouter_chat, openai_images or openai_responses (default IMAGE_API_TYPE)"),
    argument("--model", metavar="MODEL", help="model name (default IMAGE_MODEL, else the API's default)"),
    argument("-n", type=opt_count, default=1, metavar="N", help="how many images (default 1)"),
    argument("--size", type=opt_size, metavar="WxH",
             help="image size, e.g. 1024x1024, 1536x1024 or auto (OpenRouter: 1K, 2K, 4K)"),
    argument("--aspect", type=str.strip, metavar="RATIO", help="aspect ratio W:H, e.g. 16:9 (instead of --size)"),
    argument("--quality", type=opt_choice(QUALITIES, "quality"), metavar="Q", help=f"{', '.join(QUALITIES)}"),
    argument("--image", action="append", default=[], metavar="PATH_OR_VAR",
             help="an input image to edit or combine (repeatable): a file, or a notebook variable "
                  "holding a PIL image, an Artifact, an ImageResponse (its first image) or bytes"),
    argument("--out", type=opt_identifier, metavar="VAR", help="store the result in this notebook variable"),
    argument("--save", metavar="DIR",
             help="write the full-size images to DIR (created if needed) as timestamp-prompt-N.ext, with the "
                  "prompt and settings embedded in the file and in a JSON sidecar (timestamp-prompt-N.json)"),
    argument("--stream", action="store_true",
             help="show the image forming: the API streams partial images, each replacing the last in "
                  f"place until the final one (default {DEFAULT_PARTIALS} partials; OpenRouter streams the "
                  "final image only). Interrupt the kernel to stop a bad one early"),
    argument("--partials", type=opt_partials, metavar="K",
             help="how many partial images to stream, 0-3 (implies --stream; 0 streams the final image only)"),
]


def request_arguments(func):
    """Add the shared request options to a magic (use below ``@magic_arguments()``)."""
    for arg in reversed(_SHARED_ARGUMENTS):
        func = arg(func)
    return func


def parse_line(parser: argparse.ArgumentParser, line: str, ns: Dict[str, Any],
               magic: str) -> Tuple[argparse.Namespace, str, set]:
    """Split `line` into options and the rest (kept verbatim), expand `{variables}` in the
    options, parse them: (args, the rest, the options written on the line). UsageError."""
    try:
        argv, rest = split_options(line, parser)
        argv = [expand_variables(tok, ns, where="the options") for tok in argv]
        args = parser.parse_args(argv)
    except UsageError as e:
        raise UsageError(f"{e}  ({magic}? lists the options)") from None
    return args, rest, explicit_options(argv, parser)
