"""`%%imagegen` / `%imagegen`: generate images from a notebook cell.

    %load_ext jupyter_imagegen

    %%imagegen -n 4 --aspect 16:9 --out fox
    a red fox in fresh snow, {style}

    %imagegen --size 1024x1024 a lighthouse at dusk

Options come from IPython's `magic_arguments`, so `%%imagegen?` shows them. The cell body (or,
for the line form, the text after the options) is the prompt; `{name}` / `{expr}` are replaced
by notebook values as IPython does for shell commands (`{{` and `}}` for literal braces), and an
unknown name is an error rather than left as is. Every mistake in the options, the prompt or the
configuration is one line ("unknown option --sise; did you mean --size?") and nothing is sent; it
is shown as an error box and the cell does not fail, so JupyterLab's Run All goes on past it
(``--raise-error``, or ``%config ImageGenMagics.raise_errors = True``: a ``UsageError`` instead).

The magic blocks until the images are there (so "Run all" stays in order), shows a live event
log updated in place, then the images (each a standard image output; the gallery on the first);
it returns the ImageResponse (so ``_`` and ``Out[n]`` work) and the cell shows no ``Out[]`` line.
Interrupt the kernel to cancel: the request is cancelled cleanly and the cell ends with one line,
``GenerationCancelled: ...``.
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
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, kwds, magic_arguments, parse_argstring
from IPython.display import display
from traitlets import Bool

from . import history
from .compare import GRID_PREVIEW_MAX_SIDE, acompare, split_prompts
from .display import DEFAULT_PREVIEW_MAX_SIDE, GenerationView, clear_shown, mark_shown, refusal_message, show_refusal
from .errors import ConfigError, GenerationCancelled, RequestError
from .loading import load
from .magic_options import (BACKGROUNDS, FORMATS, FaultSequence, apply_overrides, build_request,
                            expand_variables, opt_base_url, opt_choice, opt_count, opt_pixels,
                            opt_retries, opt_seconds, opt_whole, parse_compare_options, parse_line,
                            request_arguments, resolve_image)
from .model import ImageRequest, ImageResponse
from .runtime import one_line_cancel, runtime, save_dir_problem
from .widget import ImageGenForm

__all__ = ["ImageGenMagics", "load_ipython_extension", "unload_ipython_extension"]

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

    raise_errors = Bool(False, help=(
        "Raise UsageError for a mistake in a magic's options or prompt (the cell fails, so Run All "
        "stops there) instead of showing it as an error box (the default: the next cells still run). "
        "`%config ImageGenMagics.raise_errors = True`; --raise-error does it for one cell.")).tag(config=True)

    def __init__(self, shell=None):
        super().__init__(shell)
        self._shown: List[ImageResponse] = []

    def _refused(self, error: UsageError, line: str) -> None:
        """A mistake in a cell (nothing was sent): shown as an error box, so Run All goes on past
        it, or raised (`raise_errors`, --raise-error) so the cell fails."""
        if self.raise_errors or _RAISE_ERROR.search(line or ""):
            raise error
        show_refusal(str(error))

    @no_var_expand
    @magic_arguments()
    @kwds(epilog=_EPILOG)
    @request_arguments
    @argument("--base-url", dest="base_url", type=opt_base_url, metavar="URL",
              help="API base URL, e.g. https://api.openai.com/v1 (default IMAGE_BASE_URL)")
    @argument("--format", type=opt_choice(tuple(FORMATS), "format", FORMATS), metavar="FMT",
              help="output format: png, jpeg or webp")
    @argument("--background", type=opt_choice(BACKGROUNDS, "background"), metavar="BG",
              help="transparent, opaque or auto")
    @argument("--mask", metavar="PATH_OR_VAR", help="a mask for the edit (transparent = area to change)")
    @argument("--compare", action="append", default=[], metavar="KEY=V1,V2",
              help="compare side by side (repeatable): model=a,b,c, size=..., aspect=..., api=..., quality=...; "
                   "several prompts: separate them with a line '---' in the cell. Every combination runs "
                   "concurrently into one labelled grid")
    @argument("--from", dest="from_path", metavar="PATH",
              help="re-run the request that made a saved image (read from its sidecar or embedded metadata); "
                   "options on the line override, a cell body replaces the prompt")
    @argument("--rerun", type=opt_whole, metavar="N",
              help="re-run entry N of %%imagegen_history (options on the line override)")
    @argument("--retries", type=opt_retries, metavar="N", help="retries after the first attempt (default 2)")
    @argument("--timeout", type=opt_seconds, metavar="S", help="seconds allowed for one attempt (default 120)")
    @argument("--preview-size", dest="preview_size", type=opt_pixels, default=DEFAULT_PREVIEW_MAX_SIDE, metavar="PX",
              help=f"longest side of the previews embedded in the notebook (default {DEFAULT_PREVIEW_MAX_SIDE}; "
                   "0 = full size); the saved and returned images are always full size")
    @argument("--quiet", action="store_true", help="no event log: only the images (and errors)")
    @argument("--debug", action="store_true",
              help="an error box also shows the API's answer as it was sent (its raw body, key masked)")
    @argument("--seed", type=opt_whole, metavar="N", help="a seed: another seed is another sample (and cache entry)")
    @argument("--fresh", action="store_true", help="ignore a cached answer: call the API and store the new result")
    @argument("--no-cache", dest="no_cache", action="store_true",
              help="neither read nor write the request cache (IMAGE_CACHE=0 turns it off for good)")
    @argument("--raise-error", dest="raise_error", action="store_true",
              help="a mistake in this cell (an unknown option, a bad size, no key) raises UsageError, "
                   "so the cell fails and Run All stops; by default it is shown and the next cells run")
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
        except UsageError as e:
            return self._refused(e, line)
        except GenerationCancelled as e:
            # re-raised here so the traceback ends at the magic, not deep in the runtime (in a
            # kernel, `_show_cancelled` shows it as one line)
            raise e.with_traceback(None) from None

    # -- implementation -------------------------------------------------------------------------
    def _parse(self, line: str, cell: Optional[str]) -> Tuple[argparse.Namespace, str, set]:
        ns = self.shell.user_ns
        args, rest, explicit = parse_line(self.imagegen.parser, line, ns, "%imagegen")
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
        return args, prompt, explicit

    def _recorded_request(self, args: argparse.Namespace, explicit: set, config: Any
                          ) -> Tuple[Optional[ImageRequest], str, Any]:
        """--from PATH / --rerun N: the request to start from, a label for the log, and the
        loaded file (--from). A file's request goes to the configured API (`config`) unless
        --api / --base-url say otherwise: a file someone sent you cannot choose who gets your key."""
        if args.from_path and args.rerun is not None:
            raise UsageError("use either --from PATH or --rerun N, not both")
        if args.from_path:
            spec = args.from_path
            try:
                loaded = load(spec)
            except (OSError, ValueError) as e:
                raise UsageError(f"--from {spec}: {e}") from None
            if not loaded.metadata:
                raise UsageError(f"--from {spec}: " + (loaded.metadata_problem or "the image carries no "
                                 "jupyter-imagegen metadata (no sidecar .json next to it, nothing embedded)"))
            chosen = {"api_type": args.api} if "api" in explicit else {}
            try:
                base = loaded.to_request(config=config, **chosen,
                                         **({"images": [], "mask": None} if args.image else {}))
            except FileNotFoundError as e:
                raise UsageError(f"--from {spec}: {e}; give it again with --image") from None
            except (ValueError, TypeError) as e:
                raise UsageError(f"--from {spec}: {e}") from None
            return base, f"re-run of {Path(spec).name}", loaded
        if args.rerun is not None:
            try:
                entry = history[args.rerun]
                base = entry.to_request()
            except (IndexError, TypeError, ValueError) as e:
                raise UsageError(f"--rerun {args.rerun}: {e}") from None
            return base, f"re-run of #{entry.number}", None
        return None, "", None

    def _run(self, line: str, cell: Optional[str]):
        __tracebackhide__ = True
        args, prompt, explicit = self._parse(line, cell)
        ns = self.shell.user_ns
        images = [resolve_image(spec, ns) for spec in args.image]
        mask = resolve_image(args.mask, ns, option="--mask") if args.mask else None
        compare_dims = parse_compare_options(args.compare)
        prompts = split_prompts(prompt) if cell is not None else ([prompt] if prompt else [])
        try:
            client = runtime.client()
        except ConfigError as e:
            raise UsageError(str(e)) from None
        recorded, label, loaded = self._recorded_request(args, explicit, client.config)
        if recorded is not None:
            request = apply_overrides(recorded, args, explicit, prompts[0] if len(prompts) == 1 else "", images, mask)
        else:
            request = build_request(args, prompts[0], images, mask)
        destination = loaded.destination_note(request, client.config) if loaded is not None else None
        if args.save:  # checked now (created when the images are there), not after paying for them
            problem = save_dir_problem(args.save)
            if problem:
                raise UsageError(f"--save {args.save}: {problem}")

        if compare_dims or len(prompts) > 1:
            if destination:
                print(f"imagegen · {destination}")
            return self._compare(args, explicit, request, prompts, compare_dims, client)

        # the log appears with the first event: the client validates the request and the token
        # before its first event, so a request refused before sending shows one line only
        view = GenerationView(quiet=args.quiet, preview_max_side=args.preview_size or None, debug=args.debug,
                              redact=[client.config.token], title=f"imagegen · {label}" if label else "imagegen")
        if destination:
            view.note(destination, "warn")
        faults = FaultSequence(request, args.fault)
        try:
            resp = runtime.run(request, view=view, client=client, save=args.save, source="magic",
                               on_event=faults.on_event)
        except (RequestError, ConfigError) as e:  # bad request / no token: nothing was sent
            view.refused()
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
    @argument("-n", type=opt_count, default=20, metavar="N", help="show the latest N entries (default 20)")
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
            return self._refused(UsageError(f"{e}  (%imagegen_history? lists the options)"), line)
        if args.clear:
            n = len(history)
            history.clear()
            print(f"imagegen history: {n} entr{'y' if n == 1 else 'ies'} forgotten")
            return None
        history.show(None if args.all else args.n)
        return None

    @magic_arguments()
    @request_arguments
    @argument("prompt", nargs="*", help="the prompt to pre-fill")
    @line_magic
    def imagegen_form(self, line: str = ""):
        """Show an ImageGenForm with these fields pre-filled (the rest of the line is the prompt).

        `--stream` / `--partials K` tick "show progress" (K partial images); `--out VAR` keeps the
        form in VAR (VAR.value is the latest ImageResponse, VAR.results every result).
        """
        ns = self.shell.user_ns
        try:
            args, rest, _ = parse_line(self.imagegen_form.parser, line, ns, "%imagegen_form")
            images = [resolve_image(spec, ns) for spec in args.image]
            prompt = expand_variables(rest, ns) if rest else ""
            try:
                form = ImageGenForm(prompt=prompt, api_type=args.api, model=args.model, size=args.size,
                                    aspect_ratio=args.aspect, n=args.n, quality=args.quality, images=images,
                                    save_dir=args.save, show_progress=args.stream or args.partials is not None,
                                    **({} if args.partials is None else {"partial_images": args.partials}))
            except (RequestError, ConfigError) as e:
                raise UsageError(f"%imagegen_form: {e}") from None
        except UsageError as e:
            return self._refused(e, line)
        if args.out:
            ns[args.out] = form
        display(form)
        return None

    def _post_run_cell(self, *_: Any) -> None:
        """After the cell: the returned response displays in full again (e.g. typing `_`)."""
        shown, self._shown = self._shown, []
        for resp in shown:
            clear_shown(resp)


#: --raise-error written on a magic's line (found even when the line does not parse)
_RAISE_ERROR = re.compile(r"(?:^|\s)--raise-error(?=\s|$)")


def _usage_first(magic, usage: str) -> None:
    """`%%imagegen?` starts with the usage line (`%%imagegen [options]`), then the description
    and the options, instead of magic_arguments' `::` block that lists every option in one go."""
    parser = magic.parser
    parser.usage = usage.replace("%", "%%")   # argparse formats the usage with %(prog)s
    help_text = parser.format_help()
    magic.__doc__ = help_text[help_text.index(usage):] if usage in help_text else help_text


_usage_first(ImageGenMagics.imagegen, "%%imagegen [options]\n  PROMPT (the cell body)\n%imagegen [options] PROMPT")
_usage_first(ImageGenMagics.imagegen_history, "%imagegen_history [-n N] [--all] [--clear]")
_usage_first(ImageGenMagics.imagegen_form, "%imagegen_form [options] [PROMPT]")

# Abbreviated long options (--qual for --quality) would make typos silently mean something else.
ImageGenMagics.imagegen.parser.allow_abbrev = False
ImageGenMagics.imagegen_history.parser.allow_abbrev = False
ImageGenMagics.imagegen_form.parser.allow_abbrev = False

_loaded: Dict[int, ImageGenMagics] = {}


def load_ipython_extension(ipython) -> None:
    """`%load_ext jupyter_imagegen`: register %%imagegen / %imagegen."""
    if id(ipython) in _loaded:
        return
    magics = ImageGenMagics(ipython)
    ipython.register_magics(magics)
    ipython.configurables.append(magics)   # %config ImageGenMagics.raise_errors = True
    ipython.events.register("post_run_cell", magics._post_run_cell)
    one_line_cancel(ipython)
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
    ipython.magics_manager.magics["line"].pop("imagegen_form", None)
    runtime.close()
