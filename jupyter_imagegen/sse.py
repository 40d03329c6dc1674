"""Incremental server-sent-events parser with a bounded buffer (no line-length limit of its own
below `max_bytes`, unlike StreamReader.readline, which refuses lines over 128 kB: partial images
arrive as one long base64 line)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Optional


@dataclass
class SSEEvent:
    event: str
    data: str
    id: Optional[str] = None


class SSEError(Exception):
    pass


class SSEParser:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None
        self._pending = 0  # bytes held in the current, not yet dispatched, event
        self._scanned = 0  # bytes at the start of _buf already known to hold no newline

    def feed(self, chunk: bytes) -> Iterator[SSEEvent]:
        self._buf += chunk
        if len(self._buf) + self._pending > self.max_bytes:
            raise SSEError(f"a server-sent event is over {self.max_bytes / 1e6:.0f} MB; refused")
        while True:
            nl = self._buf.find(b"\n", self._scanned)  # a long line is not rescanned chunk after chunk
            if nl < 0:
                self._scanned = len(self._buf)
                return
            self._scanned = 0
            line = bytes(self._buf[:nl])
            del self._buf[:nl + 1]
            if line.endswith(b"\r"):
                line = line[:-1]
            ev = self._line(line.decode("utf-8", "replace"))
            if ev is not None:
                yield ev

    def close(self) -> Iterator[SSEEvent]:
        """Flush a final event that was not followed by a blank line."""
        if self._buf:
            ev = self._line(self._buf.decode("utf-8", "replace"))
            self._buf.clear()
            self._scanned = 0
            if ev is not None:
                yield ev
        ev = self._line("")
        if ev is not None:
            yield ev

    def _line(self, line: str) -> Optional[SSEEvent]:
        if line == "":
            if not self._data and not self._event:
                return None
            ev = SSEEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._pending = "", [], 0
            return ev
        if line.startswith(":"):
            return None  # comment / keep-alive
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
            self._pending += len(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            self._id = value
        return None
