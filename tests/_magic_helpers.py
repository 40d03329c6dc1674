"""Helpers for the display / magic tests: a display publisher that records every message, the
background loop's task count, and an interrupt (SIGINT) sent when something has happened."""
from __future__ import annotations

import _thread
import asyncio
import contextlib
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from IPython.core.displaypub import DisplayPublisher

from jupyter_imagegen import loop_thread


class RecordingPublisher(DisplayPublisher):
    """Records what a kernel would send: `display_data` vs `update_display_data`, with the
    display_id from `transient`. `probe()`, if given, is called at each publish and its value
    stored (e.g. which files exist at that moment)."""

    def __init__(self, shell=None, probe: Optional[Callable[[], Any]] = None):
        super().__init__(shell=shell)
        self.messages: List[Dict[str, Any]] = []
        self.probe = probe

    def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kwargs):
        self.messages.append({
            "msg_type": "update_display_data" if update else "display_data",
            "display_id": (transient or {}).get("display_id"),
            "data": data,
            "metadata": metadata or {},
            "probe": self.probe() if self.probe is not None else None,
        })

    def clear_output(self, wait=False):
        self.messages.append({"msg_type": "clear_output", "display_id": None, "data": {}, "metadata": {},
                              "probe": None})

    # -- views -------------------------------------------------------------------------------
    def of_type(self, msg_type: str) -> List[Dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] == msg_type]

    def images(self) -> List[Dict[str, Any]]:
        """The messages that carry an image under a standard image MIME type."""
        return [m for m in self.messages if {"image/png", "image/jpeg"} & set(m["data"])]

    def galleries(self) -> List[Dict[str, Any]]:
        return [m for m in self.messages if "<img " in m["data"].get("text/html", "")]


def refused(res, rec: "RecordingPublisher") -> str:
    """The message of a magic cell refused before anything was sent: the cell did not fail (Run
    All goes on past it) and showed exactly one error box whose text is one line
    "UsageError: <message>"; returns <message>. Clears the recorded messages."""
    assert res.error_in_exec is None, res.error_in_exec
    shown = [m for m in rec.messages if m["data"].get("text/plain", "").startswith("UsageError: ")]
    assert len(shown) == 1 and not [m for m in rec.messages if "<img" in m["data"].get("text/html", "")], rec.messages
    assert all("imagegen-log" in m["data"].get("text/html", "") for m in rec.messages if m not in shown), rec.messages
    text = shown[0]["data"]["text/plain"]
    assert "\n" not in text and "Nothing was sent" in shown[0]["data"]["text/html"], text
    rec.messages.clear()
    return text[len("UsageError: "):]


@contextlib.contextmanager
def recording_display(shell, probe: Optional[Callable[[], Any]] = None):
    """Swap `shell`'s display publisher for a RecordingPublisher; restore the old one after."""
    rec = RecordingPublisher(shell, probe)
    old, shell.display_pub = shell.display_pub, rec
    try:
        yield rec
    finally:
        shell.display_pub = old


def background_tasks() -> int:
    """How many tasks (other than this probe) run on the background loop: 0 means no orphan."""
    async def count() -> int:
        return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])
    background = loop_thread.shared()
    return background.call(count(), timeout=5) if background.running else 0


def interrupt_when(condition: Callable[[], bool], delay: float = 0.2) -> Tuple[threading.Thread, List[float]]:
    """Interrupt the main thread (SIGINT, as "interrupt kernel" does) `delay` s after `condition()`
    holds (checked for 10 s at most). Returns the thread and a list that receives the moment of
    the interrupt (still empty: it was never sent)."""
    fired: List[float] = []

    def main() -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.005)
        if condition():
            time.sleep(delay)
            fired.append(time.monotonic())
            _thread.interrupt_main()
    t = threading.Thread(target=main, daemon=True)
    t.start()
    return t, fired
