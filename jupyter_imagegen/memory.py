"""One memory budget for the image bytes a process holds, with spill to disk beyond it.

A long notebook session keeps every response it made: ``Out[n]``, ``_``, the history and the
user's variables all hold `Artifact` objects. Each artifact registers here with what it holds in
memory (its encoded bytes, decoded pixels it keeps, its previews). When the total passes the
budget, the least recently used artifacts move their bytes to a spool folder of this process and
drop their pixels and previews; `Artifact.data` reads the bytes back when they are used again
(and that artifact becomes the most recently used). The spool folder is private (0700, files
0600) and removed at exit; an artifact's spool file is removed when the artifact is collected,
and the folders of killed processes are removed when the next one is made.

The budget is ``IMAGE_MEMORY_BUDGET_MB`` (default 256 MB), or ``memory.set_budget(bytes)``.
``memory.stats()`` says what is held where.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .errors import ConfigError

__all__ = ["ImageMemory", "memory", "ENV_MEMORY_BUDGET", "DEFAULT_BUDGET", "budget_from_env",
           "remove_orphaned_spools"]

ENV_MEMORY_BUDGET = "IMAGE_MEMORY_BUDGET_MB"
#: image bytes kept in memory per process before older ones move to the spool folder
DEFAULT_BUDGET = 256 * 1024 * 1024


def budget_from_env(env: Optional[Dict[str, str]] = None) -> int:
    """The budget in bytes from IMAGE_MEMORY_BUDGET_MB (a number of megabytes; 0 keeps nothing
    that is not in use). A value that is not a number raises ConfigError saying what to write."""
    raw = (os.environ if env is None else env).get(ENV_MEMORY_BUDGET, "").strip()
    if not raw:
        return DEFAULT_BUDGET
    try:
        mb = float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_MEMORY_BUDGET}={raw!r} must be a number of megabytes, e.g. 256") from None
    if not 0 <= mb < float("inf"):
        raise ConfigError(f"{ENV_MEMORY_BUDGET}={raw!r} must be 0 or more megabytes")
    return int(mb * 1024 * 1024)


def _budget_at_start() -> int:
    """The budget when the package is imported: a bad IMAGE_MEMORY_BUDGET_MB must not make the
    import fail (nothing else could tell the user): a warning says what to fix."""
    try:
        return budget_from_env()
    except ConfigError as e:
        warnings.warn(f"{e}; using the default, {DEFAULT_BUDGET // (1024 * 1024)} MB", stacklevel=2)
        return DEFAULT_BUDGET


@dataclass
class _Entry:
    ref: "weakref.ref[Any]"
    cost: int
    spool: Optional[str] = None


class ImageMemory:
    """The budget and the least-recently-used order of the artifacts of one process.

    Artifacts call `track` when what they hold changes and `touch` when they are used; the
    memory calls their `spill()` to move them out. Thread-safe: the background loop
    makes artifacts while the kernel's thread shows them."""

    def __init__(self, budget: Optional[int] = None, *, spool_parent: Optional[str] = None):
        self._budget = _budget_at_start() if budget is None else int(budget)
        self._entries: "OrderedDict[int, _Entry]" = OrderedDict()
        self._resident = 0
        self._spilled = 0            # artifacts moved out (counter, for stats and tests)
        self._read_back = 0          # artifacts read back in (counter)
        self._lock = threading.RLock()
        self._spool_parent = spool_parent
        self._spool_dir: Optional[str] = None

    # -- budget ---------------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        return self._budget

    def set_budget(self, nbytes: int) -> None:
        """Change the budget (bytes); lowering it moves the oldest artifacts out at once."""
        if not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"the memory budget must be a whole number of bytes >= 0, not {nbytes!r}")
        with self._lock:
            self._budget = nbytes
            self._enforce(keep=None)

    @property
    def resident(self) -> int:
        """Bytes the tracked artifacts hold in memory now."""
        return self._resident

    def stats(self) -> Dict[str, Any]:
        with self._lock:
            spool = [e.spool for e in self._entries.values() if e.spool]
            held = sum(1 for e in self._entries.values() if e.cost)
        spool_bytes = 0
        for p in spool:
            try:
                spool_bytes += os.path.getsize(p)
            except OSError:
                pass
        return {"budget": self._budget, "resident": self._resident, "artifacts": len(self._entries),
                "in_memory": held, "spool_files": len(spool), "spool_bytes": spool_bytes,
                "spool_dir": self._spool_dir, "spilled": self._spilled, "read_back": self._read_back}

    # -- tracking -------------------------------------------------------------------------------
    def track(self, artifact: Any, cost: int, *, used: bool = True) -> None:
        """`artifact` now holds `cost` bytes in memory; `used`: it was just used (it becomes the
        last to move out, and others move out if the budget is passed)."""
        key = id(artifact)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.ref() is not artifact:
                if entry is not None:      # an id reused before the old one's callback ran
                    self._drop(key)
                entry = _Entry(weakref.ref(artifact, lambda _ref, key=key: self._collected(key, _ref)), 0)
                self._entries[key] = entry
            elif used:
                self._entries.move_to_end(key)
            self._resident += cost - entry.cost
            entry.cost = cost
            if used and self._resident > self._budget:
                self._enforce(keep=key)

    def touch(self, artifact: Any) -> None:
        """`artifact` was used: it is the last to move out."""
        key = id(artifact)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)

    def spool_path(self, artifact: Any, extension: str) -> str:
        """The spool file of `artifact` (made once; it stays valid while the artifact lives)."""
        key = id(artifact)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.spool:
                return entry.spool
            directory = self._spool()
            fd, path = tempfile.mkstemp(suffix=extension, dir=directory)   # 0600
            os.close(fd)
            if entry is not None:
                entry.spool = path
            return path

    def note_read_back(self) -> None:
        with self._lock:
            self._read_back += 1

    # -- internals ------------------------------------------------------------------------------
    def _enforce(self, keep: Optional[int]) -> None:
        for key in list(self._entries):
            if self._resident <= self._budget:
                return
            if key == keep:
                continue
            entry = self._entries.get(key)
            if entry is None or not entry.cost:
                continue
            artifact = entry.ref()
            if artifact is None:
                continue
            try:
                artifact.spill()
            except OSError:            # a full disk: keep it in memory rather than lose it
                continue
            self._spilled += 1

    def _collected(self, key: int, ref: Any) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.ref is ref:
                self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._resident -= entry.cost
        if entry.spool:
            try:
                os.unlink(entry.spool)
            except OSError:
                pass

    def _spool(self) -> str:
        if self._spool_dir is None or not os.path.isdir(self._spool_dir):
            parent = self._spool_parent or tempfile.gettempdir()
            remove_orphaned_spools(parent)
            self._spool_dir = tempfile.mkdtemp(prefix=f"{SPOOL_PREFIX}{os.getpid()}-", dir=parent)   # 0700
            atexit.register(shutil.rmtree, self._spool_dir, True)
        return self._spool_dir


SPOOL_PREFIX = "jupyter-imagegen-spool-"


def remove_orphaned_spools(parent: str) -> List[str]:
    """Remove the spool folders (of this user) whose process is gone: a kernel that was killed
    had no chance to remove its own. Returns what was removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(SPOOL_PREFIX):
            continue
        pid_text = name[len(SPOOL_PREFIX):].split("-", 1)[0]
        path = os.path.join(parent, name)
        try:
            pid = int(pid_text)
            if os.lstat(path).st_uid != os.getuid() or pid == os.getpid() or _alive(pid):
                continue
        except (ValueError, OSError):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: the process's image memory
memory = ImageMemory()
