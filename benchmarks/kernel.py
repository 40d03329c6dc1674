"""A real Jupyter kernel for the benchmarks: started, fed cells, watched (RSS) and timed.

The kernel is this interpreter's ipykernel (``sys.executable -m ipykernel_launcher``) through a
private kernelspec in a scratch folder, started by jupyter_client's `KernelManager` as a frontend
starts it; its working directory, IPYTHONDIR and cache folder are in that scratch folder, so a
benchmark writes nothing elsewhere. The environment is this process's without any IMAGE_*
setting, plus the ones given.

* `BenchKernel.run(code)`: one cell, timed from the execute_request to the kernel's idle status
  for it (what a user waits for); an error in the cell raises `CellError`.
* `BenchKernel.run_all(cells, on_done)`: every cell sent at once (a notebook's Run All); iopub
  and shell are read all along so nothing backs up, and `on_done(i)` is called the moment cell i
  goes idle (the RSS samples are taken there).
* `BenchKernel.rss()`: the kernel process's VmRSS (bytes), from /proc/<pid>/status.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence


class CellError(RuntimeError):
    pass


def proc_status(pid: int, field: str = "VmRSS") -> Optional[int]:
    """A memory field of /proc/<pid>/status in bytes (None where /proc does not exist)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def kernel_env(**settings: str) -> Dict[str, str]:
    drop = ("PYTHONSTARTUP", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE") and k not in drop}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(settings)
    return env


class BenchKernel:
    def __init__(self, workdir: Path, env: Dict[str, str], startup_timeout: float = 60.0):
        from jupyter_client import KernelManager
        from jupyter_client.kernelspec import KernelSpecManager

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = "imagegen-bench-" + uuid.uuid4().hex[:8]
        spec = self.workdir / "kernels" / name
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "imagegen bench", "language": "python"}))
        env = dict(env)
        env.setdefault("IPYTHONDIR", str(self.workdir / "ipython"))
        self.stderr_path = self.workdir / "kernel-stderr.txt"
        self._stderr = open(self.stderr_path, "w")
        self.km = KernelManager(kernel_name=name,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(self.workdir / "kernels")]),
                                connection_file=str(self.workdir / f"{name}.json"))
        self.km.start_kernel(env=env, cwd=str(self.workdir), stderr=self._stderr)
        self.kc = self.km.client()
        self.kc.start_channels()
        try:
            self.kc.wait_for_ready(timeout=startup_timeout)
        except BaseException:
            self.shutdown()
            raise
        self.pid = self.km.provisioner.process.pid

    # -- reading ----------------------------------------------------------------------------------
    def rss(self) -> int:
        return proc_status(self.pid, "VmRSS") or 0

    def stderr_text(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def run_all(self, cells: Sequence[str], on_done: Optional[Callable[[int, float], None]] = None,
                timeout: float = 600.0, stall: float = 60.0) -> List[float]:
        """Send every cell at once; wait until each has replied and gone idle. Returns each cell's
        time from being sent to its idle status (s); `on_done(i, t)` when cell i goes idle."""
        import zmq
        sent: Dict[str, int] = {}
        t_sent: List[float] = []
        for i, code in enumerate(cells):
            t_sent.append(time.perf_counter())
            sent[self.kc.execute(code, store_history=True)] = i
        idle_at: Dict[int, float] = {}
        replies: Dict[int, dict] = {}
        errors: Dict[int, List[str]] = {}
        iopub, shell = self.kc.iopub_channel, self.kc.shell_channel
        poller = zmq.Poller()
        poller.register(iopub.socket, zmq.POLLIN)
        poller.register(shell.socket, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while len(idle_at) < len(cells) or len(replies) < len(cells):
            now = time.monotonic()
            if now > deadline or now - last > stall:
                raise CellError(f"{len(idle_at)} of {len(cells)} cells finished "
                                f"({'timeout' if now > deadline else f'the kernel said nothing for {stall:.0f} s'})"
                                f"\nkernel stderr: {self.stderr_text()}")
            if not poller.poll(500):
                continue
            last = time.monotonic()
            while iopub.msg_ready():
                msg = iopub.get_msg(timeout=0)
                i = sent.get(msg.get("parent_header", {}).get("msg_id"))
                if i is None:
                    continue
                t = msg["msg_type"]
                if t == "status" and msg["content"].get("execution_state") == "idle":
                    idle_at[i] = time.perf_counter()
                    if on_done is not None:
                        on_done(i, idle_at[i] - t_sent[i])
                elif t == "error":
                    errors.setdefault(i, []).append(f"{msg['content'].get('ename')}: {msg['content'].get('evalue')}")
                elif t == "stream" and msg["content"].get("name") == "stderr":
                    errors.setdefault(i, []).append(msg["content"].get("text", "")[-500:])
            while shell.msg_ready():
                msg = shell.get_msg(timeout=0)
                i = sent.get(msg.get("parent_header", {}).get("msg_id"))
                if i is not None and msg["msg_type"] == "execute_reply":
                    replies[i] = msg["content"]
                    if msg["content"].get("status") != "ok":
                        c = msg["content"]
                        raise CellError(f"cell {i} ({cells[i].splitlines()[0][:60]!r}) ended in "
                                        f"{c.get('status')}: {c.get('ename')}: {str(c.get('evalue'))[:300]}\n"
                                        + "\n".join(errors.get(i, [])[-3:]))
        return [idle_at[i] - t_sent[i] for i in range(len(cells))]

    def run(self, code: str, timeout: float = 300.0) -> float:
        """One cell; seconds from its execute_request to its idle status."""
        return self.run_all([code], timeout=timeout)[0]

    def value(self, expr: str) -> str:
        """`print(expr)` in the kernel, as text (for diagnostics)."""
        msg_id = self.kc.execute(f"print({expr})")
        out: List[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except Exception:
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise CellError(f"{expr}: {msg['content'].get('ename')}: {msg['content'].get('evalue')}")
            elif msg["msg_type"] == "status" and msg["content"].get("execution_state") == "idle":
                break
        return "".join(out).strip()

    # -- ending -----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        except Exception:
            pass
        try:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=False)
        except Exception:
            self.km.shutdown_kernel(now=True)
        if not self._stderr.closed:
            self._stderr.close()

    def __enter__(self) -> "BenchKernel":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
