"""The form's cards: an input image (thumbnail or the reason it was refused, and *remove*) and a
run in the history (prompt, settings, thumbnails with *use as input*, *reuse settings*)."""
from __future__ import annotations

import time
from typing import Any, Callable

import ipywidgets as W

from .form_fields import FormRun, InputSlot
from .model import Artifact
from .render import esc, preview, truncate
from .theme import KIND_COLORS, LOG_COLORS

__all__ = ["input_card", "history_card", "history_title_html"]


def input_card(slot: InputSlot, on_remove: Callable[[InputSlot], Any], side: int = 96) -> InputSlot:
    """Give `slot` its card (`slot.widget`): a thumbnail and its name, or the reason it was refused;
    and a remove button (`slot.remove_button`) that calls ``on_remove(slot)``."""
    remove = W.Button(description="remove", icon="times", tooltip=f"remove {slot.name}",
                      layout=W.Layout(width="96px"))
    remove.add_class("imagegen-remove")
    remove.on_click(lambda _b, s=slot: on_remove(s))
    slot.remove_button = remove
    if slot.image is not None:
        mime, data, _ = preview(Artifact(slot.image.data, slot.image.mime_type), side)
        if data:
            top: Any = W.Image(value=data, format=mime.split("/")[-1], layout=W.Layout(max_width=f"{side}px",
                                                                                     max_height=f"{side}px"))
        else:  # pragma: no cover - a validated image always previews
            top = W.HTML("<div style='width: 96px; height: 64px'>(no preview)</div>")
        label = W.HTML(f"<div style='font-size: 11px; max-width: {side}px; overflow: hidden; "
                       f"text-overflow: ellipsis; white-space: nowrap' title='{esc(slot.name)}'>"
                       f"{esc(slot.name)}</div>")
        slot.widget = W.VBox([top, label, remove], layout=W.Layout(width=f"{side + 8}px", padding="2px"))
    else:
        top = W.HTML(f"<div style='font-size: 11px; color: {KIND_COLORS['failed']}; max-width: 160px; "
                     f"overflow-wrap: break-word'>✖ <b>{esc(slot.name)}</b>: {esc(slot.error)}</div>")
        slot.widget = W.VBox([top, remove], layout=W.Layout(width="170px", padding="2px",
                                                            border=f"1px solid {LOG_COLORS['failed']}"))
    slot.widget.add_class("imagegen-input")
    return slot


def history_card(entry: FormRun, thumbnail_size: int, *, on_use: Callable[[Artifact, int, FormRun], Any],
                 on_reuse: Callable[[FormRun], Any]) -> W.VBox:
    """Give a run of the form its history card (`entry.widget`): prompt, settings, thumbnails each
    with "use as input" (``on_use(artifact, k, entry)``), and "reuse settings" (``on_reuse(entry)``)."""
    resp, s = entry.response, entry.settings
    when = time.strftime("%H:%M:%S", time.localtime(entry.finished_at))
    tags = [when, f"{len(resp.artifacts)} image{'s' if len(resp.artifacts) != 1 else ''}"]
    if resp.model:
        tags.append(resp.model)
    tags.append("from cache" if resp.from_cache else f"{resp.elapsed:.1f} s")
    if resp.attempts > 1:
        tags.append(f"{resp.attempts} attempts")
    if resp.paths:
        tags.append(f"saved to {s.save_dir}")
    head = W.HTML(
        f"<div style='line-height: 1.35'><b>{esc(truncate(s.prompt, 240))}</b><br>"
        f"<span style='font-size: 12px; opacity: 0.75'>{esc(s.summary())}<br>{esc(' · '.join(tags))}</span></div>")
    figures = []
    for i, art in enumerate(resp.artifacts):
        mime, data, (w, h) = preview(art, thumbnail_size)
        if data:
            img: Any = W.Image(value=data, format=mime.split("/")[-1],
                               layout=W.Layout(max_width=f"{thumbnail_size}px",
                                               max_height=f"{thumbnail_size}px"))
        else:
            img = W.HTML("<div style='padding: 10px; opacity: 0.6'>(no preview)</div>")
        use = W.Button(description="use as input", icon="level-up", tooltip="add this image to the input images",
                       layout=W.Layout(width=f"{max(thumbnail_size, 120)}px"))
        use.add_class("imagegen-use-as-input")
        use.on_click(lambda _b, a=art, k=i, e=entry: on_use(a, k, e))
        entry.use_buttons.append(use)
        figures.append(W.VBox([img, use], layout=W.Layout(padding="2px")))
    reuse = W.Button(description="reuse settings", icon="undo", tooltip="put this run's prompt and settings back")
    reuse.add_class("imagegen-reuse")
    reuse.on_click(lambda _b, e=entry: on_reuse(e))
    entry.reuse_button = reuse
    card = W.VBox([head, W.HBox(figures, layout=W.Layout(flex_flow="row wrap")), reuse],
                  layout=W.Layout(border="1px solid rgba(127,127,127,0.35)", padding="6px", margin="4px 0",
                                  width="auto"))   # 100% plus the padding and border would stick out
    card.add_class("imagegen-history-entry")
    entry.widget = card
    return card


def history_title_html(n: int) -> str:
    """The title above the form's history ("" while it is empty)."""
    return ("" if not n else
                                f"<div style='margin-top: 8px; font-weight: 600'>History "
                                f"<span style='opacity: 0.6; font-weight: normal'>({n} run{'s' if n != 1 else ''}, "
                                f"newest first)</span></div>")
