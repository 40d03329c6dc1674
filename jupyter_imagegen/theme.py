"""Colours and styles of everything the package shows (log, error boxes, captions, form messages).

One place, so contrast can be checked and fixed for JupyterLab's light and dark themes together.
Pure constants: no imports from the package.
"""
from __future__ import annotations

__all__ = ["FONT", "STYLE_LOG", "STYLE_ERROR", "STYLE_WARN", "STYLE_CAPTION", "LOG_COLORS", "KIND_COLORS"]

FONT = "font-family: var(--jp-code-font-family, ui-monospace, SFMono-Regular, Menlo, monospace)"
STYLE_LOG = (f"{FONT}; font-size: 12px; line-height: 1.45; margin: 2px 0 6px 0; padding: 4px 10px; "
             "border-left: 3px solid {color}; background: rgba(127,127,127,0.06); border-radius: 2px")
STYLE_ERROR = ("margin: 4px 0; padding: 8px 12px; border-left: 4px solid #d32f2f; "
               "background: rgba(211,47,47,0.08); border-radius: 3px; line-height: 1.45")
STYLE_WARN = ("margin: 4px 0; padding: 6px 12px; border-left: 4px solid #ed6c02; "
              "background: rgba(237,108,2,0.08); border-radius: 3px; line-height: 1.45")
STYLE_CAPTION = "font-size: 12px; opacity: 0.75; margin-top: 3px; line-height: 1.35; word-break: break-word"
LOG_COLORS = {"waiting": "#9e9e9e", "running": "#1976d2", "done": "#2e7d32", "failed": "#d32f2f",
              "cancelled": "#ed6c02"}
#: the text colour of a log line of this kind (other kinds use the theme's text colour)
KIND_COLORS = {"retry": "#ed6c02", "failed": "#d32f2f", "done": "#2e7d32", "cancelled": "#ed6c02",
               "warn": "#ed6c02"}
