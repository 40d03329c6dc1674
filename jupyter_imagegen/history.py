"""The kernel's image history: every request made through the magic, the form and `compare`.

    from jupyter_imagegen import history
    history                   # an HTML table with thumbnails (also: %imagegen_history)
    history[-1]               # the latest entry; history[3] is entry #3 (numbered from 1)
    history[3].rerun()        # send the same request again (answered from the cache if unchanged)
    history[3].artifacts[0]   # its first image, e.g. as an input: ImageRequest(images=[...])
    history.record(resp)      # add a response made elsewhere (the form calls this)

This module *is* the history: ``jupyter_imagegen.history`` supports ``len()``, indexing, iteration
and rich display. Entries keep the prompt, the settings, timing, attempts, usage/cost, saved
paths, ``from_cache`` and the error -- never the token (requests are copied without it and
without credential headers). Memory is bounded: the last `MAX_ENTRIES` entries are kept, and
their images live within the kernel's one image-memory budget (`jupyter_imagegen.memory`,
``IMAGE_MEMORY_BUDGET_MB``): beyond it the least recently used images move to a spool file and
are read back when used. `History.bytes_in_memory` says what the entries really hold.

Plain `ImageClient` calls are not recorded (a library call has no side effects); call
`record(resp)` to add one.
"""
from __future__ import annotations

import sys
import threading
import time
import types
from collections import deque
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .secret import secret_forms
from .model import Artifact, ImageRequest, ImageResponse
from .render import Output, esc, preview, publish_outputs, response_mimebundle, response_outputs
from .theme import BORDER_SUBTLE, COLOR_ERROR, COLOR_WARN, STYLE_MUTED

__all__ = ["History", "HistoryEntry", "record", "clear", "entries", "get", "table_html", "text", "show",
           "MAX_ENTRIES", "THUMB_SIDE"]

#: entries kept in memory
MAX_ENTRIES = 500
#: longest side of the thumbnails in the history table
THUMB_SIDE = 96

#: request headers never copied into the history (credentials) or not worth repeating
_DROP_HEADERS = ("authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "x-emulator-fault")


def _clean_request(request: Optional[ImageRequest]) -> Optional[ImageRequest]:
    """A copy without the token, credential headers and one-off cache switches."""
    if request is None:
        return None
    forms = secret_forms(request.token)
    headers = {k: v for k, v in (request.headers or {}).items()
               if k.lower() not in _DROP_HEADERS and not any(f in str(v) for f in forms)}
    return request.replace(token=None, headers=headers, fresh=False, cache=None,
                           images=list(request.images or []), params=dict(request.params or {}),
                           request_id=request.request_id)


#: what re-runs an entry: the kernel runtime (`runtime.Runtime`), set by `use_runner`
_runner: Any = None


def use_runner(runner: Any) -> None:
    """Set what `HistoryEntry.rerun` sends requests through (the kernel runtime registers
    itself when it is imported; the history itself sends nothing)."""
    global _runner
    _runner = runner


def _the_runner() -> Any:
    if _runner is None:
        raise RuntimeError("re-running needs the kernel runtime: import jupyter_imagegen.runtime first")
    return _runner


class HistoryEntry:
    """One request and its outcome: `response` is the full ImageResponse (its images within the
    kernel's memory budget)."""

    def __init__(self, number: int, resp: ImageResponse, *, source: str, request: Optional[ImageRequest],
                 rerun_of: Optional[int] = None):
        from .saving import request_settings
        self.number = number
        self.time = time.time()
        self.source = source
        self.rerun_of = rerun_of
        self.request = _clean_request(request if request is not None else resp.request)
        self.settings: Dict[str, Any] = request_settings(self.request, resp)
        self.request_id = resp.request_id
        self.success = bool(resp.success)
        self.error = resp.error
        self.errors = list(resp.errors or [])
        self.status_code = resp.status_code
        self.model = resp.model or self.settings.get("model")
        self.api_type = resp.api_type or self.settings.get("api_type")
        self.elapsed = resp.elapsed
        self.attempts = resp.attempts
        self.usage = resp.usage
        self.from_cache = bool(getattr(resp, "from_cache", False))
        self.revised_prompt = resp.revised_prompt
        self.text = resp.text
        self.artifact_count = len(resp.artifacts)
        #: the size of the entry's images (encoded bytes; in memory or spooled)
        self.bytes = sum(a.nbytes for a in resp.artifacts)
        self._paths = resp.paths          # the same list: paths saved after recording show up too
        self._response = resp
        #: the table's thumbnails once made (a few kB each: kept, so showing the table later does
        #: not read spooled images back)
        self._thumbs: Optional[List[Tuple[str, bytes, Tuple[Optional[int], Optional[int]]]]] = None

    # -- facts ----------------------------------------------------------------------------------
    @property
    def prompt(self) -> str:
        return (self.request.prompt if self.request is not None else self.settings.get("prompt")) or ""

    @property
    def paths(self) -> List[str]:
        return list(self._paths)

    @property
    def cost(self) -> Optional[float]:
        return self.usage.cost if self.usage is not None else None

    @property
    def response(self) -> ImageResponse:
        """The full response."""
        return self._response

    @property
    def artifacts(self) -> List[Artifact]:
        """The full-size images (read back from the spool when the memory budget moved them out)."""
        return list(self._response.artifacts)

    def memory_cost(self) -> int:
        """Bytes this entry's images hold in memory now (bytes, previews, kept pixels) and its
        thumbnails."""
        return sum(a.memory_cost() for a in self._response.artifacts) + self._thumb_bytes()

    def _thumb_bytes(self) -> int:
        return sum(len(t[1]) for t in self._thumbs or ())

    @property
    def images(self) -> list:
        return [a.image for a in self.artifacts]

    @property
    def image(self):
        arts = self.artifacts
        return arts[0].image if arts else None

    def thumbnails(self) -> List[Tuple[str, bytes, Tuple[Optional[int], Optional[int]]]]:
        """(mime, bytes, (w, h)) of each image at most `THUMB_SIDE` px, made once (from the
        preview already shown when there is one) and kept by the entry."""
        if self._thumbs is None:
            self._thumbs = [preview(a, THUMB_SIDE) for a in self._response.artifacts]
        return self._thumbs

    # -- actions --------------------------------------------------------------------------------
    def to_request(self, **overrides: Any) -> ImageRequest:
        """The same request again (a new request id); keyword overrides win."""
        if self.request is None:
            raise ValueError(f"history entry #{self.number} has no request to re-run")
        return self.request.replace(images=list(self.request.images or []), params=dict(self.request.params or {}),
                                    headers=dict(self.request.headers or {}), **overrides)

    def rerun(self, *, client=None, **overrides: Any) -> ImageResponse:
        """Send this request again and return the new response (recorded as a new entry).

        With the request cache on, an unchanged request is answered from the cache at no cost;
        pass ``fresh=True`` (or ``seed=...``) for a new sample, or any other ImageRequest field.
        """
        return _the_runner().run(self.to_request(**overrides), client=client, source="rerun", rerun_of=self.number)

    async def arerun(self, *, client=None, **overrides: Any) -> ImageResponse:
        """`rerun` for async code (the form)."""
        return await _the_runner().arun(self.to_request(**overrides), client=client, source="rerun",
                                        rerun_of=self.number)

    # -- display --------------------------------------------------------------------------------
    def summary(self) -> str:
        if self.success:
            what = f"{self.artifact_count} image{'s' if self.artifact_count != 1 else ''}"
            if self.from_cache:
                what += " (cache)"
        else:
            what = f"failed: {(self.error or '')[:80]}"
        return f"#{self.number} {self.model} ({self.api_type}) {what} — {self.prompt[:60]!r}"

    def __repr__(self) -> str:
        return f"<HistoryEntry {self.summary()}>"

    def _head(self) -> str:
        return f"<div style='{STYLE_MUTED}; font-size:12px'>history #{self.number} · {esc(self.prompt[:200])}</div>"

    def outputs(self) -> List[Output]:
        """The entry as cell outputs: its response's (one standard image output per image) under
        a 'history #N' line, or its table row when its images are no longer kept."""
        if self._response is None:
            return [({"text/plain": repr(self), "text/html": _table([self])}, {})]
        outputs = response_outputs(self._response)
        (data, md), rest = outputs[0], outputs[1:]
        return [({**data, "text/html": self._head() + data.get("text/html", "")}, md), *rest]

    def _ipython_display_(self) -> None:
        publish_outputs(self.outputs())

    def _repr_mimebundle_(self, include=None, exclude=None):
        if self._response is not None:
            bundle = dict(response_mimebundle(self._response))
            if "text/html" in bundle:
                bundle["text/html"] = self._head() + bundle["text/html"]
            return bundle
        return {"text/plain": repr(self), "text/html": _table([self])}


def _fmt_settings(s: Dict[str, Any]) -> str:
    parts = []
    for key, label in (("size", "size"), ("aspect_ratio", "aspect"), ("quality", "quality"),
                       ("output_format", "format"), ("background", "bg"), ("n", "n"), ("seed", "seed")):
        v = s.get(key)
        if v is not None and not (key == "n" and v == 1):
            parts.append(f"{label}={v}")
    if s.get("images"):
        parts.append(f"inputs={len(s['images'])}")
    if isinstance(s.get("sent"), dict) and s["sent"]:
        parts.append("(sent " + " ".join(f"{k}={v}" for k, v in s["sent"].items()) + ")")
    return " ".join(parts)


def _fmt_usage(e: HistoryEntry) -> str:
    u = e.usage
    if u is None:
        return ""
    parts = []
    if u.cost is not None:
        parts.append(f"${u.cost:.4f}")
    if u.total_tokens is not None:
        parts.append(f"{u.total_tokens:,} tok")
    elif u.input_tokens is not None or u.output_tokens is not None:
        parts.append(f"{(u.input_tokens or 0) + (u.output_tokens or 0):,} tok")
    return " · ".join(parts)


def _table(items: Sequence[HistoryEntry], *, total: Optional[int] = None) -> str:
    import base64
    cell = "padding: 4px 8px; text-align: left; vertical-align: top; border-bottom: 1px solid " + BORDER_SUBTLE
    head = ("#", "time", "images", "prompt", "model / API", "settings", "result", "usage", "files")
    rows = []
    for e in items:
        thumbs = []
        for mime, data, (w, h) in e.thumbnails():
            if data:
                size = f' width="{w}" height="{h}"' if w and h else ""
                thumbs.append(f'<img src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}"{size} '
                              f'style="max-width:{THUMB_SIDE}px;height:auto;margin:0 2px 2px 0;border-radius:2px" '
                              f'alt="{esc(e.prompt[:100])}"/>')
        if e.success:
            result = f"{e.artifact_count} image{'s' if e.artifact_count != 1 else ''}"
            result += " · from cache" if e.from_cache else f" · {e.elapsed:.1f} s · {e.attempts} attempt" + \
                ("s" if e.attempts != 1 else "")
            if e.errors:
                result += f"<br><span style='color:{COLOR_WARN}'>{len(e.errors)} failed</span>"
        else:
            code = f"HTTP {e.status_code}: " if e.status_code else ""
            result = f"<span style='color:{COLOR_ERROR}'>failed</span><br>{esc(code + (e.error or '')[:200])}"
        files = "<br>".join(f"<code>{esc(p)}</code>" for p in e.paths[:4])
        if len(e.paths) > 4:
            files += f"<br>(+{len(e.paths) - 4} more)"
        src = f"<br><span style='{STYLE_MUTED}'>{esc(e.source)}" + \
              (f" of #{e.rerun_of}" if e.rerun_of else "") + "</span>"
        prompt = e.prompt
        cells = [
            f"<b>{e.number}</b>",
            esc(time.strftime("%H:%M:%S", time.localtime(e.time))) + src,
            "".join(thumbs),
            f'<span title="{esc(prompt)}">{esc(prompt if len(prompt) <= 160 else prompt[:159] + "…")}</span>',
            f"{esc(e.model)}<br><span style='opacity:.7'>{esc(e.api_type)}</span>",
            esc(_fmt_settings(e.settings)),
            result,
            esc(_fmt_usage(e)),
            files,
        ]
        rows.append("<tr>" + "".join(f'<td style="{cell}">{c}</td>' for c in cells) + "</tr>")
    if not rows:
        return "<div class='imagegen-history' style='opacity:.7'>imagegen history: no requests yet</div>"
    ths = "".join(f'<th style="{cell}">{h}</th>' for h in head)
    shown = len(items)
    caption = f"imagegen history: {shown} entr{'y' if shown == 1 else 'ies'}"
    if total is not None and total > shown:
        caption += f" (latest {shown} of {total}; %imagegen_history --all shows every one)"
    caption += " · <code>history[N].rerun()</code> · <code>history[N].artifacts</code>"
    return (f"<div class='imagegen-history'><div style='opacity:.75;font-size:12px;margin-bottom:4px'>{caption}</div>"
            f"<table style='border-collapse:collapse;font-size:12px'><thead><tr>{ths}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


class History:
    """A bounded list of `HistoryEntry`, numbered from 1 in recording order."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self.max_entries = int(max_entries)
        self._entries: Deque[HistoryEntry] = deque()
        self._next = 1
        self._lock = threading.RLock()

    # -- recording ------------------------------------------------------------------------------
    def record(self, resp: ImageResponse, *, source: str = "python", request: Optional[ImageRequest] = None,
               rerun_of: Optional[int] = None) -> HistoryEntry:
        """Add `resp` (recording the same response object twice returns the existing entry)."""
        if not isinstance(resp, ImageResponse):
            raise TypeError(f"record() takes an ImageResponse, not {type(resp).__name__}")
        with self._lock:
            for e in list(self._entries)[-16:]:
                if e._response is resp:
                    return e
            entry = HistoryEntry(self._next, resp, source=source, request=request, rerun_of=rerun_of)
            self._next += 1
            self._entries.append(entry)
            while len(self._entries) > self.max_entries:
                self._entries.popleft()
            return entry

    @property
    def bytes_in_memory(self) -> int:
        """Bytes the entries' images hold in memory now (the rest is spooled to disk)."""
        with self._lock:
            entries = list(self._entries)
        seen, total = set(), 0
        for e in entries:
            total += e._thumb_bytes()
            for a in e._response.artifacts:
                if id(a) not in seen:
                    seen.add(id(a))
                    total += a.memory_cost()
        return total

    def clear(self) -> None:
        """Forget every entry (numbering continues)."""
        with self._lock:
            self._entries.clear()

    # -- access ---------------------------------------------------------------------------------
    @property
    def entries(self) -> List[HistoryEntry]:
        with self._lock:
            return list(self._entries)

    def get(self, number: int) -> HistoryEntry:
        """Entry `number` (as shown in the table); negative numbers count from the latest."""
        items = self.entries
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"history entries are numbered: history[3], history[-1] (got {number!r})")
        if number < 0:
            if -number > len(items):
                raise IndexError(f"history[{number}]: there are only {len(items)} entries")
            return items[number]
        if number == 0:
            raise IndexError("history entries are numbered from 1 (as in the table); history[-1] is the latest")
        for e in items:
            if e.number == number:
                return e
        if items and number < items[0].number:
            raise IndexError(f"history entry #{number} was dropped (the latest {self.max_entries} are kept)")
        raise IndexError(f"no history entry #{number} yet"
                         + (f" (the latest is #{items[-1].number})" if items else " (nothing recorded yet)"))

    def __getitem__(self, key: Union[int, slice]) -> Union[HistoryEntry, List[HistoryEntry]]:
        if isinstance(key, slice):
            return self.entries[key]
        return self.get(key)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[HistoryEntry]:
        return iter(self.entries)

    @property
    def last(self) -> Optional[HistoryEntry]:
        items = self.entries
        return items[-1] if items else None

    # -- display --------------------------------------------------------------------------------
    def table_html(self, limit: Optional[int] = 20) -> str:
        items = self.entries
        shown = items if not limit else items[-limit:]
        return _table(list(reversed(shown)), total=len(items))

    def text(self, limit: Optional[int] = 20) -> str:
        items = self.entries
        shown = items if not limit else items[-limit:]
        if not shown:
            return "imagegen history: no requests yet"
        return "\n".join(["imagegen history (latest first):"] + [f"  {e.summary()}" for e in reversed(shown)])

    def __repr__(self) -> str:
        return f"<imagegen history: {len(self)} entries>"

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": self.text(), "text/html": self.table_html()}


#: the kernel's history (this module delegates to it)
_history = History()


def record(resp: ImageResponse, *, source: str = "python", request: Optional[ImageRequest] = None,
           rerun_of: Optional[int] = None) -> HistoryEntry:
    """Record a response in the kernel's history; returns its entry.

    The magic records ``source="magic"``, `compare` ``"compare"``; the form should call
    ``history.record(resp, source="form")`` once the response is there (after saving, so the
    paths are listed; later saves still show up since the entry shares ``resp.paths``).
    """
    return _history.record(resp, source=source, request=request, rerun_of=rerun_of)


def clear() -> None:
    _history.clear()


def entries() -> List[HistoryEntry]:
    return _history.entries


def get(number: int) -> HistoryEntry:
    return _history.get(number)


def table_html(limit: Optional[int] = 20) -> str:
    return _history.table_html(limit)


def text(limit: Optional[int] = 20) -> str:
    return _history.text(limit)


def show(limit: Optional[int] = 20) -> None:
    """Display the table (what %imagegen_history does)."""
    from IPython.display import display
    display({"text/plain": _history.text(limit), "text/html": _history.table_html(limit)}, raw=True)


def _repr_mimebundle_(include=None, exclude=None):
    return _history._repr_mimebundle_(include, exclude)


class _HistoryModule(types.ModuleType):
    """Makes `jupyter_imagegen.history` itself indexable, sized, iterable and displayable."""

    def __getitem__(self, key):
        return _history[key]

    def __len__(self) -> int:
        return len(_history)

    def __iter__(self):
        return iter(_history)

    def __bool__(self) -> bool:  # a module is always true, even with no entries
        return True

    def __repr__(self) -> str:
        return repr(_history)

    @property
    def last(self) -> Optional[HistoryEntry]:
        return _history.last

    @property
    def history(self) -> History:
        return _history

    @property
    def bytes_in_memory(self) -> int:
        """Bytes the entries' images hold in memory now (`History.bytes_in_memory`)."""
        return _history.bytes_in_memory


sys.modules[__name__].__class__ = _HistoryModule
