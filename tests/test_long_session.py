"""A long notebook session in a real kernel: hundreds of `%%imagegen` cells, queued at once as
Run All sends them, must not grow the kernel without bound.

Every response stays reachable (`Out[n]`, `_`, the history), so the bytes and pixels they hold
must live within the kernel's image-memory budget. Before that budget, each shown image kept
its decoded pixels (4 MB for a 1024 px image) and the kernel grew about 4 MB per cell. The bound
here is loose on purpose (a test, not the benchmark: `python -m benchmarks.run` has the tight
figure); it still fails by a wide margin when pixels or bytes are kept per cell.
"""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("ipykernel")
pytest.importorskip("jupyter_client")

from jupyter_imagegen.emulator import EmulatorThread  # noqa: E402
from kernels import kernel_env, running_kernel  # noqa: E402

pytestmark = [pytest.mark.kernel]

TOKEN = "sk-long-session-token-0123456789"
CELLS = 300
BUDGET_MB = 8
PROBE = """import gc, json
gc.collect()
from jupyter_imagegen import history
from jupyter_imagegen.memory import memory
rss = [int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:')][0] * 1024
print('PROBE', json.dumps({"rss": rss, "history": len(history), "held": history.bytes_in_memory,
                           "stats": memory.stats(), "outs": len(Out)}))
"""


def _probe(cell) -> dict:
    text = cell.stream_text("stdout")
    line = [ln for ln in text.splitlines() if ln.startswith("PROBE ")]
    assert line, f"the probe printed nothing: {cell.summary()}\n{cell.text()[-2000:]}"
    return json.loads(line[-1][len("PROBE "):])


@pytest.mark.timeout(420)
def test_hundreds_of_queued_cells_keep_the_kernel_bounded(tmp_path):
    with EmulatorThread(token=TOKEN) as emu:
        env = kernel_env(sys.executable, IMAGE_BASE_URL=emu.base_url_for("openai_images"), IMAGE_AUTH_TOKEN=TOKEN,
                         IMAGE_API_TYPE="openai_images", IMAGE_CACHE="0", IMAGE_CACHE_DIR=str(tmp_path / "cache"),
                         IMAGE_MEMORY_BUDGET_MB=str(BUDGET_MB))
        with running_kernel(sys.executable, env=env, cwd=tmp_path, workdir=tmp_path) as kernel:
            setup = kernel.execute("%load_ext jupyter_imagegen", timeout=60)[0]
            assert setup["status"] == "ok", setup
            cells = []
            probes = {}
            for i in range(1, CELLS + 1):
                cells.append(f"%%imagegen --no-cache\na long session, cell {i}: a lighthouse, a fox, a boat")
                if i in (50, CELLS):
                    probes[i] = len(cells)
                    cells.append(PROBE)
            run = kernel.queued(cells).wait_all(timeout=400, stall=60)
            bad = [c.summary() for c in run.cells if c.status != "ok"]
            assert not bad, "\n".join(bad[:10])
            assert all(c.images() for c in run.cells if c.code.startswith("%%imagegen")), \
                "a cell showed no image"
            early, late = _probe(run.cells[probes[50]]), _probe(run.cells[probes[CELLS]])

    # every response is still reachable: nothing was dropped to save memory
    assert late["history"] == CELLS and late["outs"] >= CELLS
    stats = late["stats"]
    budget = BUDGET_MB * 1024 * 1024
    # what the kernel holds in images stays within the budget (one image of slack: the newest
    # is never moved out); the rest is in the spool folder, read back when used
    assert stats["resident"] <= budget + 3 * 1024 * 1024, stats
    assert late["held"] <= stats["resident"]
    assert stats["spilled"] > 0 and stats["spool_files"] > 0, stats
    growth = (late["rss"] - early["rss"]) / (CELLS - 50)
    print(f"kernel RSS {early['rss'] / 1e6:.0f} MB at cell 50, {late['rss'] / 1e6:.0f} MB at cell {CELLS}; {stats}")
    assert growth < 0.25 * 1024 * 1024, (
        f"the kernel grew {growth / 1e6:.2f} MB per cell from cell 50 to {CELLS} "
        f"({early['rss'] / 1e6:.0f} MB -> {late['rss'] / 1e6:.0f} MB); stats: {stats}")
