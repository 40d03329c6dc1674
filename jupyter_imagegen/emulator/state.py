"""What the emulator keeps between requests: the request log, the fault queue, the files served
at ``/files/<id>`` and the known response ids (:class:`EmulatorState`, stored on the app under
:data:`STATE_KEY`)."""
from __future__ import annotations

import collections
import itertools
import secrets
import threading
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple, Union

from aiohttp import web

from .faults import Fault, parse_fault


class EmulatorState:
    """Everything the app keeps between requests. Thread-safe: a lock guards the log, the fault
    queue and the file store, so an :class:`EmulatorThread` can be driven from another thread."""

    def __init__(self, token: Optional[str] = None, latency: float = 0.0, *, max_log: int = 10000,
                 max_files: int = 512, stream_delay: float = 0.0):
        self.token = token
        self.latency = float(latency)
        #: seconds before each image-bearing event of a stream (partials and the final image)
        self.stream_delay = float(stream_delay)
        self._lock = threading.Lock()
        self._faults: Deque[Fault] = collections.deque()
        self._log: Deque[Dict[str, Any]] = collections.deque(maxlen=max_log)
        self._count = 0
        self._files: "collections.OrderedDict[str, Tuple[bytes, str]]" = collections.OrderedDict()
        self._max_files = max_files
        self._variants = itertools.count(1)
        self._responses: "collections.OrderedDict[str, None]" = collections.OrderedDict()

    # faults
    def add_faults(self, *specs: Union[str, Fault, Iterable[Union[str, Fault]]]) -> List[Fault]:
        """Queue faults, one per coming API request, in order. Raises ValueError on a bad spec
        (nothing is queued then)."""
        flat: List[Union[str, Fault]] = []
        for s in specs:
            if isinstance(s, (str, Fault)):
                flat.append(s)
            else:
                flat.extend(s)
        parsed = [parse_fault(s) for s in flat]
        with self._lock:
            self._faults.extend(parsed)
        return parsed

    def next_fault(self) -> Optional[Fault]:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> List[str]:
        with self._lock:
            return [str(f) for f in self._faults]

    # request log
    def log_begin(self, entry: Dict[str, Any]) -> Dict[str, Any]:
        with self._lock:
            self._count += 1
            entry["seq"] = self._count
            self._log.append(entry)
        return entry

    @property
    def requests(self) -> List[Dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._log]

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    def reset(self) -> None:
        """Forget the request log, queued faults, stored files and response ids."""
        with self._lock:
            self._log.clear()
            self._count = 0
            self._faults.clear()
            self._files.clear()
            self._responses.clear()

    # files served at /files/<id>
    def store_file(self, data: bytes, mime: str) -> str:
        ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}.get(mime, "bin")
        name = f"img-{secrets.token_hex(8)}.{ext}"
        with self._lock:
            self._files[name.rsplit(".", 1)[0]] = (data, mime)
            while len(self._files) > self._max_files:
                self._files.popitem(last=False)
        return name

    def get_file(self, name: str) -> Optional[Tuple[bytes, str]]:
        with self._lock:
            return self._files.get(name.rsplit(".", 1)[0])

    # misc
    def next_variant(self) -> int:
        with self._lock:
            return next(self._variants)

    def remember_response(self, rid: str) -> None:
        with self._lock:
            self._responses[rid] = None
            while len(self._responses) > 10000:
                self._responses.popitem(last=False)

    def has_response(self, rid: str) -> bool:
        with self._lock:
            return rid in self._responses


try:
    STATE_KEY: Any = web.AppKey("jupyter_imagegen_emulator_state", EmulatorState)
except AttributeError:  # aiohttp < 3.9
    STATE_KEY = "jupyter_imagegen_emulator_state"
