"""The client's progress events: names and fields in one place.

Every event carries `request_id`. Consumers receive `Event` objects through one
callback (`on_event`); `Event.to_dict()` gives the flat dict the seed client emitted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union, Awaitable
from urllib.parse import urlsplit

GENERATION_STARTED = "generation_started"      # api_type, model, api_url, n, prompt
API_CALL = "api_call"                          # attempt, max_attempts, api_url, index
API_RETRY = "api_retry"                        # attempt, status_code, delay, reason, index
PARTIAL_IMAGE = "partial_image"                # index, partial_index, artifact
IMAGE_RECEIVED = "image_received"              # index, artifact (checked: it decodes completely)
CACHE_HIT = "cache_hit"                        # artifact_count, key
GENERATION_COMPLETED = "generation_completed"  # artifact_count, elapsed, attempts
GENERATION_FAILED = "generation_failed"        # error, api_url, auth_hint, status_code

EVENT_NAMES = (
    GENERATION_STARTED, API_CALL, API_RETRY, PARTIAL_IMAGE, IMAGE_RECEIVED, CACHE_HIT,
    GENERATION_COMPLETED, GENERATION_FAILED,
)


@dataclass
class Event:
    type: str
    request_id: str
    data: Dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.type not in EVENT_NAMES:
            raise ValueError(f"unknown event type {self.type!r}; known: {', '.join(EVENT_NAMES)}")

    def __getitem__(self, key: str) -> Any:
        if key == "type":
            return self.type
        if key == "request_id":
            return self.request_id
        return self.data[key]

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def to_dict(self) -> Dict[str, Any]:
        d = {"type": self.type, "request_id": self.request_id, "timestamp": self.timestamp}
        for k, v in self.data.items():
            d[k] = v
        return d

    def describe(self) -> str:
        """One human line for logs and the inline event log."""
        d = self.data
        if self.type == GENERATION_STARTED:
            n = d.get("n", 1)
            host = urlsplit(d["api_url"]).netloc if isinstance(d.get("api_url"), str) else ""
            return (f"started: {d.get('model')} via {d.get('api_type')}" + (f" at {host}" if host else "")
                    + (f" (n={n})" if n and n > 1 else ""))
        if self.type == API_CALL:
            idx = d.get("index")
            part = f" [image {idx + 1}]" if idx is not None and d.get("fanout") else ""
            return f"attempt {d.get('attempt')}/{d.get('max_attempts')}{part}"
        if self.type == API_RETRY:
            status = d.get("status_code")
            # a 2xx that is retried had a broken body: say so rather than show a success code
            what = str(status) if status and status >= 300 else (d.get("reason") or "network error")
            return f"{what} — retrying in {d.get('delay', 0):.1f} s (attempt {d.get('attempt')} failed)"
        if self.type == PARTIAL_IMAGE:
            return f"partial image {d.get('partial_index', 0) + 1}"
        if self.type == IMAGE_RECEIVED:
            art = d.get("artifact")
            size = f"{art.nbytes / 1e6:.1f} MB" if art is not None and art.nbytes >= 1e6 else \
                f"{max(1, round(art.nbytes / 1e3)) if art is not None else 0} kB"
            what = f" ({art.width}x{art.height} {art.format}, {size})" if art is not None else ""
            return f"image {d.get('index', 0) + 1} received{what}"
        if self.type == CACHE_HIT:
            return f"from cache: {d.get('artifact_count')} image(s)"
        if self.type == GENERATION_COMPLETED:
            return f"done: {d.get('artifact_count')} image(s) in {d.get('elapsed', 0):.1f} s"
        if self.type == GENERATION_FAILED:
            return f"failed: {d.get('error')}"
        return self.type  # pragma: no cover


EventCallback = Callable[[Event], Union[None, Awaitable[None]]]
OptionalCallback = Optional[EventCallback]
