"""End to end in a real browser: JupyterLab on 127.0.0.1 (token auth) serves a notebook whose
kernel starts the emulator (a 429 queued for the first request) and shows the ImageGenForm;
headless Chromium (Debian's /usr/bin/chromium driven by Playwright) runs all cells, types a
prompt, clicks Generate and waits for the image. Checks: the image rendered (naturalWidth > 0),
the retry appeared in the live log, the kernel stayed idle while the request was in flight, the
button was disabled meanwhile, and the result went to the history; then an input image is
uploaded through the real FileUpload and a request that hangs is cancelled from the page.
Screenshots go to test-artifacts/: widget-browser.png (the page once the image is there),
widget-browser-form.png (the form alone), widget-browser-cancel.png (after Cancel), and
widget-browser-failure.png when the test fails.

A second test opens a copy of notebooks/quickstart.ipynb and runs it the way a user does: the
menu Run > Run All Cells, once. No cell may raise (a cell that fails stops JupyterLab's Run All,
whatever its tags): the cells that show a mistake or an API error on purpose show it as an error
box. It waits until every code cell has an execution count and the kernel is idle, then checks
that every %imagegen cell rendered its images and that no output shows an asyncio error. It runs on
the default python3 kernel (ipykernel 7) and on ipykernel 6 (tests/kernels.py's ipykernel6_python():
$IMAGEGEN_IPYKERNEL6_PYTHON, else a virtualenv it builds once; skipped only when that cannot be
built). Screenshot:
test-artifacts/run-all-quickstart-<kernel>.png.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kernels import ipykernel6_python, ipykernel_version, write_kernelspec

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

CHROMIUM = os.environ.get("IMAGEGEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
PROMPT = "a lighthouse at dusk, seen from the beach"
EMU_TOKEN = "sk-browser-emulator-token-0123456789"

SETUP_CELL = f"""\
import os, tempfile
from jupyter_imagegen.emulator import EmulatorThread
emu = EmulatorThread(token={EMU_TOKEN!r}, latency=0.8).start()
# the first request is rate limited (the log shows the retry), its retry passes, and the request
# after that hangs for 20 s (the test cancels it from the page)
emu.add_faults("429:retry_after=1", "ok", "slow_headers:delay=20")
os.environ.update(IMAGE_AUTH_TOKEN={EMU_TOKEN!r}, IMAGE_API_TYPE="openai_images",
                  IMAGE_BASE_URL=emu.base_url_for("openai_images"), IMAGE_CACHE="0",
                  IMAGE_CACHE_DIR=tempfile.mkdtemp(prefix="imagegen-cache-"))
print("emulator at", emu.url)
"""
FORM_CELL = """\
from jupyter_imagegen.widget import ImageGenForm
form = ImageGenForm(n=1)
form
"""


def _missing() -> str:
    if not Path(CHROMIUM).exists():
        return (f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium "
                "chromium-driver; .ci/run does) to run the browser test")
    for mod in ("playwright", "jupyterlab", "jupyterlab_widgets"):
        try:
            __import__(mod)
        except ImportError:
            return f"the browser test needs the {mod} package (pip install playwright jupyterlab)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(cells) -> dict:
    return {
        "cells": [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
                  for src in cells],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def _api(base: str, token: str, path: str, method: str = "GET", timeout: float = 5.0):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never a proxy
    with opener.open(req, timeout=timeout) as resp:
        body = resp.read()
        return json.loads(body) if body else None


def _jupyter_env(tmp_path: Path, kernels=()) -> dict:
    """Jupyter's config/data/runtime/settings dirs private to the test, as environment variables.

    The "python3" kernel is this interpreter (the user data dir wins over any system-wide
    kernelspec), so it imports the package and the test dependencies under test; `kernels` adds
    (name, python, display name) kernelspecs beside it."""
    home = tmp_path / "jupyter"
    config_dir, data_dir = home / "config", home / "data"
    (config_dir / "labconfig").mkdir(parents=True)
    # no news/update popups over the notebook (and no attempt to fetch them)
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    write_kernelspec(data_dir, "python3", sys.executable, "Python 3 (ipykernel)")
    for name, python, display_name in kernels:
        write_kernelspec(data_dir, name, python, display_name)
    return dict(JUPYTER_CONFIG_DIR=str(config_dir), JUPYTER_DATA_DIR=str(data_dir),
                JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"),
                JUPYTERLAB_SETTINGS_DIR=str(home / "lab-settings"),
                JUPYTERLAB_WORKSPACES_DIR=str(home / "lab-workspaces"),
                NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")


@contextlib.contextmanager
def _jupyterlab(tmp_path: Path, root: Path, env_updates=None, kernels=()):
    """JupyterLab on 127.0.0.1:<free port> with a random token, serving `root`, with private
    Jupyter dirs (see _jupyter_env) and no IMAGE_* setting of the developer (the notebooks
    configure their kernel themselves); `env_updates` sets (None: unsets) more. Yields {"base", "token", "root", "log"}; on exit shuts
    the kernels down through the API (an emulator thread dies with its kernel) and the server."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_")}
    env.update(_jupyter_env(tmp_path, kernels))
    for k, v in (env_updates or {}).items():   # None: unset
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    log_path = tmp_path / "jupyterlab.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         "--LabApp.extension_manager=readonly"]                # offline: never ask PyPI
        + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),
        stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=str(root))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                _api(base, token, "/api/status")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer within 60 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.25)
        yield {"base": base, "token": token, "root": root, "log": log_path}
    finally:
        try:
            for k in _api(base, token, "/api/kernels") or []:
                _api(base, token, f"/api/kernels/{k['id']}", method="DELETE", timeout=10)
        except Exception:
            pass
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log_file.close()


@contextlib.contextmanager
def _chromium_page(viewport=None):
    """A page of headless Chromium; yields (page, console) where console collects the page's
    console messages as "type: text"."""
    from playwright.sync_api import sync_playwright

    console = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport or {"width": 1280, "height": 1400})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.set_default_timeout(30_000)
            yield page, console
        finally:
            browser.close()


def _open_notebook(page, lab: dict, path: str) -> None:
    """Open `path` (relative to the server's root) in JupyterLab and wait until its kernel is idle."""
    page.goto(f"{lab['base']}/lab/tree/{path}?token={lab['token']}", wait_until="domcontentloaded")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=45_000)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=45_000)
    # the kernel is up when the notebook's session reports it idle
    page.wait_for_function(
        """() => { const w = window.jupyterapp.shell.currentWidget;
                   const k = w && w.sessionContext && w.sessionContext.session
                             && w.sessionContext.session.kernel;
                   return k && k.status === 'idle'; }""", timeout=45_000)


@pytest.fixture
def lab(tmp_path):
    """JupyterLab (see _jupyterlab) rooted in a temp dir holding form.ipynb and sketch.png."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "form.ipynb").write_text(json.dumps(_notebook([SETUP_CELL, FORM_CELL]), indent=1))
    from PIL import Image
    Image.new("RGB", (320, 200), (30, 150, 90)).save(root / "sketch.png")
    with _jupyterlab(tmp_path, root) as server:
        yield server


def test_form_in_jupyterlab_shows_retry_and_image(lab):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "widget-browser.png"
    form_shot = ARTIFACTS / "widget-browser-form.png"
    cancel_shot = ARTIFACTS / "widget-browser-cancel.png"
    ok = False
    with _chromium_page() as (page, console):
        try:
            _open_notebook(page, lab, "form.ipynb")
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")

            prompt = page.wait_for_selector(".imagegen-prompt textarea", timeout=45_000)
            assert "emulator at http://127.0.0.1:" in page.inner_text(".jp-NotebookPanel")
            prompt.fill(PROMPT)
            generate = page.locator("button.imagegen-generate")
            # the kernel received the prompt (the Textarea syncs on input): then click
            page.wait_for_timeout(300)
            generate.click()

            # while the request is in flight: button disabled, the retry in the log, kernel idle
            page.wait_for_function(
                "() => { const l = document.querySelector('.imagegen-output .imagegen-log');"
                "        return l && /429/.test(l.innerText) && /retrying/.test(l.innerText); }",
                timeout=30_000)
            assert generate.is_disabled()
            assert page.locator(".imagegen-output img").count() == 0, "the image came before the check"
            status = page.evaluate(
                "() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status")
            assert status == "idle", f"the kernel is {status} while the form waits: it must stay free"

            # the image arrives and really renders
            page.wait_for_function(
                "() => [...document.querySelectorAll('.imagegen-output img')]"
                "       .some(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0)", timeout=30_000)
            sizes = page.eval_on_selector_all(".imagegen-output img", "els => els.map(i => [i.naturalWidth, i.naturalHeight])")
            assert sizes and all(w > 0 and h > 0 for w, h in sizes), sizes
            log_text = page.inner_text(".imagegen-output .imagegen-log")
            # the retry's line counted down while it waited, then says it retried
            assert "429 rate limited — retried after 1 s (attempt 1 failed)" in log_text and "done" in log_text, log_text
            # the run is in the history, with a rendered thumbnail and its buttons
            page.wait_for_function(
                "() => [...document.querySelectorAll('.imagegen-history-entry img')]"
                "       .some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
            entry = page.inner_text(".imagegen-history-entry")
            assert PROMPT in entry and "use as input" in entry and "reuse settings" in entry, entry
            page.wait_for_function("() => !document.querySelector('button.imagegen-generate').disabled",
                                   timeout=10_000)
            page.locator(".imagegen-form").scroll_into_view_if_needed()
            page.screenshot(path=str(shot))                            # the retry, the image, the history
            page.locator(".imagegen-form").screenshot(path=str(form_shot))

            # an input image through the real FileUpload, then a request that hangs: Cancel it
            with page.expect_file_chooser() as chooser:
                page.click(".imagegen-upload")
            chooser.value.set_files(str(lab["root"] / "sketch.png"))
            page.wait_for_function("() => [...document.querySelectorAll('.imagegen-input img')]"
                                   "       .some(i => i.complete && i.naturalWidth > 0)", timeout=15_000)
            assert "sketch.png" in page.inner_text(".imagegen-input")
            prompt.fill("the sketch as a painting")
            page.wait_for_timeout(300)
            generate.click()
            page.wait_for_function(
                "() => /attempt 1/.test((document.querySelector('.imagegen-log') || {}).innerText || '')",
                timeout=15_000)
            page.wait_for_timeout(500)
            cancel = page.locator("button.imagegen-cancel")
            assert cancel.is_enabled() and generate.is_disabled()
            t0 = time.monotonic()
            cancel.click()
            page.wait_for_function(
                "() => (document.querySelector('.imagegen-log') || {dataset: {}}).dataset.state === 'cancelled'"
                " && !document.querySelector('button.imagegen-generate').disabled", timeout=5_000)
            assert time.monotonic() - t0 < 3.0       # a round trip through the kernel, not 20 s
            assert "Cancel button" in page.inner_text(".imagegen-log")
            assert page.locator(".imagegen-history-entry").count() == 1   # a cancelled run is not a result
            page.locator(".imagegen-form").screenshot(path=str(cancel_shot))
            ok = True
        finally:
            if not ok:
                page.screenshot(path=str(ARTIFACTS / "widget-browser-failure.png"))
    errors = [c for c in console if c.startswith("error:") and "widget" in c.lower()]
    assert not errors, errors
    assert shot.stat().st_size > 10_000


# ---------------------------------------------------------------------------------------------
# Run All on notebooks/quickstart.ipynb, as a user does it, on ipykernel 7 and ipykernel 6
# ---------------------------------------------------------------------------------------------
QUICKSTART = "notebooks/quickstart.ipynb"
#: text that must appear in no output: the kernel's event loop was re-entered or left tasks behind
ASYNCIO_ERRORS = ("cannot enter context", "Task was destroyed", "never awaited")
#: seconds for all the cells to run (about 25 s when it works; emulator latency 0.5 s per request)
RUN_DEADLINE = 75.0
#: a kernel that reports idle for this long while cells still show [*] will never run them
STUCK_AFTER = 15.0
IPYKERNEL6_SPEC = "imagegen-ipykernel6"

#: the state of every code cell of the current notebook, read from the page
_CELLS_JS = r"""() => {
  const w = window.jupyterapp.shell.currentWidget;
  const s = w && w.sessionContext && w.sessionContext.session;
  const cells = [];
  w.content.widgets.forEach((c, i) => {
    if (c.model.type !== 'code') return;
    const prompt = c.node.querySelector('.jp-InputArea-prompt');
    const imgs = [...c.node.querySelectorAll('.jp-OutputArea .imagegen-figure img')];
    // textContent, not innerText: cells scrolled out of view are not rendered (content-visibility)
    cells.push({index: i, prompt: prompt ? prompt.textContent.trim() : '',
                source: c.model.sharedModel.getSource(), tags: c.model.getMetadata('tags') || [],
                images: imgs.map(im => [im.complete, im.naturalWidth, im.naturalHeight]),
                errorBox: !!c.node.querySelector('.jp-OutputArea .imagegen-error'),
                // a traceback, or a one-line error on stderr (IPython prints UsageError so)
                raised: c.model.outputs.toJSON().some(o => o.output_type === 'error'
                        || (o.output_type === 'stream' && o.name === 'stderr'
                            && /^\w*(Error|Exception)\b/m.test(Array.isArray(o.text) ? o.text.join('') : o.text))),
                text: (c.node.querySelector('.jp-OutputArea') || {textContent: ''}).textContent});
  });
  return {kernel: s && s.kernel ? s.kernel.status : 'none', active: w.content.activeCellIndex, cells};
}"""


def _kernel_variant(name: str):
    """(kernelspec name, display name, its python) of a test variant: "python3" is this
    interpreter (the spec _jupyter_env writes), "ipykernel6" tests/kernels.py's
    ipykernel6_python() ($IMAGEGEN_IPYKERNEL6_PYTHON, else a virtualenv built once under
    .pytest-kernels/; the variant skips only when that cannot be built)."""
    if name == "python3":
        return "python3", "Python 3 (ipykernel)", sys.executable
    return IPYKERNEL6_SPEC, "Python 3 (ipykernel 6)", ipykernel6_python()


@pytest.fixture(params=["python3", "ipykernel6"])
def quickstart_lab(request, tmp_path):
    """JupyterLab serving a copy of notebooks/ whose quickstart.ipynb uses the kernel of the
    variant; the server's environment has no IMAGE_* key (the notebook starts the emulator), a
    temporary IMAGE_CACHE_DIR and IMAGEGEN_OUT, as tests/test_notebooks.py's clean_env."""
    spec, display_name, python = _kernel_variant(request.param)
    version = ipykernel_version(python)
    if request.param == "ipykernel6":
        assert version.startswith("6."), f"{python} has ipykernel {version}, not 6"
    kernels = [] if spec == "python3" else [(spec, python, display_name)]
    root = tmp_path / "root"
    root.mkdir()
    shutil.copytree(ROOT / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "imagegen-out"))
    nb_path = root / QUICKSTART
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    nb["metadata"]["kernelspec"] = {"name": spec, "display_name": display_name, "language": "python"}
    nb_path.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    out, cache, tmp = tmp_path / "out", tmp_path / "cache", tmp_path / "tmp"
    for d in (out, cache, tmp):
        d.mkdir()
    # _jupyterlab drops IMAGE_* (so no IMAGE_AUTH_TOKEN); IMAGEGEN_* of the developer go too
    env = {k: None for k in os.environ if k.startswith("IMAGEGEN_")}
    env.update(IMAGEGEN_EMULATOR="1", IMAGEGEN_OUT=str(out), IMAGE_CACHE_DIR=str(cache),
               TMPDIR=str(tmp))    # the notebook's own mkdtemp() cache lands in tmp_path too
    with _jupyterlab(tmp_path, root, env_updates=env, kernels=kernels) as server:
        server.update(variant=request.param, spec=spec, ipykernel=version, out=out)
        yield server


def _menu(page, top: str, item: str) -> None:
    """Click `top` in JupyterLab's menu bar, then `item` in the menu it opens."""
    exact = lambda text: re.compile(rf"^\s*{re.escape(text)}\s*$")   # noqa: E731
    page.locator(".lm-MenuBar-item", has_text=exact(top)).click()
    page.locator(".lm-Menu-item .lm-Menu-itemLabel", has_text=exact(item)).click()


def _wait_for_cells(page, until: float, started) -> dict:
    """Poll the page until the kernel is idle and no code cell shows [*], and `started(state)`
    says the action got going (so a state from before the click does not count). Stops early
    when the kernel has been idle for STUCK_AFTER seconds with cells still at [*] (they will
    never run), or is dead, or at `until`. Returns the last state."""
    idle_stuck_since = None
    while True:
        state = page.evaluate(_CELLS_JS)
        queued = [c for c in state["cells"] if "*" in c["prompt"]]
        if state["kernel"] == "idle" and not queued and started(state):
            return state
        now = time.monotonic()
        if state["kernel"] == "idle" and queued:
            idle_stuck_since = idle_stuck_since or now
            if now - idle_stuck_since > STUCK_AFTER:
                return state
        else:
            idle_stuck_since = None
        if state["kernel"] in ("dead", "none") or now > until:
            return state
        page.wait_for_timeout(250)


def _magic_cells(state: dict):
    return [c for c in state["cells"] if re.match(r"\s*%%?imagegen\b(?!_)", c["source"])]


#: the quickstart's cell that shows a mistake on purpose (a size openai_images cannot make)
REFUSED_CELL = re.compile(r"--api openai_images --size 800x600")


def _refused(cell: dict) -> bool:
    return "raises-exception" in cell["tags"] or bool(REFUSED_CELL.search(cell["source"]))


def _expected_images(cell: dict) -> int:
    """How many images a %imagegen cell of the quickstart shows: -n N (1 by default), none for
    the cells that demonstrate an error."""
    if _refused(cell) or re.search(r"--fault\s+(?!408|409|429)4\d\d\b", cell["source"]):
        return 0
    m = re.search(r"(?:^|\s)-n\s+(\d+)", cell["source"].splitlines()[0])
    return int(m.group(1)) if m else 1


def _describe(state: dict) -> str:
    rows = []
    for c in state["cells"]:
        first = c["source"].splitlines()[0][:60] if c["source"] else ""
        extra = f" images={len(c['images'])}" if c["images"] else ""
        rows.append(f"  cell {c['index']:>2} {c['prompt'] or '[?]':>6} {first}{extra}")
    return f"kernel {state['kernel']}, active cell {state['active']}\n" + "\n".join(rows)


#: scroll cell i to the top of the notebook; resolves to how far it is from there ten frames later
_SCROLL_JS = """async ([i]) => {
    const nb = window.jupyterapp.shell.currentWidget.content;
    const outer = nb.outerNode || nb.node, node = nb.widgets[i].node;
    const frame = () => new Promise(r => requestAnimationFrame(r));
    const offset = () => node.getBoundingClientRect().top - outer.getBoundingClientRect().top;
    for (let k = 0; k < 50 && Math.abs(offset()) >= 2; k++) {
        const before = outer.scrollTop;
        outer.scrollTop += offset();
        if (outer.scrollTop === before) break;           // the end of the notebook
        await frame(); await frame();
    }
    for (let k = 0; k < 10; k++) await frame();
    const bottom = outer.scrollTop + outer.clientHeight >= outer.scrollHeight - 2;
    const loaded = [...node.querySelectorAll('img')].every(im => im.complete);
    return loaded && (Math.abs(offset()) < 2 || bottom) ? 0 : offset() || 1;
}"""


def _screenshot_at(page, index: int, path: Path) -> None:
    """Scroll cell `index` to the top of the notebook and take a screenshot. The notebook may
    move it once more (cells above it are laid out late, JupyterLab restores its own scroll
    position once), so scroll until it stays put."""
    for _ in range(5):
        if page.evaluate(_SCROLL_JS, [index]) == 0:
            break
    page.screenshot(path=str(path))


@pytest.mark.kernel
@pytest.mark.timeout(150)
def test_run_all_quickstart_in_jupyterlab(quickstart_lab):
    """Run > Run All Cells on quickstart.ipynb: every cell runs, every %imagegen image renders,
    no asyncio error, on this kernel. Cells stuck at [*] with an idle kernel are the ipykernel 7
    + nest_asyncio failure (the next queued cell re-entered the running cell's loop)."""
    lab = quickstart_lab
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"run-all-quickstart-{lab['variant']}.png"
    end_shot = ARTIFACTS / f"run-all-quickstart-{lab['variant']}-end.png"
    t0 = time.monotonic()
    with _chromium_page(viewport={"width": 1280, "height": 1600}) as (page, console):
        _open_notebook(page, lab, QUICKSTART)
        name = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
        assert name == lab["spec"], f"the notebook runs on kernel {name}, not {lab['spec']}"
        kernel = f"ipykernel {lab['ipykernel']} (kernelspec {name})"
        until = time.monotonic() + RUN_DEADLINE

        # what a user does: Run > Run All Cells, then wait for the last cell
        _menu(page, "Run", "Run All Cells")
        state = _wait_for_cells(page, until, started=lambda st: st["cells"][0]["prompt"] not in ("[ ]:", ""))
        elapsed = time.monotonic() - t0

        # screenshots: the cell before the first one that did not run (or, when all ran, the
        # 4-image gallery), and the end of the notebook from the code cell before the error demo
        code = state["cells"]
        stuck = [c for c in code if not re.fullmatch(r"\[\d+\]:", c["prompt"])]
        gallery = [c for c in _magic_cells(state) if _expected_images(c) > 1]
        if stuck:
            focus = code[max(code.index(stuck[0]) - 1, 0)]
        else:
            focus = gallery[0] if gallery else code[0]
        _screenshot_at(page, focus["index"], shot)
        demo = [k for k, c in enumerate(code) if _refused(c)]
        _screenshot_at(page, code[max(demo[-1] - 1, 0) if demo else -1]["index"], end_shot)

        # every output, in full (the model's JSON, rendered or not)
        outputs = page.evaluate("""() => window.jupyterapp.shell.currentWidget.content.widgets
            .filter(c => c.model.type === 'code')
            .map(c => [c.model.outputs.toJSON().map(o => JSON.stringify(o.text || o.traceback || o.evalue || '')
                                                     + JSON.stringify((o.data || {})['text/plain'] || '')).join('\\n'),
                       c.node.querySelector('.jp-OutputArea') ? c.node.querySelector('.jp-OutputArea').textContent : ''])""")

    summary = f"on {kernel}, after {elapsed:.0f} s:\n{_describe(state)}"
    print(summary)
    # no asyncio error anywhere: not in an output, not in the kernel's stderr (the server log)
    asyncio_errors = [(c["index"], e) for c, (model_text, dom_text) in zip(state["cells"], outputs)
                      for e in ASYNCIO_ERRORS if e in model_text or e in dom_text]
    log_text = lab["log"].read_text(errors="replace")
    asyncio_errors += [("server log", e) for e in ASYNCIO_ERRORS if e in log_text]
    error_lines = list(dict.fromkeys(ln.strip() for _, dom_text in outputs for ln in dom_text.splitlines()
                                     if any(e in ln for e in ASYNCIO_ERRORS)))
    first_error = "\n".join(ln[:200] for ln in error_lines[:6])
    assert not stuck, (f"{len(stuck)} code cells never ran ({', '.join(c['prompt'] or '?' for c in stuck[:5])}) "
                       f"{summary}\nasyncio errors: {asyncio_errors}\n{first_error}")
    assert not asyncio_errors, f"asyncio errors {asyncio_errors} {summary}\n{first_error}"
    # no cell raised (a cell that fails stops Run All); the mistake on purpose says what it is
    raised = [c["index"] for c in state["cells"] if c["raised"]]
    assert not raised, f"cells {raised} raised: {summary}"
    deliberate = [c for c in state["cells"] if _refused(c)]
    assert deliberate, "the quickstart's cell with a mistake on purpose is gone: update REFUSED_CELL"
    for c in deliberate:
        assert c["errorBox"] and "800x600" in c["text"], \
            f"cell {c['index']} shows {c['text'][:300]!r}, not an error box about its size"
    # every %imagegen cell shows its images, decoded by the browser; the error demos show an error
    magic = _magic_cells(state)
    assert len(magic) >= 15, f"only {len(magic)} %imagegen cells found in the quickstart"
    for c in magic:
        want = _expected_images(c)
        first = c["source"].splitlines()[0]
        rendered = [im for im in c["images"] if im[0] and im[1] > 0 and im[2] > 0]
        assert len(c["images"]) == want and len(rendered) == want, \
            f"cell {c['index']} ({first}) shows {len(rendered)} rendered of {len(c['images'])} images, want {want}"
        if want == 0:
            assert c["errorBox"], f"cell {c['index']} ({first}) should show the API's error box"
    # the --save cell and .save() wrote into IMAGEGEN_OUT, nothing went next to the notebook
    saved = sorted(p.name for p in lab["out"].rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    assert len(saved) >= 7, f"IMAGEGEN_OUT holds {saved}"
    assert not (lab["root"] / "notebooks" / "imagegen-out").exists()
    page_errors = [c for c in console if c.startswith("error:") and "imagegen" in c.lower()]
    assert not page_errors, page_errors
    assert shot.stat().st_size > 10_000
    assert elapsed < 90, f"Run All took {elapsed:.0f} s {summary}"
