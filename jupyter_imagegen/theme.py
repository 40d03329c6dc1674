"""Colours and styles of everything the package shows (log, error boxes, captions, form messages).

One place, so contrast can be checked and fixed for JupyterLab's light and dark themes together
(tests/test_browser_outputs.py measures the rendered text against WCAG AA, 4.5:1, in both).
Pure constants: no imports from the package.

No fixed colour can be readable as text on both themes' backgrounds (an orange dark enough for
4.5:1 on white is too dark on #111), so coloured text is JupyterLab's own colour for its meaning
(``--jp-warn-color0``, ``--jp-error-color0``, ``--jp-success-color0``: each theme sets its own)
mixed 75 % with the text colour around it (``currentColor``): darker on a light theme, lighter on
a dark one, at least 4.8:1 on the log's, the page's and the error box's background in both.
Muted text is the theme's text colour at 75 % alpha instead of ``opacity`` (which also faded any
colour of the line it sits in).

JupyterLab's sanitizer (outputs of an untrusted notebook, e.g. one reopened from disk) drops
declarations whose value uses ``var()`` or ``color-mix()``: such text then inherits the theme's
text colour (readable, not coloured); layout declarations are plain values and survive. Fixed
colours (``LOG_COLORS`` borders, the boxes' borders and tinted backgrounds) are not text.
"""
from __future__ import annotations

__all__ = ["FONT", "STYLE_LOG", "STYLE_ERROR", "STYLE_WARN", "STYLE_CAPTION", "LOG_COLORS", "KIND_COLORS",
           "COLOR_WARN", "COLOR_ERROR", "COLOR_OK", "COLOR_MUTED", "STYLE_MUTED", "BORDER_SUBTLE",
           "BACKGROUND_SUBTLE"]


def _tint(variable: str, fallback: str) -> str:
    """JupyterLab's colour `variable` (`fallback` outside JupyterLab) mixed 75 % with the
    surrounding text colour: readable (>= 4.5:1) on the light and the dark theme."""
    return f"color-mix(in srgb, var({variable}, {fallback}) 75%, currentColor)"


#: text colours by meaning (CSS colour values, for ``color: ...``)
COLOR_WARN = _tint("--jp-warn-color0", "#e65100")
COLOR_ERROR = _tint("--jp-error-color0", "#c62828")
COLOR_OK = _tint("--jp-success-color0", "#2e7d32")
#: secondary text (timestamps, the log's title, notes): the theme's text colour at 75 % alpha,
#: whatever the colour of the line it is in
COLOR_MUTED = "color-mix(in srgb, var(--jp-content-font-color1, currentColor) 75%, transparent)"
#: a style attribute for secondary text (use it instead of ``opacity: 0.55`` ... ``0.8``)
STYLE_MUTED = f"color: {COLOR_MUTED}"
#: thin borders and faint backgrounds that work on both themes (grey at a low alpha)
BORDER_SUBTLE = "rgba(127,127,127,0.25)"
BACKGROUND_SUBTLE = "rgba(127,127,127,0.06)"

#: the monospace font of the log: a plain list first (what JupyterLab's sanitizer keeps), then
#: JupyterLab's code font
FONT = ("font-family: SFMono-Regular, Menlo, Consolas, monospace; "
        "font-family: var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace)")
STYLE_LOG = (f"{FONT}; font-size: 12px; line-height: 1.45; margin: 2px 0 6px 0; padding: 4px 10px; "
             f"border-left: 3px solid {{color}}; background: {BACKGROUND_SUBTLE}; border-radius: 2px")
STYLE_ERROR = ("margin: 4px 0; padding: 8px 12px; border-left: 4px solid #d32f2f; "
               "background: rgba(211,47,47,0.08); border-radius: 3px; line-height: 1.45")
STYLE_WARN = ("margin: 4px 0; padding: 6px 12px; border-left: 4px solid #ed6c02; "
              "background: rgba(237,108,2,0.08); border-radius: 3px; line-height: 1.45")
#: captions under images (opacity 0.75 of the theme's text: 7:1 and more on both themes);
#: overflow-wrap first, the one JupyterLab's sanitizer keeps
STYLE_CAPTION = ("font-size: 12px; opacity: 0.75; margin-top: 3px; line-height: 1.35; "
                 "overflow-wrap: break-word; word-break: break-word")
#: the colour of the log's left border by state (a border, not text: fixed colours are fine)
LOG_COLORS = {"waiting": "#9e9e9e", "running": "#1976d2", "done": "#2e7d32", "failed": "#d32f2f",
              "cancelled": "#ed6c02"}
#: the text colour of a log line of this kind (other kinds use the theme's text colour); also
#: the form's messages ("failed" for an error)
KIND_COLORS = {"retry": COLOR_WARN, "failed": COLOR_ERROR, "done": COLOR_OK, "cancelled": COLOR_WARN,
               "warn": COLOR_WARN}
