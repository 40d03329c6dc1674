"""The live views of the magic and the widget: event log, image gallery, error box, updated in place.

`GenerationView` owns the outputs of one generation:

* a **log** slot, created by `start()` and updated in place by `on_event(event)`
  (one display handle: `display(..., display_id=True)` then `handle.update(...)`);
* a **result** slot, created by `show_response(resp)` (gallery, model text, error box)
  and also used for partial-image previews.

Where the outputs go (the *surface*):

* ``GenerationView()`` in a notebook: IPython display handles (``display_data`` then
  ``update_display_data`` with the same ``display_id``);
* ``GenerationView(output=ipywidgets.Output())``: the widget's ``outputs`` tuple is rewritten,
  which works from a background task with no dependence on the current cell;
* plain terminal IPython / python: new log lines are printed as they happen, the gallery as text.

Everything shown is HTML-escaped; previews are downscaled copies (``preview_max_side``, default
512 px), the full-size `Artifact` stays in the response. The view never sees the API token:
events and responses only carry masked hints, and `redact` strings are masked once more.
"""
from __future__ import annotations

import asyncio
import math
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from . import events as ev
from .render import (DEFAULT_PREVIEW_MAX_SIDE, STYLE_WARN, EventLog, Output, clear_shown, error_html, error_text, esc,
                     gallery_html, mark_shown, preview, refusal_message, response_html, response_mimebundle,
                     response_outputs, response_text, truncate)

__all__ = [
    "DEFAULT_PREVIEW_MAX_SIDE", "GenerationView", "EventLog", "preview", "gallery_html", "response_html",
    "response_text", "response_mimebundle", "response_outputs", "error_html", "error_text", "mark_shown", "clear_shown",
    "refusal_message", "show_refusal", "fill_slots", "NotebookSurface", "OutputSurface", "TerminalSurface", "rich_frontend",
]


# --------------------------------------------------------------------------------------------
# surfaces: where a view's slots are shown
# --------------------------------------------------------------------------------------------
class NotebookSurface:
    """IPython display handles: display_data once, then update_display_data (same display_id)."""

    def new(self, bundle: Dict[str, Any], log: Optional["EventLog"] = None, metadata: Optional[Dict[str, Any]] = None):
        from IPython.display import display
        return display(bundle, raw=True, metadata=metadata or {}, display_id=True)

    def update(self, slot, bundle: Dict[str, Any], log: Optional["EventLog"] = None,
               metadata: Optional[Dict[str, Any]] = None) -> None:
        slot.update(bundle, raw=True, metadata=metadata or {})

    def clear(self) -> None:  # the notebook's own cell clearing handles this
        pass


class OutputSurface:
    """An ipywidgets.Output: its `outputs` tuple is rewritten, so updates stay in place and do
    not depend on which cell (or background task) is running."""

    def __init__(self, output):
        self.output = output
        self.slots: List[Output] = []

    def _sync(self) -> None:
        self.output.outputs = tuple({"output_type": "display_data", "data": dict(data), "metadata": dict(md)}
                                    for data, md in self.slots)

    def new(self, bundle: Dict[str, Any], log: Optional["EventLog"] = None, metadata: Optional[Dict[str, Any]] = None):
        self.slots.append((dict(bundle), metadata or {}))
        self._sync()
        return len(self.slots) - 1

    def update(self, slot, bundle: Dict[str, Any], log: Optional["EventLog"] = None,
               metadata: Optional[Dict[str, Any]] = None) -> None:
        self.slots[slot] = (dict(bundle), metadata or {})
        self._sync()

    def clear(self) -> None:
        self.slots = []
        self._sync()


class TerminalSurface:
    """Plain IPython / python: print new log lines as they come, other slots as text."""

    def __init__(self, stream=None):
        self.stream = stream
        self._printed: Dict[int, int] = {}   # slot -> log lines already printed

    def _out(self):
        return self.stream or sys.stdout

    def new(self, bundle: Dict[str, Any], log: Optional[EventLog] = None, metadata: Optional[Dict[str, Any]] = None):
        slot = len(self._printed)
        self._printed[slot] = 0
        out = self._out()
        if log is not None:
            print(log.title, file=out)
        self.update(slot, bundle, log=log)
        return slot

    def update(self, slot, bundle: Dict[str, Any], log: Optional[EventLog] = None,
               metadata: Optional[Dict[str, Any]] = None) -> None:
        out = self._out()
        if log is not None:
            for t, _, text in log.lines[self._printed.get(slot, 0):]:
                print(f"  {t:5.1f}s  {text}", file=out)
            self._printed[slot] = len(log.lines)
        elif bundle.get("text/plain"):
            print(bundle["text/plain"], file=out)
        out.flush()

    def clear(self) -> None:
        pass


def fill_slots(surface: Any, slots: List[Any], outputs: Sequence[Output]) -> None:
    """Show `outputs` in `surface`'s `slots` (a list kept by the caller), updating each in place
    and adding the slots that are missing; slots left over from a longer show are emptied."""
    for i, (data, md) in enumerate(outputs):
        if i < len(slots):
            surface.update(slots[i], data, None, md)
        else:
            slots.append(surface.new(data, None, md))
    for slot in slots[len(outputs):]:
        surface.update(slot, {"text/plain": "", "text/html": ""}, None, {})


def show_refusal(message: str) -> None:
    """A mistake in a cell, nothing sent: an error box in the cell's output (text/plain
    "UsageError: ..." for text consumers), which does not fail the cell."""
    from IPython.display import display
    display({"text/plain": f"UsageError: {message}",
             "text/html": error_html(message, title="Nothing was sent")}, raw=True)


def rich_frontend() -> bool:
    """True in a kernel (or under a capturing display publisher): display handles work there."""
    try:
        from IPython import get_ipython
        from IPython.core.displaypub import DisplayPublisher
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    if shell is None:
        return False
    if getattr(shell, "kernel", None) is not None:
        return True
    return type(shell.display_pub) is not DisplayPublisher


class GenerationView:
    """The live outputs of one generation; one instance per magic call or per widget run.

    >>> view = GenerationView()            # notebook: display handles
    >>> view.start("a lighthouse")         # the log appears (waiting…)
    >>> resp = await client.generate(req, on_event=view.on_event)   # log lines update in place
    >>> view.show_response(resp)           # gallery / text / error box

    ``output=`` an ``ipywidgets.Output`` renders into the widget instead; ``quiet=True`` shows no
    log (images and errors only); ``preview_max_side`` bounds the embedded previews (0 = full
    size); ``redact`` lists strings (tokens) that must never be shown; ``mode`` forces
    "notebook" / "output" / "terminal" (default: chosen from the environment).
    """

    def __init__(self, *, output=None, quiet: bool = False,
                 preview_max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE, title: str = "imagegen",
                 redact: Iterable[Optional[str]] = (), mode: str = "auto", stream=None, debug: bool = False):
        self.quiet = quiet
        self.debug = debug
        self.preview_max_side = preview_max_side
        self.redact = [r for r in redact if r]
        self.title = title
        self.log = EventLog(title, redact=self.redact)
        self.response = None
        if mode == "auto":
            mode = "output" if output is not None else ("notebook" if rich_frontend() else "terminal")
        self.mode = mode
        if mode == "output":
            if output is None:
                raise ValueError("mode='output' needs output=ipywidgets.Output()")
            self._surface: Any = OutputSurface(output)
        elif mode == "notebook":
            self._surface = NotebookSurface()
        elif mode == "terminal":
            self._surface = TerminalSurface(stream)
        else:
            raise ValueError(f"mode={mode!r}: use 'auto', 'notebook', 'output' or 'terminal'")
        self._log_slot = None
        self._result_slots: List[Any] = []
        #: the latest partial image of each image index (``-n 2`` streams partials of both)
        self._partials: Dict[int, Any] = {}
        #: `schedule(seconds, fn)`: have `fn` called on this view's thread later (a retry's countdown
        #: draws the log once a second). Set by whoever drives the view (`Runtime.run`: through the
        #: background loop, posted back to the waiting cell); None: the running event loop of the
        #: thread `on_event` runs on (the form's), else no countdown.
        self.schedule: Optional[Callable[[float, Callable[[], None]], Any]] = None

    # -- slots ------------------------------------------------------------------------------
    def _show_log(self) -> None:
        # the terminal prints only the new log lines
        bundle = self.log.bundle()
        if self._log_slot is None:
            self._log_slot = self._surface.new(bundle, self.log)
        else:
            self._surface.update(self._log_slot, bundle, self.log)

    def _show_result(self, outputs: Sequence[Output]) -> None:
        """The result area: one slot per output (a partial preview, or one per image)."""
        fill_slots(self._surface, self._result_slots, outputs)

    def _refresh_log(self) -> None:
        if not self.quiet:
            self._show_log()

    # -- public -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Start over (the widget reuses one view per Output): clear the slots and the log."""
        self._surface.clear()
        self._log_slot = None
        self._result_slots = []
        self._partials = {}
        self.log = EventLog(self.title, redact=self.redact)
        self.response = None

    def start(self, note: Optional[str] = None) -> None:
        """Show the log at once (before the first event), so the cell shows life immediately."""
        self.log._elapsed()
        if note:
            self.log.title = f"{self.title} · {truncate(note, 80)}"
        self._refresh_log()

    def on_event(self, event) -> None:
        """The client's event callback: add a line to the log and update it in place."""
        self.log.add_event(event)
        if event.type == ev.API_RETRY and not self.quiet:
            self._count_down(event.data.get("delay"))
        if event.type == ev.PARTIAL_IMAGE and event.data.get("artifact") is not None:
            # keep the latest partial of each image and show them together (with -n 2 the partials
            # of both images arrive interleaved; showing only the newest made them take turns)
            art = event.data["artifact"]
            index = event.data.get("index")
            if not isinstance(index, int):
                index = getattr(art, "index", 0) if isinstance(getattr(art, "index", 0), int) else 0
            self._partials[index] = art
            arts = [self._partials[i] for i in sorted(self._partials)]
            if len(arts) == 1:
                text = f"partial image {event.data.get('partial_index', 0) + 1}"
            else:
                text = f"partial images of {len(arts)} images (latest: image {index + 1}, " \
                       f"partial {event.data.get('partial_index', 0) + 1})"
            self._show_result([({
                "text/plain": text,
                "text/html": gallery_html(arts, max_side=self.preview_max_side, alt="partial image"),
            }, {})])
        self._refresh_log()

    def _count_down(self, delay: Any) -> None:
        """Draw the log again at each whole second of a retry wait ("retrying in 3 s … 2 s … 1 s")."""
        if not isinstance(delay, (int, float)) or delay < 1.5:
            return
        schedule = self.schedule
        if schedule is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            schedule = loop.call_later
        for k in range(1, min(math.ceil(delay), 600)):
            schedule(delay - k, self.tick)

    def tick(self) -> None:
        """Draw the log again if a retry wait is counting down (a no-op otherwise)."""
        if self.log.counting():
            self._refresh_log()

    def note(self, text: str, kind: str = "info") -> None:
        """Add a line of our own to the log (e.g. "saved 2 files")."""
        self.log.add(kind, text)
        self._refresh_log()

    def show_response(self, resp, *, extra_errors: Sequence[str] = ()) -> None:
        """Render the result: gallery, the model's text, error box with suggestions and key hint."""
        self.response = resp
        self._partials = {}
        if self.log.state in ("waiting", "running"):
            self.log.state = "done" if resp.success else "failed"
            self._refresh_log()
        if self.quiet:   # no log to say it: what was sent instead of what was asked goes with the images
            extra_errors = [*extra_errors, *getattr(resp, "notices", ())]
        self._show_result(response_outputs(resp, max_side=self.preview_max_side, redact=self.redact,
                                           extra_errors=extra_errors, debug=self.debug))

    def show_error(self, message: str, *, title: str = "Image generation failed",
                   suggestions: Sequence[str] = (), auth_hint: Optional[str] = None) -> None:
        """An error box for a failure that has no response (bad input, missing token...)."""
        if self._log_slot is not None and self.log.state in ("waiting", "running"):
            self.log.state = "failed"
            self.log.add("failed", message)
            self._refresh_log()
        self._show_result([({
            "text/plain": error_text(message, title=title, suggestions=suggestions, auth_hint=auth_hint,
                                     redact=self.redact),
            "text/html": error_html(message, title=title, suggestions=suggestions, auth_hint=auth_hint,
                                    redact=self.redact),
        }, {})])

    def refused(self) -> None:
        """The request was refused before sending (the error is shown after the view): a log
        already on screen (e.g. with a note) ends as failed instead of "waiting"."""
        if self._log_slot is not None and self.log.state in ("waiting", "running"):
            self.log.state = "failed"
            self.log.add("failed", "not sent: see the error below")
            self._refresh_log()

    def cancelled(self, text: Optional[str] = None) -> None:
        """Mark the run as cancelled (interrupt / Cancel button). Always shown, even when quiet."""
        self.log.cancel(text)
        if self.quiet:
            self._show_result([({"text/plain": self.log.lines[-1][2],
                                 "text/html": f'<div style="{STYLE_WARN}">{esc(self.log.lines[-1][2])}</div>'}, {})])
        else:
            self._refresh_log()
