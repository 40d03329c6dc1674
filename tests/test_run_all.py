"""JupyterLab's *Run All* against a real kernel: every cell is sent at once, none waits.

The magic blocks until its images are there. It must do so without touching the kernel's own
event loop: ipykernel 7 runs each queued cell as a task of that loop, in one shared contextvars
Context, so a nested loop (nest_asyncio) that runs while later cells are queued steps into the
next cell's task and the kernel breaks ("RuntimeError: cannot enter context: ... is already
entered", "Task was destroyed but it is pending", "coroutine 'Kernel.shell_main' was never
awaited", queued cells that never finish). Running cells one by one, waiting for each reply, as
the other kernel tests do, never shows it.

Every test runs on two kernels: this interpreter's ipykernel (7) and an ipykernel-6 interpreter
(`$IMAGEGEN_IPYKERNEL6_PYTHON`, built by CI; otherwise a virtualenv built once under
.pytest-kernels/). Real HTTP to an EmulatorThread on 127.0.0.1. The tests wait on iopub
messages, never on a fixed sleep; each has a timeout so a hung kernel fails instead of hanging.
"""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")
nbformat = pytest.importorskip("nbformat")

from jupyter_imagegen.emulator import EmulatorThread  # noqa: E402
from kernels import (ASYNCIO_NOISE, NOISE, ROOT, Cell, QueuedRun, ipykernel6_python,  # noqa: E402
                     ipykernel_version, kernel_env, message_text, noise, running_kernel, strip_ansi)

pytestmark = [pytest.mark.kernel]

TOKEN = "sk-run-all-test-token-0123456789"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PROMPTS = ["a red fox in fresh snow", "a lighthouse at dusk", "a paper boat on a pond",
           "a heron in the reeds", "a hot-air balloon over fields"]
#: the emulator's fault header (what `--fault` sends); the form sends it through request_options
FAULT_HEADER = "X-Emulator-Fault"


# ---------------------------------------------------------------------------------------------
# fixtures: the two kernels, the emulator
# ---------------------------------------------------------------------------------------------
def _this_kernel_id() -> str:
    import ipykernel
    return "ipykernel" + ipykernel.__version__.split(".")[0]


@pytest.fixture(scope="session", params=["this", "ipykernel6"], ids=[_this_kernel_id(), "ipykernel6"])
def kernel_python(request) -> str:
    """The interpreter the kernel runs: this one, or one with ipykernel 6."""
    python = sys.executable if request.param == "this" else ipykernel6_python()
    version = ipykernel_version(python)
    if request.param == "ipykernel6":
        assert version.startswith("6."), f"{python} has ipykernel {version}"
    return python


@pytest.fixture
def emu():
    with EmulatorThread(token=TOKEN, latency=0.2) as e:
        yield e


@pytest.fixture
def kernel(kernel_python, emu, tmp_path):
    """A fresh kernel pointed at `emu` (openai_images, request cache off)."""
    env = kernel_env(kernel_python,
                     IMAGE_BASE_URL=emu.base_url_for("openai_images"), IMAGE_AUTH_TOKEN=TOKEN,
                     IMAGE_API_TYPE="openai_images", IMAGE_CACHE="0", IMAGE_CACHE_DIR=str(tmp_path / "cache"))
    with running_kernel(kernel_python, env=env, cwd=tmp_path, workdir=tmp_path) as k:
        yield k


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def magic(prompt: str, options: str = "--no-cache") -> str:
    return f"%%imagegen {options}\n{prompt}"


def assert_all_ok_in_order(run: QueuedRun) -> None:
    bad = [i for i, c in enumerate(run.cells) if c.status != "ok"]
    assert not bad, f"cells {bad} did not reply ok:\n{run.report()}"
    assert run.reply_order == list(range(len(run.cells))), f"replies out of order: {run.reply_order}"


def assert_image(cell: Cell, i: int) -> None:
    assert cell.images(), (f"cell {i} ({cell.code.splitlines()[0]!r}) shows no image; its outputs: "
                           f"{[m['msg_type'] for m in cell.msgs]}\n{cell.text()[-1500:]}")


def assert_quiet(kernel, *runs: QueuedRun, may_raise: tuple = ()) -> None:
    """Nothing on any output (the cells', and any other parent's) nor on the kernel's stderr
    mentions the asyncio breakage or a traceback. `may_raise`: indexes of cells (of the first
    run) allowed to show a traceback (their own error, e.g. a cell tagged raises-exception);
    asyncio noise never. Shuts the kernel down first: its exit must be quiet as well."""
    found = []
    for r, run in enumerate(runs):
        for i, cell in enumerate(run.cells):
            needles = ASYNCIO_NOISE if (r == 0 and i in may_raise) else NOISE
            found += [f"run {r} cell {i}: {ln}" for ln in noise(cell.text(), needles)]
        found += [f"output on no queued cell: {ln}" for ln in noise("\n".join(message_text(m) for m in run.others))]
    kernel.shutdown()
    found += [f"kernel stderr: {ln}" for ln in noise(kernel.stderr_text())]
    assert not found, "\n".join(found[:30]) + f"\n\nkernel stderr (tail):\n{kernel.stderr_text()[-3000:]}"


# ---------------------------------------------------------------------------------------------
# the tests
# ---------------------------------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_run_all_five_magic_cells(kernel):
    cells = ["%load_ext jupyter_imagegen"] + [magic(p) for p in PROMPTS] + ['print("end")']
    run = kernel.queued(cells).wait_all(timeout=90)
    assert_all_ok_in_order(run)
    for i in range(1, 6):
        assert_image(run.cells[i], i)
    assert run.cells[-1].stream_text("stdout").strip() == "end"
    assert_quiet(kernel, run)


@pytest.mark.timeout(150)
def test_run_all_with_a_retry_wait_in_the_first_magic(kernel, emu):
    cells = (["%load_ext jupyter_imagegen", magic(PROMPTS[0], "--no-cache --fault 429:retry_after=2")]
             + [magic(p) for p in PROMPTS[1:]] + ['print("end")'])
    run = kernel.queued(cells).wait_all(timeout=90)
    assert_all_ok_in_order(run)
    log = run.cells[1].all_log_text()
    assert "429" in log and "retrying in" in log, f"the first magic's log shows no retry:\n{log}"
    for i in range(1, 6):
        assert_image(run.cells[i], i)
    assert run.cells[-1].stream_text("stdout").strip() == "end"
    assert emu.request_count == 6  # one 429 and its retry, four more
    assert_quiet(kernel, run)


@pytest.mark.timeout(150)
def test_run_all_with_a_form_run_in_flight(kernel, emu):
    """The form's request (slow: its answer takes 2 s) is still in flight while the magic cells
    queued behind it run; then a cell awaits the form's result."""
    form_cell = (
        "from jupyter_imagegen.widget import ImageGenForm\n"
        f"form = ImageGenForm(prompt='a lighthouse in the fog', n=1,\n"
        f"                    request_options={{'headers': {{'{FAULT_HEADER}': 'slow_headers:delay=2'}}}})\n"
        "form.generate_button.click()\n"
        "print('running:', form.running)"
    )
    cells = (["%load_ext jupyter_imagegen", form_cell] + [magic(p) for p in PROMPTS[1:4]]
             + ["r = await form.wait(timeout=30)\nprint(r.success, len(r.artifacts))", 'print("end")'])
    run = kernel.queued(cells).wait_all(timeout=90)
    assert_all_ok_in_order(run)
    assert "running: True" in run.cells[1].stream_text("stdout"), run.cells[1].text()
    for i in range(2, 5):
        assert_image(run.cells[i], i)
    assert run.cells[5].stream_text("stdout").split() == ["True", "1"], run.cells[5].text()
    assert run.cells[-1].stream_text("stdout").strip() == "end"
    slow = [r for r in emu.requests if "slow_headers" in str(r.get("fault", ""))]
    assert len(slow) == 1 and emu.request_count == 4, emu.requests
    assert_quiet(kernel, run)


def _tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_run_all_of_a_notebook(path: Path, kernel_python, tmp_path):
    """Each notebook in notebooks/, Run All in a fresh kernel started in the notebook's folder
    (as JupyterLab does): it starts its own emulator (IMAGEGEN_EMULATOR=1); saved images and the
    cache go to temporary folders, nothing is written next to the notebook."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    may_raise = tuple(i for i, c in enumerate(code) if "raises-exception" in _tags(c))
    cells = [(c.source, i not in may_raise) for i, c in enumerate(code)]
    env = kernel_env(kernel_python, IMAGEGEN_EMULATOR="1", IMAGEGEN_OUT=str(tmp_path / "out"),
                     IMAGE_CACHE_DIR=str(tmp_path / "cache"))
    files = lambda: {p for p in path.parent.rglob("*")  # noqa: E731 - what --save / save() write
                     if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".json")}
    before = files()
    with running_kernel(kernel_python, env=env, cwd=path.parent, workdir=tmp_path) as kernel:
        run = kernel.queued(cells).wait_all(timeout=240)
        bad = [i for i, c in enumerate(run.cells) if c.status != "ok" and i not in may_raise]
        assert not bad, f"{path.name}: cells {bad} did not reply ok:\n{run.report()}"
        assert run.reply_order == list(range(len(run.cells))), f"replies out of order: {run.reply_order}"
        assert_quiet(kernel, run, may_raise=may_raise)
    new_files = sorted(map(str, files() - before))
    assert not new_files, f"running {path.name} wrote into {path.parent}: {new_files[:5]}"


@pytest.mark.timeout(150)
def test_interrupt_during_a_retry_wait_with_cells_queued(kernel, emu):
    reply, _ = kernel.execute("%load_ext jupyter_imagegen")
    assert reply["status"] == "ok", reply
    run = kernel.queued([magic("a patient lighthouse", "--no-cache --fault 429:retry_after=30"),
                         magic("a second lighthouse"), "print(2)"])
    first = run.cells[0]
    run.wait_for(lambda: "retrying in" in first.all_log_text(), timeout=30,
                 what="the first cell's log shows the retry wait")

    t0 = time.monotonic()
    kernel.km.interrupt_kernel()
    run.wait_for(lambda: first.reply is not None, timeout=15, what="the interrupted cell replies")
    took = first.replied_at - t0
    assert first.status == "error" and first.reply.get("ename") == "GenerationCancelled", first.reply
    assert took < 2.0, f"the interrupted cell replied {took:.1f} s after the interrupt"

    # one short line about the cancellation, no traceback
    errors = first.outputs("error")
    assert len(errors) == 1, [m["content"] for m in errors]
    tb = [ln for ln in strip_ansi("\n".join(errors[0]["content"].get("traceback", []))).splitlines() if ln.strip()]
    assert len(tb) <= 2 and sum(map(len, tb)) <= 300, "the cancellation shows a traceback:\n" + "\n".join(tb)
    shown = strip_ansi(first.text())
    assert "Traceback" not in shown and not re.search(r'File "', shown), shown[-2000:]
    stderr_lines = [ln for ln in first.stream_text("stderr").splitlines() if ln.strip()]
    assert len(stderr_lines) <= 1, stderr_lines

    # the queued cells get a reply (aborted by stop_on_error, or run): no hang
    run.wait_all(timeout=60)
    for i, cell in enumerate(run.cells[1:], start=1):
        assert cell.status in ("aborted", "ok"), f"queued cell {i}: {cell.reply}\n{run.report()}"
    assert emu.request_count == 1 + (run.cells[1].status == "ok"), f"a retry was sent after the interrupt: {emu.requests}"

    # and the kernel goes on working
    after = kernel.queued([magic("a lighthouse after the storm"), "1+1"]).wait_all(timeout=60)
    assert_all_ok_in_order(after)
    assert_image(after.cells[0], 0)
    assert after.cells[1].outputs("execute_result")[0]["content"]["data"]["text/plain"] == "2"
    assert_quiet(kernel, run, after)
