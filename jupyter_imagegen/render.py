"""Rendering the data model as HTML and text: previews, galleries, error boxes, the event log.

Pure functions of `ImageResponse` / `Artifact` / events (no IPython, no widgets), used by the
data model's own rich reprs, the history table, saved-image reprs, and by `display` (the live
views of the magic and the form). Everything shown is HTML-escaped; previews are downscaled
copies (``max_side``, default 512 px); `redact` strings (tokens) are masked once more.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import time
import urllib.parse
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import events as ev
from .secret import SecretScrubber
from .errors import MissingTokenError
from .theme import (KIND_COLORS, LOG_COLORS as _LOG_COLORS, STYLE_CAPTION as _STYLE_CAPTION, STYLE_MUTED,
                    STYLE_ERROR as _STYLE_ERROR, STYLE_LOG as _STYLE_LOG, STYLE_WARN)

__all__ = [
    "DEFAULT_PREVIEW_MAX_SIDE", "PREVIEW_MIMES", "Output", "response_outputs", "image_output", "layout_outputs",
    "publish_outputs", "display_unless_shown", "gallery_columns", "file_link", "EventLog", "preview", "downscale",
    "gallery_html", "response_html", "response_text", "response_mimebundle", "without_status", "STATUS_WORDS", "error_html", "error_text", "mark_shown", "clear_shown", "refusal_message",
    "esc", "truncate", "human_bytes", "redactor", "is_shown", "select_mimetypes",
]

#: previews embedded in the notebook are at most this many pixels on their longer side
DEFAULT_PREVIEW_MAX_SIDE = 512
#: JPEG quality of downscaled opaque previews
PREVIEW_JPEG_QUALITY = 85

def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def truncate(text: str, limit: int) -> str:
    """`text` on one line, at most `limit` characters: shortened at a word boundary with "…"
    (never mid-word, unless a single word is longer than most of the limit, e.g. a URL)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space >= limit * 0.6:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-—") + "…"


#: a retry's status in words ("429 rate limited")
STATUS_WORDS = {408: "request timeout", 409: "conflict", 429: "rate limited", 500: "server error",
                502: "bad gateway", 503: "service unavailable", 504: "gateway timeout"}


# --------------------------------------------------------------------------------------------
# previews
# --------------------------------------------------------------------------------------------
#: the image types of previews: what every notebook consumer shows as an image output (JupyterLab,
#: nbconvert's LaTeX/PDF and markdown, GitHub, VS Code); a WebP or GIF image is previewed as one of these
PREVIEW_MIMES = ("image/png", "image/jpeg")

#: one cell output: (data, metadata) of a display_data message
Output = Tuple[Dict[str, Any], Dict[str, Any]]


def preview(artifact, max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE) -> Tuple[str, bytes, Tuple[Optional[int], Optional[int]]]:
    """(mime, bytes, (w, h)) of a PNG or JPEG preview of `artifact` (`Artifact.preview`).

    The original bytes are used when the image already fits in `max_side` (or `max_side` is
    0/None) and is a PNG or JPEG; otherwise a downscaled copy: PNG when the image has
    transparency, else JPEG. The artifact keeps what it made, so showing a response twice is cheap.
    """
    return artifact.preview(max_side)


def downscale(im, max_side: Optional[int]) -> Tuple[str, bytes, Tuple[int, int]]:
    """A decoded PIL image as preview bytes no longer than `max_side`: (mime, bytes, (w, h)).

    Pillow's `reduce` (an area average by a whole factor) does the bulk of the reduction, then
    LANCZOS the rest (`reducing_gap=1.0`): for 1024 -> 512 px that is 2 ms instead of 22 ms of
    a LANCZOS over every source pixel, and a preview no eye tells apart. The result is PNG when
    the image has transparency, else JPEG. The source image is not changed."""
    from PIL import Image
    w, h = im.size
    if max_side and max(w, h) > max_side:
        scale = max_side / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        im = im.resize(size, Image.LANCZOS, reducing_gap=1.0)
    has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
    buf = io.BytesIO()
    if has_alpha:
        if im.mode not in ("RGBA", "LA"):
            im = im.convert("RGBA")
        im.save(buf, format="PNG")
        mime = "image/png"
    else:
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.save(buf, format="JPEG", quality=PREVIEW_JPEG_QUALITY)   # optimize=True: 3x the time for 5% fewer bytes
        mime = "image/jpeg"
    return (mime, buf.getvalue(), im.size)


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --------------------------------------------------------------------------------------------
# response rendering (pure functions: resp -> str)
# --------------------------------------------------------------------------------------------
def redactor(redact: Iterable[Any]):
    """A function that turns anything into text with every key of `redact` (Secrets or str)
    masked."""
    scrubber = SecretScrubber(redact)

    def scrub(text: Any) -> str:
        return scrubber("" if text is None else str(text))
    return scrub


def _dims(artifact) -> str:
    w, h = artifact.size
    return f"{w}×{h}" if w else "?×?"


def file_link(path: str) -> str:
    """A saved file's caption: a link JupyterLab opens (relative to the kernel's working folder,
    which is the notebook's folder in JupyterLab) when the file is under that folder, else the
    path as text."""
    try:
        rel = os.path.relpath(path)
    except ValueError:   # another drive (Windows)
        rel = ""
    if not rel or os.path.isabs(rel) or rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return f"<code>{esc(path)}</code>"
    href = urllib.parse.quote(rel.replace(os.sep, "/"))
    return f'<a href="{esc(href)}" title="open {esc(path)}"><code>{esc(rel)}</code></a>'


def _figure(artifact, number: Optional[int], *, max_side: Optional[int], alt: str, scrub, single: bool) -> str:
    mime, data, (pw, ph) = preview(artifact, max_side)
    parts = []
    if number is not None:
        parts.append(f"#{number}")
    parts.append(_dims(artifact))
    parts.append(artifact.format.upper())
    parts.append(human_bytes(len(artifact)))
    caption = [" · ".join(esc(p) for p in parts)]
    if artifact.revised_prompt:
        caption.append(f"<i>revised prompt:</i> {esc(scrub(artifact.revised_prompt))}")
    if artifact.path:
        caption.append(f"saved: {file_link(artifact.path)}")
    if data:
        size_attrs = f' width="{pw}" height="{ph}"' if pw and ph else ""
        style = "max-width: 100%; height: auto; border-radius: 3px; display: block"
        img = (f'<img src="{_data_url(mime, data)}" alt="{esc(alt)}"{size_attrs} style="{style}"/>')
    else:
        img = f'<div style="padding: 20px; {STYLE_MUTED}">(this image cannot be decoded for a preview)</div>'
    fig_style = "margin: 0; display: inline-block; vertical-align: top" if single else "margin: 0; min-width: 0"
    return (f'<figure class="imagegen-figure" style="{fig_style}">{img}'
            f'<figcaption style="{_STYLE_CAPTION}">{"<br>".join(caption)}</figcaption></figure>')


def gallery_columns(n: int) -> int:
    """Columns of an even gallery: 2 and 3 images side by side, then a square-ish grid
    (4 as 2x2, 5-9 as three columns, 10-16 as four)."""
    return max(1, n) if n <= 3 else math.ceil(math.sqrt(n))


def gallery_html(artifacts: Sequence, *, max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE, alt: str = "",
                 redact: Iterable[Optional[str]] = ()) -> str:
    """The images as HTML: one figure, or an even grid (`gallery_columns`) when there are several.
    Columns shrink together on a narrow page; their count stays."""
    scrub = redactor(redact)
    arts = list(artifacts)
    if not arts:
        return ""
    if len(arts) == 1:
        return f'<div class="imagegen-gallery">{_figure(arts[0], None, max_side=max_side, alt=alt, scrub=scrub, single=True)}</div>'
    cols = gallery_columns(len(arts))
    col = min(max_side or DEFAULT_PREVIEW_MAX_SIDE, {2: 384, 3: 300}.get(cols, 240))
    style = (f"display: grid; grid-template-columns: repeat({cols}, minmax(0, {col}px)); "
             "gap: 12px; align-items: start")
    figs = "".join(_figure(a, i + 1, max_side=max_side, alt=alt, scrub=scrub, single=False)
                   for i, a in enumerate(arts))
    return f'<div class="imagegen-gallery" data-columns="{cols}" style="{style}">{figs}</div>'


def without_status(message: str, status: Optional[int]) -> str:
    """`message` without a leading "HTTP 402: " when the status is shown beside it anyway."""
    if status and message.startswith(f"HTTP {status}: "):
        return message[len(f"HTTP {status}: "):]
    return message


def _where(status_code: Optional[int], code: Optional[str]) -> List[str]:
    """"HTTP 402", and the vendor's error code unless it only repeats the status (OpenRouter)."""
    return [p for p in (f"HTTP {status_code}" if status_code else "",
                        code if code and code != str(status_code) else "") if p]


def error_html(message: str, *, title: str = "Image generation failed", suggestions: Sequence[str] = (),
               auth_hint: Optional[str] = None, api_url: Optional[str] = None, status_code: Optional[int] = None,
               redact: Iterable[Optional[str]] = (), warning: bool = False, code: Optional[str] = None,
               raw: Optional[str] = None) -> str:
    """A readable error box: what failed (the status and the vendor's error code beside the title,
    the vendor's message once), what to do, which key was used (masked), where it was sent;
    `raw` (the answer's body, for --debug) folded away at the end."""
    scrub = redactor(redact)
    head = f"<b>{esc(title)}</b>"
    where = [esc(w) for w in _where(status_code, code)]
    if where:
        head += f" <span style='opacity: 0.8'>({' · '.join(where)})</span>"
    body = [f'<div class="imagegen-error" style="{STYLE_WARN if warning else _STYLE_ERROR}">', head,
            f'<div style="white-space: pre-wrap; margin-top: 2px">{esc(scrub(without_status(message, status_code)))}</div>']
    if suggestions:
        items = "".join(f"<li>{esc(scrub(s))}</li>" for s in suggestions)
        body.append(f'<ul style="margin: 4px 0 0 0; padding-left: 20px">{items}</ul>')
    details = []
    if auth_hint:
        details.append(f"key: <code>{esc(scrub(auth_hint))}</code>")
    if api_url:
        details.append(f"sent to <code>{esc(scrub(api_url))}</code>")
    if details:
        body.append(f'<div style="margin-top: 4px; opacity: 0.8">{" · ".join(details)}</div>')
    if raw:
        body.append(f'<details style="margin-top: 4px"><summary>the answer as sent (--debug)</summary>'
                    f'<pre style="white-space: pre-wrap; margin: 2px 0">{esc(scrub(raw))}</pre></details>')
    body.append("</div>")
    return "".join(body)


def error_text(message: str, *, title: str = "Image generation failed", suggestions: Sequence[str] = (),
               auth_hint: Optional[str] = None, api_url: Optional[str] = None,
               status_code: Optional[int] = None, redact: Iterable[Optional[str]] = (), code: Optional[str] = None,
               raw: Optional[str] = None) -> str:
    scrub = redactor(redact)
    head = title
    where = _where(status_code, code)
    if where:
        head += f" ({', '.join(where)})"
    lines = [f"{head}: {scrub(without_status(message, status_code))}"]
    for s in suggestions:
        lines.append(f"  - {scrub(s)}")
    if auth_hint:
        lines.append(f"  key: {scrub(auth_hint)}")
    if api_url:
        lines.append(f"  sent to: {scrub(api_url)}")
    if raw:
        lines.append(f"  the answer as sent: {scrub(raw)}")
    return "\n".join(lines)


def _failure(resp, debug: bool) -> Dict[str, Any]:
    """error_html / error_text arguments for a failed response."""
    exc = getattr(resp, "exception", None)
    return dict(suggestions=resp.suggestions, auth_hint=resp.auth_hint, api_url=resp.api_url,
                status_code=resp.status_code, code=getattr(exc, "code", None),
                raw=getattr(exc, "body", None) if debug else None)


def _summary(resp) -> str:
    n = len(resp.artifacts)
    what = f"{n} image{'s' if n != 1 else ''}"
    via = " ".join(x for x in (f"from {resp.model}" if resp.model else "",
                               f"({resp.api_type})" if resp.api_type else "") if x)
    attempts = f", {resp.attempts} attempt{'s' if resp.attempts != 1 else ''}" if resp.attempts else ""
    cached = " (from cache)" if getattr(resp, "from_cache", False) else ""
    return f"{what} {via} in {resp.elapsed:.1f} s{attempts}{cached}".replace("  ", " ")


def response_html(resp, *, max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE,
                  redact: Iterable[Optional[str]] = (), extra_errors: Sequence[str] = (), debug: bool = False) -> str:
    """Gallery + the model's text + error box(es) of an ImageResponse, as one HTML fragment."""
    redact = list(redact)
    scrub = redactor(redact)
    prompt = resp.request.prompt if getattr(resp, "request", None) is not None else ""
    parts = ['<div class="imagegen-response">']
    if resp.artifacts:
        parts.append(gallery_html(resp.artifacts, max_side=max_side, alt=truncate(prompt, 200), redact=redact))
    if resp.text:
        parts.append(f'<div class="imagegen-text" style="margin: 6px 0; white-space: pre-wrap">'
                     f'<span style="opacity: 0.7">model:</span> {esc(scrub(resp.text))}</div>')
    if resp.revised_prompt and not any(a.revised_prompt for a in resp.artifacts):
        parts.append(f'<div style="{_STYLE_CAPTION}"><i>revised prompt:</i> {esc(scrub(resp.revised_prompt))}</div>')
    if not resp.success:
        parts.append(error_html(resp.error or "no image was returned", redact=redact, **_failure(resp, debug)))
    elif resp.errors:
        parts.append(error_html("; ".join(resp.errors), title=f"{len(resp.errors)} of the images failed",
                                suggestions=resp.suggestions, status_code=resp.status_code, redact=redact,
                                warning=True))
    for msg in extra_errors:
        parts.append(error_html(msg, title="Warning", redact=redact, warning=True))
    parts.append("</div>")
    return "".join(parts)


def response_text(resp, *, redact: Iterable[Optional[str]] = (), compact: bool = False, debug: bool = False) -> str:
    """The text/plain form: one summary line, then one line per image (paths, revised prompts)."""
    redact = list(redact)
    scrub = redactor(redact)
    if not resp.success:
        if compact:
            return f"<ImageResponse failed: {truncate(scrub(resp.error or 'no image'), 160)}>"
        return error_text(resp.error or "no image was returned", redact=redact, **_failure(resp, debug))
    if compact:
        return f"<ImageResponse: {_summary(resp)}; shown above>"
    lines = [f"ImageResponse: {_summary(resp)}"]
    for i, a in enumerate(resp.artifacts):
        line = f"  [{i}] {_dims(a).replace('×', 'x')} {a.format} {human_bytes(len(a))}"
        if a.path:
            line += f"  saved: {a.path}"
        lines.append(line)
        if a.revised_prompt:
            lines.append(f"      revised prompt: {truncate(scrub(a.revised_prompt), 300)}")
    if resp.text:
        lines.append(f"  model: {truncate(scrub(resp.text), 500)}")
    if resp.errors:
        lines.append(f"  failed: {'; '.join(scrub(e) for e in resp.errors)}")
    return "\n".join(lines)


def image_output(artifact, max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE, *,
                 html: Optional[str] = None, text: Optional[str] = None) -> Output:
    """One image as a cell output: its PNG/JPEG preview under the standard image MIME type (with
    its width and height in the metadata), and the given HTML / text beside it."""
    mime, data, (w, h) = preview(artifact, max_side)
    out: Dict[str, Any] = {}
    md: Dict[str, Any] = {}
    if data and mime in PREVIEW_MIMES:
        out[mime] = base64.b64encode(data).decode("ascii")
        if w and h:
            md[mime] = {"width": w, "height": h}
    if html is not None:
        out["text/html"] = html
    if text is not None or not out:
        out["text/plain"] = text or ""
    return out, md


def layout_outputs(artifacts: Sequence, html: str, text: str, *,
                   max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE) -> List[Output]:
    """Cell outputs for an HTML layout of `artifacts` (a gallery, a grid): every image is an
    output of its own under a standard image MIME type, so every notebook consumer has it.

    The first output carries the layout (`html`, showing all the images, with captions) and
    `text`; each other image's output carries an HTML comment instead. A consumer that prefers
    HTML (JupyterLab, nbconvert's HTML and markdown) shows the layout once; one that prefers
    images (nbconvert's LaTeX/PDF) shows each image once. Either way no image is shown twice."""
    arts = list(artifacts)
    if not arts:
        return [({"text/plain": text, "text/html": html}, {})]
    outputs = [image_output(arts[0], max_side, html=html, text=text)]
    for i, art in enumerate(arts[1:], start=2):
        outputs.append(image_output(art, max_side, html=f"<!-- image {i} of {len(arts)}: in the layout above -->"))
    return outputs


def response_outputs(resp, *, max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE, redact: Iterable[Optional[str]] = (),
                     extra_errors: Sequence[str] = (), debug: bool = False) -> List[Output]:
    """The cell outputs of a response (what the magic shows and what displaying it shows): see
    `layout_outputs`; a response without images is one output (text and the error box).
    `debug` adds the raw body of an error answer."""
    redact = list(redact)
    html_ = response_html(resp, max_side=max_side, redact=redact, extra_errors=extra_errors, debug=debug)
    return layout_outputs(resp.artifacts, html_, response_text(resp, redact=redact, debug=debug), max_side=max_side)


def publish_outputs(outputs: Sequence[Output]) -> None:
    """Display each output in the current cell (IPython's display publisher)."""
    from IPython.display import display
    for data, md in outputs:
        display(data, raw=True, metadata=md)


# The magic renders the gallery itself (so `x = %imagegen ...` shows images too) and returns the
# response so `_` and Out[n] work. The displayhook would then render the same gallery a second time
# as Out[n]; a response marked "shown" displays nothing instead (`display_unless_shown`, its
# `_ipython_display_`), until the cell finishes (the magic clears the marks in a post_run_cell
# hook): the cell shows the view and no Out[] line. Displaying it later shows the gallery.
_SHOWN_ATTR = "_imagegen_shown"


def mark_shown(resp) -> None:
    """Mark `resp` as already rendered in this cell: its next display is the one-line form."""
    try:
        setattr(resp, _SHOWN_ATTR, True)
    except Exception:  # pragma: no cover - slotted subclasses
        pass


def clear_shown(resp) -> None:
    try:
        if getattr(resp, _SHOWN_ATTR, False):
            delattr(resp, _SHOWN_ATTR)
    except Exception:  # pragma: no cover
        pass


def response_mimebundle(resp, include=None, exclude=None, *,
                        max_side: Optional[int] = DEFAULT_PREVIEW_MAX_SIDE) -> Dict[str, str]:
    """What `ImageResponse._repr_mimebundle_` returns: text/html gallery + text/plain summary."""
    if is_shown(resp):
        return {"text/plain": response_text(resp, compact=True)}
    return select_mimetypes({"text/plain": response_text(resp), "text/html": response_html(resp, max_side=max_side)},
                            include, exclude)


def display_unless_shown(obj: Any, outputs: Callable[[], Sequence[Output]]) -> None:
    """`_ipython_display_` of a response or a grid: its `outputs()` in the cell, or nothing while
    it is marked as on screen (then the displayhook sends no Out[] either: IPython leaves the
    output to `_ipython_display_`, and still sets `_` and Out[n])."""
    if not is_shown(obj):
        publish_outputs(outputs())


def is_shown(obj: Any) -> bool:
    """True while `obj` is marked as already rendered in this cell (see `mark_shown`)."""
    return bool(getattr(obj, _SHOWN_ATTR, False))


def select_mimetypes(bundle: Dict[str, str], include=None, exclude=None) -> Dict[str, str]:
    """A `_repr_mimebundle_` answer with IPython's `include` / `exclude` applied."""
    if include:
        bundle = {k: v for k, v in bundle.items() if k in include}
    if exclude:
        bundle = {k: v for k, v in bundle.items() if k not in exclude}
    return bundle


# --------------------------------------------------------------------------------------------
# the event log
# --------------------------------------------------------------------------------------------
class EventLog:
    """The lines of the live log of one generation, rendered as HTML and text."""

    def __init__(self, title: str = "imagegen", *, redact: Iterable[Optional[str]] = ()):
        self.title = title
        self.lines: List[Tuple[float, str, str]] = []   # (seconds since start, kind, text)
        self.state = "waiting"
        self.request_id: Optional[str] = None
        self.t0: Optional[float] = None
        self.images_expected = 1
        self.images_received = 0
        self._scrub = redactor(redact)
        #: retry waits counting down: line index -> (monotonic deadline, text before, text after,
        #: the wait, the image index of the call it retries)
        self.countdowns: Dict[int, Tuple[float, str, str, float, Any]] = {}

    def _elapsed(self, now: Optional[float] = None) -> float:
        now = time.monotonic() if now is None else now
        if self.t0 is None:
            self.t0 = now
        return max(0.0, now - self.t0)

    def add(self, kind: str, text: str) -> None:
        self.lines.append((self._elapsed(), kind, self._scrub(text)))

    def add_event(self, event) -> None:
        d = event.data
        self.request_id = self.request_id or event.request_id
        t = event.type
        if t == ev.GENERATION_STARTED:
            self.state = "running"
            self.images_expected = d.get("n") if isinstance(d.get("n"), int) else 1
            self.add("start", event.describe())
            for notice in d.get("notices") or ():
                self.add("warn", str(notice))
        elif t == ev.IMAGE_RECEIVED:
            if self.images_expected > 1:   # progress of a fan-out; with one image "done" says it
                self.images_received += 1
                self.add("info", f"{event.describe()} · {self.images_received} of {self.images_expected}")
        elif t == ev.API_CALL:
            self._waited(d.get("index"))
            self.add("call", event.describe())
        elif t == ev.API_RETRY:
            self._add_retry(d)
        elif t == ev.GENERATION_COMPLETED:
            self._waited(every=True)
            self.state = "done"
            n = d.get("artifact_count", 0)
            text = f"done: {n} image{'s' if n != 1 else ''} in {d.get('elapsed', self._elapsed()):.1f} s"
            if d.get("failed"):
                text += f" ({d['failed']} failed)"
            self.add("done", text)
        elif t == ev.GENERATION_FAILED:
            self._waited(every=True)
            if d.get("cancelled"):
                self.cancel()
            else:
                self.state = "failed"
                status = d.get("status_code")
                # the message itself is in the error box under the log: said once
                self.add("failed", f"failed{f' (HTTP {status})' if status else ''} after {self._elapsed():.1f} s")
        else:
            self.add("info", event.describe())

    def _add_retry(self, d: Dict[str, Any]) -> None:
        """"429 rate limited — retrying in 3 s (attempt 1 failed) · <the server's message>": the
        seconds count down as the log is drawn again (`counting`), then "retried after 3 s"."""
        status = d.get("status_code")
        reason = str(d.get("reason") or "")
        if isinstance(status, int) and status >= 300:
            head = f"{status} {STATUS_WORDS.get(status, 'error')}"
            said = re.sub(r"^HTTP \d+:\s*", "", reason)
        else:   # no answer, or a 2xx with a broken body: the reason is what happened
            head, said = truncate(reason or "network error", 120), ""
        delay = d.get("delay") if isinstance(d.get("delay"), (int, float)) else 0.0
        tail = f" (attempt {d.get('attempt')} failed)" + (f" · {truncate(said, 160)}" if said else "")
        self.add("retry", f"{head} — retrying in {_seconds(delay)}{tail}")
        self.countdowns[len(self.lines) - 1] = (time.monotonic() + delay, head, tail, delay, d.get("index"))

    def _waited(self, index: Any = None, *, every: bool = False) -> None:
        """The retry wait of the call for image `index` (or every wait) is over: its line says so
        ("429 rate limited — retried after 3 s") and stops counting."""
        for line, (_, head, tail, delay, of) in list(self.countdowns.items()):
            if every or of == index:
                del self.countdowns[line]
                t, kind, _ = self.lines[line]
                self.lines[line] = (t, kind, self._scrub(f"{head} — retried after {_seconds(delay)}{tail}"))

    def counting(self) -> bool:
        """True while a retry wait is counting down (drawing the log again changes it)."""
        return bool(self.countdowns)

    def text_of(self, index: int, now: Optional[float] = None) -> str:
        """Line `index` as it reads now (a retry wait counts down to its next attempt)."""
        if index not in self.countdowns:
            return self.lines[index][2]
        deadline, head, tail, delay, _ = self.countdowns[index]
        left = deadline - (time.monotonic() if now is None else now)
        if left <= 0.05:
            return self._scrub(f"{head} — retrying now{tail}")
        # whole seconds while a long wait counts down (3 s, 2 s, 1 s); a short wait as it was said
        return self._scrub(f"{head} — retrying in {_seconds(max(left, 1.0) if delay >= 1 else left)}{tail}")

    def cancel(self, text: Optional[str] = None) -> None:
        if self.state == "cancelled":
            return
        self.countdowns.clear()   # the wait was interrupted: its line keeps "retrying in N s"
        self.state = "cancelled"
        self.add("cancelled", text or f"cancelled after {self._elapsed():.1f} s (interrupted); nothing more will be sent")

    def to_text(self) -> str:
        head = f"{self.title} [{self.state}]"
        return "\n".join([head] + [f"  {t:5.1f}s  {self.text_of(i)}" for i, (t, _, _) in enumerate(self.lines)])

    def to_html(self) -> str:
        color = _LOG_COLORS.get(self.state, "#9e9e9e")
        icons = {"start": "▶", "call": "→", "retry": "↻", "done": "✔", "failed": "✖", "cancelled": "■",
                 "info": "·", "warn": "⚠"}
        rows = []
        for i, (t, kind, _) in enumerate(self.lines):
            text = self.text_of(i)
            weight = "font-weight: 600; " if kind in ("done", "failed", "cancelled") else ""
            kcolor = KIND_COLORS.get(kind)
            style = weight + (f"color: {kcolor}" if kcolor else "")
            rows.append(f'<div style="{style}"><span style="{STYLE_MUTED}">{t:5.1f}s</span> '
                        f'{icons.get(kind, "·")} {esc(text)}</div>')
        if not rows:
            rows.append(f'<div style="{STYLE_MUTED}">waiting…</div>')
        head = (f'<div style="{STYLE_MUTED}">{esc(self.title)}'
                + (f' · <span title="request id">{esc(self.request_id)}</span>' if self.request_id else "")
                + "</div>")
        return (f'<div class="imagegen-log" data-state="{esc(self.state)}" '
                f'style="{_STYLE_LOG.format(color=color)}">{head}{"".join(rows)}</div>')

    def bundle(self) -> Dict[str, str]:
        return {"text/plain": self.to_text(), "text/html": self.to_html()}


def _seconds(s: float) -> str:
    """A wait in whole seconds, rounded up ("3 s"); under a second with one decimal ("0.3 s")."""
    return f"{math.ceil(s - 1e-9)} s" if s >= 1 else f"{max(s, 0.0):.1f} s"


def refusal_message(error: Exception) -> str:
    """The one line shown when a request was refused before anything was sent."""
    if isinstance(error, MissingTokenError):
        return (f"no API token: set the {error.variable} environment variable (in a notebook: "
                f"%env {error.variable}=...); nothing was sent")
    return str(error)
