"""Real Jupyter kernels for the tests: start one, send cells the way a frontend does, read back.

* `start_kernel(python, env=..., cwd=...)`: a kernel of the given interpreter through a private
  kernelspec (so the kernel imports that interpreter's ipykernel and this repository's editable
  install, not whatever `python3` kernelspec the machine has); its stderr goes to a file
  (`Kernel.stderr_text()`); `running_kernel(...)` the same as a context manager;
  `write_kernelspec()` the kernelspec alone (for a Jupyter server's data dir).
* `run_notebook(kernel, nb)`: a whole notebook, cell by cell, the way nbconvert runs it.
* `execute(kc, code)`: one cell, waiting for it to finish (reply content, its iopub messages).
* `execute_queued(kc, cells)`: what JupyterLab's *Run All* does: every execute request is sent
  at once, without waiting; then each cell's iopub messages are collected until its idle status,
  together with its shell reply. `QueuedRun` is the same step by step (wait for an event on
  iopub, interrupt, go on collecting).
* `ipykernel6_python()`: an interpreter with ipykernel 6 and this repository installed:
  `$IMAGEGEN_IPYKERNEL6_PYTHON` (CI builds it), else a virtualenv built once under
  `.pytest-kernels/` (git-ignored); the test skips with the reason when pip cannot build it.
* `noise(text)`: the lines that show the asyncio breakage of a nested loop in a kernel.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: CI points this at a python with ipykernel 6 and this repository installed (see .ci/run)
IPYKERNEL6_ENV = "IMAGEGEN_IPYKERNEL6_PYTHON"
IPYKERNEL6_SPEC = "ipykernel>=6.29,<7"
#: where a developer's machine gets its ipykernel-6 virtualenv (git-ignored)
KERNEL_ENVS = ROOT / ".pytest-kernels"

#: what a nested event loop inside ipykernel prints when it breaks (and a traceback of any kind)
NOISE = ("cannot enter context", "Task was destroyed", "never awaited", "Traceback")
ASYNCIO_NOISE = NOISE[:3]

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def noise(text: str, needles: Sequence[str] = NOISE) -> List[str]:
    """The lines of `text` that mention one of `needles`."""
    return [ln for ln in strip_ansi(text).splitlines() if any(n in ln for n in needles)]


# ---------------------------------------------------------------------------------------------
# interpreters
# ---------------------------------------------------------------------------------------------
def ipykernel_version(python: str) -> str:
    out = subprocess.run([python, "-c", "import ipykernel; print(ipykernel.__version__)"],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise RuntimeError(f"{python}: cannot import ipykernel:\n{out.stderr[-2000:]}")
    return out.stdout.strip()


def this_ipykernel_major() -> int:
    import ipykernel
    return int(ipykernel.__version__.split(".")[0])


def _stamp() -> str:
    """What the cached ipykernel-6 virtualenv was built from: rebuilt when this changes."""
    h = hashlib.sha256()
    h.update(IPYKERNEL6_SPEC.encode())
    h.update(sys.version.encode())
    h.update((ROOT / "pyproject.toml").read_bytes())
    return h.hexdigest()


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (two pytest processes must not build the venv at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ipykernel6_python() -> str:
    """A python with ipykernel 6 and this repository (editable) installed.

    `$IMAGEGEN_IPYKERNEL6_PYTHON` when set (it must work: CI builds it); otherwise a virtualenv
    under .pytest-kernels/ipykernel6, built on first use (about 40 s) and rebuilt when
    pyproject.toml changes. Skips the test, with pip's words, only when pip cannot build it.
    """
    given = os.environ.get(IPYKERNEL6_ENV)
    if given:
        version = ipykernel_version(given)  # a broken CI setup fails loudly, it does not skip
        assert version.startswith("6."), f"${IPYKERNEL6_ENV}={given} has ipykernel {version}, not 6"
        return given
    venv = KERNEL_ENVS / "ipykernel6"
    python = venv / "bin" / "python"
    stamp_file = venv / ".imagegen-stamp"
    with _lock(KERNEL_ENVS / ".ipykernel6.lock"):
        if python.exists() and stamp_file.exists() and stamp_file.read_text() == _stamp():
            return str(python)
        if not python.exists():
            if venv.exists():
                shutil.rmtree(venv)
            made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True,
                                  timeout=300)
            if made.returncode != 0:
                pytest.skip(f"cannot make the ipykernel-6 virtualenv {venv}: {made.stderr.strip()[-1500:]}")
        pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              IPYKERNEL6_SPEC, "-e", str(ROOT)],
                             capture_output=True, text=True, timeout=900, cwd=ROOT)
        if pip.returncode != 0:
            pytest.skip(f"pip could not install '{IPYKERNEL6_SPEC}' into {venv} (set ${IPYKERNEL6_ENV} to a "
                        f"python that has it): {(pip.stdout + pip.stderr).strip()[-1500:]}")
        version = ipykernel_version(str(python))
        assert version.startswith("6."), f"{venv} got ipykernel {version}"
        stamp_file.write_text(_stamp())
    return str(python)


# ---------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------
def outputs(msgs: Iterable[dict], *types: str) -> List[dict]:
    return [m for m in msgs if m["msg_type"] in types]


def message_text(msg: dict) -> str:
    """Everything a frontend would show of one iopub message, as text."""
    c = msg.get("content", {})
    t = msg["msg_type"]
    if t == "stream":
        return c.get("text", "")
    if t in ("display_data", "update_display_data", "execute_result"):
        data = c.get("data", {})
        return "\n".join(str(data[k]) for k in ("text/plain", "text/html", "text/markdown") if k in data)
    if t == "error":
        return "\n".join([f"{c.get('ename')}: {c.get('evalue')}"] + list(c.get("traceback", [])))
    if t == "comm_msg":
        return json.dumps(c.get("data", {}))[:100000]
    return ""


def shows_image(msg: dict) -> bool:
    """A display_data / execute_result carrying an image (an <img> in its html or a PNG)."""
    if msg["msg_type"] not in ("display_data", "update_display_data", "execute_result"):
        return False
    data = msg["content"].get("data", {})
    return "image/png" in data or "<img" in data.get("text/html", "")


@dataclass
class Cell:
    """One execute request and what came back for it."""
    code: str
    stop_on_error: bool = True
    msg_id: str = ""
    sent_at: float = 0.0
    msgs: List[dict] = field(default_factory=list)      # its iopub messages, in order
    reply: Optional[dict] = None                         # the execute_reply content
    replied_at: Optional[float] = None
    idle_at: Optional[float] = None

    @property
    def done(self) -> bool:
        return self.reply is not None and self.idle_at is not None

    @property
    def status(self) -> Optional[str]:
        return None if self.reply is None else self.reply.get("status")

    def outputs(self, *types: str) -> List[dict]:
        return outputs(self.msgs, *types)

    def text(self) -> str:
        return "\n".join(filter(None, (message_text(m) for m in self.msgs)))

    def stream_text(self, name: Optional[str] = None) -> str:
        return "".join(m["content"]["text"] for m in self.outputs("stream")
                       if name is None or m["content"]["name"] == name)

    def images(self) -> List[dict]:
        return [m for m in self.msgs if shows_image(m)]

    def log_text(self) -> str:
        """The latest text/plain of the magic's live log (the display that updates in place)."""
        first = [m for m in self.outputs("display_data")
                 if "imagegen-log" in m["content"].get("data", {}).get("text/html", "")]
        if not first:
            return ""
        display_id = first[0]["content"].get("transient", {}).get("display_id")
        same = [m for m in self.outputs("display_data", "update_display_data")
                if m["content"].get("transient", {}).get("display_id") == display_id]
        return same[-1]["content"]["data"].get("text/plain", "")

    def all_log_text(self) -> str:
        """Every state the live log went through (text/plain of the display and its updates)."""
        return "\n".join(m["content"]["data"].get("text/plain", "")
                         for m in self.outputs("display_data", "update_display_data"))

    def summary(self) -> str:
        first = self.code.strip().splitlines()[0] if self.code.strip() else ""
        state = self.status or ("no reply" if self.reply is None else "?")
        if self.reply is not None and self.idle_at is None:
            state += ", no idle"
        err = ""
        if self.reply and self.reply.get("status") == "error":
            err = f" {self.reply.get('ename')}: {str(self.reply.get('evalue'))[:150]}"
        bad = list(dict.fromkeys(ln.strip()[:160] for ln in noise(self.text())))  # distinct lines
        return f"[{state}] {first[:70]!r}{err}" + "".join(f"\n      noise: {ln}" for ln in bad[:8])


def _as_cell(item: Union[str, Tuple[str, bool], Cell]) -> Cell:
    if isinstance(item, Cell):
        return item
    if isinstance(item, tuple):
        return Cell(code=item[0], stop_on_error=item[1])
    return Cell(code=item)


class QueuedRun:
    """Cells sent all at once (JupyterLab's Run All), then read back as their messages come.

    Every iopub message is kept: the cells' own in `cell.msgs`, the rest (other parents, e.g.
    widget comms of an earlier cell, or output landing on no cell) in `others`.
    """

    def __init__(self, kc, cells: Sequence[Union[str, Tuple[str, bool], Cell]],
                 stderr: Optional[Callable[[], str]] = None):
        self.kc = kc
        self._stderr = stderr          # the kernel's stderr so far (shown when a wait fails)
        self.last_msg_at = time.monotonic()
        self.cells: List[Cell] = [_as_cell(c) for c in cells]
        self.others: List[dict] = []
        self.reply_order: List[int] = []
        self._by_id: Dict[str, Cell] = {}
        for cell in self.cells:
            cell.sent_at = time.monotonic()
            cell.msg_id = kc.execute(cell.code, stop_on_error=cell.stop_on_error)
            self._by_id[cell.msg_id] = cell

    # -- reading --------------------------------------------------------------------------------
    def _on_iopub(self, msg: dict) -> None:
        cell = self._by_id.get(msg.get("parent_header", {}).get("msg_id"))
        if cell is None:
            self.others.append(msg)
            return
        cell.msgs.append(msg)
        if msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
            cell.idle_at = time.monotonic()

    def _on_shell(self, msg: dict) -> None:
        cell = self._by_id.get(msg.get("parent_header", {}).get("msg_id"))
        if cell is None or msg["msg_type"] != "execute_reply":
            return
        cell.reply = msg["content"]
        cell.replied_at = time.monotonic()
        self.reply_order.append(self.cells.index(cell))

    def pump(self, timeout: float) -> None:
        """Wait up to `timeout` s for messages on iopub or shell; handle all that are there."""
        import zmq
        iopub, shell = self.kc.iopub_channel, self.kc.shell_channel
        poller = zmq.Poller()
        poller.register(iopub.socket, zmq.POLLIN)
        poller.register(shell.socket, zmq.POLLIN)
        ready = dict(poller.poll(max(0, int(timeout * 1000))))
        if not ready:
            return
        self.last_msg_at = time.monotonic()
        while iopub.msg_ready():
            self._on_iopub(iopub.get_msg(timeout=0))
        while shell.msg_ready():
            self._on_shell(shell.get_msg(timeout=0))

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str,
                 stall: Optional[float] = None) -> None:
        """Read messages until `condition()` holds; fail (with every cell's state) after `timeout`
        s, or as soon as the kernel has said nothing at all for `stall` s (a hung kernel)."""
        deadline = time.monotonic() + timeout
        self.last_msg_at = time.monotonic()
        while not condition():
            now = time.monotonic()
            if now >= deadline:
                raise AssertionError(f"{what}: not within {timeout:.0f} s\n{self.report()}")
            if stall is not None and now - self.last_msg_at >= stall:
                raise AssertionError(f"{what}: the kernel sent nothing for {stall:.0f} s (hung?)\n{self.report()}")
            self.pump(min(deadline - now, 0.5))

    def wait_all(self, timeout: float, stall: Optional[float] = 30.0) -> "QueuedRun":
        """Wait until every cell has replied and gone idle. A kernel silent for `stall` s with
        cells pending counts as hung (no test here has a silent wait that long)."""
        self.wait_for(lambda: all(c.done for c in self.cells), timeout,
                      "every queued cell replies and goes idle", stall=stall)
        return self

    # -- looking ----------------------------------------------------------------------------------
    def all_msgs(self) -> List[dict]:
        return [m for c in self.cells for m in c.msgs] + self.others

    def all_text(self) -> str:
        return "\n".join(filter(None, (message_text(m) for m in self.all_msgs())))

    def report(self) -> str:
        lines = [f"  {i}: {c.summary()}" for i, c in enumerate(self.cells)]
        other = noise("\n".join(message_text(m) for m in self.others))
        if other:
            lines.append(f"  (output on no queued cell) noise: {other[:6]}")
        if self._stderr is not None:
            err = self._stderr()
            lines.append("  kernel stderr (tail):\n    " + "\n    ".join(err[-2500:].splitlines()) if err.strip()
                         else "  kernel stderr: empty")
        return "\n".join(lines)


def execute_queued(kc, cells: Sequence[Union[str, Tuple[str, bool], Cell]], timeout: float = 60.0,
                   stall: Optional[float] = 30.0) -> List[Cell]:
    """Send every cell at once (as Run All does), then collect each one's iopub messages up to
    its idle status and its execute_reply; returns the cells in the order they were sent.
    A cell is a code string, or (code, stop_on_error)."""
    return QueuedRun(kc, cells).wait_all(timeout, stall).cells


def execute(kc, code: str, timeout: float = 30.0) -> Tuple[dict, List[dict]]:
    """Run one cell and wait for it: (execute_reply content, the iopub messages of this execution)."""
    cell = execute_queued(kc, [code], timeout, stall=None)[0]
    return cell.reply, cell.msgs


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------
def kernel_env(python: str, **overrides: str) -> Dict[str, str]:
    """The environment of a kernel of `python`: this one without any IMAGE_* setting of the
    developer (and nothing that would point `python` at another interpreter's installation),
    plus `overrides`."""
    drop = ("PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE") and k not in drop}
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
    env.setdefault("PYTHONWARNINGS", "default")
    env.update(overrides)
    return env


@dataclass
class Kernel:
    km: Any
    kc: Any
    workdir: Path
    stderr_path: Path
    python: str
    _stderr: Any = None

    def execute(self, code: str, timeout: float = 30.0) -> Tuple[dict, List[dict]]:
        return execute(self.kc, code, timeout)

    def queued(self, cells) -> QueuedRun:
        """Send `cells` at once; read them back with the returned QueuedRun."""
        return QueuedRun(self.kc, cells, stderr=self.stderr_text)

    def execute_queued(self, cells, timeout: float = 60.0, stall: Optional[float] = 30.0) -> List[Cell]:
        return self.queued(cells).wait_all(timeout, stall).cells

    def stderr_text(self) -> str:
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def shutdown(self) -> None:
        """Stop the kernel politely (its atexit handlers run) and close the stderr file."""
        with contextlib.suppress(Exception):
            self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=False)
        if self._stderr is not None and not self._stderr.closed:
            self._stderr.close()


def write_kernelspec(data_dir: Path, name: str, python: str, display_name: str) -> Path:
    """A kernelspec `name` in `data_dir`/kernels (a Jupyter data dir) that runs `python`'s
    ipykernel; returns its folder."""
    spec_dir = data_dir / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": display_name, "language": "python",
    }))
    return spec_dir


def start_kernel(python: str, *, env: Dict[str, str], cwd: Path, workdir: Path,
                 startup_timeout: float = 60.0) -> Kernel:
    """Start a kernel of `python` (a private kernelspec in `workdir`); stderr to workdir/kernel-stderr.txt."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    name = "imagegen-test-" + uuid.uuid4().hex[:8]
    write_kernelspec(workdir, name, python, f"imagegen test ({python})")
    ksm = KernelSpecManager(kernel_dirs=[str(workdir / "kernels")])
    km = KernelManager(kernel_name=name, kernel_spec_manager=ksm)
    stderr_path = workdir / "kernel-stderr.txt"
    stderr = open(stderr_path, "w")
    km.start_kernel(env=env, cwd=str(cwd), stderr=stderr)
    kc = km.client()
    kc.start_channels()
    kernel = Kernel(km=km, kc=kc, workdir=workdir, stderr_path=stderr_path, python=python, _stderr=stderr)
    try:
        kc.wait_for_ready(timeout=startup_timeout)
    except BaseException:
        kernel.shutdown()
        raise
    return kernel


@contextlib.contextmanager
def running_kernel(python: str, *, env: Dict[str, str], cwd: Path, workdir: Path) -> Iterator[Kernel]:
    kernel = start_kernel(python, env=env, cwd=cwd, workdir=workdir)
    try:
        yield kernel
    finally:
        kernel.shutdown()


def run_notebook(kernel: Kernel, nb: Any, timeout: float = 120.0, allow_errors: bool = False) -> Any:
    """Execute the notebook `nb` (an nbformat node, filled in place) in the running `kernel`, every
    cell in order as nbconvert does (nbclient); returns `nb`. The kernel stays the caller's."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, km=kernel.km, timeout=timeout, allow_errors=allow_errors)
    try:
        client.execute()
    finally:
        if client.kc is not None:      # nbclient leaves its client open when the kernel is not its own
            client.kc.stop_channels()
    return nb
