"""Compare prompts and settings side by side: every combination, concurrently, in one grid.

    from jupyter_imagegen import compare
    grid = compare(prompts=["a red fox", "a lighthouse"], models=["gpt-image-1", "gpt-image-1-mini"])
    grid                       # one labelled grid (rows = prompts, columns = models)
    grid.grid[1][0]            # the ImageResponse of row 1, column 0
    grid["a lighthouse", "gpt-image-1"]   # the same cell by its labels

Every varied setting (prompt, model, api, size, aspect, quality) is a dimension; the rows are the
first varied dimension (prompts when they vary), the columns every other varied dimension, their
values combined into one label ("gpt-image-1 · 1024x1536"). One varied dimension gives one row.
A failing cell shows its error in place; the others are unaffected. Cells run concurrently,
bounded (default: the client's ``max_concurrency``). Previews in the grid are downscaled; the
full-size images stay in the responses.

`%%imagegen --compare model=a,b,c` and prompts separated by a line ``---`` in the cell body do
the same from the magic.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import events as ev
from . import history
from .cache import request_key
from .display import NotebookSurface, OutputSurface, fill_slots, rich_frontend
from .render import (Output, display_unless_shown, error_html, esc, gallery_html, is_shown, layout_outputs, mark_shown,
                     redactor, select_mimetypes, truncate)
from .errors import ConfigError, RequestError
from .model import ImageRequest, ImageResponse
from .runtime import runtime
from .theme import BACKGROUND_SUBTLE, BORDER_SUBTLE, STYLE_CAPTION, STYLE_MUTED

log = logging.getLogger("jupyter_imagegen")

__all__ = ["compare", "acompare", "CompareResult", "CompareCell", "DIMENSIONS", "GRID_PREVIEW_MAX_SIDE",
           "split_prompts", "parse_compare_spec"]

#: dimension name -> (ImageRequest field, label, plural keyword of compare())
DIMENSIONS: Dict[str, Tuple[str, str]] = {
    "prompt": ("prompt", "prompt"),
    "model": ("model", "model"),
    "api": ("api_type", "API"),
    "size": ("size", "size"),
    "aspect": ("aspect_ratio", "aspect"),
    "quality": ("quality", "quality"),
}
#: the order dimensions are laid out in (the first varied one becomes the rows)
ORDER = ("prompt", "model", "api", "size", "aspect", "quality")
#: previews in the grid are at most this many pixels on their longer side
GRID_PREVIEW_MAX_SIDE = 256

_STYLE_CELL = (f"padding: 6px; vertical-align: top; text-align: left; border: 1px solid {BORDER_SUBTLE}; "
               "min-width: 120px")
_STYLE_HEAD = ("padding: 4px 8px; vertical-align: bottom; text-align: left; font-weight: 600; "
               f"border: 1px solid {BORDER_SUBTLE}; background: {BACKGROUND_SUBTLE}")
_STYLE_NOTE = STYLE_CAPTION


# --------------------------------------------------------------------------------------------
# helpers used by the magic too
# --------------------------------------------------------------------------------------------
def split_prompts(text: str) -> List[str]:
    """Prompts separated by a line holding only ``---``; empty parts are dropped."""
    parts, cur = [], []
    for line in text.splitlines():
        if line.strip() == "---":
            parts.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    parts.append("\n".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_compare_spec(spec: str) -> Tuple[str, List[str]]:
    """``model=a,b,c`` -> ("model", ["a", "b", "c"]). Keys: model, size, aspect, api, quality
    (``models=`` etc. and ``aspect_ratio=`` are accepted too). Raises ValueError."""
    key, sep, values = spec.partition("=")
    key = key.strip().lower().replace("-", "_")
    key = {"models": "model", "sizes": "size", "aspects": "aspect", "aspect_ratio": "aspect", "apis": "api",
           "api_type": "api", "qualities": "quality", "prompts": "prompt"}.get(key, key)
    if not sep or key not in DIMENSIONS or key == "prompt":
        raise ValueError(f"--compare {spec!r}: write KEY=V1,V2 with KEY one of model, size, aspect, api, quality "
                         "(several prompts: separate them with a line '---' in the cell)")
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not vals:
        raise ValueError(f"--compare {spec!r}: no values after '='")
    return key, vals


def _as_list(value: Union[None, str, Iterable[Any]]) -> Optional[List[Any]]:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    out: List[Any] = []
    for v in value:
        if v not in out:
            out.append(v)
    return out


# --------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------
@dataclass
class CompareCell:
    """One combination: its place in the grid, its settings, its request and response."""
    row: int
    col: int
    settings: Dict[str, Any]
    request: ImageRequest = field(repr=False)
    response: Optional[ImageResponse] = None
    status: str = "waiting"
    save_errors: List[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.response is not None

    @property
    def ok(self) -> bool:
        return self.response is not None and self.response.success


class CompareResult:
    """The outcome of `compare`: a grid of ImageResponse with labelled rows and columns."""

    def __init__(self, dims: List[Tuple[str, List[Any]]], row_dims: List[str], col_dims: List[str],
                 cells: List[CompareCell], *, max_side: Optional[int] = GRID_PREVIEW_MAX_SIDE,
                 redact: Sequence[Optional[str]] = ()):
        self.dims = dims
        self.row_dims = row_dims
        self.col_dims = col_dims
        self.cells = cells
        self.max_side = max_side
        self.elapsed = 0.0
        self._redact = [r for r in redact if r]
        values = dict(dims)
        self.row_values: List[Tuple[Any, ...]] = list(itertools.product(*(values[d] for d in row_dims)))
        self.col_values: List[Tuple[Any, ...]] = list(itertools.product(*(values[d] for d in col_dims)))

    # -- shape ----------------------------------------------------------------------------------
    @property
    def shape(self) -> Tuple[int, int]:
        return len(self.row_values), len(self.col_values)

    @property
    def varied(self) -> List[str]:
        return self.row_dims + self.col_dims

    @property
    def row_labels(self) -> List[str]:
        return [" · ".join(str(v) for v in vals) or "" for vals in self.row_values]

    @property
    def col_labels(self) -> List[str]:
        return [" · ".join(str(v) for v in vals) or "" for vals in self.col_values]

    @property
    def row_title(self) -> str:
        return " · ".join(DIMENSIONS[d][1] for d in self.row_dims)

    @property
    def col_title(self) -> str:
        return " · ".join(DIMENSIONS[d][1] for d in self.col_dims)

    def cell(self, row: int, col: int) -> CompareCell:
        for c in self.cells:
            if c.row == row and c.col == col:
                return c
        raise IndexError(f"no cell ({row}, {col}); the grid is {self.shape[0]}x{self.shape[1]}")

    @property
    def grid(self) -> List[List[Optional[ImageResponse]]]:
        """Rows x columns of ImageResponse (None for a cell still running)."""
        rows, cols = self.shape
        g: List[List[Optional[ImageResponse]]] = [[None] * cols for _ in range(rows)]
        for c in self.cells:
            g[c.row][c.col] = c.response
        return g

    @property
    def responses(self) -> List[ImageResponse]:
        return [c.response for c in self.cells if c.response is not None]

    @property
    def artifacts(self) -> list:
        return [a for r in self.responses for a in r.artifacts]

    @property
    def ok(self) -> int:
        return sum(1 for c in self.cells if c.ok)

    @property
    def failed(self) -> int:
        return sum(1 for c in self.cells if c.done and not c.ok)

    @property
    def paths(self) -> List[str]:
        return [p for r in self.responses for p in r.paths]

    def __len__(self) -> int:
        return len(self.cells)

    def __iter__(self):
        return iter(self.cells)

    def __getitem__(self, key) -> Optional[ImageResponse]:
        """``result[r, c]`` by position, ``result[row_label, col_label]`` by label, ``result[i]``
        the i-th cell in row-major order."""
        if isinstance(key, int):
            return self.cells[key].response
        if isinstance(key, tuple) and len(key) == 2:
            r, c = key
            if not isinstance(r, int):
                r = self._find(self.row_values, self.row_labels, r, "row")
            if not isinstance(c, int):
                c = self._find(self.col_values, self.col_labels, c, "column")
            return self.grid[r][c]
        raise KeyError(f"use result[row, col] (positions or labels) or result[i]; got {key!r}")

    @staticmethod
    def _find(values, labels, key, what) -> int:
        for i, (vals, label) in enumerate(zip(values, labels)):
            if key == label or (isinstance(key, tuple) and key == vals) or (len(vals) == 1 and key == vals[0]):
                return i
        raise KeyError(f"no {what} labelled {key!r}; the {what}s are: {', '.join(labels)}")

    # -- rendering ------------------------------------------------------------------------------
    def _summary(self) -> str:
        rows, cols = self.shape
        dims = " × ".join(f"{len(v)} {DIMENSIONS[d][1]}{'s' if len(v) != 1 else ''}"
                          for d, v in self.dims if d in self.varied) or "1 combination"
        done = sum(1 for c in self.cells if c.done)
        state = f"{self.ok} ok" + (f", {self.failed} failed" if self.failed else "")
        if done < len(self.cells):
            state += f", {len(self.cells) - done} running"
        cached = sum(1 for c in self.cells if c.response is not None and c.response.from_cache)
        if cached:
            state += f", {cached} from cache"
        when = f" in {self.elapsed:.1f} s" if self.elapsed and done == len(self.cells) else ""
        return f"compare: {dims} ({len(self.cells)} cell{'s' if len(self.cells) != 1 else ''}: {state}){when}"

    def _cell_html(self, c: CompareCell, max_side: Optional[int]) -> str:
        scrub = redactor(self._redact)
        r = c.response
        if r is None:
            return f'<div style="{STYLE_MUTED}; padding: 12px 4px">{esc(c.status)}</div>'
        parts = []
        if r.artifacts:
            parts.append(gallery_html(r.artifacts, max_side=max_side, alt=truncate(c.request.prompt, 200),
                                      redact=self._redact))
        note = []
        if r.success:
            note.append("from cache" if r.from_cache else f"{r.elapsed:.1f} s"
                        + (f", {r.attempts} attempts" if r.attempts > 1 else ""))
        if r.usage is not None and r.usage.cost is not None:
            note.append(f"${r.usage.cost:.4f}")
        if note:
            parts.append(f'<div style="{_STYLE_NOTE}">{esc(" · ".join(note))}</div>')
        if r.text:
            parts.append(f'<div style="{_STYLE_NOTE}"><i>model:</i> {esc(truncate(scrub(r.text), 300))}</div>')
        if not r.success:
            parts.append(error_html(r.error or "no image was returned", title="Failed",
                                    suggestions=r.suggestions[:1], status_code=r.status_code, redact=self._redact))
        elif r.errors:
            parts.append(error_html("; ".join(r.errors), title=f"{len(r.errors)} failed", status_code=r.status_code,
                                    redact=self._redact, warning=True))
        for msg in c.save_errors:
            parts.append(error_html(msg, title="Not saved", redact=self._redact, warning=True))
        return "".join(parts)

    def html(self, max_side: Optional[int] = None) -> str:
        """The grid as one HTML table (labelled rows and columns, downscaled previews)."""
        max_side = self.max_side if max_side is None else max_side
        rows, cols = self.shape
        by_pos = {(c.row, c.col): c for c in self.cells}
        corner = esc(self.row_title) + (" \\ " if self.row_title and self.col_title else "") + esc(self.col_title)
        head = [f'<th style="{_STYLE_HEAD}; opacity: 0.7; font-weight: 400">{corner}</th>'] if self.row_dims else []
        for label in self.col_labels:
            head.append(f'<th style="{_STYLE_HEAD}" title="{esc(label)}">{esc(truncate(label, 80))}</th>')
        body = []
        for r in range(rows):
            tds = []
            if self.row_dims:
                label = self.row_labels[r]
                tds.append(f'<th scope="row" style="{_STYLE_HEAD}; vertical-align: top; max-width: 220px; '
                           f'font-weight: 500; white-space: normal" title="{esc(label)}">'
                           f'{esc(truncate(label, 200))}</th>')
            for col in range(cols):
                tds.append(f'<td style="{_STYLE_CELL}">{self._cell_html(by_pos[(r, col)], max_side)}</td>')
            body.append(f"<tr>{''.join(tds)}</tr>")
        thead = f"<thead><tr>{''.join(head)}</tr></thead>" if self.col_dims or self.row_dims else ""
        fixed = [f"{DIMENSIONS[d][1]}={v[0]}" for d, v in self.dims if d not in self.varied and d != "prompt"
                 and v and v[0] is not None]
        fixed_note = f" · {' · '.join(fixed)}" if fixed else ""
        if "prompt" not in self.varied and self.cells:
            fixed_note += f" · prompt: {truncate(self.cells[0].request.prompt, 160)}"
        return (f'<div class="imagegen-compare" data-rows="{rows}" data-cols="{cols}">'
                f'<div style="{_STYLE_NOTE}; margin-bottom: 4px">{esc(self._summary() + fixed_note)}</div>'
                f'<table style="border-collapse: collapse; table-layout: auto">{thead}'
                f'<tbody>{"".join(body)}</tbody></table></div>')

    def text(self) -> str:
        scrub = redactor(self._redact)
        lines = [self._summary()]
        for c in self.cells:
            where = " | ".join(f"{k}={truncate(str(v), 40)}" for k, v in c.settings.items() if k in self.varied)
            r = c.response
            if r is None:
                what = c.status
            elif r.success:
                a = r.artifacts[0]
                w, h = a.size
                what = (f"{len(r.artifacts)} image{'s' if len(r.artifacts) != 1 else ''} ({w}x{h} {a.format})"
                        + (" from cache" if r.from_cache else f" in {r.elapsed:.1f} s"))
            else:
                what = "failed" + (f" (HTTP {r.status_code})" if r.status_code else "") + \
                       f": {truncate(scrub(r.error or ''), 120)}"
            lines.append(f"  [{c.row},{c.col}] {where or '-'}: {what}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        rows, cols = self.shape
        return f"<CompareResult {rows}x{cols}: {self.ok} ok, {self.failed} failed>"

    def outputs(self, max_side: Optional[int] = None) -> List[Output]:
        """The grid as cell outputs: the table on the first, and every image of the grid (in
        grid order) as a standard image output of its own (`render.layout_outputs`)."""
        max_side = self.max_side if max_side is None else max_side
        arts = [a for c in sorted(self.cells, key=lambda c: (c.row, c.col)) if c.response is not None
                for a in c.response.artifacts]
        return layout_outputs(arts, self.html(max_side), self.text(), max_side=max_side)

    def _ipython_display_(self) -> None:
        display_unless_shown(self, self.outputs)

    def _repr_html_(self) -> Optional[str]:
        if is_shown(self):
            return None  # on screen already (see _repr_mimebundle_)
        return self.html()

    def _repr_mimebundle_(self, include=None, exclude=None):
        if is_shown(self):
            return {"text/plain": f"<{self._summary()}; shown above>"}
        return select_mimetypes({"text/plain": self.text(), "text/html": self.html()}, include, exclude)


# --------------------------------------------------------------------------------------------
# live view: the grid shown at once and updated in place as cells finish
# --------------------------------------------------------------------------------------------
class _GridView:
    def __init__(self, result: CompareResult, *, output=None, mode: str = "auto", interval: float = 0.5,
                 stream=None):
        self.result = result
        self.interval = interval
        self.stream = stream
        self._last = 0.0
        self._slots: List[Any] = []
        if mode == "auto":
            mode = "output" if output is not None else ("notebook" if rich_frontend() else "terminal")
        self.mode = mode
        self._surface: Any = OutputSurface(output) if mode == "output" else NotebookSurface()

    def _push(self, final: bool = False) -> None:
        """Show the grid: one output (the table) while it runs; at the end the table and one
        standard image output per image (`CompareResult.outputs`)."""
        outputs = self.result.outputs() if final else [({"text/plain": self.result.text(),
                                                         "text/html": self.result.html()}, {})]
        fill_slots(self._surface, self._slots, outputs)
        self._last = time.monotonic()

    def start(self) -> None:
        if self.mode == "terminal":
            self._print(self.result._summary().replace(" running", " to run"))
        else:
            self._push()

    def _print(self, text: str) -> None:
        import sys
        out = self.stream or sys.stdout
        print(text, file=out)
        out.flush()

    def status(self, cell: CompareCell) -> None:
        """A cell's status line changed: refresh at most every `interval` seconds."""
        if self.mode != "terminal" and time.monotonic() - self._last >= self.interval:
            self._push()

    def cell_done(self, cell: CompareCell) -> None:
        if self.mode == "terminal":
            self._print(self.result.text().splitlines()[1 + self.result.cells.index(cell)])
        else:
            self._push()

    def finish(self) -> None:
        if self.mode == "terminal":
            self._print(self.result._summary())
        else:
            self._push(final=True)


def _call(fn: Callable[..., Any], *args: Any) -> None:
    fn(*args)


def _status_from_event(event) -> Optional[str]:
    t = event.type
    if t == ev.GENERATION_STARTED:
        return "sending…"
    if t == ev.API_CALL:
        return event.describe()
    if t == ev.API_RETRY:
        return event.describe()
    if t == ev.CACHE_HIT:
        return "from cache"
    if t == ev.PARTIAL_IMAGE:
        return event.describe()
    return None


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------
def _base_request(base: Union[None, ImageRequest, Dict[str, Any]], kwargs: Dict[str, Any]) -> ImageRequest:
    if isinstance(base, ImageRequest):
        return base.replace(**kwargs) if kwargs else base
    fields = dict(base or {})
    fields.update(kwargs)
    fields.setdefault("prompt", "")
    return ImageRequest(**fields)


def _refused(request: ImageRequest, error: Exception) -> ImageResponse:
    """The response of a cell that could not be sent (bad option for this model, no token...)."""
    return ImageResponse(request_id=request.request_id, success=False, error=str(error), model=request.model,
                         api_type=request.api_type, request=request)


def _precheck(client, request: ImageRequest) -> None:
    """Raise what `client.generate` would raise before sending: invalid options or input images,
    and a missing token (unless the request cache holds the answer, which needs none)."""
    resolved, _ = client.resolve(request)
    cfg = getattr(client, "config", None)
    if request.token or getattr(cfg, "token", None) or not hasattr(client, "_token"):
        return
    cache = getattr(client, "cache", None)
    if cache is not None and request.cache is not False and not request.fresh:
        if cache.has(request_key(resolved)):
            return
    client._token(request)  # raises ConfigError naming the variable


def _layout(dims: List[Tuple[str, List[Any]]], rows: Union[None, str, Sequence[str]],
            cols: Union[None, str, Sequence[str]]) -> Tuple[List[str], List[str]]:
    varied = [d for d, v in dims if len(v) > 1]

    def names(x) -> Optional[List[str]]:
        if x is None:
            return None
        lst = [x] if isinstance(x, str) else list(x)
        for d in lst:
            if d not in DIMENSIONS:
                raise ValueError(f"unknown dimension {d!r}; use: {', '.join(ORDER)}")
        return lst

    r, c = names(rows), names(cols)
    if r is None and c is None:
        if len(varied) <= 1:
            return [], varied              # one row, a column per value
        return varied[:1], varied[1:]
    if r is None:
        r = [d for d in varied if d not in c]
    if c is None:
        c = [d for d in varied if d not in r]
    missing = [d for d in varied if d not in r and d not in c]
    if missing:
        c = c + missing
    return r, c


async def acompare(prompts: Union[None, str, Sequence[str]] = None, models: Union[None, str, Sequence[str]] = None,
                   sizes: Union[None, str, Sequence[str]] = None, apis: Union[None, str, Sequence[str]] = None, *,
                   aspects: Union[None, str, Sequence[str]] = None, qualities: Union[None, str, Sequence[str]] = None,
                   base: Union[None, ImageRequest, Dict[str, Any]] = None, client=None,
                   rows: Union[None, str, Sequence[str]] = None, cols: Union[None, str, Sequence[str]] = None,
                   concurrency: Optional[int] = None, save: Optional[str] = None, record: bool = True,
                   live: bool = False, output=None, preview_size: Optional[int] = GRID_PREVIEW_MAX_SIDE,
                   on_event: Optional[Callable[[Any], Any]] = None,
                   on_cell: Optional[Callable[[CompareCell], Any]] = None,
                   on_start: Optional[Callable[[CompareResult], Any]] = None, validate: bool = True,
                   redact: Sequence[Optional[str]] = (), ui: Optional[Callable[..., None]] = None,
                   **request_fields: Any) -> CompareResult:
    """`compare` for async code (the form): same arguments, awaitable.

    ``live=True`` shows the grid at once and updates it in place as cells finish (in the
    notebook, or in ``output=`` an ipywidgets.Output). ``on_event(event)`` receives every cell's
    client events (``event.request_id`` tells the cells apart: ``cell.request.request_id``);
    ``on_cell(cell)`` is called as each cell finishes (after saving); ``on_start(result)`` once
    the cells are built, before anything is sent. ``validate``: check every cell first (options,
    input images, the token unless the cache has the answer); a cell that cannot be sent shows
    its error in place, and when *no* cell can be sent the first error is raised (RequestError /
    ConfigError) before anything is shown. ``ui(fn, *args)``: where the live grid's updates run
    (the runtime passes the waiting cell's `post`, so they land in that cell); default: at once.
    """
    base_req = _base_request(base, request_fields)
    values: Dict[str, Optional[List[Any]]] = {
        "prompt": _as_list(prompts), "model": _as_list(models), "api": _as_list(apis), "size": _as_list(sizes),
        "aspect": _as_list(aspects), "quality": _as_list(qualities),
    }
    dims: List[Tuple[str, List[Any]]] = []
    for d in ORDER:
        vals = values[d]
        if vals is None or len(vals) == 0:
            vals = [getattr(base_req, DIMENSIONS[d][0])]
        dims.append((d, vals))
    if not any(isinstance(p, str) and p.strip() for p in dict(dims)["prompt"]):
        raise RequestError("compare() needs at least one prompt: prompts=[...] (or prompt=...)")
    row_dims, col_dims = _layout(dims, rows, cols)
    dim_values = dict(dims)

    if client is None:
        client = runtime.client()
    token = getattr(getattr(client, "config", None), "token", None)
    redact = list(redact) + [token]

    cells: List[CompareCell] = []
    row_vals = list(itertools.product(*(dim_values[d] for d in row_dims)))
    col_vals = list(itertools.product(*(dim_values[d] for d in col_dims)))
    fixed = {d: v[0] for d, v in dims if d not in row_dims and d not in col_dims}
    for ri, rv in enumerate(row_vals):
        for ci, cv in enumerate(col_vals):
            settings = dict(fixed)
            settings.update(zip(row_dims, rv))
            settings.update(zip(col_dims, cv))
            settings = {d: settings[d] for d in ORDER}
            changes = {DIMENSIONS[d][0]: v for d, v in settings.items()}
            req = base_req.replace(headers=dict(base_req.headers or {}), params=dict(base_req.params or {}),
                                   images=list(base_req.images or []), **changes)
            cells.append(CompareCell(ri, ci, settings, req))
    result = CompareResult(dims, row_dims, col_dims, cells, max_side=preview_size, redact=redact)

    if on_start is not None:
        on_start(result)
    if validate:
        problems = []
        for cell in cells:
            try:
                _precheck(client, cell.request)
            except (RequestError, ConfigError) as e:
                problems.append(e)
                cell.response = _refused(cell.request, e)
                cell.status = "failed"
        if problems and len(problems) == len(cells):
            raise problems[0]

    view = _GridView(result, output=output) if (live or output is not None) else None
    show = ui if ui is not None else _call
    limit = asyncio.Semaphore(max(1, int(concurrency or getattr(client.config, "max_concurrency", 4))))
    t0 = time.monotonic()
    if view is not None:
        show(view.start)

    async def run_cell(cell: CompareCell) -> None:
        if cell.response is not None:  # refused by the pre-check: nothing to send
            if record:
                history.record(cell.response, source="compare", request=cell.request)
            if view is not None:
                show(view.cell_done, cell)
            return

        def cb(event) -> None:
            s = _status_from_event(event)
            if s:
                cell.status = s
                if view is not None:
                    show(view.status, cell)
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:
                    log.warning("compare on_event callback failed", exc_info=True)

        async with limit:
            cell.status = "sending…"
            try:
                outcome = await runtime.execute(cell.request, client=client, on_event=cb, save=save,
                                                source="compare", record=record, redact=redact,
                                                preview=GRID_PREVIEW_MAX_SIDE)
                resp = outcome.response
                cell.save_errors = outcome.save_errors
            except (RequestError, ConfigError) as e:
                resp = _refused(cell.request, e)
                if record:
                    history.record(resp, source="compare", request=cell.request)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug or an unexpected failure stays in its cell
                log.warning("compare cell failed", exc_info=True)
                resp = ImageResponse(request_id=cell.request.request_id, success=False,
                                     error=f"{type(e).__name__}: {e}", model=cell.request.model,
                                     api_type=cell.request.api_type, request=cell.request)
                if record:
                    history.record(resp, source="compare", request=cell.request)
        cell.response = resp
        cell.status = "done" if resp.success else "failed"
        if view is not None:
            show(view.cell_done, cell)
        if on_cell is not None:
            try:
                on_cell(cell)
            except Exception:
                log.warning("compare on_cell callback failed", exc_info=True)

    try:
        await asyncio.gather(*(run_cell(c) for c in cells))
    finally:
        result.elapsed = time.monotonic() - t0
        for c in cells:
            if c.response is None:
                c.status = "cancelled"
        if view is not None:
            show(view.finish)
    if view is not None and view.mode == "notebook":
        mark_shown(result)  # on screen already: Out[] shows one line, not a second grid
    return result


def compare(prompts: Union[None, str, Sequence[str]] = None, models: Union[None, str, Sequence[str]] = None,
            sizes: Union[None, str, Sequence[str]] = None, apis: Union[None, str, Sequence[str]] = None, *,
            aspects: Union[None, str, Sequence[str]] = None, qualities: Union[None, str, Sequence[str]] = None,
            base: Union[None, ImageRequest, Dict[str, Any]] = None, client=None,
            rows: Union[None, str, Sequence[str]] = None, cols: Union[None, str, Sequence[str]] = None,
            concurrency: Optional[int] = None, save: Optional[str] = None, record: bool = True,
            live: bool = False, output=None, preview_size: Optional[int] = GRID_PREVIEW_MAX_SIDE,
            on_event: Optional[Callable[[Any], Any]] = None,
            on_cell: Optional[Callable[[CompareCell], Any]] = None,
            on_start: Optional[Callable[[CompareResult], Any]] = None, validate: bool = True,
            **request_fields: Any) -> CompareResult:
    """Run every combination of the given prompts and settings concurrently; one labelled grid.

    ``prompts``, ``models``, ``sizes``, ``apis``, ``aspects``, ``qualities``: a value or a list
    each; the lists are the dimensions of the grid. ``base``: an ImageRequest (or dict) with the
    other settings; extra keyword arguments are ImageRequest fields too (``n=2``,
    ``quality="low"``...). ``client``: default the kernel's shared client (IMAGE_* settings,
    request cache on). ``rows``/``cols``: force the layout, e.g. ``rows="model"``.
    ``save="DIR"``: write each image with its metadata as soon as its cell finishes.
    Blocks until every cell is done (Ctrl-C cancels them all); returns a `CompareResult`.
    """
    return runtime.block(lambda post: acompare(
        prompts, models, sizes, apis, aspects=aspects, qualities=qualities, base=base, client=client, rows=rows,
        cols=cols, concurrency=concurrency, save=save, record=record, live=live, output=output,
        preview_size=preview_size, on_event=on_event, on_cell=on_cell, on_start=on_start, validate=validate,
        ui=post, **request_fields))


class _CompareModule(types.ModuleType):
    """`jupyter_imagegen.compare` is both this module and the function: importing the module
    (which the package does as `from jupyter_imagegen import compare`) gives a callable."""

    def __call__(self, *args: Any, **kwargs: Any) -> CompareResult:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CompareModule
